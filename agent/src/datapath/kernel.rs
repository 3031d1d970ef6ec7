//! The real datapath: the pinned aya maps and programs, TCX and cgroup links, and rtnetlink
//! for veths, addresses and routes.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::programs::TcAttachType;
use datapath_common::{
    config::{Config, CFG_ICC, CFG_READY},
    endpoint::{PolicyChain, ADDR_GATEWAY},
    overlay::{OVERLAY_IFNAME, VXLAN_PORT},
    ratelimit::RateLimit,
};
use ipnet::Ipv4Net;
use rtnetlink::Handle;

use super::{
    attach, listeners,
    loader::{Loaded, Pins},
    maps::ip_to_net,
    CtView, Datapath, EndpointInfo, EpTotals, NodeSetup, ProgramInfo, Published, Target,
    PROG_FROM_CONTAINER, PROG_FROM_OVERLAY, PROG_FROM_UPLINK, PROG_TO_CONTAINER,
};
use crate::{
    model::{state::container_mac, Container, Proto, SLOT_PREFIX},
    netlink::{self, addr, link, route},
    netns,
};

pub struct KernelDatapath {
    pub loaded: Loaded,
    pub pins: Pins,
    pub nl: Handle,
    /// Where the ports Tollgate reserved are recorded (`reserved`).
    pub reserved_record: PathBuf,
}

impl KernelDatapath {
    /// Loads (or reopens) the pinned datapath under `bpffs` and opens netlink in the calling
    /// thread's namespace; the reserved ports are recorded in `state_dir`. Needs a tokio
    /// runtime.
    pub fn open(bpffs: &Path, conntrack_max: u32, state_dir: &Path) -> Result<Self> {
        let pins = Pins::new(bpffs);
        let loaded = super::loader::load(&pins, conntrack_max)?;
        let nl = netlink::connect()?;
        Ok(Self {
            loaded,
            pins,
            nl,
            reserved_record: super::reserved::record_path(state_dir),
        })
    }

    fn attach_tc(&mut self, prog_name: &str, ifname: &str, at: TcAttachType) -> Result<()> {
        let prog = self
            .loaded
            .tc
            .get_mut(prog_name)
            .with_context(|| format!("program {prog_name} not loaded"))?;
        attach::attach_tc(&self.pins, prog_name, prog, ifname, at)
    }
}

/// Configures the container side: `lo` up, its interface with the /30 address, up, default
/// route.
fn configure_inside(
    netns_path: &Path,
    ifname: String,
    ip: Ipv4Addr,
    gw: Ipv4Addr,
    mtu: u32,
) -> Result<()> {
    let what = format!("configuring {ifname} in {}", netns_path.display());
    netlink::with_handle_in(netns_path, move |h| async move {
        if let Some(lo) = link::index_of(&h, "lo").await? {
            link::set_up(&h, lo).await?;
        }
        let eth = link::require_index(&h, &ifname).await?;
        if mtu != 0 {
            link::set_mtu(&h, eth, mtu).await?;
        }
        addr::add(&h, eth, ip, SLOT_PREFIX).await?;
        link::set_up(&h, eth).await?;
        route::add_default_v4(&h, gw).await
    })
    .context(what)
}

impl Datapath for KernelDatapath {
    async fn setup_node(&mut self, setup: &NodeSetup) -> Result<()> {
        // Loopback must be up for 127.0.0.1:PORT to work in a fresh node namespace.
        if let Some(lo) = link::index_of(&self.nl, "lo").await? {
            link::set_up(&self.nl, lo).await?;
        }
        netns::set_sysctl("net.ipv4.ip_forward", "1")?;
        // Config first: every hook reads it (timeouts, masquerade, ICC). The pinned map still
        // holds the previous daemon's values until this write, so flows never see zeros.
        let mut flags = CFG_READY;
        if setup.icc {
            flags |= CFG_ICC;
        }
        let config = Config {
            netns_cookie: netns::current_cookie()?,
            uplink_ifindex: setup.uplink_ifindex,
            flags,
            snat_ip: setup.snat_ip.map_or(0, ip_to_net),
            pool_net: ip_to_net(setup.pool.network()),
            pool_mask: ip_to_net(setup.pool.netmask()),
            nat_port_min: *setup.nat_ports.start(),
            nat_port_max: *setup.nat_ports.end(),
            ct_tcp_syn_s: setup.ct.tcp_syn,
            ct_tcp_est_s: setup.ct.tcp_est,
            ct_tcp_close_s: setup.ct.tcp_close,
            ct_udp_s: setup.ct.udp,
            ct_icmp_s: setup.ct.icmp,
            overlay_ifindex: 0,
        };
        let config = match setup.overlay {
            // The device and its hook come first: the config's pointer to it turns the
            // encapsulation on.
            Some(o) => {
                let ifindex =
                    link::ensure_vxlan(&self.nl, OVERLAY_IFNAME, VXLAN_PORT, o.mtu).await?;
                self.attach_tc(PROG_FROM_OVERLAY, OVERLAY_IFNAME, TcAttachType::Ingress)?;
                Config {
                    overlay_ifindex: ifindex,
                    ..config
                }
            }
            None => config,
        };
        self.loaded.maps.config.set(config)?;
        if setup.overlay.is_none() {
            // Left by an earlier cluster-mode run: the config no longer points at it.
            attach::detach_tc(&self.pins, PROG_FROM_OVERLAY, OVERLAY_IFNAME)?;
            link::delete(&self.nl, OVERLAY_IFNAME).await?;
        }
        self.attach_tc(PROG_FROM_UPLINK, &setup.uplink, TcAttachType::Ingress)
    }

    async fn link_mtu(&mut self, ifindex: u32) -> Result<u32> {
        link::mtu_of(&self.nl, ifindex).await
    }

    fn set_remote(&mut self, prefix: Ipv4Net, node: Ipv4Addr, vni: u32) -> Result<()> {
        self.loaded.maps.remotes.insert(prefix, node, vni)
    }

    fn remove_remote(&mut self, prefix: Ipv4Net) -> Result<()> {
        self.loaded.maps.remotes.remove(prefix)
    }

    fn remotes(&self) -> Result<Vec<(Ipv4Net, Ipv4Addr, u32)>> {
        self.loaded.maps.remotes.list()
    }

    fn attach_socket_hooks(&mut self) -> Result<()> {
        attach::attach_sock(&self.pins, &mut self.loaded.sock)
    }

    fn locals(&self) -> Result<Vec<(Ipv4Addr, u32)>> {
        self.loaded.maps.endpoints.locals()
    }

    fn add_local(&mut self, ip: Ipv4Addr, flags: u32) -> Result<()> {
        self.loaded.maps.endpoints.add_local(ip, flags)
    }

    fn remove_local(&mut self, ip: Ipv4Addr) -> Result<()> {
        self.loaded.maps.endpoints.remove_local(ip)
    }

    fn netns_exists(&self, path: &Path) -> bool {
        path.exists()
    }

    async fn link_index(&mut self, ifname: &str) -> Result<Option<u32>> {
        link::index_of(&self.nl, ifname).await
    }

    async fn plumb(&mut self, c: &Container) -> Result<u32> {
        if c.netns_created && !c.netns.exists() {
            let name = c
                .netns
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            netns::create_named(&name)?;
        }
        let ns = std::fs::File::open(&c.netns)
            .with_context(|| format!("opening network namespace {}", c.netns.display()))?;
        // A leftover host veth of ours (daemon killed mid-operation) would block the name.
        link::delete(&self.nl, &c.host_ifname).await?;
        link::add_veth(
            &self.nl,
            &c.host_ifname,
            &c.ifname,
            [Some(container_mac(c.gateway)), Some(container_mac(c.ip))],
            &ns,
        )
        .await?;
        let idx = link::require_index(&self.nl, &c.host_ifname).await?;
        if c.mtu != 0 {
            link::set_mtu(&self.nl, idx, c.mtu).await?;
        }
        addr::add(&self.nl, idx, c.gateway, SLOT_PREFIX).await?;
        link::set_up(&self.nl, idx).await?;
        let (p, ifname, ip, gw, mtu) = (c.netns.clone(), c.ifname.clone(), c.ip, c.gateway, c.mtu);
        tokio::task::spawn_blocking(move || configure_inside(&p, ifname, ip, gw, mtu)).await??;
        Ok(idx)
    }

    async fn add_gateway(&mut self, c: &Container) -> Result<()> {
        addr::add(&self.nl, c.host_ifindex, c.gateway, SLOT_PREFIX).await
    }

    async fn check_inside(&mut self, netns: &Path, c: &Container) -> Result<()> {
        let (p, ifname, ip) = (netns.to_path_buf(), c.ifname.clone(), c.ip);
        tokio::task::spawn_blocking(move || {
            netlink::with_handle_in(&p, move |h| async move {
                let Some(idx) = link::index_of(&h, &ifname).await? else {
                    anyhow::bail!("no interface {ifname} in the container's namespace");
                };
                let ips = addr::list_v4(&h, Some(idx)).await?;
                if !ips.contains(&ip) {
                    anyhow::bail!("{ifname} in the container's namespace lacks its address {ip}");
                }
                Ok(())
            })
        })
        .await?
    }

    fn attach_container(&mut self, c: &Container) -> Result<()> {
        self.attach_tc(PROG_FROM_CONTAINER, &c.host_ifname, TcAttachType::Ingress)?;
        self.attach_tc(PROG_TO_CONTAINER, &c.host_ifname, TcAttachType::Egress)
    }

    fn detach_container(&mut self, c: &Container) -> Result<()> {
        for prog_name in [PROG_FROM_CONTAINER, PROG_TO_CONTAINER] {
            attach::detach_tc(&self.pins, prog_name, &c.host_ifname)?;
        }
        Ok(())
    }

    async fn unplumb(&mut self, c: &Container) -> Result<()> {
        link::delete(&self.nl, &c.host_ifname).await?;
        if c.netns_created {
            netns::delete_named(&c.netns)?;
        }
        Ok(())
    }

    fn set_endpoint(&mut self, e: &EndpointInfo) -> Result<()> {
        self.loaded.maps.endpoints.insert(e)?;
        self.loaded
            .maps
            .endpoints
            .add_local(e.gateway, ADDR_GATEWAY)
    }

    fn remove_endpoint(&mut self, ip: Ipv4Addr, host_ifindex: u32) -> Result<()> {
        self.loaded.maps.endpoints.remove(ip, host_ifindex)
    }

    fn endpoint_ips(&self) -> Result<Vec<Ipv4Addr>> {
        self.loaded.maps.endpoints.ips()
    }

    fn endpoint_ifindexes(&self) -> Result<Vec<u32>> {
        self.loaded.maps.endpoints.ifindexes()
    }

    fn remove_endpoint_ifindex(&mut self, ifindex: u32) -> Result<()> {
        self.loaded.maps.endpoints.remove_ifindex(ifindex)
    }

    fn set_portmap(&mut self, p: Published, t: Target) -> Result<()> {
        self.loaded.maps.portmap.insert(p, t)
    }

    fn remove_portmap(&mut self, p: Published) -> Result<()> {
        self.loaded.maps.portmap.remove(p)
    }

    fn portmap(&self, p: Published) -> Result<Option<Target>> {
        self.loaded.maps.portmap.get(p)
    }

    fn portmaps(&self) -> Result<Vec<Published>> {
        self.loaded.maps.portmap.keys()
    }

    fn guards(&self) -> Result<Vec<(u16, u8)>> {
        self.loaded.maps.portmap.guard_keys()
    }

    fn remove_guard(&mut self, port: u16, proto: u8) -> Result<()> {
        self.loaded.maps.portmap.remove_guard(port, proto)
    }

    fn set_guard_owner(&mut self, port: u16, proto: u8, tgid: u32) -> Result<()> {
        self.loaded.maps.portmap.set_guard_owner(port, proto, tgid)
    }

    fn port_held(&self, ip: Option<Ipv4Addr>, port: u16, proto: Proto) -> bool {
        listeners::held(ip, port, proto)
    }

    fn reserve_ports(&mut self, ports: &BTreeSet<u16>) -> Result<()> {
        super::reserved::sync(&self.reserved_record, ports)
    }

    fn set_chain(&mut self, id: u32, net: Ipv4Net, chain: &PolicyChain) -> Result<()> {
        self.loaded
            .maps
            .policy
            .set_chain(id, net.network(), net.prefix_len(), chain)
    }

    fn remove_chain(&mut self, id: u32, net: Ipv4Net) -> Result<()> {
        self.loaded
            .maps
            .policy
            .remove_chain(id, net.network(), net.prefix_len())
    }

    fn chains(&self) -> Result<Vec<(u32, Ipv4Net)>> {
        Ok(self
            .loaded
            .maps
            .policy
            .prefixes()?
            .into_iter()
            .filter_map(|(id, ip, len)| Ipv4Net::new(ip, len).ok().map(|n| (id, n)))
            .collect())
    }

    fn set_link(&mut self, from: u32, to: u32) -> Result<()> {
        self.loaded.maps.policy.set_link(from, to)
    }

    fn remove_link(&mut self, from: u32, to: u32) -> Result<()> {
        self.loaded.maps.policy.remove_link(from, to)
    }

    fn links(&self) -> Result<Vec<(u32, u32)>> {
        self.loaded.maps.policy.links()
    }

    fn set_limit(&mut self, id: u32, r: RateLimit) -> Result<()> {
        self.loaded.maps.ratelimit.set(id, r)
    }

    fn reset_stats(&mut self, id: u32) -> Result<()> {
        self.loaded.maps.stats.reset_endpoint(id)
    }

    fn endpoint_stats(&self, id: u32) -> Result<EpTotals> {
        self.loaded.maps.stats.endpoint(id)
    }

    fn counters(&self) -> Result<Vec<u64>> {
        self.loaded.maps.stats.counters()
    }

    fn add_ct_removed(&mut self, n: u64) -> Result<()> {
        self.loaded.maps.stats.add_ct_removed(n)
    }

    fn conntrack(&self) -> Result<Vec<CtView>> {
        self.loaded.maps.conntrack.list()
    }

    fn remove_conntrack(&mut self, pred: &dyn Fn(&CtView) -> bool) -> Result<usize> {
        self.loaded.maps.conntrack.remove_where(pred)
    }

    fn programs(&self) -> Vec<ProgramInfo> {
        let tc = self.loaded.tc.iter().map(|(name, p)| ProgramInfo {
            name: (*name).to_string(),
            kind: "tc",
            id: p.info().map_or(0, |i| i.id()),
        });
        let sock = self.loaded.sock.iter().map(|(name, p)| ProgramInfo {
            name: (*name).to_string(),
            kind: "cgroup_sock_addr",
            id: p.info().map_or(0, |i| i.id()),
        });
        tc.chain(sock).collect()
    }

    fn cgroup(&self) -> String {
        attach::cgroup2_root()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}
