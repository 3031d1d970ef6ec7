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

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoMapping => "no_mapping",
            DropReason::Internal => "internal",
        }
    }
}
