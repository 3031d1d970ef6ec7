//! Every map of the datapath. BTF-defined (`#[btf_map]`) so `bpftool map dump` shows field
//! names. Each static's name is the map name from `datapath_common::maps` (the agent pins and
//! reopens them by that name). Sizes are defaults; the agent may override `max_entries` at load.

use aya_ebpf::{
    btf_maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
    macros::btf_map,
};
use datapath_common::{
    config::Config,
    conntrack::{CtEntry, CtKey},
    endpoint::{Endpoint, EpL2, EpStats, LinkKey, PolicyChain, PolicyKey},
    frag::{FragKey, FragPorts},
    maps::{
        CONNTRACK_MAX_DEFAULT, ENDPOINTS_MAX, FRAGS_MAX, LINKS_MAX, LOCAL_ADDRS_MAX, POLICY_MAX,
        PORTMAP_MAX, PROGS_MAX, REMOTES_MAX, SOCK_REVNAT_MAX,
    },
    overlay::Remote,
    portmap::{PortKey, PortValue},
    ratelimit::RateLimit,
    sock::{SockRevKey, SockRevValue},
    stats::CNT_MAX,
};

/// Published ports. Agent writes; `from_uplink`, `from_container`, `sock_connect4`/`sendmsg4` read.
/// `BPF_F_NO_PREALLOC`: tables sized for the worst case (131,072 port maps) but written
/// rarely and by the agent only take memory per entry present, not ~21 MiB up front.
const NO_PREALLOC: usize = aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize;

#[btf_map]
pub static TG_PORTMAP: HashMap<PortKey, PortValue, { PORTMAP_MAX as usize }, NO_PREALLOC> =
    HashMap::new();

/// Published (port, proto) with `host_ip: 0` -> refcount. Agent writes; `sock_bind4` reads.
#[btf_map]
pub static TG_PORT_GUARD: HashMap<PortKey, u32, { PORTMAP_MAX as usize }, NO_PREALLOC> =
    HashMap::new();

/// The node's own addresses -> `ADDR_*` flags. Agent writes; every hook reads.
#[btf_map]
pub static TG_LOCAL_ADDRS: HashMap<u32, u32, { LOCAL_ADDRS_MAX as usize }> = HashMap::new();

/// Containers by IP. Agent writes; `from_container` reads (gateway for self-hairpin SNAT).
#[btf_map]
pub static TG_ENDPOINTS: HashMap<u32, Endpoint, { ENDPOINTS_MAX as usize }> = HashMap::new();

/// Containers by host veth ifindex. Agent writes; `from_container` (anti-spoofing, policy,
/// stats) and `to_container` (stats) read.
#[btf_map]
pub static TG_EP_BY_IF: HashMap<u32, Endpoint, { ENDPOINTS_MAX as usize }> = HashMap::new();

/// ICC exceptions (`policy link`). Agent writes; `from_container` reads on new flows.
#[btf_map]
pub static TG_LINKS: HashMap<LinkKey, u32, { LINKS_MAX as usize }, NO_PREALLOC> = HashMap::new();

/// Egress rules by (container, destination prefix). Agent writes; `from_container` reads on
/// new flows (`policy`).
#[btf_map]
pub static TG_POLICY: LpmTrie<PolicyKey, PolicyChain, { POLICY_MAX as usize }> = LpmTrie::new();

/// Per-container counters by endpoint id. The TC hooks write (`verdict`); the agent sums the
/// CPUs.
#[btf_map]
pub static TG_EP_STATS: PerCpuArray<EpStats, { ENDPOINTS_MAX as usize }> = PerCpuArray::new();

/// Per-container token buckets by endpoint id. Agent writes whole values (full buckets);
/// `from_container` (egress) and `to_container` (ingress) advance `tat` by compare-and-swap.
#[btf_map]
pub static TG_RATELIMIT: Array<RateLimit, { ENDPOINTS_MAX as usize }> = Array::new();

/// Conntrack/NAT. The TC hooks create, update and read it; the agent reads it and deletes a
/// container's entries. LRU so a full table evicts idle flows instead of failing inserts.
#[btf_map]
pub static TG_CT: LruHashMap<CtKey, CtEntry, { CONNTRACK_MAX_DEFAULT as usize }> =
    LruHashMap::new();

/// Socket reverse NAT. `sock_connect4`/`sendmsg4` write; `sock_recvmsg4`/`getpeername4` read.
#[btf_map]
pub static TG_SOCK_RNAT: LruHashMap<SockRevKey, SockRevValue, { SOCK_REVNAT_MAX as usize }> =
    LruHashMap::new();

/// MACs of each container's veth pair by endpoint id, cached from the FIB for a second.
/// `from_uplink`'s fast path reads and writes it; nobody else: a stale slot is ignored by its
/// ifindex check, and a missing one only means the FIB lookup is not skipped.
#[btf_map]
pub static TG_EP_L2: Array<EpL2, { ENDPOINTS_MAX as usize }> = Array::new();

/// Where new conntrack entries are built before they are inserted, per CPU: slot
/// `conntrack::HALF` the packet's half, `conntrack::REVERSE` its other half. An 80-byte value
/// on the stack of a hook close to the 512-byte limit does not fit, and zeroing one there
/// costs a call to aya's byte-at-a-time `memset`. Only `conntrack` uses it.
#[btf_map]
pub static TG_CT_SCRATCH: PerCpuArray<CtEntry, 2> = PerCpuArray::new();
/// `Config` at index 0. Agent writes; every hook reads (`config::get`).
#[btf_map]
pub static TG_CONFIG: Array<Config, 1> = Array::new();

/// Counters indexed by `stats::CNT_*`. `verdict` (and the socket hooks through it) writes;
/// the agent sums the CPUs.
#[btf_map]
pub static TG_COUNTERS: PerCpuArray<u64, { CNT_MAX as usize }> = PerCpuArray::new();

/// The key type of `TG_POLICY` lookups.
pub type PolicyLpmKey = Key<PolicyKey>;

/// Container prefixes of other nodes (cluster mode) -> node and VNI. Agent writes from the
/// cluster store; `from_container` (encapsulation) and `from_overlay` (source check) read.
#[btf_map]
pub static TG_REMOTES: LpmTrie<u32, Remote, { REMOTES_MAX as usize }> = LpmTrie::new();

/// First fragments' ports by datagram. The TC hooks write it on a first fragment and read it
/// on the later ones (`packet::Packet::parse`); LRU, so entries of finished datagrams age out.
#[btf_map]
pub static TG_FRAGS: LruHashMap<FragKey, FragPorts, { FRAGS_MAX as usize }> = LruHashMap::new();

/// Tail-call targets by `maps::PROG_SLOT_*`. The agent fills it with the pinned programs;
/// `from_container` jumps through it.
#[btf_map]
pub static TG_PROGS: ProgramArray<{ PROGS_MAX as usize }> = ProgramArray::new();
