//! `TG_CONFIG` (daemon-wide settings) and `TG_COUNTERS` (per-CPU counters, summed here).

use anyhow::Result;
use aya::maps::{Array, Map, MapData, PerCpuArray};
use datapath_common::config::Config;

use super::ctx;

pub struct ConfigTable {
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
}

impl ConfigTable {
    pub fn new(config: Map, counters: Map) -> Result<Self> {
        Ok(Self {
            config: ctx(Array::try_from(config), || "opening TG_CONFIG".into())?,
            counters: ctx(PerCpuArray::try_from(counters), || {
                "opening TG_COUNTERS".into()
            })?,
        })
    }

    pub fn set(&mut self, c: Config) -> Result<()> {
        ctx(self.config.set(0, c, 0), || "writing TG_CONFIG".into())
    }

    /// Every counter summed over CPUs, by index.
    pub fn counters(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for r in self.counters.iter() {
            out.push(r?.iter().sum());
        }
        Ok(out)
    }
}
