//! The overlay between nodes (cluster mode): a container's packets to a prefix another node
//! holds leave encapsulated in VXLAN through the node's one collect-metadata device, which
//! needs no FDB or neighbour state: the tunnel key set here (VNI, remote node) says it all.
//! The outer UDP source port is left to the kernel, which hashes the inner flow, so flows
//! spread over the underlay's queues and paths; the outer UDP checksum is kept (a zero one
//! defeats GRO on the receiver, shared/reference/cluster.md).

use aya_ebpf::{
    bindings::{bpf_tunnel_key, TC_ACT_REDIRECT},
    helpers::{bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use datapath_common::{
    config::Config,
    drop::DropReason,
    overlay::{Remote, TUNNEL_TTL},
    stats::CNT_OVERLAY_TX,
};

use crate::{lookup, mem, verdict};

/// The part of `bpf_tunnel_key` both helpers accept on every kernel with them: up to, not
/// including, the local address fields (IPv4 only here).
const KEY_SIZE: u32 = 28;

/// The remote node holding `daddr`'s prefix, when this node has an overlay.
#[inline(always)]
pub fn remote_for(cfg: &Config, daddr: u32) -> Option<Remote> {
    if cfg.overlay_ifindex == 0 {
        return None;
    }
    lookup::remote(daddr)
}

/// Encapsulates the packet for node `r` (its VNI, its underlay address) and sends it to the
/// VXLAN device's transmit.
#[inline(always)]
pub fn encap(ctx: &TcContext, r: &Remote, cfg: &Config) -> Result<i32, DropReason> {
    // All-zero is a valid bpf_tunnel_key (plain integers and unions of them).
    let mut key: bpf_tunnel_key = mem::zeroed();
    key.tunnel_id = r.vni;
    // The helper takes the remote address in host order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(r.node_ip);
    key.tunnel_ttl = TUNNEL_TTL;
    // SAFETY: plain helper call with a key block on our stack of the size passed; flags 0
    // keeps the outer UDP checksum.
    let rc = unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, KEY_SIZE, 0) };
    if rc != 0 {
        return Err(DropReason::RewriteFailed);
    }
    // SAFETY: plain helper call; flags 0 = egress of the VXLAN device.
    let action = unsafe { bpf_redirect(cfg.overlay_ifindex, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        verdict::count(CNT_OVERLAY_TX);
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(DropReason::RedirectFailed)
    }
}

/// The received packet's tunnel: (VNI, the sending node's underlay address, network order).
#[inline(always)]
pub fn tunnel_of(ctx: &TcContext) -> Result<(u32, u32), DropReason> {
    let mut key: bpf_tunnel_key = mem::zeroed();
    // SAFETY: plain helper call filling a key block on our stack of the size passed.
    let rc = unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, KEY_SIZE, 0) };
    if rc != 0 {
        return Err(DropReason::NoMapping);
    }
    // SAFETY: the helper wrote the IPv4 member.
    let remote = unsafe { key.__bindgen_anon_1.remote_ipv4 };
    Ok((key.tunnel_id, remote.to_be()))
}
