//! `TG_RATELIMIT`: token buckets by endpoint id (rate 0 = unlimited).

use anyhow::Result;
use aya::maps::{Array, Map, MapData};
use datapath_common::ratelimit::RateLimit;

use super::ctx;

pub struct RateLimitTable {
    map: Array<MapData, RateLimit>,
}

impl RateLimitTable {
    pub fn new(map: Map) -> Result<Self> {
        Ok(Self {
            map: ctx(Array::try_from(map), || "opening TG_RATELIMIT".into())?,
        })
    }

    pub fn set(&mut self, id: u32, r: RateLimit) -> Result<()> {
        ctx(self.map.set(id, r, 0), || {
            format!("writing TG_RATELIMIT[{id}]")
        })
    }
}
