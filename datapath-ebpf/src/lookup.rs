//! What the datapath knows about an address, port or interface, from the maps the agent
//! fills: the container that owns an IP or a host veth, whether an address is the node's own,
//! and the port map published on an address. Every hook and module asks here; none reads
//! those maps itself.

use aya_ebpf::btf_maps::lpm_trie::Key;
use datapath_common::{
    endpoint::Endpoint,
    overlay::Remote,
    portmap::{PortKey, PortValue},
};

use crate::maps::{TG_ENDPOINTS, TG_EP_BY_IF, TG_LOCAL_ADDRS, TG_PORTMAP, TG_REMOTES};

/// The container that owns `ip`, if any.
#[inline(always)]
pub fn endpoint(ip: u32) -> Option<Endpoint> {
    // SAFETY: pointer from a lookup in this run; copied out at once.
    TG_ENDPOINTS.get_ptr(ip).map(|ep| unsafe { *ep })
}

/// The container whose host-side veth is `ifindex`, if the agent registered it.
#[inline(always)]
pub fn endpoint_by_ifindex(ifindex: u32) -> Option<Endpoint> {
    // SAFETY: pointer from a lookup in this run; copied out at once.
    TG_EP_BY_IF.get_ptr(ifindex).map(|ep| unsafe { *ep })
}

/// Whether `ip` (network order) is one of the node's addresses: a `TG_LOCAL_ADDRS` entry or
/// anything in 127.0.0.0/8.
#[inline(always)]
pub fn is_local(ip: u32) -> bool {
    u32::from_be(ip) >> 24 == 127 || TG_LOCAL_ADDRS.get_ptr(ip).is_some()
}

/// The mapping of `daddr:dport/proto`, if published: a map on that exact host IP wins,
/// then one on every local address (`host_ip: 0`) when `daddr` is local.
#[inline(always)]
pub fn published(daddr: u32, dport: u16, proto: u8) -> Option<PortValue> {
    let mut key = PortKey {
        host_ip: daddr,
        port: dport,
        proto,
        _pad: 0,
    };
    if let Some(v) = TG_PORTMAP.get_ptr(key) {
        // SAFETY: pointer from a lookup in this run; copied out at once.
        return Some(unsafe { *v });
    }
    if !is_local(daddr) {
        return None;
    }
    key.host_ip = 0;
    // SAFETY: as above.
    TG_PORTMAP.get_ptr(key).map(|v| unsafe { *v })
}

/// The node (and VNI) holding the container prefix `ip` is in, if another node holds one
/// (cluster mode; the map is empty otherwise).
#[inline(always)]
pub fn remote(ip: u32) -> Option<Remote> {
    TG_REMOTES.get(&Key::new(32, ip)).copied()
}
