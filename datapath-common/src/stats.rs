//! Indexes of the per-CPU `TG_COUNTERS` array (values are `u64`, summed over CPUs by the agent).

pub const CNT_DNAT_UPLINK: u32 = 0;
pub const CNT_DNAT_HAIRPIN: u32 = 1;
pub const CNT_REVNAT: u32 = 2;
pub const CNT_SOCK_DNAT: u32 = 3;
pub const CNT_BIND_REFUSED: u32 = 4;
pub const CNT_PASS_MALFORMED: u32 = 5;
pub const CNT_PASS_FRAGMENT: u32 = 6;
pub const CNT_CSUM_ERROR: u32 = 7;
pub const CNT_MAX: u32 = 16;

pub const NAMES: [&str; 8] = [
    "dnat_uplink",
    "dnat_hairpin",
    "revnat",
    "sock_dnat",
    "bind_refused",
    "pass_malformed",
    "pass_fragment",
    "csum_error",
];
