//! ICMP errors about translated flows, both ways.
//!
//! `rev_error` (`from_uplink`): a router or the peer answers a packet that left with a
//! translated source (`snat_ip:nat_port` of a masqueraded flow, or `hostip:P` of a port map's
//! reply) with destination unreachable (port unreachable, fragmentation needed), time exceeded
//! or parameter problem, quoting that packet's IP header and first 8 bytes. The quoted packet
//! is looked up as the flow's other direction would be; its entry says where the flow really
//! starts, and the error is rewritten to go there:
//!
//! ```text
//! outer  router -> snat_ip          becomes  router -> container
//! inner  snat_ip:nat_port -> peer:p becomes  container:port -> peer:p
//! ```
//! `container_error` (`from_container`): the container answers a packet that reached it
//! translated (a port map's or hairpin's DNAT, a masqueraded flow's reply, a hairpin's reply)
//! with such an error. The error is translated as a packet of the flow in the container's
//! direction would be, its quote as the packet it quotes was before its translation, or the
//! peer cannot match it to its socket (and the container's address would leak):
//!
//! ```text
//! outer  container -> client                 becomes  hostip -> client
//! inner  client:c -> container:port          becomes  client:c -> hostip:P
//! ```
//! A flow that rewrites both ends (a container calling its own published port: DNAT to
//! itself, SNAT to its gateway) has its error rewritten at both ends and sent back into the
//! container, like the flow's packets:
//!
//! ```text
//! outer  container -> gateway                becomes  hostip -> container
//! inner  gateway:c -> container:port         becomes  container:c -> hostip:P
//! ```
//! and a hairpin caller's error about the reply it got goes to the server container:
//! `caller -> hostip` quoting `hostip:P -> caller:c` becomes `caller -> server` quoting
//! `server:port -> caller:c`.
//!
//! A quoted ICMP echo (request or reply) is looked up by its identifier like the echo's own
//! packets, so errors about masqueraded pings are translated too (the quoted identifier
//! with them).
//! Checksums: outer IPv4 incrementally with the kernel helper; everything inside the ICMP
//! message (inner address, inner IPv4 checksum, inner port, inner L4 checksum when quoted,
//! and the ICMP checksum that covers them all) is computed with `datapath_common::csum` and
//! stored with `BPF_F_RECOMPUTE_CSUM`, so a CHECKSUM_COMPLETE skb's `csum` stays right too.

use aya_ebpf::{bindings::BPF_F_RECOMPUTE_CSUM, programs::TcContext};
use datapath_common::{
    config::Config,
    conntrack::{CT_DNAT, CT_HAIRPIN, CT_SNAT},
    csum,
    drop::DropReason,
    proto,
    stats::CNT_ICMP_ERR_XLATED,
};

use crate::{
    conntrack::{self, Xlate},
    nat::End,
    packet::{
        Ipv4Hdr, Packet, ETH_HLEN, ICMP_CSUM_OFF, ICMP_ECHO, ICMP_ECHO_REPLY, ICMP_HLEN,
        ICMP_ID_OFF, IPV4_CSUM_OFF, IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, TCP_CSUM_OFF,
        UDP_CSUM_OFF,
    },
    verdict::{self, Skip, Stop},
};

/// The IPv4 total length, from the start of the frame.
const IP_TOT_LEN_OFF: usize = ETH_HLEN + 2;

/// The quoted packet: where its headers sit and its tuple (network order).
struct Inner {
    ip_off: usize,
    l4_off: usize,
    /// End of the error's own datagram (`tot_len`): the quote stops there, whatever follows
    /// in the frame (Ethernet padding, a trailer) is neither read nor written.
    end: usize,
    proto: u8,
    /// An ICMP echo request (its identifier is `sport`; an echo reply's is `dport`).
    echo_request: bool,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// Translates an ICMP error about a translated flow back to the flow's container, or
/// `NotOurs` (the stack gets it untouched). `owner` is set to the container once known.
#[inline(always)]
pub fn rev_error(
    ctx: &TcContext,
    pkt: &Packet,
    cfg: &Config,
    now: u64,
    owner: &mut u32,
) -> Result<(), Stop> {
    let inner = quoted(ctx, pkt)?;
    // Only errors addressed to the quoted packet's source can be about it.
    if inner.saddr != pkt.daddr {
        return Err(Skip::NotOurs.into());
    }
    // The flow's other direction as conntrack keys it: peer -> translated address.
    let entry = other_direction(&inner, cfg, now)?;
    // A DNAT half from outside: a masquerade reply half or a port map's original half.
    if entry.flags & CT_DNAT == 0 || entry.flags & CT_HAIRPIN != 0 {
        return Err(Skip::NotOurs.into());
    }
    *owner = entry.endpoint_id;
    outer_addr(ctx, IP_DADDR_OFF, pkt.daddr, entry.nat_daddr)?;
    inner_rewrite(ctx, pkt, &inner, End::Src, entry.nat_daddr, entry.nat_dport)?;
    verdict::count(CNT_ICMP_ERR_XLATED);
    Ok(())
}

/// Translates an ICMP error container-sent about a flow that reached it translated (module
/// docs) as the flow's entry in the container's direction rewrites that direction's packets:
/// its SNAT gives the outer source and the quoted destination (the address and port the
/// peer sent to), its DNAT the outer destination and the quoted source (where the peer
/// really is). `pkt` follows, for the caller's forwarding. Returns the flow's
/// `redirect_ifindex`: nonzero when the error goes back out of the container's own veth
/// (self-hairpin). `NotOurs` when the quoted flow is unknown or untranslated (the error
/// passes as it is).
#[inline(always)]
pub fn container_error(
    ctx: &TcContext,
    pkt: &mut Packet,
    cfg: &Config,
    now: u64,
) -> Result<u32, Stop> {
    let inner = quoted(ctx, pkt)?;
    // About a packet the container received: it came from the error's destination and was
    // addressed to the container.
    if inner.daddr != pkt.saddr || inner.saddr != pkt.daddr {
        return Err(Skip::NotOurs.into());
    }
    // The container's own direction of the flow: container -> peer.
    let entry = other_direction(&inner, cfg, now)?;
    // A source rewrite back to a node address (a port map's or hairpin's reply half, a
    // masqueraded flow's original half), a destination rewrite to the server (a hairpin's
    // original half), or both (a self-hairpin).
    if entry.flags & (CT_SNAT | CT_DNAT) == 0 {
        return Err(Skip::NotOurs.into());
    }
    if entry.flags & CT_SNAT != 0 {
        outer_addr(ctx, IP_SADDR_OFF, pkt.saddr, entry.nat_saddr)?;
        pkt.saddr = entry.nat_saddr;
        inner_rewrite(ctx, pkt, &inner, End::Dst, entry.nat_saddr, entry.nat_sport)?;
    }
    if entry.flags & CT_DNAT != 0 {
        outer_addr(ctx, IP_DADDR_OFF, pkt.daddr, entry.nat_daddr)?;
        pkt.daddr = entry.nat_daddr;
        inner_rewrite(ctx, pkt, &inner, End::Src, entry.nat_daddr, entry.nat_dport)?;
    }
    verdict::count(CNT_ICMP_ERR_XLATED);
    Ok(entry.redirect_ifindex)
}

/// The live entry of the quoted packet's flow in the other direction (its reply's tuple; for
/// a quoted echo request the reply's key, for a quoted echo reply the request's).
#[inline(always)]
fn other_direction(inner: &Inner, cfg: &Config, now: u64) -> Result<Xlate, Stop> {
    let key = conntrack::make_key(
        inner.daddr,
        inner.saddr,
        inner.dport,
        inner.sport,
        inner.proto,
        !inner.echo_request,
    );
    let e = conntrack::lookup_live(&key, cfg, now).ok_or(Skip::NotOurs)?;
    Ok(conntrack::xlate(e))
}

/// Parses the quoted IPv4 header and the ports after it (an echo request: the identifier as
/// its source "port", an echo reply: as its destination "port", as `Packet` keys them), all
/// inside the error's datagram.
#[inline(always)]
fn quoted(ctx: &TcContext, pkt: &Packet) -> Result<Inner, Skip> {
    let tot_len: u16 = ctx.load(IP_TOT_LEN_OFF).map_err(|_| Skip::Malformed)?;
    let end = ETH_HLEN + usize::from(u16::from_be(tot_len));
    let ip_off = pkt.l4_off + ICMP_HLEN;
    if ip_off + size_of::<Ipv4Hdr>() > end {
        return Err(Skip::Malformed);
    }
    let ip: Ipv4Hdr = ctx.load(ip_off).map_err(|_| Skip::Malformed)?;
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < 20 {
        return Err(Skip::Malformed);
    }
    let l4_off = ip_off + ihl;
    if l4_off + 4 > end {
        return Err(Skip::Malformed);
    }
    let ports: [u16; 2] = ctx.load(l4_off).map_err(|_| Skip::Malformed)?;
    let (sport, dport, echo_request) = match ip.protocol {
        proto::TCP | proto::UDP => (ports[0], ports[1], false),
        proto::ICMP => {
            let hdr: [u8; 2] = ctx.load(l4_off).map_err(|_| Skip::Malformed)?;
            if l4_off + ICMP_ID_OFF + 2 > end {
                return Err(Skip::Malformed);
            }
            let id: u16 = ctx
                .load(l4_off + ICMP_ID_OFF)
                .map_err(|_| Skip::Malformed)?;
            match hdr[0] {
                ICMP_ECHO => (id, 0, true),
                ICMP_ECHO_REPLY => (0, id, false),
                _ => return Err(Skip::NotOurs),
            }
        }
        _ => return Err(Skip::NotOurs),
    };
    Ok(Inner {
        ip_off,
        l4_off,
        end,
        proto: ip.protocol,
        echo_request,
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
    })
}

/// One of the error's own addresses (at `off`) changes from `old` to `new`.
#[inline(always)]
fn outer_addr(ctx: &TcContext, off: usize, old: u32, new: u32) -> Result<(), DropReason> {
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 4)
        .map_err(|_| DropReason::CsumFailed)?;
    ctx.store(off, &new, 0)
        .map_err(|_| DropReason::RewriteFailed)
}

/// Reads a big-endian 16-bit word as a host-order value.
#[inline(always)]
fn load16(ctx: &TcContext, off: usize) -> Result<u16, DropReason> {
    ctx.load::<u16>(off)
        .map(u16::from_be)
        .map_err(|_| DropReason::RewriteFailed)
}

#[inline(always)]
fn store16(ctx: &TcContext, off: usize, v: u16) -> Result<(), DropReason> {
    ctx.store(off, &v.to_be(), u64::from(BPF_F_RECOMPUTE_CSUM))
        .map_err(|_| DropReason::RewriteFailed)
}

/// One end of the quoted packet becomes `ip:port` (network order), every checksum that covers
/// it kept valid. An echo's "port" is its identifier, on the requester's end only (the other
/// end's is 0 and stays so: an unchanged port is not written).
#[inline(always)]
fn inner_rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    inner: &Inner,
    end: End,
    ip: u32,
    port: u16,
) -> Result<(), DropReason> {
    let (addr_off, old_ip, old_port, port_off) = match end {
        End::Src => (12, inner.saddr, inner.sport, 0),
        End::Dst => (16, inner.daddr, inner.dport, 2),
    };
    let (old_ip, new_ip) = (u32::from_be(old_ip), u32::from_be(ip));
    let (old_port, new_port) = (u16::from_be(old_port), u16::from_be(port));
    let icmp_csum_off = pkt.l4_off + ICMP_CSUM_OFF;
    let mut icmp = load16(ctx, icmp_csum_off)?;

    // Inner address, and the inner IPv4 checksum that covers it.
    ctx.store(
        inner.ip_off + addr_off,
        &ip,
        u64::from(BPF_F_RECOMPUTE_CSUM),
    )
    .map_err(|_| DropReason::RewriteFailed)?;
    icmp = csum::update32(icmp, old_ip, new_ip);
    let ip_csum = load16(ctx, inner.ip_off + IPV4_CSUM_OFF)?;
    let new_ip_csum = csum::update32(ip_csum, old_ip, new_ip);
    store16(ctx, inner.ip_off + IPV4_CSUM_OFF, new_ip_csum)?;
    icmp = csum::update16(icmp, ip_csum, new_ip_csum);

    // Inner port (echo: identifier), then the inner L4 checksum if it was quoted (UDP's
    // always is, within the 8 bytes; TCP's only when the quote is longer).
    let (port_off, l4_csum_off, pseudo) = match inner.proto {
        proto::TCP => (inner.l4_off + port_off, inner.l4_off + TCP_CSUM_OFF, true),
        proto::UDP => (inner.l4_off + port_off, inner.l4_off + UDP_CSUM_OFF, true),
        _ => (
            inner.l4_off + ICMP_ID_OFF,
            inner.l4_off + ICMP_CSUM_OFF,
            false,
        ),
    };
    if old_port != new_port {
        store16(ctx, port_off, new_port)?;
        icmp = csum::update16(icmp, old_port, new_port);
    }
    let quoted_csum = if l4_csum_off + 2 <= inner.end {
        ctx.load::<u16>(l4_csum_off).map(u16::from_be).ok()
    } else {
        None
    };
    if let Some(l4) = quoted_csum {
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
