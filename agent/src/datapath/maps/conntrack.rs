//! `TG_CT`: listing and targeted removal (the datapath creates entries; the agent only reads
//! them and removes those a deleted port map or container owned).

use std::os::fd::AsFd;

use anyhow::Result;
use aya::maps::{HashMap, IterableMap, Map, MapData};
use datapath_common::conntrack::{CtEntry, CtKey, CT_DNAT, CT_SNAT};

use super::{batch, ctx, ip_from_net, port_from_net};
use crate::datapath::types::CtView;

pub struct ConntrackTable {
    map: HashMap<MapData, CtKey, CtEntry>,
}

/// An entry in host terms.
fn view(k: &CtKey, v: &CtEntry) -> CtView {
    CtView {
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
        Ok(self.all()?.iter().map(|(k, v)| view(k, v)).collect())
    }

    pub fn count(&self) -> Result<usize> {
        Ok(self.all()?.len())
    }

    /// Removes every entry for which `pred` holds; returns how many went.
    pub fn remove_where(&mut self, pred: &dyn Fn(&CtView) -> bool) -> Result<usize> {
        let doomed: Vec<CtKey> = self
            .all()?
            .iter()
            .filter(|(k, v)| pred(&view(k, v)))
            .map(|(k, _)| *k)
            .collect();
        ctx(
            batch::delete_all(self.map.map().fd().as_fd(), &doomed),
            || "deleting from TG_CT".into(),
        )
    }
}
