//! Cluster mode on the node: networks created through the store (scope `cluster`, a VNI
//! each), container addresses from per-node blocks claimed in the store, and the other nodes'
//! blocks written into the datapath's remote prefixes (`TG_REMOTES`) from the store's view.
//!
//! The store is needed only to change the cluster (create or remove a network, claim a
//! block): everything the datapath needs is in its pinned maps and the local state file,
//! so with the store unreachable every existing flow and every new flow between existing
//! containers keeps working, and the node catches up from the watcher's next view.

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::Ipv4Net;
use tracing::{info, warn};

use super::{
    error::{fail, Kind, KindExt, Result},
    tx::Change,
    Node,
};
use crate::{
    api::types as api,
    cluster::{self, Cluster, ClusterView, NetworkSpec},
    datapath::Datapath,
    model::{self, Network, Pool},
    store::{Commit, Store},
};

/// The node's part of the cluster: the store handle and what it last saw.
pub struct ClusterCtx {
    pub handle: Cluster,
    pub node_name: String,
    /// The latest view of the store (kept while it is unreachable).
    pub view: ClusterView,
    /// When each node was last seen registered (seconds since the epoch).
    pub last_seen: BTreeMap<String, u64>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<D: Datapath, S: Store> Node<D, S> {
    pub fn set_cluster(&mut self, ctx: ClusterCtx) {
        self.cluster = Some(ctx);
    }

    pub fn cluster(&self) -> Option<&ClusterCtx> {
        self.cluster.as_ref()
    }

    fn cluster_or_fail(&self) -> Result<&ClusterCtx> {
        match &self.cluster {
            Some(c) => Ok(c),
            None => fail!(Internal, "not in cluster mode"),
        }
    }

    /// `network create` in cluster mode: one transaction in the store, then the local copy.
    pub(super) async fn cluster_network_create(
        &mut self,
        req: &api::NetworkCreate,
        subnet: Option<Ipv4Net>,
    ) -> Result<api::NetworkInfo> {
        let local: Vec<Ipv4Net> = std::iter::once(self.settings.pool.net())
            .chain(
                self.state
                    .networks
                    .values()
                    .filter(|n| !n.cluster)
                    .map(|n| n.subnet),
            )
            .collect();
        let spec = NetworkSpec {
            name: req.name.clone(),
            subnet,
            icc: !req.no_icc,
            internal: req.internal,
            block_prefix: None,
        };
        let rec = self
            .cluster_or_fail()?
            .handle
            .create_network(spec, &local)
            .await?;
        let n = network_of(&rec);
        let mut next = self.state.clone();
        next.networks.insert(n.name.clone(), n);
        self.transact(Change {
            next,
            commit: Commit::Snapshot,
            steps: Vec::new(),
        })
        .await?;
        info!(network = %rec.name, subnet = %rec.subnet, vni = rec.vni, "cluster network created");
        Ok(self.network_info(&rec.name))
    }

    /// `network rm` of a cluster network: this node's (empty) blocks are released, then the
    /// store refuses while another node still holds blocks of it.
    pub(super) async fn cluster_network_rm(&mut self, name: &str) -> Result<()> {
        let blocks: Vec<Ipv4Net> = self.state.blocks.get(name).cloned().unwrap_or_default();
        let handle = self.cluster_or_fail()?.handle.clone();
        for b in &blocks {
            handle.release_block(name, *b).await?;
        }
        handle.remove_network(name).await?;
        let mut next = self.state.clone();
        next.networks.remove(name);
        next.blocks.remove(name);
        self.transact(Change {
            next,
            commit: Commit::Snapshot,
            steps: Vec::new(),
        })
        .await
    }

    /// The /30 of a new container on cluster network `network`: the first free one in this
    /// node's blocks, or in a block claimed now (the only step that needs the store).
    pub(super) async fn cluster_slot(
        &mut self,
        network: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<model::Slot> {
        let used: HashSet<Ipv4Addr> = self.state.containers.values().map(|c| c.ip).collect();
        let mine: Vec<Ipv4Net> = self.state.blocks.get(network).cloned().unwrap_or_default();
        if let Some(ip) = ip {
            let Some(b) = mine.iter().find(|b| b.contains(&ip)) else {
                fail!(
                    BadInput,
                    "{ip} is not in a block of network {network:?} this node holds ({}); leave --ip out",
                    fmt_blocks(&mine)
                );
            };
            if used.contains(&ip) {
                fail!(
                    Conflict,
                    "address {ip} is already assigned to another container"
                );
            }
            return Pool::new(*b)
                .and_then(|p| p.slot_for(ip))
                .kind(Kind::BadInput);
        }
        for b in &mine {
            if let Ok(s) = Pool::new(*b).and_then(|p| p.allocate(&used)) {
                return Ok(s);
            }
        }
        let block = self.cluster_or_fail()?.handle.claim_block(network).await?;
        info!(network, %block, "claimed an address block");
        let mut next = self.state.clone();
        next.blocks
            .entry(network.to_string())
            .or_default()
            .push(block);
        self.transact(Change {
            next,
            commit: Commit::Snapshot,
            steps: Vec::new(),
        })
        .await?;
        Pool::new(block)
            .and_then(|p| p.allocate(&used))
            .kind(Kind::Conflict)
    }

    /// After a container of a cluster network went: its block goes back to the cluster when
    /// no container of this node is left in it (best effort; a block kept is harmless).
    pub(super) async fn release_empty_blocks(&mut self, network: &str) {
        let Some(ctx) = &self.cluster else { return };
        let handle = ctx.handle.clone();
        let mine = self.state.blocks.get(network).cloned().unwrap_or_default();
        let mut freed = Vec::new();
        for b in mine {
            if self.state.containers.values().any(|c| b.contains(&c.ip)) {
                continue;
            }
            match handle.release_block(network, b).await {
                Ok(()) => freed.push(b),
                Err(e) => warn!(network, block = %b, "keeping the empty block: {e}"),
            }
        }
        if freed.is_empty() {
            return;
        }
        let mut next = self.state.clone();
        if let Some(v) = next.blocks.get_mut(network) {
            v.retain(|b| !freed.contains(b));
        }
        next.blocks.retain(|_, v| !v.is_empty());
        if let Err(e) = self
            .transact(Change {
                next,
                commit: Commit::Snapshot,
                steps: Vec::new(),
            })
            .await
        {
            warn!("saving the released blocks: {}", e.err);
        }
    }

    /// Makes the node match a view of the store: its networks (local copies), its own blocks,
    /// and the other nodes' blocks as remote prefixes (a node whose lease is gone loses its
    /// prefixes; one that comes back gets them again). A view that was never listed changes
    /// nothing.
    pub async fn apply_view(&mut self, view: ClusterView) -> Result<()> {
        let Some(ctx) = self.cluster.as_mut() else {
            return Ok(());
        };
        let now = now_secs();
        for n in view.nodes.keys() {
            ctx.last_seen.insert(n.clone(), now);
        }
        let me = ctx.node_name.clone();
        ctx.view = view.clone();
        if view.revision == 0 {
            return Ok(());
        }
        let mut next = self.state.clone();
        for rec in view.networks.values() {
            next.networks.insert(rec.name.clone(), network_of(rec));
        }
        let gone: Vec<String> = next
            .networks
            .values()
            .filter(|n| n.cluster && !view.networks.contains_key(&n.name))
            .map(|n| n.name.clone())
            .collect();
        for name in gone {
            if next.containers.values().any(|c| c.network == name) {
                warn!(network = %name, "a cluster network this node still has containers on was removed from the store; keeping it here");
            } else {
                next.networks.remove(&name);
                next.blocks.remove(&name);
            }
        }
        let mut mine: BTreeMap<String, Vec<Ipv4Net>> = BTreeMap::new();
        for b in view.blocks.iter().filter(|b| b.node == me) {
            mine.entry(b.network.clone()).or_default().push(b.block);
        }
        // A block claimed here but not (yet) in the view stays: the view may lag the claim.
        for (net, blocks) in &next.blocks {
            for b in blocks {
                let v = mine.entry(net.clone()).or_default();
                if !v.contains(b) {
                    v.push(*b);
                }
            }
        }
        next.blocks = mine;
        if next != self.state {
            self.transact(Change {
                next,
                commit: Commit::Snapshot,
                steps: Vec::new(),
            })
            .await?;
        }
        self.sync_remotes(&view, &me)
    }

    /// `TG_REMOTES` = the blocks of live other nodes, with their networks' VNIs.
    fn sync_remotes(&mut self, view: &ClusterView, me: &str) -> Result<()> {
        let want: BTreeMap<Ipv4Net, (Ipv4Addr, u32)> = view
            .blocks
            .iter()
            .filter(|b| b.node != me)
            .filter_map(|b| {
                let node = view.nodes.get(&b.node)?;
                let net = view.networks.get(&b.network)?;
                Some((b.block, (node.underlay_ip, net.vni)))
            })
            .collect();
        let have = self.dp.remotes().kind(Kind::Internal)?;
        for (prefix, node, vni) in &have {
            if want.get(prefix) != Some(&(*node, *vni)) {
                self.dp.remove_remote(*prefix).kind(Kind::Internal)?;
            }
        }
        for (prefix, (node, vni)) in &want {
            if !have.contains(&(*prefix, *node, *vni)) {
                self.dp
                    .set_remote(*prefix, *node, *vni)
                    .kind(Kind::Internal)?;
            }
        }
        Ok(())
    }

    /// `node list`: the registered nodes and those that hold blocks while down.
    pub fn node_list(&self) -> Result<Vec<api::NodeInfo>> {
        let Some(ctx) = &self.cluster else {
            fail!(
                BadInput,
                "this daemon is not in cluster mode (start it with --cluster etcd://HOST:PORT)"
            );
        };
        let view = &ctx.view;
        let mut names: Vec<&String> = view
            .nodes
            .keys()
            .chain(view.blocks.iter().map(|b| &b.node))
            .collect();
        names.sort();
        names.dedup();
        Ok(names
            .into_iter()
            .map(|n| {
                let up = view.nodes.contains_key(n);
                api::NodeInfo {
                    name: n.clone(),
                    underlay_ip: view.nodes.get(n).map(|r| r.underlay_ip),
                    state: if up { "up" } else { "down" }.into(),
                    blocks: view
                        .blocks
                        .iter()
                        .filter(|b| &b.node == n)
                        .map(|b| format!("{} ({})", b.block, b.network))
                        .collect(),
                    containers: (*n == ctx.node_name).then_some(self.state.containers.len()),
                    last_seen: ctx.last_seen.get(n).copied(),
                }
            })
            .collect())
    }
}

/// The local copy of a cluster network: its VNI is its id in the datapath.
fn network_of(rec: &cluster::NetworkRecord) -> Network {
    Network {
        name: rec.name.clone(),
        id: rec.vni,
        subnet: rec.subnet,
        icc: rec.icc,
        internal: rec.internal,
        cluster: true,
    }
}

fn fmt_blocks(blocks: &[Ipv4Net]) -> String {
    if blocks.is_empty() {
        return "none yet".into();
    }
    blocks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
