//! CNI attachments: containers a runtime (podman, containerd) attaches through the
//! `tollgate-cni` plugin. Each is an ordinary Tollgate container (own /30, veth, hooks), keyed
//! by the CNI triple (network, container id, interface), living in a namespace the runtime
//! owns and handed over as an open fd. ADD is one transaction (container, port maps, limits):
//! any failure leaves nothing behind.

use std::{
    collections::HashSet,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::Context;
use tracing::{info, warn};

use super::{
    error::{fail, Error, Kind, KindExt, Result},
    tx::{Change, Step},
    views::{container_info, mapping_info},
    Node,
};
use crate::{
    api::types as api,
    datapath::Datapath,
    model::{
        self,
        cni::{container_name, VETH_MTU},
        state::{container_mac, format_mac},
        AddSpec, CniAttachment, CniKey, Container, Limit, SLOT_PREFIX,
    },
    store::{Commit, Store},
};

/// `CNI_IFNAME` must be a valid Linux interface name.
fn validate_key(key: &CniKey) -> Result<()> {
    if key.container_id.is_empty() {
        fail!(BadInput, "CNI_CONTAINERID is empty");
    }
    let n = &key.ifname;
    if n.is_empty()
        || n.len() > 15
        || n == "."
        || n == ".."
        || n.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        fail!(
            BadInput,
            "CNI_IFNAME {n:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        );
    }
    if key.network.is_empty() {
        fail!(BadInput, "the CNI network config has no name");
    }
    Ok(())
}

impl<D: Datapath, S: Store> Node<D, S> {
    /// The container attached under `key`, if any.
    pub fn cni_container(&self, key: &CniKey) -> Option<&Container> {
        self.state
            .containers
            .values()
            .find(|c| c.cni.as_ref().is_some_and(|a| &a.key == key))
    }

    fn cni_info(&self, c: &Container) -> api::CniAttachmentInfo {
        let a = c.cni.as_ref().expect("a CNI container");
        api::CniAttachmentInfo {
            key: a.key.clone(),
            tollgate_network: a.tollgate_network.clone(),
            netns: a.netns.clone(),
            container: container_info(c),
            mac: format_mac(container_mac(c.ip)),
            host_mac: format_mac(container_mac(c.gateway)),
            mtu: VETH_MTU,
            ports: self
                .state
                .ports
                .get(&c.name)
                .map(|v| v.iter().map(|m| mapping_info(&c.name, m)).collect())
                .unwrap_or_default(),
        }
    }

    /// CNI ADD: container, port maps and limits in one transaction.
    pub async fn cni_add(
        &mut self,
        req: api::CniAdd,
        netns: OwnedFd,
    ) -> Result<api::CniAttachmentInfo> {
        validate_key(&req.key)?;
        self.net_view(&req.tollgate_network)
            .map_err(|e| Error::new(Kind::NotFound, format!("unknown Tollgate network: {e} (or set \"network\" in the CNI config to an existing one)")))?;
        if !req.ports.is_empty() {
            self.check_publishable(&container_name(&req.key), &req.tollgate_network)?;
        }
        if let Some(c) = self.cni_container(&req.key) {
            fail!(
                Conflict,
                "container {} is already attached to network {} as {} ({}); the runtime must DEL it first",
                req.key.container_id,
                req.key.network,
                req.key.ifname,
                c.name
            );
        }
        let name = container_name(&req.key);
        if self.state.containers.contains_key(&name) {
            fail!(Conflict, "container {name:?} already exists");
        }
        let slot = self.plan_slot(&req.tollgate_network, req.ip).await?;
        let mtu = self.mtu_for(&req.tollgate_network);
        let specs: Vec<AddSpec> = req
            .ports
            .iter()
            .map(|p| AddSpec {
                host_ip: p.host_ip.filter(|ip| !ip.is_unspecified()),
                host_ports: Some(p.host_port..=p.host_port),
                container_ports: p.container_port..=p.container_port,
                proto: p.proto,
            })
            .collect();
        if specs.iter().any(|s| {
            *s.container_ports.start() == 0
                || s.host_ports.as_ref().is_some_and(|r| *r.start() == 0)
        }) {
            fail!(
                BadInput,
                "portMappings: port 0 is not a port (hostPort and containerPort must be 1-65535)"
            );
        }
        let maps = self.plan_ports(&specs)?;
        let limit = match &req.limits {
            Some(l) => Some(cni_limit(l)?),
            None => None,
        };
        let id = self.free_id()?;
        let c = Container {
            name: name.clone(),
            id,
            netns: PathBuf::from(&req.netns),
            netns_created: false,
            ip: slot.ip,
            gateway: slot.gateway,
            prefix_len: SLOT_PREFIX,
            host_ifname: format!("tgv{id}"),
            host_ifindex: 0,
            ifname: req.key.ifname.clone(),
            cni: Some(CniAttachment {
                key: req.key.clone(),
                tollgate_network: req.tollgate_network.clone(),
                netns: req.netns.clone(),
                runtime_pid: req.runtime_pid.unwrap_or(0),
            }),
            network: req.tollgate_network.clone(),
            mtu,
        };
        // The steps reach the namespace through the fd the runtime handed over: this
        // process's own /proc path to it stays valid for as long as `netns` is held.
        let mut plumbed = c.clone();
        plumbed.netns = PathBuf::from(format!("/proc/self/fd/{}", netns.as_raw_fd()));
        let mut next = self.state.clone();
        next.containers.insert(name.clone(), c);
        let mut steps = vec![Step::CreateContainer(plumbed)];
        if !maps.is_empty() {
            next.ports.insert(name.clone(), maps.clone());
            steps.push(Step::MapPorts {
                container: name.clone(),
                maps,
            });
        }
        if let Some(l) = limit {
            next.limits.insert(name.clone(), l);
            steps.push(Step::SyncLimit {
                id,
                name: name.clone(),
            });
        }
        self.transact(Change {
            next,
            commit: Commit::Snapshot,
            steps,
        })
        .await?;
        drop(netns);
        let c = self.container(&name)?;
        info!(container = %name, id = %req.key.container_id, ifname = %req.key.ifname, ip = %c.ip, "CNI attachment added");
        Ok(self.cni_info(c))
    }

    /// CNI DEL: removes the attachment and all it has; an unknown key is fine (DEL is
    /// idempotent, and the namespace and veth may already be gone).
    pub async fn cni_del(&mut self, key: &CniKey) -> Result<api::CniDeleted> {
        let Some(name) = self.cni_container(key).map(|c| c.name.clone()) else {
            return Ok(api::CniDeleted { deleted: None });
        };
        self.container_del(&name).await?;
        Ok(api::CniDeleted {
            deleted: Some(name),
        })
    }

    pub fn cni_list(&self, network: Option<&str>) -> Vec<api::CniAttachmentInfo> {
        self.state
            .containers
            .values()
            .filter(|c| {
                c.cni
                    .as_ref()
                    .is_some_and(|a| network.is_none_or(|n| a.key.network == n))
            })
            .map(|c| self.cni_info(c))
            .collect()
    }

    /// CNI CHECK: the daemon knows the key, the address is the one the runtime has, the host
    /// veth is the one plumbed, and (given the namespace) the interface inside has the address.
    pub async fn cni_check(
        &mut self,
        req: &api::CniCheck,
        netns: Option<OwnedFd>,
    ) -> Result<api::CniAttachmentInfo> {
        let Some(c) = self.cni_container(&req.key).cloned() else {
            fail!(
                NotFound,
                "container {} has no attachment {} on network {}",
                req.key.container_id,
                req.key.ifname,
                req.key.network
            );
        };
        if let Some(want) = &req.address {
            let have = format!("{}/{}", c.ip, c.prefix_len);
            if *want != have {
                fail!(
                    Conflict,
                    "the runtime expects address {want} but the container has {have}"
                );
            }
        }
        let idx = self
            .dp
            .link_index(&c.host_ifname)
            .await
            .kind(Kind::Internal)?;
        if idx != Some(c.host_ifindex) {
            fail!(
                Conflict,
                "the host veth {} of container {} is missing or was recreated",
                c.host_ifname,
                c.name
            );
        }
        if let Some(fd) = netns {
            let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            self.dp
                .check_inside(&path, &c)
                .await
                .with_context(|| format!("inside {}", req.key.ifname))
                .kind(Kind::Conflict)?;
        }
        Ok(self.cni_info(&c))
    }

    /// CNI GC: removes the network's attachments that are not in `valid`, going on past
    /// failures (reported).
    pub async fn cni_gc(&mut self, req: &api::CniGc) -> Result<api::CniGcDone> {
        let valid: HashSet<(&str, &str)> = req
            .valid
            .iter()
            .map(|v| (v.container_id.as_str(), v.ifname.as_str()))
            .collect();
        let stale: Vec<(String, CniKey)> = self
            .state
            .containers
            .values()
            .filter_map(|c| {
                let a = c.cni.as_ref()?;
                let keep = a.key.network != req.network
                    || valid.contains(&(a.key.container_id.as_str(), a.key.ifname.as_str()));
                (!keep).then(|| (c.name.clone(), a.key.clone()))
            })
            .collect();
        let mut done = api::CniGcDone {
            removed: Vec::new(),
            failed: Vec::new(),
        };
        for (name, key) in stale {
            match self.container_del(&name).await {
                Ok(_) => {
                    info!(container = %name, id = %key.container_id, "CNI GC removed a stale attachment");
                    done.removed.push(name);
                }
                Err(e) => done.failed.push(format!("{name}: {}", e.err)),
            }
        }
        Ok(done)
    }

    /// Carries out the DELs the plugin queued while the daemon was down (`api::cni_queue_dir`).
    /// A record is removed once its DEL is done; one that fails stays for the next start.
    pub async fn cni_replay(&mut self, dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut done = 0;
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let key = match std::fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| serde_json::from_slice::<CniKey>(&b).map_err(Into::into))
            {
                Ok(k) => k,
                Err(e) => {
                    warn!(
                        "ignoring unreadable queued CNI DEL {}: {e:#}",
                        path.display()
                    );
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            };
            match self.cni_del(&key).await {
                Ok(d) => {
                    info!(id = %key.container_id, ifname = %key.ifname, deleted = ?d.deleted, "replayed a CNI DEL queued while the daemon was down");
                    let _ = std::fs::remove_file(&path);
                    done += 1;
                }
                Err(e) => warn!(
                    "queued CNI DEL of {}: {} (kept for the next start)",
                    key.container_id, e.err
                ),
            }
        }
        done
    }

    /// CNI containers whose host veth is gone lost their namespace (the runtime removed it
    /// while the daemon was down and its DEL never arrived): nothing can re-plumb them, so
    /// they are removed with all they had.
    pub(super) async fn drop_orphaned_cni(&mut self, gone: Vec<String>) -> Result<()> {
        for name in gone {
            warn!(container = %name, "CNI container's namespace is gone (its veth vanished): removing it");
            self.container_del(&name).await?;
        }
        Ok(())
    }
}

/// `runtimeConfig.bandwidth` (already in bit/s and bytes) as a container limit.
fn cni_limit(l: &api::LimitSet) -> Result<Limit> {
    let rate = |r: Option<u64>, what: &str| {
        r.map(|r| model::rate::check_rate(r).with_context(|| format!("bandwidth: {what}")))
            .transpose()
            .kind(Kind::BadInput)
    };
    Ok(Limit {
        egress: rate(l.egress_bps, "egressRate")?,
        ingress: rate(l.ingress_bps, "ingressRate")?,
        burst: l
            .burst_bytes
            .map(|b| model::rate::check_size(b).context("bandwidth: burst"))
            .transpose()
            .kind(Kind::BadInput)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        let mut k = CniKey {
            network: "default".into(),
            container_id: "abc".into(),
            ifname: "eth0".into(),
        };
        assert!(validate_key(&k).is_ok());
        k.ifname = "a-very-long-interface".into();
        assert!(validate_key(&k).is_err());
        k.ifname = "eth0".into();
        assert!(validate_key(&k).is_ok());
    }
}
