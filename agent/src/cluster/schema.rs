//! The store's schema (docs/cluster.md): keys under a prefix, their JSON values, and the view
//! a node keeps of them. Pure: decoding keys and values and applying changes to a view.
//!
//! ```text
//! <p>/nodes/<name>                    {name, underlay_ip, started_at}    on the node's lease
//! <p>/networks/<name>                 {name, subnet, vni, icc, internal, block_prefix}
//! <p>/vnis/<vni>                      <name>
//! <p>/meta/networks                   <name of the last network created> (serializes creates)
//! <p>/blocks/<network>/<a.b.c.d>-<len> {node, network, block}            no lease
//! ```

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::plan::{block_segment, parse_block_segment};

/// A node's registration (`<p>/nodes/<name>`), present while its lease lives.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    /// Where the other nodes send its VXLAN traffic.
    pub underlay_ip: Ipv4Addr,
    /// When its daemon started (seconds since the Unix epoch).
    pub started_at: u64,
}

/// A cluster network (`<p>/networks/<name>`); written once, never updated.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkRecord {
    pub name: String,
    pub subnet: Ipv4Net,
    pub vni: u32,
    pub icc: bool,
    pub internal: bool,
    /// The prefix length of the per-node blocks its subnet is carved into.
    pub block_prefix: u8,
}

/// A block of a network's subnet claimed by a node (`<p>/blocks/<network>/<block>`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockRecord {
    pub node: String,
    pub network: String,
    pub block: Ipv4Net,
}

/// What a node asks for when it creates a network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    /// `None`: the first free /20 of 10.96.0.0/12.
    pub subnet: Option<Ipv4Net>,
    pub icc: bool,
    pub internal: bool,
    /// `None`: /26 (or the subnet's own prefix when it is smaller).
    pub block_prefix: Option<u8>,
}

/// Everything a node knows of the cluster: the live nodes, the networks and every block, as of
/// `revision` of the store.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterView {
    /// The store revision this view reflects (0: never listed).
    pub revision: i64,
    /// Whether the store was reachable at the last attempt (the data is kept when it is not).
    pub healthy: bool,
    /// Why the store is not healthy, for `status` and errors.
    pub error: Option<String>,
    /// The nodes whose lease lives.
    pub nodes: BTreeMap<String, NodeRecord>,
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Every claimed block, sorted by network then block.
    pub blocks: Vec<BlockRecord>,
}

impl ClusterView {
    pub fn network(&self, name: &str) -> Option<&NetworkRecord> {
        self.networks.get(name)
    }

    /// Whether `node` is registered (its lease lives).
    pub fn is_live(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// The blocks of a network, whoever holds them.
    pub fn blocks_of<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a BlockRecord> {
        self.blocks.iter().filter(move |b| b.network == network)
    }

    /// The blocks a node holds, in every network (also while it is down).
    pub fn node_blocks<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a BlockRecord> {
        self.blocks.iter().filter(move |b| b.node == node)
    }

    /// Applies one store change: `value` is the new value of `key`, `None` a deletion. Keys
    /// outside the schema are ignored; a value that cannot be read is ignored too (and logged),
    /// so one bad record never hides the others.
    pub fn apply(&mut self, prefix: &str, key: &str, value: Option<&[u8]>) {
        let Some(k) = Key::parse(prefix, key) else {
            return;
        };
        match (k, value) {
            (Key::Node(name), None) => {
                self.nodes.remove(&name);
            }
            (Key::Node(name), Some(v)) => match serde_json::from_slice::<NodeRecord>(v) {
                Ok(r) if r.name == name => {
                    self.nodes.insert(name, r);
                }
                other => bad_record(key, &other.map(|_| ())),
            },
            (Key::Network(name), None) => {
                self.networks.remove(&name);
            }
            (Key::Network(name), Some(v)) => match serde_json::from_slice::<NetworkRecord>(v) {
                Ok(r) if r.name == name => {
                    self.networks.insert(name, r);
                }
                other => bad_record(key, &other.map(|_| ())),
            },
            (Key::Block(network, block), v) => {
                self.blocks
                    .retain(|b| !(b.network == network && b.block == block));
                if let Some(v) = v {
                    match serde_json::from_slice::<BlockRecord>(v) {
                        Ok(r) if r.network == network && r.block == block => {
                            let at = self
                                .blocks
                                .partition_point(|b| (&b.network, b.block) < (&r.network, r.block));
                            self.blocks.insert(at, r);
                        }
                        other => bad_record(key, &other.map(|_| ())),
                    }
                }
            }
            (Key::Other, _) => {}
        }
    }
}

fn bad_record(key: &str, r: &serde_json::Result<()>) {
    if let Err(e) = r {
        tracing::warn!(key, error = %e, "cluster store: unreadable record ignored");
    } else {
        tracing::warn!(key, "cluster store: record does not match its key; ignored");
    }
}

/// A key of the schema, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Node(String),
    Network(String),
    Block(String, Ipv4Net),
    /// `vnis/`, `meta/` and anything unknown.
    Other,
}

impl Key {
    /// The key `key` under `prefix`, or `None` when it is outside the prefix.
    pub fn parse(prefix: &str, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
        let (kind, rest) = rest.split_once('/')?;
        Some(match kind {
            "nodes" if !rest.is_empty() && !rest.contains('/') => Key::Node(rest.to_string()),
            "networks" if !rest.is_empty() && !rest.contains('/') => Key::Network(rest.to_string()),
            "blocks" => match rest.split_once('/') {
                Some((net, seg)) if !net.is_empty() => match parse_block_segment(seg) {
                    Some(b) => Key::Block(net.to_string(), b),
                    None => Key::Other,
                },
                _ => Key::Other,
            },
            _ => Key::Other,
        })
    }
}

/// The keys, for a prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    /// Everything Tollgate keeps: `<p>/` (with the slash, so `/tollgate2` is not included).
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }
    pub fn node(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.prefix)
    }
    pub fn networks(&self) -> String {
        format!("{}/networks/", self.prefix)
    }
    pub fn network(&self, name: &str) -> String {
        format!("{}/networks/{name}", self.prefix)
    }
    pub fn vnis(&self) -> String {
        format!("{}/vnis/", self.prefix)
    }
    pub fn vni(&self, vni: u32) -> String {
        format!("{}/vnis/{vni}", self.prefix)
    }
    /// The key whose `mod_revision` serializes network creations.
    pub fn networks_meta(&self) -> String {
        format!("{}/meta/networks", self.prefix)
    }
    pub fn blocks(&self) -> String {
        format!("{}/blocks/", self.prefix)
    }
    pub fn network_blocks(&self, network: &str) -> String {
        format!("{}/blocks/{network}/", self.prefix)
    }
    pub fn block(&self, network: &str, block: Ipv4Net) -> String {
        format!("{}/blocks/{network}/{}", self.prefix, block_segment(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "/tollgate";

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn keys_parse_back() {
        let k = Keys {
            prefix: P.to_string(),
        };
        assert_eq!(
            Key::parse(P, &k.node("n1")),
            Some(Key::Node("n1".to_string()))
        );
        assert_eq!(
            Key::parse(P, &k.network("blue")),
            Some(Key::Network("blue".to_string()))
        );
        assert_eq!(
            Key::parse(P, &k.block("blue", n("10.96.0.64/26"))),
            Some(Key::Block("blue".to_string(), n("10.96.0.64/26")))
        );
        assert_eq!(Key::parse(P, &k.vni(7)), Some(Key::Other));
        assert_eq!(Key::parse(P, &k.networks_meta()), Some(Key::Other));
        assert_eq!(Key::parse(P, "/tollgate2/nodes/n1"), None);
        assert_eq!(Key::parse(P, "/other/nodes/n1"), None);
        assert_eq!(Key::parse(P, "/tollgate/nodes/"), Some(Key::Other));
        assert_eq!(Key::parse(P, "/tollgate/blocks/blue/bad"), Some(Key::Other));
    }

    #[test]
    fn a_view_follows_puts_and_deletes() {
        let k = Keys {
            prefix: P.to_string(),
        };
        let mut v = ClusterView::default();
        let node = NodeRecord {
            name: "n1".into(),
            underlay_ip: "192.168.1.1".parse().unwrap(),
            started_at: 5,
        };
        let net = NetworkRecord {
            name: "blue".into(),
            subnet: n("10.96.0.0/20"),
            vni: 1,
            icc: true,
            internal: false,
            block_prefix: 26,
        };
        let block = |b: &str, node: &str| BlockRecord {
            node: node.into(),
            network: "blue".into(),
            block: n(b),
        };
        v.apply(P, &k.node("n1"), Some(&json(&node)));
        v.apply(P, &k.network("blue"), Some(&json(&net)));
        for (b, who) in [
            ("10.96.0.64/26", "n2"),
            ("10.96.0.0/26", "n1"),
            ("10.96.0.128/26", "n1"),
        ] {
            v.apply(P, &k.block("blue", n(b)), Some(&json(&block(b, who))));
        }
        v.apply(P, &k.vni(1), Some(b"blue"));
        assert!(v.is_live("n1"));
        assert_eq!(v.network("blue"), Some(&net));
        let blocks: Vec<_> = v.blocks_of("blue").map(|b| b.block.to_string()).collect();
        assert_eq!(blocks, ["10.96.0.0/26", "10.96.0.64/26", "10.96.0.128/26"]);
        assert_eq!(v.node_blocks("n1").count(), 2);

        // A record whose content does not match its key, or garbage, changes nothing.
        v.apply(P, &k.node("n9"), Some(&json(&node)));
        v.apply(P, &k.network("red"), Some(b"{not json"));
        assert_eq!(v.nodes.len(), 1);
        assert_eq!(v.networks.len(), 1);

        // The lease expires: the node goes, its blocks stay.
        v.apply(P, &k.node("n1"), None);
        assert!(!v.is_live("n1"));
        assert_eq!(v.node_blocks("n1").count(), 2);
        v.apply(P, &k.block("blue", n("10.96.0.0/26")), None);
        assert_eq!(v.node_blocks("n1").count(), 1);
        v.apply(P, &k.network("blue"), None);
        assert!(v.networks.is_empty());
    }

    fn json<T: Serialize>(x: &T) -> Vec<u8> {
        serde_json::to_vec(x).unwrap()
    }
}
