//! Address/port rewriting with incremental checksums. `dnat` and `snat` hold the forward
//! rewrites and their `rev_*` counterparts used on replies; `apply` runs a conntrack entry.

pub mod dnat;
pub mod icmp;
pub mod snat;

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_csum_update, bpf_skb_pull_data},
    programs::TcContext,
};
use datapath_common::{
    conntrack::{CT_DNAT, CT_REPLY, CT_SNAT},
    drop::DropReason,
    kfunc::{CHECKSUM_COMPLETE, CHECKSUM_PARTIAL},
};

use datapath_common::csum;

use crate::{
    conntrack::Xlate,
    packet::{self, Packet, ICMP_ID_OFF, IP_CSUM_OFF, L4_DPORT_OFF, L4_SPORT_OFF},
    skb,
};

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy)]
enum End {
    Src,
    Dst,
}

/// Sets one end of the packet to `ip:port` (network order) and fixes the IPv4 and L4 checksums
/// incrementally (`l4_checksum`). ICMP's "port" is the echo identifier (one field, at offset
/// 4), carried by the end that sent the request (the other end's "port" is 0 and never
/// rewritten: only masquerade translates echo, on that end).
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    pkt: &mut Packet,
    end: End,
    ip: u32,
    port: u16,
    how: Checksum,
) -> Result<(), DropReason> {
    rewrite_headers(ctx, pkt, end, ip, port, Some(how))
}

/// Where a hook has the L4 checksum computed (`l4_checksum`): the same code either way.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// Inlined: no call, but every inlined copy adds branches to the verifier's walk, so only
    /// for a hook with budget to spare (`from_uplink`).
    Inline,
    /// A call of the global function `tg_l4_checksum`, checked by the verifier once.
    Call,
}

/// `rewrite`, with the L4 header (`l4`: how its checksum is computed) or, for a datagram's
/// later fragment, without (`None`): it has none, and the first fragment carries the ports
/// and the checksum, which covers the whole datagram. `l4` is a constant at every call, so
/// each inlined copy has one shape.
#[inline(always)]
fn rewrite_headers(
    ctx: &TcContext,
    pkt: &mut Packet,
    end: End,
    ip: u32,
    port: u16,
    l4: Option<Checksum>,
) -> Result<(), DropReason> {
    let (mut port_off, old_ip, old_port) = match end {
        End::Src => (pkt.l4_off + L4_SPORT_OFF, pkt.saddr, pkt.sport),
        End::Dst => (pkt.l4_off + L4_DPORT_OFF, pkt.daddr, pkt.dport),
    };
    if pkt.is_icmp() {
        port_off = pkt.l4_off + ICMP_ID_OFF;
    }
    if let Some(how) = l4 {
        l4_checksum(ctx, pkt, old_ip, ip, old_port, port, how)?;
    }
    if old_ip != ip {
        // The IPv4 checksum is updated here (RFC 1624) and written with both addresses in
        // one store.
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
    if old_port != port && l4.is_some() {
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

/// The L4 checksum after one end changes from `old_ip:old_port` to `ip:port`
/// (`l4_checksum_of`, inlined or called as `how` says).
#[inline(always)]
fn l4_checksum(
    ctx: &TcContext,
    pkt: &Packet,
    old_ip: u32,
    ip: u32,
    old_port: u16,
    port: u16,
    how: Checksum,
) -> Result<(), DropReason> {
    let icmp = pkt.is_icmp();
    if (icmp || old_ip == ip) && old_port == port {
        return Ok(());
    }
    let off_flags = u32::from(pkt.l4_csum_off() as u16)
        | if pkt.is_udp() { L4_UDP } else { 0 }
        | if icmp { L4_ICMP } else { 0 };
    let ports = u32::from(old_port) | (u32::from(port) << 16);
    let rc = match how {
        Checksum::Inline => l4_checksum_of(ctx, off_flags, old_ip, ip, ports),
        Checksum::Call => tg_l4_checksum(ctx.skb.skb, off_flags, old_ip, ip, ports),
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(DropReason::RewriteFailed)
    }
}

/// `tg_l4_checksum` flags (above the checksum's offset).
const L4_UDP: u32 = 1 << 16;
const L4_ICMP: u32 = 1 << 17;

/// Updates the L4 checksum at byte `off_flags & 0xff` after one end changes from
/// `old_ip:old_port` to `ip:port` (ports packed old, new: low, high half), computed here and
/// written directly, as `bpf_l4_csum_replace` would (one call per field, tens of nanoseconds
/// each: the largest per-packet cost this replaces), by what `skb->ip_summed` says the
/// field holds (`skb::ip_summed`):
/// - the full checksum (NONE, UNNECESSARY, COMPLETE): both changes go in (RFC 1624). TCP and
///   UDP checksums cover the pseudo-header, so the address does; ICMP's (`L4_ICMP`) covers
///   neither address, only its identifier. With COMPLETE, `skb->csum` (the sum of the
///   packet's bytes) follows the field's change for the address, which no other byte offsets
///   (`bpf_csum_update`, what the helper does with `BPF_F_PSEUDO_HDR`);
/// - CHECKSUM_PARTIAL: only the pseudo-header's sum, uncomplemented, which the device or GSO
///   completes: the address goes in (added), the port does not.
///
/// UDP's (`L4_UDP`) "no checksum" zero stays zero, and a computed zero is written as 0xffff
/// (the helper's `BPF_F_MARK_MANGLED_0`). Returns 0, or -1 when the field cannot be pulled
/// into the linear data.
///
#[inline(always)]
fn l4_checksum_of(ctx: &TcContext, off_flags: u32, old_ip: u32, ip: u32, ports: u32) -> i32 {
    // Below 256 (at most 14 + 60 + 16): a small bound on the variable offset lets the
    // verifier check the packet accesses below.
    let off = (off_flags & 0xff) as usize;
    let (udp, icmp) = (off_flags & L4_UDP != 0, off_flags & L4_ICMP != 0);
    let (old_port, port) = (ports as u16, (ports >> 16) as u16);
    if ctx.data() + off + 2 > ctx.data_end() {
        // The headers are partly in paged data (rare: drivers and GRO put them in the linear
        // part): pull them in, as `bpf_l4_csum_replace` would have (`skb_ensure_writable`).
        // SAFETY: plain helper call on this program's context.
        if unsafe { bpf_skb_pull_data(ctx.skb.skb, (off + 2) as u32) } != 0 {
            return -1;
        }
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + off + 2 > end {
        return -1;
    }
    // SAFETY: the two bytes lie inside the linear data (checked above).
    let old = unsafe { core::ptr::read_unaligned((data + off) as *const u16) };
    let summed = skb::ip_summed(ctx);
    if udp && old == 0 {
        // No checksum to fix, so nothing offsets the port's change in the packet's byte sum
        // (the address's is, by the IP header checksum).
        if summed == CHECKSUM_COMPLETE && old_port != port {
            // SAFETY: plain helper call on this program's context.
            unsafe { bpf_csum_update(ctx.skb.skb, csum::sub32(port.into(), old_port.into())) };
        }
        return 0;
    }
    let addr_changes = !icmp && old_ip != ip;
    let mut c = old;
    if summed == CHECKSUM_PARTIAL {
        if addr_changes {
            c = !csum::update32(!old, old_ip, ip);
        }
    } else {
        if addr_changes {
            c = csum::update32(c, old_ip, ip);
            if summed == CHECKSUM_COMPLETE {
                // SAFETY: plain helper call on this program's context.
                unsafe { bpf_csum_update(ctx.skb.skb, csum::sub32(old_ip, ip)) };
            }
        }
        c = csum::update16(c, old_port, port);
    }
    if udp && c == 0 {
        c = 0xffff;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + off + 2 > end {
        return -1;
    }
    // SAFETY: as above (bounds checked again: the helper call may have moved the data).
    unsafe { core::ptr::write_unaligned((data + off) as *mut u16, c) };
    0
}

/// `l4_checksum_of` as a global function: the verifier checks it once, not at each of the
/// many places its callers are inlined into (inlined, its branches multiply the paths the
/// verifier walks in the hooks of `from_container` past its instruction budget); to a caller
/// it is an opaque call (a BPF-to-BPF call: a few nanoseconds).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tg_l4_checksum(
    skb: *mut __sk_buff,
    off_flags: u32,
    old_ip: u32,
    ip: u32,
    ports: u32,
) -> i32 {
    l4_checksum_of(&TcContext::new(skb), off_flags, old_ip, ip, ports)
}

/// Rewrites the packet as a conntrack entry says.
#[inline(always)]
pub fn apply(
    ctx: &TcContext,
    pkt: &mut Packet,
    e: &Xlate,
    how: Checksum,
) -> Result<(), DropReason> {
    if e.flags & CT_REPLY != 0 {
        // The reply half of a DNAT flow restores the source, of an SNAT flow the destination.
        if e.flags & CT_SNAT != 0 {
            dnat::rev_dnat(ctx, pkt, e.nat_saddr, e.nat_sport, how)?;
        }
        if e.flags & CT_DNAT != 0 {
            snat::rev_snat(ctx, pkt, e.nat_daddr, e.nat_dport, how)?;
        }
    } else {
        if e.flags & CT_DNAT != 0 {
            dnat::dnat(ctx, pkt, e.nat_daddr, e.nat_dport, how)?;
        }
        if e.flags & CT_SNAT != 0 {
            snat::snat(ctx, pkt, e.nat_saddr, e.nat_sport, how)?;
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
            rewrite_headers(ctx, pkt, End::Src, e.nat_saddr, e.nat_sport, None)?;
        }
        if e.flags & CT_DNAT != 0 {
            rewrite_headers(ctx, pkt, End::Dst, e.nat_daddr, e.nat_dport, None)?;
        }
    } else {
        if e.flags & CT_DNAT != 0 {
            rewrite_headers(ctx, pkt, End::Dst, e.nat_daddr, e.nat_dport, None)?;
        }
        if e.flags & CT_SNAT != 0 {
            rewrite_headers(ctx, pkt, End::Src, e.nat_saddr, e.nat_sport, None)?;
        }
    }
    Ok(())
}
