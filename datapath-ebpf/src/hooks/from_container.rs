//! `from_container`: TC (TCX) ingress of each container's host-side veth.
//!
//! ```text
//! container A --> [tgA] from_container --+-- over A's egress limit:              drop (RateLimit)
//!                                        +-- source is not A's IP:              drop (Spoof)
//!                                        +-- ICMP error about a translated flow: translated like the flow --> FIB redirect (self-hairpin: back out [tgA])
//!                                        +-- other protocol (SCTP, GRE, ...):   link | ICC, policy --> node stack, or drop
//!                                        +-- conntrack hit:
//!                                        |     reply of a port-mapped flow: source back to hostip:P --> FIB redirect
//!                                        |     masqueraded flow:            source to snat_ip:port  --> FIB redirect (uplink)
//!                                        |     hairpin / plain tracked:     as at creation
//!                                        +-- new flow (`from_container_new`, a tail call):
//!                                              hairpin to hostip:P of B: policy, DNAT to B       --> node stack --> [tgB]
//!                                              hairpin to its own port:  DNAT + SNAT to gateway  --> redirect out [tgA]
//!                                              to container B by IP:     link | ICC, policy      --> node stack (plain tracked)
//!                                              to a container of another node (cluster mode):
//!                                                                        same network + ICC, policy --> VXLAN (plain tracked)
//!                                              to outside via uplink:    policy, masquerade      --> FIB redirect (uplink)
//!                                              to a node address / other: policy                 --> node stack (plain tracked)
//! ```
//! Replies and masqueraded packets are not handed to the node stack: with a node address as
//! source they would fail its martian check (see `redirect`). "FIB redirect" is the flow's
//! next hop as the FIB last gave it, cached in the flow's conntrack entry for a second.
//!
//! Only a packet that `opens_flow` (UDP, ICMP echo request, TCP SYN without ACK) creates
//! conntrack entries, and a mid-stream TCP segment (ACK without SYN/FIN/RST) towards the
//! outside or a published port, which is picked up as Linux's conntrack does
//! (`conntrack::picks_up`: judged and translated like a new flow; a masqueraded flow whose
//! entries expired usually gets its old port back, the search starting where it started).
//! Any other packet without an entry is the answer to something the datapath did not see
//! open: it passes untouched when it goes to a node address (the node's own sockets judge it,
//! e.g. a container answering a connection the node made) or to a container this one may
//! reach (ICC on or linked); otherwise it is dropped (`Icc` towards a container, `CtInvalid`
//! towards the outside: a SYN-ACK, FIN, RST or echo reply of no live flow, which could not be
//! masqueraded anyway).
//! ICMP errors a container sends are answers and pass; those about a flow that reached it
//! translated (port map, hairpin or self-hairpin, masquerade reply) are translated back like
//! the flow's other packets (`nat::icmp::container_error`) and forwarded (a self-hairpin's
//! back into the container). IP protocols other than TCP/UDP/ICMP
//! echo (SCTP, GRE, other ICMP types, ...) are not tracked: every such packet is judged like a
//! new flow (links/ICC towards a container, then the policy chain with protocol-specific or
//! any-protocol rules, and no port), and passes untouched or is dropped.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use datapath_common::{
    config::Config,
    conntrack::CtEntry,
    drop::DropReason,
    endpoint::Endpoint,
    maps::PROG_SLOT_CONTAINER_NEW,
    overlay::Remote,
    stats::{CNT_DNAT_HAIRPIN, CNT_REVNAT, CNT_SNAT},
};

use crate::{
    config,
    conntrack::{self, Ct, Flow, Half, Kind},
    lookup,
    maps::TG_PROGS,
    nat::{self, icmp},
    overlay,
    packet::{self, Packet},
    policy,
    ratelimit::{self, Way},
    redirect,
    verdict::{self, Dir, Skip, Stop},
};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    // A veth the agent has not registered (yet): not ours to judge.
    let Some(ep) = endpoint_of(&ctx) else {
        return TC_ACT_OK;
    };
    verdict::count_ep(ep.id, Dir::Tx, ctx.len());
    // Before anything looks at the packet: the limit covers all the container sends,
    // to the outside, to the node and to other containers alike.
    if let Err(r) = ratelimit::police_skb(&ctx, ep.id, Way::Egress) {
        return verdict::tc_for(Err(r.into()), ep.id);
    }
    verdict::tc_for(try_from_container(&ctx, &ep), ep.id)
}

#[inline(always)]
fn try_from_container(ctx: &TcContext, ep: &Endpoint) -> Result<i32, Stop> {
    let ip = match packet::ipv4_header(ctx)? {
        None => return Err(Skip::NotIpv4.into()),
        Some(ip) if ip.saddr != ep.ip => return Err(DropReason::Spoof.into()),
        Some(ip) => ip,
    };
    let cfg = config::get()?;
    let mut pkt = match Packet::parse(ctx) {
        Ok(pkt) => pkt,
        Err(Skip::OtherProto) => return other_proto(ctx, ep, cfg, ip.daddr, ip.protocol),
        Err(Skip::Fragment) => return Err(headless_fragment(ip.daddr)),
        Err(s) => return Err(s.into()),
    };
    let now = conntrack::now_ns();
    // A container of another node (cluster mode): its own short path, apart from the NAT
    // paths below (nothing is ever translated between nodes), which also keeps the verifier's
    // walk of this program within its limit.
    if let Some(r) = overlay::remote_for(cfg, pkt.daddr) {
        return to_remote(ctx, &pkt, ep, cfg, &r, now);
    }
    if pkt.later_fragment {
        return later_fragment(ctx, &mut pkt, cfg, now);
    }
    if pkt.is_icmp_error() {
        let back = icmp::container_error(ctx, &mut pkt, cfg, now)?;
        if back != 0 {
            // About a self-hairpin flow: back into the container, like the flow's packets.
            return Ok(redirect::back_to_container(ctx, back)?);
        }
        // Its source is now a node address: the stack would drop it as a martian.
        return Ok(redirect::forward(ctx, &pkt, None, now)?);
    }
    let key = conntrack::key_of(&pkt);
    let (f, other, counter) = match conntrack::classify(&key, &pkt, cfg, now) {
        // Reply halves carry the container's answers even to a fresh SYN; its own flows'
        // original halves unless a fresh SYN reuses a closing tuple.
        Ct::Hit(f)
        | Ct::Reused(
            f @ Flow {
                half: Half::Reply, ..
            },
        ) if !(f.kind == Kind::PortMap && f.half == Half::Original) => (
            f,
            conntrack::other_half(&key, f.entry, &pkt, cfg, now)?,
            hit_counter(&f),
        ),
        // The original half of an uplink flow: only a packet spoofing the client matches it.
        Ct::Hit(f) | Ct::Reused(f) | Ct::Crossed(f)
            if f.kind == Kind::PortMap && f.half == Half::Original =>
        {
            return Err(Skip::NotOurs.into());
        }
        // No live flow: judged and created by `from_container_new`, a program of its own.
        _ => return Err(new_flow_elsewhere(ctx)),
    };
    finish(ctx, &mut pkt, f, other, counter.unwrap_or(NO_COUNTER), now)
}

/// `finish`'s counter of a flow that counts none. (A plain integer, not an `Option`: a `None`
/// leaves the payload undefined, and LLVM may spill that uninitialized register, which the
/// verifier refuses.)
pub(super) const NO_COUNTER: u32 = u32::MAX;

/// Hands a packet without a live flow to `from_container_new` (tail call: this program ends
/// there). Only if the slot is empty (the agent fills it before attaching this program) does
/// it come back, and the packet is dropped: its flow cannot be created.
#[inline(always)]
fn new_flow_elsewhere(ctx: &TcContext) -> Stop {
    // SAFETY: a tail call with this program's own context.
    unsafe { TG_PROGS.tail_call(ctx, PROG_SLOT_CONTAINER_NEW) };
    DropReason::ConntrackFailed.into()
}

/// What both programs do with a packet of a flow they hit or created: rewrite it as its half
/// says, account it, and send it on.
#[inline(always)]
pub(super) fn finish(
    ctx: &TcContext,
    pkt: &mut Packet,
    f: Flow,
    other: Option<*mut CtEntry>,
    counter: u32,
    now: u64,
) -> Result<i32, Stop> {
    let e = f.entry;
    let entry = conntrack::xlate(e);
    nat::apply(ctx, pkt, &entry, nat::Checksum::Call)?;
    conntrack::touch(e, other, pkt, ctx.len(), now);
    if counter != NO_COUNTER {
        verdict::count(counter);
    }
    if entry.redirect_ifindex != 0 {
        return Ok(redirect::back_to_container(ctx, entry.redirect_ifindex)?);
    }
    // A port map's or hairpin's reply and a masqueraded flow's packets leave with a node
    // address as their source.
    let node_source = matches!(
        (f.kind, f.half),
        (Kind::PortMap | Kind::Hairpin, Half::Reply) | (Kind::Masq, Half::Original)
    );
    if node_source {
        // Its source is now a node address: the stack would drop it as a martian.
        return Ok(redirect::forward(ctx, pkt, Some(e), now)?);
    }
    Ok(TC_ACT_OK)
}

/// The container registered for the veth the packet arrived on.
#[inline(always)]
pub(super) fn endpoint_of(ctx: &TcContext) -> Option<Endpoint> {
    lookup::endpoint_by_ifindex(ifindex(ctx))
}

/// The counter bumped per packet of a flow hit with these flags.
#[inline(always)]
fn hit_counter(f: &Flow) -> Option<u32> {
    match (f.kind, f.half) {
        (Kind::PortMap | Kind::Hairpin, Half::Reply) => Some(CNT_REVNAT),
        (Kind::Hairpin, Half::Original) => Some(CNT_DNAT_HAIRPIN),
        (Kind::Masq, Half::Original) => Some(CNT_SNAT),
        _ => None,
    }
}

/// A protocol conntrack does not track (module docs): judged as a new flow every time, by
/// protocol and destination alone; passes untouched when allowed.
#[inline(always)]
fn other_proto(
    ctx: &TcContext,
    ep: &Endpoint,
    cfg: &Config,
    daddr: u32,
    proto: u8,
) -> Result<i32, Stop> {
    let peer = lookup::endpoint(daddr);
    if peer.is_none() {
        if let Some(r) = overlay::remote_for(cfg, daddr) {
            policy::to_remote(ep, r.vni, daddr, proto, 0)?;
            return Ok(overlay::encap(ctx, &r, cfg)?);
        }
    }
    policy::new_flow(ep, peer.as_ref(), cfg, daddr, proto, 0)?;
    Err(Skip::OtherProto.into())
}

/// A packet to a container of another node (`r` holds its prefix): a tracked flow of the
/// same network, judged once (ICC, then the container's egress policy) and encapsulated into
/// the overlay, never translated. Tracked even from a packet that does not open a flow
/// (entries lost or expired mid-flow), as the uplink does: the other node judged its opening.
/// ICMP errors about such flows go the same way, untouched.
#[inline(always)]
fn to_remote(
    ctx: &TcContext,
    pkt: &Packet,
    ep: &Endpoint,
    cfg: &Config,
    r: &Remote,
    now: u64,
) -> Result<i32, Stop> {
    if !pkt.is_icmp_error() {
        let key = conntrack::key_of(pkt);
        let (e, other) = match conntrack::classify(&key, pkt, cfg, now) {
            Ct::Hit(f) if f.kind == Kind::Plain => (
                f.entry,
                conntrack::other_half(&key, f.entry, pkt, cfg, now)?,
            ),
            _ => {
                policy::to_remote(ep, r.vni, pkt.daddr, pkt.proto, pkt.dport)?;
                let (e, other) = conntrack::create_plain(&key, ep.id, now)?;
                (e, Some(other))
            }
        };
        conntrack::touch(e, other, pkt, ctx.len(), now);
    }
    Ok(overlay::encap(ctx, r, cfg)?)
}

/// A datagram's later fragment (its first one's ports from `TG_FRAGS`): translated as the
/// flow its first fragment hit or created, its IP header only; a flow that does not exist
/// (any more) is a headless fragment.
#[inline(always)]
fn later_fragment(ctx: &TcContext, pkt: &mut Packet, cfg: &Config, now: u64) -> Result<i32, Stop> {
    let key = conntrack::key_of(pkt);
    let f = match conntrack::classify(&key, pkt, cfg, now) {
        Ct::Hit(f) if !(f.kind == Kind::PortMap && f.half == Half::Original) => f,
        _ => return Err(headless_fragment(pkt.daddr)),
    };
    let entry = conntrack::xlate(f.entry);
    nat::apply_fragment(ctx, pkt, &entry)?;
    conntrack::touch(f.entry, None, pkt, ctx.len(), now);
    if entry.redirect_ifindex != 0 {
        return Ok(redirect::back_to_container(ctx, entry.redirect_ifindex)?);
    }
    let node_source = matches!(
        (f.kind, f.half),
        (Kind::PortMap | Kind::Hairpin, Half::Reply) | (Kind::Masq, Half::Original)
    );
    if node_source {
        return Ok(redirect::forward(ctx, pkt, Some(f.entry), now)?);
    }
    Ok(TC_ACT_OK)
}

/// A later fragment whose first fragment was not seen: it passes to the node or another
/// container (untranslated is right there), but anything that would leave translated is
/// dropped rather than leak the container's address.
#[inline(always)]
fn headless_fragment(daddr: u32) -> Stop {
    if lookup::is_local(daddr) || lookup::endpoint(daddr).is_some() {
        Skip::Fragment.into()
    } else {
        DropReason::FragNoHead.into()
    }
}

/// ifindex of the interface the packet arrived on (the caller's host veth).
#[inline(always)]
pub(super) fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the program's context pointer; `ifindex` is readable in TC programs.
    unsafe { (*ctx.skb.skb).ifindex }
}
