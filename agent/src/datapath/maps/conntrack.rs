//! `TG_CT`: listing and targeted removal (the datapath creates entries; the agent only reads
//! them and removes those a deleted port map or container owned).

use std::net::Ipv4Addr;

use std::os::fd::AsFd;

use anyhow::Result;
use aya::maps::{HashMap, IterableMap, Map, MapData};
use datapath_common::conntrack::{CtEntry, CtKey};
use serde::Serialize;

use super::{batch, ctx, ip_from_net, port_from_net};

pub struct ConntrackTable {
    map: HashMap<MapData, CtKey, CtEntry>,
}

/// One conntrack entry in host terms.
#[derive(Clone, Debug, Serialize)]
pub struct CtView {
    pub proto: u8,
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub nat_src: Option<(Ipv4Addr, u16)>,
    pub nat_dst: Option<(Ipv4Addr, u16)>,
    pub flags: u32,
    pub endpoint_id: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl CtView {
    fn new(k: &CtKey, v: &CtEntry) -> Self {
        use datapath_common::conntrack::{CT_DNAT, CT_SNAT};
        Self {
            proto: k.proto,
            src: (ip_from_net(k.saddr), port_from_net(k.sport)),
            dst: (ip_from_net(k.daddr), port_from_net(k.dport)),
            nat_src: (v.flags & CT_SNAT != 0)
                .then(|| (ip_from_net(v.nat_saddr), port_from_net(v.nat_sport))),
            nat_dst: (v.flags & CT_DNAT != 0)
                .then(|| (ip_from_net(v.nat_daddr), port_from_net(v.nat_dport))),
            flags: v.flags,
            endpoint_id: v.endpoint_id,
            created_ns: v.created_ns,
            last_seen_ns: v.last_seen_ns,
            packets: v.packets,
            bytes: v.bytes,
        }
    }
}

impl ConntrackTable {
    pub fn new(map: Map) -> Result<Self> {
        Ok(Self {
            map: ctx(HashMap::try_from(map), || "opening TG_CT".into())?,
        })
    }

    /// Every entry, read in batches (see `batch`).
    fn all(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        ctx(batch::lookup_all(self.map.map().fd().as_fd()), || {
            "reading TG_CT".into()
        })
    }

    pub fn list(&self) -> Result<Vec<CtView>> {
        Ok(self.all()?.iter().map(|(k, v)| CtView::new(k, v)).collect())
    }

    pub fn count(&self) -> Result<usize> {
        Ok(self.all()?.len())
    }

    /// Removes every entry for which `pred` holds; returns how many went.
    pub fn remove_where(&mut self, pred: impl Fn(&CtView) -> bool) -> Result<usize> {
        let doomed: Vec<CtKey> = self
            .all()?
            .iter()
            .filter(|(k, v)| pred(&CtView::new(k, v)))
            .map(|(k, _)| *k)
            .collect();
        ctx(
            batch::delete_all(self.map.map().fd().as_fd(), &doomed),
            || "deleting from TG_CT".into(),
        )
    }
}
