//! Why the datapath dropped (or refused to touch) a packet. The same numbers index the
//! `TG_COUNTERS` map and label the agent's metrics.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A header could not be read within the packet bounds.
    Malformed = 0,
    /// Published port with no usable backend.
    NoMapping = 1,
    /// A helper (checksum, store, redirect) failed.
    Internal = 2,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::Malformed,
        DropReason::NoMapping,
        DropReason::Internal,
    ];

    /// The `TG_COUNTERS` index that counts this reason.
    pub const fn counter(self) -> u32 {
        match self {
            // Malformed packets are passed, not dropped; they share the pass counter.
            DropReason::Malformed => crate::stats::CNT_PASS_MALFORMED,
            DropReason::NoMapping => crate::stats::CNT_DROP_NO_MAPPING,
            DropReason::Internal => crate::stats::CNT_CSUM_ERROR,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoMapping => "no_mapping",
            DropReason::Internal => "internal",
        }
    }
}
