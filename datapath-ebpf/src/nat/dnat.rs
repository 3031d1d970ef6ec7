//! Destination NAT of published ports: finding the mapping, and the two rewrites (the
//! original direction's destination, the reply direction's source).

use aya_ebpf::programs::TcContext;
use datapath_common::{
    conntrack::{CtEntry, CT_DNAT},
    drop::DropReason,
    portmap::{PortKey, PortValue},
};

use super::{rewrite, End};
use crate::maps::{TG_LOCAL_ADDRS, TG_PORTMAP};

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

/// Original-direction entry of a new flow to published port `pm`.
#[inline(always)]
pub fn flow_entry(pm: &PortValue, extra_flags: u32, now: u64) -> CtEntry {
    CtEntry {
        nat_daddr: pm.container_ip,
        nat_dport: pm.container_port,
        flags: CT_DNAT | extra_flags,
        endpoint_id: pm.endpoint_id,
        created_ns: now,
        last_seen_ns: now,
        ..CtEntry::default()
    }
}

/// Original direction: the destination becomes the container.
#[inline(always)]
pub fn dnat(
    ctx: &TcContext,
    pkt: &mut crate::packet::Packet,
    ip: u32,
    port: u16,
) -> Result<(), DropReason> {
    rewrite(ctx, pkt, End::Dst, ip, port)
}

/// Reply direction: the container's source becomes the published address again.
#[inline(always)]
pub fn rev_dnat(
    ctx: &TcContext,
    pkt: &mut crate::packet::Packet,
    ip: u32,
    port: u16,
) -> Result<(), DropReason> {
    rewrite(ctx, pkt, End::Src, ip, port)
}
