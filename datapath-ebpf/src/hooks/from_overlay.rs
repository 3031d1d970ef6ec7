//! `from_overlay`: TC (TCX) ingress of the node's VXLAN device (cluster mode), after the
//! kernel took the outer headers off and left their tunnel key.
//!
//! ```text
//! other node --VXLAN--> [tgvxlan] from_overlay --+-- VNI is not the destination's network: drop (Icc)
//!                                                +-- inner source not a container of that VNI
//!                                                |   on the sending node:                  drop (Spoof)
//!                                                +-- conntrack hit (reply of a local container's
//!                                                |   flow, or a tracked flow from there)   --+
//!                                                +-- new: network's ICC on, tracked plain  --+--> straight into the container
//! ```
//! Delivery is `redirect::into_container`, the uplink's fast path: rx counters, the
//! container's ingress limit, TTL, MACs, `bpf_redirect_peer`. The entries created here make
//! the container's answers conntrack hits in `from_container`, which sends them back into
//! the overlay whatever its egress policy says (they are replies).

use aya_ebpf::{macros::classifier, programs::TcContext};
use datapath_common::{drop::DropReason, stats::CNT_OVERLAY_RX};

use crate::{
    config,
    conntrack::{self, Ct, Kind},
    lookup, overlay,
    packet::Packet,
    policy, redirect,
    verdict::{self, Stop},
};

#[classifier]
pub fn from_overlay(ctx: TcContext) -> i32 {
    let mut owner = 0;
    let res = try_from_overlay(&ctx, &mut owner);
    verdict::tc_for(res, owner)
}

#[inline(always)]
fn try_from_overlay(ctx: &TcContext, owner: &mut u32) -> Result<i32, Stop> {
    let (vni, sender) = overlay::tunnel_of(ctx)?;
    let pkt = Packet::parse(ctx)?;
    let cfg = config::get()?;
    let ep = lookup::endpoint(pkt.daddr).ok_or(DropReason::NoMapping)?;
    *owner = ep.id;
    if vni == 0 || ep.net != vni {
        return Err(DropReason::Icc.into());
    }
    match lookup::remote(pkt.saddr) {
        Some(r) if r.vni == vni && r.node_ip == sender => {}
        _ => return Err(DropReason::Spoof.into()),
    }
    let now = conntrack::now_ns();
    let key = conntrack::key_of(&pkt);
    let (e, other) = match conntrack::classify(&key, &pkt, cfg, now) {
        Ct::Hit(f) if f.kind == Kind::Plain => (
            f.entry,
            conntrack::other_half(&key, f.entry, &pkt, cfg, now)?,
        ),
        // A translated flow's tuple cannot come from another node's container.
        Ct::Hit(_) | Ct::Crossed(_) => return Err(DropReason::Icc.into()),
        Ct::New | Ct::Reused(_) => {
            policy::remote_icc(&ep, vni)?;
            let (e, other) = conntrack::create_plain(&key, ep.id, now)?;
            (e, Some(other))
        }
    };
    conntrack::touch(e, other, &pkt, ctx.len(), now);
    verdict::count(CNT_OVERLAY_RX);
    Ok(redirect::into_container(ctx, &pkt, e, now)?)
}
