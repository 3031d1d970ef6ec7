//! What the datapath holds, in host terms (addresses as `Ipv4Addr`, ports in host order):
//! the `Datapath` trait speaks these, and only the aya implementation converts byte order.

use std::net::Ipv4Addr;

use datapath_common::drop::DROP_REASONS;

/// A container as the datapath sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub id: u32,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub host_ifindex: u32,
    /// `EP_*` bits (egress default stance, its network's ICC and internal flags).
    pub flags: u32,
    /// Its network's id (0: `default`).
    pub net: u32,
}

/// A port-map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Published {
    pub host_ip: Option<Ipv4Addr>,
    pub port: u16,
    pub proto: u8,
}

/// Where a published port leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
    pub host_ifindex: u32,
    pub endpoint_id: u32,
}

/// One conntrack entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtView {
    pub proto: u8,
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub nat_src: Option<(Ipv4Addr, u16)>,
    pub nat_dst: Option<(Ipv4Addr, u16)>,
    pub flags: u32,
    pub endpoint_id: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// One container's counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpTotals {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: [u64; DROP_REASONS],
}

/// A loaded program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramInfo {
    pub name: String,
    pub kind: &'static str,
    pub id: u32,
}

/// Node-wide settings the datapath is started with.
#[derive(Clone, Debug)]
pub struct NodeSetup {
    pub uplink: String,
    pub uplink_ifindex: u32,
    /// Masquerade source address (none: no masquerade until the uplink has an address).
    pub snat_ip: Option<Ipv4Addr>,
    pub icc: bool,
    pub pool: ipnet::Ipv4Net,
    /// Masquerade source ports (and ICMP echo ids).
    pub nat_ports: std::ops::RangeInclusive<u16>,
    pub ct: CtTimeouts,
    /// Cluster mode: the overlay's VXLAN device is made (or kept) and hooked, and the
    /// config points at it. None: no device, and any left from an earlier run is removed.
    pub overlay: Option<OverlaySetup>,
}

/// The overlay's VXLAN device.
#[derive(Clone, Copy, Debug)]
pub struct OverlaySetup {
    /// Its MTU: the uplink's minus the encapsulation overhead.
    pub mtu: u32,
}

/// Conntrack idle timeouts, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct CtTimeouts {
    pub tcp_syn: u32,
    pub tcp_est: u32,
    pub tcp_close: u32,
    pub udp: u32,
    pub icmp: u32,
}

impl CtTimeouts {
    /// Idle timeout of an entry in ns, by the datapath's own rule (`Timeout::of`).
    pub fn of(&self, v: &CtView) -> u64 {
        use datapath_common::conntrack::Timeout;
        let s = match Timeout::of(v.flags, v.proto) {
            Timeout::TcpClose => self.tcp_close,
            Timeout::TcpSyn => self.tcp_syn,
            Timeout::TcpEstablished => self.tcp_est,
            Timeout::Udp => self.udp,
            Timeout::Icmp => self.icmp,
        };
        u64::from(s) * 1_000_000_000
    }
}
