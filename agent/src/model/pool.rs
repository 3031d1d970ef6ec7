//! Address pool: Warden-style /30 subnets carved from `--pool` (gateway = .1, container = .2
//! of each /30), plus host-port allocation from `--port-range`.

use std::{collections::HashSet, net::Ipv4Addr, ops::RangeInclusive};

use anyhow::{bail, Result};
use ipnet::Ipv4Net;

/// One container's slice of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub network: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub ip: Ipv4Addr,
}

pub const SLOT_PREFIX: u8 = 30;

#[derive(Clone, Debug)]
pub struct Pool {
    net: Ipv4Net,
}

impl Pool {
    pub fn new(net: Ipv4Net) -> Result<Self> {
        if net.prefix_len() > SLOT_PREFIX {
            bail!("pool {net} is smaller than one /30");
        }
        Ok(Self { net: net.trunc() })
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    fn slots(&self) -> impl Iterator<Item = Slot> {
        let base = u32::from(self.net.network());
        let count = 1u32 << (SLOT_PREFIX - self.net.prefix_len());
        (0..count).map(move |i| {
            let n = base + i * 4;
            Slot {
                network: n.into(),
                gateway: (n + 1).into(),
                ip: (n + 2).into(),
            }
        })
    }

    /// The slot whose container address is `ip`, if `ip` is one.
    pub fn slot_for(&self, ip: Ipv4Addr) -> Result<Slot> {
        let n = u32::from(ip);
        if !self.net.contains(&ip) || n & 3 != 2 {
            bail!(
                "{ip} is not a container address of pool {} (use the .2 of a free /30, e.g. {})",
                self.net,
                Ipv4Addr::from(u32::from(self.net.network()) + 2)
            );
        }
        Ok(Slot {
            network: (n - 2).into(),
            gateway: (n - 1).into(),
            ip,
        })
    }

    /// The first slot whose container address is not in `used`.
    pub fn allocate(&self, used: &HashSet<Ipv4Addr>) -> Result<Slot> {
        self.slots()
            .find(|s| !used.contains(&s.ip))
            .ok_or_else(|| anyhow::anyhow!("address pool {} is exhausted", self.net))
    }
}

/// First port of `range` for which `free` says yes.
pub fn allocate_port(
    range: &RangeInclusive<u16>,
    mut free: impl FnMut(u16) -> bool,
) -> Result<u16> {
    range.clone().find(|p| free(*p)).ok_or_else(|| {
        anyhow::anyhow!(
            "no free host port left in --port-range {}-{}",
            range.start(),
            range.end()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool::new("10.254.0.0/22".parse().unwrap()).unwrap()
    }

    #[test]
    fn warden_layout() {
        let s = pool().allocate(&HashSet::new()).unwrap();
        assert_eq!(s.network, Ipv4Addr::new(10, 254, 0, 0));
        assert_eq!(s.gateway, Ipv4Addr::new(10, 254, 0, 1));
        assert_eq!(s.ip, Ipv4Addr::new(10, 254, 0, 2));
    }

    #[test]
    fn skips_used_and_exhausts() {
        let p = Pool::new("10.0.0.0/29".parse().unwrap()).unwrap();
        let mut used = HashSet::new();
        let a = p.allocate(&used).unwrap();
        used.insert(a.ip);
        let b = p.allocate(&used).unwrap();
        assert_eq!(b.ip, Ipv4Addr::new(10, 0, 0, 6));
        used.insert(b.ip);
        assert!(p.allocate(&used).is_err());
        assert_eq!(pool().slots().count(), 256);
    }

    #[test]
    fn explicit_ip_must_be_container_address() {
        let p = pool();
        assert_eq!(
            p.slot_for(Ipv4Addr::new(10, 254, 0, 14)).unwrap().gateway,
            Ipv4Addr::new(10, 254, 0, 13)
        );
        assert!(p.slot_for(Ipv4Addr::new(10, 254, 0, 13)).is_err());
        assert!(p.slot_for(Ipv4Addr::new(10, 255, 0, 2)).is_err());
    }

    #[test]
    fn port_allocation() {
        let used: HashSet<u16> = [61001, 61002].into_iter().collect();
        let free = |p: u16| !used.contains(&p) && p != 61003;
        assert_eq!(allocate_port(&(61001..=61010), free).unwrap(), 61004);
        assert!(allocate_port(&(61001..=61002), |p| !used.contains(&p)).is_err());
    }
}
