//! Map names (as pinned under the daemon's bpffs dir) and default sizes. Names stay under the
//! kernel's 16-byte object-name limit so `bpftool map` shows them whole.

/// Port maps: `PortKey` -> `PortValue`. Written by the agent, read by every hook.
pub const PORTMAP: &str = "TG_PORTMAP";
/// Every (port, proto) published on any host IP: `PortKey{host_ip: 0}` -> the tgid of the one
/// process allowed to bind it, or `GUARD_NOBODY` (see `portmap::guard_owner`). Read by the
/// bind4 hook to refuse node processes a published port.
pub const PORT_GUARD: &str = "TG_PORT_GUARD";
/// The node's own addresses (uplink, container gateways, loopback): `u32` (BE) -> flags.
pub const LOCAL_ADDRS: &str = "TG_LOCAL_ADDRS";
/// Containers by IP: `u32` (BE) -> `Endpoint`.
pub const ENDPOINTS: &str = "TG_ENDPOINTS";
/// Containers by host veth ifindex: `u32` -> `Endpoint` (from_container/to_container).
pub const EP_BY_IF: &str = "TG_EP_BY_IF";
/// ICC exceptions: `LinkKey` -> u32 (1).
pub const LINKS: &str = "TG_LINKS";
/// Egress policy: LPM `Key<PolicyKey>` -> `PolicyChain`.
pub const POLICY: &str = "TG_POLICY";
/// Per-container counters: per-CPU array of `EpStats` indexed by endpoint id.
pub const EP_STATS: &str = "TG_EP_STATS";
/// Per-container token buckets: array of `RateLimit` indexed by endpoint id (rate 0 = none).
pub const RATELIMIT: &str = "TG_RATELIMIT";
/// Conntrack/NAT table: `CtKey` -> `CtEntry`, LRU.
pub const CONNTRACK: &str = "TG_CT";
/// Socket-level reverse NAT for node-originated traffic: `SockRevKey` -> `SockRevValue`, LRU.
pub const SOCK_REVNAT: &str = "TG_SOCK_RNAT";
/// Single-entry array with the daemon's `Config`.
pub const CONFIG: &str = "TG_CONFIG";
/// Per-CPU datapath counters indexed by `stats::Counter`.
pub const COUNTERS: &str = "TG_COUNTERS";
/// MAC addresses of each container's veth pair, cached from the FIB by the datapath (`EpL2`).
pub const EP_L2: &str = "TG_EP_L2";
/// Two per-CPU `CtEntry` slots where the datapath builds new conntrack entries before
/// inserting them (no agent use; pinned like the rest so `bpftool` finds it by name).
pub const CT_SCRATCH: &str = "TG_CT_SCRATCH";
/// Container prefixes of other nodes (cluster mode): LPM `Key<u32>` (address, network order)
/// -> `overlay::Remote`. Agent writes from the cluster store; `from_container` and
/// `from_overlay` read.
pub const REMOTES: &str = "TG_REMOTES";
/// First fragments' ports by datagram: `frag::FragKey` -> `frag::FragPorts`, LRU. The TC hooks
/// write it on a first fragment and read it on the datagram's later ones.
pub const FRAGS: &str = "TG_FRAGS";
/// Programs the TC hooks tail-call into, by `PROG_SLOT_*`. The agent fills it after loading.
pub const PROGS: &str = "TG_PROGS";
/// `TG_PROGS` slot of `from_container_new`: a container's packet without a live flow. Its own
/// program so that each has the verifier's whole instruction budget (their sum exceeds it).
pub const PROG_SLOT_CONTAINER_NEW: u32 = 0;

pub const PORTMAP_MAX: u32 = 131_072;
pub const LOCAL_ADDRS_MAX: u32 = 4_096;
pub const ENDPOINTS_MAX: u32 = 16_384;
pub const CONNTRACK_MAX_DEFAULT: u32 = 262_144;
pub const SOCK_REVNAT_MAX: u32 = 65_536;
pub const LINKS_MAX: u32 = 65_536;
pub const POLICY_MAX: u32 = 65_536;
pub const REMOTES_MAX: u32 = 16_384;
pub const FRAGS_MAX: u32 = 8_192;
pub const PROGS_MAX: u32 = 4;

/// Every map the datapath pins, so the agent can pin, reopen and remove them by name.
pub const ALL: &[&str] = &[
    PORTMAP,
    PORT_GUARD,
    LOCAL_ADDRS,
    ENDPOINTS,
    EP_BY_IF,
    LINKS,
    POLICY,
    EP_STATS,
    RATELIMIT,
    CONNTRACK,
    SOCK_REVNAT,
    CONFIG,
    COUNTERS,
    EP_L2,
    CT_SCRATCH,
    REMOTES,
    FRAGS,
    PROGS,
];
