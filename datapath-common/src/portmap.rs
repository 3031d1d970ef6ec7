//! Port map (DNAT) entries.

/// Key of `TG_PORTMAP` and `TG_PORT_GUARD`. `host_ip == 0` means "every local address".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// Host IPv4 address, network byte order; 0 = any local address.
    pub host_ip: u32,
    /// Host port, network byte order.
    pub port: u16,
    /// `proto::TCP` or `proto::UDP`.
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `TG_PORTMAP`: where the published port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortValue {
    /// Container IPv4 address, network byte order.
    pub container_ip: u32,
    /// Container port, network byte order.
    pub container_port: u16,
    pub _pad: u16,
    /// ifindex of the container's host-side veth in the node namespace.
    pub host_ifindex: u32,
    /// Agent-assigned container id (stats, conntrack ownership).
    pub endpoint_id: u32,
}

/// Value of `TG_PORT_GUARD` when no process may bind the port.
pub const GUARD_NOBODY: u32 = 1;

/// Whether a `TG_PORT_GUARD` value names a process (its tgid) allowed to bind the port: the
/// CNI runtime that published it, for its own placeholder reservation (podman's conmon).
/// 0 and 1 name nobody (1 is init, never a runtime).
pub const fn guard_owner(value: u32) -> Option<u32> {
    if value > GUARD_NOBODY {
        Some(value)
    } else {
        None
    }
}

crate::impl_pod!(PortKey, PortValue);

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<super::PortKey>(), 8);
        assert_eq!(core::mem::size_of::<super::PortValue>(), 16);
    }
}
