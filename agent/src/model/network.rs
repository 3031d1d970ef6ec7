//! Networks, as Docker's user-defined networks: each has its subnet (containers get /30s of
//! it), ICC among its own containers unless `--no-icc`, isolation from every other network, and
//! `--internal` for no way out. The network `default` is the daemon's `--pool` and keeps the
//! behaviour Tollgate always had (ICC by `--icc`).

use anyhow::{bail, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The network that always exists: the daemon's `--pool`.
pub const DEFAULT_NETWORK: &str = "default";

/// Where subnets of networks created without `--subnet` come from: the first free /24.
pub const AUTO_SUBNETS: &str = "10.90.0.0/16";
pub const AUTO_PREFIX: u8 = 24;

/// A user-created network.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    /// Its id in the datapath (`Endpoint.net`); 0 is `default`.
    pub id: u32,
    pub subnet: Ipv4Net,
    /// Its containers reach each other by IP.
    pub icc: bool,
    /// No masquerade, no way out of the node.
    pub internal: bool,
    /// A cluster network (cluster mode): it lives in the store, `id` is its VNI, and each
    /// node takes addresses from blocks of its subnet it claimed there.
    #[serde(default)]
    pub cluster: bool,
}

/// Network names follow container names' rules.
pub fn validate_name(name: &str) -> Result<()> {
    if super::state::validate_name(name).is_err() {
        bail!("invalid network name {name:?} (1-32 characters: letters, digits, '-', '_', '.'; starting with a letter or digit)");
    }
    Ok(())
}

/// Whether two subnets share any address.
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first /24 of `AUTO_SUBNETS` that overlaps none of `taken`.
pub fn auto_subnet(taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    let range: Ipv4Net = AUTO_SUBNETS.parse().ok()?;
    range
        .subnets(AUTO_PREFIX)
        .ok()?
        .find(|s| !taken.iter().any(|t| overlaps(*s, *t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_overlap_and_auto_skips_taken_ones() {
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert!(overlaps(n("10.0.0.0/8"), n("10.1.0.0/16")));
        assert!(overlaps(n("10.1.0.0/16"), n("10.0.0.0/8")));
        assert!(!overlaps(n("10.1.0.0/16"), n("10.2.0.0/16")));
        assert_eq!(auto_subnet(&[]), Some(n("10.90.0.0/24")));
        assert_eq!(
            auto_subnet(&[n("10.90.0.0/23"), n("10.90.3.0/24")]),
            Some(n("10.90.2.0/24"))
        );
        assert_eq!(auto_subnet(&[n("10.90.0.0/16")]), None);
    }
}
