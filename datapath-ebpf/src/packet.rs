//! Bounds-checked parse of Ethernet / IPv4 / TCP|UDP|ICMP. Headers are copied out with
//! `bpf_skb_load_bytes` (`ctx.load`), which checks bounds itself and also reaches paged
//! (non-linear) data, so the verifier never has to track variable packet offsets here.
//! Anything that does not parse is a `Skip`: the hook passes it untouched.

use aya_ebpf::programs::TcContext;
use datapath_common::{
    drop::DropReason,
    frag::{FragKey, FragPorts},
    proto,
};

use crate::{maps::TG_FRAGS, verdict::Skip};

pub const ETH_HLEN: usize = 14;
/// Ethernet: destination MAC, source MAC, EtherType.
pub const ETH_DST_OFF: usize = 0;
pub const ETH_SRC_OFF: usize = 6;
const ETH_PROTO_OFF: usize = 12;
/// An IPv4 header without options.
const IPV4_HLEN: usize = 20;
const ETH_P_IP: u16 = 0x0800;
/// Offsets of the IPv4 fields we rewrite, from the start of the frame.
pub const IP_TTL_OFF: usize = ETH_HLEN + 8;
pub const IP_CSUM_OFF: usize = ETH_HLEN + IPV4_CSUM_OFF;
pub const IP_SADDR_OFF: usize = ETH_HLEN + 12;
pub const IP_DADDR_OFF: usize = ETH_HLEN + 16;
/// IPv4 header checksum, from the start of an IPv4 header (a quoted one in an ICMP error).
pub const IPV4_CSUM_OFF: usize = 10;
/// L4 fields, from the start of the L4 header: ports (TCP, UDP), the ICMP echo identifier,
/// TCP data offset and flags, checksums.
pub const L4_SPORT_OFF: usize = 0;
pub const L4_DPORT_OFF: usize = 2;
pub const ICMP_ID_OFF: usize = 4;
const TCP_DOFF_OFF: usize = 12;
const TCP_FLAGS_OFF: usize = 13;
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;
pub const ICMP_CSUM_OFF: usize = 2;
/// Fragment-offset bits of `frag_off` (host order); the top three bits are flags.
const IP_OFFSET_MASK: u16 = 0x1fff;
/// More-fragments flag of `frag_off` (host order).
const IP_MF: u16 = 0x2000;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROB: u8 = 12;
/// Length of the ICMP header (type, code, checksum and 4 bytes of rest-of-header).
pub const ICMP_HLEN: usize = 8;

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
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
struct IcmpHdr {
    type_: u8,
    code: u8,
    check: u16,
    id: u16,
    seq: u16,
}

#[repr(C)]
struct UdpHdr {
    source: u16,
    dest: u16,
    len: u16,
    check: u16,
}

/// The parsed tuple of a TCP/UDP/ICMP over IPv4 packet and where its L4 header sits. Addresses
/// and ports are network byte order, exactly as in the packet; the NAT code keeps them current.
/// ICMP echo carries its identifier in the "port" of the end that sent the request: a request
/// has `sport = id, dport = 0`, a reply `sport = 0, dport = id` (see
/// `datapath_common::conntrack`), so a flow's two directions key like TCP/UDP and a ping each
/// way with the same identifier are two flows. ICMP errors (destination unreachable, time
/// exceeded, parameter problem) have both ports 0 and are translated by `nat::icmp`, never
/// looked up as a flow of their own.
pub struct Packet {
    pub l4_off: usize,
    pub proto: u8,
    pub ttl: u8,
    /// TCP flags byte (0 for UDP and ICMP).
    pub tcp_flags: u8,
    /// ICMP type (0 for TCP and UDP, where it is never read).
    pub icmp_type: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// A later fragment of a datagram: no L4 header here, the ports are the first
    /// fragment's (from `TG_FRAGS`), and only the IP header is rewritten.
    pub later_fragment: bool,
}

/// Remembers a first fragment's ports for the datagram's later fragments (module `frag`
/// of datapath-common). A failed insert only means the later fragments are dropped.
#[inline(always)]
fn remember_fragment(ip: &Ipv4Hdr, sport: u16, dport: u16, icmp_type: u8) {
    let key = FragKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        id: ip.id,
        proto: ip.protocol,
        _pad: 0,
    };
    let ports = FragPorts {
        sport,
        dport,
        icmp_type,
        _pad: [0; 3],
    };
    let _ = TG_FRAGS.insert(key, ports, 0);
}

/// A later fragment's first-fragment ports, if that was seen.
#[inline(always)]
fn fragment_ports(ip: &Ipv4Hdr) -> Option<FragPorts> {
    let key = FragKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        id: ip.id,
        proto: ip.protocol,
        _pad: 0,
    };
    // SAFETY: pointer from a lookup in this run; copied out at once.
    TG_FRAGS.get_ptr(key).map(|p| unsafe { *p })
}

impl Packet {
    /// Parses the frame: straight from the linear packet data when the headers are there
    /// (the common case: no IP options, headers not paged), else through `bpf_skb_load_bytes`.
    #[inline(always)]
    pub fn parse(ctx: &TcContext) -> Result<Self, Skip> {
        match Self::parse_linear(ctx) {
            Some(p) => Ok(p),
            None => Self::parse_loaded(ctx),
        }
    }

    /// The fast parse: an IPv4 header without options and a TCP/UDP/ICMP echo header, all in
    /// the linear data. `None` means "not that simple case", never "malformed": the caller then
    /// runs the full parse, which decides.
    #[inline(always)]
    fn parse_linear(ctx: &TcContext) -> Option<Self> {
        let (data, end) = (ctx.data(), ctx.data_end());
        let l4 = data + ETH_HLEN + IPV4_HLEN;
        // The longest header handled here (TCP) must fit; shorter UDP/ICMP frames take the
        // full parse.
        if l4 + size_of::<TcpHdr>() > end {
            return None;
        }
        // SAFETY: every byte read below lies before `l4 + 20 <= end` (checked above).
        let (ethertype, ip) = unsafe {
            (
                core::ptr::read_unaligned((data + ETH_PROTO_OFF) as *const u16),
                core::ptr::read_unaligned((data + ETH_HLEN) as *const Ipv4Hdr),
            )
        };
        let tot_len = usize::from(u16::from_be(ip.tot_len));
        if u16::from_be(ethertype) != ETH_P_IP
            || ip.version_ihl != 0x45
            || u16::from_be(ip.frag_off) & IP_OFFSET_MASK != 0
            || tot_len < IPV4_HLEN + size_of::<TcpHdr>()
        {
            return None;
        }
        // SAFETY: as above.
        let (sport, dport, b12, b13) = unsafe {
            (
                core::ptr::read_unaligned((l4 + L4_SPORT_OFF) as *const u16),
                core::ptr::read_unaligned((l4 + L4_DPORT_OFF) as *const u16),
                *((l4 + TCP_DOFF_OFF) as *const u8),
                *((l4 + TCP_FLAGS_OFF) as *const u8),
            )
        };
        let (sport, dport, tcp_flags) = match ip.protocol {
            proto::TCP if b12 >> 4 >= 5 => (sport, dport, b13),
            proto::UDP => (sport, dport, 0),
            _ => return None,
        };
        if u16::from_be(ip.frag_off) & IP_MF != 0 {
            remember_fragment(&ip, sport, dport, 0);
        }
        Some(Self {
            l4_off: ETH_HLEN + IPV4_HLEN,
            proto: ip.protocol,
            ttl: ip.ttl,
            tcp_flags,
            icmp_type: 0,
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport,
            dport,
            later_fragment: false,
        })
    }

    #[inline(always)]
    fn parse_loaded(ctx: &TcContext) -> Result<Self, Skip> {
        let ethertype: u16 = ctx.load(ETH_PROTO_OFF).map_err(|_| Skip::Malformed)?;
        if u16::from_be(ethertype) != ETH_P_IP {
            return Err(Skip::NotIpv4);
        }
        let ip: Ipv4Hdr = ctx.load(ETH_HLEN).map_err(|_| Skip::Malformed)?;
        let ihl_bytes = usize::from(ip.version_ihl & 0x0f) * 4;
        let tot_len = usize::from(u16::from_be(ip.tot_len));
        if ip.version_ihl >> 4 != 4 || ihl_bytes < 20 || tot_len < ihl_bytes {
            return Err(Skip::Malformed);
        }
        // IHL-aware: options, if any, are skipped, never parsed.
        let l4_off = ETH_HLEN + ihl_bytes;
        let frag_off = u16::from_be(ip.frag_off);
        if frag_off & IP_OFFSET_MASK != 0 {
            if !matches!(ip.protocol, proto::TCP | proto::UDP | proto::ICMP) {
                return Err(Skip::OtherProto);
            }
            let f = fragment_ports(&ip).ok_or(Skip::Fragment)?;
            return Ok(Self {
                l4_off,
                proto: ip.protocol,
                ttl: ip.ttl,
                tcp_flags: 0,
                icmp_type: f.icmp_type,
                saddr: ip.saddr,
                daddr: ip.daddr,
                sport: f.sport,
                dport: f.dport,
                later_fragment: true,
            });
        }
        // The L4 header must lie inside the IP datagram, not in Ethernet padding after it.
        let (sport, dport, tcp_flags, icmp_type) = match ip.protocol {
            proto::TCP => {
                if tot_len < ihl_bytes + size_of::<TcpHdr>() {
                    return Err(Skip::Malformed);
                }
                let tcp: TcpHdr = ctx.load(l4_off).map_err(|_| Skip::Malformed)?;
                if tcp.doff_res >> 4 < 5 {
                    return Err(Skip::Malformed);
                }
                (tcp.source, tcp.dest, tcp.flags, 0)
            }
            proto::UDP => {
                if tot_len < ihl_bytes + size_of::<UdpHdr>() {
                    return Err(Skip::Malformed);
                }
                let udp: UdpHdr = ctx.load(l4_off).map_err(|_| Skip::Malformed)?;
                (udp.source, udp.dest, 0, 0)
            }
            proto::ICMP => {
                if tot_len < ihl_bytes + ICMP_HLEN {
                    return Err(Skip::Malformed);
                }
                let icmp: IcmpHdr = ctx.load(l4_off).map_err(|_| Skip::Malformed)?;
                match icmp.type_ {
                    ICMP_ECHO => (icmp.id, 0, 0, icmp.type_),
                    ICMP_ECHO_REPLY => (0, icmp.id, 0, icmp.type_),
                    ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB => {
                        (0, 0, 0, icmp.type_)
                    }
                    _ => return Err(Skip::OtherProto),
                }
            }
            _ => return Err(Skip::OtherProto),
        };
        // ICMP errors are single packets in practice; only flows' datagrams are remembered.
        if frag_off & IP_MF != 0 && (sport != 0 || dport != 0) {
            remember_fragment(&ip, sport, dport, icmp_type);
        }
        Ok(Self {
            l4_off,
            proto: ip.protocol,
            ttl: ip.ttl,
            tcp_flags,
            icmp_type,
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport,
            dport,
            later_fragment: false,
        })
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        match self.proto {
            proto::UDP => self.l4_off + UDP_CSUM_OFF,
            proto::ICMP => self.l4_off + ICMP_CSUM_OFF,
            _ => self.l4_off + TCP_CSUM_OFF,
        }
    }

    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        self.proto == proto::ICMP
    }

    /// An ICMP error (destination unreachable, time exceeded, parameter problem) that quotes
    /// another packet.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        self.proto == proto::ICMP
            && (self.icmp_type == ICMP_DEST_UNREACH
                || self.icmp_type == ICMP_TIME_EXCEEDED
                || self.icmp_type == ICMP_PARAMETER_PROB)
    }

    #[inline(always)]
    pub fn is_udp(&self) -> bool {
        self.proto == proto::UDP
    }

    /// Whether the packet may open a new flow: any UDP datagram, an ICMP echo request, a TCP
    /// SYN without ACK. (A mid-flow TCP segment or an echo reply with no conntrack entry is
    /// the answer to something, not a new conversation.)
    #[inline(always)]
    pub fn opens_flow(&self) -> bool {
        match self.proto {
            proto::TCP => self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
            proto::ICMP => self.icmp_type == ICMP_ECHO,
            _ => true,
        }
    }

    /// A TCP FIN or RST: the flow is ending.
    #[inline(always)]
    pub fn closes_flow(&self) -> bool {
        self.proto == proto::TCP && self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }
}

/// Writes `v` at byte `off` of the frame: straight into the linear data when it lies there,
/// else with `bpf_skb_store_bytes`. A helper call per header field is most of what a
/// translated packet costs; a direct write is a bounds check and a few stores. (Direct writes
/// make the verifier add a prologue that first gives a cloned skb a private header, which
/// `bpf_skb_store_bytes` would do on its first call anyway.)
#[inline(always)]
pub fn write<T: Copy>(ctx: &TcContext, off: usize, v: &T) -> Result<(), DropReason> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + off + size_of::<T>() <= end {
        // SAFETY: the bytes written lie inside the linear packet data (checked just above).
        unsafe { core::ptr::write_unaligned((data + off) as *mut T, *v) };
        return Ok(());
    }
    ctx.store(off, v, 0).map_err(|_| DropReason::RewriteFailed)
}

/// The IPv4 header checksum as it is in the packet now (raw bytes, native load: the
/// one's-complement updates in `datapath_common::csum` give the same result on raw values as
/// long as every word is loaded the same way).
#[inline(always)]
pub fn ip_check(ctx: &TcContext) -> Result<u16, DropReason> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + IP_CSUM_OFF + 2 <= end {
        // SAFETY: the two bytes lie inside the linear data (checked above).
        return Ok(unsafe { core::ptr::read_unaligned((data + IP_CSUM_OFF) as *const u16) });
    }
    ctx.load(IP_CSUM_OFF).map_err(|_| DropReason::RewriteFailed)
}

/// The IPv4 header of the frame, or `None` if it is not IPv4 (anti-spoofing runs on every
/// IPv4 packet, whatever its protocol, before the full parse; the protocols `Packet` does not
/// parse are judged by its protocol and destination alone).
#[inline(always)]
pub fn ipv4_header(ctx: &TcContext) -> Result<Option<Ipv4Hdr>, Skip> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + IPV4_HLEN <= end {
        // SAFETY: the Ethernet and IPv4 headers lie inside the linear data (checked above).
        let (ethertype, ip) = unsafe {
            (
                core::ptr::read_unaligned((data + ETH_PROTO_OFF) as *const u16),
                core::ptr::read_unaligned((data + ETH_HLEN) as *const Ipv4Hdr),
            )
        };
        return Ok((u16::from_be(ethertype) == ETH_P_IP).then_some(ip));
    }
    let ethertype: u16 = ctx.load(ETH_PROTO_OFF).map_err(|_| Skip::Malformed)?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return Ok(None);
    }
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN).map_err(|_| Skip::Malformed)?;
    Ok(Some(ip))
}
