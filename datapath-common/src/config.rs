//! Daemon-wide settings the programs read from the single-entry `TG_CONFIG` array.

/// `Config.flags` bits.
/// Set once the agent filled every map (the socket hooks act only then).
pub const CFG_READY: u32 = 1;
/// Inter-container communication by IP is allowed (`daemon --icc`).
pub const CFG_ICC: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Cookie of the node's network namespace. The cgroup socket hooks are attached to the
    /// machine-wide cgroup v2 root, so they act only on sockets whose netns cookie matches.
    pub netns_cookie: u64,
    /// ifindex of the uplink in the node namespace (masquerade applies to traffic that the
    /// FIB sends out of it).
    pub uplink_ifindex: u32,
    /// `CFG_*` bits.
    pub flags: u32,
    /// Masquerade source address, network order; 0 disables masquerade.
    pub snat_ip: u32,
    /// Container pool (network address and netmask), network order: traffic to the pool is
    /// never masqueraded.
    pub pool_net: u32,
    pub pool_mask: u32,
    /// Source ports (and ICMP echo ids) for masquerade, **host order**, inclusive.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Conntrack idle timeouts in seconds: an entry idle for longer is treated as absent by
    /// the datapath and removed by the agent's GC.
    pub ct_tcp_syn_s: u32,
    pub ct_tcp_est_s: u32,
    /// TCP after FIN or RST was seen (`CT_CLOSING`).
    pub ct_tcp_close_s: u32,
    pub ct_udp_s: u32,
    pub ct_icmp_s: u32,
    /// ifindex of the overlay's VXLAN device (cluster mode), 0 without one: traffic to a
    /// `TG_REMOTES` prefix is encapsulated and redirected to it.
    pub overlay_ifindex: u32,
}

pub const NAT_PORT_MIN_DEFAULT: u16 = 20_000;
pub const NAT_PORT_MAX_DEFAULT: u16 = 32_767;
pub const CT_TCP_SYN_S_DEFAULT: u32 = 60;
pub const CT_TCP_EST_S_DEFAULT: u32 = 7_200;
pub const CT_TCP_CLOSE_S_DEFAULT: u32 = 10;
pub const CT_UDP_S_DEFAULT: u32 = 60;
pub const CT_ICMP_S_DEFAULT: u32 = 30;

crate::impl_pod!(Config);

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<super::Config>(), 56);
        assert_eq!(core::mem::align_of::<super::Config>(), 8);
    }
}
