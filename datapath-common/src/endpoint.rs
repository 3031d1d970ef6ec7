//! Per-container (endpoint) entries and node-address flags.

/// `TG_LOCAL_ADDRS` value bits: why an address belongs to the node.
pub const ADDR_UPLINK: u32 = 1;
pub const ADDR_GATEWAY: u32 = 2;
pub const ADDR_LOOPBACK: u32 = 4;

/// Value of `TG_ENDPOINTS`, keyed by the container's IPv4 address (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// Agent-assigned container id.
    pub id: u32,
    /// ifindex of the host-side veth in the node namespace.
    pub host_ifindex: u32,
    /// Gateway (host side of the /30), network byte order.
    pub gateway_ip: u32,
    /// Reserved for policy/limit flags of later stages.
    pub flags: u32,
}

crate::impl_pod!(Endpoint);

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<super::Endpoint>(), 16);
    }
}
