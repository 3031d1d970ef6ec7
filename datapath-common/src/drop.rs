//! Why the datapath dropped a packet. The same numbers index `EpStats.drops` and label the
//! agent's stats and metrics (`DropReason::name`).
//!
//! Slot numbers are stable across versions (a pinned `TG_EP_STATS` keeps counting across an
//! upgrade): slot 2 (`internal`, the old catch-all, now split by the step that failed) is
//! retired; it still holds what an older datapath counted there, and the agent adds it to the
//! `internal` total (`internal_total`). Slot 0 was `malformed`, which never dropped anything
//! (malformed packets pass untouched), so it held only zeros and now counts `frag_no_head`.

/// Slots of `EpStats.drops` (including the retired ones). Grown by appending (slot 12,
/// `ct_invalid`): a pinned `TG_EP_STATS` of the shorter layout is migrated with its counts
/// and zeros in the new slots.
pub const DROP_REASONS: usize = 13;
/// The retired catch-all slot (see the module docs).
pub const INTERNAL_RETIRED_SLOT: usize = 2;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A later fragment of a datagram whose first fragment was not seen (out of order, or
    /// before the datapath started): it cannot be translated, and sending it on untranslated
    /// would leak a container's address.
    FragNoHead = 0,
    /// Published port with no usable backend.
    NoMapping = 1,
    /// An egress policy rule or the default stance denied a new flow.
    Policy = 3,
    /// Container-to-container by IP with ICC off and no link.
    Icc = 4,
    /// Source address is not the container's.
    Spoof = 5,
    /// Over the container's rate limit.
    RateLimit = 6,
    /// No free masquerade port for the destination.
    NatExhausted = 7,
    /// A checksum helper refused the update (`bpf_l3/l4_csum_replace`).
    CsumFailed = 8,
    /// A header to rewrite could not be read or written (`bpf_skb_load/store_bytes`).
    RewriteFailed = 9,
    /// A conntrack entry could not be written, or was gone right after it was written.
    ConntrackFailed = 10,
    /// The kernel refused the redirect target (`bpf_redirect*`).
    RedirectFailed = 11,
    /// A packet to the outside that belongs to no live conntrack entry and can neither open a
    /// flow nor pick one up (Linux's conntrack state INVALID): a TCP SYN-ACK, FIN or RST, or
    /// an ICMP echo reply, whose flow expired or was evicted. (A mid-stream TCP segment with
    /// just ACK is picked up as a new flow instead, as Linux's `nf_conntrack_tcp_loose` does.)
    CtInvalid = 12,
}

impl DropReason {
    pub const ALL: [DropReason; 12] = [
        DropReason::FragNoHead,
        DropReason::NoMapping,
        DropReason::Policy,
        DropReason::Icc,
        DropReason::Spoof,
        DropReason::RateLimit,
        DropReason::NatExhausted,
        DropReason::CsumFailed,
        DropReason::RewriteFailed,
        DropReason::ConntrackFailed,
        DropReason::RedirectFailed,
        DropReason::CtInvalid,
    ];

    /// The reasons that are a step of the datapath failing (a helper or a map refusing),
    /// not a decision about the packet; their sum is reported as `internal`.
    pub const INTERNAL: [DropReason; 4] = [
        DropReason::CsumFailed,
        DropReason::RewriteFailed,
        DropReason::ConntrackFailed,
        DropReason::RedirectFailed,
    ];

    /// The global `TG_COUNTERS` index that also counts this reason.
    pub const fn counter(self) -> u32 {
        match self {
            DropReason::FragNoHead => crate::stats::CNT_DROP_FRAG,
            DropReason::NoMapping => crate::stats::CNT_DROP_NO_MAPPING,
            DropReason::Policy => crate::stats::CNT_DROP_POLICY,
            DropReason::Icc => crate::stats::CNT_DROP_ICC,
            DropReason::Spoof => crate::stats::CNT_DROP_SPOOF,
            DropReason::RateLimit => crate::stats::CNT_DROP_RATELIMIT,
            DropReason::NatExhausted => crate::stats::CNT_DROP_NAT_EXHAUSTED,
            DropReason::CsumFailed => crate::stats::CNT_CSUM_ERROR,
            DropReason::RewriteFailed => crate::stats::CNT_DROP_REWRITE,
            DropReason::ConntrackFailed => crate::stats::CNT_DROP_CONNTRACK,
            DropReason::RedirectFailed => crate::stats::CNT_DROP_REDIRECT,
            DropReason::CtInvalid => crate::stats::CNT_DROP_CT_INVALID,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::FragNoHead => "frag_no_head",
            DropReason::NoMapping => "no_mapping",
            DropReason::Policy => "policy",
            DropReason::Icc => "icc",
            DropReason::Spoof => "spoof",
            DropReason::RateLimit => "ratelimit",
            DropReason::NatExhausted => "nat_exhausted",
            DropReason::CsumFailed => "csum_failed",
            DropReason::RewriteFailed => "rewrite_failed",
            DropReason::ConntrackFailed => "conntrack_failed",
            DropReason::RedirectFailed => "redirect_failed",
            DropReason::CtInvalid => "ct_invalid",
        }
    }
}

/// The `internal` total of a container's drop slots: the failed-step reasons plus what an
/// older datapath counted in the retired catch-all slot.
pub fn internal_total(drops: &[u64; DROP_REASONS]) -> u64 {
    DropReason::INTERNAL
        .iter()
        .map(|r| drops[*r as usize])
        .sum::<u64>()
        + drops[INTERNAL_RETIRED_SLOT]
}

#[cfg(test)]
mod tests {
    use super::{internal_total, DropReason, DROP_REASONS, INTERNAL_RETIRED_SLOT};

    #[test]
    fn slots_are_distinct_in_range_and_skip_the_retired_one() {
        let mut seen = [false; DROP_REASONS];
        for r in DropReason::ALL {
            let i = r as usize;
            assert!(i < DROP_REASONS && i != INTERNAL_RETIRED_SLOT);
            assert!(!seen[i], "slot {i} twice");
            seen[i] = true;
        }
    }

    #[test]
    fn internal_adds_the_failed_steps_and_the_retired_slot() {
        let mut d = [0u64; DROP_REASONS];
        d[INTERNAL_RETIRED_SLOT] = 5;
        d[DropReason::CsumFailed as usize] = 1;
        d[DropReason::RedirectFailed as usize] = 2;
        d[DropReason::Policy as usize] = 100;
        assert_eq!(internal_total(&d), 8);
    }
}
