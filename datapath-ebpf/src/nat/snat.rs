//! Source NAT: masquerade of container egress (container -> outside through the uplink, source
//! becomes `Config.snat_ip` with a port from the NAT range), and the self-hairpin SNAT to the
//! gateway. `rev_snat` undoes either on replies.

use aya_ebpf::programs::TcContext;
use datapath_common::{
    config::Config,
    conntrack::{CtEntry, CtKey, CT_MASQ, CT_SNAT},
    drop::DropReason,
    proto,
};

use super::{rewrite, Checksum, End};
use crate::{config, conntrack, lookup, maps::TG_ENDPOINTS, packet::Packet, redirect};

/// Candidate ports tried per new flow before giving up (`NatExhausted`). Candidates are
/// pseudo-random over the range, so with the range a third full the chance that all 32 are
/// taken is ~1e-15; the bound keeps the loop small for the verifier.
const NAT_TRIES: u32 = 32;

/// Adds to `e` the SNAT of a self-hairpin flow from `pkt`: source becomes the caller's gateway,
/// source port unchanged.
#[inline(always)]
pub fn self_hairpin(e: &mut CtEntry, pkt: &Packet) -> Result<(), DropReason> {
    // SAFETY: pointer from a lookup in this run; the field is copied out at once.
    let gw = TG_ENDPOINTS
        .get_ptr(pkt.saddr)
        .map(|ep| unsafe { (*ep).gateway_ip })
        .ok_or(DropReason::NoMapping)?;
    e.flags |= CT_SNAT;
    e.nat_saddr = gw;
    e.nat_sport = pkt.sport;
    Ok(())
}

/// Whether a new flow from a container to `pkt.daddr` (not a container) is masqueraded:
/// masquerade is on, the destination is outside the pool and not one of the node's addresses,
/// and the node's FIB sends it out of the uplink (what `-o uplink -j MASQUERADE` matches).
#[inline(always)]
pub fn masquerades(ctx: &TcContext, pkt: &Packet, cfg: &Config) -> bool {
    cfg.snat_ip != 0
        && cfg.uplink_ifindex != 0
        && pkt.daddr & cfg.pool_mask != cfg.pool_net
        && !lookup::is_local(pkt.daddr)
        && redirect::fib_egress(ctx, pkt) == Some(cfg.uplink_ifindex)
}

/// Creates both halves of a masqueraded flow, allocating its source port (ICMP: echo id).
/// The port is taken by claiming the reply half's key (`conntrack::claim`), which is what
/// makes it collision-free per (peer, peer port, proto); ports published on the SNAT address
/// are skipped so an inbound connection to them is never mistaken for a reply.
#[inline(always)]
pub fn masquerade(
    key: &CtKey,
    endpoint_id: u32,
    cfg: &Config,
    now: u64,
) -> Result<(*mut CtEntry, *mut CtEntry), DropReason> {
    let e = conntrack::new_entry(conntrack::HALF, CT_SNAT | CT_MASQ, endpoint_id, now)?;
    // SAFETY: `e` is this CPU's scratch slot, just built; only this function uses it until
    // `create_claimed` inserts it.
    let e = unsafe { &mut *e };
    e.nat_saddr = cfg.snat_ip;
    let (first, count) = config::nat_ports(cfg);
    let seed = flow_hash(key);
    for i in 0..NAT_TRIES {
        let port = first + mix(seed.wrapping_add(i)).checked_rem(count).unwrap_or(0);
        e.nat_sport = (port as u16).to_be();
        if key.proto != proto::ICMP
            && lookup::published(cfg.snat_ip, e.nat_sport, key.proto).is_some()
        {
            continue;
        }
        let (rkey, r) = conntrack::reverse(key, e)?;
        // SAFETY: `r` is this CPU's other scratch slot, just built.
        if conntrack::claim(&rkey, unsafe { &*r }, cfg, now) {
            return conntrack::create_claimed(key, e, &rkey);
        }
    }
    Err(DropReason::NatExhausted)
}

/// A 32-bit integer hash (lowbias32): good avalanche, a few ALU ops.
#[inline(always)]
const fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// Start of a flow's port search: spreads flows of one container over the range and gives a
/// retried tuple the same first candidate.
#[inline(always)]
fn flow_hash(k: &CtKey) -> u32 {
    let ports = (u32::from(k.sport) << 16) | u32::from(k.dport);
    mix(k.saddr ^ mix(k.daddr ^ mix(ports ^ u32::from(k.proto))))
}

/// Original direction: the source becomes `ip:port`.
#[inline(always)]
pub fn snat(
    ctx: &TcContext,
    pkt: &mut Packet,
    ip: u32,
    port: u16,
    how: Checksum,
) -> Result<(), DropReason> {
    rewrite(ctx, pkt, End::Src, ip, port, how)
}

/// Reply direction: the destination goes back to the original source.
#[inline(always)]
pub fn rev_snat(
    ctx: &TcContext,
    pkt: &mut Packet,
    ip: u32,
    port: u16,
    how: Checksum,
) -> Result<(), DropReason> {
    rewrite(ctx, pkt, End::Dst, ip, port, how)
}
