//! `TG_ENDPOINTS` (containers by IP), `TG_EP_BY_IF` (containers by host veth ifindex) and
//! `TG_LOCAL_ADDRS` (the node's own addresses).

use std::net::Ipv4Addr;

use anyhow::Result;
use aya::maps::{HashMap, Map, MapData, MapError};
use datapath_common::endpoint::Endpoint;

use super::{ctx, ip_from_net, ip_to_net};
use crate::datapath::types::EndpointInfo;

pub struct EndpointTable {
    endpoints: HashMap<MapData, u32, Endpoint>,
    by_if: HashMap<MapData, u32, Endpoint>,
    local: HashMap<MapData, u32, u32>,
}

fn absent_ok(r: std::result::Result<(), MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl EndpointTable {
    pub fn new(endpoints: Map, by_if: Map, local: Map) -> Result<Self> {
        Ok(Self {
            endpoints: ctx(HashMap::try_from(endpoints), || {
                "opening TG_ENDPOINTS".into()
            })?,
            by_if: ctx(HashMap::try_from(by_if), || "opening TG_EP_BY_IF".into())?,
            local: ctx(HashMap::try_from(local), || "opening TG_LOCAL_ADDRS".into())?,
        })
    }

    /// Writes the container under its IP and its veth's ifindex (both keys, same value).
    pub fn insert(&mut self, e: &EndpointInfo) -> Result<()> {
        let v = Endpoint {
            id: e.id,
            host_ifindex: e.host_ifindex,
            gateway_ip: ip_to_net(e.gateway),
            flags: e.flags,
            ip: ip_to_net(e.ip),
            net: e.net,
        };
        ctx(self.endpoints.insert(ip_to_net(e.ip), v, 0), || {
            format!("writing endpoint {}", e.ip)
        })?;
        ctx(self.by_if.insert(e.host_ifindex, v, 0), || {
            format!("writing endpoint of ifindex {}", e.host_ifindex)
        })
    }

    pub fn remove(&mut self, ip: Ipv4Addr, host_ifindex: u32) -> Result<()> {
        absent_ok(self.endpoints.remove(&ip_to_net(ip)))?;
        absent_ok(self.by_if.remove(&host_ifindex))
    }

    pub fn ips(&self) -> Result<Vec<Ipv4Addr>> {
        self.endpoints.keys().map(|k| Ok(ip_from_net(k?))).collect()
    }

    /// ifindexes present in `TG_EP_BY_IF`.
    pub fn ifindexes(&self) -> Result<Vec<u32>> {
        self.by_if.keys().map(|k| k.map_err(Into::into)).collect()
    }

    pub fn remove_ifindex(&mut self, i: u32) -> Result<()> {
        absent_ok(self.by_if.remove(&i))
    }

    pub fn add_local(&mut self, ip: Ipv4Addr, flags: u32) -> Result<()> {
        let cur = self.local.get(&ip_to_net(ip), 0).unwrap_or(0);
        ctx(self.local.insert(ip_to_net(ip), cur | flags, 0), || {
            format!("writing local address {ip}")
        })
    }

    pub fn remove_local(&mut self, ip: Ipv4Addr) -> Result<()> {
        absent_ok(self.local.remove(&ip_to_net(ip)))
    }

    pub fn locals(&self) -> Result<Vec<(Ipv4Addr, u32)>> {
        self.local
            .iter()
            .map(|r| r.map(|(k, v)| (ip_from_net(k), v)).map_err(Into::into))
            .collect()
    }
}
