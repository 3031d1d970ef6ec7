//! Socket-level reverse NAT for connections the node itself makes to a published port
//! (connect4/sendmsg4 rewrite the destination; recvmsg4/getpeername4 restore it).

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    /// Socket cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    /// Container address/port the socket was redirected to, network order.
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevValue {
    /// The address/port the application asked for, network order.
    pub ip: u32,
    pub port: u16,
    pub _pad: u16,
}

crate::impl_pod!(SockRevKey, SockRevValue);

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<super::SockRevKey>(), 16);
        assert_eq!(core::mem::size_of::<super::SockRevValue>(), 8);
    }
}
