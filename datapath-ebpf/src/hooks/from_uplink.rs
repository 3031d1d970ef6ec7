//! `from_uplink`: TC (TCX) ingress of the uplink in the node namespace.
//!
//! ```text
//! client --> [uplink] from_uplink: DNAT hostip:P -> cip:cport' --> node stack --> [tgXXXX] --> container
//! ```
//! Traffic to a published port is rewritten to its container and handed back to the node stack
//! (TC_ACT_OK), which forwards it; the client address is kept. Everything else passes untouched.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use aya_log_ebpf::debug;
use datapath_common::{
    conntrack::{CtEntry, CtKey, CT_HAIRPIN, CT_REPLY},
    stats::CNT_DNAT_UPLINK,
};

use crate::{
    conntrack,
    nat::{self, dnat},
    packet::Packet,
    verdict::{self, Skip, Stop},
};

#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    verdict::tc(try_from_uplink(&ctx))
}

#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<i32, Stop> {
    let mut pkt = Packet::parse(ctx)?;
    let key = pkt.ct_key();
    let now = conntrack::now_ns();
    let (e, other) = match conntrack::lookup(&key) {
        // Only the original half of an uplink flow can match here; a tuple that hits a reply or
        // hairpin entry came in with a container's source address and is not ours to touch.
        Some(e) if conntrack::flags(e) & (CT_REPLY | CT_HAIRPIN) != 0 => {
            return Err(Skip::NotOurs.into());
        }
        Some(e) if !conntrack::reused(e, &pkt) => (e, conntrack::ensure_reverse(&key, e)?),
        // A miss (or a reused tuple) on any packet, not only a SYN: a flow whose entries were
        // lost keeps working, its entries are recreated from the port map.
        _ => new_flow(ctx, &pkt, &key, now)?,
    };
    // SAFETY: `e` came from a lookup in this run; copied so the rewrite reads stable values.
    let entry: CtEntry = unsafe { *e };
    nat::apply(ctx, &mut pkt, &entry)?;
    conntrack::touch(e, other, &pkt, ctx.len(), now);
    verdict::count(CNT_DNAT_UPLINK);
    Ok(TC_ACT_OK)
}

/// Creates both conntrack halves of a flow to a published port, or `NotOurs`.
#[inline(always)]
fn new_flow(
    ctx: &TcContext,
    pkt: &Packet,
    key: &CtKey,
    now: u64,
) -> Result<(*mut CtEntry, *mut CtEntry), Stop> {
    let pm = dnat::published(pkt.daddr, pkt.dport, pkt.proto).ok_or(Skip::NotOurs)?;
    let e = dnat::flow_entry(&pm, 0, now);
    let ptrs = conntrack::create(key, &e)?;
    debug!(
        ctx,
        "uplink flow {:i}:{} -> {:i}:{}",
        pkt.saddr.to_ne_bytes(),
        u16::from_be(pkt.sport),
        pm.container_ip.to_ne_bytes(),
        u16::from_be(pm.container_port)
    );
    Ok(ptrs)
}
