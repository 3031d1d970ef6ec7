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
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_cxchg: core::sync::atomic has no CAS on bpfel-unknown-none (ratelimit)"
)]

mod config;
mod conntrack;
mod hooks;
mod lookup;
mod maps;
mod mem;
mod nat;
mod packet;
mod policy;
mod ratelimit;
mod redirect;
mod verdict;

// The kernel only lends GPL-only helpers to GPL-compatible programs; "Dual MIT/GPL" is accepted
// by `license_is_gpl_compatible()` and matches the crate's permissive license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF has no unwinding; the verifier rejects any path that could reach here, so this loop
    // is never part of a loaded program.
    loop {}
}
