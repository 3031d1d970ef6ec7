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
    conntrack::{CT_DNAT, CT_REPLY, CT_SNAT},
    drop::DropReason,
};

use datapath_common::csum;

use crate::{
    conntrack::Xlate,
    packet::{self, Packet, ICMP_ID_OFF, IP_CSUM_OFF, L4_DPORT_OFF, L4_SPORT_OFF},
};

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
    rewrite_headers(ctx, pkt, end, ip, port, true)
}

/// `rewrite`, with the L4 header (`l4`) or, for a datagram's later fragment, without: it has
/// none, and the first fragment carries the ports and the checksum, which covers the whole
/// datagram. `l4` is a constant at every call, so each inlined copy has one of the two shapes.
#[inline(always)]
fn rewrite_headers(
    ctx: &TcContext,
    pkt: &mut Packet,
    end: End,
    ip: u32,
    port: u16,
    l4: bool,
) -> Result<(), DropReason> {
    let icmp = pkt.is_icmp();
    let (mut port_off, old_ip, old_port) = match end {
        End::Src => (pkt.l4_off + L4_SPORT_OFF, pkt.saddr, pkt.sport),
        End::Dst => (pkt.l4_off + L4_DPORT_OFF, pkt.daddr, pkt.dport),
    };
    if icmp {
        port_off = pkt.l4_off + ICMP_ID_OFF;
    }
    let csum_off = pkt.l4_csum_off();
    let mangled0 = if pkt.is_udp() {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if old_ip != ip {
        if !icmp && l4 {
            ctx.l4_csum_replace(
                csum_off,
                u64::from(old_ip),
                u64::from(ip),
                u64::from(BPF_F_PSEUDO_HDR) | mangled0 | 4,
            )
            .map_err(|_| DropReason::CsumFailed)?;
        }
        // The IPv4 checksum is updated here (RFC 1624) and written with both addresses in
        // one store: one helper call instead of a checksum helper plus a store.
        let check = csum::update32(packet::ip_check(ctx)?, old_ip, ip);
        let (saddr, daddr) = match end {
            End::Src => (ip, pkt.daddr),
            End::Dst => (pkt.saddr, ip),
        };
        let c = check.to_ne_bytes();
        let (s, d) = (saddr.to_ne_bytes(), daddr.to_ne_bytes());
        let block: [u8; 10] = [c[0], c[1], s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3]];
        packet::write(ctx, IP_CSUM_OFF, &block)?;
    }
    if old_port != port && l4 {
        ctx.l4_csum_replace(csum_off, u64::from(old_port), u64::from(port), mangled0 | 2)
            .map_err(|_| DropReason::CsumFailed)?;
        packet::write(ctx, port_off, &port)?;
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

/// Rewrites the packet as a conntrack entry says.
#[inline(always)]
pub fn apply(ctx: &TcContext, pkt: &mut Packet, e: &Xlate) -> Result<(), DropReason> {
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

/// Rewrites a datagram's later fragment as its flow's entry says: the addresses only (see
/// `rewrite_headers`).
#[inline(always)]
pub fn apply_fragment(ctx: &TcContext, pkt: &mut Packet, e: &Xlate) -> Result<(), DropReason> {
    if e.flags & CT_REPLY != 0 {
        if e.flags & CT_SNAT != 0 {
            rewrite_headers(ctx, pkt, End::Src, e.nat_saddr, e.nat_sport, false)?;
        }
        if e.flags & CT_DNAT != 0 {
            rewrite_headers(ctx, pkt, End::Dst, e.nat_daddr, e.nat_dport, false)?;
        }
    } else {
        if e.flags & CT_DNAT != 0 {
            rewrite_headers(ctx, pkt, End::Dst, e.nat_daddr, e.nat_dport, false)?;
        }
        if e.flags & CT_SNAT != 0 {
            rewrite_headers(ctx, pkt, End::Src, e.nat_saddr, e.nat_sport, false)?;
        }
    }
    Ok(())
}
