//! The eBPF side as the agent sees it: loading and pinning (`loader`), attaching (`attach`)
//! and one typed wrapper per map family (`maps`); pinned maps of an older layout are carried
//! over on upgrade (`migrate`).

pub mod attach;
pub mod loader;
pub mod maps;
pub mod migrate;

/// The eBPF object built by build.rs from datapath-ebpf, embedded so the binary is
/// self-contained.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));

/// TC programs, by name in the object.
pub const PROG_FROM_UPLINK: &str = "from_uplink";
pub const PROG_FROM_CONTAINER: &str = "from_container";
pub const PROG_TO_CONTAINER: &str = "to_container";

/// cgroup sock_addr programs with their attach types.
pub const SOCK_PROGS: &[(&str, aya::programs::CgroupSockAddrAttachType)] = {
    use aya::programs::CgroupSockAddrAttachType as T;
    &[
        ("sock_connect4", T::Connect4),
        ("sock_sendmsg4", T::UDPSendMsg4),
        ("sock_recvmsg4", T::UDPRecvMsg4),
        ("sock_getpeername4", T::GetPeerName4),
        ("sock_bind4", T::Bind4),
    ]
};
