//! `from_uplink`: TC (TCX) ingress of the uplink in the node namespace.
//!
//! ```text
//! client --> [uplink] from_uplink --+-- ICMP error about a translated flow: back to its container --+
//!                                   +-- reply to a masqueraded flow: DNAT snat_ip:port -> cip:port ---+
//!                                   +-- to a published port: DNAT hostip:P -> cip:cport' -------------+--> node stack --> [tgXXXX] --> container
//!                                   +-- straight to a container IP (routed): tracked, untouched ------+
//! ```
//! Translated packets (port maps, masquerade replies) are forwarded with `bpf_redirect_peer`
//! straight into the container, to the next hop the FIB gave for the flow (cached in its
//! conntrack entry for a second), or with `bpf_redirect_neigh` to its veth while its neighbour
//! entry is not resolved (the node stack when the FIB has no forwarding route);
//! the client address is kept. Routed flows and ICMP
//! errors go through the node stack (TC_ACT_OK). Everything else passes untouched.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use aya_log_ebpf::debug;
use datapath_common::{
    conntrack::{CtKey, CT_CLOSING},
    portmap::PortValue,
    stats::{CNT_DNAT_UPLINK, CNT_REVSNAT},
};

use crate::{
    config,
    conntrack::{self, Ct, Flow, Half, Hit, Kind},
    lookup,
    nat::{self, dnat, icmp},
    packet::Packet,
    redirect,
    verdict::{self, Skip, Stop},
};

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    // A drop is also counted against the container the packet is for, once that is known.
    let mut owner = 0;
    let res = try_from_uplink(&ctx, &mut owner);
    verdict::tc_for(res, owner)
}

/// `owner` is set to the id of the container the packet goes to (its flow's `endpoint_id`)
/// as soon as it is known, before anything that may drop the packet.
#[inline(always)]
fn try_from_uplink(ctx: &TcContext, owner: &mut u32) -> Result<i32, Stop> {
    let mut pkt = Packet::parse(ctx)?;
    let cfg = config::get()?;
    let now = conntrack::now_ns();
    if pkt.is_icmp_error() {
        icmp::rev_error(ctx, &pkt, cfg, now, owner)?;
        return Ok(TC_ACT_OK);
    }
    if pkt.later_fragment {
        return later_fragment(ctx, &mut pkt, cfg, now, owner);
    }
    let key = conntrack::key_of(&pkt);
    let (e, other, counter) = match conntrack::classify(&key, &pkt, cfg, now) {
        Ct::Hit(f) if carries(&f) => {
            *owner = f.owner();
            (
                f.entry,
                conntrack::other_half(&key, f.entry, &pkt, cfg, now)?,
                hit_counter(&f),
            )
        }
        // A tuple that hits a port map's reply half, a hairpin entry or a masqueraded flow's
        // original half came in with a container's source address: not ours to touch.
        Ct::Hit(_) | Ct::Crossed(_) => return Err(Skip::NotOurs.into()),
        // A miss (or a reused tuple) on any packet, not only a SYN: a flow whose entries were
        // lost keeps working, its entries are recreated from the port map.
        Ct::New | Ct::Reused(_) => {
            if let Some(pm) = lookup::published(pkt.daddr, pkt.dport, pkt.proto) {
                return new_port_flow(ctx, &mut pkt, &key, &pm, now, owner);
            }
            routed(ctx, &pkt, &key, now, owner)?
        }
    };
    let entry = conntrack::xlate(e);
    nat::apply(ctx, &mut pkt, &entry, nat::Checksum::Inline)?;
    conntrack::touch(e, other, &pkt, ctx.len(), now);
    if let Some(c) = counter {
        verdict::count(c);
    }
    if counter.is_some() {
        // Fast path: a translated packet goes straight into the container (its flow's cached
        // next hop, or a FIB lookup, + bpf_redirect_peer), or at least to its veth
        // (bpf_redirect_neigh), skipping the node's IP input, netfilter and forwarding.
        // Without a forwarding route it falls back to the stack.
        return Ok(redirect::into_container(ctx, &pkt, e, now)?);
    }
    Ok(TC_ACT_OK)
}

/// A datagram's later fragment (its first one's ports from `TG_FRAGS`): translated as the
/// flow its first fragment hit or created, its IP header only; without a live flow it passes
/// (the node's reassembly discards what it cannot complete).
#[inline(always)]
fn later_fragment(
    ctx: &TcContext,
    pkt: &mut Packet,
    cfg: &datapath_common::config::Config,
    now: u64,
    owner: &mut u32,
) -> Result<i32, Stop> {
    let key = conntrack::key_of(pkt);
    let f = match conntrack::classify(&key, pkt, cfg, now) {
        Ct::Hit(f) if carries(&f) => f,
        _ => return Err(Skip::Fragment.into()),
    };
    *owner = f.owner();
    let entry = conntrack::xlate(f.entry);
    nat::apply_fragment(ctx, pkt, &entry)?;
    conntrack::touch(f.entry, None, pkt, ctx.len(), now);
    if hit_counter(&f).is_some() {
        return Ok(redirect::into_container(ctx, pkt, f.entry, now)?);
    }
    Ok(TC_ACT_OK)
}

/// Whether a live entry hit from outside carries the packet: a port map's or a routed
/// inbound flow's original half, a masqueraded flow's reply half, or the reply half of a
/// container's untranslated flow.
#[inline(always)]
fn carries(f: &Flow) -> bool {
    matches!(
        (f.kind, f.half),
        (Kind::PortMap | Kind::Plain, Half::Original) | (Kind::Masq | Kind::Plain, Half::Reply)
    )
}

/// The counter bumped per packet of a flow it carries.
#[inline(always)]
fn hit_counter(f: &Flow) -> Option<u32> {
    match f.kind {
        Kind::Masq => Some(CNT_REVSNAT),
        Kind::PortMap => Some(CNT_DNAT_UPLINK),
        Kind::Hairpin | Kind::Plain => None,
    }
}

/// A new flow to published port `pm`: its original half is built, the packet translated,
/// accounted and sent on as an established one would be, with the next hop cached in the
/// half; only then are both halves inserted, so neither is looked up again.
#[inline(always)]
fn new_port_flow(
    ctx: &TcContext,
    pkt: &mut Packet,
    key: &CtKey,
    pm: &PortValue,
    now: u64,
    owner: &mut u32,
) -> Result<i32, Stop> {
    *owner = pm.endpoint_id;
    let e = dnat::flow_entry(pm, 0, now)?;
    // SAFETY: this CPU's scratch slot, just built; nothing else here builds it again.
    unsafe {
        (*e).packets = 1;
        (*e).bytes = u64::from(ctx.len());
        if pkt.closes_flow() {
            (*e).flags |= CT_CLOSING;
        }
    }
    let entry = conntrack::xlate(e);
    nat::apply(ctx, pkt, &entry, nat::Checksum::Inline)?;
    verdict::count(CNT_DNAT_UPLINK);
    if pkt.ttl > 1 {
        redirect::learn_hop(ctx, pkt, e, now);
    }
    // SAFETY: as above; `learn_hop` only cached the next hop in it.
    conntrack::insert_new(key, unsafe { &*e })?;
    // The hop cached in the scratch slot: no second lookup.
    let action = redirect::into_container(ctx, pkt, e, now)?;
    debug!(
        ctx,
        "uplink flow {:i}:{} -> {:i}:{}",
        key.saddr.to_ne_bytes(),
        u16::from_be(key.sport),
        pm.container_ip.to_ne_bytes(),
        u16::from_be(pm.container_port)
    );
    Ok(action)
}

/// A new flow straight to a container's IP (routed, no NAT): tracked untranslated so the
/// container's answers are known as replies (not masqueraded, not judged by its policy).
#[inline(always)]
fn routed(
    ctx: &TcContext,
    pkt: &Packet,
    key: &CtKey,
    now: u64,
    owner: &mut u32,
) -> Result<Hit, Stop> {
    // A mid-stream segment is picked up too (`conntrack::picks_up`), so a routed connection
    // whose entries expired goes on untranslated both ways.
    if !pkt.opens_flow() && !conntrack::picks_up(pkt) {
        return Err(Skip::NotOurs.into());
    }
    let ep = lookup::endpoint(pkt.daddr).ok_or(Skip::NotOurs)?;
    *owner = ep.id;
    let (e, other) = conntrack::create_plain(key, ep.id, now)?;
    debug!(
        ctx,
        "inbound flow {:i}:{} -> {:i}:{}",
        pkt.saddr.to_ne_bytes(),
        u16::from_be(pkt.sport),
        pkt.daddr.to_ne_bytes(),
        u16::from_be(pkt.dport)
    );
    Ok((e, Some(other), None))
}
