//! Bounds-checked parse of Ethernet / IPv4 / TCP|UDP. Headers are copied out with
//! `bpf_skb_load_bytes` (`ctx.load`), which checks bounds itself and also reaches paged
//! (non-linear) data, so the verifier never has to track variable packet offsets here.
//! Anything that does not parse is a `Skip`: the hook passes it untouched.

use aya_ebpf::programs::TcContext;
use datapath_common::{conntrack::CtKey, proto};

use crate::verdict::Skip;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
/// Offsets of the IPv4 fields we rewrite, from the start of the frame.
pub const IP_TTL_OFF: usize = ETH_HLEN + 8;
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP_SADDR_OFF: usize = ETH_HLEN + 12;
pub const IP_DADDR_OFF: usize = ETH_HLEN + 16;
/// Fragment-offset bits of `frag_off` (host order); the top three bits are flags.
const IP_OFFSET_MASK: u16 = 0x1fff;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
struct TcpHdr {
    source: u16,
    dest: u16,
    seq: u32,
    ack_seq: u32,
    doff_res: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg_ptr: u16,
}

#[repr(C)]
struct UdpHdr {
    source: u16,
    dest: u16,
    len: u16,
    check: u16,
}

/// The parsed tuple of a TCP/UDP over IPv4 packet and where its L4 header sits. Addresses and
/// ports are network byte order, exactly as in the packet; the NAT code keeps them current.
pub struct Packet {
    pub l4_off: usize,
    pub proto: u8,
    pub ttl: u8,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
}

impl Packet {
    #[inline(always)]
    pub fn parse(ctx: &TcContext) -> Result<Self, Skip> {
        let ethertype: u16 = ctx.load(12).map_err(|_| Skip::Malformed)?;
        if u16::from_be(ethertype) != ETH_P_IP {
            return Err(Skip::NotIpv4);
        }
        let ip: Ipv4Hdr = ctx.load(ETH_HLEN).map_err(|_| Skip::Malformed)?;
        let ihl_bytes = usize::from(ip.version_ihl & 0x0f) * 4;
        let tot_len = usize::from(u16::from_be(ip.tot_len));
        if ip.version_ihl >> 4 != 4 || ihl_bytes < 20 || tot_len < ihl_bytes {
            return Err(Skip::Malformed);
        }
        if u16::from_be(ip.frag_off) & IP_OFFSET_MASK != 0 {
            return Err(Skip::Fragment);
        }
        // IHL-aware: options, if any, are skipped, never parsed.
        let l4_off = ETH_HLEN + ihl_bytes;
        // The L4 header must lie inside the IP datagram, not in Ethernet padding after it.
        let (sport, dport, tcp_flags) = match ip.protocol {
            proto::TCP => {
                if tot_len < ihl_bytes + size_of::<TcpHdr>() {
                    return Err(Skip::Malformed);
                }
                let tcp: TcpHdr = ctx.load(l4_off).map_err(|_| Skip::Malformed)?;
                if tcp.doff_res >> 4 < 5 {
                    return Err(Skip::Malformed);
                }
                (tcp.source, tcp.dest, tcp.flags)
            }
            proto::UDP => {
                if tot_len < ihl_bytes + size_of::<UdpHdr>() {
                    return Err(Skip::Malformed);
                }
                let udp: UdpHdr = ctx.load(l4_off).map_err(|_| Skip::Malformed)?;
                (udp.source, udp.dest, 0)
            }
            _ => return Err(Skip::OtherProto),
        };
        Ok(Self {
            l4_off,
            proto: ip.protocol,
            ttl: ip.ttl,
            tcp_flags,
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport,
            dport,
        })
    }

    /// The conntrack key of the packet as it is now.
    #[inline(always)]
    pub fn ct_key(&self) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.proto == proto::UDP {
            self.l4_off + 6
        } else {
            self.l4_off + 16
        }
    }

    #[inline(always)]
    pub fn is_udp(&self) -> bool {
        self.proto == proto::UDP
    }

    /// A TCP SYN without ACK: the only packet that may open a new TCP flow where a reply to an
    /// unrelated connection could otherwise be mistaken for one.
    #[inline(always)]
    pub fn opens_flow(&self) -> bool {
        self.proto != proto::TCP || self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A TCP FIN or RST: the flow is ending.
    #[inline(always)]
    pub fn closes_flow(&self) -> bool {
        self.proto == proto::TCP && self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }
}
