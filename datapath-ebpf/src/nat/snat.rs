//! Source NAT. Only what self-hairpin needs for now: a container reaching its own published
//! port gets its source rewritten to its gateway, so its reply comes back through the veth
//! instead of being delivered locally inside the container. (Masquerade of container egress
//! comes later.)

use aya_ebpf::programs::TcContext;
use datapath_common::{conntrack::CtEntry, conntrack::CT_SNAT, drop::DropReason};

use super::{rewrite, End};
use crate::{maps::TG_ENDPOINTS, packet::Packet};

/// Adds to `e` the SNAT of a self-hairpin flow from `pkt`: source becomes the caller's gateway,
/// source port unchanged.
#[inline(always)]
pub fn self_hairpin(e: &mut CtEntry, pkt: &Packet) -> Result<(), DropReason> {
    // SAFETY: pointer from a lookup in this run; the field is copied out at once.
    let gw = TG_ENDPOINTS
        .get_ptr(pkt.saddr)
        .map(|ep| unsafe { (*ep).gateway_ip })
        .ok_or(DropReason::NoMapping)?;
    e.flags |= CT_SNAT;
    e.nat_saddr = gw;
    e.nat_sport = pkt.sport;
    Ok(())
}

/// Original direction: the source becomes `ip:port`.
#[inline(always)]
pub fn snat(ctx: &TcContext, pkt: &mut Packet, ip: u32, port: u16) -> Result<(), DropReason> {
    rewrite(ctx, pkt, End::Src, ip, port)
}

/// Reply direction: the destination goes back to the original source.
#[inline(always)]
pub fn rev_snat(ctx: &TcContext, pkt: &mut Packet, ip: u32, port: u16) -> Result<(), DropReason> {
    rewrite(ctx, pkt, End::Dst, ip, port)
}
