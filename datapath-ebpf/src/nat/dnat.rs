//! Destination NAT of published ports: a flow's entry from its mapping, and the two rewrites (the
//! original direction's destination, the reply direction's source).

use aya_ebpf::programs::TcContext;
use datapath_common::{
    conntrack::{CtEntry, CT_DNAT},
    drop::DropReason,
    portmap::PortValue,
};

use super::{rewrite, Checksum, End};
use crate::conntrack;

/// Original-direction entry of a new flow to published port `pm`, built in this CPU's
/// `conntrack::HALF` scratch slot.
#[inline(always)]
pub fn flow_entry(pm: &PortValue, extra_flags: u32, now: u64) -> Result<*mut CtEntry, DropReason> {
    let e = conntrack::new_entry(conntrack::HALF, CT_DNAT | extra_flags, pm.endpoint_id, now)?;
    // SAFETY: `e` is this CPU's scratch slot, just built.
    unsafe {
        (*e).nat_daddr = pm.container_ip;
        (*e).nat_dport = pm.container_port;
    }
    Ok(e)
}

/// Original direction: the destination becomes the container.
#[inline(always)]
pub fn dnat(
    ctx: &TcContext,
    pkt: &mut crate::packet::Packet,
    ip: u32,
    port: u16,
    how: Checksum,
) -> Result<(), DropReason> {
    rewrite(ctx, pkt, End::Dst, ip, port, how)
}

/// Reply direction: the container's source becomes the published address again.
#[inline(always)]
pub fn rev_dnat(
    ctx: &TcContext,
    pkt: &mut crate::packet::Packet,
    ip: u32,
    port: u16,
    how: Checksum,
) -> Result<(), DropReason> {
    rewrite(ctx, pkt, End::Src, ip, port, how)
}
