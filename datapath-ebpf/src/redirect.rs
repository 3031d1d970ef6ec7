//! Sending a rewritten packet somewhere other than up the node's stack.
//!
//! Why at all: once a reply's source is rewritten to a node address (the published
//! `hostip:P`, or a gateway), the node's input route check would drop it as a martian —
//! `fib_validate_source()` refuses any packet arriving with a local address as its source unless
//! `accept_local` is set on the interface. So such packets leave through a redirect instead.

use core::ptr;

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_OK,
        TC_ACT_REDIRECT,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
    EbpfContext,
};
use datapath_common::{
    drop::DropReason,
    endpoint::Endpoint,
    stats::{CNT_REDIRECT_FALLBACK, CNT_REDIRECT_NEIGH, CNT_REDIRECT_PEER},
};

use crate::{
    packet::{Packet, IP_CSUM_OFF, IP_TTL_OFF},
    ratelimit::{self, Way},
    verdict::{self, Dir},
};

const AF_INET: u8 = 2;

/// Sends the packet back out of the interface it arrived on (self-hairpin): swaps the Ethernet
/// addresses so the frame goes from the host veth to the container, then redirects to the
/// egress of `ifindex`. (Its new source is the caller's gateway, a node address.)
#[inline(always)]
pub fn back_to_container(ctx: &TcContext, ifindex: u32) -> Result<i32, DropReason> {
    let dst: [u8; 6] = ctx.load(0).map_err(|_| DropReason::Internal)?;
    let src: [u8; 6] = ctx.load(6).map_err(|_| DropReason::Internal)?;
    ctx.store(0, &src, 0).map_err(|_| DropReason::Internal)?;
    ctx.store(6, &dst, 0).map_err(|_| DropReason::Internal)?;
    // SAFETY: plain helper call; flags 0 = egress.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(DropReason::Internal)
    }
}

/// Forwards a reply whose source is now a node address the way the stack would, minus its
/// martian check: route lookup in the node's FIB (as if received on this interface, so the
/// forwarding sysctl and policy routing apply), TTL decrement, then `bpf_redirect_neigh`, which
/// resolves the next hop's MAC (queueing while ARP runs) and fills the Ethernet header.
/// When the FIB gives no forwarding route (unreachable, local, forwarding off) or the TTL is
/// spent, the packet goes to the stack (TC_ACT_OK) to be handled, or dropped, as it decides.
#[inline(always)]
pub fn forward(ctx: &TcContext, pkt: &Packet) -> Result<i32, DropReason> {
    let Some(ifindex) = fib_egress(ctx, pkt) else {
        verdict::count(CNT_REDIRECT_FALLBACK);
        return Ok(TC_ACT_OK);
    };
    if pkt.ttl <= 1 {
        verdict::count(CNT_REDIRECT_FALLBACK);
        return Ok(TC_ACT_OK);
    }
    decrement_ttl(ctx, pkt)?;
    // SAFETY: plain helper call; no next-hop parameters, so the kernel looks the neighbour up.
    let action = unsafe { bpf_redirect_neigh(ifindex, ptr::null_mut(), 0, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        verdict::count(CNT_REDIRECT_NEIGH);
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(DropReason::Internal)
    }
}

/// Inbound fast path into container `ep`: with the route and the container's MAC known to the
/// FIB, the frame is addressed to the container and handed straight to the ingress of its
/// `eth0` with `bpf_redirect_peer`, which skips the node's IP stack and the veth's transmit
/// and backlog hop. That also skips the host veth's egress hook, so what `to_container` does
/// (rx counters, ingress limit) is done here. Anything else (neighbour not resolved yet, route
/// elsewhere, TTL spent) takes `forward`.
#[inline(always)]
pub fn into_container(ctx: &TcContext, pkt: &Packet, ep: &Endpoint) -> Result<i32, DropReason> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid value (plain integers and unions of them).
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    // SAFETY: `ifindex` (the receiving interface) is readable in TC programs.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    p.__bindgen_anon_3.ipv4_src = pkt.saddr;
    p.__bindgen_anon_4.ipv4_dst = pkt.daddr;
    // SAFETY: `p` is a properly sized, initialized parameter block on our stack.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut p, size_of::<bpf_fib_lookup>() as i32, 0) };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || p.ifindex != ep.host_ifindex || pkt.ttl <= 1 {
        return forward(ctx, pkt);
    }
    verdict::count_ep(ep.id, Dir::Rx, ctx.len());
    // Over the limit: the hook drops it and counts it against the container (its flow's
    // owner), as `to_container` would.
    ratelimit::police(ep.id, Way::Ingress, ctx.len())?;
    decrement_ttl(ctx, pkt)?;
    ctx.store(0, &p.dmac, 0).map_err(|_| DropReason::Internal)?;
    ctx.store(6, &p.smac, 0).map_err(|_| DropReason::Internal)?;
    // SAFETY: plain helper call; `host_ifindex` is the host side of the container's veth pair.
    let action = unsafe { bpf_redirect_peer(ep.host_ifindex, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        verdict::count(CNT_REDIRECT_PEER);
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(DropReason::Internal)
    }
}

/// Egress ifindex of the route to the packet's destination, or `None`.
#[inline(always)]
pub fn fib_egress(ctx: &TcContext, pkt: &Packet) -> Option<u32> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid value (plain integers and unions of them).
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    // tot_len stays 0: no MTU check, which would refuse GRO/GSO super-packets that the egress
    // device segments anyway.
    // SAFETY: `ifindex` (the receiving interface) is readable in TC programs.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    p.__bindgen_anon_3.ipv4_src = pkt.saddr;
    p.__bindgen_anon_4.ipv4_dst = pkt.daddr;
    // SKIP_NEIGH: only the route is wanted; bpf_redirect_neigh resolves the neighbour.
    // SAFETY: `p` is a properly sized, initialized parameter block on our stack.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut p,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        Some(p.ifindex)
    } else {
        None
    }
}

/// TTL - 1 with the IPv4 checksum fixed (TTL shares a 16-bit checksum word with the protocol).
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, pkt: &Packet) -> Result<(), DropReason> {
    let old = u16::from_ne_bytes([pkt.ttl, pkt.proto]);
    let new = u16::from_ne_bytes([pkt.ttl - 1, pkt.proto]);
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 2)
        .map_err(|_| DropReason::Internal)?;
    ctx.store(IP_TTL_OFF, &(pkt.ttl - 1), 0)
        .map_err(|_| DropReason::Internal)
}
