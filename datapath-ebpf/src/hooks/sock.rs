//! cgroup sock_addr programs, attached to the cgroup v2 root: connections the node itself makes
//! to a published port (`hostaddr:P` or `127.x:P`) are pointed at the container at connect /
//! sendmsg time, and the original address is shown back to the application at recvmsg /
//! getpeername. bind4 keeps node processes off published ports.
//!
//! The root cgroup sees sockets of every namespace, so each hook acts only when the socket's
//! netns is the node's (`TG_CONFIG[0].netns_cookie`) and the agent marked the maps ready.
//! Return values follow the kernel's contract: 1 allows the call, 0 refuses it (EPERM).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_get_current_pid_tgid, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use aya_log_ebpf::debug;
use datapath_common::{
    config::CFG_READY,
    portmap::{guard_owner, PortKey},
    proto,
    sock::{SockRevKey, SockRevValue},
    stats::{CNT_BIND_REFUSED, CNT_SOCK_DNAT},
};

use crate::{
    lookup,
    maps::{TG_CONFIG, TG_PORT_GUARD, TG_SOCK_RNAT},
    verdict,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    if node_netns(&ctx) && to_container(&ctx) {
        debug!(
            &ctx,
            "sock connect -> {:i}:{}",
            user_ip4(&ctx).to_ne_bytes(),
            u16::from_be(user_port(&ctx))
        );
    }
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    // Per datagram: no logging here.
    if node_netns(&ctx) {
        to_container(&ctx);
    }
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    if node_netns(&ctx) {
        restore(&ctx);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    if node_netns(&ctx) {
        restore(&ctx);
    }
    ALLOW
}

#[cgroup_sock_addr(bind4)]
pub fn sock_bind4(ctx: SockAddrContext) -> i32 {
    if node_netns(&ctx) && binds_published_port(&ctx) {
        verdict::count(CNT_BIND_REFUSED);
        return REFUSE;
    }
    ALLOW
}

/// Whether the socket lives in the node namespace and the agent has filled the maps.
#[inline(always)]
fn node_netns(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = TG_CONFIG.get(0) else {
        return false;
    };
    if cfg.flags & CFG_READY == 0 {
        return false;
    }
    // SAFETY: sock_addr programs may call bpf_get_netns_cookie with their context.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    cookie == cfg.netns_cookie
}

/// If the destination is a local address and a published port of the socket's protocol,
/// points it at the container and records how to show the original back. Returns whether it
/// rewrote.
#[inline(always)]
fn to_container(ctx: &SockAddrContext) -> bool {
    let Some(proto) = l4_proto(ctx) else {
        return false;
    };
    let ip = user_ip4(ctx);
    let port = user_port(ctx);
    // The exact-host-IP lookup comes first, so a non-local address (an unrelated remote host)
    // can only match a map explicitly published on it; `published` checks locality for the rest.
    let Some(pm) = lookup::published(ip, port, proto) else {
        return false;
    };
    let key = SockRevKey {
        cookie: socket_cookie(ctx),
        ip: pm.container_ip,
        port: pm.container_port,
        _pad: 0,
    };
    let orig = SockRevValue { ip, port, _pad: 0 };
    // Failing to record it only makes recvmsg/getpeername show the container's address; the
    // connection itself still works, so the rewrite goes ahead.
    let _ = TG_SOCK_RNAT.insert(key, orig, u64::from(BPF_ANY));
    set_user_ip4(ctx, pm.container_ip);
    set_user_port(ctx, pm.container_port);
    verdict::count(CNT_SOCK_DNAT);
    true
}

/// Shows the application the address it asked for instead of the container's.
#[inline(always)]
fn restore(ctx: &SockAddrContext) {
    let key = SockRevKey {
        cookie: socket_cookie(ctx),
        ip: user_ip4(ctx),
        port: user_port(ctx),
        _pad: 0,
    };
    if let Some(orig) = TG_SOCK_RNAT.get_ptr(key) {
        // SAFETY: pointer from a lookup in this run; copied out at once.
        let orig = unsafe { *orig };
        set_user_ip4(ctx, orig.ip);
        set_user_port(ctx, orig.port);
    }
}

/// Whether this bind would take a published (port, proto) on an address where it is
/// published: the wildcard address or any local one (design.md "Port-map paths" 5). The
/// CNI runtime that published the port is let through: its own placeholder listener is how
/// podman keeps other processes off the port.
#[inline(always)]
fn binds_published_port(ctx: &SockAddrContext) -> bool {
    let Some(proto) = l4_proto(ctx) else {
        return false;
    };
    let key = PortKey {
        host_ip: 0,
        port: user_port(ctx),
        proto,
        _pad: 0,
    };
    let Some(owner) = TG_PORT_GUARD.get_ptr(key) else {
        return false;
    };
    // SAFETY: pointer from a lookup in this run.
    if let Some(owner) = guard_owner(unsafe { *owner }) {
        // The upper half of pid_tgid is the process id (tgid) in the initial pid namespace.
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if tgid == owner {
            return false;
        }
    }
    let ip = user_ip4(ctx);
    ip == 0 || lookup::is_local(ip)
}

/// TCP or UDP, else `None` (raw and other sockets are left alone).
#[inline(always)]
fn l4_proto(ctx: &SockAddrContext) -> Option<u8> {
    // SAFETY: `protocol` is readable by every sock_addr attach type. Context fields are read
    // with volatile loads so the compiler cannot merge or widen them, which the verifier
    // rejects for context accesses.
    let p = unsafe { read_volatile(addr_of!((*ctx.sock_addr).protocol)) };
    match p {
        p if p == u32::from(proto::TCP) => Some(proto::TCP),
        p if p == u32::from(proto::UDP) => Some(proto::UDP),
        _ => None,
    }
}

/// `user_ip4`, network order.
#[inline(always)]
fn user_ip4(ctx: &SockAddrContext) -> u32 {
    // SAFETY: see `l4_proto`.
    unsafe { read_volatile(addr_of!((*ctx.sock_addr).user_ip4)) }
}

/// `user_port`: a 32-bit field whose low 16 bits hold the port in network order.
#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: see `l4_proto`.
    unsafe { read_volatile(addr_of!((*ctx.sock_addr).user_port)) as u16 }
}

#[inline(always)]
fn set_user_ip4(ctx: &SockAddrContext, ip: u32) {
    // SAFETY: `user_ip4` is writable in connect4/sendmsg4/recvmsg4/getpeername4.
    unsafe { write_volatile(addr_of_mut!((*ctx.sock_addr).user_ip4), ip) }
}

#[inline(always)]
fn set_user_port(ctx: &SockAddrContext, port: u16) {
    // SAFETY: as `set_user_ip4`.
    unsafe { write_volatile(addr_of_mut!((*ctx.sock_addr).user_port), u32::from(port)) }
}

#[inline(always)]
fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: sock_addr programs may call bpf_get_socket_cookie with their context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}
