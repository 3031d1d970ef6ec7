//! Every map of the datapath. BTF-defined (`#[btf_map]`) so `bpftool map dump` shows field
//! names. Each static's name is the map name from `datapath_common::maps` (the agent pins and
//! reopens them by that name). Sizes are defaults; the agent may override `max_entries` at load.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use datapath_common::{
    config::Config,
    conntrack::{CtEntry, CtKey},
    endpoint::Endpoint,
    maps::{CONNTRACK_MAX_DEFAULT, ENDPOINTS_MAX, LOCAL_ADDRS_MAX, PORTMAP_MAX, SOCK_REVNAT_MAX},
    portmap::{PortKey, PortValue},
    sock::{SockRevKey, SockRevValue},
    stats::CNT_MAX,
};

/// Published ports. Agent writes; `from_uplink`, `from_container`, `sock_connect4`/`sendmsg4` read.
#[btf_map]
pub static TG_PORTMAP: HashMap<PortKey, PortValue, { PORTMAP_MAX as usize }> = HashMap::new();

/// Published (port, proto) with `host_ip: 0` -> refcount. Agent writes; `sock_bind4` reads.
#[btf_map]
pub static TG_PORT_GUARD: HashMap<PortKey, u32, { PORTMAP_MAX as usize }> = HashMap::new();

/// The node's own addresses -> `ADDR_*` flags. Agent writes; every hook reads.
#[btf_map]
pub static TG_LOCAL_ADDRS: HashMap<u32, u32, { LOCAL_ADDRS_MAX as usize }> = HashMap::new();

/// Containers by IP. Agent writes; `from_container` reads (gateway for self-hairpin SNAT).
#[btf_map]
pub static TG_ENDPOINTS: HashMap<u32, Endpoint, { ENDPOINTS_MAX as usize }> = HashMap::new();

/// Conntrack/NAT. The TC hooks create, update and read it; the agent reads it and deletes a
/// container's entries. LRU so a full table evicts idle flows instead of failing inserts.
#[btf_map]
pub static TG_CT: LruHashMap<CtKey, CtEntry, { CONNTRACK_MAX_DEFAULT as usize }> =
    LruHashMap::new();

/// Socket reverse NAT. `sock_connect4`/`sendmsg4` write; `sock_recvmsg4`/`getpeername4` read.
#[btf_map]
pub static TG_SOCK_RNAT: LruHashMap<SockRevKey, SockRevValue, { SOCK_REVNAT_MAX as usize }> =
    LruHashMap::new();

/// `Config` at index 0. Agent writes; the socket hooks read.
#[btf_map]
pub static TG_CONFIG: Array<Config, 1> = Array::new();

/// Counters indexed by `stats::CNT_*`. `verdict` (and the socket hooks through it) writes;
/// the agent sums the CPUs.
#[btf_map]
pub static TG_COUNTERS: PerCpuArray<u64, { CNT_MAX as usize }> = PerCpuArray::new();
