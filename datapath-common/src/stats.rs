//! Indexes of the per-CPU `TG_COUNTERS` array (values are `u64`, summed over CPUs by the agent).

pub const CNT_DNAT_UPLINK: u32 = 0;
pub const CNT_DNAT_HAIRPIN: u32 = 1;
pub const CNT_REVNAT: u32 = 2;
pub const CNT_SOCK_DNAT: u32 = 3;
pub const CNT_BIND_REFUSED: u32 = 4;
pub const CNT_PASS_MALFORMED: u32 = 5;
pub const CNT_PASS_FRAGMENT: u32 = 6;
/// A helper (checksum, store, redirect) failed; the packet was dropped.
pub const CNT_CSUM_ERROR: u32 = 7;
/// Not IPv4 (ARP, IPv6, ...): passed untouched.
pub const CNT_PASS_NOT_IPV4: u32 = 8;
/// A published port whose flow cannot be translated (e.g. self-hairpin from an IP with no
/// `TG_ENDPOINTS` entry, so no gateway to SNAT to): dropped.
pub const CNT_DROP_NO_MAPPING: u32 = 9;
pub const CNT_MAX: u32 = 16;

pub const NAMES: [&str; 10] = [
    "dnat_uplink",
    "dnat_hairpin",
    "revnat",
    "sock_dnat",
    "bind_refused",
    "pass_malformed",
    "pass_fragment",
    "csum_error",
    "pass_not_ipv4",
    "drop_no_mapping",
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_the_array() {
        assert!(super::NAMES.len() <= super::CNT_MAX as usize);
    }
}
