//! The daemon's settings (`TG_CONFIG[0]`), read in place by the TC hooks.

use datapath_common::config::{
    Config, CT_ICMP_S_DEFAULT, CT_TCP_CLOSE_S_DEFAULT, CT_TCP_EST_S_DEFAULT, CT_TCP_SYN_S_DEFAULT,
    CT_UDP_S_DEFAULT, NAT_PORT_MAX_DEFAULT, NAT_PORT_MIN_DEFAULT,
};

use crate::{maps::TG_CONFIG, verdict::Skip};

/// The config, read in place (no per-packet copy). `TG_CONFIG` is a one-slot array, so the
/// lookup only fails if the map itself is missing: then the hook passes the packet untouched.
#[inline(always)]
pub fn get() -> Result<&'static Config, Skip> {
    // SAFETY: an array element lives as long as the map; the agent rewrites it whole, and a
    // field read during that write sees the old or the new value of that field.
    TG_CONFIG
        .get_ptr(0)
        .map(|c| unsafe { &*c })
        .ok_or(Skip::NotOurs)
}

/// A zero timeout or port bound means "not set": the shared default applies.
#[inline(always)]
const fn or(v: u32, default: u32) -> u32 {
    if v == 0 {
        default
    } else {
        v
    }
}

#[inline(always)]
pub fn tcp_syn_s(c: &Config) -> u32 {
    or(c.ct_tcp_syn_s, CT_TCP_SYN_S_DEFAULT)
}

#[inline(always)]
pub fn tcp_est_s(c: &Config) -> u32 {
    or(c.ct_tcp_est_s, CT_TCP_EST_S_DEFAULT)
}

#[inline(always)]
pub fn tcp_close_s(c: &Config) -> u32 {
    or(c.ct_tcp_close_s, CT_TCP_CLOSE_S_DEFAULT)
}

#[inline(always)]
pub fn udp_s(c: &Config) -> u32 {
    or(c.ct_udp_s, CT_UDP_S_DEFAULT)
}

#[inline(always)]
pub fn icmp_s(c: &Config) -> u32 {
    or(c.ct_icmp_s, CT_ICMP_S_DEFAULT)
}

/// Masquerade port range as (first port, number of ports), host order; the defaults when the
/// configured range is unset or inverted.
#[inline(always)]
pub fn nat_ports(c: &Config) -> (u32, u32) {
    let (lo, hi) = if c.nat_port_min == 0 || c.nat_port_max < c.nat_port_min {
        (NAT_PORT_MIN_DEFAULT, NAT_PORT_MAX_DEFAULT)
    } else {
        (c.nat_port_min, c.nat_port_max)
    };
    (u32::from(lo), u32::from(hi - lo) + 1)
}
