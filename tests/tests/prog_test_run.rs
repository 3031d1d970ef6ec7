//! Packet edge cases of the TC programs, fed through `BPF_PROG_TEST_RUN`: no traffic, no
//! attached programs. Needs root (CAP_BPF + CAP_NET_ADMIN) and the eBPF object built at
//! `target/ebpf/bpfel-unknown-none/release/datapath` (by `cargo build -p tollgate` or the
//! command in `agent/build.rs`); skips with a printed reason otherwise.
//!
//! ```text
//!  client 198.51.100.7 --> [uplink] from_uplink --> node 192.0.2.10 (local) --> c1 10.254.0.2 (gw .1)
//!                                                   192.0.2.20 (not local,    c2 10.254.0.6 (gw .5)
//!                                                   specific map only)
//!  maps: {0, 8080/tcp} -> c1:80   {0, 5353/udp} -> c1:53   {192.0.2.20, 9090/tcp} -> c2:90
//! ```
//! Each case is `{description, program, input frame, expected retval, expected output frame}`;
//! cases run in order against one set of maps, so later ones see the conntrack entries earlier
//! ones created (replies, hairpin). Replies are forwarded by a FIB lookup, so the table runs in
//! a private network namespace of the test thread (`enter_test_netns`) with known routes. Maps
//! are not pinned: nothing is left in bpffs, and the namespace dies with the thread.

use std::path::PathBuf;

use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        HashMap, Map, MapData, PerCpuArray,
    },
    programs::{CgroupSockAddr, SchedClassifier, TestRun, TestRunOptions},
    Ebpf, EbpfLoader,
};
use datapath_common::{
    config::Config,
    conntrack::{CtEntry, CtKey, CT_DNAT, CT_HAIRPIN, CT_MASQ, CT_REPLY, CT_SEEN_REPLY, CT_SNAT},
    csum,
    drop::DropReason,
    endpoint::{
        Endpoint, EpStats, LinkKey, PolicyChain, PolicyKey, PolicyRule, ADDR_GATEWAY, ADDR_UPLINK,
        EP_EGRESS_DENY, POLICY_ALLOW, POLICY_DENY,
    },
    maps,
    portmap::{PortKey, PortValue},
    proto,
    ratelimit::{RateLimit, TokenBucket},
    stats::{
        CNT_CT_CREATED, CNT_DNAT_HAIRPIN, CNT_DNAT_UPLINK, CNT_DROP_ICC, CNT_DROP_POLICY,
        CNT_DROP_RATELIMIT, CNT_DROP_SPOOF, CNT_ICMP_ERR_XLATED, CNT_PASS_FRAGMENT,
        CNT_PASS_MALFORMED, CNT_PASS_NOT_IPV4, CNT_REVNAT, CNT_REVSNAT, CNT_SNAT_FLOWS,
    },
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;

const CLIENT: [u8; 4] = [198, 51, 100, 7];
const HOST: [u8; 4] = [192, 0, 2, 10];
const HOST_SPECIFIC: [u8; 4] = [192, 0, 2, 20];
const C1: [u8; 4] = [10, 254, 0, 2];
const GW1: [u8; 4] = [10, 254, 0, 1];
const C2: [u8; 4] = [10, 254, 0, 6];
const GW2: [u8; 4] = [10, 254, 0, 5];
/// Egress deny by default (`EP_EGRESS_DENY`).
const C3: [u8; 4] = [10, 254, 0, 10];
const GW3: [u8; 4] = [10, 254, 0, 9];
/// A client the test namespace has no route to.
const UNROUTED: [u8; 4] = [203, 0, 113, 9];
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// IP protocols conntrack does not track.
const IPPROTO_GRE: u8 = 47;
const IPPROTO_SCTP: u8 = 132;
/// IPv4 options used by the IHL case: NOP, NOP, NOP, EOL (one 32-bit word).
const IP_OPTIONS: &[u8] = &[1, 1, 1, 0];
/// The longest options (IHL 15): 39 NOPs and an EOL.
const IP_OPTIONS_MAX: &[u8] = &[
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 0,
];

// ---------------------------------------------------------------------------------------------
// Frame builder
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
enum L4 {
    Tcp {
        flags: u8,
    },
    Udp {
        zero_csum: bool,
    },
    /// Echo request (8) or reply (0); the identifier is the frame's `sport`.
    Icmp {
        type_: u8,
    },
    /// An ICMP error quoting `quoted` (an IPv4 packet, from its header on).
    IcmpError {
        type_: u8,
        code: u8,
        quoted: Vec<u8>,
    },
    /// Another IP protocol: 8 bytes of payload, no checksum of ours.
    Raw {
        proto: u8,
    },
}

/// One frame to build. Checksums are always computed in full (never incrementally), so an
/// expected frame is an independent check of the datapath's incremental updates.
#[derive(Clone)]
struct Frame {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    ethertype: u16,
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    l4: L4,
    ip_options: &'static [u8],
    /// The IPv4 `frag_off` field (flags and offset), host order.
    frag_off: u16,
    /// Overrides the IHL nibble (for malformed headers).
    ihl: Option<u8>,
    /// Cuts the frame to this many bytes (for truncated headers).
    truncate: Option<usize>,
    ttl: u8,
}

impl Frame {
    fn new(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, l4: L4) -> Self {
        Self {
            dst_mac: MAC_B,
            src_mac: MAC_A,
            ethertype: ETH_P_IP,
            src,
            sport,
            dst,
            dport,
            l4,
            ip_options: &[],
            frag_off: 0x4000, // DF
            ihl: None,
            truncate: None,
            ttl: 64,
        }
    }

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Self {
        Self::new(src, sport, dst, dport, L4::Tcp { flags })
    }

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self::new(src, sport, dst, dport, L4::Udp { zero_csum: false })
    }

    /// The same frame with its source rewritten.
    fn with_src(mut self, ip: [u8; 4], port: u16) -> Self {
        self.src = ip;
        self.sport = port;
        self
    }

    /// The same frame with its destination rewritten.
    fn with_dst(mut self, ip: [u8; 4], port: u16) -> Self {
        self.dst = ip;
        self.dport = port;
        self
    }

    /// The same frame one router hop later.
    fn forwarded(mut self) -> Self {
        self.ttl -= 1;
        self
    }

    fn with_macs_swapped(mut self) -> Self {
        std::mem::swap(&mut self.src_mac, &mut self.dst_mac);
        self
    }

    fn build(&self) -> Vec<u8> {
        let (proto, mut l4) = match self.l4 {
            L4::Tcp { flags } => {
                let mut t = Vec::with_capacity(20);
                t.extend_from_slice(&self.sport.to_be_bytes());
                t.extend_from_slice(&self.dport.to_be_bytes());
                t.extend_from_slice(&0x0102_0304u32.to_be_bytes()); // seq
                let ack = if flags & TCP_ACK != 0 { 0x0a0b_0c0d } else { 0 };
                t.extend_from_slice(&u32::to_be_bytes(ack));
                t.push(5 << 4); // data offset
                t.push(flags);
                t.extend_from_slice(&64240u16.to_be_bytes()); // window
                t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                (proto::TCP, t)
            }
            L4::Udp { .. } => {
                let payload = b"tollgate";
                let mut u = Vec::with_capacity(8 + payload.len());
                u.extend_from_slice(&self.sport.to_be_bytes());
                u.extend_from_slice(&self.dport.to_be_bytes());
                u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(payload);
                (proto::UDP, u)
            }
            // Echo, seq 1.
            L4::Icmp { type_ } => {
                let mut m = vec![type_, 0, 0, 0];
                m.extend_from_slice(&self.sport.to_be_bytes());
                m.extend_from_slice(&[0, 1]);
                (proto::ICMP, m)
            }
            L4::IcmpError {
                type_,
                code,
                ref quoted,
            } => {
                let mut m = vec![type_, code, 0, 0, 0, 0, 0, 0];
                m.extend_from_slice(quoted);
                (proto::ICMP, m)
            }
            L4::Raw { proto } => (proto, b"tollgate".to_vec()),
        };
        let csum_off = match self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp { zero_csum: false } => Some(6),
            L4::Udp { zero_csum: true } | L4::Raw { .. } => None,
            L4::Icmp { .. } | L4::IcmpError { .. } => Some(2),
        };
        if let Some(off) = csum_off {
            let c = if proto == proto::ICMP {
                csum::checksum(&l4)
            } else {
                let c = csum::checksum(
                    &[
                        pseudo_header(self.src, self.dst, proto, l4.len()),
                        l4.clone(),
                    ]
                    .concat(),
                );
                // A computed zero goes on the wire as 0xffff (zero means "no checksum" for UDP).
                if c == 0 {
                    0xffff
                } else {
                    c
                }
            };
            l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }

        let hdr_len = 20 + self.ip_options.len();
        let mut ip = Vec::with_capacity(hdr_len + l4.len());
        let ihl = self.ihl.unwrap_or((hdr_len / 4) as u8);
        ip.push(0x40 | ihl);
        ip.push(0);
        ip.extend_from_slice(&((hdr_len + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&0x1234u16.to_be_bytes()); // id
        ip.extend_from_slice(&self.frag_off.to_be_bytes());
        ip.push(self.ttl);
        ip.push(proto);
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src);
        ip.extend_from_slice(&self.dst);
        ip.extend_from_slice(self.ip_options);
        let c = csum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&l4);

        let mut frame = Vec::with_capacity(14 + ip.len());
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        frame.extend_from_slice(&self.ethertype.to_be_bytes());
        frame.extend_from_slice(&ip);
        if let Some(n) = self.truncate {
            frame.truncate(n);
        }
        frame
    }
}

fn pseudo_header(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.push(0);
    p.push(proto);
    p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    p
}

/// Recomputes the IPv4 and TCP/UDP/ICMP checksums of a well-formed IPv4 frame and checks them;
/// for an ICMP error, those of the quoted packet too.
fn assert_checksums_valid(what: &str, frame: &[u8]) {
    assert_ipv4_checksums_valid(what, &frame[14..]);
}

fn assert_ipv4_checksums_valid(what: &str, ip: &[u8]) {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    assert_eq!(
        csum::checksum(&ip[..ihl]),
        0,
        "{what}: IPv4 header checksum invalid"
    );
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if tot_len > ip.len() {
        return; // a quoted packet cut short: its L4 checksum cannot be checked
    }
    let l4 = &ip[ihl..tot_len];
    let (src, dst) = (&ip[12..16], &ip[16..20]);
    let proto = ip[9];
    if proto == proto::ICMP {
        assert_eq!(csum::checksum(l4), 0, "{what}: ICMP checksum invalid");
        if l4[0] == 3 || l4[0] == 11 {
            assert_ipv4_checksums_valid(&format!("{what} (quoted packet)"), &l4[8..]);
        }
        return;
    }
    if proto == proto::UDP && l4[6..8] == [0, 0] {
        return; // no checksum
    }
    let pseudo = pseudo_header(
        src.try_into().unwrap(),
        dst.try_into().unwrap(),
        proto,
        l4.len(),
    );
    assert_eq!(
        csum::checksum(&[pseudo, l4.to_vec()].concat()),
        0,
        "{what}: L4 checksum invalid"
    );
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

enum Expect {
    /// Passed byte for byte untouched with TC_ACT_OK.
    Untouched,
    /// Rewritten into this frame, with this return value.
    Rewritten { retval: u32, output: Frame },
}

struct Case {
    description: &'static str,
    prog: &'static str,
    input: Vec<u8>,
    expect: Expect,
    /// The kernel itself may refuse to run this input (see the case).
    kernel_may_refuse: bool,
}

fn case(description: &'static str, prog: &'static str, input: Vec<u8>, expect: Expect) -> Case {
    Case {
        description,
        prog,
        input,
        expect,
        kernel_may_refuse: false,
    }
}

fn rewritten(output: Frame) -> Expect {
    Expect::Rewritten {
        retval: TC_ACT_OK,
        output,
    }
}

/// Rewritten, then sent to the FIB's egress by redirect, one hop later.
fn forwarded(output: Frame) -> Expect {
    Expect::Rewritten {
        retval: TC_ACT_REDIRECT,
        output: output.forwarded(),
    }
}

fn cases() -> Vec<Case> {
    use Expect::Untouched;
    let syn = Frame::tcp(CLIENT, 40000, HOST, 8080, TCP_SYN);
    let dgram = Frame::udp(CLIENT, 40001, HOST, 5353);
    let opts = Frame {
        ip_options: IP_OPTIONS,
        ..Frame::tcp(CLIENT, 40002, HOST, 8080, TCP_SYN)
    };
    let zero_udp = Frame {
        l4: L4::Udp { zero_csum: true },
        ..Frame::udp(CLIENT, 40003, HOST, 5353)
    };
    let mid_flow = Frame::tcp(CLIENT, 40004, HOST, 8080, TCP_ACK);
    let specific = Frame::tcp(CLIENT, 40005, HOST_SPECIFIC, 9090, TCP_SYN);
    let self_syn = Frame::tcp(C1, 41000, HOST, 8080, TCP_SYN);
    vec![
        // ---- from_uplink: design.md "Port-map paths" 1 ----
        case(
            "TCP SYN to a published port is DNATed",
            "from_uplink",
            syn.build(),
            forwarded(syn.clone().with_dst(C1, 80)),
        ),
        case(
            "the next packet of that flow is DNATed from conntrack",
            "from_uplink",
            Frame::tcp(CLIENT, 40000, HOST, 8080, TCP_ACK).build(),
            forwarded(Frame::tcp(CLIENT, 40000, C1, 80, TCP_ACK)),
        ),
        case(
            "UDP datagram to a published port is DNATed",
            "from_uplink",
            dgram.build(),
            forwarded(dgram.clone().with_dst(C1, 53)),
        ),
        case(
            "UDP with a zero checksum is DNATed and its checksum stays zero",
            "from_uplink",
            zero_udp.build(),
            forwarded(zero_udp.clone().with_dst(C1, 53)),
        ),
        case(
            "IPv4 with options: IHL is honoured, L4 found after the options and DNATed",
            "from_uplink",
            opts.build(),
            forwarded(opts.clone().with_dst(C1, 80)),
        ),
        case(
            "a mid-flow TCP packet with no conntrack entry is DNATed (flows survive CT loss)",
            "from_uplink",
            mid_flow.build(),
            forwarded(mid_flow.clone().with_dst(C1, 80)),
        ),
        case(
            "a map on a specific host IP applies even though that IP is not in TG_LOCAL_ADDRS",
            "from_uplink",
            specific.build(),
            forwarded(specific.clone().with_dst(C2, 90)),
        ),
        case(
            "TCP SYN from a client the node has no route back to is DNATed all the same",
            "from_uplink",
            Frame::tcp(UNROUTED, 40009, HOST, 8080, TCP_SYN).build(),
            forwarded(Frame::tcp(UNROUTED, 40009, C1, 80, TCP_SYN)),
        ),
        case(
            "unmapped port passes untouched",
            "from_uplink",
            Frame::tcp(CLIENT, 40006, HOST, 8081, TCP_SYN).build(),
            Untouched,
        ),
        case(
            "published port on a non-local address with only a wildcard map passes untouched",
            "from_uplink",
            Frame::tcp(CLIENT, 40007, [203, 0, 113, 1], 8080, TCP_SYN).build(),
            Untouched,
        ),
        case(
            "published TCP port reached over UDP passes untouched",
            "from_uplink",
            Frame::udp(CLIENT, 40008, HOST, 8080).build(),
            Untouched,
        ),
        case(
            "IPv4 header truncated inside its options (IHL 15, 30 bytes present) passes untouched",
            "from_uplink",
            Frame {
                ip_options: IP_OPTIONS_MAX,
                truncate: Some(14 + 30),
                ..syn.clone()
            }
            .build(),
            Untouched,
        ),
        Case {
            // Such frames do reach TC ingress (ip_rcv, which would drop them, runs later), but
            // BPF_PROG_TEST_RUN on recent kernels refuses an IPv4 frame shorter than a minimal
            // IPv4 header with EINVAL before the program runs; then there is nothing to check.
            kernel_may_refuse: true,
            ..case(
                "IPv4 frame shorter than 20 bytes of header passes untouched",
                "from_uplink",
                Frame {
                    truncate: Some(14 + 12),
                    ..syn.clone()
                }
                .build(),
                Untouched,
            )
        },
        case(
            "truncated TCP header passes untouched",
            "from_uplink",
            Frame {
                truncate: Some(14 + 20 + 10),
                ..syn.clone()
            }
            .build(),
            Untouched,
        ),
        case(
            "IHL < 5 passes untouched",
            "from_uplink",
            Frame {
                ihl: Some(4),
                ..syn.clone()
            }
            .build(),
            Untouched,
        ),
        case(
            "non-first fragment passes untouched",
            "from_uplink",
            // MF clear, offset 185 * 8 bytes: its first bytes are payload, not a UDP header.
            Frame {
                frag_off: 185,
                ..dgram.clone()
            }
            .build(),
            Untouched,
        ),
        case(
            "non-IPv4 ethertype passes untouched",
            "from_uplink",
            Frame {
                ethertype: ETH_P_ARP,
                ..syn.clone()
            }
            .build(),
            Untouched,
        ),
        case(
            "ICMP to a local address passes untouched",
            "from_uplink",
            Frame::new(CLIENT, 1, HOST, 1, L4::Icmp { type_: 8 }).build(),
            Untouched,
        ),
        // ---- from_container: paths 2 and 3 ----
        // Replies leave by FIB lookup + bpf_redirect_neigh, TTL decremented: with the published
        // address as source the stack would drop them as martians.
        case(
            "the container's reply: source back to the published address, forwarded by redirect",
            "from_container",
            Frame::tcp(C1, 80, CLIENT, 40000, TCP_SYN | TCP_ACK).build(),
            forwarded(Frame::tcp(HOST, 8080, CLIENT, 40000, TCP_SYN | TCP_ACK)),
        ),
        case(
            "a UDP reply: source back, forwarded by redirect",
            "from_container",
            Frame::udp(C1, 53, CLIENT, 40001).build(),
            forwarded(Frame::udp(HOST, 5353, CLIENT, 40001)),
        ),
        case(
            "port unreachable from the container about a port-mapped UDP flow: outer source and \
             quoted destination back to the published address:port, forwarded by redirect",
            "from_container",
            icmp_error(
                C1,
                CLIENT,
                3,
                3,
                quote(&dgram.clone().with_dst(C1, 53).forwarded(), None),
            )
            .build(),
            forwarded(icmp_error(
                HOST,
                CLIENT,
                3,
                3,
                quote(&dgram.clone().forwarded(), None),
            )),
        ),
        case(
            "fragmentation needed from the container quoting 8 bytes of a port-mapped TCP \
             segment: translated back likewise",
            "from_container",
            icmp_error(
                C1,
                CLIENT,
                3,
                4,
                quote(&Frame::tcp(CLIENT, 40000, C1, 80, TCP_ACK), Some(28)),
            )
            .build(),
            forwarded(icmp_error(
                HOST,
                CLIENT,
                3,
                4,
                quote(&Frame::tcp(CLIENT, 40000, HOST, 8080, TCP_ACK), Some(28)),
            )),
        ),
        case(
            "an ICMP error from the container about no known flow passes untouched",
            "from_container",
            icmp_error(
                C1,
                CLIENT,
                3,
                3,
                quote(&Frame::udp(CLIENT, 1234, C1, 9999), None),
            )
            .build(),
            Untouched,
        ),
        case(
            "a reply the FIB has no route for: source back, left to the stack (TC_ACT_OK)",
            "from_container",
            Frame::tcp(C1, 80, UNROUTED, 40009, TCP_SYN | TCP_ACK).build(),
            rewritten(Frame::tcp(HOST, 8080, UNROUTED, 40009, TCP_SYN | TCP_ACK)),
        ),
        case(
            "a reply with TTL 1: source back, not redirected (left to the stack)",
            "from_container",
            Frame {
                ttl: 1,
                ..Frame::tcp(C1, 80, CLIENT, 40000, TCP_ACK)
            }
            .build(),
            rewritten(Frame {
                ttl: 1,
                ..Frame::tcp(HOST, 8080, CLIENT, 40000, TCP_ACK)
            }),
        ),
        case(
            "hairpin: another container's SYN to a published port is DNATed, source kept",
            "from_container",
            Frame::tcp(C2, 42000, HOST, 8080, TCP_SYN).build(),
            rewritten(Frame::tcp(C2, 42000, C1, 80, TCP_SYN)),
        ),
        case(
            "hairpin reply: source back to the published address",
            "from_container",
            Frame::tcp(C1, 80, C2, 42000, TCP_SYN | TCP_ACK).build(),
            forwarded(Frame::tcp(HOST, 8080, C2, 42000, TCP_SYN | TCP_ACK)),
        ),
        case(
            "hairpin: a TCP packet without SYN opens no flow and passes untouched",
            "from_container",
            Frame::tcp(C2, 42001, HOST, 8080, TCP_ACK).build(),
            Untouched,
        ),
        case(
            "self-hairpin: DNAT + SNAT to the gateway, MACs swapped, redirected",
            "from_container",
            self_syn.build(),
            Expect::Rewritten {
                retval: TC_ACT_REDIRECT,
                output: self_syn
                    .clone()
                    .with_dst(C1, 80)
                    .with_src(GW1, 41000)
                    .with_macs_swapped(),
            },
        ),
        case(
            "self-hairpin reply: source and destination rewritten back, redirected",
            "from_container",
            Frame::tcp(C1, 80, GW1, 41000, TCP_SYN | TCP_ACK).build(),
            Expect::Rewritten {
                retval: TC_ACT_REDIRECT,
                output: Frame::tcp(HOST, 8080, C1, 41000, TCP_SYN | TCP_ACK).with_macs_swapped(),
            },
        ),
        case(
            "traffic from a container to an unpublished destination passes untouched",
            "from_container",
            Frame::tcp(C2, 42002, CLIENT, 443, TCP_SYN).build(),
            Untouched,
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// The eBPF object, or `None` (after printing why) when this test cannot run here.
fn object() -> Option<Vec<u8>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: BPF_PROG_TEST_RUN needs root");
        return None;
    }
    // TOLLGATE_EBPF_OBJ: another build's object (the microbench compares builds).
    let path = std::env::var_os("TOLLGATE_EBPF_OBJ").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/ebpf/bpfel-unknown-none/release/datapath")
        },
        PathBuf::from,
    );
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            eprintln!(
                "skipped: eBPF object {} not readable ({e}); build it first (agent/build.rs)",
                path.display()
            );
            None
        }
    }
}

/// Moves this test's thread (only) into a new network namespace, the one BPF_PROG_TEST_RUN
/// then runs in, so the datapath's FIB lookups see a known table: an uplink veth with the
/// client subnet, one veth per container with its /30, forwarding on, nothing to `UNROUTED`.
/// The namespace goes away with the thread.
fn enter_test_netns() -> anyhow::Result<()> {
    // SAFETY: unshare affects only the calling thread, which nothing else shares.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    // Children inherit the calling thread's namespace.
    // tgt0 plays the uplink; tghN is container N's host veth (gateway on it, /30 behind it).
    for args in [
        "link add tgt0 type veth peer name tgt1",
        "addr add 198.51.100.1/24 dev tgt0",
        "link add tgh1 type veth peer name tgh1p",
        "addr add 10.254.0.1/30 dev tgh1",
        "link add tgh2 type veth peer name tgh2p",
        "addr add 10.254.0.5/30 dev tgh2",
        "link add tgh3 type veth peer name tgh3p",
        "addr add 10.254.0.9/30 dev tgh3",
        "link set lo up",
        "link set tgt1 up",
        "link set tgt0 up",
        "link set tgh1p up",
        "link set tgh1 up",
        "link set tgh2p up",
        "link set tgh2 up",
        "link set tgh3p up",
        "link set tgh3 up",
    ] {
        ip_cmd(args)?;
    }
    // /proc/sys/net resolves to the opening thread's namespace.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    Ok(())
}

fn be32(ip: [u8; 4]) -> u32 {
    u32::from_ne_bytes(ip)
}

fn be16(port: u16) -> u16 {
    port.to_be()
}

/// Fills the maps with the topology of the module docs.
fn fill_maps(bpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut local: HashMap<&mut MapData, u32, u32> =
        HashMap::try_from(bpf.map_mut(maps::LOCAL_ADDRS).unwrap())?;
    local.insert(be32(HOST), ADDR_UPLINK, 0)?;

    let mut portmap: HashMap<&mut MapData, PortKey, PortValue> =
        HashMap::try_from(bpf.map_mut(maps::PORTMAP).unwrap())?;
    let map = |host_ip: [u8; 4], port: u16, proto: u8, cip: [u8; 4], cport: u16, id: u32| {
        (
            PortKey {
                host_ip: be32(host_ip),
                port: be16(port),
                proto,
                _pad: 0,
            },
            PortValue {
                container_ip: be32(cip),
                container_port: be16(cport),
                _pad: 0,
                host_ifindex: 100 + id,
                endpoint_id: id,
            },
        )
    };
    for (k, v) in [
        map([0; 4], 8080, proto::TCP, C1, 80, 1),
        map([0; 4], 5353, proto::UDP, C1, 53, 1),
        map(HOST_SPECIFIC, 9090, proto::TCP, C2, 90, 2),
    ] {
        portmap.insert(k, v, 0)?;
    }

    for (id, ip, gw, dev, flags) in [
        (1, C1, GW1, "tgh1", 0),
        (2, C2, GW2, "tgh2", 0),
        (3, C3, GW3, "tgh3", EP_EGRESS_DENY),
    ] {
        let ep = Endpoint {
            id,
            host_ifindex: ifindex(dev)?,
            gateway_ip: be32(gw),
            flags,
            ip: be32(ip),
            _pad: 0,
        };
        let mut endpoints: HashMap<&mut MapData, u32, Endpoint> =
            HashMap::try_from(bpf.map_mut(maps::ENDPOINTS).unwrap())?;
        endpoints.insert(be32(ip), ep, 0)?;
        let mut by_if: HashMap<&mut MapData, u32, Endpoint> =
            HashMap::try_from(bpf.map_mut(maps::EP_BY_IF).unwrap())?;
        by_if.insert(ep.host_ifindex, ep, 0)?;
    }
    Ok(())
}

/// ifindex of `name` in the calling thread's network namespace.
fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(i != 0, "no interface {name}");
    Ok(i)
}

/// The device a case's frame arrives on: the uplink for `from_uplink`; for the veth hooks,
/// the host veth of the container that sent (`from_container`) or receives (`to_container`)
/// it, by address (tgh1 when the frame has none).
fn default_dev(prog: &str, input: &[u8]) -> &'static str {
    if prog == "from_uplink" {
        return "tgt0";
    }
    let off = if prog == "to_container" { 30 } else { 26 };
    match input.get(off..off + 4) {
        Some(ip) if ip == C2 => "tgh2",
        Some(ip) if ip == C3 => "tgh3",
        _ => "tgh1",
    }
}

/// Runs `prog` once on `input` as if it arrived on interface `dev` (`__sk_buff.ifindex`, the
/// only context field set); returns the verdict and the output frame.
fn run(bpf: &Ebpf, prog: &str, dev: &str, input: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
    let p: &SchedClassifier = bpf.program(prog).unwrap().try_into()?;
    // struct __sk_buff up to and including `ifindex` (offset 40); the kernel requires every
    // other field it does not accept from user space to be zero.
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex(dev)?.to_ne_bytes());
    let mut out = vec![0u8; input.len() + 256];
    let res = p.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..Default::default()
    })?;
    out.truncate(res.data_size_out as usize);
    Ok((res.return_value, out))
}

fn load_classifier<'a>(bpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    let prog: &mut SchedClassifier = bpf
        .program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("program {name} missing from the object"))?
        .try_into()?;
    prog.load()?;
    Ok(prog)
}

/// The important check: the verifier accepts every program, and every map exists under its
/// shared name.
#[test]
fn verifier_accepts_every_program() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    let mut bpf = Ebpf::load(&obj)?;
    for name in maps::ALL {
        assert!(
            bpf.map(name).is_some(),
            "map {name} missing from the object"
        );
    }
    for name in ["from_uplink", "from_container", "to_container"] {
        load_classifier(&mut bpf, name).map_err(|e| anyhow::anyhow!("loading {name}: {e:?}"))?;
    }
    for name in [
        "sock_connect4",
        "sock_sendmsg4",
        "sock_recvmsg4",
        "sock_getpeername4",
        "sock_bind4",
    ] {
        let prog: &mut CgroupSockAddr = bpf
            .program_mut(name)
            .ok_or_else(|| anyhow::anyhow!("program {name} missing from the object"))?
            .try_into()?;
        prog.load()
            .map_err(|e| anyhow::anyhow!("loading {name}: {e:?}"))?;
    }
    Ok(())
}

/// The agent sizes `TG_CT` at load time (`EbpfLoader::map_max_entries`); that works on the
/// BTF map definition too.
#[test]
fn conntrack_size_is_set_at_load() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    let max_entries = |bpf: &Ebpf| -> anyhow::Result<u32> {
        match bpf.map(maps::CONNTRACK) {
            Some(Map::LruHashMap(data)) => Ok(data.info()?.max_entries()),
            _ => anyhow::bail!("{} is not an LRU hash map", maps::CONNTRACK),
        }
    };
    let bpf = Ebpf::load(&obj)?;
    assert_eq!(max_entries(&bpf)?, maps::CONNTRACK_MAX_DEFAULT);
    let bpf = EbpfLoader::new()
        .map_max_entries(maps::CONNTRACK, 4096)
        .load(&obj)?;
    assert_eq!(max_entries(&bpf)?, 4096);
    Ok(())
}

#[test]
fn packet_table() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    enter_test_netns()?;
    let mut bpf = Ebpf::load(&obj)?;
    fill_maps(&mut bpf)?;
    load_classifier(&mut bpf, "from_uplink")?;
    load_classifier(&mut bpf, "from_container")?;

    let mut failures = Vec::new();
    for c in cases() {
        let (return_value, out) = match run(&bpf, c.prog, default_dev(c.prog, &c.input), &c.input) {
            Ok(res) => res,
            Err(e) if c.kernel_may_refuse => {
                println!(
                    "kernel refused (not run): {} [{}]: {e}",
                    c.description, c.prog
                );
                continue;
            }
            Err(e) => return Err(anyhow::anyhow!("{}: test run failed: {e:?}", c.description)),
        };
        let (retval, expected) = match &c.expect {
            Expect::Untouched => (TC_ACT_OK, c.input.clone()),
            Expect::Rewritten { retval, output } => {
                let f = output.build();
                assert_checksums_valid(c.description, &out);
                (*retval, f)
            }
        };
        if return_value != retval || out != expected {
            failures.push(format!(
                "{} [{}]: retval {} (want {retval})\n   got  {}\n   want {}",
                c.description,
                c.prog,
                return_value,
                hex(&out),
                hex(&expected)
            ));
        } else {
            println!("ok: {} [{}]", c.description, c.prog);
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    check_conntrack(&bpf)?;
    check_counters(&bpf)?;
    Ok(())
}

/// Both halves of the first uplink flow and of the self-hairpin flow are in `TG_CT`.
fn check_conntrack(bpf: &Ebpf) -> anyhow::Result<()> {
    let ct: HashMap<&MapData, CtKey, CtEntry> =
        HashMap::try_from(bpf.map(maps::CONNTRACK).unwrap())?;
    let key = |s: [u8; 4], sp: u16, d: [u8; 4], dp: u16| CtKey {
        saddr: be32(s),
        daddr: be32(d),
        sport: be16(sp),
        dport: be16(dp),
        proto: proto::TCP,
        _pad: [0; 3],
    };

    let orig = ct.get(&key(CLIENT, 40000, HOST, 8080), 0)?;
    assert_eq!(
        orig.flags,
        CT_DNAT | CT_SEEN_REPLY,
        "uplink orig flags (the container answered)"
    );
    assert_eq!((orig.nat_daddr, orig.nat_dport), (be32(C1), be16(80)));
    assert_eq!(orig.endpoint_id, 1);
    assert_eq!(orig.packets, 2, "SYN and ACK counted on the original half");
    assert!(orig.created_ns > 0 && orig.last_seen_ns >= orig.created_ns);

    let reply = ct.get(&key(C1, 80, CLIENT, 40000), 0)?;
    assert_eq!(
        reply.flags,
        CT_SNAT | CT_REPLY | CT_SEEN_REPLY,
        "uplink reply flags"
    );
    assert_eq!((reply.nat_saddr, reply.nat_sport), (be32(HOST), be16(8080)));
    assert_eq!(
        reply.packets, 2,
        "SYN-ACK and the TTL-1 ACK counted on the reply half"
    );

    let hp = ct.get(&key(C1, 41000, HOST, 8080), 0)?;
    assert_eq!(
        hp.flags,
        CT_DNAT | CT_SNAT | CT_HAIRPIN | CT_SEEN_REPLY,
        "self-hairpin orig flags"
    );
    assert_eq!((hp.nat_saddr, hp.nat_sport), (be32(GW1), be16(41000)));
    assert_ne!(hp.redirect_ifindex, 0);
    let hp_reply = ct.get(&key(C1, 80, GW1, 41000), 0)?;
    assert_eq!(
        hp_reply.flags,
        CT_DNAT | CT_SNAT | CT_HAIRPIN | CT_REPLY | CT_SEEN_REPLY
    );
    assert_eq!(
        (hp_reply.nat_daddr, hp_reply.nat_dport),
        (be32(C1), be16(41000))
    );
    assert_eq!(
        (hp_reply.nat_saddr, hp_reply.nat_sport),
        (be32(HOST), be16(8080))
    );
    Ok(())
}

fn check_counters(bpf: &Ebpf) -> anyhow::Result<()> {
    let counters: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(bpf.map(maps::COUNTERS).unwrap())?;
    let total = |idx: u32| -> anyhow::Result<u64> { Ok(counters.get(&idx, 0)?.iter().sum()) };
    for (idx, name, want) in [
        (CNT_DNAT_UPLINK, "dnat_uplink", 8),
        (CNT_REVNAT, "revnat", 6),
        (CNT_DNAT_HAIRPIN, "dnat_hairpin", 2),
        (CNT_PASS_MALFORMED, "pass_malformed", 3),
        (CNT_PASS_FRAGMENT, "pass_fragment", 1),
        (CNT_PASS_NOT_IPV4, "pass_not_ipv4", 1),
        (CNT_ICMP_ERR_XLATED, "icmp_err_xlated", 2),
    ] {
        assert_eq!(total(idx)?, want, "counter {name}");
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join("")
}

// ---------------------------------------------------------------------------------------------
// Masquerade, ICMP errors, ICC and egress policy
// ---------------------------------------------------------------------------------------------
//
// ```text
//  c1 10.254.0.2 [tgh1] --+                             +-- [tgt0 uplink] -- client 198.51.100.7
//  c2 10.254.0.6 [tgh2] --+-- node (snat 192.0.2.10) ---+                    peer   198.51.100.8, .9
//  c3 10.254.0.10 [tgh3] -+   pool 10.254.0.0/22, ICC off, link c1 -> c2
//  c2 policy: 198.51.100.0/24 [allow 53/udp, allow 8000-8100/tcp, deny]
//             198.51.100.8/32 [allow 80/tcp, allow 53/udp, allow 8000-8100/tcp, deny]
//  c3 egress deny; 198.51.100.7/32 [allow 443/tcp, allow sctp]
// ```
// Steps run in order, each one a `{description, program, device, input, expected}` check;
// the masquerade port is whatever the datapath allocated (read from its output, checked to be
// in range) and later steps use it.

const PEER8: [u8; 4] = [198, 51, 100, 8];
const PEER9: [u8; 4] = [198, 51, 100, 9];
const TC_ACT_SHOT: u32 = 2;
const NAT_MIN: u16 = datapath_common::config::NAT_PORT_MIN_DEFAULT;
const NAT_MAX: u16 = datapath_common::config::NAT_PORT_MAX_DEFAULT;

/// What a step expects.
enum Want {
    /// This verdict, frame untouched.
    Same(u32),
    /// This verdict and exactly this frame (checksums also verified by recomputation).
    Frame(u32, Frame),
}

fn step(bpf: &Ebpf, what: &str, prog: &str, input: &Frame, want: Want) -> anyhow::Result<Vec<u8>> {
    let input = input.build();
    let (ret, out) = run(bpf, prog, default_dev(prog, &input), &input)?;
    let (want_ret, want_out) = match want {
        Want::Same(r) => (r, input.clone()),
        Want::Frame(r, f) => {
            assert_checksums_valid(what, &out);
            (r, f.build())
        }
    };
    anyhow::ensure!(
        ret == want_ret && out == want_out,
        "{what} [{prog}]: retval {ret} (want {want_ret})\n   got  {}\n   want {}",
        hex(&out),
        hex(&want_out)
    );
    println!("ok: {what} [{prog}]");
    Ok(out)
}

/// The source port (ICMP: echo identifier) of an output frame, checked to be in the NAT range.
fn nat_port(what: &str, out: &[u8]) -> u16 {
    let l4 = 14 + usize::from(out[14] & 0x0f) * 4;
    let off = if out[23] == proto::ICMP { l4 + 4 } else { l4 };
    let p = u16::from_be_bytes([out[off], out[off + 1]]);
    assert!(
        (NAT_MIN..=NAT_MAX).contains(&p),
        "{what}: NAT port {p} outside {NAT_MIN}-{NAT_MAX}"
    );
    p
}

/// The IPv4 packet of a frame (what an ICMP error quotes), optionally cut to `len` bytes.
fn quote(f: &Frame, len: Option<usize>) -> Vec<u8> {
    let mut ip = f.build()[14..].to_vec();
    if let Some(n) = len {
        ip.truncate(n);
    }
    ip
}

fn icmp_error(src: [u8; 4], dst: [u8; 4], type_: u8, code: u8, quoted: Vec<u8>) -> Frame {
    Frame::new(
        src,
        0,
        dst,
        0,
        L4::IcmpError {
            type_,
            code,
            quoted,
        },
    )
}

fn echo(src: [u8; 4], dst: [u8; 4], id: u16, type_: u8) -> Frame {
    Frame::new(src, id, dst, id, L4::Icmp { type_ })
}

/// A packet of an IP protocol other than TCP/UDP/ICMP.
fn raw(src: [u8; 4], dst: [u8; 4], proto: u8) -> Frame {
    Frame::new(src, 0, dst, 0, L4::Raw { proto })
}

fn config(bpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut cfg: aya::maps::Array<&mut MapData, Config> =
        aya::maps::Array::try_from(bpf.map_mut(maps::CONFIG).unwrap())?;
    cfg.set(
        0,
        Config {
            uplink_ifindex: ifindex("tgt0")?,
            snat_ip: be32(HOST),
            pool_net: be32([10, 254, 0, 0]),
            pool_mask: be32([255, 255, 252, 0]),
            ..Config::default()
        },
        0,
    )?;
    let mut local: HashMap<&mut MapData, u32, u32> =
        HashMap::try_from(bpf.map_mut(maps::LOCAL_ADDRS).unwrap())?;
    for gw in [GW1, GW2, GW3] {
        local.insert(be32(gw), ADDR_GATEWAY, 0)?;
    }
    let mut links: HashMap<&mut MapData, LinkKey, u32> =
        HashMap::try_from(bpf.map_mut(maps::LINKS).unwrap())?;
    links.insert(
        LinkKey {
            from_id: 1,
            to_id: 2,
        },
        1,
        0,
    )?;

    let rule = |proto: u8, lo: u16, hi: u16, action: u8| PolicyRule {
        port_lo: lo,
        port_hi: hi,
        proto,
        action,
        _pad: 0,
    };
    let dns = rule(proto::UDP, 53, 53, POLICY_ALLOW);
    let range = rule(proto::TCP, 8000, 8100, POLICY_ALLOW);
    let deny = rule(0, 0, 0, POLICY_DENY);
    let web = rule(proto::TCP, 80, 80, POLICY_ALLOW);
    let https = rule(proto::TCP, 443, 443, POLICY_ALLOW);
    let sctp = rule(IPPROTO_SCTP, 0, 0, POLICY_ALLOW);
    let mut policy: LpmTrie<&mut MapData, PolicyKey, PolicyChain> =
        LpmTrie::try_from(bpf.map_mut(maps::POLICY).unwrap())?;
    for (id, net, prefix, rules) in [
        (2, [198, 51, 100, 0], 24, vec![dns, range, deny]),
        (2, PEER8, 32, vec![web, dns, range, deny]),
        (3, CLIENT, 32, vec![https, sctp]),
    ] {
        let mut chain = PolicyChain {
            len: rules.len() as u32,
            ..PolicyChain::default()
        };
        chain.rules[..rules.len()].copy_from_slice(&rules);
        let key = LpmKey::new(
            32 + prefix,
            PolicyKey {
                endpoint_id_be: u32::to_be(id),
                ip: be32(net),
            },
        );
        policy.insert(&key, chain, 0)?;
    }
    Ok(())
}

/// `EpStats` of container `id`, summed over CPUs.
fn ep_stats(bpf: &Ebpf, id: u32) -> anyhow::Result<EpStats> {
    let stats: PerCpuArray<&MapData, EpStats> =
        PerCpuArray::try_from(bpf.map(maps::EP_STATS).unwrap())?;
    let mut sum = EpStats::default();
    for s in stats.get(&id, 0)?.iter() {
        sum.rx_packets += s.rx_packets;
        sum.rx_bytes += s.rx_bytes;
        sum.tx_packets += s.tx_packets;
        sum.tx_bytes += s.tx_bytes;
        for (d, x) in sum.drops.iter_mut().zip(s.drops) {
            *d += x;
        }
    }
    Ok(sum)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn masquerade_and_filter_table() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    enter_test_netns()?;
    let mut bpf = Ebpf::load(&obj)?;
    fill_maps(&mut bpf)?;
    config(&mut bpf)?;
    for p in ["from_uplink", "from_container", "to_container"] {
        load_classifier(&mut bpf, p)?;
    }
    let b = &bpf;
    let redirected = |f: Frame| Want::Frame(TC_ACT_REDIRECT, f.forwarded());
    let ok = |f: Frame| Want::Frame(TC_ACT_OK, f);

    // ---- masquerade: TCP ----
    let syn = Frame::tcp(C1, 40000, CLIENT, 443, TCP_SYN);
    let out = run(b, "from_container", "tgh1", &syn.build())?.1;
    let p = nat_port("masq SYN", &out);
    step(
        b,
        "masquerade: a container's SYN to the outside leaves as snat_ip:port, redirected",
        "from_container",
        &syn,
        redirected(syn.clone().with_src(HOST, p)),
    )?;
    step(
        b,
        "masquerade: the SYN-ACK is translated back to the container",
        "from_uplink",
        &Frame::tcp(CLIENT, 443, HOST, p, TCP_SYN | TCP_ACK),
        redirected(Frame::tcp(CLIENT, 443, C1, 40000, TCP_SYN | TCP_ACK)),
    )?;
    step(
        b,
        "masquerade: the next packet keeps the same port",
        "from_container",
        &Frame::tcp(C1, 40000, CLIENT, 443, TCP_ACK),
        redirected(Frame::tcp(HOST, p, CLIENT, 443, TCP_ACK)),
    )?;

    // ---- masquerade: UDP ----
    let dgram = Frame::udp(C1, 5000, CLIENT, 53);
    let q = nat_port(
        "masq UDP",
        &run(b, "from_container", "tgh1", &dgram.build())?.1,
    );
    step(
        b,
        "masquerade: UDP",
        "from_container",
        &dgram,
        redirected(dgram.clone().with_src(HOST, q)),
    )?;
    step(
        b,
        "masquerade: UDP reply translated back",
        "from_uplink",
        &Frame::udp(CLIENT, 53, HOST, q),
        redirected(Frame::udp(CLIENT, 53, C1, 5000)),
    )?;

    // ---- masquerade: ICMP echo ----
    let ping = echo(C1, CLIENT, 7, 8);
    let r = nat_port(
        "masq echo",
        &run(b, "from_container", "tgh1", &ping.build())?.1,
    );
    step(
        b,
        "masquerade: ping leaves as snat_ip with a NAT echo id",
        "from_container",
        &ping,
        redirected(echo(HOST, CLIENT, r, 8)),
    )?;
    step(
        b,
        "masquerade: echo reply translated back (address and id)",
        "from_uplink",
        &echo(CLIENT, HOST, r, 0),
        redirected(echo(CLIENT, C1, 7, 0)),
    )?;
    step(
        b,
        "an echo request from outside with that same id is not taken for its reply",
        "from_uplink",
        &echo(CLIENT, HOST, r, 8),
        Want::Same(TC_ACT_OK),
    )?;

    // ---- ICMP echo both ways between two addresses with the same identifier ----
    step(
        b,
        "the client pings c1 (routed) with id 55: passes, tracked",
        "from_uplink",
        &echo(CLIENT, C1, 55, 8),
        Want::Same(TC_ACT_OK),
    )?;
    let ping55 = echo(C1, CLIENT, 55, 8);
    let r55 = nat_port(
        "masq echo 55",
        &run(b, "from_container", "tgh1", &ping55.build())?.1,
    );
    step(
        b,
        "c1 pings the client with id 55 too: a flow of its own, masqueraded",
        "from_container",
        &ping55,
        redirected(echo(HOST, CLIENT, r55, 8)),
    )?;
    step(
        b,
        "c1's echo reply to the client's ping still is that flow's reply (not dropped)",
        "from_container",
        &echo(C1, CLIENT, 55, 0),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "the client's echo reply to c1's ping is translated back",
        "from_uplink",
        &echo(CLIENT, HOST, r55, 0),
        redirected(echo(CLIENT, C1, 55, 0)),
    )?;
    step(
        b,
        "the client's next echo request to c1 still passes as its own flow",
        "from_uplink",
        &echo(CLIENT, C1, 55, 8),
        Want::Same(TC_ACT_OK),
    )?;

    // ---- ICMP errors about masqueraded flows ----
    step(
        b,
        "port unreachable about a masqueraded UDP flow goes to the container (outer dst, quoted src)",
        "from_uplink",
        &icmp_error(CLIENT, HOST, 3, 3, quote(&Frame::udp(HOST, q, CLIENT, 53).forwarded(), None)),
        ok(icmp_error(CLIENT, C1, 3, 3, quote(&dgram.clone().forwarded(), None))),
    )?;
    step(
        b,
        "fragmentation needed quoting 8 bytes of a masqueraded TCP segment",
        "from_uplink",
        &icmp_error(
            PEER9,
            HOST,
            3,
            4,
            quote(
                &Frame::tcp(HOST, p, CLIENT, 443, TCP_ACK).forwarded(),
                Some(28),
            ),
        ),
        ok(icmp_error(
            PEER9,
            C1,
            3,
            4,
            quote(
                &Frame::tcp(C1, 40000, CLIENT, 443, TCP_ACK).forwarded(),
                Some(28),
            ),
        )),
    )?;
    step(
        b,
        "time exceeded about a masqueraded ping: quoted echo id restored",
        "from_uplink",
        &icmp_error(
            PEER9,
            HOST,
            11,
            0,
            quote(&echo(HOST, CLIENT, r, 8).forwarded(), None),
        ),
        ok(icmp_error(
            PEER9,
            C1,
            11,
            0,
            quote(&ping.clone().forwarded(), None),
        )),
    )?;
    step(
        b,
        "port unreachable from c1 about a masqueraded flow's reply leaves as snat_ip, the \
         quoted destination back to snat_ip:port",
        "from_container",
        &icmp_error(
            C1,
            CLIENT,
            3,
            3,
            quote(&Frame::udp(CLIENT, 53, C1, 5000).forwarded(), None),
        ),
        redirected(icmp_error(
            HOST,
            CLIENT,
            3,
            3,
            quote(&Frame::udp(CLIENT, 53, HOST, q).forwarded(), None),
        )),
    )?;
    step(
        b,
        "an ICMP error about no known flow passes untouched",
        "from_uplink",
        &icmp_error(
            CLIENT,
            HOST,
            3,
            3,
            quote(&Frame::udp(HOST, 1111, CLIENT, 53), None),
        ),
        Want::Same(TC_ACT_OK),
    )?;

    // ---- what masquerade leaves alone ----
    step(
        b,
        "no masquerade to a pool address",
        "from_container",
        &Frame::tcp(C1, 40001, [10, 254, 1, 50], 80, TCP_SYN),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "no masquerade to the container's gateway",
        "from_container",
        &Frame::udp(C1, 40002, GW1, 53),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "no masquerade to the node's uplink address",
        "from_container",
        &Frame::tcp(C1, 40003, HOST, 22, TCP_SYN),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "port map: inbound SYN DNATed as before",
        "from_uplink",
        &Frame::tcp(CLIENT, 41000, HOST, 8080, TCP_SYN),
        redirected(Frame::tcp(CLIENT, 41000, C1, 80, TCP_SYN)),
    )?;
    step(
        b,
        "port map: the reply keeps the published port (not masqueraded)",
        "from_container",
        &Frame::tcp(C1, 80, CLIENT, 41000, TCP_SYN | TCP_ACK),
        redirected(Frame::tcp(HOST, 8080, CLIENT, 41000, TCP_SYN | TCP_ACK)),
    )?;

    // ---- conntrack expiry ----
    let dgram2 = Frame::udp(C1, 5001, CLIENT, 53);
    run(b, "from_container", "tgh1", &dgram2.build())?;
    let key = CtKey {
        saddr: be32(C1),
        daddr: be32(CLIENT),
        sport: be16(5001),
        dport: be16(53),
        proto: proto::UDP,
        _pad: [0; 3],
    };
    let bogus = [192, 0, 2, 99];
    let set_orig = |bpf: &mut Ebpf, last_seen_ns: u64| -> anyhow::Result<u16> {
        let mut ct: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(bpf.map_mut(maps::CONNTRACK).unwrap())?;
        let mut e = ct.get(&key, 0)?;
        e.nat_saddr = be32(bogus);
        e.last_seen_ns = last_seen_ns;
        ct.insert(key, e, 0)?;
        Ok(u16::from_be(e.nat_sport))
    };
    let q2 = set_orig(&mut bpf, monotonic_ns())?;
    step(
        &bpf,
        "a live UDP entry is used as it stands (doctored to a bogus source)",
        "from_container",
        &dgram2,
        redirected(dgram2.clone().with_src(bogus, q2)),
    )?;
    set_orig(&mut bpf, 1)?;
    let out = run(&bpf, "from_container", "tgh1", &dgram2.build())?.1;
    let q3 = nat_port("re-created flow", &out);
    assert_eq!(
        out,
        dgram2.clone().with_src(HOST, q3).forwarded().build(),
        "an expired UDP entry is treated as absent: the flow is masqueraded afresh"
    );
    println!("ok: an expired UDP entry is treated as new");
    let b = &bpf;

    // ---- anti-spoofing ----
    let spoofed = Frame::tcp(C2, 40004, CLIENT, 443, TCP_SYN).build();
    let (ret, _) = run(b, "from_container", "tgh1", &spoofed)?;
    assert_eq!(
        ret, TC_ACT_SHOT,
        "a packet from tgh1 with c2's source is dropped"
    );
    println!("ok: spoofed source dropped");

    // ---- ICC and links ----
    step(
        b,
        "ICC off: c2 may not open a connection to c1 (no link c2 -> c1)",
        "from_container",
        &Frame::tcp(C2, 40005, C1, 80, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "link c1 -> c2: c1 may connect to c2, untouched (no NAT)",
        "from_container",
        &Frame::tcp(C1, 40006, C2, 81, TCP_SYN),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "link c1 -> c2: c2's reply passes (conntrack), though c2 -> c1 is not linked",
        "from_container",
        &Frame::tcp(C2, 81, C1, 40006, TCP_SYN | TCP_ACK),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "ICC off: a published port of c1 still works for c2 (hairpin DNAT)",
        "from_container",
        &Frame::tcp(C2, 40007, HOST, 8080, TCP_SYN),
        ok(Frame::tcp(C2, 40007, C1, 80, TCP_SYN)),
    )?;
    step(
        b,
        "ICC off: c3 -> c1 dropped",
        "from_container",
        &Frame::tcp(C3, 40008, C1, 80, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;

    // ---- egress policy (c2) ----
    let masq_ok = |what: &str, f: Frame| -> anyhow::Result<()> {
        let (ret, out) = run(
            b,
            "from_container",
            default_dev("from_container", &f.build()),
            &f.build(),
        )?;
        anyhow::ensure!(
            ret == TC_ACT_REDIRECT,
            "{what}: retval {ret}, want redirect"
        );
        let port = nat_port(what, &out);
        let want = f.with_src(HOST, port).forwarded().build();
        anyhow::ensure!(
            out == want,
            "{what}:\n   got  {}\n   want {}",
            hex(&out),
            hex(&want)
        );
        assert_checksums_valid(what, &out);
        println!("ok: {what}");
        Ok(())
    };
    masq_ok(
        "policy: /32 rule allows c2 -> .8:80/tcp (longest prefix)",
        Frame::tcp(C2, 40010, PEER8, 80, TCP_SYN),
    )?;
    step(
        b,
        "policy: c2 -> .8:81/tcp falls to the /32 chain's deny",
        "from_container",
        &Frame::tcp(C2, 40011, PEER8, 81, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "policy: c2 -> .9:80/tcp: the /24 chain has no port-80 allow, its deny wins",
        "from_container",
        &Frame::tcp(C2, 40012, PEER9, 80, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;
    masq_ok(
        "policy: c2 -> .9:53/udp allowed by the explicit-port rule before the deny",
        Frame::udp(C2, 40013, PEER9, 53),
    )?;
    masq_ok(
        "policy: c2 -> .9:8050/tcp inside an allowed port range",
        Frame::tcp(C2, 40014, PEER9, 8050, TCP_SYN),
    )?;
    step(
        b,
        "policy: c2 -> .9:8101/tcp just outside the range: denied",
        "from_container",
        &Frame::tcp(C2, 40015, PEER9, 8101, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "policy: ping c2 -> .9: port rules do not match ICMP, the any-port deny does",
        "from_container",
        &echo(C2, PEER9, 9, 8),
        Want::Same(TC_ACT_SHOT),
    )?;

    // ---- egress deny by default (c3) ----
    masq_ok(
        "egress deny: c3 -> client:443/tcp allowed by its rule",
        Frame::tcp(C3, 40020, CLIENT, 443, TCP_SYN),
    )?;
    step(
        b,
        "egress deny: c3 -> client:444/tcp matches no rule: default deny",
        "from_container",
        &Frame::tcp(C3, 40021, CLIENT, 444, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "egress deny: c3 -> .9 has no chain at all: default deny",
        "from_container",
        &Frame::udp(C3, 40022, PEER9, 53),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "an inbound SYN routed straight to c3's IP passes untouched and is tracked",
        "from_uplink",
        &Frame::tcp(CLIENT, 45000, C3, 8000, TCP_SYN),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "c3's answer is a reply: neither masqueraded nor judged by its deny stance",
        "from_container",
        &Frame::tcp(C3, 8000, CLIENT, 45000, TCP_SYN | TCP_ACK),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "a mid-flow TCP segment with no conntrack entry to the outside is dropped",
        "from_container",
        &Frame::tcp(C1, 40030, CLIENT, 9999, TCP_ACK),
        Want::Same(TC_ACT_SHOT),
    )?;

    // ---- protocols conntrack does not track: judged per packet ----
    step(
        b,
        "SCTP c1 -> outside: no rule, default allow: passes untouched (not masqueraded)",
        "from_container",
        &raw(C1, CLIENT, IPPROTO_SCTP),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "GRE c1 -> c2: allowed by the link c1 -> c2",
        "from_container",
        &raw(C1, C2, IPPROTO_GRE),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "GRE c2 -> c1: ICC off and no link: dropped",
        "from_container",
        &raw(C2, C1, IPPROTO_GRE),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "SCTP c2 -> .9: the /24 chain's any-protocol deny drops it",
        "from_container",
        &raw(C2, PEER9, IPPROTO_SCTP),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "ICMP timestamp request c2 -> .9 (neither echo nor error): the any-protocol deny",
        "from_container",
        &echo(C2, PEER9, 9, 13),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "SCTP c3 -> client: allowed by c3's protocol-specific rule",
        "from_container",
        &raw(C3, CLIENT, IPPROTO_SCTP),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "GRE c3 -> client: no rule matches: c3's default deny",
        "from_container",
        &raw(C3, CLIENT, IPPROTO_GRE),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "an ICMP error c2 sends where its policy denies everything is an answer: passes",
        "from_container",
        &icmp_error(
            C2,
            PEER9,
            3,
            3,
            quote(&Frame::udp(PEER9, 53, C2, 4444), None),
        ),
        Want::Same(TC_ACT_OK),
    )?;

    // ---- to_container ----
    step(
        b,
        "to_container counts and passes",
        "to_container",
        &Frame::tcp(CLIENT, 443, C1, 40000, TCP_ACK),
        Want::Same(TC_ACT_OK),
    )?;

    // ---- drops in from_uplink count against the container ----
    // With c1's neighbour entry known the FIB lookup succeeds and a translated packet takes
    // the fast path into c1, which polices c1's ingress bucket; an empty bucket drops it.
    ip_cmd("neigh replace 10.254.0.2 lladdr 02:00:00:00:00:cc dev tgh1 nud permanent")?;
    let mut rl: aya::maps::Array<&mut MapData, RateLimit> =
        aya::maps::Array::try_from(bpf.map_mut(maps::RATELIMIT).unwrap())?;
    rl.set(
        1,
        RateLimit {
            ingress: TokenBucket::new(8, 1),
            ..RateLimit::default()
        },
        0,
    )?;
    let b = &bpf;
    let (ret, _) = run(
        b,
        "from_uplink",
        "tgt0",
        &Frame::tcp(CLIENT, 443, HOST, p, TCP_ACK).build(),
    )?;
    assert_eq!(
        ret, TC_ACT_SHOT,
        "a masqueraded flow's reply over c1's ingress limit on the fast path is dropped"
    );
    println!("ok: ingress limit on the fast path from the uplink drops");

    check_filter_stats(b)
}

fn check_filter_stats(bpf: &Ebpf) -> anyhow::Result<()> {
    let drops = |id: u32, r: DropReason| -> anyhow::Result<u64> {
        Ok(ep_stats(bpf, id)?.drops[r as usize])
    };
    assert_eq!(drops(1, DropReason::Spoof)?, 1, "c1 spoof drops");
    assert_eq!(
        drops(1, DropReason::Policy)?,
        1,
        "c1 policy drops (mid-flow ACK)"
    );
    assert_eq!(drops(2, DropReason::Icc)?, 2, "c2 ICC drops (TCP, GRE)");
    assert_eq!(
        drops(2, DropReason::Policy)?,
        6,
        "c2 policy drops (4 tracked, SCTP, ICMP timestamp)"
    );
    assert_eq!(drops(3, DropReason::Icc)?, 1, "c3 ICC drops");
    assert_eq!(
        drops(3, DropReason::Policy)?,
        3,
        "c3 policy drops (2 tracked, GRE)"
    );
    assert_eq!(
        drops(1, DropReason::RateLimit)?,
        1,
        "c1 ratelimit drops (from_uplink, counted against c1)"
    );
    let c1 = ep_stats(bpf, 1)?;
    assert_eq!(
        c1.rx_packets, 2,
        "c1 rx (to_container, and the fast path into it)"
    );
    assert!(
        c1.tx_packets >= 15 && c1.tx_bytes >= c1.tx_packets * 42,
        "c1 tx counted: {c1:?}"
    );

    let counters: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(bpf.map(maps::COUNTERS).unwrap())?;
    let total = |idx: u32| -> anyhow::Result<u64> { Ok(counters.get(&idx, 0)?.iter().sum()) };
    for (idx, name, want) in [
        (CNT_DROP_SPOOF, "drop_spoof", 1),
        (CNT_DROP_ICC, "drop_icc", 3),
        (CNT_DROP_POLICY, "drop_policy", 10),
        (CNT_DROP_RATELIMIT, "drop_ratelimit", 1),
        (CNT_ICMP_ERR_XLATED, "icmp_err_xlated", 4),
        (CNT_REVSNAT, "revsnat", 5),
    ] {
        assert_eq!(total(idx)?, want, "counter {name}");
    }
    // c1: TCP, UDP, echo x2, UDP (x2, once re-created); c2: 3; c3: 1.
    assert_eq!(total(CNT_SNAT_FLOWS)?, 10, "counter snat_flows");
    assert!(total(CNT_CT_CREATED)? >= 2 * 10, "counter ct_created");

    let ct: HashMap<&MapData, CtKey, CtEntry> =
        HashMap::try_from(bpf.map(maps::CONNTRACK).unwrap())?;
    let orig = ct.get(
        &CtKey {
            saddr: be32(C1),
            daddr: be32(CLIENT),
            sport: be16(40000),
            dport: be16(443),
            proto: proto::TCP,
            _pad: [0; 3],
        },
        0,
    )?;
    assert_eq!(
        orig.flags,
        CT_SNAT | CT_MASQ | CT_SEEN_REPLY,
        "masq orig flags"
    );
    assert_eq!(orig.nat_saddr, be32(HOST));
    assert_eq!(orig.endpoint_id, 1);
    let reply = ct.get(
        &CtKey {
            saddr: be32(CLIENT),
            daddr: be32(HOST),
            sport: be16(443),
            dport: orig.nat_sport,
            proto: proto::TCP,
            _pad: [0; 3],
        },
        0,
    )?;
    assert_eq!(
        reply.flags,
        CT_DNAT | CT_MASQ | CT_REPLY | CT_SEEN_REPLY,
        "masq reply flags"
    );
    assert_eq!((reply.nat_daddr, reply.nat_dport), (be32(C1), be16(40000)));
    Ok(())
}

/// Runs `ip ARGS` in the calling thread's namespace.
fn ip_cmd(args: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(args.split(' '))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The inbound fast path addresses frames with the MACs the node's neighbour table has for the
/// container (and its veth's own), reuses them for a second without a FIB lookup, then follows
/// a changed neighbour entry.
#[test]
fn fast_path_macs_follow_the_neighbour_table() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    enter_test_netns()?;
    let mut bpf = Ebpf::load(&obj)?;
    fill_maps(&mut bpf)?;
    config(&mut bpf)?;
    load_classifier(&mut bpf, "from_uplink")?;
    let host_mac: Vec<u8> = ip_cmd("-br link show tgh1")?
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    let first = [0x02, 0, 0, 0, 0x01, 0x02];
    let second = [0x02, 0, 0, 0, 0x01, 0x03];
    ip_cmd("neigh replace 10.254.0.2 lladdr 02:00:00:00:01:02 dev tgh1")?;
    let send = |sport: u16| -> anyhow::Result<Vec<u8>> {
        let syn = Frame::tcp(CLIENT, sport, HOST, 8080, TCP_SYN).build();
        let (rc, out) = run(&bpf, "from_uplink", "tgt0", &syn)?;
        anyhow::ensure!(rc == TC_ACT_REDIRECT, "retval {rc}, want redirect");
        Ok(out)
    };
    let out = send(42000)?;
    assert_eq!(
        out[0..6],
        first,
        "destination: the container's MAC from the neighbour table"
    );
    assert_eq!(out[6..12], host_mac[..], "source: the host veth's MAC");
    ip_cmd("neigh replace 10.254.0.2 lladdr 02:00:00:00:01:03 dev tgh1")?;
    assert_eq!(
        send(42001)?[0..6],
        first,
        "within a second: the cached answer"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        send(42002)?[0..6],
        second,
        "after a second: the neighbour table again"
    );
    Ok(())
}

/// Per-packet cost of the hot paths, measured by the kernel (`BPF_PROG_TEST_RUN`'s duration,
/// one fresh frame per run, mean of `PER_PACKET_RUNS`). Not a pass/fail test: run it by hand,
/// `cargo test -p tests --test prog_test_run per_packet_cost -- --ignored --nocapture`, to
/// compare datapath builds (the figures are quoted in docs/benchmarks.md).
#[test]
#[ignore]
fn per_packet_cost() -> anyhow::Result<()> {
    const PER_PACKET_RUNS: u32 = 20_000;
    let Some(obj) = object() else { return Ok(()) };
    enter_test_netns()?;
    // Resolved neighbours, as on a live node: the inbound fast path needs the container's MAC.
    for args in [
        "neigh add 10.254.0.2 lladdr 02:00:00:00:01:02 dev tgh1",
        "neigh add 198.51.100.7 lladdr 02:00:00:00:00:07 dev tgt0",
    ] {
        ip_cmd(args)?;
    }
    // Loaded as the daemon loads it: with the programs' debug logs switched off (the agent's
    // loader does the same unless the daemon itself logs at debug level).
    let mut bpf = EbpfLoader::new()
        .override_global("AYA_LOG_LEVEL", &3u8, false)
        .load(&obj)?;
    fill_maps(&mut bpf)?;
    config(&mut bpf)?;
    load_classifier(&mut bpf, "from_uplink")?;
    load_classifier(&mut bpf, "from_container")?;
    let mean_ns = |prog: &str, dev: &str, frame: &dyn Fn(u32) -> Vec<u8>| -> anyhow::Result<f64> {
        let p: &SchedClassifier = bpf.program(prog).unwrap().try_into()?;
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex(dev)?.to_ne_bytes());
        let mut total = 0u64;
        for i in 0..PER_PACKET_RUNS {
            let input = frame(i);
            let mut out = vec![0u8; input.len() + 256];
            let res = p.test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })?;
            total += res.duration.as_nanos() as u64;
        }
        Ok(total as f64 / f64::from(PER_PACKET_RUNS))
    };
    // Open one port-mapped flow (SYN in, SYN-ACK out), then time its packets both ways.
    let syn = Frame::tcp(CLIENT, 40000, HOST, 8080, TCP_SYN).build();
    run(&bpf, "from_uplink", "tgt0", &syn)?;
    let synack = Frame::tcp(C1, 80, CLIENT, 40000, TCP_SYN | TCP_ACK).build();
    run(&bpf, "from_container", "tgh1", &synack)?;
    let inbound = Frame::tcp(CLIENT, 40000, HOST, 8080, TCP_ACK).build();
    let reply = Frame::tcp(C1, 80, CLIENT, 40000, TCP_ACK).build();
    let new_syn = |i: u32| Frame::tcp(CLIENT, 1024 + (i % 60000) as u16, HOST, 8080, TCP_SYN);
    let arp = Frame {
        ethertype: ETH_P_ARP,
        ..Frame::udp(CLIENT, 1, HOST, 2)
    }
    .build();
    let rows = [
        (
            "not IPv4 (ARP), passed untouched: the floor",
            mean_ns("from_uplink", "tgt0", &|_| arp.clone())?,
        ),
        (
            "port map, established, inbound",
            mean_ns("from_uplink", "tgt0", &|_| inbound.clone())?,
        ),
        (
            "port map, established, reply",
            mean_ns("from_container", "tgh1", &|_| reply.clone())?,
        ),
        (
            "port map, new flow (SYN)",
            mean_ns("from_uplink", "tgt0", &|i| new_syn(i).build())?,
        ),
    ];
    for (what, ns) in rows {
        println!("per-packet: {what}: {ns:.0} ns");
    }
    Ok(())
}
