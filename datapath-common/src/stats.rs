//! Indexes of the per-CPU `TG_COUNTERS` array (values are `u64`, summed over CPUs by the agent).

pub const CNT_DNAT_UPLINK: u32 = 0;
pub const CNT_DNAT_HAIRPIN: u32 = 1;
pub const CNT_REVNAT: u32 = 2;
pub const CNT_SOCK_DNAT: u32 = 3;
pub const CNT_BIND_REFUSED: u32 = 4;
pub const CNT_PASS_MALFORMED: u32 = 5;
pub const CNT_PASS_FRAGMENT: u32 = 6;
/// A checksum helper failed; the packet was dropped.
pub const CNT_CSUM_ERROR: u32 = 7;
/// Not IPv4 (ARP, IPv6, ...): passed untouched.
pub const CNT_PASS_NOT_IPV4: u32 = 8;
/// A published port whose flow cannot be translated (e.g. self-hairpin from an IP with no
/// `TG_ENDPOINTS` entry, so no gateway to SNAT to): dropped.
pub const CNT_DROP_NO_MAPPING: u32 = 9;
pub const CNT_DROP_POLICY: u32 = 10;
pub const CNT_DROP_ICC: u32 = 11;
pub const CNT_DROP_SPOOF: u32 = 12;
pub const CNT_DROP_RATELIMIT: u32 = 13;
pub const CNT_DROP_NAT_EXHAUSTED: u32 = 14;
/// Masquerade: new flows SNATed, and packets translated in each direction.
pub const CNT_SNAT_FLOWS: u32 = 15;
pub const CNT_SNAT: u32 = 16;
pub const CNT_REVSNAT: u32 = 17;
/// ICMP errors about a translated flow, translated back.
pub const CNT_ICMP_ERR_XLATED: u32 = 18;
/// Conntrack entries the datapath created (both halves count). With `CNT_CT_REMOVED`, which
/// only the agent writes (its GC and flushes), the agent derives LRU evictions:
/// created - removed - present.
pub const CNT_CT_CREATED: u32 = 19;
pub const CNT_CT_REMOVED: u32 = 20;
/// Fast path: packets handed straight into a container (`bpf_redirect_peer`), forwarded by
/// `bpf_redirect_neigh`, and translated packets left to the node stack (no route, TTL spent).
pub const CNT_REDIRECT_PEER: u32 = 21;
pub const CNT_REDIRECT_NEIGH: u32 = 22;
pub const CNT_REDIRECT_FALLBACK: u32 = 23;
/// Drops because a step failed (see `drop::DropReason`); checksum failures are `CNT_CSUM_ERROR`.
pub const CNT_DROP_REWRITE: u32 = 24;
pub const CNT_DROP_CONNTRACK: u32 = 25;
pub const CNT_DROP_REDIRECT: u32 = 26;
/// Packets encapsulated into the overlay (`from_container`) and received from it
/// (`from_overlay`, delivered to a container).
pub const CNT_OVERLAY_TX: u32 = 27;
pub const CNT_OVERLAY_RX: u32 = 28;
/// Dropped: a later fragment of a datagram whose first fragment was not seen (`frag_no_head`).
pub const CNT_DROP_FRAG: u32 = 29;
/// Packets to the outside with no live conntrack entry that could neither open nor pick up
/// a flow (`DropReason::CtInvalid`): dropped.
pub const CNT_DROP_CT_INVALID: u32 = 30;
pub const CNT_MAX: u32 = 32;

pub const NAMES: [&str; 31] = [
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
    "drop_policy",
    "drop_icc",
    "drop_spoof",
    "drop_ratelimit",
    "drop_nat_exhausted",
    "snat_flows",
    "snat",
    "revsnat",
    "icmp_err_xlated",
    "ct_created",
    "ct_removed",
    "redirect_peer",
    "redirect_neigh",
    "redirect_fallback",
    "drop_rewrite",
    "drop_conntrack",
    "drop_redirect",
    "overlay_tx",
    "overlay_rx",
    "drop_frag",
    "drop_ct_invalid",
];

#[cfg(test)]
mod tests {
    #[test]
    fn names_fit_the_array() {
        assert!(super::NAMES.len() <= super::CNT_MAX as usize);
    }
}
