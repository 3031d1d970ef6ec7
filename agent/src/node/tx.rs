//! The one way the node changes anything: a `Change` is the next state, what the store must
//! record, and the datapath steps that get there. `Node::transact` applies the steps in order,
//! commits, and on any failure undoes every step it started (undo converges the datapath back
//! to the previous state, so a half-applied step is undone too), leaving nothing behind.
//!
//! The `sync_*` functions make one part of the datapath match a state; undo and the start-up
//! reconciliation are built from them.

use std::collections::{BTreeSet, HashSet};

use anyhow::Context;
use datapath_common::{
    conntrack::{CT_DNAT, CT_REPLY, CT_SNAT},
    endpoint::{EP_EGRESS_DENY, EP_NET_ICC, EP_NET_INTERNAL},
};
use tracing::warn;

use super::error::{Kind, KindExt, Result};
use crate::{
    datapath::{Datapath, EndpointInfo, Published, Target},
    model::{policy::compile, Container, PortMapping, State},
    store::Commit,
};

pub struct Change {
    pub next: State,
    pub commit: Commit,
    pub steps: Vec<Step>,
}

/// One datapath step of a change. Steps name containers and look them up in the state they
/// apply (or undo) towards, except where the container is what appears or disappears.
pub enum Step {
    /// Namespace, veth, stats slot, unlimited bucket, endpoint, hooks.
    CreateContainer(Container),
    /// The reverse, best-effort (every part is tried).
    RemoveContainer(Container),
    MapPorts {
        container: String,
        maps: Vec<PortMapping>,
    },
    UnmapPorts {
        container: String,
        maps: Vec<PortMapping>,
    },
    SyncPolicy {
        id: u32,
        name: String,
    },
    SyncLinks,
    SyncLimit {
        id: u32,
        name: String,
    },
}

impl Step {
    /// Applies the step towards `st`, which it may refine (a new veth's ifindex).
    pub async fn apply<D: Datapath>(&mut self, dp: &mut D, st: &mut State) -> Result<()> {
        match self {
            Step::CreateContainer(c) => {
                create_container(dp, st, c, true).await?;
            }
            Step::RemoveContainer(c) => {
                let errs = teardown(dp, c).await;
                if !errs.is_empty() {
                    let msgs: Vec<String> = errs.iter().map(|e| format!("{e:#}")).collect();
                    return Err(anyhow::anyhow!(
                        "removing container {}: {}",
                        c.name,
                        msgs.join("; ")
                    )
                    .into());
                }
            }
            Step::MapPorts { container, maps } => {
                let c = container_in(st, container)?;
                // Reserved before the map exists, so no node connection picks the port after.
                sync_reserved(dp, st);
                for m in maps.iter() {
                    dp.set_portmap(published(m), target(&c, m))?;
                    set_guard_owner(dp, &c, m)?;
                }
            }
            Step::UnmapPorts { maps, .. } => unpublish(dp, st, maps)?,
            Step::SyncPolicy { id, name } => sync_policy(dp, st, *id, name)?,
            Step::SyncLinks => sync_links(dp, st)?,
            Step::SyncLimit { id, name } => sync_limit(dp, st, *id, name)?,
        }
        Ok(())
    }

    /// Undoes the step (also when it failed half-way), towards `prev`.
    pub async fn undo<D: Datapath>(&self, dp: &mut D, prev: &mut State) -> Result<()> {
        match self {
            Step::CreateContainer(c) => {
                let errs = teardown(dp, c).await;
                if let Some(e) = errs.into_iter().next() {
                    return Err(e.into());
                }
            }
            Step::RemoveContainer(c) => {
                // Counters survive: the container never went away for its users.
                let mut c = c.clone();
                create_container(dp, prev, &mut c, false).await?;
            }
            Step::MapPorts { maps, .. } => {
                for m in maps {
                    dp.remove_portmap(published(m))?;
                }
                sync_guards(dp, prev)?;
            }
            Step::UnmapPorts { container, maps } => {
                let c = container_in(prev, container)?;
                sync_reserved(dp, prev);
                for m in maps {
                    dp.set_portmap(published(m), target(&c, m))?;
                }
            }
            Step::SyncPolicy { id, name } => sync_policy(dp, prev, *id, name)?,
            Step::SyncLinks => sync_links(dp, prev)?,
            Step::SyncLimit { id, name } => sync_limit(dp, prev, *id, name)?,
        }
        Ok(())
    }
}

/// Applies `change`'s steps, then commits; on failure undoes what was started and returns
/// the first error. `state` is the current state, replaced by the next one on success.
pub async fn transact<D: Datapath, S: crate::store::Store>(
    dp: &mut D,
    store: &mut S,
    state: &mut State,
    change: Change,
) -> Result<()> {
    // Recorded before anything is plumbed, so a start after a crash in the middle finds and
    // removes what the crash left (`Node::drop_unfinished`).
    let creating: Vec<Container> = change
        .steps
        .iter()
        .filter_map(|s| match s {
            Step::CreateContainer(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    if !creating.is_empty() {
        store
            .set_creating(&creating)
            .context("recording the containers being created")
            .kind(Kind::Unavailable)?;
    }
    let result = apply_and_commit(dp, store, state, change).await;
    if !creating.is_empty() {
        // Left in place, it is harmless: a start ignores containers the state holds.
        if let Err(e) = store.set_creating(&[]) {
            warn!("clearing the record of containers being created: {e:#}");
        }
    }
    result
}

async fn apply_and_commit<D: Datapath, S: crate::store::Store>(
    dp: &mut D,
    store: &mut S,
    state: &mut State,
    mut change: Change,
) -> Result<()> {
    let mut started = 0;
    let mut failure = None;
    for step in &mut change.steps {
        started += 1;
        if let Err(e) = step.apply(dp, &mut change.next).await {
            failure = Some(e);
            break;
        }
    }
    if failure.is_none() {
        match store
            .commit(&change.next, &change.commit)
            .context("saving state")
            .kind(Kind::Unavailable)
        {
            Ok(()) => {
                *state = change.next;
                return Ok(());
            }
            Err(e) => failure = Some(e),
        }
    }
    let before = state.clone();
    for step in change.steps[..started].iter().rev() {
        if let Err(e) = step.undo(dp, state).await {
            warn!("rollback: {e}");
        }
    }
    // Undoing a removal re-creates a veth with a new ifindex: record it.
    if *state != before {
        if let Err(e) = store.commit(state, &Commit::Snapshot) {
            warn!("rollback: saving state: {e:#}");
        }
    }
    Err(failure.expect("a failure"))
}

fn container_in(st: &State, name: &str) -> Result<Container> {
    st.containers
        .get(name)
        .cloned()
        .with_context(|| format!("container {name} is not in the state"))
        .kind(Kind::Internal)
}

pub fn published(m: &PortMapping) -> Published {
    Published {
        host_ip: m.host_ip,
        port: m.host_port,
        proto: m.proto.number(),
    }
}

pub fn target(c: &Container, m: &PortMapping) -> Target {
    Target {
        container_ip: c.ip,
        container_port: m.container_port,
        host_ifindex: c.host_ifindex,
        endpoint_id: c.id,
    }
}

pub fn endpoint_info(st: &State, c: &Container) -> EndpointInfo {
    let deny = st.policies.get(&c.name).is_some_and(|p| p.egress_deny);
    let net = st.networks.get(&c.network);
    let mut flags = if deny { EP_EGRESS_DENY } else { 0 };
    if net.is_some_and(|n| n.icc) {
        flags |= EP_NET_ICC;
    }
    if net.is_some_and(|n| n.internal) {
        flags |= EP_NET_INTERNAL;
    }
    EndpointInfo {
        id: c.id,
        ip: c.ip,
        gateway: c.gateway,
        host_ifindex: c.host_ifindex,
        flags,
        net: net.map_or(0, |n| n.id),
    }
}

/// Plumbs a container and fills its datapath entries; `fresh` zeroes its counters and
/// bucket (a new container reusing an id must not inherit them). Records the veth's ifindex
/// in `c` and in `st`.
async fn create_container<D: Datapath>(
    dp: &mut D,
    st: &mut State,
    c: &mut Container,
    fresh: bool,
) -> Result<()> {
    // The veth's name comes from a free id, so pinned links under that name are stale: left
    // by a container of that id whose creation a crash cut short. `attach_container` keeps
    // an existing pin, which would leave the new veth without its programs.
    dp.detach_container(c)?;
    c.host_ifindex = dp.plumb(c).await?;
    if let Some(sc) = st.containers.get_mut(&c.name) {
        sc.host_ifindex = c.host_ifindex;
    }
    if fresh {
        dp.reset_stats(c.id)?;
        dp.set_limit(c.id, datapath_common::ratelimit::RateLimit::default())?;
    }
    activate(dp, st, c)?;
    Ok(())
}

/// Endpoint entries before hooks: the hooks find the endpoint from their first packet.
pub fn activate<D: Datapath>(dp: &mut D, st: &State, c: &Container) -> Result<()> {
    dp.set_endpoint(&endpoint_info(st, c))?;
    dp.attach_container(c)?;
    Ok(())
}

/// Undoes `create_container`, collecting errors but going on.
pub async fn teardown<D: Datapath>(dp: &mut D, c: &Container) -> Vec<anyhow::Error> {
    let (id, ip) = (c.id, c.ip);
    let mut errs = Vec::new();
    let mut keep = |r: anyhow::Result<()>| {
        if let Err(e) = r {
            errs.push(e);
        }
    };
    keep(dp.detach_container(c));
    keep(dp.remove_endpoint(c.ip, c.host_ifindex));
    keep(dp.remove_local(c.gateway));
    keep(
        dp.remove_conntrack(&|v| v.endpoint_id == id || v.src.0 == ip || v.dst.0 == ip)
            .map(|_| ()),
    );
    keep(dp.unplumb(c).await);
    errs
}

/// Removes map entries, recomputes bind guards from `st` (which no longer has them) and
/// drops the mappings' conntrack entries, so the next UDP datagram follows whatever mapping
/// exists now.
pub fn unpublish<D: Datapath>(dp: &mut D, st: &State, gone: &[PortMapping]) -> Result<()> {
    for m in gone {
        dp.remove_portmap(published(m))?;
    }
    sync_guards(dp, st)?;
    dp.remove_conntrack(&|v| {
        gone.iter().any(|m| {
            let proto_ok = v.proto == m.proto.number();
            let ip_ok = |ip| m.host_ip.is_none() || m.host_ip == Some(ip);
            let orig = v.flags & CT_DNAT != 0
                && v.flags & CT_REPLY == 0
                && v.dst.1 == m.host_port
                && ip_ok(v.dst.0);
            let reply = v.flags & CT_REPLY != 0
                && v.flags & CT_SNAT != 0
                && v.nat_src
                    .is_some_and(|(ip, p)| p == m.host_port && ip_ok(ip));
            proto_ok && (orig || reply)
        })
    })?;
    Ok(())
}

/// Makes the bind guards hold no (port, proto) that `st` does not publish (guards are added
/// with their maps), and the reserved ports exactly the ones it publishes (`sync_reserved`).
pub fn sync_guards<D: Datapath>(dp: &mut D, st: &State) -> Result<()> {
    let want: HashSet<(u16, u8)> = st
        .all_ports()
        .map(|(_, m)| (m.host_port, m.proto.number()))
        .collect();
    for (port, proto) in dp.guards()? {
        if !want.contains(&(port, proto)) {
            dp.remove_guard(port, proto)?;
        }
    }
    sync_reserved(dp, st);
    Ok(())
}

/// Keeps every host port `st` publishes (any protocol, any host IP) out of the node's
/// ephemeral range, and no other port of Tollgate's (`datapath::reserved`): a node connection
/// whose source port is published would have its replies translated to the container. Best
/// effort: where the sysctl cannot be written (a read-only `/proc/sys`) the maps still work,
/// and a warning says what is not guaranteed.
pub fn sync_reserved<D: Datapath>(dp: &mut D, st: &State) {
    let want: BTreeSet<u16> = st.all_ports().map(|(_, m)| m.host_port).collect();
    if let Err(e) = dp.reserve_ports(&want) {
        warn!(
            "keeping published ports out of the ephemeral range (ip_local_reserved_ports): \
             {e:#}; a node connection may pick a published port as its source port"
        );
    }
}

/// Lets the CNI runtime that published `m` through `c` bind its port (its reservation).
fn set_guard_owner<D: Datapath>(dp: &mut D, c: &Container, m: &PortMapping) -> Result<()> {
    if let Some(pid) = c.cni.as_ref().map(|a| a.runtime_pid).filter(|p| *p > 1) {
        dp.set_guard_owner(m.host_port, m.proto.number(), pid)?;
    }
    Ok(())
}

/// Writes every mapping of `st` and removes entries it does not have (after a crash between
/// a map write and the commit).
pub fn sync_portmaps<D: Datapath>(dp: &mut D, st: &State) -> Result<()> {
    let mut want = HashSet::new();
    for (name, m) in st.all_ports() {
        let Some(c) = st.containers.get(name) else {
            continue;
        };
        let p = published(m);
        if dp.portmap(p)? != Some(target(c, m)) {
            dp.set_portmap(p, target(c, m))?;
        }
        set_guard_owner(dp, c, m)?;
        want.insert(p);
    }
    for k in dp.portmaps()? {
        if !want.contains(&k) {
            dp.remove_portmap(k)?;
        }
    }
    sync_guards(dp, st)
}

/// Writes a container's chains (new ones first, then removes stale prefixes, so no packet
/// ever sees a half-empty policy) and its endpoint flags. A container absent from `st` gets
/// no chains.
pub fn sync_policy<D: Datapath>(dp: &mut D, st: &State, id: u32, name: &str) -> Result<()> {
    let c = st.containers.get(name);
    let chains = match (c, st.policies.get(name)) {
        (Some(_), Some(p)) => compile(p).kind(Kind::BadInput)?,
        _ => Vec::new(),
    };
    for (net, chain) in &chains {
        dp.set_chain(id, *net, chain)?;
    }
    for (cid, net) in dp.chains()? {
        if cid == id && !chains.iter().any(|(n, _)| *n == net) {
            dp.remove_chain(cid, net)?;
        }
    }
    if let Some(c) = c {
        dp.set_endpoint(&endpoint_info(st, c))?;
    }
    Ok(())
}

/// Makes the ICC links match `st`.
pub fn sync_links<D: Datapath>(dp: &mut D, st: &State) -> Result<()> {
    let want: BTreeSet<(u32, u32)> = st
        .links
        .iter()
        .filter_map(|(f, t)| Some((st.containers.get(f)?.id, st.containers.get(t)?.id)))
        .collect();
    for (f, t) in &want {
        dp.set_link(*f, *t)?;
    }
    for (f, t) in dp.links()? {
        if !want.contains(&(f, t)) {
            dp.remove_link(f, t)?;
        }
    }
    Ok(())
}

/// Writes a container's buckets (unlimited when it has none or is absent from `st`).
pub fn sync_limit<D: Datapath>(dp: &mut D, st: &State, id: u32, name: &str) -> Result<()> {
    let l = match st.containers.get(name) {
        Some(_) => st.limits.get(name).copied().unwrap_or_default(),
        None => crate::model::Limit::default(),
    };
    dp.set_limit(id, l.buckets())?;
    Ok(())
}
