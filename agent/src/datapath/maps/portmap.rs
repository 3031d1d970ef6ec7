//! `TG_PORTMAP` (published port -> container) and `TG_PORT_GUARD` (ports the bind4 hook
//! refuses to node processes).

use anyhow::Result;
use aya::maps::{HashMap, Map, MapData, MapError};
use datapath_common::portmap::{PortKey, PortValue, GUARD_NOBODY};

use super::{ctx, ip_from_net, ip_to_net, port_from_net, port_to_net, removed};
use crate::datapath::types::{Published, Target};

fn key(p: Published) -> PortKey {
    PortKey {
        host_ip: p.host_ip.map_or(0, ip_to_net),
        port: port_to_net(p.port),
        proto: p.proto,
        _pad: 0,
    }
}

fn published(k: PortKey) -> Published {
    Published {
        host_ip: (k.host_ip != 0).then(|| ip_from_net(k.host_ip)),
        port: port_from_net(k.port),
        proto: k.proto,
    }
}

pub struct PortMapTable {
    map: HashMap<MapData, PortKey, PortValue>,
    guard: HashMap<MapData, PortKey, u32>,
}

impl PortMapTable {
    pub fn new(map: Map, guard: Map) -> Result<Self> {
        Ok(Self {
            map: ctx(HashMap::try_from(map), || "opening TG_PORTMAP".into())?,
            guard: ctx(HashMap::try_from(guard), || "opening TG_PORT_GUARD".into())?,
        })
    }

    pub fn insert(&mut self, p: Published, t: Target) -> Result<()> {
        let v = PortValue {
            container_ip: ip_to_net(t.container_ip),
            container_port: port_to_net(t.container_port),
            _pad: 0,
            host_ifindex: t.host_ifindex,
            endpoint_id: t.endpoint_id,
        };
        ctx(self.map.insert(key(p), v, 0), || {
            format!("writing port map {}/{}", p.port, p.proto)
        })?;
        let g = key(Published { host_ip: None, ..p });
        // A guard already there may name its runtime (set_guard_owner): keep it.
        if self.guard.get(&g, 0).is_ok() {
            return Ok(());
        }
        ctx(self.guard.insert(g, GUARD_NOBODY, 0), || {
            format!("writing port guard {}", p.port)
        })
    }

    /// Lets `tgid` (a CNI runtime) bind (port, proto) despite the guard; `GUARD_NOBODY`
    /// takes that back.
    pub fn set_guard_owner(&mut self, port: u16, proto: u8, tgid: u32) -> Result<()> {
        let g = key(Published {
            host_ip: None,
            port,
            proto,
        });
        ctx(self.guard.insert(g, tgid, 0), || {
            format!("writing port guard {port}")
        })
    }

    pub fn remove(&mut self, p: Published) -> Result<()> {
        removed(self.map.remove(&key(p)))
    }

    /// Drops the bind guard of (port, proto); call when no map of it remains.
    pub fn remove_guard(&mut self, port: u16, proto: u8) -> Result<()> {
        let g = key(Published {
            host_ip: None,
            port,
            proto,
        });
        removed(self.guard.remove(&g))
    }

    pub fn keys(&self) -> Result<Vec<Published>> {
        let mut out = Vec::new();
        for k in self.map.keys() {
            out.push(published(k?));
        }
        Ok(out)
    }

    pub fn guard_keys(&self) -> Result<Vec<(u16, u8)>> {
        let mut out = Vec::new();
        for k in self.guard.keys() {
            let p = published(k?);
            out.push((p.port, p.proto));
        }
        Ok(out)
    }

    pub fn get(&self, p: Published) -> Result<Option<Target>> {
        match self.map.get(&key(p), 0) {
            Ok(v) => Ok(Some(Target {
                container_ip: ip_from_net(v.container_ip),
                container_port: port_from_net(v.container_port),
                host_ifindex: v.host_ifindex,
                endpoint_id: v.endpoint_id,
            })),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
