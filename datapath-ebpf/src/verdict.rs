//! How a hook ends. Every stage returns `Result<_, Stop>`; this is the one place that turns a
//! stop into a TC action and counts it in `TG_COUNTERS` (and, when the packet belongs to a
//! container, in that container's `TG_EP_STATS` slot).

use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use datapath_common::{
    drop::DropReason,
    stats::{CNT_PASS_FRAGMENT, CNT_PASS_MALFORMED, CNT_PASS_NOT_IPV4},
};

use crate::maps::{TG_COUNTERS, TG_EP_STATS};

/// Why a packet is left to the kernel untouched.
#[derive(Clone, Copy)]
pub enum Skip {
    /// Not IPv4 (ARP, IPv6, ...).
    NotIpv4,
    /// A header does not fit in the packet, or has impossible lengths.
    Malformed,
    /// A non-first IPv4 fragment: it carries no L4 header to match on.
    Fragment,
    /// IPv4 but neither TCP, UDP, ICMP echo nor an ICMP error.
    OtherProto,
    /// Parsed fine but belongs to no translated flow and no published port.
    NotOurs,
}

impl Skip {
    /// Counter of this reason, if it is worth one (ordinary unrelated traffic is not counted).
    #[inline(always)]
    const fn counter(self) -> Option<u32> {
        match self {
            Skip::NotIpv4 => Some(CNT_PASS_NOT_IPV4),
            Skip::Malformed => Some(CNT_PASS_MALFORMED),
            Skip::Fragment => Some(CNT_PASS_FRAGMENT),
            Skip::OtherProto | Skip::NotOurs => None,
        }
    }
}

/// An early end of a hook.
pub enum Stop {
    Skip(Skip),
    Drop(DropReason),
}

impl From<Skip> for Stop {
    #[inline(always)]
    fn from(s: Skip) -> Self {
        Stop::Skip(s)
    }
}

impl From<DropReason> for Stop {
    #[inline(always)]
    fn from(r: DropReason) -> Self {
        Stop::Drop(r)
    }
}

/// Adds one to counter `idx` of this CPU. Non-atomic: the slot is per CPU and a lost increment
/// (a softirq preempting a socket hook mid-update) is acceptable for statistics.
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = TG_COUNTERS.get_ptr_mut(idx) {
        // SAFETY: `p` points at this CPU's slot of a preallocated array element.
        unsafe { *p += 1 };
    }
}

/// Final TC action of a hook: the action it chose, or the one its stop implies. A drop of a
/// packet of container `endpoint_id` (0: none known) is also counted in the container's
/// `EpStats.drops`.
#[inline(always)]
pub fn tc_for(res: Result<i32, Stop>, endpoint_id: u32) -> i32 {
    match res {
        Ok(action) => action,
        Err(Stop::Skip(s)) => {
            if let Some(idx) = s.counter() {
                count(idx);
            }
            TC_ACT_OK
        }
        Err(Stop::Drop(r)) => {
            count(r.counter());
            if endpoint_id != 0 {
                if let Some(st) = TG_EP_STATS.get_ptr_mut(endpoint_id) {
                    // SAFETY: this CPU's slot of a preallocated array element; the index is
                    // a DropReason discriminant, below DROP_REASONS.
                    unsafe {
                        if let Some(d) = (*st).drops.get_mut(r as usize) {
                            *d += 1;
                        }
                    }
                }
            }
            TC_ACT_SHOT
        }
    }
}

/// Which way a packet crosses the container's host veth.
#[derive(Clone, Copy)]
pub enum Dir {
    /// Sent by the container (`from_container`).
    Tx,
    /// Delivered to the container (`to_container`).
    Rx,
}

/// Counts one packet of `len` bytes in container `endpoint_id`'s `EpStats`.
#[inline(always)]
pub fn count_ep(endpoint_id: u32, dir: Dir, len: u32) {
    if let Some(st) = TG_EP_STATS.get_ptr_mut(endpoint_id) {
        // SAFETY: this CPU's slot of a preallocated array element.
        unsafe {
            match dir {
                Dir::Tx => {
                    (*st).tx_packets += 1;
                    (*st).tx_bytes += u64::from(len);
                }
                Dir::Rx => {
                    (*st).rx_packets += 1;
                    (*st).rx_bytes += u64::from(len);
                }
            }
        }
    }
}
