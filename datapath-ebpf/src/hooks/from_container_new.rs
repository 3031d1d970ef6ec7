//! `from_container_new`: a container's packet without a live flow, tail-called by
//! `from_container` once that program has counted and policed the packet, checked its source
//! and found no live conntrack entry for it (see `from_container`'s module docs for the
//! whole picture). It judges the packet (links/ICC, egress policy), creates the flow's
//! conntrack halves (hairpin to a published port, masquerade with its port allocation, or
//! plain tracked) and sends the packet on as `from_container` would.
//!
//! A program of its own because judging and creating flows is most of what the verifier
//! walks through: together with the established paths it would exceed the verifier's
//! 1,000,000-instruction budget, separately each has room.

use aya_ebpf::{macros::classifier, programs::TcContext};
use aya_log_ebpf::debug;
use datapath_common::{
    config::Config,
    conntrack::{CtEntry, CtKey, CT_HAIRPIN},
    drop::DropReason,
    endpoint::Endpoint,
    portmap::PortValue,
    stats::{CNT_DNAT_HAIRPIN, CNT_SNAT, CNT_SNAT_FLOWS},
};

use super::from_container::{endpoint_of, finish, ifindex, NO_COUNTER};
use crate::{
    config,
    conntrack::{self, Flow, Hit},
    lookup,
    nat::{dnat, snat},
    packet::Packet,
    policy,
    verdict::{self, Skip, Stop},
};

#[classifier]
pub fn from_container_new(ctx: TcContext) -> i32 {
    // `from_container` found the endpoint a moment ago; it can only be gone if the container
    // was removed in between, and then the packet passes untouched, as `from_container`
    // passes those of a veth it does not know.
    let Some(ep) = endpoint_of(&ctx) else {
        return verdict::tc_for(Err(Skip::NotOurs.into()), 0);
    };
    verdict::tc_for(try_new(&ctx, &ep), ep.id)
}

#[inline(always)]
fn try_new(ctx: &TcContext, ep: &Endpoint) -> Result<i32, Stop> {
    let cfg = config::get()?;
    let mut pkt = Packet::parse(ctx)?;
    let now = conntrack::now_ns();
    let key = conntrack::key_of(&pkt);
    let (e, other, counter) = new_flow(ctx, &pkt, &key, ep, cfg, now)?;
    finish(
        ctx,
        &mut pkt,
        Flow::of(e),
        other,
        counter.unwrap_or(NO_COUNTER),
        now,
    )
}

/// A packet with no live conntrack entry: judges it and creates the flow's halves.
#[inline(always)]
fn new_flow(
    ctx: &TcContext,
    pkt: &Packet,
    key: &CtKey,
    ep: &Endpoint,
    cfg: &Config,
    now: u64,
) -> Result<Hit, Stop> {
    let peer = lookup::endpoint(pkt.daddr);
    if !pkt.opens_flow() && !(conntrack::picks_up(pkt) && picked_up_here(pkt, peer.as_ref())) {
        return Err(unopened(pkt, ep, peer.as_ref(), cfg));
    }
    // A published port: allowed whatever ICC says (that is what publishing is for), but the
    // egress rules still see the address the container asked for.
    if let Some(pm) = lookup::published(pkt.daddr, pkt.dport, pkt.proto) {
        policy::egress(ep, pkt.daddr, pkt.proto, pkt.dport)?;
        let (e, other) = new_hairpin(ctx, pkt, key, &pm, now)?;
        return Ok((e, Some(other), Some(CNT_DNAT_HAIRPIN)));
    }
    policy::new_flow(ep, peer.as_ref(), cfg, pkt.daddr, pkt.proto, pkt.dport)?;
    if peer.is_none() && snat::masquerades(ctx, pkt, cfg) {
        let (e, other) = snat::masquerade(key, ep.id, cfg, now)?;
        verdict::count(CNT_SNAT_FLOWS);
        // SAFETY: `e` came from a lookup in this run; one field read.
        let port = unsafe { (*e).nat_sport };
        debug!(
            ctx,
            "masq flow {:i}:{} -> {:i}:{} as :{}",
            pkt.saddr.to_ne_bytes(),
            u16::from_be(pkt.sport),
            pkt.daddr.to_ne_bytes(),
            u16::from_be(pkt.dport),
            u16::from_be(port)
        );
        return Ok((e, Some(other), Some(CNT_SNAT)));
    }
    let (e, other) = conntrack::create_plain(key, ep.id, now)?;
    debug!(
        ctx,
        "flow {:i}:{} -> {:i}:{}",
        pkt.saddr.to_ne_bytes(),
        u16::from_be(pkt.sport),
        pkt.daddr.to_ne_bytes(),
        u16::from_be(pkt.dport)
    );
    Ok((e, Some(other), None))
}

/// What happens to a packet that may not open a flow and has no entry (module docs).
#[inline(always)]
fn unopened(pkt: &Packet, ep: &Endpoint, peer: Option<&Endpoint>, cfg: &Config) -> Stop {
    if lookup::is_local(pkt.daddr) {
        return Skip::NotOurs.into();
    }
    match peer {
        Some(peer) => match policy::icc(ep, peer, cfg) {
            Ok(()) => Skip::NotOurs.into(),
            Err(r) => r.into(),
        },
        None => DropReason::CtInvalid.into(),
    }
}

/// Whether a mid-stream TCP segment with no entry (`conntrack::picks_up`) starts a flow here:
/// towards the outside or a published port, the flows the datapath translates. Towards a node
/// address or another container it is an answer (`unopened`): tracking it would judge the
/// container's answers to the node by its egress policy.
#[inline(always)]
fn picked_up_here(pkt: &Packet, peer: Option<&Endpoint>) -> bool {
    peer.is_none()
        && (!lookup::is_local(pkt.daddr)
            || lookup::published(pkt.daddr, pkt.dport, pkt.proto).is_some())
}

/// Creates the conntrack halves of a container's new flow to a published port (hairpin).
#[inline(always)]
fn new_hairpin(
    ctx: &TcContext,
    pkt: &Packet,
    key: &CtKey,
    pm: &PortValue,
    now: u64,
) -> Result<(*mut CtEntry, *mut CtEntry), Stop> {
    // SAFETY: this CPU's scratch slot, just built; only this function uses it until
    // `create` inserts it.
    let e = unsafe { &mut *dnat::flow_entry(pm, CT_HAIRPIN, now)? };
    if pm.container_ip == pkt.saddr {
        // Calling itself: without the SNAT its reply would be delivered locally inside the
        // container, to a socket that never sent anything to that address.
        snat::self_hairpin(e, pkt)?;
        e.redirect_ifindex = ifindex(ctx);
    }
    let ptrs = conntrack::create(key, e)?;
    debug!(
        ctx,
        "hairpin flow {:i}:{} -> {:i}:{}",
        pkt.saddr.to_ne_bytes(),
        u16::from_be(pkt.sport),
        pm.container_ip.to_ne_bytes(),
        u16::from_be(pm.container_port)
    );
    Ok(ptrs)
}
