//! The harness shared by the `BPF_PROG_TEST_RUN` tests (`prog_*.rs`): frames built with
//! checksums computed in full, the datapath object, a private network namespace per test
//! thread, maps filled with one topology, and a step runner that compares whole frames.
//!
//! ```text
//!  client 198.51.100.7 --> [uplink] from_uplink --> node 192.0.2.10 (local) --> c1 10.254.0.2 (gw .1)
//!                                                   192.0.2.20 (not local,    c2 10.254.0.6 (gw .5)
//!                                                   specific map only)
//!  maps: {0, 8080/tcp} -> c1:80   {0, 5353/udp} -> c1:53   {192.0.2.20, 9090/tcp} -> c2:90
//! ```
//! Needs root (CAP_BPF + CAP_NET_ADMIN) and the eBPF object built at
//! `target/ebpf/bpfel-unknown-none/release/datapath` (by `cargo build -p tollgate` or the
//! command in `agent/build.rs`); the tests skip with a printed reason otherwise. Maps are not
//! pinned: nothing is left in bpffs, and the namespace dies with the thread.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test file uses its own part of the shared harness"
)]

pub use std::path::PathBuf;

pub use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        HashMap, Map, MapData, PerCpuArray,
    },
    programs::{CgroupSockAddr, SchedClassifier, TestRun, TestRunOptions},
    Ebpf, EbpfLoader,
};
pub use datapath_common::{
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
        CNT_CT_CREATED, CNT_DNAT_HAIRPIN, CNT_DNAT_UPLINK, CNT_DROP_CT_INVALID, CNT_DROP_ICC,
        CNT_DROP_POLICY, CNT_DROP_RATELIMIT, CNT_DROP_SPOOF, CNT_ICMP_ERR_XLATED,
        CNT_PASS_FRAGMENT, CNT_PASS_MALFORMED, CNT_PASS_NOT_IPV4, CNT_REVNAT, CNT_REVSNAT,
        CNT_SNAT_FLOWS,
    },
};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const CLIENT: [u8; 4] = [198, 51, 100, 7];
pub const HOST: [u8; 4] = [192, 0, 2, 10];
pub const HOST_SPECIFIC: [u8; 4] = [192, 0, 2, 20];
pub const C1: [u8; 4] = [10, 254, 0, 2];
pub const GW1: [u8; 4] = [10, 254, 0, 1];
pub const C2: [u8; 4] = [10, 254, 0, 6];
pub const GW2: [u8; 4] = [10, 254, 0, 5];
/// Egress deny by default (`EP_EGRESS_DENY`).
pub const C3: [u8; 4] = [10, 254, 0, 10];
pub const GW3: [u8; 4] = [10, 254, 0, 9];
/// A client the test namespace has no route to.
pub const UNROUTED: [u8; 4] = [203, 0, 113, 9];
pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
/// IP protocols conntrack does not track.
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_SCTP: u8 = 132;
/// IPv4 options used by the IHL case: NOP, NOP, NOP, EOL (one 32-bit word).
pub const IP_OPTIONS: &[u8] = &[1, 1, 1, 0];
/// The longest options (IHL 15): 39 NOPs and an EOL.
pub const IP_OPTIONS_MAX: &[u8] = &[
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 0,
];

// ---------------------------------------------------------------------------------------------
// Frame builder
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
pub enum L4 {
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
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ethertype: u16,
    pub src: [u8; 4],
    pub sport: u16,
    pub dst: [u8; 4],
    pub dport: u16,
    pub l4: L4,
    pub ip_options: &'static [u8],
    /// The IPv4 `frag_off` field (flags and offset), host order.
    pub frag_off: u16,
    /// Overrides the IHL nibble (for malformed headers).
    pub ihl: Option<u8>,
    /// Cuts the frame to this many bytes (for truncated headers).
    pub truncate: Option<usize>,
    pub ttl: u8,
}

impl Frame {
    pub fn new(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, l4: L4) -> Self {
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

    pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Self {
        Self::new(src, sport, dst, dport, L4::Tcp { flags })
    }

    pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Self {
        Self::new(src, sport, dst, dport, L4::Udp { zero_csum: false })
    }

    /// The same frame with its source rewritten.
    pub fn with_src(mut self, ip: [u8; 4], port: u16) -> Self {
        self.src = ip;
        self.sport = port;
        self
    }

    /// The same frame with its destination rewritten.
    pub fn with_dst(mut self, ip: [u8; 4], port: u16) -> Self {
        self.dst = ip;
        self.dport = port;
        self
    }

    /// The same frame one router hop later.
    pub fn forwarded(mut self) -> Self {
        self.ttl -= 1;
        self
    }

    pub fn with_macs_swapped(mut self) -> Self {
        std::mem::swap(&mut self.src_mac, &mut self.dst_mac);
        self
    }

    pub fn build(&self) -> Vec<u8> {
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

pub fn pseudo_header(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize) -> Vec<u8> {
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
pub fn assert_checksums_valid(what: &str, frame: &[u8]) {
    assert_ipv4_checksums_valid(what, &frame[14..]);
}

pub fn assert_ipv4_checksums_valid(what: &str, ip: &[u8]) {
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

pub enum Expect {
    /// Passed byte for byte untouched with TC_ACT_OK.
    Untouched,
    /// Rewritten into this frame, with this return value.
    Rewritten { retval: u32, output: Frame },
}

pub fn object() -> Option<Vec<u8>> {
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
        Ok(bytes) => {
            // Its kfunc calls resolved as the agent's loader resolves them; `load` and
            // `loader` set the kernel layout it needs.
            let patched = datapath_common::kfunc::patch(&bytes).expect("resolving kfunc calls");
            let _ = SKB_LAYOUT.set(patched.layout);
            Some(patched.object)
        }
        Err(e) => {
            eprintln!(
                "skipped: eBPF object {} not readable ({e}); build it first (agent/build.rs)",
                path.display()
            );
            None
        }
    }
}

/// The running kernel's `sk_buff` layout, found by `object`.
static SKB_LAYOUT: std::sync::OnceLock<datapath_common::kfunc::SkbLayout> =
    std::sync::OnceLock::new();

/// A loader for an object from `object`, with the globals the agent's loader sets.
pub fn loader() -> EbpfLoader<'static> {
    use datapath_common::kfunc::{GLOBAL_IP_SUMMED_OFF, GLOBAL_IP_SUMMED_SHIFT};
    let layout = SKB_LAYOUT.get().expect("object() first");
    let mut l = EbpfLoader::new();
    // Not `must_exist`: an older build's object (`TOLLGATE_EBPF_OBJ`) has neither.
    l.override_global(GLOBAL_IP_SUMMED_OFF, &layout.ip_summed_off, false)
        .override_global(GLOBAL_IP_SUMMED_SHIFT, &layout.ip_summed_shift, false);
    l
}

/// Loads an object from `object` (`loader`).
pub fn load(obj: &[u8]) -> anyhow::Result<Ebpf> {
    Ok(loader().load(obj)?)
}

/// Moves this test's thread (only) into a new network namespace, the one BPF_PROG_TEST_RUN
/// then runs in, so the datapath's FIB lookups see a known table: an uplink veth with the
/// client subnet, one veth per container with its /30, forwarding on, nothing to `UNROUTED`.
/// The namespace goes away with the thread.
pub fn enter_test_netns() -> anyhow::Result<()> {
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

pub fn be32(ip: [u8; 4]) -> u32 {
    u32::from_ne_bytes(ip)
}

pub fn be16(port: u16) -> u16 {
    port.to_be()
}

/// Fills the maps with the topology of the module docs.
pub fn fill_maps(bpf: &mut Ebpf) -> anyhow::Result<()> {
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
            net: 0,
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
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(i != 0, "no interface {name}");
    Ok(i)
}

/// The device a case's frame arrives on: the uplink for `from_uplink`; for the veth hooks,
/// the host veth of the container that sent (`from_container`) or receives (`to_container`)
/// it, by address (tgh1 when the frame has none).
pub fn default_dev(prog: &str, input: &[u8]) -> &'static str {
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
pub fn run(bpf: &Ebpf, prog: &str, dev: &str, input: &[u8]) -> anyhow::Result<(u32, Vec<u8>)> {
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

/// What `skb->ip_summed` a `BPF_PROG_TEST_RUN` skb arrives with (aya 0.14's
/// `TestRunOptions` sets no skb flags, so `run_summed` makes the call itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpSummed {
    /// CHECKSUM_NONE, as `run` gives.
    None,
    /// CHECKSUM_COMPLETE (`BPF_F_TEST_SKB_CHECKSUM_COMPLETE`, Linux 6.11): `skb->csum` holds
    /// the sum of the frame's bytes from the IP header on, as from a NIC that sums what it
    /// receives, and the kernel fails the run with EBADMSG if the program leaves `skb->csum`
    /// no longer matching the bytes it wrote.
    Complete,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_SKB_CHECKSUM_COMPLETE: u32 = 1 << 2;

/// `union bpf_attr` as `BPF_PROG_TEST_RUN` reads it.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `run` on an skb that arrives as `summed` says.
pub fn run_summed(
    bpf: &Ebpf,
    prog: &str,
    dev: &str,
    input: &[u8],
    summed: IpSummed,
) -> anyhow::Result<(u32, Vec<u8>)> {
    let p: &SchedClassifier = bpf.program(prog).unwrap().try_into()?;
    run_program_summed(p, ifindex(dev)?, input, summed)
        .map_err(|e| anyhow::anyhow!("BPF_PROG_TEST_RUN of {prog} ({summed:?}): {e}"))
}

/// `run_summed` of a loaded program on a frame arriving on `ifindex`; the error is the
/// kernel's errno (EBADMSG: the program left a CHECKSUM_COMPLETE skb's `csum` stale).
pub fn run_program_summed(
    p: &SchedClassifier,
    ifindex: u32,
    input: &[u8],
    summed: IpSummed,
) -> std::io::Result<(u32, Vec<u8>)> {
    use std::os::fd::{AsFd, AsRawFd};
    let fd = p.fd().map_err(std::io::Error::other)?.as_fd().as_raw_fd();
    // struct __sk_buff up to and including `ifindex` (offset 40), as in `run`.
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let len = |n: usize| u32::try_from(n).map_err(std::io::Error::other);
    let mut out = vec![0u8; input.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(fd).map_err(std::io::Error::other)?,
        data_size_in: len(input.len())?,
        data_size_out: len(out.len())?,
        data_in: input.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: len(ctx.len())?,
        ctx_in: ctx.as_ptr() as u64,
        flags: match summed {
            IpSummed::None => 0,
            IpSummed::Complete => BPF_F_TEST_SKB_CHECKSUM_COMPLETE,
        },
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` points at live buffers of the sizes it states, for the call's duration.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok((attr.retval, out))
}

pub fn load_classifier<'a>(
    bpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut SchedClassifier> {
    if name == "from_container" {
        load_tail_call_targets(bpf)?;
    }
    let prog: &mut SchedClassifier = bpf
        .program_mut(name)
        .ok_or_else(|| anyhow::anyhow!("program {name} missing from the object"))?
        .try_into()?;
    prog.load()?;
    Ok(prog)
}

/// Loads the programs `from_container` tail-calls into and puts them in `TG_PROGS`, as the
/// agent's loader does (once: a retried load finds them there).
pub fn load_tail_call_targets(bpf: &mut Ebpf) -> anyhow::Result<()> {
    // An older build's object (`TOLLGATE_EBPF_OBJ`) has none.
    let Some(prog) = bpf.program_mut("from_container_new") else {
        return Ok(());
    };
    let prog: &mut SchedClassifier = prog.try_into()?;
    if prog.fd().is_err() {
        prog.load()?;
    }
    let fd = prog.fd()?.try_clone()?;
    let mut slots = aya::maps::ProgramArray::try_from(
        bpf.map_mut(maps::PROGS)
            .ok_or_else(|| anyhow::anyhow!("map {} missing", maps::PROGS))?,
    )?;
    slots.set(maps::PROG_SLOT_CONTAINER_NEW, &fd, 0)?;
    Ok(())
}

/// The important check: the verifier accepts every program, and every map exists under its
/// shared name.

pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join("")
}

pub const PEER8: [u8; 4] = [198, 51, 100, 8];
pub const PEER9: [u8; 4] = [198, 51, 100, 9];
pub const TC_ACT_SHOT: u32 = 2;
pub const NAT_MIN: u16 = datapath_common::config::NAT_PORT_MIN_DEFAULT;
pub const NAT_MAX: u16 = datapath_common::config::NAT_PORT_MAX_DEFAULT;

/// What a step expects.
pub enum Want {
    /// This verdict, frame untouched.
    Same(u32),
    /// This verdict and exactly this frame (checksums also verified by recomputation).
    Frame(u32, Frame),
}

pub fn step(
    bpf: &Ebpf,
    what: &str,
    prog: &str,
    input: &Frame,
    want: Want,
) -> anyhow::Result<Vec<u8>> {
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
pub fn nat_port(what: &str, out: &[u8]) -> u16 {
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
pub fn quote(f: &Frame, len: Option<usize>) -> Vec<u8> {
    let mut ip = f.build()[14..].to_vec();
    if let Some(n) = len {
        ip.truncate(n);
    }
    ip
}

pub fn icmp_error(src: [u8; 4], dst: [u8; 4], type_: u8, code: u8, quoted: Vec<u8>) -> Frame {
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

pub fn echo(src: [u8; 4], dst: [u8; 4], id: u16, type_: u8) -> Frame {
    Frame::new(src, id, dst, id, L4::Icmp { type_ })
}

/// A packet of an IP protocol other than TCP/UDP/ICMP.
pub fn raw(src: [u8; 4], dst: [u8; 4], proto: u8) -> Frame {
    Frame::new(src, 0, dst, 0, L4::Raw { proto })
}

pub fn config(bpf: &mut Ebpf) -> anyhow::Result<()> {
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
pub fn ep_stats(bpf: &Ebpf, id: u32) -> anyhow::Result<EpStats> {
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

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs `ip ARGS` in the calling thread's namespace.
pub fn ip_cmd(args: &str) -> anyhow::Result<String> {
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
