//! The daemon's desired state: containers, their port maps, links, policies and limits. The
//! store persists it; the node makes the datapath match it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{network::Network, policy::Policy, ports::PortMapping, rate::Limit};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    /// Agent-assigned id, also used in interface names and the datapath's endpoint id.
    pub id: u32,
    /// Path of the container's network namespace.
    pub netns: PathBuf,
    /// Whether tollgate created the namespace (and so deletes it).
    pub netns_created: bool,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub host_ifname: String,
    /// ifindex of the host veth when it was set up; a different current ifindex means the
    /// veth was recreated and its pinned TC link is stale.
    #[serde(default)]
    pub host_ifindex: u32,
    /// The interface inside the container: `eth0`, or the `CNI_IFNAME` a CNI runtime asked for.
    #[serde(default = "default_ifname")]
    pub ifname: String,
    /// Set when a CNI runtime attached the container: it owns the namespace, and the
    /// container is known to it by this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniAttachment>,
    /// Its network (`default`: the daemon's `--pool`).
    #[serde(default = "default_network")]
    pub network: String,
    /// The MTU of its veth pair (0: the kernel's default). Containers of cluster networks get
    /// the uplink's minus the VXLAN overhead.
    #[serde(default)]
    pub mtu: u32,
}

fn default_network() -> String {
    super::network::DEFAULT_NETWORK.to_string()
}

/// The inner interface of containers made by `container add`.
pub const DEFAULT_IFNAME: &str = "eth0";

fn default_ifname() -> String {
    DEFAULT_IFNAME.to_string()
}

/// How a CNI runtime knows a container: (network, container id, interface), as the CNI spec
/// keys attachments.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CniKey {
    /// The CNI network: the `name` of the runtime's network config.
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CniAttachment {
    #[serde(flatten)]
    pub key: CniKey,
    /// The Tollgate network (the plugin config's `network`).
    pub tollgate_network: String,
    /// `CNI_NETNS` as the runtime gave it (a path in the runtime's mount namespace, which
    /// the daemon may not see; shown, never opened).
    pub netns: String,
    /// The runtime process that published the container's ports (the plugin's parent): the
    /// one process besides the containers that may bind them, for its own port reservation.
    #[serde(default)]
    pub runtime_pid: u32,
}

/// The MAC of a container's interface, from its address as Kubernetes' `0a:58` convention
/// does: stable across restarts and re-plumbing, and known before the interface exists.
pub fn container_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub containers: BTreeMap<String, Container>,
    /// Port maps by container name.
    pub ports: BTreeMap<String, Vec<PortMapping>>,
    /// Kept for state files of older versions; ids are now the smallest free one.
    #[serde(default)]
    pub next_id: u32,
    /// One-way ICC exceptions: (from, to) container names.
    #[serde(default)]
    pub links: BTreeSet<(String, String)>,
    /// Egress policy by container name (absent: allow everything, no rules).
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
    /// Rate limits by container name.
    #[serde(default)]
    pub limits: BTreeMap<String, Limit>,
    /// User-created networks by name (`default` is not stored: it is the daemon's `--pool`).
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Cluster mode: the address blocks this node holds, by cluster network (a copy of what
    /// the store says, so addresses are handed out while the store is unreachable).
    #[serde(default)]
    pub blocks: BTreeMap<String, Vec<ipnet::Ipv4Net>>,
}

impl State {
    pub fn all_ports(&self) -> impl Iterator<Item = (&str, &PortMapping)> {
        self.ports
            .iter()
            .flat_map(|(c, v)| v.iter().map(move |m| (c.as_str(), m)))
    }
}

/// One journaled change of port maps (the only frequent change, and the one that must stay
/// cheap with tens of thousands of maps). Replaying is idempotent: adding a present map or
/// removing an absent one is a no-op, so a journal already folded into the snapshot is harmless.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortChange {
    pub container: String,
    #[serde(default)]
    pub added: Vec<PortMapping>,
    #[serde(default)]
    pub removed: Vec<PortMapping>,
}

impl PortChange {
    pub fn apply(&self, st: &mut State) {
        let v = st.ports.entry(self.container.clone()).or_default();
        v.retain(|m| !self.removed.contains(m));
        for m in &self.added {
            if !v.contains(m) {
                v.push(*m);
            }
        }
        if v.is_empty() {
            st.ports.remove(&self.container);
        }
    }
}

/// Container names: 1-32 characters of `[A-Za-z0-9-_.]`, starting with a letter or digit
/// (they go into namespace names).
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        bail!("invalid container name {name:?} (1-32 characters: letters, digits, '-', '_', '.'; starting with a letter or digit)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        for ok in ["web", "a", "web-1.prod_x", "0abc"] {
            assert!(super::validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(33)] {
            assert!(super::validate_name(bad).is_err(), "{bad}");
        }
    }
}
