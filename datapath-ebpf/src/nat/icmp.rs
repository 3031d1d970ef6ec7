//! ICMP errors about translated flows (`from_uplink`). A router or the peer answers a packet
//! that left with a translated source (`snat_ip:nat_port` of a masqueraded flow, or
//! `hostip:P` of a port map's reply) with destination unreachable (port unreachable,
//! fragmentation needed) or time exceeded, quoting that packet's IP header and first 8 bytes.
//! The quoted packet is looked up as the flow's other direction would be; its entry says where
//! the flow really starts, and the error is rewritten to go there:
//!
//! ```text
//! outer  router -> snat_ip          becomes  router -> container
//! inner  snat_ip:nat_port -> peer:p becomes  container:port -> peer:p
//! ```
//! Checksums: outer IPv4 incrementally with the kernel helper; everything inside the ICMP
//! message (inner address, inner IPv4 checksum, inner port, inner L4 checksum when quoted,
//! and the ICMP checksum that covers them all) is computed with `datapath_common::csum` and
//! stored with `BPF_F_RECOMPUTE_CSUM`, so a CHECKSUM_COMPLETE skb's `csum` stays right too.

use aya_ebpf::{bindings::BPF_F_RECOMPUTE_CSUM, programs::TcContext};
use datapath_common::{
    config::Config,
    conntrack::{CtKey, CT_DNAT, CT_HAIRPIN},
    csum,
    drop::DropReason,
    proto,
    stats::CNT_ICMP_ERR_XLATED,
};

use crate::{
    conntrack,
    packet::{Ipv4Hdr, Packet, ICMP_ECHO, ICMP_HLEN, IP_CSUM_OFF, IP_DADDR_OFF},
    verdict::{self, Skip, Stop},
};

/// The quoted packet: where its headers sit and its tuple (network order).
struct Inner {
    ip_off: usize,
    l4_off: usize,
    proto: u8,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// Translates an ICMP error about a translated flow back to the flow's container, or
/// `NotOurs` (the stack gets it untouched).
#[inline(always)]
pub fn rev_error(ctx: &TcContext, pkt: &Packet, cfg: &Config, now: u64) -> Result<(), Stop> {
    let inner = quoted(ctx, pkt)?;
    // Only errors addressed to the quoted packet's source can be about it.
    if inner.saddr != pkt.daddr {
        return Err(Skip::NotOurs.into());
    }
    // The flow's other direction as conntrack keys it: peer -> translated address.
    let key = CtKey {
        saddr: inner.daddr,
        daddr: inner.saddr,
        sport: inner.dport,
        dport: inner.sport,
        proto: inner.proto,
        _pad: [0; 3],
    };
    let e = conntrack::lookup_live(&key, cfg, now).ok_or(Skip::NotOurs)?;
    // SAFETY: `e` came from a lookup in this run; copied out at once.
    let entry = unsafe { *e };
    // A DNAT half from outside: a masquerade reply half or a port map's original half.
    if entry.flags & CT_DNAT == 0 || entry.flags & CT_HAIRPIN != 0 {
        return Err(Skip::NotOurs.into());
    }
    outer_daddr(ctx, pkt.daddr, entry.nat_daddr)?;
    inner_source(ctx, pkt, &inner, entry.nat_daddr, entry.nat_dport)?;
    verdict::count(CNT_ICMP_ERR_XLATED);
    Ok(())
}

/// Parses the quoted IPv4 header and the ports after it (an echo request: the identifier as
/// its source "port", as `Packet` keys it).
#[inline(always)]
fn quoted(ctx: &TcContext, pkt: &Packet) -> Result<Inner, Skip> {
    let ip_off = pkt.l4_off + ICMP_HLEN;
    let ip: Ipv4Hdr = ctx.load(ip_off).map_err(|_| Skip::Malformed)?;
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < 20 {
        return Err(Skip::Malformed);
    }
    let l4_off = ip_off + ihl;
    let ports: [u16; 2] = ctx.load(l4_off).map_err(|_| Skip::Malformed)?;
    let (sport, dport) = match ip.protocol {
        proto::TCP | proto::UDP => (ports[0], ports[1]),
        proto::ICMP => {
            let hdr: [u8; 2] = ctx.load(l4_off).map_err(|_| Skip::Malformed)?;
            if hdr[0] != ICMP_ECHO {
                return Err(Skip::NotOurs);
            }
            let id: u16 = ctx.load(l4_off + 4).map_err(|_| Skip::Malformed)?;
            (id, 0)
        }
        _ => return Err(Skip::NotOurs),
    };
    Ok(Inner {
        ip_off,
        l4_off,
        proto: ip.protocol,
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
    })
}

/// The error's own destination becomes the container.
#[inline(always)]
fn outer_daddr(ctx: &TcContext, old: u32, new: u32) -> Result<(), DropReason> {
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 4)
        .map_err(|_| DropReason::Internal)?;
    ctx.store(IP_DADDR_OFF, &new, 0)
        .map_err(|_| DropReason::Internal)
}

/// Reads a big-endian 16-bit word as a host-order value.
#[inline(always)]
fn load16(ctx: &TcContext, off: usize) -> Result<u16, DropReason> {
    ctx.load::<u16>(off)
        .map(u16::from_be)
        .map_err(|_| DropReason::Internal)
}

#[inline(always)]
fn store16(ctx: &TcContext, off: usize, v: u16) -> Result<(), DropReason> {
    ctx.store(off, &v.to_be(), u64::from(BPF_F_RECOMPUTE_CSUM))
        .map_err(|_| DropReason::Internal)
}

/// The quoted packet's source becomes `ip:port` (network order), every checksum that covers it
/// kept valid.
#[inline(always)]
fn inner_source(
    ctx: &TcContext,
    pkt: &Packet,
    inner: &Inner,
    ip: u32,
    port: u16,
) -> Result<(), DropReason> {
    let (old_ip, new_ip) = (u32::from_be(inner.saddr), u32::from_be(ip));
    let (old_port, new_port) = (u16::from_be(inner.sport), u16::from_be(port));
    let icmp_csum_off = pkt.l4_off + 2;
    let mut icmp = load16(ctx, icmp_csum_off)?;

    // Inner source address, and the inner IPv4 checksum that covers it.
    ctx.store(inner.ip_off + 12, &ip, u64::from(BPF_F_RECOMPUTE_CSUM))
        .map_err(|_| DropReason::Internal)?;
    icmp = csum::update32(icmp, old_ip, new_ip);
    let ip_csum = load16(ctx, inner.ip_off + 10)?;
    let new_ip_csum = csum::update32(ip_csum, old_ip, new_ip);
    store16(ctx, inner.ip_off + 10, new_ip_csum)?;
    icmp = csum::update16(icmp, ip_csum, new_ip_csum);

    // Inner source port (echo: identifier), then the inner L4 checksum if it was quoted
    // (UDP's always is, within the 8 bytes; TCP's only when the quote is longer).
    let (port_off, l4_csum_off, pseudo) = match inner.proto {
        proto::TCP => (inner.l4_off, inner.l4_off + 16, true),
        proto::UDP => (inner.l4_off, inner.l4_off + 6, true),
        _ => (inner.l4_off + 4, inner.l4_off + 2, false),
    };
    store16(ctx, port_off, new_port)?;
    icmp = csum::update16(icmp, old_port, new_port);
    if let Ok(l4) = ctx.load::<u16>(l4_csum_off).map(u16::from_be) {
        // UDP: zero means "no checksum" and stays so.
        if !(inner.proto == proto::UDP && l4 == 0) {
            let mut new_l4 = csum::update16(l4, old_port, new_port);
            if pseudo {
                new_l4 = csum::update32(new_l4, old_ip, new_ip);
            }
            if inner.proto == proto::UDP && new_l4 == 0 {
                new_l4 = 0xffff;
            }
            store16(ctx, l4_csum_off, new_l4)?;
            icmp = csum::update16(icmp, l4, new_l4);
        }
    }
    store16(ctx, icmp_csum_off, icmp)
}
