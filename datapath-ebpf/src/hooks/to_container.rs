//! `to_container`: TC (TCX) egress of each container's host-side veth, i.e. every packet the
//! node delivers to a container, whichever path it took (forwarded by the stack, redirected
//! by `from_container`/`from_uplink`, or sent by the node itself).
//!
//! ```text
//! node stack / redirect --> [tgXXXX egress] to_container: count rx, police ingress --> container
//! ```
//! Every packet the container receives pays from its ingress bucket (`ratelimit`); over the
//! limit it is dropped (`RateLimit`), otherwise it passes.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

use crate::{
    maps::TG_EP_BY_IF,
    ratelimit::{self, Way},
    verdict::{self, Dir},
};

#[classifier]
pub fn to_container(ctx: TcContext) -> i32 {
    // SAFETY: `skb` is the program's context pointer; `ifindex` is readable in TC programs
    // (at egress it is the veth the packet leaves through).
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if let Some(ep) = TG_EP_BY_IF.get_ptr(ifindex) {
        // SAFETY: pointer from a lookup in this run; one field copied out.
        let id = unsafe { (*ep).id };
        verdict::count_ep(id, Dir::Rx, ctx.len());
        if let Err(r) = ratelimit::police_skb(&ctx, id, Way::Ingress) {
            return verdict::tc_for(Err(r.into()), id);
        }
    }
    TC_ACT_OK
}
