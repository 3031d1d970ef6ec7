//! `TG_CONFIG`: daemon-wide settings for the datapath.

use anyhow::Result;
use aya::maps::{Array, Map, MapData};
use datapath_common::config::Config;

use super::ctx;

pub struct ConfigTable {
    config: Array<MapData, Config>,
}

impl ConfigTable {
    pub fn new(config: Map) -> Result<Self> {
        Ok(Self {
            config: ctx(Array::try_from(config), || "opening TG_CONFIG".into())?,
        })
    }

    pub fn set(&mut self, c: Config) -> Result<()> {
        ctx(self.config.set(0, c, 0), || "writing TG_CONFIG".into())
    }
}
