//! Networks on one node (`network create/rm/list`, `container add --network`): their subnets,
//! ICC and internal flags. A network has no datapath state of its own: its id and flags go
//! into each of its containers' endpoints (`tx::endpoint_info`).

use std::collections::HashSet;

use ipnet::Ipv4Net;
use tracing::info;

use super::{
    error::{fail, Kind, KindExt, Result},
    tx::Change,
    Node,
};
use crate::{
    api::types as api,
    datapath::Datapath,
    model::{self, network, Network, Pool, DEFAULT_NETWORK},
    store::{Commit, Store},
};

/// What a container's network means for its addresses and endpoint.
pub struct NetView {
    pub id: u32,
    pub pool: Pool,
    pub icc: bool,
    pub internal: bool,
    /// Addresses come from this node's blocks (cluster mode), not from `pool`.
    pub cluster: bool,
}

impl<D: Datapath, S: Store> Node<D, S> {
    /// The network `name` (`default` included), or a 404 saying how to make it.
    pub fn net_view(&self, name: &str) -> Result<NetView> {
        if name == DEFAULT_NETWORK {
            return Ok(NetView {
                id: 0,
                pool: self.settings.pool.clone(),
                icc: self.settings.icc,
                internal: false,
                cluster: false,
            });
        }
        let Some(n) = self.state.networks.get(name) else {
            fail!(
                NotFound,
                "no network {name:?} (create it with `tollgate network create {name}`)"
            );
        };
        Ok(NetView {
            id: n.id,
            pool: Pool::new(n.subnet).kind(Kind::Internal)?,
            icc: n.icc,
            internal: n.internal,
            cluster: n.cluster,
        })
    }

    /// Every subnet in use: the default pool's and the networks'.
    fn subnets(&self) -> Vec<(String, Ipv4Net)> {
        let mut v = vec![(DEFAULT_NETWORK.to_string(), self.settings.pool.net())];
        v.extend(
            self.state
                .networks
                .values()
                .map(|n| (n.name.clone(), n.subnet)),
        );
        v
    }

    pub async fn network_create(&mut self, req: &api::NetworkCreate) -> Result<api::NetworkInfo> {
        let name = req.name.as_str();
        network::validate_name(name).kind(Kind::BadInput)?;
        if name == DEFAULT_NETWORK || self.state.networks.contains_key(name) {
            fail!(Conflict, "network {name:?} already exists");
        }
        if self.cluster.is_some() {
            let subnet = match &req.subnet {
                Some(s) => Some(
                    s.parse::<Ipv4Net>()
                        .map_err(|e| anyhow::anyhow!("--subnet {s:?} is not an IPv4 CIDR: {e}"))
                        .kind(Kind::BadInput)?
                        .trunc(),
                ),
                None => None,
            };
            return self.cluster_network_create(req, subnet).await;
        }
        let taken = self.subnets();
        let subnet = if let Some(s) = &req.subnet {
            let net: Ipv4Net = s
                .parse()
                .map_err(|e| anyhow::anyhow!("--subnet {s:?} is not an IPv4 CIDR: {e}"))
                .kind(Kind::BadInput)?;
            let net = Pool::new(net).kind(Kind::BadInput)?.net();
            if let Some((other, o)) = taken.iter().find(|(_, t)| network::overlaps(net, *t)) {
                fail!(
                    Conflict,
                    "subnet {net} overlaps {o} of network {other:?}; pick another --subnet"
                );
            }
            net
        } else {
            let nets: Vec<Ipv4Net> = taken.iter().map(|(_, n)| *n).collect();
            let Some(n) = network::auto_subnet(&nets) else {
                fail!(
                    Conflict,
                    "every /{} of {} is taken; give --subnet",
                    network::AUTO_PREFIX,
                    network::AUTO_SUBNETS
                );
            };
            n
        };
        let used: HashSet<u32> = self.state.networks.values().map(|n| n.id).collect();
        let id = (1..u32::MAX)
            .find(|i| !used.contains(i))
            .expect("fewer than 2^32 networks");
        let n = Network {
            name: name.to_string(),
            id,
            subnet,
            icc: !req.no_icc,
            internal: req.internal,
            cluster: false,
        };
        let mut next = self.state.clone();
        next.networks.insert(name.to_string(), n.clone());
        self.transact(Change {
            next,
            commit: Commit::Snapshot,
            steps: Vec::new(),
        })
        .await?;
        info!(network = name, %subnet, icc = n.icc, internal = n.internal, "network created");
        Ok(self.network_info(name))
    }

    pub async fn network_rm(&mut self, name: &str) -> Result<api::NetworkDeleted> {
        if name == DEFAULT_NETWORK {
            fail!(BadInput, "the network {DEFAULT_NETWORK:?} always exists");
        }
        if !self.state.networks.contains_key(name) {
            fail!(NotFound, "no network {name:?}");
        }
        let attached: Vec<&str> = self
            .state
            .containers
            .values()
            .filter(|c| c.network == name)
            .map(|c| c.name.as_str())
            .collect();
        if !attached.is_empty() {
            fail!(
                Conflict,
                "network {name:?} still has {} container(s) ({}); remove them first",
                attached.len(),
                attached.join(", ")
            );
        }
        if self.state.networks.get(name).is_some_and(|n| n.cluster) {
            self.cluster_network_rm(name).await?;
        } else {
            let mut next = self.state.clone();
            next.networks.remove(name);
            self.transact(Change {
                next,
                commit: Commit::Snapshot,
                steps: Vec::new(),
            })
            .await?;
        }
        info!(network = name, "network removed");
        Ok(api::NetworkDeleted {
            deleted: name.to_string(),
        })
    }

    pub(super) fn network_info(&self, name: &str) -> api::NetworkInfo {
        let containers = self
            .state
            .containers
            .values()
            .filter(|c| c.network == name)
            .count();
        match self.state.networks.get(name) {
            Some(n) => api::NetworkInfo {
                name: n.name.clone(),
                subnet: n.subnet.to_string(),
                scope: if n.cluster { "cluster" } else { "local" }.into(),
                vni: n.cluster.then_some(n.id),
                icc: n.icc,
                internal: n.internal,
                containers,
            },
            None => api::NetworkInfo {
                name: DEFAULT_NETWORK.into(),
                subnet: self.settings.pool.net().to_string(),
                scope: "local".into(),
                vni: None,
                icc: self.settings.icc,
                internal: false,
                containers,
            },
        }
    }

    pub fn network_list(&self) -> Vec<api::NetworkInfo> {
        std::iter::once(DEFAULT_NETWORK)
            .chain(self.state.networks.keys().map(String::as_str))
            .map(|n| self.network_info(n))
            .collect()
    }

    pub fn network_get(&self, name: &str) -> Result<api::NetworkInfo> {
        self.net_view(name)?;
        Ok(self.network_info(name))
    }

    /// Published ports need a way out: refused for containers of internal networks.
    pub(super) fn check_publishable(&self, container: &str, network: &str) -> Result<()> {
        if self.state.networks.get(network).is_some_and(|n| n.internal) {
            fail!(
                BadInput,
                "container {container} is on the internal network {network:?}: its ports cannot be published"
            );
        }
        Ok(())
    }
}

/// The network a request names, `default` when none.
pub fn or_default(network: Option<&str>) -> &str {
    network.unwrap_or(model::DEFAULT_NETWORK)
}
