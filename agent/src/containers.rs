//! `container add/del/list`: a namespace, a veth pair with `eth0` inside, a Warden-style /30,
//! the TC hook on the host side and the container's datapath entries.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use datapath_common::endpoint::ADDR_GATEWAY;
use serde_json::{json, Value};
use tracing::{info, warn};

use aya::programs::TcAttachType;

use crate::{
    datapath::{attach, maps::endpoints::EndpointInfo, PROG_FROM_CONTAINER, PROG_TO_CONTAINER},
    netlink::{self, addr, link, route},
    netns,
    node::Node,
    pool::SLOT_PREFIX,
    state::Container,
};

pub const CONTAINER_IFNAME: &str = "eth0";

fn validate_name(name: &str) -> Result<()> {
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

pub fn container_json(c: &Container) -> Value {
    json!({
        "name": c.name,
        "netns": c.netns,
        "ip": c.ip,
        "gateway": c.gateway,
        "prefix_len": c.prefix_len,
        "host_ifname": c.host_ifname,
    })
}

/// Configures the container side: `lo` up, `eth0` with the /30 address, up, default route.
fn configure_inside(netns_path: &Path, ip: Ipv4Addr, gw: Ipv4Addr) -> Result<()> {
    netlink::with_handle_in(netns_path, move |h| async move {
        if let Some(lo) = link::index_of(&h, "lo").await? {
            link::set_up(&h, lo).await?;
        }
        let eth = link::require_index(&h, CONTAINER_IFNAME).await?;
        addr::add(&h, eth, ip, SLOT_PREFIX).await?;
        link::set_up(&h, eth).await?;
        route::add_default_v4(&h, gw).await
    })
    .with_context(|| format!("configuring {CONTAINER_IFNAME} in {}", netns_path.display()))
}

impl Node {
    /// Creates the veth pair and configures both ends; returns the host ifindex.
    pub async fn plumb(&self, c: &Container) -> Result<u32> {
        let ns = std::fs::File::open(&c.netns)
            .with_context(|| format!("opening network namespace {}", c.netns.display()))?;
        // A leftover host veth of ours (daemon killed mid-operation) would block the name.
        link::delete(&self.nl, &c.host_ifname).await?;
        link::add_veth(&self.nl, &c.host_ifname, CONTAINER_IFNAME, &ns).await?;
        let idx = link::require_index(&self.nl, &c.host_ifname).await?;
        addr::add(&self.nl, idx, c.gateway, SLOT_PREFIX).await?;
        link::set_up(&self.nl, idx).await?;
        let (p, ip, gw) = (c.netns.clone(), c.ip, c.gateway);
        tokio::task::spawn_blocking(move || configure_inside(&p, ip, gw)).await??;
        Ok(idx)
    }

    /// Hooks and map entries of a plumbed container.
    pub fn activate(&mut self, c: &Container) -> Result<()> {
        // Map entries before hooks: the hooks find the endpoint from their first packet.
        let info = self.endpoint_info(c);
        self.dp.maps.endpoints.insert(&info)?;
        self.dp.maps.endpoints.add_local(c.gateway, ADDR_GATEWAY)?;
        for (prog_name, at) in [
            (PROG_FROM_CONTAINER, TcAttachType::Ingress),
            (PROG_TO_CONTAINER, TcAttachType::Egress),
        ] {
            let prog = self.dp.tc.get_mut(prog_name).expect("program loaded");
            attach::attach_tc(&self.pins, prog_name, prog, &c.host_ifname, at)?;
        }
        Ok(())
    }

    pub fn endpoint_info(&self, c: &Container) -> EndpointInfo {
        EndpointInfo {
            id: c.id,
            ip: c.ip,
            gateway: c.gateway,
            host_ifindex: c.host_ifindex,
            flags: self.endpoint_flags(&c.name),
        }
    }

    /// The smallest container id not in use (ids index the per-container stats array).
    fn free_id(&self) -> Result<u32> {
        let used: HashSet<u32> = self.state.containers.values().map(|c| c.id).collect();
        (1..datapath_common::maps::ENDPOINTS_MAX)
            .find(|i| !used.contains(i))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "too many containers (at most {})",
                    datapath_common::maps::ENDPOINTS_MAX - 1
                )
            })
    }

    /// Undoes `plumb` and `activate`, collecting errors but going on (best-effort teardown).
    pub async fn teardown(&mut self, c: &Container) -> Vec<anyhow::Error> {
        let mut errs = Vec::new();
        let mut keep = |r: Result<()>| {
            if let Err(e) = r {
                errs.push(e);
            }
        };
        for prog_name in [PROG_FROM_CONTAINER, PROG_TO_CONTAINER] {
            keep(attach::detach_tc(&self.pins, prog_name, &c.host_ifname));
        }
        keep(self.dp.maps.endpoints.remove(c.ip, c.host_ifindex));
        keep(self.dp.maps.endpoints.remove_local(c.gateway));
        let (id, ip) = (c.id, c.ip);
        keep(
            self.dp
                .maps
                .conntrack
                .remove_where(|v| v.endpoint_id == id || v.src.0 == ip || v.dst.0 == ip)
                .map(|_| ()),
        );
        keep(link::delete(&self.nl, &c.host_ifname).await);
        if c.netns_created {
            keep(netns::delete_named(&c.netns));
        }
        errs
    }

    pub async fn container_add(
        &mut self,
        name: &str,
        netns_path: Option<PathBuf>,
        ip: Option<Ipv4Addr>,
    ) -> Result<Value> {
        validate_name(name)?;
        if self.state.containers.contains_key(name) {
            bail!("container {name:?} already exists");
        }
        let used: HashSet<Ipv4Addr> = self.state.containers.values().map(|c| c.ip).collect();
        let slot = match ip {
            Some(ip) => {
                let s = self.settings.pool.slot_for(ip)?;
                if used.contains(&ip) {
                    bail!("address {ip} is already assigned to another container");
                }
                s
            }
            None => self.settings.pool.allocate(&used)?,
        };
        if let Some(p) = &netns_path {
            if !p.exists() {
                bail!("network namespace {} does not exist", p.display());
            }
        }
        let id = self.free_id()?;
        let mut c = Container {
            name: name.to_string(),
            id,
            netns: netns_path
                .clone()
                .unwrap_or_else(|| netns::named_path(&format!("tg-{name}"))),
            netns_created: netns_path.is_none(),
            ip: slot.ip,
            gateway: slot.gateway,
            prefix_len: SLOT_PREFIX,
            host_ifname: format!("tgv{id}"),
            host_ifindex: 0,
        };
        if c.netns_created {
            netns::create_named(&format!("tg-{name}"))?;
        }
        let applied: Result<()> = async {
            c.host_ifindex = self.plumb(&c).await?;
            self.dp.maps.stats.reset_endpoint(id)?;
            self.dp.maps.ratelimit.set(id, Default::default())?;
            self.activate(&c)?;
            let mut next = self.state.clone();
            next.containers.insert(name.to_string(), c.clone());
            self.commit(next)
        }
        .await;
        if let Err(e) = applied {
            for te in self.teardown(&c).await {
                warn!("rollback of container {name}: {te:#}");
            }
            return Err(e);
        }
        info!(container = name, ip = %c.ip, ifname = %c.host_ifname, "container added");
        Ok(container_json(&c))
    }

    pub async fn container_del(&mut self, name: &str) -> Result<Value> {
        let c = self.container(name)?.clone();
        // The state without it first (a failed save changes nothing), then its port maps
        // through the same path as `port del`, then the plumbing.
        let maps = self.state.ports.get(name).cloned().unwrap_or_default();
        let mut next = self.state.clone();
        next.containers.remove(name);
        next.ports.remove(name);
        next.policies.remove(name);
        next.limits.remove(name);
        next.links.retain(|(f, t)| f != name && t != name);
        self.commit(next)?;
        self.unpublish(&maps)?;
        // Its links, policy chains and limits go with it (ids are reused by later containers).
        self.sync_links()?;
        self.dp.maps.ratelimit.set(c.id, Default::default())?;
        for (id, net, len) in self.dp.maps.policy.prefixes()? {
            if id == c.id {
                self.dp.maps.policy.remove_chain(id, net, len)?;
            }
        }
        let errs = self.teardown(&c).await;
        if !errs.is_empty() {
            let msgs: Vec<String> = errs.iter().map(|e| format!("{e:#}")).collect();
            bail!(
                "container {name} removed from tollgate, but cleanup had errors: {}",
                msgs.join("; ")
            );
        }
        info!(container = name, "container deleted");
        Ok(json!({"deleted": name}))
    }

    pub fn container_list(&self) -> Value {
        Value::Array(self.state.containers.values().map(container_json).collect())
    }
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
