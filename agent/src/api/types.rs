//! The daemon's API: request and response bodies of the `/v1` routes, one type per body.
//! The CLI, the metrics exporter, the tests and the CNI plugin all use these; nothing here
//! depends on the daemon (only on `model`, which is pure), so a second binary can link it alone.
//!
//! Routes (HTTP/1.1, JSON bodies, on the daemon's unix socket):
//! see `paths` and the README's table.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::model::CniKey;
use crate::model::{Action, AddSpec, DelSpec, Proto, RuleSpec, Stance};

/// The API version prefix of every route.
pub const VERSION: &str = "/v1";

/// Route paths, with `{name}` where a container name goes (see `path`).
pub mod paths {
    pub const STATUS: &str = "/v1/status";
    pub const CONTAINERS: &str = "/v1/containers";
    pub const CONTAINER: &str = "/v1/containers/{name}";
    pub const CONTAINER_PORTS: &str = "/v1/containers/{name}/ports";
    pub const CONTAINER_STATS: &str = "/v1/containers/{name}/stats";
    pub const CONTAINER_POLICY: &str = "/v1/containers/{name}/policy";
    pub const CONTAINER_EGRESS: &str = "/v1/containers/{name}/policy/egress";
    pub const CONTAINER_RULES: &str = "/v1/containers/{name}/policy/rules";
    pub const CONTAINER_LINK: &str = "/v1/containers/{name}/links/{to}";
    pub const CONTAINER_LIMITS: &str = "/v1/containers/{name}/limits";
    pub const PORTS: &str = "/v1/ports";
    pub const STATS: &str = "/v1/stats";
    pub const LIMITS: &str = "/v1/limits";
    pub const CONNTRACK: &str = "/v1/conntrack";
    pub const CONTAINER_CONNTRACK: &str = "/v1/containers/{name}/conntrack";
    pub const SHUTDOWN: &str = "/v1/shutdown";
    pub const NETWORKS: &str = "/v1/networks";
    pub const NODES: &str = "/v1/nodes";
    pub const NETWORK: &str = "/v1/networks/{name}";
    /// CNI attachments: `POST` (ADD, with the netns fd), `GET` (list), `DELETE` (DEL).
    pub const CNI_ATTACHMENTS: &str = "/v1/cni/attachments";
    /// `POST`: CHECK one attachment (with the netns fd when the runtime still has it).
    pub const CNI_CHECK: &str = "/v1/cni/check";
    /// `POST`: GC a network's attachments down to the valid ones.
    pub const CNI_GC: &str = "/v1/cni/gc";
    pub const METRICS: &str = "/metrics";
}

/// `route` with its `{name}` (and `{to}`) filled in, percent-encoded.
pub fn path(route: &str, name: &str) -> String {
    route.replace("{name}", &encode(name))
}

/// `CONTAINER_LINK` for `from` -> `to`.
pub fn link_path(from: &str, to: &str) -> String {
    path(paths::CONTAINER_LINK, from).replace("{to}", &encode(to))
}

/// Percent-encodes everything but unreserved characters (container names are already
/// restricted to those, but a name given by a user may not be valid).
fn encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Every error: 400 bad input, 404 unknown name, 409 conflict, 503 store unreachable, 500
/// anything else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

/// `POST /v1/containers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCreate {
    pub name: String,
    /// An existing namespace to use instead of creating `tg-NAME`.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The container address asked for (the .2 of a free /30 of its network's subnet).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Its network (`default` when absent).
    #[serde(default)]
    pub network: Option<String>,
}

/// A container (`container add/list --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub name: String,
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub host_ifname: String,
    #[serde(default = "default_network")]
    pub network: String,
}

fn default_network() -> String {
    crate::model::DEFAULT_NETWORK.to_string()
}

/// `DELETE /v1/containers/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: String,
}

/// `POST /v1/containers/{name}/ports`: applied as one batch, all or nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortsAdd {
    pub specs: Vec<AddSpec>,
}

/// `DELETE /v1/containers/{name}/ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortsDel {
    pub specs: Vec<DelSpec>,
}

/// A port map (`port add/list --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapInfo {
    pub container: String,
    /// `0.0.0.0`: every node address.
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

/// `GET /v1/ports?container=NAME`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortsQuery {
    #[serde(default)]
    pub container: Option<String>,
}

/// One conntrack entry (`conntrack list --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackEntry {
    pub proto: String,
    /// `original` or `reply`.
    pub direction: String,
    pub src: String,
    pub dst: String,
    pub translated_src: String,
    pub translated_dst: String,
    pub flags: Vec<String>,
    pub endpoint_id: u32,
    pub age_secs: u64,
    pub idle_secs: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// `DELETE /v1/conntrack` and `DELETE /v1/containers/{name}/conntrack`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    pub flushed: usize,
}

/// One container's counters (`stats --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub container: String,
    pub ip: Ipv4Addr,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Drops by reason name (every reason, zero included), plus `internal`
    /// (`DROPS_INTERNAL`): the sum of the reasons that are a failed datapath step.
    pub drops: BTreeMap<String, u64>,
    pub conntrack_entries: usize,
}

/// The key of `ContainerStats.drops` that sums the failed-step reasons (`csum_failed`,
/// `rewrite_failed`, `conntrack_failed`, `redirect_failed`).
pub const DROPS_INTERNAL: &str = "internal";

/// `PUT /v1/containers/{name}/policy/egress`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressSet {
    pub egress: Stance,
}

/// `POST /v1/containers/{name}/policy/rules` (adds or replaces the rule with this match).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleAdd {
    pub rule: RuleSpec,
    pub action: Action,
}

/// `DELETE /v1/containers/{name}/policy/rules`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDel {
    pub rule: RuleSpec,
}

/// One rule as `policy list --json` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub cidr: String,
    pub ports: Option<String>,
    pub proto: Option<String>,
    pub action: Action,
}

/// A container's policy (`policy list --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    pub container: String,
    pub egress: Stance,
    pub icc: bool,
    /// Containers this one may open connections to.
    pub links: Vec<String>,
    pub rules: Vec<RuleInfo>,
}

/// `PUT`/`DELETE /v1/containers/{name}/links/{to}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkInfo {
    pub from: String,
    pub to: String,
    pub linked: bool,
}

/// `PUT /v1/containers/{name}/limits`: rates in bit/s, burst in bytes; a rate left out
/// keeps its current value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSet {
    #[serde(default)]
    pub egress_bps: Option<u64>,
    #[serde(default)]
    pub ingress_bps: Option<u64>,
    #[serde(default)]
    pub burst_bytes: Option<u64>,
}

/// A container's limits (`limit show --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitInfo {
    pub container: String,
    pub egress_bps: Option<u64>,
    pub ingress_bps: Option<u64>,
    /// As `tc` writes it, e.g. `50mbit`.
    pub egress: Option<String>,
    pub ingress: Option<String>,
    pub burst_bytes: Option<u64>,
}

/// `DELETE /v1/containers/{name}/limits`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitCleared {
    pub container: String,
    pub cleared: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachPoint {
    pub program: String,
    #[serde(rename = "where")]
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub entries: usize,
    pub max: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackSummary {
    pub entries: u64,
    pub max: u32,
    pub created: u64,
    pub removed: u64,
    /// LRU evictions: what is neither present nor removed by the agent.
    pub evicted: u64,
}

/// `GET /v1/status` (`status --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uplink: String,
    pub uplink_ips: Vec<Ipv4Addr>,
    pub netns: Option<String>,
    pub pool: String,
    pub snat_ip: Option<Ipv4Addr>,
    pub icc: bool,
    pub port_range: String,
    pub uptime_secs: u64,
    pub containers: usize,
    pub port_maps: usize,
    pub programs: Vec<ProgramEntry>,
    pub attach_points: Vec<AttachPoint>,
    pub maps: BTreeMap<String, MapFill>,
    pub pins: String,
    /// Datapath event counters by name.
    pub counters: BTreeMap<String, u64>,
    pub conntrack: ConntrackSummary,
}

/// `POST /v1/shutdown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShuttingDown {
    pub stopping: bool,
}

/// `POST /v1/networks`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkCreate {
    pub name: String,
    /// A CIDR; a free /24 of 10.90.0.0/16 when absent.
    #[serde(default)]
    pub subnet: Option<String>,
    /// Its containers may not reach each other (ICC is on by default in created networks).
    #[serde(default)]
    pub no_icc: bool,
    /// No masquerade, no way out of the node, no published ports.
    #[serde(default)]
    pub internal: bool,
}

/// A network (`network create/list --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub name: String,
    pub subnet: String,
    /// `local`, or `cluster` in cluster mode.
    pub scope: String,
    pub vni: Option<u32>,
    pub icc: bool,
    pub internal: bool,
    pub containers: usize,
}

/// `DELETE /v1/networks/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDeleted {
    pub deleted: String,
}

/// A node of the cluster (`node list --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// None while the node is down (its registration is gone).
    pub underlay_ip: Option<Ipv4Addr>,
    /// `up` (registered, its lease alive) or `down` (it holds blocks but is not registered).
    pub state: String,
    /// `BLOCK (NETWORK)` for each address block it holds.
    pub blocks: Vec<String>,
    /// Its containers (known for the node answering only).
    pub containers: Option<usize>,
    /// When the answering node last saw it registered (seconds since the Unix epoch).
    pub last_seen: Option<u64>,
}

/// `POST /v1/cni/attachments`: a CNI ADD. The request carries an open fd of the container's
/// network namespace (`SCM_RIGHTS` on the connection): the runtime's mount namespace may hide
/// its `CNI_NETNS` path from the daemon. Everything is applied as one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAdd {
    /// `network` of the key is the CNI network (the conflist's `name`).
    #[serde(flatten)]
    pub key: CniKey,
    /// The Tollgate network the plugin config names (`network`).
    pub tollgate_network: String,
    /// `CNI_NETNS` as the runtime gave it (shown; the fd is what is used).
    pub netns: String,
    /// `IP=` from `CNI_ARGS`.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// `runtimeConfig.portMappings`, one entry per port.
    #[serde(default)]
    pub ports: Vec<CniPort>,
    /// `runtimeConfig.bandwidth`, converted.
    #[serde(default)]
    pub limits: Option<LimitSet>,
    /// The runtime process (the plugin's parent), allowed to bind the published ports. Set
    /// by the daemon from the connection's peer (`SO_PEERCRED`); what a client sends is ignored.
    #[serde(default)]
    pub runtime_pid: Option<u32>,
}

/// One `runtimeConfig.portMappings` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniPort {
    #[serde(default)]
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

/// A CNI attachment: what ADD created and CHECK and the list show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachmentInfo {
    #[serde(flatten)]
    pub key: CniKey,
    pub tollgate_network: String,
    pub netns: String,
    /// The Tollgate container behind it (its name is derived from the key).
    pub container: ContainerInfo,
    /// MAC of the interface inside the container.
    pub mac: String,
    /// MAC of the host-side veth.
    pub host_mac: String,
    pub mtu: u32,
    pub ports: Vec<PortMapInfo>,
}

/// `GET /v1/cni/attachments?network=NET` (a CNI network name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniQuery {
    #[serde(default)]
    pub network: Option<String>,
}

/// `DELETE /v1/cni/attachments`: a CNI DEL; an unknown key is not an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniDel {
    #[serde(flatten)]
    pub key: CniKey,
}

/// The answer to a CNI DEL: the container removed, if there was one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniDeleted {
    pub deleted: Option<String>,
}

/// `POST /v1/cni/check`: the daemon compares its view, the host veth and (with the netns fd)
/// the interface, address and route inside with what the runtime expects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniCheck {
    #[serde(flatten)]
    pub key: CniKey,
    /// The address of the runtime's `prevResult` (CIDR), if it had one.
    #[serde(default)]
    pub address: Option<String>,
}

/// `POST /v1/cni/gc`: remove every attachment of the CNI network `network` not in `valid`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniGc {
    pub network: String,
    /// (container id, ifname) pairs still in use.
    pub valid: Vec<CniValid>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniValid {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniGcDone {
    pub removed: Vec<String>,
    /// Attachments that could not be removed, with why.
    pub failed: Vec<String>,
}

/// The directory where the CNI plugin queues the DELs it could not hand to a daemon that was
/// down; the daemon replays them at start, before it serves. Derived from the socket path so
/// that the plugin and the daemon agree without configuration.
pub fn cni_queue_dir(socket: &std::path::Path) -> PathBuf {
    socket.with_extension("cni-del")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_filled_and_encoded() {
        assert_eq!(
            path(paths::CONTAINER_PORTS, "web"),
            "/v1/containers/web/ports"
        );
        assert_eq!(path(paths::CONTAINER, "a b/c"), "/v1/containers/a%20b%2Fc");
        assert_eq!(link_path("a", "b"), "/v1/containers/a/links/b");
    }

    #[test]
    fn bodies_keep_the_cli_json_field_names() {
        let p = PortMapInfo {
            container: "web".into(),
            host_ip: Ipv4Addr::UNSPECIFIED,
            host_port: 8080,
            container_port: 80,
            proto: Proto::Tcp,
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["host_ip"], "0.0.0.0");
        assert_eq!(v["proto"], "tcp");
        let a: PortsAdd = serde_json::from_str(r#"{"specs":["8080:80","53/udp"]}"#).unwrap();
        assert_eq!(a.specs.len(), 2);
        assert!(serde_json::from_str::<PortsAdd>(r#"{"specs":["0:80"]}"#).is_err());
    }
}
