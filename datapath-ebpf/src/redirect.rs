//! Sending a rewritten packet somewhere other than up the node's stack.

use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::bpf_redirect, programs::TcContext};
use datapath_common::drop::DropReason;

/// Sends the packet back out of the interface it arrived on (self-hairpin): swaps the Ethernet
/// addresses so the frame goes from the host veth to the container, then redirects to the
/// egress of `ifindex`. Going through the node stack instead would drop it: its source is then
/// one of the node's own addresses (the gateway), which the stack treats as a martian.
#[inline(always)]
pub fn back_to_container(ctx: &TcContext, ifindex: u32) -> Result<i32, DropReason> {
    let dst: [u8; 6] = ctx.load(0).map_err(|_| DropReason::Internal)?;
    let src: [u8; 6] = ctx.load(6).map_err(|_| DropReason::Internal)?;
    ctx.store(0, &src, 0).map_err(|_| DropReason::Internal)?;
    ctx.store(6, &dst, 0).map_err(|_| DropReason::Internal)?;
    // SAFETY: plain helper call; flags 0 = egress.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    if action == i64::from(TC_ACT_REDIRECT) {
        Ok(TC_ACT_REDIRECT)
    } else {
        Err(DropReason::Internal)
    }
}
