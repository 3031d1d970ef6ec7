//! Start-up: make the kernel match the persisted state without disturbing what already works.
//! Pinned maps (conntrack included) are reused as they are; missing veths/namespaces are
//! recreated; map entries are rewritten from the state and stale ones removed.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use datapath_common::{
    config::{Config, CFG_ICC, CFG_READY},
    endpoint::{ADDR_LOOPBACK, ADDR_UPLINK},
};
use tracing::{info, warn};

use aya::programs::TcAttachType;

use crate::{
    datapath::maps::ip_to_net,
    datapath::{attach, PROG_FROM_CONTAINER, PROG_FROM_UPLINK, PROG_TO_CONTAINER},
    netlink::{addr, link},
    netns,
    node::Node,
};

impl Node {
    /// The daemon-wide datapath settings from the flags.
    pub fn datapath_config(&self) -> Result<Config> {
        let s = &self.settings;
        let snat = s.snat_ip.or_else(|| self.uplink_ips.first().copied());
        let mut flags = CFG_READY;
        if s.icc {
            flags |= CFG_ICC;
        }
        Ok(Config {
            netns_cookie: netns::current_cookie()?,
            uplink_ifindex: self.uplink_ifindex,
            flags,
            snat_ip: snat.map(ip_to_net).unwrap_or(0),
            pool_net: ip_to_net(s.pool.net().network()),
            pool_mask: ip_to_net(s.pool.net().netmask()),
            nat_port_min: *s.nat_ports.start(),
            nat_port_max: *s.nat_ports.end(),
            ct_tcp_syn_s: s.ct.tcp_syn,
            ct_tcp_est_s: s.ct.tcp_est,
            ct_tcp_close_s: s.ct.tcp_close,
            ct_udp_s: s.ct.udp,
            ct_icmp_s: s.ct.icmp,
            _pad: 0,
        })
    }

    pub async fn reconcile(&mut self) -> Result<()> {
        // Loopback must be up for 127.0.0.1:PORT to work in a fresh node namespace.
        if let Some(lo) = link::index_of(&self.nl, "lo").await? {
            link::set_up(&self.nl, lo).await?;
        }
        netns::set_sysctl("net.ipv4.ip_forward", "1")?;
        // Config first: every hook reads it (timeouts, masquerade, ICC). The pinned map still
        // holds the previous daemon's values until this write, so flows never see zeros.
        let config = self.datapath_config()?;
        self.dp.maps.config.set(config)?;
        let prog = self
            .dp
            .tc
            .get_mut(PROG_FROM_UPLINK)
            .expect("program loaded");
        attach::attach_tc(
            &self.pins,
            PROG_FROM_UPLINK,
            prog,
            &self.settings.uplink,
            TcAttachType::Ingress,
        )?;

        // Node addresses: the uplink's, loopback's, and every gateway (added per container).
        let wanted_locals: Vec<(Ipv4Addr, u32)> = self
            .uplink_ips
            .iter()
            .map(|ip| (*ip, ADDR_UPLINK))
            .chain(std::iter::once((Ipv4Addr::LOCALHOST, ADDR_LOOPBACK)))
            .collect();
        let gateways: Vec<Ipv4Addr> = self.state.containers.values().map(|c| c.gateway).collect();
        for (ip, _) in self.dp.maps.endpoints.locals()? {
            if !wanted_locals.iter().any(|(w, _)| *w == ip) && !gateways.contains(&ip) {
                self.dp.maps.endpoints.remove_local(ip)?;
            }
        }
        for (ip, f) in &wanted_locals {
            self.dp.maps.endpoints.add_local(*ip, *f)?;
        }

        let names: Vec<String> = self.state.containers.keys().cloned().collect();
        let mut changed = false;
        for name in names {
            let mut c = self.state.containers[&name].clone();
            if !c.netns.exists() {
                if c.netns_created {
                    warn!(container = %name, "namespace {} vanished; recreating it", c.netns.display());
                    let base = c
                        .netns
                        .file_name()
                        .map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_default();
                    netns::create_named(&base)?;
                } else {
                    warn!(container = %name, "namespace {} is gone; the container stays configured but unreachable until `container del`", c.netns.display());
                    continue;
                }
            }
            let idx = link::index_of(&self.nl, &c.host_ifname).await?;
            let idx = match idx {
                Some(i) if i == c.host_ifindex => i,
                _ => {
                    warn!(container = %name, "veth {} missing or recreated; plumbing it again", c.host_ifname);
                    for p in [PROG_FROM_CONTAINER, PROG_TO_CONTAINER] {
                        attach::detach_tc(&self.pins, p, &c.host_ifname)?;
                    }
                    self.plumb(&c)
                        .await
                        .with_context(|| format!("re-creating container {name}"))?
                }
            };
            if idx != c.host_ifindex {
                c.host_ifindex = idx;
                self.state.containers.insert(name.clone(), c.clone());
                changed = true;
            }
            addr::add(&self.nl, idx, c.gateway, crate::pool::SLOT_PREFIX).await?;
            self.activate(&c)?;
        }
        let known: Vec<Ipv4Addr> = self.state.containers.values().map(|c| c.ip).collect();
        let ifindexes: Vec<u32> = self
            .state
            .containers
            .values()
            .map(|c| c.host_ifindex)
            .collect();
        for ip in self.dp.maps.endpoints.ips()? {
            if !known.contains(&ip) {
                self.dp.maps.endpoints.remove(ip, 0)?;
            }
        }
        for i in self.dp.maps.endpoints.ifindexes()? {
            if !ifindexes.contains(&i) {
                self.dp.maps.endpoints.remove_ifindex(i)?;
            }
        }
        if changed {
            self.save()?;
        }
        self.sync_portmaps()?;

        self.sync_all_policies()?;
        let names: Vec<String> = self.state.containers.keys().cloned().collect();
        for n in &names {
            self.sync_limit(n)?;
        }
        // Last: socket hooks act only once every map they read is filled.
        attach::attach_sock(&self.pins, &mut self.dp.sock)?;
        info!(
            containers = self.state.containers.len(),
            port_maps = self.state.all_ports().count(),
            "state applied"
        );
        Ok(())
    }
}
