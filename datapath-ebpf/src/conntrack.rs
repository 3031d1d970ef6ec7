//! Conntrack/NAT entries in `TG_CT`. A translated flow owns two entries, one per direction,
//! each keyed by the tuple as its packets arrive and saying how to rewrite them; either half
//! can be rebuilt from the other (`reverse`), so a flow survives losing one half to LRU
//! eviction, and a missing original half is recreated from `TG_PORTMAP` by the hooks.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_ns};
use datapath_common::{
    conntrack::{CtEntry, CtKey, CT_CLOSING, CT_DNAT, CT_REPLY, CT_SNAT},
    drop::DropReason,
};

use crate::{maps::TG_CT, packet::Packet};

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<*mut CtEntry> {
    TG_CT.get_ptr_mut(key)
}

/// Timestamps use `bpf_ktime_get_ns`, i.e. CLOCK_MONOTONIC: the agent must compare them with
/// `clock_gettime(CLOCK_MONOTONIC)`.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

/// The other half of a flow. Its key is the tuple after `e` rewrote the packet, reversed; it
/// undoes `e`: a source rewrite becomes a destination rewrite back to the old source and vice
/// versa. Flags other than `CT_REPLY` (which flips) carry over, counters restart.
#[inline(always)]
pub fn reverse(key: &CtKey, e: &CtEntry) -> (CtKey, CtEntry) {
    let (new_saddr, new_sport) = if e.flags & CT_SNAT != 0 {
        (e.nat_saddr, e.nat_sport)
    } else {
        (key.saddr, key.sport)
    };
    let (new_daddr, new_dport) = if e.flags & CT_DNAT != 0 {
        (e.nat_daddr, e.nat_dport)
    } else {
        (key.daddr, key.dport)
    };
    let rkey = CtKey {
        saddr: new_daddr,
        daddr: new_saddr,
        sport: new_dport,
        dport: new_sport,
        proto: key.proto,
        _pad: [0; 3],
    };
    let mut flags = (e.flags & !(CT_SNAT | CT_DNAT)) ^ CT_REPLY;
    let mut r = CtEntry {
        endpoint_id: e.endpoint_id,
        redirect_ifindex: e.redirect_ifindex,
        created_ns: e.created_ns,
        last_seen_ns: e.last_seen_ns,
        ..CtEntry::default()
    };
    if e.flags & CT_DNAT != 0 {
        flags |= CT_SNAT;
        r.nat_saddr = key.daddr;
        r.nat_sport = key.dport;
    }
    if e.flags & CT_SNAT != 0 {
        flags |= CT_DNAT;
        r.nat_daddr = key.saddr;
        r.nat_dport = key.sport;
    }
    r.flags = flags;
    (rkey, r)
}

/// Whether two entries rewrite packets the same way (counters and timestamps aside).
#[inline(always)]
fn same_translation(a: &CtEntry, b: &CtEntry) -> bool {
    a.flags == b.flags
        && a.nat_saddr == b.nat_saddr
        && a.nat_daddr == b.nat_daddr
        && a.nat_sport == b.nat_sport
        && a.nat_dport == b.nat_dport
        && a.redirect_ifindex == b.redirect_ifindex
}

/// Makes `key` hold `want`'s translation: an existing equal entry (and its counters) is kept,
/// a missing or different one is (over)written.
#[inline(always)]
pub fn ensure(key: &CtKey, want: &CtEntry) -> Result<*mut CtEntry, DropReason> {
    if let Some(p) = lookup(key) {
        // SAFETY: `p` came from a lookup in this program run; only read here.
        if same_translation(unsafe { &*p }, want) {
            return Ok(p);
        }
    }
    TG_CT
        .insert(key, want, u64::from(BPF_ANY))
        .map_err(|_| DropReason::Internal)?;
    lookup(key).ok_or(DropReason::Internal)
}

/// Writes both halves of a new flow, `e` being the half that `key` (the current packet) hits;
/// returns pointers to that half and the other one.
#[inline(always)]
pub fn create(key: &CtKey, e: &CtEntry) -> Result<(*mut CtEntry, *mut CtEntry), DropReason> {
    TG_CT
        .insert(key, e, u64::from(BPF_ANY))
        .map_err(|_| DropReason::Internal)?;
    let (rkey, r) = reverse(key, e);
    let other = ensure(&rkey, &r)?;
    // Looked up again after the second insert: with LRU, any insert may recycle a slot.
    let this = lookup(key).ok_or(DropReason::Internal)?;
    Ok((this, other))
}

/// The entry's `CT_*` flags.
#[inline(always)]
pub fn flags(e: *mut CtEntry) -> u32 {
    // SAFETY: `e` came from a lookup in this program run.
    unsafe { (*e).flags }
}

/// A closing TCP entry hit by a fresh SYN: the tuple is being reused by a new connection,
/// which is translated afresh (the mapping may have changed since).
#[inline(always)]
pub fn reused(e: *mut CtEntry, pkt: &Packet) -> bool {
    flags(e) & CT_CLOSING != 0 && pkt.proto == datapath_common::proto::TCP && pkt.opens_flow()
}

/// Makes sure the other half of a hit flow exists, and returns it.
#[inline(always)]
pub fn ensure_reverse(key: &CtKey, e: *mut CtEntry) -> Result<*mut CtEntry, DropReason> {
    // SAFETY: `e` came from a lookup in this program run; copied out before any insert.
    let (rkey, r) = reverse(key, unsafe { &*e });
    ensure(&rkey, &r)
}

/// Accounts one packet of `len` bytes on `e`; a TCP FIN/RST marks both halves closing so the
/// agent may retire them early.
#[inline(always)]
pub fn touch(e: *mut CtEntry, other: *mut CtEntry, pkt: &Packet, len: u32, now: u64) {
    // SAFETY: both pointers come from lookups in this program run. Plain read-modify-writes:
    // the bpfel target has no Rust atomic RMW, and a flow's packets in one direction mostly
    // stay on one CPU (RSS/RPS hash by flow), so a lost update is rare and only skews stats.
    unsafe {
        (*e).last_seen_ns = now;
        (*e).packets = (*e).packets.wrapping_add(1);
        (*e).bytes = (*e).bytes.wrapping_add(u64::from(len));
        if pkt.closes_flow() {
            (*e).flags |= CT_CLOSING;
            (*other).flags |= CT_CLOSING;
        }
    }
}
