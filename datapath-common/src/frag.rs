//! IPv4 fragments: only a datagram's first fragment carries its L4 header, so the ports it
//! had are remembered per (source, destination, IP id, protocol), as Cilium's fragment map
//! does, and the datagram's later fragments are translated with them.

/// Key of `TG_FRAGS`: the fields that identify the fragments of one datagram (RFC 791), as in
/// the packet (network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `TG_FRAGS`: the first fragment's "ports" as `Packet` holds them (TCP/UDP ports,
/// or an ICMP echo identifier on its sender's side) and its ICMP type.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
    pub _pad: [u8; 3],
}

crate::impl_pod!(FragKey, FragPorts);

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<super::FragKey>(), 12);
        assert_eq!(core::mem::size_of::<super::FragPorts>(), 8);
    }
}
