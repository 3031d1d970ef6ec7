//! The datapath as the node operations see it: the `Datapath` trait (maps, hooks, veths and
//! namespaces, in host terms), implemented by `kernel` (aya maps and programs, rtnetlink) and
//! by `memory` (plain collections, with failure injection, for tests without root).
//!
//! Below `kernel`: loading and pinning (`loader`), attaching (`attach`) and one typed wrapper
//! per map family (`maps`, where all byte-order conversion happens); pinned maps of an older
//! layout are carried over on upgrade (`migrate`).

pub mod attach;
pub mod kernel;
pub mod listeners;
pub mod loader;
pub mod maps;
pub mod memory;
pub mod migrate;
pub mod reserved;
pub mod types;

use std::{collections::BTreeSet, future::Future, net::Ipv4Addr, path::Path};

use anyhow::Result;
use datapath_common::{endpoint::PolicyChain, ratelimit::RateLimit};
use ipnet::Ipv4Net;

use crate::model::{Container, Proto};
pub use types::{
    CtTimeouts, CtView, EndpointInfo, EpTotals, NodeSetup, OverlaySetup, ProgramInfo, Published,
    Target,
};

/// Everything the node operations do to the kernel. Writes are idempotent (writing what is
/// there, or removing what is absent, succeeds), so undoing a half-applied step is safe.
pub trait Datapath: Send + 'static {
    // Node-wide.
    /// Loopback up, forwarding on, the config map written, the uplink hook attached.
    fn setup_node(&mut self, setup: &NodeSetup) -> impl Future<Output = Result<()>> + Send;
    /// The cgroup socket hooks (last: they act as soon as they are attached).
    fn attach_socket_hooks(&mut self) -> Result<()>;
    fn locals(&self) -> Result<Vec<(Ipv4Addr, u32)>>;
    fn add_local(&mut self, ip: Ipv4Addr, flags: u32) -> Result<()>;
    fn remove_local(&mut self, ip: Ipv4Addr) -> Result<()>;
    /// The MTU of link `ifindex`.
    fn link_mtu(&mut self, ifindex: u32) -> impl Future<Output = Result<u32>> + Send;

    // The overlay (cluster mode): container prefixes other nodes hold.
    fn set_remote(&mut self, prefix: Ipv4Net, node: Ipv4Addr, vni: u32) -> Result<()>;
    fn remove_remote(&mut self, prefix: Ipv4Net) -> Result<()>;
    fn remotes(&self) -> Result<Vec<(Ipv4Net, Ipv4Addr, u32)>>;

    // Container plumbing.
    fn netns_exists(&self, path: &Path) -> bool;
    /// The host ifindex of `ifname`, if it exists.
    fn link_index(&mut self, ifname: &str) -> impl Future<Output = Result<Option<u32>>> + Send;
    /// Creates the namespace when tollgate owns it and it is missing, the veth pair and both
    /// ends' addresses and routes; returns the host side's ifindex.
    fn plumb(&mut self, c: &Container) -> impl Future<Output = Result<u32>> + Send;
    /// The gateway address on an existing host veth (after a restart).
    fn add_gateway(&mut self, c: &Container) -> impl Future<Output = Result<()>> + Send;
    /// Checks, inside the namespace at `netns`, that the container's interface is there, up,
    /// with its address (CNI CHECK).
    fn check_inside(
        &mut self,
        netns: &Path,
        c: &Container,
    ) -> impl Future<Output = Result<()>> + Send;
    fn attach_container(&mut self, c: &Container) -> Result<()>;
    fn detach_container(&mut self, c: &Container) -> Result<()>;
    /// Removes the veth and the namespace when tollgate created it.
    fn unplumb(&mut self, c: &Container) -> impl Future<Output = Result<()>> + Send;

    // Endpoints.
    fn set_endpoint(&mut self, e: &EndpointInfo) -> Result<()>;
    fn remove_endpoint(&mut self, ip: Ipv4Addr, host_ifindex: u32) -> Result<()>;
    fn endpoint_ips(&self) -> Result<Vec<Ipv4Addr>>;
    fn endpoint_ifindexes(&self) -> Result<Vec<u32>>;
    fn remove_endpoint_ifindex(&mut self, ifindex: u32) -> Result<()>;

    // Port maps and the bind guards of their ports.
    fn set_portmap(&mut self, p: Published, t: Target) -> Result<()>;
    fn remove_portmap(&mut self, p: Published) -> Result<()>;
    fn portmap(&self, p: Published) -> Result<Option<Target>>;
    fn portmaps(&self) -> Result<Vec<Published>>;
    fn guards(&self) -> Result<Vec<(u16, u8)>>;
    fn remove_guard(&mut self, port: u16, proto: u8) -> Result<()>;
    /// Lets process `tgid` (the CNI runtime that published it) bind the guarded port.
    fn set_guard_owner(&mut self, port: u16, proto: u8, tgid: u32) -> Result<()>;
    /// Whether a node process holds `ip:port` (every address when None).
    fn port_held(&self, ip: Option<Ipv4Addr>, port: u16, proto: Proto) -> bool;
    /// Keeps exactly `ports` of Tollgate's out of the node's ephemeral port range (the user's
    /// own reserved ports stay: `reserved`).
    fn reserve_ports(&mut self, ports: &BTreeSet<u16>) -> Result<()>;

    // Policy and ICC links.
    fn set_chain(&mut self, id: u32, net: Ipv4Net, chain: &PolicyChain) -> Result<()>;
    fn remove_chain(&mut self, id: u32, net: Ipv4Net) -> Result<()>;
    fn chains(&self) -> Result<Vec<(u32, Ipv4Net)>>;
    fn set_link(&mut self, from: u32, to: u32) -> Result<()>;
    fn remove_link(&mut self, from: u32, to: u32) -> Result<()>;
    fn links(&self) -> Result<Vec<(u32, u32)>>;

    // Rate limits and counters.
    fn set_limit(&mut self, id: u32, r: RateLimit) -> Result<()>;
    fn reset_stats(&mut self, id: u32) -> Result<()>;
    fn endpoint_stats(&self, id: u32) -> Result<EpTotals>;
    fn counters(&self) -> Result<Vec<u64>>;
    fn add_ct_removed(&mut self, n: u64) -> Result<()>;

    // Conntrack.
    fn conntrack(&self) -> Result<Vec<CtView>>;
    fn remove_conntrack(&mut self, pred: &dyn Fn(&CtView) -> bool) -> Result<usize>;

    // What `status` shows.
    fn programs(&self) -> Vec<ProgramInfo>;
    /// Where the socket hooks are attached.
    fn cgroup(&self) -> String;
}

/// The eBPF object built by build.rs from datapath-ebpf, embedded so the binary is
/// self-contained.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.o"));

/// TC programs, by name in the object.
pub const PROG_FROM_UPLINK: &str = "from_uplink";
pub const PROG_FROM_CONTAINER: &str = "from_container";
/// `from_container`'s packets without a live flow, tail-called through `TG_PROGS` (never
/// attached).
pub const PROG_FROM_CONTAINER_NEW: &str = "from_container_new";
pub const PROG_TO_CONTAINER: &str = "to_container";
/// On the overlay's VXLAN device (cluster mode).
pub const PROG_FROM_OVERLAY: &str = "from_overlay";

/// cgroup `sock_addr` programs with their attach types.
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
