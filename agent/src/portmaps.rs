//! `port add/del/list`: Docker `-p` specs turned into `TG_PORTMAP` entries.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use tracing::info;

use crate::{
    datapath::maps::portmap::{Published, Target},
    listeners,
    node::Node,
    ports::{AddSpec, DelSpec, Proto},
    state::{Container, PortChange, PortMapping},
};

fn published(m: &PortMapping) -> Published {
    Published {
        host_ip: m.host_ip,
        port: m.host_port,
        proto: m.proto.number(),
    }
}

fn target(c: &Container, m: &PortMapping) -> Target {
    Target {
        container_ip: c.ip,
        container_port: m.container_port,
        host_ifindex: c.host_ifindex,
        endpoint_id: c.id,
    }
}

fn describe(m: &PortMapping) -> String {
    match m.host_ip {
        Some(ip) => format!("{ip}:{}/{}", m.host_port, m.proto),
        None => format!("{}/{}", m.host_port, m.proto),
    }
}

pub fn mapping_json(container: &str, m: &PortMapping) -> Value {
    json!({
        "container": container,
        "host_ip": m.host_ip.map(|i| i.to_string()).unwrap_or_else(|| "0.0.0.0".into()),
        "host_port": m.host_port,
        "container_port": m.container_port,
        "proto": m.proto,
    })
}

/// Two maps of the same port and protocol collide when their host IPs overlap (a wildcard
/// overlaps every address).
fn ips_overlap(a: Option<Ipv4Addr>, b: Option<Ipv4Addr>) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// A host IP holding a (proto, port), and the container whose map it is (None: an earlier
/// spec of the request being planned).
type Holder<'a> = (Option<Ipv4Addr>, Option<&'a str>);

impl Node {
    /// Expands and validates specs into new mappings; nothing is applied.
    fn plan(&self, specs: &[String]) -> Result<Vec<PortMapping>> {
        let parsed: Vec<AddSpec> = specs.iter().map(|s| s.parse()).collect::<Result<_>>()?;
        // Who holds each (proto, port), on which host IPs: O(1) conflict checks, so a batch of
        // 10,000 specs against 10,000 existing maps stays linear.
        let mut taken: HashMap<(Proto, u16), Vec<Holder>> = HashMap::new();
        for (owner, m) in self.state.all_ports() {
            taken
                .entry((m.proto, m.host_port))
                .or_default()
                .push((m.host_ip, Some(owner)));
        }
        let held = listeners::held;
        let mut out: Vec<PortMapping> = Vec::new();
        for spec in parsed {
            for (i, cport) in spec.container_ports.clone().enumerate() {
                let host_port = match &spec.host_ports {
                    Some(r) => r.start() + i as u16,
                    None => crate::pool::allocate_port(&self.settings.port_range, |p| {
                        !taken.contains_key(&(spec.proto, p)) && !held(spec.host_ip, p, spec.proto)
                    })?,
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
                    Some((_, Some(owner))) => bail!(
                        "host port {} is already mapped (to container {owner}); delete that map first or pick another port",
                        describe(&m)
                    ),
                    Some((_, None)) => bail!("host port {} appears twice in this request", describe(&m)),
                    None => {}
                }
                if held(m.host_ip, m.host_port, m.proto) {
                    bail!("host port {} is already in use by a process on the node; stop it or pick another port", describe(&m));
                }
                holders.push((m.host_ip, None));
                out.push(m);
            }
        }
        Ok(out)
    }

    pub fn port_add(&mut self, container: &str, specs: &[String]) -> Result<Value> {
        let c = self.container(container)?.clone();
        if specs.is_empty() {
            bail!("no port spec given (e.g. `tollgate port add {container} 8080:80`)");
        }
        let new = self.plan(specs)?;
        let mut done: Vec<PortMapping> = Vec::new();
        let applied = (|| -> Result<()> {
            for m in &new {
                self.dp.maps.portmap.insert(published(m), target(&c, m))?;
                done.push(*m);
            }
            let change = PortChange {
                container: container.to_string(),
                added: new.clone(),
                removed: Vec::new(),
            };
            let mut next = self.state.clone();
            change.apply(&mut next);
            self.commit_ports(next, &change)
        })();
        if let Err(e) = applied {
            // Undo exactly what this call wrote; guards are recomputed from the state.
            for m in &done {
                let _ = self.dp.maps.portmap.remove(published(m));
            }
            let _ = self.sync_guards();
            return Err(e);
        }
        info!(container, count = new.len(), "port maps added");
        Ok(Value::Array(
            new.iter().map(|m| mapping_json(container, m)).collect(),
        ))
    }

    pub fn port_del(&mut self, container: &str, specs: &[String]) -> Result<Value> {
        self.container(container)?;
        if specs.is_empty() {
            bail!("no port given (e.g. `tollgate port del {container} 8080`)");
        }
        let parsed: Vec<DelSpec> = specs.iter().map(|s| s.parse()).collect::<Result<_>>()?;
        let mine = self.state.ports.get(container).cloned().unwrap_or_default();
        let mut gone = Vec::new();
        for d in &parsed {
            for port in d.host_ports.clone() {
                let found = mine
                    .iter()
                    .find(|m| m.host_port == port && m.proto == d.proto && m.host_ip == d.host_ip)
                    .ok_or_else(|| {
                        let ip = d.host_ip.map(|i| format!("{i}:")).unwrap_or_default();
                        anyhow::anyhow!("container {container} has no port map {ip}{port}/{} (see `tollgate port list {container}`)", d.proto)
                    })?;
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
        self.commit_ports(next, &change)?;
        self.unpublish(&gone)?;
        Ok(Value::Array(
            gone.iter().map(|m| mapping_json(container, m)).collect(),
        ))
    }

    /// Removes map entries, recomputes bind guards and drops the conntrack entries of the
    /// given mappings, so the next UDP datagram follows whatever mapping exists now.
    pub fn unpublish(&mut self, gone: &[PortMapping]) -> Result<()> {
        for m in gone {
            self.dp.maps.portmap.remove(published(m))?;
        }
        // Guards are derived from the state that is left: callers commit it first.
        self.sync_guards()?;
        use datapath_common::conntrack::{CT_DNAT, CT_REPLY, CT_SNAT};
        let gone = gone.to_vec();
        self.dp.maps.conntrack.remove_where(|v| {
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

    /// Makes `TG_PORT_GUARD` hold exactly the (port, proto) pairs the state publishes.
    pub fn sync_guards(&mut self) -> Result<()> {
        let want: HashSet<(u16, u8)> = self
            .state
            .all_ports()
            .map(|(_, m)| (m.host_port, m.proto.number()))
            .collect();
        let have: HashSet<(u16, u8)> = self.dp.maps.portmap.guard_keys()?.into_iter().collect();
        for (port, proto) in have.difference(&want) {
            self.dp.maps.portmap.remove_guard(*port, *proto)?;
        }
        Ok(())
    }

    pub fn port_list(&self, container: Option<&str>) -> Result<Value> {
        if let Some(c) = container {
            self.container(c)?;
        }
        Ok(Value::Array(
            self.state
                .all_ports()
                .filter(|(c, _)| container.is_none_or(|w| w == *c))
                .map(|(c, m)| mapping_json(c, m))
                .collect(),
        ))
    }

    /// Writes every mapping of the state into the datapath and removes entries the state does
    /// not have (after a crash between map write and state save).
    pub fn sync_portmaps(&mut self) -> Result<()> {
        let mut want = HashSet::new();
        let entries: Vec<(Container, PortMapping)> = self
            .state
            .all_ports()
            .filter_map(|(c, m)| self.state.containers.get(c).map(|c| (c.clone(), *m)))
            .collect();
        for (c, m) in &entries {
            let p = published(m);
            if self.dp.maps.portmap.get(p)? != Some(target(c, m)) {
                self.dp.maps.portmap.insert(p, target(c, m))?;
            }
            want.insert(p);
        }
        for k in self.dp.maps.portmap.keys()? {
            if !want.contains(&k) {
                self.dp.maps.portmap.remove(k)?;
            }
        }
        self.sync_guards()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_rules() {
        let a = Some(Ipv4Addr::new(10, 0, 0, 1));
        let b = Some(Ipv4Addr::new(10, 0, 0, 2));
        assert!(ips_overlap(None, a));
        assert!(ips_overlap(a, None));
        assert!(ips_overlap(a, a));
        assert!(!ips_overlap(a, b));
    }
}
