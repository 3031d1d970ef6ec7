//! Address/port rewriting with incremental checksums. `dnat` and `snat` hold the forward
//! rewrites and their `rev_*` counterparts used on replies; `apply` runs a conntrack entry.

pub mod dnat;
pub mod icmp;
pub mod snat;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use datapath_common::{
    conntrack::{CtEntry, CT_DNAT, CT_REPLY, CT_SNAT},
    drop::DropReason,
};

use crate::packet::{Packet, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF};

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy)]
enum End {
    Src,
    Dst,
}

/// Sets one end of the packet to `ip:port` (network order) and fixes the IPv4 and L4 checksums
/// incrementally. The address change goes into the L4 checksum with `BPF_F_PSEUDO_HDR` because
/// TCP/UDP checksums cover the pseudo-header (and, for CHECKSUM_PARTIAL skbs, only that part may
/// be adjusted). UDP uses `BPF_F_MARK_MANGLED_0`: a zero UDP checksum means "none" and must stay
/// zero, and a computed zero is written as 0xffff. ICMP has no pseudo-header, and its "port" is
/// the echo identifier (one field, at offset 4), carried by the end that sent the request (the
/// other end's "port" is 0 and never rewritten: only masquerade translates echo, on that end).
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    pkt: &mut Packet,
    end: End,
    ip: u32,
    port: u16,
) -> Result<(), DropReason> {
    let icmp = pkt.is_icmp();
    let (ip_off, mut port_off, old_ip, old_port) = match end {
        End::Src => (IP_SADDR_OFF, pkt.l4_off, pkt.saddr, pkt.sport),
        End::Dst => (IP_DADDR_OFF, pkt.l4_off + 2, pkt.daddr, pkt.dport),
    };
    if icmp {
        port_off = pkt.l4_off + 4;
    }
    let csum_off = pkt.l4_csum_off();
    let mangled0 = if pkt.is_udp() {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if old_ip != ip {
        if !icmp {
            ctx.l4_csum_replace(
                csum_off,
                u64::from(old_ip),
                u64::from(ip),
                u64::from(BPF_F_PSEUDO_HDR) | mangled0 | 4,
            )
            .map_err(|_| DropReason::Internal)?;
        }
        ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_ip), u64::from(ip), 4)
            .map_err(|_| DropReason::Internal)?;
        ctx.store(ip_off, &ip, 0)
            .map_err(|_| DropReason::Internal)?;
    }
    if old_port != port {
        ctx.l4_csum_replace(csum_off, u64::from(old_port), u64::from(port), mangled0 | 2)
            .map_err(|_| DropReason::Internal)?;
        ctx.store(port_off, &port, 0)
            .map_err(|_| DropReason::Internal)?;
    }
    match end {
        End::Src => {
            pkt.saddr = ip;
            pkt.sport = port;
        }
        End::Dst => {
            pkt.daddr = ip;
            pkt.dport = port;
        }
    }
    Ok(())
}

/// Rewrites the packet as conntrack entry `e` says.
#[inline(always)]
pub fn apply(ctx: &TcContext, pkt: &mut Packet, e: &CtEntry) -> Result<(), DropReason> {
    if e.flags & CT_REPLY != 0 {
        // The reply half of a DNAT flow restores the source, of an SNAT flow the destination.
        if e.flags & CT_SNAT != 0 {
            dnat::rev_dnat(ctx, pkt, e.nat_saddr, e.nat_sport)?;
        }
        if e.flags & CT_DNAT != 0 {
            snat::rev_snat(ctx, pkt, e.nat_daddr, e.nat_dport)?;
        }
    } else {
        if e.flags & CT_DNAT != 0 {
            dnat::dnat(ctx, pkt, e.nat_daddr, e.nat_dport)?;
        }
        if e.flags & CT_SNAT != 0 {
            snat::snat(ctx, pkt, e.nat_saddr, e.nat_sport)?;
        }
    }
    Ok(())
}
