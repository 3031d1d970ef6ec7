//! Whether a daemon's datapath holds exactly what its state says: the state as the CLI shows
//! it (`container list`, `port list`, `policy list`, `limit show`) against the pinned maps
//! read with aya, the veths of the node namespace, the programs attached to them, the pins of
//! their links, the containers' namespaces and the node's reserved ports. Every difference is
//! reported, not just the first.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use anyhow::{bail, Context, Result};
use aya::maps::{lpm_trie::LpmTrie, Array, HashMap as BpfHash, Map, MapData};
use datapath_common::{
    endpoint::{Endpoint, LinkKey, PolicyChain, PolicyKey, EP_EGRESS_DENY},
    maps as names,
    portmap::{PortKey, PortValue},
    ratelimit::RateLimit,
};
use tollgate::api::types::{ContainerInfo, LimitInfo, PolicyInfo, PortMapInfo, Status};

use crate::{in_ns, Daemon};

/// The state as the daemon answers it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shown {
    pub containers: Vec<ContainerInfo>,
    pub ports: Vec<PortMapInfo>,
    pub policies: Vec<PolicyInfo>,
    pub limits: Vec<LimitInfo>,
}

impl Shown {
    /// Reads it through the CLI.
    pub fn read(d: &Daemon) -> Result<Self> {
        let json = |args: &[&str]| -> Result<serde_json::Value> {
            let mut a = args.to_vec();
            a.push("--json");
            let r = d.tg(&a);
            if r.code != 0 {
                bail!("tollgate {} failed: {}", a.join(" "), r.stderr);
            }
            serde_json::from_str(&r.stdout).context("the CLI's JSON")
        };
        let containers: Vec<ContainerInfo> = serde_json::from_value(json(&["container", "list"])?)?;
        let ports = serde_json::from_value(json(&["port", "list"])?)?;
        let policies = containers
            .iter()
            .map(|c| Ok(serde_json::from_value(json(&["policy", "list", &c.name])?)?))
            .collect::<Result<_>>()?;
        let limits = serde_json::from_value(json(&["limit", "show"])?)?;
        Ok(Self {
            containers,
            ports,
            policies,
            limits,
        })
    }
}

/// The container id, from its veth's name (`tgvN`).
pub fn container_id(c: &ContainerInfo) -> Result<u32> {
    c.host_ifname
        .strip_prefix("tgv")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("veth name {} is not tgvN", c.host_ifname))
}

fn open(bpffs: &Path, name: &str) -> Result<MapData> {
    let pin = bpffs.join("maps").join(name);
    MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))
}

fn hash<K: aya::Pod, V: aya::Pod>(bpffs: &Path, name: &str) -> Result<Vec<(K, V)>> {
    let m: BpfHash<_, K, V> = BpfHash::try_from(Map::HashMap(open(bpffs, name)?))?;
    m.iter()
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("reading {name}"))
}

fn diff(bad: &mut Vec<String>, what: &str, want: &str, got: &str) {
    if want != got {
        bad.push(format!(
            "{what}:\n    state:    {want}\n    datapath: {got}"
        ));
    }
}

/// Counts of what was compared, for the test's output.
#[derive(Debug, Default)]
pub struct Agreed {
    pub containers: usize,
    pub port_maps: usize,
    pub guards: usize,
    pub links: usize,
    pub chains: usize,
    pub limited: usize,
}

/// Compares `shown` with the datapath of `d`; `Err` lists every difference. `netns_prefix`:
/// namespaces `/run/netns/tg-<prefix>*` the test's containers may have, to find orphans.
#[expect(
    clippy::too_many_lines,
    reason = "one comparison per map, each a few lines, reported together"
)]
pub fn datapath_agrees(d: &Daemon, shown: &Shown, netns_prefix: &str) -> Result<Agreed> {
    let mut bad: Vec<String> = Vec::new();
    let bpffs = d.bpffs.as_path();
    let status: Status = serde_json::from_str(&d.ok(&["status", "--json"]))?;
    let ids: BTreeMap<&str, u32> = shown
        .containers
        .iter()
        .map(|c| Ok((c.name.as_str(), container_id(c)?)))
        .collect::<Result<_>>()?;

    // Veths of the node namespace, and what is attached to each container's.
    let node = d.node.clone();
    let links: Vec<serde_json::Value> =
        serde_json::from_str(&crate::sh("ip", &["-n", &node, "-j", "link", "show"])?)?;
    let veths: BTreeMap<String, u32> = links
        .iter()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?;
            let idx = u32::try_from(l["ifindex"].as_u64()?).ok()?;
            name.starts_with("tgv").then(|| (name.to_string(), idx))
        })
        .collect();
    let want_veths: BTreeSet<&str> = shown
        .containers
        .iter()
        .map(|c| c.host_ifname.as_str())
        .collect();
    diff(
        &mut bad,
        "veths in the node namespace",
        &format!("{want_veths:?}"),
        &format!("{:?}", veths.keys().collect::<BTreeSet<_>>()),
    );
    let names: Vec<String> = shown
        .containers
        .iter()
        .map(|c| c.host_ifname.clone())
        .collect();
    let attached = in_ns(&node, move || {
        use aya::programs::{SchedClassifier, TcAttachType};
        let mut out = BTreeMap::new();
        for n in names {
            let mut progs = Vec::new();
            for at in [TcAttachType::Ingress, TcAttachType::Egress] {
                let list = match SchedClassifier::query_tcx(&n, at) {
                    Ok((_, p)) => p
                        .iter()
                        .map(|i| i.name_as_str().unwrap_or("?").to_string())
                        .collect::<Vec<_>>(),
                    Err(e) => vec![format!("error: {e}")],
                };
                progs.push(list);
            }
            out.insert(n, progs);
        }
        Ok(out)
    })?;
    for (veth, progs) in &attached {
        diff(
            &mut bad,
            &format!("programs on {veth} (ingress, egress)"),
            &format!("{:?}", [["from_container"], ["to_container"]]),
            &format!("{progs:?}"),
        );
    }
    let pins: BTreeSet<String> = std::fs::read_dir(bpffs.join("links"))?
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
        .filter(|n| n.contains("@tgv"))
        .collect();
    let want_pins: BTreeSet<String> = want_veths
        .iter()
        .flat_map(|v| [format!("from_container@{v}"), format!("to_container@{v}")])
        .collect();
    diff(
        &mut bad,
        "pinned container links",
        &format!("{want_pins:?}"),
        &format!("{pins:?}"),
    );
    let netns: BTreeSet<String> = std::fs::read_dir("/run/netns")?
        .filter_map(|e| e.ok()?.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(&format!("tg-{netns_prefix}")))
        .collect();
    let want_netns: BTreeSet<String> = shown
        .containers
        .iter()
        .filter_map(|c| {
            Path::new(&c.netns)
                .file_name()?
                .to_str()
                .map(str::to_string)
        })
        .filter(|n| n.starts_with(&format!("tg-{netns_prefix}")))
        .collect();
    diff(
        &mut bad,
        "container namespaces",
        &format!("{want_netns:?}"),
        &format!("{netns:?}"),
    );

    // Endpoints, by IP and by veth.
    let ep_of = |c: &ContainerInfo| -> String {
        let deny = shown
            .policies
            .iter()
            .any(|p| p.container == c.name && p.egress == tollgate::model::Stance::Deny);
        format!(
            "{} id {} veth {:?} gw {} deny {deny}",
            c.ip,
            ids[c.name.as_str()],
            veths.get(&c.host_ifname),
            c.gateway
        )
    };
    let show_ep = |e: &Endpoint| -> String {
        let ifname = veths
            .iter()
            .find(|(_, i)| **i == e.host_ifindex)
            .map(|(_, i)| *i);
        format!(
            "{} id {} veth {ifname:?} gw {} deny {}",
            Ipv4Addr::from(e.ip.to_ne_bytes()),
            e.id,
            Ipv4Addr::from(e.gateway_ip.to_ne_bytes()),
            e.flags & EP_EGRESS_DENY != 0
        )
    };
    let want: BTreeSet<String> = shown.containers.iter().map(ep_of).collect();
    let endpoints: Vec<(u32, Endpoint)> = hash(bpffs, names::ENDPOINTS)?;
    diff(
        &mut bad,
        "TG_ENDPOINTS",
        &format!("{want:?}"),
        &format!(
            "{:?}",
            endpoints
                .iter()
                .map(|(_, e)| show_ep(e))
                .collect::<BTreeSet<_>>()
        ),
    );
    if let Some((k, e)) = endpoints.iter().find(|(k, e)| *k != e.ip) {
        bad.push(format!("TG_ENDPOINTS key {k:#x} holds {}", show_ep(e)));
    }
    let by_veth: Vec<(u32, Endpoint)> = hash(bpffs, names::EP_BY_IF)?;
    diff(
        &mut bad,
        "TG_EP_BY_IF",
        &format!("{want:?}"),
        &format!(
            "{:?}",
            by_veth
                .iter()
                .map(|(_, e)| show_ep(e))
                .collect::<BTreeSet<_>>()
        ),
    );
    if let Some((k, e)) = by_veth.iter().find(|(k, e)| *k != e.host_ifindex) {
        bad.push(format!("TG_EP_BY_IF key {k} holds {}", show_ep(e)));
    }
    let locals: Vec<(u32, u32)> = hash(bpffs, names::LOCAL_ADDRS)?;
    let want_locals: BTreeSet<Ipv4Addr> = status
        .uplink_ips
        .iter()
        .copied()
        .chain([Ipv4Addr::LOCALHOST])
        .chain(shown.containers.iter().map(|c| c.gateway))
        .collect();
    diff(
        &mut bad,
        "TG_LOCAL_ADDRS",
        &format!("{want_locals:?}"),
        &format!(
            "{:?}",
            locals
                .iter()
                .map(|(k, _)| Ipv4Addr::from(k.to_ne_bytes()))
                .collect::<BTreeSet<_>>()
        ),
    );

    // Port maps and bind guards.
    let ip_of: BTreeMap<&str, Ipv4Addr> = shown
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.ip))
        .collect();
    let proto_num = |p: &str| if p == "udp" { 17u8 } else { 6 };
    let want_maps: BTreeSet<String> = shown
        .ports
        .iter()
        .map(|m| {
            format!(
                "{}:{}/{} -> {:?}:{} id {:?}",
                m.host_ip,
                m.host_port,
                proto_num(&m.proto.to_string()),
                ip_of.get(m.container.as_str()),
                m.container_port,
                ids.get(m.container.as_str())
            )
        })
        .collect();
    let maps: Vec<(PortKey, PortValue)> = hash(bpffs, names::PORTMAP)?;
    let got_maps: BTreeSet<String> = maps
        .iter()
        .map(|(k, v)| {
            format!(
                "{}:{}/{} -> {:?}:{} id {:?}",
                Ipv4Addr::from(k.host_ip.to_ne_bytes()),
                u16::from_be(k.port),
                k.proto,
                Some(Ipv4Addr::from(v.container_ip.to_ne_bytes())),
                u16::from_be(v.container_port),
                Some(v.endpoint_id)
            )
        })
        .collect();
    diff(
        &mut bad,
        "TG_PORTMAP",
        &format!("{want_maps:?}"),
        &format!("{got_maps:?}"),
    );
    let want_guards: BTreeSet<(u16, u8)> = shown
        .ports
        .iter()
        .map(|m| (m.host_port, proto_num(&m.proto.to_string())))
        .collect();
    let guards: Vec<(PortKey, u32)> = hash(bpffs, names::PORT_GUARD)?;
    let got_guards: BTreeSet<(u16, u8)> = guards
        .iter()
        .map(|(k, _)| (u16::from_be(k.port), k.proto))
        .collect();
    diff(
        &mut bad,
        "TG_PORT_GUARD",
        &format!("{want_guards:?}"),
        &format!("{got_guards:?}"),
    );

    // Published ports are kept out of the node's ephemeral range (the sandbox's node
    // namespace has no reserved ports of its own).
    let reserved = in_ns(&node, || {
        // One read from offset 0: the kernel answers nothing at a later offset, and
        // `read_to_string` would start with a 32-byte probe.
        let mut f = std::fs::File::open("/proc/sys/net/ipv4/ip_local_reserved_ports")?;
        let mut buf = vec![0u8; 512 << 10];
        let n = std::io::Read::read(&mut f, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    })?;
    let got_reserved: BTreeSet<u16> = reserved
        .trim()
        .split(',')
        .filter(|p| !p.is_empty())
        .flat_map(|p| {
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            let (lo, hi): (u16, u16) = (lo.parse().unwrap_or(0), hi.parse().unwrap_or(0));
            lo..=hi
        })
        .collect();
    let want_reserved: BTreeSet<u16> = shown.ports.iter().map(|m| m.host_port).collect();
    diff(
        &mut bad,
        "ip_local_reserved_ports of the node namespace",
        &format!("{want_reserved:?}"),
        &format!("{got_reserved:?}"),
    );

    // Links, policy chains, rate limits.
    let want_links: BTreeSet<(u32, u32)> = shown
        .policies
        .iter()
        .flat_map(|p| {
            p.links
                .iter()
                .map(|t| (ids[p.container.as_str()], ids[t.as_str()]))
        })
        .collect();
    let got_links: BTreeSet<(u32, u32)> = hash::<LinkKey, u32>(bpffs, names::LINKS)?
        .iter()
        .map(|(k, _)| (k.from_id, k.to_id))
        .collect();
    diff(
        &mut bad,
        "TG_LINKS",
        &format!("{want_links:?}"),
        &format!("{got_links:?}"),
    );
    let want_chains: BTreeSet<(u32, String)> = shown
        .policies
        .iter()
        .flat_map(|p| {
            p.rules
                .iter()
                .map(|r| (ids[p.container.as_str()], r.cidr.clone()))
        })
        .collect();
    let trie: LpmTrie<_, PolicyKey, PolicyChain> =
        LpmTrie::try_from(Map::LpmTrie(open(bpffs, names::POLICY)?))?;
    let mut got_chains = BTreeSet::new();
    for k in trie.keys() {
        let k = k?;
        let d = k.data();
        got_chains.insert((
            u32::from_be(d.endpoint_id_be),
            format!(
                "{}/{}",
                Ipv4Addr::from(d.ip.to_ne_bytes()),
                k.prefix_len() - 32
            ),
        ));
    }
    diff(
        &mut bad,
        "TG_POLICY chains",
        &format!("{want_chains:?}"),
        &format!("{got_chains:?}"),
    );
    let limits: BTreeMap<&str, &LimitInfo> = shown
        .limits
        .iter()
        .map(|l| (l.container.as_str(), l))
        .collect();
    let rl: Array<_, RateLimit> = Array::try_from(Map::Array(open(bpffs, names::RATELIMIT)?))?;
    let max_id = ids.values().copied().max().unwrap_or(0) + 16;
    let mut want_rates = BTreeMap::new();
    let mut got_rates = BTreeMap::new();
    for id in 1..=max_id {
        let name = ids.iter().find(|(_, i)| **i == id).map(|(n, _)| *n);
        let l = name.and_then(|n| limits.get(n));
        let want = (
            l.and_then(|l| l.egress_bps).map_or(0, |b| b / 8),
            l.and_then(|l| l.ingress_bps).map_or(0, |b| b / 8),
        );
        let v = rl.get(&id, 0)?;
        let got = (v.egress.rate, v.ingress.rate);
        if want != (0, 0) || got != (0, 0) {
            want_rates.insert(id, want);
            got_rates.insert(id, got);
        }
    }
    diff(
        &mut bad,
        "TG_RATELIMIT rates (bytes/s) by id",
        &format!("{want_rates:?}"),
        &format!("{got_rates:?}"),
    );

    if !bad.is_empty() {
        bail!(
            "the datapath disagrees with the state:\n  {}",
            bad.join("\n  ")
        );
    }
    Ok(Agreed {
        containers: shown.containers.len(),
        port_maps: maps.len(),
        guards: guards.len(),
        links: want_links.len(),
        chains: got_chains.len(),
        limited: want_rates.len(),
    })
}
