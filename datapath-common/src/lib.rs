//! Types shared by the eBPF programs and the agent: map keys and values, drop reasons and the
//! checksum arithmetic. Everything here is `#[repr(C)]` with explicit padding so that the kernel
//! and user side agree byte for byte; the `user` feature adds the `Pod` impls aya and bytemuck
//! need on the host.
//!
//! Byte order: addresses and ports are stored in **network byte order** (as they sit in the
//! packet) so the datapath compares them without swapping. The agent converts in exactly one
//! place per map family (`agent/src/datapath/maps/`).
#![no_std]

pub mod config;
pub mod conntrack;
pub mod csum;
pub mod drop;
pub mod endpoint;
pub mod frag;
pub mod kfunc;
pub mod maps;
pub mod overlay;
pub mod portmap;
pub mod ratelimit;
pub mod sock;
pub mod stats;

/// IP protocol numbers used as `proto` fields.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Implements the Pod traits for the user side (aya's and bytemuck's).
#[macro_export]
#[doc(hidden)]
macro_rules! impl_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: every type listed is #[repr(C)], made only of integers and has no
            // implicit padding (checked by the size tests in each module).
            unsafe impl aya::Pod for $t {}
            #[cfg(feature = "user")]
            // SAFETY: as above.
            unsafe impl bytemuck::Zeroable for $t {}
            #[cfg(feature = "user")]
            // SAFETY: as above.
            unsafe impl bytemuck::Pod for $t {}
        )*
    };
}
