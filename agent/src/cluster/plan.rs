//! The pure decisions of the cluster store: which VNI, which subnet, which block, which URL.
//! No I/O here; `mod.rs` reads the store, calls these, and writes with a transaction whose
//! compares make the decision safe against concurrent writers.

use std::{collections::HashSet, hash::BuildHasher, net::Ipv4Addr};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

use super::{
    error::{self, fail, Error, Kind},
    schema::{NetworkRecord, NetworkSpec},
};
use crate::model::network::{overlaps, validate_name, DEFAULT_NETWORK};

/// Where subnets of cluster networks created without one come from: the first free /20.
/// A /20 holds 64 per-node /26 blocks; the node-local `10.90.0.0/16` of single-node networks
/// and the default pool `10.254.0.0/22` are outside it.
pub const AUTO_RANGE: &str = "10.96.0.0/12";
pub const AUTO_PREFIX: u8 = 20;
/// The default block size: a /26 is 16 containers' /30s.
pub const DEFAULT_BLOCK_PREFIX: u8 = 26;
/// A container takes a /30, so no block (and no subnet) can be smaller.
pub const MAX_BLOCK_PREFIX: u8 = 30;
/// VXLAN network identifiers are 24 bits; 0 is left alone (some tools read it as "none").
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The etcd client port when an URL gives none.
pub const DEFAULT_PORT: u16 = 2379;

/// `etcd://HOST:PORT[,HOST:PORT...]` -> `["http://HOST:PORT", ...]` (port 2379 when left out).
pub fn parse_cluster_url(s: &str) -> Result<Vec<String>> {
    let Some(rest) = s.strip_prefix("etcd://") else {
        bail!("--cluster {s:?} must look like etcd://HOST:PORT[,HOST:PORT...]");
    };
    let mut out = Vec::new();
    for entry in rest.split(',') {
        let entry = entry.trim().trim_end_matches('/');
        if entry.is_empty() || entry.contains('/') || entry.contains('@') {
            bail!("--cluster {s:?}: {entry:?} is not HOST:PORT");
        }
        // `[v6]:port`, `host:port`, `host`.
        let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .with_context(|| format!("--cluster {s:?}: unclosed '[' in {entry:?}"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => bail!("--cluster {s:?}: {entry:?} is not [HOST]:PORT"),
            };
            (format!("[{h}]"), port)
        } else {
            match entry.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (entry.to_string(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            bail!("--cluster {s:?}: {entry:?} has no host");
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| format!("--cluster {s:?}: bad port in {entry:?}"))?,
        };
        out.push(format!("http://{host}:{port}"));
    }
    Ok(out)
}

/// A key prefix: starts with '/', no trailing '/', not just "/".
pub fn normalize_prefix(p: &str) -> Result<String> {
    let t = p.trim().trim_end_matches('/');
    if !t.starts_with('/') || t.len() < 2 || t.contains("//") {
        bail!("--cluster-prefix {p:?} must be an absolute key path such as /tollgate");
    }
    Ok(t.to_string())
}

/// The smallest VNI >= 1 that none of `taken` uses.
pub fn choose_vni<S: BuildHasher>(taken: &HashSet<u32, S>) -> Option<u32> {
    (1..=MAX_VNI).find(|v| !taken.contains(v))
}

/// Why `subnet` cannot be a new network's, or `None`: it overlaps a network's (name, subnet)
/// or one of the node's local subnets.
pub fn subnet_clash(
    subnet: Ipv4Net,
    networks: &[(String, Ipv4Net)],
    local: &[Ipv4Net],
) -> Option<String> {
    if let Some((name, o)) = networks.iter().find(|(_, n)| overlaps(subnet, *n)) {
        return Some(format!(
            "subnet {subnet} overlaps {o} of cluster network {name:?}; pick another --subnet"
        ));
    }
    if let Some(l) = local.iter().find(|l| overlaps(subnet, **l)) {
        return Some(format!(
            "subnet {subnet} overlaps {l}, a local subnet of this node (its pool or a network of its own); pick another --subnet"
        ));
    }
    None
}

/// The record of a new network: `spec` checked against the `networks` there are, the VNIs in
/// use (`vnis`, besides the networks') and the node's `local` subnets. The subnet is the one
/// asked for (its host bits cleared) or the first free /20 of `AUTO_RANGE`; the VNI the
/// smallest free one.
pub fn new_network<S: BuildHasher>(
    spec: &NetworkSpec,
    networks: &[NetworkRecord],
    vnis: &HashSet<u32, S>,
    local: &[Ipv4Net],
) -> error::Result<NetworkRecord> {
    let name = spec.name.as_str();
    if validate_name(name).is_err() {
        fail!(BadInput, "invalid network name {name:?} (1-32 characters: letters, digits, '-', '_', '.'; starting with a letter or digit)");
    }
    if name == DEFAULT_NETWORK {
        fail!(
            Conflict,
            "network {name:?} already exists (every node has its own)"
        );
    }
    if let Some(n) = networks.iter().find(|n| n.name == name) {
        fail!(
            Conflict,
            "network {name:?} already exists (subnet {}, VNI {})",
            n.subnet,
            n.vni
        );
    }
    let taken: Vec<(String, Ipv4Net)> = networks
        .iter()
        .map(|n| (n.name.clone(), n.subnet))
        .collect();
    let subnet = if let Some(s) = spec.subnet {
        let s = s.trunc();
        // A malformed request is refused as such before any overlap is looked at.
        block_prefix(s, spec.block_prefix).map_err(|e| Error {
            kind: Kind::BadInput,
            err: e,
        })?;
        if let Some(why) = subnet_clash(s, &taken, local) {
            fail!(Conflict, "{why}");
        }
        s
    } else {
        let Some(s) = auto_subnet(&taken, local) else {
            fail!(
                Conflict,
                "every /{AUTO_PREFIX} of {AUTO_RANGE} is taken; give --subnet"
            );
        };
        s
    };
    let block_prefix = block_prefix(subnet, spec.block_prefix).map_err(|e| Error {
        kind: Kind::BadInput,
        err: e,
    })?;
    let used: HashSet<u32> = vnis
        .iter()
        .copied()
        .chain(networks.iter().map(|n| n.vni))
        .collect();
    let Some(vni) = choose_vni(&used) else {
        fail!(Conflict, "every VNI is taken");
    };
    Ok(NetworkRecord {
        name: name.to_string(),
        subnet,
        vni,
        icc: spec.icc,
        internal: spec.internal,
        block_prefix,
    })
}

/// The first /20 of `AUTO_RANGE` that overlaps no network and no local subnet.
pub fn auto_subnet(networks: &[(String, Ipv4Net)], local: &[Ipv4Net]) -> Option<Ipv4Net> {
    let range: Ipv4Net = AUTO_RANGE.parse().ok()?;
    range
        .subnets(AUTO_PREFIX)
        .ok()?
        .find(|s| subnet_clash(*s, networks, local).is_none())
}

/// The block size of a network on `subnet`: the one asked for, or /26 (or the subnet itself
/// when it is smaller than a /26). Between the subnet's prefix and /30.
pub fn block_prefix(subnet: Ipv4Net, asked: Option<u8>) -> Result<u8> {
    let len = subnet.prefix_len();
    if len > MAX_BLOCK_PREFIX {
        bail!("subnet {subnet} is too small: a container takes a /30");
    }
    let p = asked.unwrap_or(DEFAULT_BLOCK_PREFIX.max(len));
    if p < len || p > MAX_BLOCK_PREFIX {
        bail!("block size /{p} must be between the subnet's /{len} and /{MAX_BLOCK_PREFIX}");
    }
    Ok(p)
}

/// The first block of `subnet` (blocks of `prefix`) that is not in `taken`.
pub fn first_free_block<S: BuildHasher>(
    subnet: Ipv4Net,
    prefix: u8,
    taken: &HashSet<Ipv4Net, S>,
) -> Option<Ipv4Net> {
    subnet.subnets(prefix).ok()?.find(|b| !taken.contains(b))
}

/// A block's key segment: `10.96.0.64-26` (Flannel's form: no '/' inside a key segment).
pub fn block_segment(block: Ipv4Net) -> String {
    format!("{}-{}", block.network(), block.prefix_len())
}

/// The block of a key segment written by `block_segment`.
pub fn parse_block_segment(s: &str) -> Option<Ipv4Net> {
    let (ip, len) = s.split_once('-')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let net = Ipv4Net::new(ip, len.parse().ok()?).ok()?;
    (net.network() == ip).then_some(net)
}

/// Backoff for retries: 250 ms doubling up to `max`.
pub fn backoff(attempt: u32, max: std::time::Duration) -> std::time::Duration {
    let base = std::time::Duration::from_millis(250);
    base.saturating_mul(1u32 << attempt.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn cluster_urls_become_http_endpoints() {
        assert_eq!(
            parse_cluster_url("etcd://10.0.0.1:2379").unwrap(),
            ["http://10.0.0.1:2379"]
        );
        assert_eq!(
            parse_cluster_url("etcd://a:1,b,10.0.0.3:3/").unwrap(),
            ["http://a:1", "http://b:2379", "http://10.0.0.3:3"]
        );
        assert_eq!(
            parse_cluster_url("etcd://[fd00::1]:2379,[fd00::2]").unwrap(),
            ["http://[fd00::1]:2379", "http://[fd00::2]:2379"]
        );
        for bad in [
            "http://a:1",
            "etcd://",
            "etcd://a:1,",
            "etcd://a:x",
            "etcd://a:0",
            "etcd://:1",
            "etcd://a:1/path",
            "etcd://u@a:1",
            "etcd://[fd00::1",
            "a:1",
        ] {
            assert!(parse_cluster_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_are_absolute_without_trailing_slash() {
        assert_eq!(normalize_prefix("/tollgate").unwrap(), "/tollgate");
        assert_eq!(normalize_prefix("/a/b/").unwrap(), "/a/b");
        for bad in ["", "/", "tollgate", "/a//b"] {
            assert!(normalize_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vni_is_the_smallest_free_one() {
        assert_eq!(choose_vni(&HashSet::new()), Some(1));
        assert_eq!(choose_vni(&HashSet::from([1, 2, 4])), Some(3));
        assert_eq!(choose_vni(&HashSet::from([2])), Some(1));
    }

    #[test]
    fn subnets_clash_with_networks_and_local_ones() {
        let nets = vec![("blue".to_string(), n("10.96.0.0/20"))];
        assert!(subnet_clash(n("10.96.8.0/24"), &nets, &[])
            .unwrap()
            .contains("\"blue\""));
        assert!(subnet_clash(n("10.96.0.0/12"), &nets, &[]).is_some());
        assert!(subnet_clash(n("10.96.16.0/20"), &nets, &[]).is_none());
        assert!(
            subnet_clash(n("10.254.0.0/24"), &nets, &[n("10.254.0.0/22")])
                .unwrap()
                .contains("local subnet")
        );
    }

    #[test]
    fn auto_subnets_are_the_first_free_slash_20() {
        assert_eq!(auto_subnet(&[], &[]), Some(n("10.96.0.0/20")));
        let nets = vec![
            ("a".to_string(), n("10.96.0.0/20")),
            ("b".to_string(), n("10.96.20.0/24")),
        ];
        assert_eq!(auto_subnet(&nets, &[]), Some(n("10.96.32.0/20")));
        assert_eq!(
            auto_subnet(&nets, &[n("10.96.32.0/19")]),
            Some(n("10.96.64.0/20"))
        );
        assert_eq!(auto_subnet(&[], &[n("10.0.0.0/8")]), None);
    }

    #[test]
    fn block_prefixes_sit_between_the_subnet_and_a_slash_30() {
        assert_eq!(block_prefix(n("10.96.0.0/20"), None).unwrap(), 26);
        assert_eq!(block_prefix(n("10.96.0.0/28"), None).unwrap(), 28);
        assert_eq!(block_prefix(n("10.96.0.0/20"), Some(24)).unwrap(), 24);
        assert_eq!(block_prefix(n("10.96.0.0/20"), Some(20)).unwrap(), 20);
        assert!(block_prefix(n("10.96.0.0/20"), Some(19)).is_err());
        assert!(block_prefix(n("10.96.0.0/20"), Some(31)).is_err());
        assert!(block_prefix(n("10.96.0.0/31"), None).is_err());
    }

    #[test]
    fn new_networks_get_a_free_subnet_and_the_smallest_free_vni() {
        let spec = |name: &str, subnet: Option<&str>| NetworkSpec {
            name: name.to_string(),
            subnet: subnet.map(n),
            icc: true,
            ..NetworkSpec::default()
        };
        let none = HashSet::new();
        let blue = new_network(&spec("blue", None), &[], &none, &[n("10.96.0.0/22")]).unwrap();
        assert_eq!(
            (blue.subnet, blue.vni, blue.block_prefix, blue.icc),
            (n("10.96.16.0/20"), 1, 26, true)
        );
        let nets = [blue.clone()];
        // A given subnet loses its host bits; a VNI left by a removed network is reused.
        let red = new_network(
            &spec("red", Some("10.97.0.5/24")),
            &nets,
            &HashSet::from([3]),
            &[],
        )
        .unwrap();
        assert_eq!(
            (red.subnet, red.vni, red.block_prefix),
            (n("10.97.0.0/24"), 2, 26)
        );
        let kind = |r: error::Result<NetworkRecord>| r.unwrap_err().kind;
        assert_eq!(
            kind(new_network(&spec("blue", None), &nets, &none, &[])),
            Kind::Conflict
        );
        assert_eq!(
            kind(new_network(&spec("default", None), &[], &none, &[])),
            Kind::Conflict
        );
        assert_eq!(
            kind(new_network(&spec("bad name", None), &[], &none, &[])),
            Kind::BadInput
        );
        assert_eq!(
            kind(new_network(
                &spec("x", Some("10.96.20.0/24")),
                &nets,
                &none,
                &[]
            )),
            Kind::Conflict
        );
        assert_eq!(
            kind(new_network(
                &spec("x", Some("10.99.0.0/31")),
                &nets,
                &none,
                &[]
            )),
            Kind::BadInput
        );
        let tiny = NetworkSpec {
            block_prefix: Some(31),
            ..spec("x", None)
        };
        assert_eq!(kind(new_network(&tiny, &nets, &none, &[])), Kind::BadInput);
    }

    #[test]
    fn blocks_are_carved_first_free_first() {
        let s = n("10.96.0.0/24");
        let mut taken = HashSet::new();
        assert_eq!(first_free_block(s, 26, &taken), Some(n("10.96.0.0/26")));
        taken.insert(n("10.96.0.0/26"));
        taken.insert(n("10.96.0.128/26"));
        assert_eq!(first_free_block(s, 26, &taken), Some(n("10.96.0.64/26")));
        taken.insert(n("10.96.0.64/26"));
        taken.insert(n("10.96.0.192/26"));
        assert_eq!(first_free_block(s, 26, &taken), None);
    }

    #[test]
    fn block_segments_round_trip() {
        let b = n("10.96.0.64/26");
        assert_eq!(block_segment(b), "10.96.0.64-26");
        assert_eq!(parse_block_segment("10.96.0.64-26"), Some(b));
        assert_eq!(parse_block_segment("10.96.0.65-26"), None);
        assert_eq!(parse_block_segment("10.96.0.64-33"), None);
        assert_eq!(parse_block_segment("10.96.0.64/26"), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(4);
        assert_eq!(backoff(0, max), Duration::from_millis(250));
        assert_eq!(backoff(2, max), Duration::from_secs(1));
        assert_eq!(backoff(10, max), max);
        assert_eq!(backoff(u32::MAX, max), max);
    }
}
