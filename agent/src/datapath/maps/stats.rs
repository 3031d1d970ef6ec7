//! `TG_EP_STATS` (per-container counters, per CPU) and `TG_COUNTERS` (global, per CPU); both
//! summed over CPUs here.

use anyhow::Result;
use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use datapath_common::{endpoint::EpStats, stats::CNT_CT_REMOVED};

use super::ctx;
use crate::datapath::types::EpTotals;

pub struct StatsTable {
    ep: PerCpuArray<MapData, EpStats>,
    counters: PerCpuArray<MapData, u64>,
}

impl StatsTable {
    pub fn new(ep: Map, counters: Map) -> Result<Self> {
        Ok(Self {
            ep: ctx(PerCpuArray::try_from(ep), || "opening TG_EP_STATS".into())?,
            counters: ctx(PerCpuArray::try_from(counters), || {
                "opening TG_COUNTERS".into()
            })?,
        })
    }

    pub fn endpoint(&self, id: u32) -> Result<EpTotals> {
        let mut t = EpTotals::default();
        for v in self.ep.get(&id, 0)?.iter() {
            t.rx_packets += v.rx_packets;
            t.rx_bytes += v.rx_bytes;
            t.tx_packets += v.tx_packets;
            t.tx_bytes += v.tx_bytes;
            for (d, s) in t.drops.iter_mut().zip(v.drops.iter()) {
                *d += s;
            }
        }
        Ok(t)
    }

    /// Zeroes a slot before its id is given to a new container.
    pub fn reset_endpoint(&mut self, id: u32) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zero = PerCpuValues::try_from(vec![EpStats::default(); n])?;
        ctx(self.ep.set(id, zero, 0), || {
            format!("clearing TG_EP_STATS[{id}]")
        })
    }

    /// Every global counter summed over CPUs, by index.
    pub fn counters(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for r in self.counters.iter() {
            out.push(r?.iter().sum());
        }
        Ok(out)
    }

    /// Adds to the agent-owned `CNT_CT_REMOVED` counter (kept in the pinned map so it survives
    /// restarts like the datapath's own counters).
    pub fn add_ct_removed(&mut self, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let mut v: Vec<u64> = self
            .counters
            .get(&CNT_CT_REMOVED, 0)?
            .iter()
            .copied()
            .collect();
        v[0] += n;
        ctx(
            self.counters
                .set(CNT_CT_REMOVED, PerCpuValues::try_from(v)?, 0),
            || "writing TG_COUNTERS".into(),
        )
    }
}
