//! Sending a rewritten packet somewhere other than up the node's stack.
//!
//! Why at all: once a reply's source is rewritten to a node address (the published
//! `hostip:P`, or a gateway), the node's input route check would drop it as a martian —
//! `fib_validate_source()` refuses any packet arriving with a local address as its source unless
//! `accept_local` is set on the interface. So such packets leave through a redirect instead.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SKIP_NEIGH, TC_ACT_OK, TC_ACT_REDIRECT,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
    EbpfContext,
};
use datapath_common::{
    conntrack::{CtEntry, FIB_CACHE_NS},
    csum,
    drop::DropReason,
    endpoint::{Endpoint, EpL2},
    stats::{CNT_REDIRECT_FALLBACK, CNT_REDIRECT_NEIGH, CNT_REDIRECT_PEER},
};

use crate::{
    lookup,
    maps::TG_EP_L2,
    mem,
    packet::{self, Packet, ETH_DST_OFF, ETH_SRC_OFF, IP_TTL_OFF},
    ratelimit::{self, Way},
    verdict::{self, Dir},
};

const AF_INET: u8 = 2;

/// Sends the packet back out of the interface it arrived on (self-hairpin): swaps the Ethernet
/// addresses so the frame goes from the host veth to the container, then redirects to the
/// egress of `ifindex`. (Its new source is the caller's gateway, a node address.)
#[inline(always)]
pub fn back_to_container(ctx: &TcContext, ifindex: u32) -> Result<i32, DropReason> {
    let dst: [u8; 6] = ctx
        .load(ETH_DST_OFF)
        .map_err(|_| DropReason::RewriteFailed)?;
    let src: [u8; 6] = ctx
        .load(ETH_SRC_OFF)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(ETH_DST_OFF, &src, 0)
        .map_err(|_| DropReason::RewriteFailed)?;
    ctx.store(ETH_SRC_OFF, &dst, 0)
        .map_err(|_| DropReason::RewriteFailed)?;
    // SAFETY: plain helper call; flags 0 = egress.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(DropReason::RedirectFailed)
    }
}

/// Forwards a reply whose source is now a node address the way the stack would, minus its
/// martian check: route lookup in the node's FIB (as if received on this interface, so the
/// forwarding sysctl and policy routing apply), TTL decrement, then out of the route's device.
/// With the next hop's MAC known to the FIB the frame is addressed here and `bpf_redirect`ed
/// (straight to the device's transmit); while the neighbour is unresolved,
/// `bpf_redirect_neigh` is given the FIB's next hop, so the kernel resolves the MAC (queueing
/// while ARP runs) without routing the packet a second time. When the FIB gives no forwarding
/// route (unreachable, local, forwarding off) or the TTL is spent, the packet goes to the
/// stack (TC_ACT_OK) to be handled, or dropped, as it decides.
///
/// `flow` is the conntrack half the packet went through, if any: a resolved answer is cached
/// in it (`CtEntry.fib_*`), and the flow's next packets reuse it for `FIB_CACHE_NS` instead of
/// looking the route up again. Per flow, not per destination, so a multipath route's choice
/// (hashed on the flow) stays what the FIB made it.
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    pkt: &Packet,
    flow: Option<*mut CtEntry>,
    now: u64,
) -> Result<i32, DropReason> {
    if pkt.ttl > 1 {
        if let Some((ifindex, macs)) = flow.and_then(|e| cached_hop(e, now)) {
            decrement_ttl(ctx, pkt)?;
            packet::write(ctx, ETH_DST_OFF, &macs)?;
            // SAFETY: plain helper call; flags 0 = egress of the cached route's device.
            return redirected(unsafe { bpf_redirect(ifindex, 0) }, CNT_REDIRECT_NEIGH);
        }
    }
    let mut p = fib_params(ctx, pkt);
    // SAFETY: `p` is a properly sized, initialized parameter block on our stack.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut p, size_of::<bpf_fib_lookup>() as i32, 0) };
    let resolved = rc == i64::from(BPF_FIB_LKUP_RET_SUCCESS);
    if !(resolved || rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH)) || pkt.ttl <= 1 {
        verdict::count(CNT_REDIRECT_FALLBACK);
        return Ok(TC_ACT_OK);
    }
    decrement_ttl(ctx, pkt)?;
    let action = if resolved {
        let macs = mac_block(&p.dmac, &p.smac);
        if let Some(e) = flow {
            remember_hop(e, p.ifindex, &macs, now);
        }
        packet::write(ctx, ETH_DST_OFF, &macs)?;
        // SAFETY: plain helper call; flags 0 = egress of the route's device.
        unsafe { bpf_redirect(p.ifindex, 0) }
    } else {
        // On NO_NEIGH the FIB has filled in the egress device and the next hop (the
        // gateway, or the destination itself when on-link).
        let mut nh = bpf_redir_neigh {
            nh_family: u32::from(AF_INET),
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                // SAFETY: the FIB wrote the IPv4 member.
                ipv4_nh: unsafe { p.__bindgen_anon_4.ipv4_dst },
            },
        };
        // SAFETY: plain helper call with a properly sized next-hop block on our stack.
        unsafe { bpf_redirect_neigh(p.ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0) }
    };
    redirected(action, CNT_REDIRECT_NEIGH)
}

/// The hook's verdict for a redirect helper's return value, counting it in `counter`.
#[inline(always)]
fn redirected(action: i64, counter: u32) -> Result<i32, DropReason> {
    if action == i64::from(TC_ACT_REDIRECT) {
        verdict::count(counter);
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(DropReason::RedirectFailed)
    }
}

/// The next hop cached in flow half `e` (egress ifindex, MAC block), if the FIB gave it less
/// than `FIB_CACHE_NS` ago.
#[inline(always)]
fn cached_hop(e: *mut CtEntry, now: u64) -> Option<(u32, [u8; 12])> {
    // SAFETY: `e` came from a conntrack lookup in this program run; plain reads.
    let (ifindex, checked) = unsafe { ((*e).fib_ifindex, (*e).fib_checked_ns) };
    if ifindex == 0 || now.saturating_sub(checked) >= FIB_CACHE_NS {
        return None;
    }
    // SAFETY: as above.
    Some((ifindex, unsafe { (*e).fib_macs }))
}

/// Caches a resolved next hop in flow half `e`. Only this direction's packets write it (once
/// per `FIB_CACHE_NS`); two CPUs refreshing at once write the same answer.
#[inline(always)]
fn remember_hop(e: *mut CtEntry, ifindex: u32, macs: &[u8; 12], now: u64) {
    // SAFETY: `e` came from a conntrack lookup in this program run; plain writes into the
    // map value, which lives as long as the map (an entry recycled meanwhile only gets a
    // harmless cache that its own first lookup-and-compare ignores).
    unsafe {
        (*e).fib_macs = *macs;
        (*e).fib_ifindex = ifindex;
        (*e).fib_checked_ns = now;
    }
}

/// FIB lookup parameters for the packet as it is now, as received on this interface.
/// `tot_len` stays 0: no MTU check, which would refuse GRO/GSO super-packets that the egress
/// device segments anyway.
#[inline(always)]
fn fib_params(ctx: &TcContext, pkt: &Packet) -> bpf_fib_lookup {
    // All-zero is a valid bpf_fib_lookup (plain integers and unions of them).
    let mut p: bpf_fib_lookup = mem::zeroed();
    p.family = AF_INET;
    p.l4_protocol = pkt.proto;
    p.sport = pkt.sport;
    p.dport = pkt.dport;
    // SAFETY: `ifindex` (the receiving interface) is readable in TC programs.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    p.__bindgen_anon_3.ipv4_src = pkt.saddr;
    p.__bindgen_anon_4.ipv4_dst = pkt.daddr;
    p
}

/// Inbound fast path into the container that owns flow half `e`: the frame is addressed to
/// the container and handed straight to the ingress of its `eth0` with `bpf_redirect_peer`,
/// which skips the node's IP stack and the veth's transmit and backlog hop. The veth and MACs
/// are cached in the flow's entry (`CtEntry.fib_*`, refreshed every `FIB_CACHE_NS`), so an
/// established packet needs neither the container's record nor a FIB lookup. On a refresh
/// they come from the FIB (route to the container's veth, neighbour resolved), itself cached
/// per container for a second in `TG_EP_L2` so that new flows mostly skip it too. That also
/// skips the host veth's egress hook, so what `to_container` does (rx counters, ingress
/// limit) is done here. Anything else (neighbour not resolved yet, route elsewhere, TTL
/// spent) takes `forward`. A container's flows die with it (the agent deletes their entries),
/// so a cached veth is its own; one recreated under live flows (its namespace was deleted) is
/// followed within `FIB_CACHE_NS`.
#[inline(always)]
pub fn into_container(
    ctx: &TcContext,
    pkt: &Packet,
    e: *mut CtEntry,
    now: u64,
) -> Result<i32, DropReason> {
    if pkt.ttl <= 1 {
        return forward(ctx, pkt, None, now);
    }
    if cached_hop(e, now).is_none() {
        learn_hop(ctx, pkt, e, now);
    }
    let Some((ifindex, macs)) = cached_hop(e, now) else {
        return forward(ctx, pkt, None, now);
    };
    // SAFETY: `e` came from a conntrack lookup in this program run (or is a new flow's
    // scratch slot); one field read.
    let owner = unsafe { (*e).endpoint_id };
    deliver(ctx, pkt, owner, ifindex, &macs)
}

/// Caches in flow half `e` the way into the container the packet (already translated) is
/// for: its veth and MACs, from `TG_EP_L2` or the FIB (route to the container's veth,
/// neighbour resolved). Nothing when there is no such way (`into_container` then forwards).
#[inline(always)]
pub fn learn_hop(ctx: &TcContext, pkt: &Packet, e: *mut CtEntry, now: u64) {
    let Some(ep) = lookup::endpoint(pkt.daddr) else {
        return;
    };
    if let Some(macs) = cached_l2(&ep, now).or_else(|| fib_l2(ctx, pkt, &ep, now)) {
        remember_hop(e, ep.host_ifindex, &macs, now);
    }
}

/// The fast path's last steps for container `id` behind host veth `host_ifindex`: its rx
/// counters and ingress limit, TTL, MACs, `bpf_redirect_peer`.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    pkt: &Packet,
    id: u32,
    host_ifindex: u32,
    macs: &[u8; 12],
) -> Result<i32, DropReason> {
    verdict::count_ep(id, Dir::Rx, ctx.len());
    // Over the limit: the hook drops it and counts it against the container (its flow's
    // owner), as `to_container` would.
    ratelimit::police(id, Way::Ingress, ctx.len())?;
    decrement_ttl(ctx, pkt)?;
    packet::write(ctx, ETH_DST_OFF, macs)?;
    // SAFETY: plain helper call; `host_ifindex` is the host side of the container's veth pair.
    redirected(
        unsafe { bpf_redirect_peer(host_ifindex, 0) },
        CNT_REDIRECT_PEER,
    )
}

/// How long a FIB answer about a container's MACs is reused.
const L2_CACHE_NS: u64 = 1_000_000_000;

/// Destination and source MAC (one 12-byte Ethernet address block) of frames into `ep`, if
/// the FIB gave them less than `L2_CACHE_NS` ago for its current veth.
#[inline(always)]
fn cached_l2(ep: &Endpoint, now: u64) -> Option<[u8; 12]> {
    let l2 = TG_EP_L2.get_ptr(ep.id)?;
    // SAFETY: pointer into a preallocated array element; copied out at once.
    let l2: EpL2 = unsafe { *l2 };
    if l2.host_ifindex != ep.host_ifindex || now.saturating_sub(l2.checked_ns) >= L2_CACHE_NS {
        return None;
    }
    Some(mac_block(&l2.mac, &l2.host_mac))
}

/// The same from a FIB lookup (cached for the next packets): only when the route to the
/// container is its veth and the neighbour is resolved. Two CPUs refreshing the slot at once
/// may interleave their writes of the same answer.
#[inline(always)]
fn fib_l2(ctx: &TcContext, pkt: &Packet, ep: &Endpoint, now: u64) -> Option<[u8; 12]> {
    let mut p = fib_params(ctx, pkt);
    // SAFETY: `p` is a properly sized, initialized parameter block on our stack.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut p, size_of::<bpf_fib_lookup>() as i32, 0) };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || p.ifindex != ep.host_ifindex {
        return None;
    }
    if let Some(slot) = TG_EP_L2.get_ptr_mut(ep.id) {
        // SAFETY: pointer into a preallocated array element of this map.
        unsafe {
            *slot = EpL2 {
                checked_ns: now,
                host_ifindex: ep.host_ifindex,
                mac: p.dmac,
                host_mac: p.smac,
            };
        }
    }
    Some(mac_block(&p.dmac, &p.smac))
}

#[inline(always)]
fn mac_block(dst: &[u8; 6], src: &[u8; 6]) -> [u8; 12] {
    [
        dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], src[0], src[1], src[2], src[3], src[4],
        src[5],
    ]
}

/// Egress ifindex of the route to the packet's destination, or `None`.
#[inline(always)]
pub fn fib_egress(ctx: &TcContext, pkt: &Packet) -> Option<u32> {
    let mut p = fib_params(ctx, pkt);
    // SKIP_NEIGH: only the route is wanted here.
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

/// TTL - 1 with the IPv4 checksum fixed (TTL shares a 16-bit checksum word with the
/// protocol): the checksum is updated here and written with TTL and protocol in one store.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, pkt: &Packet) -> Result<(), DropReason> {
    let old = u16::from_ne_bytes([pkt.ttl, pkt.proto]);
    let new = u16::from_ne_bytes([pkt.ttl - 1, pkt.proto]);
    let c = csum::update16(packet::ip_check(ctx)?, old, new).to_ne_bytes();
    packet::write(ctx, IP_TTL_OFF, &[pkt.ttl - 1, pkt.proto, c[0], c[1]])
}
