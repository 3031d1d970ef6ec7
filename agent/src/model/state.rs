//! The daemon's desired state: containers, their port maps, links, policies and limits. The
//! store persists it; the node makes the datapath match it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{policy::Policy, ports::PortMapping, rate::Limit};

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
