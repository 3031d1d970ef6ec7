//! Per-container (endpoint) entries, node-address flags, links and egress policy.

/// `TG_LOCAL_ADDRS` value bits: why an address belongs to the node.
pub const ADDR_UPLINK: u32 = 1;
pub const ADDR_GATEWAY: u32 = 2;
pub const ADDR_LOOPBACK: u32 = 4;

/// `Endpoint.flags`: the default stance for new outbound flows is deny
/// (`policy egress NAME deny`).
pub const EP_EGRESS_DENY: u32 = 1;
/// `Endpoint.flags`: containers of this endpoint's network reach each other (a user-created
/// network without `--no-icc`; the `default` network, `net` 0, follows `CFG_ICC` instead).
pub const EP_NET_ICC: u32 = 2;
/// `Endpoint.flags`: its network is `--internal`: no new flow leaves for anything but another
/// container or the node.
pub const EP_NET_INTERNAL: u32 = 4;

/// Value of `TG_ENDPOINTS` (keyed by the container's IPv4 address, network order) and of
/// `TG_EP_BY_IF` (keyed by the host veth's ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Agent-assigned container id (1..ENDPOINTS_MAX, reused after deletion); also the
    /// index of the container's `TG_EP_STATS` slot.
    pub id: u32,
    /// ifindex of the host-side veth in the node namespace.
    pub host_ifindex: u32,
    /// Gateway (host side of the /30), network byte order.
    pub gateway_ip: u32,
    /// `EP_*` bits.
    pub flags: u32,
    /// The container's address, network order (anti-spoofing compares the source to it).
    pub ip: u32,
    /// Its network's id (0: `default`). Containers of different networks are isolated from
    /// each other; links and published ports still cross.
    pub net: u32,
}

/// Value of `TG_EP_L2` (an array by endpoint id): the Ethernet addresses frames into a
/// container carry (its `eth0` as destination, the host veth as source), as the node's FIB and
/// neighbour table gave them at `checked_ns`. The inbound fast path reuses them for a second
/// before asking the FIB again, so it is never more than that behind the neighbour table.
/// Valid only while `host_ifindex` equals the endpoint's: a new container reusing the id starts
/// with a stale slot, which that check ignores.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpL2 {
    /// Coarse monotonic time of the FIB lookup, ns.
    pub checked_ns: u64,
    pub host_ifindex: u32,
    /// The container's `eth0`.
    pub mac: [u8; 6],
    /// The host side of the pair.
    pub host_mac: [u8; 6],
}

/// Key of `TG_LINKS`: `from` may open connections to `to` (by container id) even with ICC off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub from_id: u32,
    pub to_id: u32,
}

/// Data part of the `TG_POLICY` LPM key (aya's `Key<PolicyKey>`); the prefix length covers
/// `endpoint_id` fully (32 bits) plus the CIDR's prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    /// Container id, **big-endian** so the LPM's byte-wise prefix starts with it.
    pub endpoint_id_be: u32,
    /// Destination network, network order.
    pub ip: u32,
}

pub const POLICY_ALLOW: u8 = 1;
pub const POLICY_DENY: u8 = 2;

/// One rule of a chain. `port_lo == 0` means any port; `proto == 0` any protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyRule {
    /// Destination port range, **host order**, inclusive.
    pub port_lo: u16,
    pub port_hi: u16,
    pub proto: u8,
    /// `POLICY_ALLOW` or `POLICY_DENY`.
    pub action: u8,
    pub _pad: u16,
}

pub const POLICY_CHAIN_MAX: usize = 16;

/// Value of `TG_POLICY`: every rule that applies to destinations inside this prefix, already
/// ordered by the agent (longest prefix first, then explicit port before any port, covering
/// the enclosing prefixes' rules too). The datapath takes the first rule that matches the
/// packet's protocol and port; none matching means the endpoint's default stance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyChain {
    pub len: u32,
    pub _pad: u32,
    pub rules: [PolicyRule; POLICY_CHAIN_MAX],
}

/// Per-container counters: one `TG_EP_STATS` (per-CPU array) slot per endpoint id.
/// rx = delivered to the container, tx = sent by the container (host-side veth view).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Dropped packets by `DropReason` index.
    pub drops: [u64; crate::drop::DROP_REASONS],
}

crate::impl_pod!(
    Endpoint,
    EpL2,
    LinkKey,
    PolicyKey,
    PolicyRule,
    PolicyChain,
    EpStats
);

#[cfg(test)]
mod tests {
    use core::mem::size_of;
    #[test]
    fn layout() {
        assert_eq!(size_of::<super::Endpoint>(), 24);
        assert_eq!(size_of::<super::EpL2>(), 24);
        assert_eq!(size_of::<super::LinkKey>(), 8);
        assert_eq!(size_of::<super::PolicyKey>(), 8);
        assert_eq!(size_of::<super::PolicyRule>(), 8);
        assert_eq!(
            size_of::<super::PolicyChain>(),
            8 + 8 * super::POLICY_CHAIN_MAX
        );
        assert_eq!(
            size_of::<super::EpStats>(),
            32 + 8 * crate::drop::DROP_REASONS
        );
    }
}
