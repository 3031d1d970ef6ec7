//! Tollgate's eBPF datapath: one object holding every program the agent attaches.
//!
//! A packet's journey reads as a path through the modules:
//! - from outside: `hooks::from_uplink` -> `packet` -> `nat::icmp` (errors about translated
//!   flows) -> `conntrack` -> `nat::snat::rev_snat` (masquerade replies) | `nat::dnat` (port
//!   maps) -> `verdict`;
//! - from a container: `hooks::from_container` -> `ratelimit` (egress) -> anti-spoofing -> `packet` -> `conntrack` ->
//!   new flows: `policy` -> `nat::snat::masquerade` | `nat::dnat` (hairpin) | plain tracking;
//!   then `nat` (`rev_*` for replies) -> `redirect` -> `verdict`;
//! - to a container: `hooks::to_container` (accounting, `ratelimit` ingress);
//! - from node processes: `hooks::sock` rewrites socket addresses instead of packets.
//!
//! Nothing here keeps global variables: the agent reuses pinned programs across restarts, so
//! every setting lives in the `TG_CONFIG` map.
//!
//! The crate is only meant for `bpfel-unknown-none` (agent/build.rs builds it). On any other
//! target it is an empty program, so that host-wide commands (`cargo clippy --workspace`,
//! `cargo test --workspace`) pass over it instead of failing on `no_std` and nightly features.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "atomic_cxchg: core::sync::atomic has no CAS on bpfel-unknown-none (ratelimit)"
    )
)]

#[cfg(target_arch = "bpf")]
mod config;
#[cfg(target_arch = "bpf")]
mod conntrack;
#[cfg(target_arch = "bpf")]
mod hooks;
#[cfg(target_arch = "bpf")]
mod lookup;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod mem;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod overlay;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod ratelimit;
#[cfg(target_arch = "bpf")]
mod redirect;
#[cfg(target_arch = "bpf")]
mod skb;
#[cfg(target_arch = "bpf")]
mod verdict;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
// The kernel only lends GPL-only helpers to GPL-compatible programs; "Dual MIT/GPL" is accepted
// by `license_is_gpl_compatible()` and matches the crate's permissive license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF has no unwinding; the verifier rejects any path that could reach here, so this loop
    // is never part of a loaded program.
    loop {}
}
