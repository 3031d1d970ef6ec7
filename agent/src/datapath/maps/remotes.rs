//! `TG_REMOTES`: container prefixes other nodes hold (cluster mode) -> (node, VNI).

use std::net::Ipv4Addr;

use anyhow::Result;
use aya::maps::{lpm_trie::Key, LpmTrie, Map, MapData, MapError};
use datapath_common::overlay::Remote;
use ipnet::Ipv4Net;

use super::{ctx, ip_from_net, ip_to_net};

pub struct RemoteTable {
    map: LpmTrie<MapData, u32, Remote>,
}

fn key(prefix: Ipv4Net) -> Key<u32> {
    Key::new(u32::from(prefix.prefix_len()), ip_to_net(prefix.network()))
}

impl RemoteTable {
    pub fn new(map: Map) -> Result<Self> {
        Ok(Self {
            map: ctx(LpmTrie::try_from(map), || "opening TG_REMOTES".into())?,
        })
    }

    pub fn insert(&mut self, prefix: Ipv4Net, node: Ipv4Addr, vni: u32) -> Result<()> {
        let v = Remote {
            node_ip: ip_to_net(node),
            vni,
        };
        ctx(self.map.insert(&key(prefix), v, 0), || {
            format!("writing remote prefix {prefix}")
        })
    }

    pub fn remove(&mut self, prefix: Ipv4Net) -> Result<()> {
        match self.map.remove(&key(prefix)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn list(&self) -> Result<Vec<(Ipv4Net, Ipv4Addr, u32)>> {
        let mut out = Vec::new();
        for k in self.map.keys() {
            let k = k?;
            let v = self.map.get(&k, 0)?;
            let prefix = Ipv4Net::new(ip_from_net(k.data()), u8::try_from(k.prefix_len())?)?;
            out.push((prefix, ip_from_net(v.node_ip), v.vni));
        }
        Ok(out)
    }
}
