//! The overlay between nodes (cluster mode): which prefixes of container addresses live on
//! which other node, and the VXLAN device the datapath encapsulates into.

/// Value of `TG_REMOTES` (an LPM trie keyed by container address prefixes, network order):
/// the node that holds the block, and the VNI of the block's network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remote {
    /// The node's underlay address, network order.
    pub node_ip: u32,
    /// The VNI of the block's network (its `Endpoint.net` on every node).
    pub vni: u32,
}

crate::impl_pod!(Remote);

/// The node's one collect-metadata VXLAN device.
pub const OVERLAY_IFNAME: &str = "tgvxlan";
/// IANA's VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const OVERHEAD: u32 = 50;
/// TTL of the outer header.
pub const TUNNEL_TTL: u8 = 64;

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<super::Remote>(), 8);
    }
}
