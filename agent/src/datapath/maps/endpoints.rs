//! `TG_ENDPOINTS` (containers by IP) and `TG_LOCAL_ADDRS` (the node's own addresses).

use std::net::Ipv4Addr;

use anyhow::Result;
use aya::maps::{HashMap, Map, MapData, MapError};
use datapath_common::endpoint::Endpoint;

use super::{ctx, ip_from_net, ip_to_net};

pub struct EndpointTable {
    endpoints: HashMap<MapData, u32, Endpoint>,
    local: HashMap<MapData, u32, u32>,
}

impl EndpointTable {
    pub fn new(endpoints: Map, local: Map) -> Result<Self> {
        Ok(Self {
            endpoints: ctx(HashMap::try_from(endpoints), || {
                "opening TG_ENDPOINTS".into()
            })?,
            local: ctx(HashMap::try_from(local), || "opening TG_LOCAL_ADDRS".into())?,
        })
    }

    pub fn insert(
        &mut self,
        ip: Ipv4Addr,
        id: u32,
        host_ifindex: u32,
        gateway: Ipv4Addr,
    ) -> Result<()> {
        let e = Endpoint {
            id,
            host_ifindex,
            gateway_ip: ip_to_net(gateway),
            flags: 0,
        };
        ctx(self.endpoints.insert(ip_to_net(ip), e, 0), || {
            format!("writing endpoint {ip}")
        })
    }

    pub fn remove(&mut self, ip: Ipv4Addr) -> Result<()> {
        match self.endpoints.remove(&ip_to_net(ip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn ips(&self) -> Result<Vec<Ipv4Addr>> {
        self.endpoints.keys().map(|k| Ok(ip_from_net(k?))).collect()
    }

    pub fn add_local(&mut self, ip: Ipv4Addr, flags: u32) -> Result<()> {
        let cur = self.local.get(&ip_to_net(ip), 0).unwrap_or(0);
        ctx(self.local.insert(ip_to_net(ip), cur | flags, 0), || {
            format!("writing local address {ip}")
        })
    }

    pub fn remove_local(&mut self, ip: Ipv4Addr) -> Result<()> {
        match self.local.remove(&ip_to_net(ip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn locals(&self) -> Result<Vec<(Ipv4Addr, u32)>> {
        self.local
            .iter()
            .map(|r| r.map(|(k, v)| (ip_from_net(k), v)).map_err(Into::into))
            .collect()
    }
}
