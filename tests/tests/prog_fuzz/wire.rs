//! Frames as bytes: a builder that computes every length and checksum in full, a re-parser for
//! well-formed frames (so a scenario can answer or quote what the datapath put out), and the
//! checksum arithmetic of the comparison (`residual`).

use datapath_common::{csum, proto};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_VLAN: u16 = 0x8100;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROB: u8 = 12;

/// IPv4 `frag_off` bits (host order).
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

pub fn be16_at(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

pub fn ip_at(b: &[u8], off: usize) -> [u8; 4] {
    [b[off], b[off + 1], b[off + 2], b[off + 3]]
}

pub fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

pub fn put_ip(b: &mut [u8], off: usize, ip: [u8; 4]) {
    b[off..off + 4].copy_from_slice(&ip);
}

/// The TCP/UDP pseudo-header.
pub fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> [u8; 12] {
    let l = (len as u16).to_be_bytes();
    [
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], 0, proto, l[0], l[1],
    ]
}

/// The Internet checksum over `parts` laid end to end (every part but the last of even
/// length): 0 when the checksum field inside them is right. Incremental updates done right
/// leave it unchanged whatever it was, so comparing it before and after a rewrite checks the
/// rewrite's checksum arithmetic without caring which of the two encodings of zero it chose.
pub fn residual(parts: &[&[u8]]) -> u16 {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        v.extend_from_slice(p);
    }
    csum::checksum(&v)
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

pub fn ip_str(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        /// TCP options (a multiple of 4 bytes; the data offset follows).
        opts: Vec<u8>,
        payload: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: Vec<u8>,
        /// Checksum 0: "none".
        no_csum: bool,
    },
    /// Any ICMP message: `rest` is the 4 bytes after the checksum (echo: identifier and
    /// sequence), `payload` what follows (an error: the quoted packet).
    Icmp {
        type_: u8,
        code: u8,
        rest: [u8; 4],
        payload: Vec<u8>,
    },
    /// Another IP protocol, payload only.
    Raw { proto: u8, payload: Vec<u8> },
}

/// One frame: Ethernet, IPv4 (options allowed), L4.
#[derive(Clone, Debug)]
pub struct P {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ethertype: u16,
    pub tos: u8,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// IPv4 options, a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub l4: L4,
}

impl P {
    pub fn new(src: [u8; 4], dst: [u8; 4], l4: L4) -> Self {
        Self {
            dst_mac: MAC_B,
            src_mac: MAC_A,
            ethertype: ETH_P_IP,
            tos: 0,
            id: 0x1234,
            frag_off: IP_DF,
            ttl: 64,
            src,
            dst,
            options: Vec::new(),
            l4,
        }
    }

    pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Self {
        let ack = if flags & TCP_ACK != 0 { 0x0a0b_0c0d } else { 0 };
        Self::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                seq: 0x0102_0304,
                ack,
                flags,
                opts: Vec::new(),
                payload: Vec::new(),
            },
        )
    }

    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self::new(
            src,
            dst,
            L4::Udp {
                sport,
                dport,
                payload: b"tollgate".to_vec(),
                no_csum: false,
            },
        )
    }

    pub fn echo(src: [u8; 4], dst: [u8; 4], type_: u8, id: u16) -> Self {
        let i = id.to_be_bytes();
        Self::new(
            src,
            dst,
            L4::Icmp {
                type_,
                code: 0,
                rest: [i[0], i[1], 0, 1],
                payload: b"ping".to_vec(),
            },
        )
    }

    pub fn icmp_error(src: [u8; 4], dst: [u8; 4], type_: u8, code: u8, quote: Vec<u8>) -> Self {
        Self::new(
            src,
            dst,
            L4::Icmp {
                type_,
                code,
                rest: [0; 4],
                payload: quote,
            },
        )
    }

    pub fn raw(src: [u8; 4], dst: [u8; 4], proto: u8) -> Self {
        Self::new(
            src,
            dst,
            L4::Raw {
                proto,
                payload: b"tollgate".to_vec(),
            },
        )
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => proto::TCP,
            L4::Udp { .. } => proto::UDP,
            L4::Icmp { .. } => proto::ICMP,
            L4::Raw { proto, .. } => proto,
        }
    }

    /// The L4 bytes with their checksum.
    fn l4_bytes(&self) -> Vec<u8> {
        let (proto, mut l4, csum_off) = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                opts,
                payload,
            } => {
                let mut t = Vec::with_capacity(20 + opts.len() + payload.len());
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&seq.to_be_bytes());
                t.extend_from_slice(&ack.to_be_bytes());
                t.push((((20 + opts.len()) / 4) as u8) << 4);
                t.push(*flags);
                t.extend_from_slice(&64240u16.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]);
                t.extend_from_slice(opts);
                t.extend_from_slice(payload);
                (proto::TCP, t, Some(16))
            }
            L4::Udp {
                sport,
                dport,
                payload,
                no_csum,
            } => {
                let mut u = Vec::with_capacity(8 + payload.len());
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(payload);
                (proto::UDP, u, (!no_csum).then_some(6))
            }
            L4::Icmp {
                type_,
                code,
                rest,
                payload,
            } => {
                let mut m = vec![*type_, *code, 0, 0];
                m.extend_from_slice(rest);
                m.extend_from_slice(payload);
                (proto::ICMP, m, Some(2))
            }
            L4::Raw { proto, payload } => (*proto, payload.clone(), None),
        };
        if let Some(off) = csum_off {
            let c = if proto == proto::ICMP {
                csum::checksum(&l4)
            } else {
                let c = residual(&[&pseudo(self.src, self.dst, proto, l4.len()), &l4]);
                if c == 0 {
                    0xffff
                } else {
                    c
                }
            };
            put16(&mut l4, off, c);
        }
        l4
    }

    /// The IPv4 packet (what an ICMP error quotes).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let hdr_len = 20 + self.options.len();
        let mut ip = Vec::with_capacity(hdr_len + l4.len());
        ip.push(0x40 | (hdr_len / 4) as u8);
        ip.push(self.tos);
        ip.extend_from_slice(&((hdr_len + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&self.id.to_be_bytes());
        ip.extend_from_slice(&self.frag_off.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src);
        ip.extend_from_slice(&self.dst);
        ip.extend_from_slice(&self.options);
        let c = csum::checksum(&ip);
        put16(&mut ip, 10, c);
        ip.extend_from_slice(&l4);
        ip
    }

    pub fn build(&self) -> Vec<u8> {
        let ip = self.ip_bytes();
        let mut f = Vec::with_capacity(ETH_HLEN + ip.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&self.ethertype.to_be_bytes());
        f.extend_from_slice(&ip);
        f
    }

    /// Re-parses a well-formed frame (as `build` makes them; what the datapath puts out when it
    /// translates): `None` for anything else. TCP options and payload, IPv4 options are kept.
    pub fn parse(f: &[u8]) -> Option<Self> {
        if f.len() < ETH_HLEN + 20 || be16_at(f, 12) != ETH_P_IP || f[14] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let tot = usize::from(be16_at(f, 16));
        if ihl < 20 || tot < ihl || ETH_HLEN + tot > f.len() {
            return None;
        }
        let ip = &f[ETH_HLEN..ETH_HLEN + tot];
        let l4b = &ip[ihl..];
        let src = ip_at(ip, 12);
        let dst = ip_at(ip, 16);
        let l4 = match ip[9] {
            proto::TCP => {
                if l4b.len() < 20 {
                    return None;
                }
                let doff = usize::from(l4b[12] >> 4) * 4;
                if doff < 20 || doff > l4b.len() {
                    return None;
                }
                L4::Tcp {
                    sport: be16_at(l4b, 0),
                    dport: be16_at(l4b, 2),
                    seq: u32::from_be_bytes([l4b[4], l4b[5], l4b[6], l4b[7]]),
                    ack: u32::from_be_bytes([l4b[8], l4b[9], l4b[10], l4b[11]]),
                    flags: l4b[13],
                    opts: l4b[20..doff].to_vec(),
                    payload: l4b[doff..].to_vec(),
                }
            }
            proto::UDP => {
                if l4b.len() < 8 {
                    return None;
                }
                L4::Udp {
                    sport: be16_at(l4b, 0),
                    dport: be16_at(l4b, 2),
                    payload: l4b[8..].to_vec(),
                    no_csum: be16_at(l4b, 6) == 0,
                }
            }
            proto::ICMP => {
                if l4b.len() < 8 {
                    return None;
                }
                L4::Icmp {
                    type_: l4b[0],
                    code: l4b[1],
                    rest: [l4b[4], l4b[5], l4b[6], l4b[7]],
                    payload: l4b[8..].to_vec(),
                }
            }
            p => L4::Raw {
                proto: p,
                payload: l4b.to_vec(),
            },
        };
        let mut mac = [[0u8; 6]; 2];
        mac[0].copy_from_slice(&f[0..6]);
        mac[1].copy_from_slice(&f[6..12]);
        Some(Self {
            dst_mac: mac[0],
            src_mac: mac[1],
            ethertype: ETH_P_IP,
            tos: ip[1],
            id: be16_at(ip, 4),
            frag_off: be16_at(ip, 6),
            ttl: ip[8],
            src,
            dst,
            options: ip[20..ihl].to_vec(),
            l4,
        })
    }

    /// The answer to this packet: addresses and ports swapped (an echo request's reply keeps
    /// its identifier), TCP flags as given, fresh TTL and MACs.
    pub fn answer(&self, tcp_flags: u8) -> Self {
        let mut a = self.clone();
        a.src = self.dst;
        a.dst = self.src;
        a.ttl = 64;
        a.frag_off = IP_DF;
        a.options.clear();
        a.dst_mac = MAC_B;
        a.src_mac = MAC_A;
        match &mut a.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                ..
            } => {
                std::mem::swap(sport, dport);
                *flags = tcp_flags;
                std::mem::swap(seq, ack);
            }
            L4::Udp { sport, dport, .. } => std::mem::swap(sport, dport),
            L4::Icmp { type_, .. } if *type_ == ICMP_ECHO => *type_ = ICMP_ECHO_REPLY,
            L4::Icmp { type_, .. } if *type_ == ICMP_ECHO_REPLY => *type_ = ICMP_ECHO,
            _ => {}
        }
        a
    }
}

/// The frames of `p`'s datagram cut into fragments of `chunk` bytes of IP payload (a multiple
/// of 8; the last one shorter), in order: the first (MF, offset 0) holds the L4 header.
pub fn fragments(p: &P, chunk: usize) -> Vec<Vec<u8>> {
    let ip = p.ip_bytes();
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let payload = &ip[ihl..];
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let n = chunk.min(payload.len() - off);
        let last = off + n == payload.len();
        let mut h = ip[..ihl].to_vec();
        put16(&mut h, 2, (ihl + n) as u16);
        put16(&mut h, 6, (off / 8) as u16 | if last { 0 } else { IP_MF });
        put16(&mut h, 10, 0);
        let c = csum::checksum(&h);
        put16(&mut h, 10, c);
        let mut f = Vec::with_capacity(ETH_HLEN + ihl + n);
        f.extend_from_slice(&p.dst_mac);
        f.extend_from_slice(&p.src_mac);
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        f.extend_from_slice(&h);
        f.extend_from_slice(&payload[off..off + n]);
        out.push(f);
        off += n;
    }
    out
}

/// Whether every checksum of a well-formed IPv4 frame is right, computed from scratch: the
/// IPv4 header, the TCP/UDP (pseudo-header, datagram length) or ICMP checksum, and for an
/// ICMP error the quoted header's. `Err` names the first wrong one.
pub fn checksums_valid(f: &[u8]) -> Result<(), String> {
    valid_ipv4(&f[ETH_HLEN..], "")
}

fn valid_ipv4(ip: &[u8], what: &str) -> Result<(), String> {
    if ip.len() < 20 {
        return Ok(());
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 || ihl > ip.len() {
        return Ok(());
    }
    if csum::checksum(&ip[..ihl]) != 0 {
        return Err(format!("{what}IPv4 header checksum"));
    }
    let tot = usize::from(be16_at(ip, 2));
    if tot > ip.len() || tot < ihl || be16_at(ip, 6) & (IP_MF | IP_OFFSET) != 0 {
        // Cut short (a quote) or a fragment: the L4 checksum covers bytes not here.
        return Ok(());
    }
    let l4 = &ip[ihl..tot];
    let (src, dst) = (ip_at(ip, 12), ip_at(ip, 16));
    match ip[9] {
        proto::ICMP => {
            if csum::checksum(l4) != 0 {
                return Err(format!("{what}ICMP checksum"));
            }
            if l4.len() >= 8 && matches!(l4[0], 3 | 11 | 12) {
                return valid_ipv4(&l4[8..], "quoted ");
            }
        }
        proto::TCP
            if l4.len() >= 20 && residual(&[&pseudo(src, dst, proto::TCP, l4.len()), l4]) != 0 =>
        {
            return Err(format!("{what}TCP checksum"));
        }
        proto::UDP if l4.len() >= 8 && be16_at(l4, 6) != 0 => {
            let ulen = usize::from(be16_at(l4, 4));
            if ulen >= 8 && ulen <= l4.len() {
                let u = &l4[..ulen];
                if residual(&[&pseudo(src, dst, proto::UDP, ulen), u]) != 0 {
                    return Err(format!("{what}UDP checksum"));
                }
            }
        }
        _ => {}
    }
    Ok(())
}
