//! The node: the desired state, the store that keeps it and the datapath that enforces it,
//! and the operations the API exposes. Every change goes through `tx::transact` (validate
//! here, then apply, commit, undo on failure), so a refused or failed command changes nothing.

pub mod cluster;
pub mod cni;
pub mod error;
pub mod network;
pub mod tx;
pub mod views;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    ops::RangeInclusive,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use datapath_common::{
    endpoint::{ADDR_LOOPBACK, ADDR_UPLINK},
    maps,
    stats::{CNT_CT_CREATED, CNT_CT_REMOVED},
};
use tracing::{info, warn};

pub use crate::datapath::CtTimeouts;
use crate::{
    api::types as api,
    datapath::{
        Datapath, NodeSetup, PROG_FROM_CONTAINER, PROG_FROM_UPLINK, PROG_TO_CONTAINER, SOCK_PROGS,
    },
    model::{
        self, policy::compile, pool, Action, AddSpec, Container, DelSpec, Match, PortChange,
        PortMapping, Proto, Rule, Stance, State, SLOT_PREFIX,
    },
    netns,
    store::{Commit, Store},
};
use error::{fail, Kind, KindExt, Result};
use tx::{Change, Step};
use views::{container_info, ct_entry, limit_info, mapping_info, monotonic_ns, rule_info};

/// Daemon settings (from the `daemon` flags).
#[derive(Clone, Debug)]
pub struct Settings {
    pub uplink: String,
    pub netns: Option<String>,
    pub pool: model::Pool,
    pub port_range: RangeInclusive<u16>,
    pub snat_ip: Option<Ipv4Addr>,
    pub icc: bool,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    pub conntrack_max: u32,
    /// Masquerade source ports (and ICMP echo ids).
    pub nat_ports: RangeInclusive<u16>,
    pub ct: CtTimeouts,
    /// How often the conntrack GC removes expired entries.
    pub ct_gc_interval: Duration,
    pub metrics: Option<std::net::SocketAddr>,
    /// Cluster mode (`--cluster`).
    pub cluster: Option<ClusterSettings>,
}

/// `daemon --cluster ...`.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// `http://HOST:PORT` each.
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub node_name: String,
    /// Default: the uplink's primary address.
    pub underlay_ip: Option<Ipv4Addr>,
    pub ttl: Duration,
}

/// The uplink as found at start-up.
#[derive(Clone, Debug, Default)]
pub struct Uplink {
    pub ifindex: u32,
    pub ips: Vec<Ipv4Addr>,
}

pub struct Node<D, S> {
    pub settings: Settings,
    state: State,
    dp: D,
    store: S,
    uplink: Uplink,
    started: Instant,
    /// Cluster mode: the store and what it last said.
    cluster: Option<cluster::ClusterCtx>,
    /// The MTU of cluster networks' containers and of the VXLAN device (cluster mode).
    overlay_mtu: u32,
}

impl<D: Datapath, S: Store> Node<D, S> {
    /// A node with the store's state; `start` then makes the datapath match it.
    pub fn new(settings: Settings, uplink: Uplink, dp: D, mut store: S) -> Result<Self> {
        let state = store.load().context("loading the state")?;
        Ok(Self {
            settings,
            state,
            dp,
            store,
            uplink,
            started: Instant::now(),
            cluster: None,
            overlay_mtu: 0,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn datapath(&self) -> &D {
        &self.dp
    }

    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Takes the node apart (tests restart a node on the same datapath and store).
    pub fn into_parts(self) -> (D, S) {
        (self.dp, self.store)
    }

    async fn transact(&mut self, change: Change) -> Result<()> {
        tx::transact(&mut self.dp, &mut self.store, &mut self.state, change).await
    }

    pub fn container(&self, name: &str) -> Result<&Container> {
        match self.state.containers.get(name) {
            Some(c) => Ok(c),
            None => fail!(
                NotFound,
                "unknown container {name:?} (see `tollgate container list`)"
            ),
        }
    }

    /// Start-up: makes the datapath match the stored state without disturbing what already
    /// works. Pinned maps (conntrack included) are reused as they are; missing veths and
    /// namespaces are recreated; entries are rewritten from the state and stale ones removed.
    pub async fn start(&mut self) -> Result<()> {
        // Cluster networks' containers and the VXLAN device fit the encapsulation inside
        // the uplink's MTU.
        if self.settings.cluster.is_some() {
            let mtu = self.dp.link_mtu(self.uplink.ifindex).await?;
            self.overlay_mtu = mtu.saturating_sub(datapath_common::overlay::OVERHEAD);
        }
        let s = &self.settings;
        let setup = NodeSetup {
            uplink: s.uplink.clone(),
            uplink_ifindex: self.uplink.ifindex,
            snat_ip: s.snat_ip.or_else(|| self.uplink.ips.first().copied()),
            icc: s.icc,
            pool: s.pool.net(),
            nat_ports: s.nat_ports.clone(),
            ct: s.ct,
            overlay: s.cluster.as_ref().map(|_| crate::datapath::OverlaySetup {
                mtu: self.overlay_mtu,
            }),
        };
        self.dp.setup_node(&setup).await?;
        self.sync_locals()?;
        self.restore_containers().await?;
        tx::sync_portmaps(&mut self.dp, &self.state)?;
        let ids: HashSet<u32> = self.state.containers.values().map(|c| c.id).collect();
        for (id, net) in self.dp.chains()? {
            if !ids.contains(&id) {
                self.dp.remove_chain(id, net)?;
            }
        }
        let all: Vec<(u32, String)> = self
            .state
            .containers
            .values()
            .map(|c| (c.id, c.name.clone()))
            .collect();
        for (id, name) in &all {
            tx::sync_policy(&mut self.dp, &self.state, *id, name)?;
            tx::sync_limit(&mut self.dp, &self.state, *id, name)?;
        }
        tx::sync_links(&mut self.dp, &self.state)?;
        // Last: socket hooks act only once every map they read is filled.
        self.dp.attach_socket_hooks()?;
        info!(
            containers = self.state.containers.len(),
            port_maps = self.state.all_ports().count(),
            "state applied"
        );
        Ok(())
    }

    /// Node addresses: the uplink's, loopback's, and every gateway (added per container).
    fn sync_locals(&mut self) -> Result<()> {
        let wanted: Vec<(Ipv4Addr, u32)> = self
            .uplink
            .ips
            .iter()
            .map(|ip| (*ip, ADDR_UPLINK))
            .chain(std::iter::once((Ipv4Addr::LOCALHOST, ADDR_LOOPBACK)))
            .collect();
        let gateways: HashSet<Ipv4Addr> =
            self.state.containers.values().map(|c| c.gateway).collect();
        for (ip, _) in self.dp.locals()? {
            if !wanted.iter().any(|(w, _)| *w == ip) && !gateways.contains(&ip) {
                self.dp.remove_local(ip)?;
            }
        }
        for (ip, f) in &wanted {
            self.dp.add_local(*ip, *f)?;
        }
        Ok(())
    }

    /// Plumbs again what vanished (veths, namespaces tollgate owns), fills every container's
    /// endpoint and hooks, and removes endpoints no container has.
    async fn restore_containers(&mut self) -> Result<()> {
        let mut changed = false;
        let mut orphans = Vec::new();
        let names: Vec<String> = self.state.containers.keys().cloned().collect();
        for name in names {
            let mut c = self.state.containers[&name].clone();
            if c.cni.is_some() {
                // The runtime owns the namespace, and its path may not be visible here: the
                // host veth tells whether it still exists (the pair dies with it).
                if self.dp.link_index(&c.host_ifname).await? == Some(c.host_ifindex) {
                    self.dp.add_gateway(&c).await?;
                    tx::activate(&mut self.dp, &self.state, &c)?;
                } else {
                    orphans.push(name);
                }
                continue;
            }
            if !self.dp.netns_exists(&c.netns) {
                if c.netns_created {
                    warn!(container = %name, "namespace {} vanished; recreating it", c.netns.display());
                } else {
                    warn!(container = %name, "namespace {} is gone; the container stays configured but unreachable until `container del`", c.netns.display());
                    continue;
                }
            }
            let idx = self.dp.link_index(&c.host_ifname).await?;
            if idx == Some(c.host_ifindex) && self.dp.netns_exists(&c.netns) {
                self.dp.add_gateway(&c).await?;
            } else {
                warn!(container = %name, "veth {} missing or recreated; plumbing it again", c.host_ifname);
                self.dp.detach_container(&c)?;
                c.host_ifindex = self
                    .dp
                    .plumb(&c)
                    .await
                    .with_context(|| format!("re-creating container {name}"))?;
                self.state.containers.insert(name.clone(), c.clone());
                changed = true;
            }
            tx::activate(&mut self.dp, &self.state, &c)?;
        }
        let ips: HashSet<Ipv4Addr> = self.state.containers.values().map(|c| c.ip).collect();
        let ifindexes: HashSet<u32> = self
            .state
            .containers
            .values()
            .map(|c| c.host_ifindex)
            .collect();
        for ip in self.dp.endpoint_ips()? {
            if !ips.contains(&ip) {
                self.dp.remove_endpoint(ip, 0)?;
            }
        }
        for i in self.dp.endpoint_ifindexes()? {
            if !ifindexes.contains(&i) {
                self.dp.remove_endpoint_ifindex(i)?;
            }
        }
        if changed {
            self.store
                .commit(&self.state, &Commit::Snapshot)
                .context("saving state")
                .kind(Kind::Unavailable)?;
        }
        self.drop_orphaned_cni(orphans).await
    }

    // Containers.

    /// The smallest container id not in use (ids index the per-container stats array).
    fn free_id(&self) -> Result<u32> {
        let used: HashSet<u32> = self.state.containers.values().map(|c| c.id).collect();
        match (1..datapath_common::maps::ENDPOINTS_MAX).find(|i| !used.contains(i)) {
            Some(id) => Ok(id),
            None => fail!(
                Conflict,
                "too many containers (at most {})",
                datapath_common::maps::ENDPOINTS_MAX - 1
            ),
        }
    }

    /// The /30 for a new container of `network`: the one of `ip` if asked for, else the
    /// first free one (from this node's blocks for a cluster network).
    async fn plan_slot(&mut self, network: &str, ip: Option<Ipv4Addr>) -> Result<model::Slot> {
        let view = self.net_view(network)?;
        if view.cluster {
            return self.cluster_slot(network, ip).await;
        }
        let pool = view.pool;
        let used: HashSet<Ipv4Addr> = self.state.containers.values().map(|c| c.ip).collect();
        Ok(match ip {
            Some(ip) => {
                let s = pool.slot_for(ip).kind(Kind::BadInput)?;
                if used.contains(&ip) {
                    fail!(
                        Conflict,
                        "address {ip} is already assigned to another container"
                    );
                }
                s
            }
            None => pool.allocate(&used).kind(Kind::Conflict)?,
        })
    }

    /// The MTU of a new container's veth: the overlay's on a cluster network, else the
    /// kernel's default.
    fn mtu_for(&self, network: &str) -> u32 {
        match self.state.networks.get(network) {
            Some(n) if n.cluster => self.overlay_mtu,
            _ => 0,
        }
    }

    pub async fn container_add(&mut self, req: api::ContainerCreate) -> Result<api::ContainerInfo> {
        let name = req.name.as_str();
        model::state::validate_name(name).kind(Kind::BadInput)?;
        if self.state.containers.contains_key(name) {
            fail!(Conflict, "container {name:?} already exists");
        }
        let network = network::or_default(req.network.as_deref()).to_string();
        let slot = self.plan_slot(&network, req.ip).await?;
        let mtu = self.mtu_for(&network);
        let netns = if let Some(p) = &req.netns {
            if !self.dp.netns_exists(p) {
                fail!(BadInput, "network namespace {} does not exist", p.display());
            }
            p.clone()
        } else {
            let p = netns::named_path(&format!("tg-{name}"));
            if self.dp.netns_exists(&p) {
                fail!(
                    Conflict,
                    "network namespace tg-{name} already exists (remove it or pass --netns PATH)"
                );
            }
            p
        };
        let id = self.free_id()?;
        let c = Container {
            name: name.to_string(),
            id,
            netns,
            netns_created: req.netns.is_none(),
            ip: slot.ip,
            gateway: slot.gateway,
            prefix_len: SLOT_PREFIX,
            host_ifname: format!("tgv{id}"),
            host_ifindex: 0,
            ifname: model::DEFAULT_IFNAME.to_string(),
            cni: None,
            network,
            mtu,
        };
        let mut next = self.state.clone();
        next.containers.insert(name.to_string(), c.clone());
        self.transact(Change {
            next,
            commit: Commit::Snapshot,
            steps: vec![Step::CreateContainer(c)],
        })
        .await?;
        let c = self.container(name)?;
        info!(container = name, ip = %c.ip, ifname = %c.host_ifname, "container added");
        Ok(container_info(c))
    }

    /// Removes a container with its port maps, links, policy, limits and conntrack entries.
    pub async fn container_del(&mut self, name: &str) -> Result<api::Deleted> {
        let c = self.container(name)?.clone();
        let network = c.network.clone();
        let maps = self.state.ports.get(name).cloned().unwrap_or_default();
        let mut next = self.state.clone();
        next.containers.remove(name);
        next.ports.remove(name);
        next.policies.remove(name);
        next.limits.remove(name);
        next.links.retain(|(f, t)| f != name && t != name);
        let (id, name_s) = (c.id, name.to_string());
        self.transact(Change {
            next,
            commit: Commit::Snapshot,
            steps: vec![
                Step::UnmapPorts {
                    container: name_s.clone(),
                    maps,
                },
                Step::SyncLinks,
                Step::SyncPolicy {
                    id,
                    name: name_s.clone(),
                },
                Step::SyncLimit {
                    id,
                    name: name_s.clone(),
                },
                Step::RemoveContainer(c),
            ],
        })
        .await?;
        info!(container = name, "container deleted");
        if self.state.networks.get(&network).is_some_and(|n| n.cluster) {
            self.release_empty_blocks(&network).await;
        }
        Ok(api::Deleted { deleted: name_s })
    }

    pub fn container_list(&self) -> Vec<api::ContainerInfo> {
        self.state.containers.values().map(container_info).collect()
    }

    pub fn container_get(&self, name: &str) -> Result<api::ContainerInfo> {
        self.container(name).map(container_info)
    }

    // Port maps.

    /// Expands and validates specs into new mappings; nothing is applied.
    fn plan_ports(&self, specs: &[AddSpec]) -> Result<Vec<PortMapping>> {
        /// A host IP holding a (proto, port), and the container whose map it is (None: an
        /// earlier spec of the request being planned).
        type Holder<'a> = (Option<Ipv4Addr>, Option<&'a str>);
        // Who holds each (proto, port), on which host IPs: O(1) conflict checks, so a batch of
        // 10,000 specs against 10,000 existing maps stays linear.
        let mut taken: HashMap<(Proto, u16), Vec<Holder>> = HashMap::new();
        for (owner, m) in self.state.all_ports() {
            taken
                .entry((m.proto, m.host_port))
                .or_default()
                .push((m.host_ip, Some(owner)));
        }
        let held = |ip, port, proto| self.dp.port_held(ip, port, proto);
        let mut out: Vec<PortMapping> = Vec::new();
        for spec in specs {
            for (i, cport) in spec.container_ports.clone().enumerate() {
                let host_port = match &spec.host_ports {
                    Some(r) => *r.start() + u16::try_from(i).unwrap_or(u16::MAX),
                    None => pool::allocate_port(&self.settings.port_range, |p| {
                        !taken.contains_key(&(spec.proto, p)) && !held(spec.host_ip, p, spec.proto)
                    })
                    .kind(Kind::Conflict)?,
                };
                let m = PortMapping {
                    host_ip: spec.host_ip,
                    host_port,
                    container_port: cport,
                    proto: spec.proto,
                };
                let holders = taken.entry((m.proto, m.host_port)).or_default();
                let clash = holders.iter().find(|(ip, _)| ips_overlap(*ip, m.host_ip));
                match clash {
                    Some((_, Some(owner))) => fail!(
                        Conflict,
                        "host port {m} is already mapped (to container {owner}); delete that map first or pick another port"
                    ),
                    Some((_, None)) => fail!(BadInput, "host port {m} appears twice in this request"),
                    None => {}
                }
                if held(m.host_ip, m.host_port, m.proto) {
                    fail!(Conflict, "host port {m} is already in use by a process on the node; stop it or pick another port");
                }
                holders.push((m.host_ip, None));
                out.push(m);
            }
        }
        Ok(out)
    }

    pub async fn port_add(
        &mut self,
        container: &str,
        specs: &[AddSpec],
    ) -> Result<Vec<api::PortMapInfo>> {
        let network = self.container(container)?.network.clone();
        self.check_publishable(container, &network)?;
        if specs.is_empty() {
            fail!(
                BadInput,
                "no port spec given (e.g. `tollgate port add {container} 8080:80`)"
            );
        }
        let new = self.plan_ports(specs)?;
        let change = PortChange {
            container: container.to_string(),
            added: new.clone(),
            removed: Vec::new(),
        };
        let mut next = self.state.clone();
        change.apply(&mut next);
        self.transact(Change {
            next,
            commit: Commit::Ports(change),
            steps: vec![Step::MapPorts {
                container: container.to_string(),
                maps: new.clone(),
            }],
        })
        .await?;
        info!(container, count = new.len(), "port maps added");
        Ok(new.iter().map(|m| mapping_info(container, m)).collect())
    }

    pub async fn port_del(
        &mut self,
        container: &str,
        specs: &[DelSpec],
    ) -> Result<Vec<api::PortMapInfo>> {
        let network = self.container(container)?.network.clone();
        self.check_publishable(container, &network)?;
        if specs.is_empty() {
            fail!(
                BadInput,
                "no port given (e.g. `tollgate port del {container} 8080`)"
            );
        }
        let mine = self.state.ports.get(container).cloned().unwrap_or_default();
        let mut gone = Vec::new();
        for d in specs {
            for port in d.host_ports.clone() {
                let Some(found) = mine
                    .iter()
                    .find(|m| m.host_port == port && m.proto == d.proto && m.host_ip == d.host_ip)
                else {
                    let ip = d.host_ip.map(|i| format!("{i}:")).unwrap_or_default();
                    fail!(NotFound, "container {container} has no port map {ip}{port}/{} (see `tollgate port list {container}`)", d.proto);
                };
                gone.push(*found);
            }
        }
        let change = PortChange {
            container: container.to_string(),
            added: Vec::new(),
            removed: gone.clone(),
        };
        let mut next = self.state.clone();
        change.apply(&mut next);
        self.transact(Change {
            next,
            commit: Commit::Ports(change),
            steps: vec![Step::UnmapPorts {
                container: container.to_string(),
                maps: gone.clone(),
            }],
        })
        .await?;
        Ok(gone.iter().map(|m| mapping_info(container, m)).collect())
    }

    pub fn port_list(&self, container: Option<&str>) -> Result<Vec<api::PortMapInfo>> {
        if let Some(c) = container {
            self.container(c)?;
        }
        Ok(self
            .state
            .all_ports()
            .filter(|(c, _)| container.is_none_or(|w| w == *c))
            .map(|(c, m)| mapping_info(c, m))
            .collect())
    }

    // Policy.

    pub async fn policy_link(&mut self, from: &str, to: &str, add: bool) -> Result<api::LinkInfo> {
        self.container(from)?;
        self.container(to)?;
        if from == to {
            fail!(
                BadInput,
                "a container always reaches itself; link two different containers"
            );
        }
        let mut next = self.state.clone();
        let key = (from.to_string(), to.to_string());
        if add {
            next.links.insert(key);
        } else if !next.links.remove(&key) {
            fail!(NotFound, "there is no link from {from} to {to}");
        }
        self.transact(Change {
            next,
            commit: Commit::Snapshot,
            steps: vec![Step::SyncLinks],
        })
        .await?;
        Ok(api::LinkInfo {
            from: from.to_string(),
            to: to.to_string(),
            linked: add,
        })
    }

    async fn policy_change(&mut self, name: &str, next: State) -> Result<api::PolicyInfo> {
        let id = self.container(name)?.id;
        self.transact(Change {
            next,
            commit: Commit::Snapshot,
            steps: vec![Step::SyncPolicy {
                id,
                name: name.to_string(),
            }],
        })
        .await?;
        self.policy_list(name)
    }

    pub async fn policy_egress(&mut self, name: &str, stance: Stance) -> Result<api::PolicyInfo> {
        self.container(name)?;
        let mut next = self.state.clone();
        next.policies
            .entry(name.to_string())
            .or_default()
            .egress_deny = stance == Stance::Deny;
        self.policy_change(name, next).await
    }

    pub async fn policy_rule_add(
        &mut self,
        name: &str,
        m: Match,
        action: Action,
    ) -> Result<api::PolicyInfo> {
        self.container(name)?;
        let mut next = self.state.clone();
        let p = next.policies.entry(name.to_string()).or_default();
        p.rules.retain(|r| r.m != m);
        p.rules.push(Rule { m, action });
        compile(p).kind(Kind::BadInput)?;
        self.policy_change(name, next).await
    }

    pub async fn policy_rule_del(&mut self, name: &str, m: Match) -> Result<api::PolicyInfo> {
        self.container(name)?;
        let mut next = self.state.clone();
        let p = next.policies.entry(name.to_string()).or_default();
        let before = p.rules.len();
        p.rules.retain(|r| r.m != m);
        if p.rules.len() == before {
            fail!(
                NotFound,
                "container {name} has no rule {m} (see `tollgate policy list {name}`)"
            );
        }
        self.policy_change(name, next).await
    }

    pub fn policy_list(&self, name: &str) -> Result<api::PolicyInfo> {
        self.container(name)?;
        let p = self.state.policies.get(name).cloned().unwrap_or_default();
        Ok(api::PolicyInfo {
            container: name.to_string(),
            egress: if p.egress_deny {
                Stance::Deny
            } else {
                Stance::Allow
            },
            icc: self.settings.icc,
            links: self
                .state
                .links
                .iter()
                .filter(|(f, _)| f == name)
                .map(|(_, t)| t.clone())
                .collect(),
            rules: p.rules.iter().map(rule_info).collect(),
        })
    }

    // Limits.

    pub async fn limit_set(&mut self, name: &str, req: &api::LimitSet) -> Result<api::LimitInfo> {
        let id = self.container(name)?.id;
        if req.egress_bps.is_none() && req.ingress_bps.is_none() {
            fail!(
                BadInput,
                "give --egress RATE and/or --ingress RATE (e.g. --egress 50mbit)"
            );
        }
        let mut l = self.state.limits.get(name).copied().unwrap_or_default();
        if let Some(e) = req.egress_bps {
            l.egress = Some(
                model::rate::check_rate(e)
                    .context("--egress")
                    .kind(Kind::BadInput)?,
            );
        }
        if let Some(i) = req.ingress_bps {
            l.ingress = Some(
                model::rate::check_rate(i)
                    .context("--ingress")
                    .kind(Kind::BadInput)?,
            );
        }
        if let Some(b) = req.burst_bytes {
            l.burst = Some(
                model::rate::check_size(b)
                    .context("--burst")
                    .kind(Kind::BadInput)?,
            );
        }
        let mut next = self.state.clone();
        next.limits.insert(name.to_string(), l);
        self.limit_change(id, name, next).await?;
        Ok(limit_info(name, &l))
    }

    pub async fn limit_clear(&mut self, name: &str) -> Result<api::LimitCleared> {
        let id = self.container(name)?.id;
        let mut next = self.state.clone();
        if next.limits.remove(name).is_none() {
            fail!(NotFound, "container {name} has no limits");
        }
        self.limit_change(id, name, next).await?;
        Ok(api::LimitCleared {
            container: name.to_string(),
            cleared: true,
        })
    }

    async fn limit_change(&mut self, id: u32, name: &str, next: State) -> Result<()> {
        self.transact(Change {
            next,
            commit: Commit::Snapshot,
            steps: vec![Step::SyncLimit {
                id,
                name: name.to_string(),
            }],
        })
        .await
    }

    pub fn limit_get(&self, name: &str) -> Result<api::LimitInfo> {
        self.container(name)?;
        let l = self.state.limits.get(name).copied().unwrap_or_default();
        Ok(limit_info(name, &l))
    }

    pub fn limit_list(&self) -> Vec<api::LimitInfo> {
        self.state
            .limits
            .iter()
            .map(|(n, l)| limit_info(n, l))
            .collect()
    }

    // Observability.

    pub fn conntrack_list(&self) -> Result<Vec<api::ConntrackEntry>> {
        let now = monotonic_ns();
        Ok(self
            .dp
            .conntrack()?
            .iter()
            .map(|c| ct_entry(c, now))
            .collect())
    }

    pub fn conntrack_flush(&mut self, container: Option<&str>) -> Result<api::Flushed> {
        let n = match container {
            None => self.dp.remove_conntrack(&|_| true)?,
            Some(name) => {
                let id = self.container(name)?.id;
                self.dp.remove_conntrack(&|v| v.endpoint_id == id)?
            }
        };
        self.dp.add_ct_removed(n as u64)?;
        Ok(api::Flushed { flushed: n })
    }

    /// Removes conntrack entries idle for longer than their timeout (the datapath already
    /// ignores them; this frees the slots and keeps `conntrack list` honest).
    pub fn conntrack_gc(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let t = self.settings.ct;
        let n = self
            .dp
            .remove_conntrack(&|v| now.saturating_sub(v.last_seen_ns) > t.of(v))?;
        self.dp.add_ct_removed(n as u64)?;
        Ok(n)
    }

    /// Per-container counters; conntrack entries are counted in one pass over the table.
    pub fn stats(&self, name: Option<&str>) -> Result<Vec<api::ContainerStats>> {
        let list: Vec<&Container> = match name {
            Some(n) => vec![self.container(n)?],
            None => self.state.containers.values().collect(),
        };
        let mut ct: HashMap<u32, usize> = HashMap::new();
        for v in self.dp.conntrack()? {
            *ct.entry(v.endpoint_id).or_default() += 1;
        }
        let mut out = Vec::new();
        for c in list {
            let t = self.dp.endpoint_stats(c.id)?;
            let mut drops: BTreeMap<String, u64> = datapath_common::drop::DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), t.drops[*r as usize]))
                .collect();
            // The failed-step reasons together, under the name they had before the split.
            drops.insert(
                api::DROPS_INTERNAL.to_string(),
                datapath_common::drop::internal_total(&t.drops),
            );
            out.push(api::ContainerStats {
                container: c.name.clone(),
                ip: c.ip,
                rx_packets: t.rx_packets,
                rx_bytes: t.rx_bytes,
                tx_packets: t.tx_packets,
                tx_bytes: t.tx_bytes,
                drops,
                conntrack_entries: ct.get(&c.id).copied().unwrap_or(0),
            });
        }
        Ok(out)
    }

    pub fn status(&self) -> Result<api::Status> {
        let programs = self
            .dp
            .programs()
            .into_iter()
            .map(|p| api::ProgramEntry {
                name: p.name,
                kind: p.kind.to_string(),
                id: p.id,
            })
            .collect();
        let mut attach = vec![api::AttachPoint {
            program: PROG_FROM_UPLINK.to_string(),
            at: format!("{} ingress (tcx)", self.settings.uplink),
            container: None,
        }];
        for c in self.state.containers.values() {
            for (prog, dir) in [
                (PROG_FROM_CONTAINER, "ingress"),
                (PROG_TO_CONTAINER, "egress"),
            ] {
                attach.push(api::AttachPoint {
                    program: prog.to_string(),
                    at: format!("{} {dir} (tcx)", c.host_ifname),
                    container: Some(c.name.clone()),
                });
            }
        }
        let cg = self.dp.cgroup();
        for (name, _) in SOCK_PROGS {
            attach.push(api::AttachPoint {
                program: (*name).to_string(),
                at: format!("cgroup {cg}"),
                container: None,
            });
        }
        let ct_entries = self.dp.conntrack()?.len();
        let fill = |entries: usize, max: u32| api::MapFill { entries, max };
        let maps: BTreeMap<String, api::MapFill> = [
            (
                "TG_PORTMAP",
                fill(self.dp.portmaps()?.len(), maps::PORTMAP_MAX),
            ),
            (
                "TG_ENDPOINTS",
                fill(self.dp.endpoint_ips()?.len(), maps::ENDPOINTS_MAX),
            ),
            (
                "TG_LOCAL_ADDRS",
                fill(self.dp.locals()?.len(), maps::LOCAL_ADDRS_MAX),
            ),
            ("TG_CT", fill(ct_entries, self.settings.conntrack_max)),
            ("TG_POLICY", fill(self.dp.chains()?.len(), maps::POLICY_MAX)),
            ("TG_LINKS", fill(self.dp.links()?.len(), maps::LINKS_MAX)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let counters = self.dp.counters()?;
        let cnt = |i: u32| counters.get(i as usize).copied().unwrap_or(0);
        let entries = ct_entries as u64;
        let (created, removed) = (cnt(CNT_CT_CREATED), cnt(CNT_CT_REMOVED));
        let named = datapath_common::stats::NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| ((*n).to_string(), counters.get(i).copied().unwrap_or(0)))
            .collect();
        let s = &self.settings;
        Ok(api::Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uplink: s.uplink.clone(),
            uplink_ips: self.uplink.ips.clone(),
            netns: s.netns.clone(),
            pool: s.pool.net().to_string(),
            snat_ip: s.snat_ip,
            icc: s.icc,
            port_range: format!("{}-{}", s.port_range.start(), s.port_range.end()),
            uptime_secs: self.started.elapsed().as_secs(),
            containers: self.state.containers.len(),
            port_maps: self.state.all_ports().count(),
            programs,
            attach_points: attach,
            maps,
            pins: s.bpffs.display().to_string(),
            counters: named,
            conntrack: api::ConntrackSummary {
                entries,
                max: s.conntrack_max,
                created,
                removed,
                // LRU evictions are invisible to both sides; they are what is neither present
                // nor removed by the agent.
                evicted: created.saturating_sub(removed).saturating_sub(entries),
            },
        })
    }
}

/// Two maps of the same port and protocol collide when their host IPs overlap (a wildcard
/// overlaps every address).
fn ips_overlap(a: Option<Ipv4Addr>, b: Option<Ipv4Addr>) -> bool {
    a.is_none() || b.is_none() || a == b
}

#[cfg(test)]
pub(crate) mod tests;
