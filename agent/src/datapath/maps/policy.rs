//! `TG_LINKS` (ICC exceptions) and `TG_POLICY` (egress rule chains per container and prefix).

use std::net::Ipv4Addr;

use anyhow::Result;
use aya::maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData};
use datapath_common::endpoint::{LinkKey, PolicyChain, PolicyKey};

use super::{ctx, ip_from_net, ip_to_net, removed};

pub struct PolicyTable {
    links: HashMap<MapData, LinkKey, u32>,
    policy: LpmTrie<MapData, PolicyKey, PolicyChain>,
}

fn key(endpoint_id: u32, net: Ipv4Addr, prefix: u8) -> Key<PolicyKey> {
    Key::new(
        32 + u32::from(prefix),
        PolicyKey {
            endpoint_id_be: endpoint_id.to_be(),
            ip: ip_to_net(net),
        },
    )
}

impl PolicyTable {
    pub fn new(links: Map, policy: Map) -> Result<Self> {
        Ok(Self {
            links: ctx(HashMap::try_from(links), || "opening TG_LINKS".into())?,
            policy: ctx(LpmTrie::try_from(policy), || "opening TG_POLICY".into())?,
        })
    }

    pub fn set_link(&mut self, from_id: u32, to_id: u32) -> Result<()> {
        ctx(self.links.insert(LinkKey { from_id, to_id }, 1, 0), || {
            "writing TG_LINKS".into()
        })
    }

    pub fn links(&self) -> Result<Vec<(u32, u32)>> {
        self.links
            .keys()
            .map(|k| k.map(|k| (k.from_id, k.to_id)).map_err(Into::into))
            .collect()
    }

    pub fn remove_link(&mut self, from_id: u32, to_id: u32) -> Result<()> {
        removed(self.links.remove(&LinkKey { from_id, to_id }))
    }

    pub fn set_chain(
        &mut self,
        endpoint_id: u32,
        net: Ipv4Addr,
        prefix: u8,
        chain: &PolicyChain,
    ) -> Result<()> {
        ctx(
            self.policy.insert(&key(endpoint_id, net, prefix), chain, 0),
            || format!("writing TG_POLICY {net}/{prefix}"),
        )
    }

    /// Every (endpoint id, network, prefix) present.
    pub fn prefixes(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut out = Vec::new();
        for k in self.policy.keys() {
            let k = k?;
            let d = k.data();
            out.push((
                u32::from_be(d.endpoint_id_be),
                ip_from_net(d.ip),
                u8::try_from(k.prefix_len() - 32).unwrap_or(32),
            ));
        }
        Ok(out)
    }

    pub fn remove_chain(&mut self, endpoint_id: u32, net: Ipv4Addr, prefix: u8) -> Result<()> {
        removed(self.policy.remove(&key(endpoint_id, net, prefix)))
    }
}
