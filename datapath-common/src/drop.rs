//! Why the datapath dropped a packet. The same numbers index `EpStats.drops` and label the
//! agent's stats and metrics (`DropReason::name`).

pub const DROP_REASONS: usize = 8;

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A header could not be read within the packet bounds (counted; such packets are passed
    /// untouched where nothing needs translating).
    Malformed = 0,
    /// Published port with no usable backend.
    NoMapping = 1,
    /// A helper (checksum, store, redirect) failed.
    Internal = 2,
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
}

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::Malformed,
        DropReason::NoMapping,
        DropReason::Internal,
        DropReason::Policy,
        DropReason::Icc,
        DropReason::Spoof,
        DropReason::RateLimit,
        DropReason::NatExhausted,
    ];

    /// The global `TG_COUNTERS` index that also counts this reason.
    pub const fn counter(self) -> u32 {
        match self {
            DropReason::Malformed => crate::stats::CNT_PASS_MALFORMED,
            DropReason::NoMapping => crate::stats::CNT_DROP_NO_MAPPING,
            DropReason::Internal => crate::stats::CNT_CSUM_ERROR,
            DropReason::Policy => crate::stats::CNT_DROP_POLICY,
            DropReason::Icc => crate::stats::CNT_DROP_ICC,
            DropReason::Spoof => crate::stats::CNT_DROP_SPOOF,
            DropReason::RateLimit => crate::stats::CNT_DROP_RATELIMIT,
            DropReason::NatExhausted => crate::stats::CNT_DROP_NAT_EXHAUSTED,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoMapping => "no_mapping",
            DropReason::Internal => "internal",
            DropReason::Policy => "policy",
            DropReason::Icc => "icc",
            DropReason::Spoof => "spoof",
            DropReason::RateLimit => "ratelimit",
            DropReason::NatExhausted => "nat_exhausted",
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn indexes_match_positions() {
        for (i, r) in super::DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
