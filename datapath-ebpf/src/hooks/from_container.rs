//! `from_container`: TC (TCX) ingress of each container's host-side veth.
//!
//! ```text
//! container A --> [tgA] from_container --+-- reply of a port-mapped flow: source back to hostip:P --> FIB redirect (uplink, or [tgB] for hairpin)
//!                                        +-- hairpin to hostip:P of B:   DNAT to B               --> node stack --> [tgB]
//!                                        +-- hairpin to its own port:    DNAT + SNAT to gateway  --> redirect out [tgA]
//! ```
//! Replies are not handed to the node stack: with a node address as source they would fail its
//! martian check (see `redirect`).

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use aya_log_ebpf::debug;
use datapath_common::{
    conntrack::{CtEntry, CtKey, CT_HAIRPIN, CT_REPLY},
    stats::{CNT_DNAT_HAIRPIN, CNT_REVNAT},
};

use crate::{
    conntrack,
    nat::{self, dnat, snat},
    packet::Packet,
    redirect,
    verdict::{self, Skip, Stop},
};

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    verdict::tc(try_from_container(&ctx))
}

#[inline(always)]
fn try_from_container(ctx: &TcContext) -> Result<i32, Stop> {
    let mut pkt = Packet::parse(ctx)?;
    let key = pkt.ct_key();
    let now = conntrack::now_ns();
    let (e, other, counter) = match conntrack::lookup(&key) {
        Some(e) if conntrack::flags(e) & CT_REPLY != 0 => {
            (e, conntrack::ensure_reverse(&key, e)?, CNT_REVNAT)
        }
        Some(e) if conntrack::flags(e) & CT_HAIRPIN != 0 && !conntrack::reused(e, &pkt) => {
            (e, conntrack::ensure_reverse(&key, e)?, CNT_DNAT_HAIRPIN)
        }
        // The original half of an uplink flow: only a packet spoofing the client matches it.
        Some(e) if conntrack::flags(e) & CT_HAIRPIN == 0 => return Err(Skip::NotOurs.into()),
        _ => {
            let (e, other) = new_hairpin(ctx, &pkt, &key, now)?;
            (e, other, CNT_DNAT_HAIRPIN)
        }
    };
    // SAFETY: `e` came from a lookup in this run; copied so the rewrite reads stable values.
    let entry: CtEntry = unsafe { *e };
    nat::apply(ctx, &mut pkt, &entry)?;
    conntrack::touch(e, other, &pkt, ctx.len(), now);
    verdict::count(counter);
    if entry.redirect_ifindex != 0 {
        return Ok(redirect::back_to_container(ctx, entry.redirect_ifindex)?);
    }
    if entry.flags & CT_REPLY != 0 {
        // Its source is now `hostip:P`, a node address: the stack would drop it as a martian.
        return Ok(redirect::forward(ctx, &pkt)?);
    }
    Ok(TC_ACT_OK)
}

/// Creates the conntrack halves of a container's new flow to a published port (hairpin).
#[inline(always)]
fn new_hairpin(
    ctx: &TcContext,
    pkt: &Packet,
    key: &CtKey,
    now: u64,
) -> Result<(*mut CtEntry, *mut CtEntry), Stop> {
    // Only a TCP SYN (without ACK) opens a flow here: a reply to a connection the node made to
    // the container could carry a published port as its destination port.
    if !pkt.opens_flow() {
        return Err(Skip::NotOurs.into());
    }
    let pm = dnat::published(pkt.daddr, pkt.dport, pkt.proto).ok_or(Skip::NotOurs)?;
    let mut e = dnat::flow_entry(&pm, CT_HAIRPIN, now);
    if pm.container_ip == pkt.saddr {
        // Calling itself: without the SNAT its reply would be delivered locally inside the
        // container, to a socket that never sent anything to that address.
        snat::self_hairpin(&mut e, pkt)?;
        e.redirect_ifindex = ifindex(ctx);
    }
    let ptrs = conntrack::create(key, &e)?;
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

/// ifindex of the interface the packet arrived on (the caller's host veth).
#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the program's context pointer; `ifindex` is readable in TC programs.
    unsafe { (*ctx.skb.skb).ifindex }
}
