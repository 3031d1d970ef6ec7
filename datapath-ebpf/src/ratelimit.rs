//! Per-container policing: one GCRA token bucket per container and direction in
//! `TG_RATELIMIT`, shared by every CPU (math in `datapath_common::ratelimit`).
//!
//! The bucket's state is the single word `tat`, so an update is one compare-and-swap: a CPU
//! that loses the race re-reads the word and decides again against the winner's value, so no
//! admitted byte is ever lost or counted twice. The retry loop is bounded for the verifier;
//! a packet still contended after `CAS_TRIES` is dropped (the other CPUs are spending the
//! bucket at that very moment, so the container is sending at least as fast as its rate).
//! No `sch_fq` on this kernel, so nothing can delay a packet: over the limit is a drop.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use core::intrinsics::{atomic_cxchg, AtomicOrdering};
use datapath_common::{drop::DropReason, ratelimit::TokenBucket};

use crate::maps::TG_RATELIMIT;

const CAS_TRIES: u32 = 4;

/// Which of the container's buckets a packet pays from.
#[derive(Clone, Copy)]
pub enum Way {
    /// What the container sends (`from_container`).
    Egress,
    /// What the container receives (`to_container`).
    Ingress,
}

/// ARP in network byte order, as `skb->protocol` holds it.
const ETH_P_ARP_BE: u32 = 0x0806u16.to_be() as u32;

/// Polices the packet in `ctx` for container `endpoint_id`. ARP is exempt: it is tiny, and
/// dropping it under overload would stall neighbour resolution for the whole container
/// rather than slow it down. Everything else pays, whatever its protocol or destination.
#[inline(always)]
pub fn police_skb(ctx: &TcContext, endpoint_id: u32, way: Way) -> Result<(), DropReason> {
    // SAFETY: `skb` is the program's context pointer; `protocol` is readable in TC programs.
    if unsafe { (*ctx.skb.skb).protocol } == ETH_P_ARP_BE {
        return Ok(());
    }
    police(endpoint_id, way, ctx.len())
}

/// Takes `len` bytes (`skb->len`: a GSO packet pays for all its segments) from container
/// `endpoint_id`'s bucket; `Err(RateLimit)` when it does not conform.
#[inline(always)]
pub fn police(endpoint_id: u32, way: Way, len: u32) -> Result<(), DropReason> {
    let Some(rl) = TG_RATELIMIT.get_ptr_mut(endpoint_id) else {
        return Ok(());
    };
    // SAFETY: `rl` points at a preallocated array element that lives as long as the map.
    let b: *mut TokenBucket = unsafe {
        match way {
            Way::Egress => &raw mut (*rl).egress,
            Way::Ingress => &raw mut (*rl).ingress,
        }
    };
    // SAFETY: as above; plain reads of fields only the agent writes (a torn view while the
    // agent rewrites the whole value costs at most one wrong decision).
    let cfg = unsafe {
        TokenBucket {
            rate: (*b).rate,
            depth: (*b).depth,
            fill_ns: (*b).fill_ns,
            tat: 0,
        }
    };
    if cfg.rate == 0 {
        return Ok(());
    }
    // SAFETY: no helper preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `tat` is an 8-aligned u64 inside the map value.
    let tat = unsafe { &raw mut (*b).tat };
    // `core::sync::atomic` offers no compare-and-swap on bpfel-unknown-none (the target
    // declares no CAS width), but the intrinsic lowers to BPF_CMPXCHG (BPF ISA v3, kernel
    // 5.12+). Every datapath writer of `tat` goes through it; the agent only replaces whole
    // values.
    // A volatile read is enough for the first guess (an aligned 64-bit load is single-copy
    // atomic; LLVM cannot select a BPF atomic load for the `generic` CPU): the CAS checks it.
    // SAFETY: as above.
    let mut cur = unsafe { core::ptr::read_volatile(tat) };
    for _ in 0..CAS_TRIES {
        let Some(next) = cfg.step(cur, u64::from(len), now) else {
            return Err(DropReason::RateLimit);
        };
        // SAFETY: as above.
        let (seen, ok) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, cur, next,
            )
        };
        if ok {
            return Ok(());
        }
        cur = seen;
    }
    Err(DropReason::RateLimit)
}
