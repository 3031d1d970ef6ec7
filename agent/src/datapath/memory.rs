//! A datapath in memory, for tests of the node operations without root: every table is a
//! collection, and any write can be made to fail (`fail_op`, `fail_at`) to test rollback.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};
use datapath_common::{
    endpoint::{PolicyChain, ADDR_GATEWAY},
    ratelimit::RateLimit,
};
use ipnet::Ipv4Net;

use super::{CtView, Datapath, EndpointInfo, EpTotals, NodeSetup, ProgramInfo, Published, Target};
use crate::model::{Container, Proto};

/// What the fake kernel holds. Zero stats and unlimited buckets are not stored, so a table
/// compares equal to its state before an operation that was rolled back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub uplink: Option<String>,
    pub socket_hooks: bool,
    /// Namespaces that exist.
    pub netns: BTreeSet<PathBuf>,
    /// Host veths by name, with their ifindex.
    pub veths: BTreeMap<String, u32>,
    /// Host veths with the container hooks attached.
    pub hooked: BTreeSet<String>,
    pub locals: BTreeMap<Ipv4Addr, u32>,
    pub endpoints: BTreeMap<Ipv4Addr, EndpointInfo>,
    pub by_ifindex: BTreeMap<u32, EndpointInfo>,
    pub portmaps: BTreeMap<Published, Target>,
    pub guards: BTreeSet<(u16, u8)>,
    /// Guarded ports a runtime may bind, with its tgid.
    pub guard_owners: BTreeMap<(u16, u8), u32>,
    /// Ports kept out of the ephemeral range for Tollgate.
    pub reserved: BTreeSet<u16>,
    /// Other nodes' container prefixes: prefix -> (node, VNI).
    pub remotes: BTreeMap<ipnet::Ipv4Net, (Ipv4Addr, u32)>,
    pub chains: BTreeMap<(u32, Ipv4Net), PolicyChain>,
    pub links: BTreeSet<(u32, u32)>,
    pub limits: BTreeMap<u32, RateLimit>,
    pub stats: BTreeMap<u32, EpTotals>,
    pub conntrack: Vec<CtView>,
    pub counters: Vec<u64>,
}

#[derive(Default)]
pub struct MemoryDatapath {
    pub t: Tables,
    /// Writes of this name fail (e.g. `"plumb"`, `"set_portmap"`).
    pub fail_op: Option<&'static str>,
    /// The write with this sequence number fails (see `writes`).
    pub fail_at: Option<usize>,
    /// Writes attempted so far.
    pub writes: usize,
    /// (port, proto) pairs a "node process" holds.
    pub held: BTreeSet<(u16, Proto)>,
    next_ifindex: u32,
}

impl MemoryDatapath {
    fn write(&mut self, op: &'static str) -> Result<()> {
        self.writes += 1;
        if self.fail_op == Some(op) || self.fail_at == Some(self.writes) {
            bail!("{op} failed (injected)");
        }
        Ok(())
    }
}

impl Datapath for MemoryDatapath {
    async fn setup_node(&mut self, setup: &NodeSetup) -> Result<()> {
        self.write("setup_node")?;
        self.t.uplink = Some(setup.uplink.clone());
        Ok(())
    }

    fn attach_socket_hooks(&mut self) -> Result<()> {
        self.write("attach_socket_hooks")?;
        self.t.socket_hooks = true;
        Ok(())
    }

    fn locals(&self) -> Result<Vec<(Ipv4Addr, u32)>> {
        Ok(self.t.locals.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn add_local(&mut self, ip: Ipv4Addr, flags: u32) -> Result<()> {
        self.write("add_local")?;
        *self.t.locals.entry(ip).or_default() |= flags;
        Ok(())
    }

    fn remove_local(&mut self, ip: Ipv4Addr) -> Result<()> {
        self.write("remove_local")?;
        self.t.locals.remove(&ip);
        Ok(())
    }

    fn netns_exists(&self, path: &Path) -> bool {
        self.t.netns.contains(path)
    }

    async fn link_index(&mut self, ifname: &str) -> Result<Option<u32>> {
        Ok(self.t.veths.get(ifname).copied())
    }

    async fn plumb(&mut self, c: &Container) -> Result<u32> {
        self.write("plumb")?;
        if c.netns_created {
            self.t.netns.insert(c.netns.clone());
        } else if !self.t.netns.contains(&c.netns) {
            bail!("opening network namespace {}: not found", c.netns.display());
        }
        self.next_ifindex += 1;
        let idx = 100 + self.next_ifindex;
        self.t.veths.insert(c.host_ifname.clone(), idx);
        Ok(idx)
    }

    async fn add_gateway(&mut self, _c: &Container) -> Result<()> {
        self.write("add_gateway")
    }

    async fn check_inside(&mut self, _netns: &Path, c: &Container) -> Result<()> {
        if !self.t.veths.contains_key(&c.host_ifname) {
            bail!("no interface {} in the container's namespace", c.ifname);
        }
        Ok(())
    }

    fn attach_container(&mut self, c: &Container) -> Result<()> {
        self.write("attach_container")?;
        self.t.hooked.insert(c.host_ifname.clone());
        Ok(())
    }

    fn detach_container(&mut self, c: &Container) -> Result<()> {
        self.write("detach_container")?;
        self.t.hooked.remove(&c.host_ifname);
        Ok(())
    }

    async fn unplumb(&mut self, c: &Container) -> Result<()> {
        self.write("unplumb")?;
        self.t.veths.remove(&c.host_ifname);
        if c.netns_created {
            self.t.netns.remove(&c.netns);
        }
        Ok(())
    }

    fn set_endpoint(&mut self, e: &EndpointInfo) -> Result<()> {
        self.write("set_endpoint")?;
        self.t.endpoints.insert(e.ip, *e);
        self.t.by_ifindex.insert(e.host_ifindex, *e);
        *self.t.locals.entry(e.gateway).or_default() |= ADDR_GATEWAY;
        Ok(())
    }

    fn remove_endpoint(&mut self, ip: Ipv4Addr, host_ifindex: u32) -> Result<()> {
        self.write("remove_endpoint")?;
        self.t.endpoints.remove(&ip);
        self.t.by_ifindex.remove(&host_ifindex);
        Ok(())
    }

    fn endpoint_ips(&self) -> Result<Vec<Ipv4Addr>> {
        Ok(self.t.endpoints.keys().copied().collect())
    }

    fn endpoint_ifindexes(&self) -> Result<Vec<u32>> {
        Ok(self.t.by_ifindex.keys().copied().collect())
    }

    fn remove_endpoint_ifindex(&mut self, ifindex: u32) -> Result<()> {
        self.write("remove_endpoint_ifindex")?;
        self.t.by_ifindex.remove(&ifindex);
        Ok(())
    }

    fn set_portmap(&mut self, p: Published, t: Target) -> Result<()> {
        self.write("set_portmap")?;
        self.t.portmaps.insert(p, t);
        self.t.guards.insert((p.port, p.proto));
        Ok(())
    }

    fn remove_portmap(&mut self, p: Published) -> Result<()> {
        self.write("remove_portmap")?;
        self.t.portmaps.remove(&p);
        Ok(())
    }

    fn portmap(&self, p: Published) -> Result<Option<Target>> {
        Ok(self.t.portmaps.get(&p).copied())
    }

    fn portmaps(&self) -> Result<Vec<Published>> {
        Ok(self.t.portmaps.keys().copied().collect())
    }

    fn guards(&self) -> Result<Vec<(u16, u8)>> {
        Ok(self.t.guards.iter().copied().collect())
    }

    fn remove_guard(&mut self, port: u16, proto: u8) -> Result<()> {
        self.write("remove_guard")?;
        self.t.guards.remove(&(port, proto));
        self.t.guard_owners.remove(&(port, proto));
        Ok(())
    }

    async fn link_mtu(&mut self, _ifindex: u32) -> Result<u32> {
        Ok(1500)
    }

    fn set_remote(&mut self, prefix: ipnet::Ipv4Net, node: Ipv4Addr, vni: u32) -> Result<()> {
        self.write("set_remote")?;
        self.t.remotes.insert(prefix, (node, vni));
        Ok(())
    }

    fn remove_remote(&mut self, prefix: ipnet::Ipv4Net) -> Result<()> {
        self.write("remove_remote")?;
        self.t.remotes.remove(&prefix);
        Ok(())
    }

    fn remotes(&self) -> Result<Vec<(ipnet::Ipv4Net, Ipv4Addr, u32)>> {
        Ok(self
            .t
            .remotes
            .iter()
            .map(|(p, (n, v))| (*p, *n, *v))
            .collect())
    }

    fn set_guard_owner(&mut self, port: u16, proto: u8, tgid: u32) -> Result<()> {
        self.write("set_guard_owner")?;
        self.t.guard_owners.insert((port, proto), tgid);
        Ok(())
    }

    fn port_held(&self, _ip: Option<Ipv4Addr>, port: u16, proto: Proto) -> bool {
        self.held.contains(&(port, proto))
    }

    // Not a counted write: best effort in the node (a failure is only logged).
    fn reserve_ports(&mut self, ports: &BTreeSet<u16>) -> Result<()> {
        self.t.reserved.clone_from(ports);
        Ok(())
    }

    fn set_chain(&mut self, id: u32, net: Ipv4Net, chain: &PolicyChain) -> Result<()> {
        self.write("set_chain")?;
        self.t.chains.insert((id, net), *chain);
        Ok(())
    }

    fn remove_chain(&mut self, id: u32, net: Ipv4Net) -> Result<()> {
        self.write("remove_chain")?;
        self.t.chains.remove(&(id, net));
        Ok(())
    }

    fn chains(&self) -> Result<Vec<(u32, Ipv4Net)>> {
        Ok(self.t.chains.keys().copied().collect())
    }

    fn set_link(&mut self, from: u32, to: u32) -> Result<()> {
        self.write("set_link")?;
        self.t.links.insert((from, to));
        Ok(())
    }

    fn remove_link(&mut self, from: u32, to: u32) -> Result<()> {
        self.write("remove_link")?;
        self.t.links.remove(&(from, to));
        Ok(())
    }

    fn links(&self) -> Result<Vec<(u32, u32)>> {
        Ok(self.t.links.iter().copied().collect())
    }

    fn set_limit(&mut self, id: u32, r: RateLimit) -> Result<()> {
        self.write("set_limit")?;
        if r == RateLimit::default() {
            self.t.limits.remove(&id);
        } else {
            self.t.limits.insert(id, r);
        }
        Ok(())
    }

    fn reset_stats(&mut self, id: u32) -> Result<()> {
        self.write("reset_stats")?;
        self.t.stats.remove(&id);
        Ok(())
    }

    fn endpoint_stats(&self, id: u32) -> Result<EpTotals> {
        Ok(self.t.stats.get(&id).copied().unwrap_or_default())
    }

    fn counters(&self) -> Result<Vec<u64>> {
        Ok(self.t.counters.clone())
    }

    fn add_ct_removed(&mut self, n: u64) -> Result<()> {
        let i = datapath_common::stats::CNT_CT_REMOVED as usize;
        if self.t.counters.len() <= i {
            self.t.counters.resize(i + 1, 0);
        }
        self.t.counters[i] += n;
        Ok(())
    }

    fn conntrack(&self) -> Result<Vec<CtView>> {
        Ok(self.t.conntrack.clone())
    }

    fn remove_conntrack(&mut self, pred: &dyn Fn(&CtView) -> bool) -> Result<usize> {
        let before = self.t.conntrack.len();
        self.t.conntrack.retain(|v| !pred(v));
        Ok(before - self.t.conntrack.len())
    }

    fn programs(&self) -> Vec<ProgramInfo> {
        Vec::new()
    }

    fn cgroup(&self) -> String {
        String::new()
    }
}
