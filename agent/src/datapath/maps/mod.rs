//! Typed wrappers over the pinned maps, one per map family. All byte-order conversion between
//! the agent's `Ipv4Addr`/`u16` and the datapath's network-order fields happens here.

mod batch;
pub mod config;
pub mod conntrack;
pub mod endpoints;
pub mod policy;
pub mod portmap;
pub mod ratelimit;
pub mod remotes;
pub mod stats;

use std::net::Ipv4Addr;

use anyhow::{anyhow, Context, Result};
use aya::{maps::Map, Ebpf};
use datapath_common::maps as names;

pub use config::ConfigTable;
pub use conntrack::ConntrackTable;
pub use endpoints::EndpointTable;
pub use policy::PolicyTable;
pub use portmap::PortMapTable;
pub use ratelimit::RateLimitTable;
pub use remotes::RemoteTable;
pub use stats::StatsTable;

pub struct Maps {
    pub portmap: PortMapTable,
    pub endpoints: EndpointTable,
    pub conntrack: ConntrackTable,
    pub config: ConfigTable,
    pub policy: PolicyTable,
    pub stats: StatsTable,
    pub ratelimit: RateLimitTable,
    pub remotes: RemoteTable,
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            portmap: PortMapTable::new(
                take(ebpf, names::PORTMAP)?,
                take(ebpf, names::PORT_GUARD)?,
            )?,
            endpoints: EndpointTable::new(
                take(ebpf, names::ENDPOINTS)?,
                take(ebpf, names::EP_BY_IF)?,
                take(ebpf, names::LOCAL_ADDRS)?,
            )?,
            conntrack: ConntrackTable::new(take(ebpf, names::CONNTRACK)?)?,
            config: ConfigTable::new(take(ebpf, names::CONFIG)?)?,
            policy: PolicyTable::new(take(ebpf, names::LINKS)?, take(ebpf, names::POLICY)?)?,
            stats: StatsTable::new(take(ebpf, names::EP_STATS)?, take(ebpf, names::COUNTERS)?)?,
            ratelimit: RateLimitTable::new(take(ebpf, names::RATELIMIT)?)?,
            remotes: RemoteTable::new(take(ebpf, names::REMOTES)?)?,
        })
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

/// Network-order u32 as stored in the maps (the packet's byte order, read natively).
pub fn ip_to_net(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn ip_from_net(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

pub fn port_to_net(p: u16) -> u16 {
    p.to_be()
}

pub fn port_from_net(p: u16) -> u16 {
    u16::from_be(p)
}

pub(crate) fn ctx<T, E: std::error::Error + Send + Sync + 'static>(
    r: std::result::Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T> {
    r.with_context(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_matches_packet_layout() {
        let ip = Ipv4Addr::new(10, 254, 0, 2);
        assert_eq!(ip_to_net(ip).to_ne_bytes(), [10, 254, 0, 2]);
        assert_eq!(ip_from_net(ip_to_net(ip)), ip);
        assert_eq!(port_to_net(61001).to_ne_bytes(), 61001u16.to_be_bytes());
        assert_eq!(port_from_net(port_to_net(80)), 80);
    }
}
