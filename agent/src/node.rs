//! The node: everything the daemon owns (flags, pools, state store, datapath handles,
//! netlink), and the operations the API exposes. Each operation validates first, then applies,
//! and undoes what it applied if a later step fails, so a refused command changes nothing.

use std::{net::Ipv4Addr, ops::RangeInclusive, path::PathBuf, time::Instant};

use anyhow::{Context, Result};
use rtnetlink::Handle;
use serde_json::{json, Value};

use datapath_common::stats::{CNT_CT_CREATED, CNT_CT_REMOVED};

use crate::{
    datapath::{
        loader::{Loaded, Pins},
        maps::conntrack::CtView,
    },
    pool::Pool,
    state::{State, Store},
};

/// Daemon settings (from the `daemon` flags).
#[derive(Clone, Debug)]
pub struct Settings {
    pub uplink: String,
    pub netns: Option<String>,
    pub pool: Pool,
    pub port_range: RangeInclusive<u16>,
    pub snat_ip: Option<Ipv4Addr>,
    pub icc: bool,
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    pub conntrack_max: u32,
    /// Masquerade source ports (and ICMP echo ids).
    pub nat_ports: RangeInclusive<u16>,
    pub ct: CtTimeouts,
    /// How often the conntrack GC removes expired entries.
    pub ct_gc_interval: std::time::Duration,
    pub metrics: Option<std::net::SocketAddr>,
}

/// Conntrack idle timeouts, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct CtTimeouts {
    pub tcp_syn: u32,
    pub tcp_est: u32,
    pub tcp_close: u32,
    pub udp: u32,
    pub icmp: u32,
}

impl CtTimeouts {
    /// Idle timeout of an entry, as the datapath applies it.
    pub fn of(&self, v: &CtView) -> u64 {
        use datapath_common::conntrack::{CT_CLOSING, CT_SEEN_REPLY};
        let s = match v.proto {
            datapath_common::proto::TCP if v.flags & CT_CLOSING != 0 => self.tcp_close,
            datapath_common::proto::TCP if v.flags & CT_SEEN_REPLY == 0 => self.tcp_syn,
            datapath_common::proto::TCP => self.tcp_est,
            datapath_common::proto::UDP => self.udp,
            _ => self.icmp,
        };
        u64::from(s) * 1_000_000_000
    }
}

pub struct Node {
    pub settings: Settings,
    pub store: Store,
    pub state: State,
    pub dp: Loaded,
    pub pins: Pins,
    pub nl: Handle,
    pub uplink_ifindex: u32,
    pub uplink_ips: Vec<Ipv4Addr>,
    pub started: Instant,
}

impl Node {
    pub fn save(&self) -> Result<()> {
        self.store.save(&self.state)
    }

    /// Saves `next` as the state; on failure the in-memory state stays as it was.
    /// Like `commit` for a port-map change: journaled (one small fsynced append) instead of a
    /// full snapshot, so `port add` stays fast with tens of thousands of maps.
    pub fn commit_ports(&mut self, next: State, change: &crate::state::PortChange) -> Result<()> {
        self.store
            .save_ports(change, &next)
            .context("saving state")?;
        self.state = next;
        Ok(())
    }

    pub fn commit(&mut self, next: State) -> Result<()> {
        self.store.save(&next).context("saving state")?;
        self.state = next;
        Ok(())
    }

    pub fn status(&self) -> Result<Value> {
        let mut programs = Vec::new();
        for (name, p) in &self.dp.tc {
            programs.push(
                json!({"name": name, "type": "tc", "id": p.info().map(|i| i.id()).unwrap_or(0)}),
            );
        }
        for (name, p) in &self.dp.sock {
            programs.push(json!({"name": name, "type": "cgroup_sock_addr", "id": p.info().map(|i| i.id()).unwrap_or(0)}));
        }
        let mut attach = vec![
            json!({"program": crate::datapath::PROG_FROM_UPLINK, "where": format!("{} ingress (tcx)", self.settings.uplink)}),
        ];
        for c in self.state.containers.values() {
            attach.push(json!({"program": crate::datapath::PROG_FROM_CONTAINER, "where": format!("{} ingress (tcx)", c.host_ifname), "container": c.name}));
            attach.push(json!({"program": crate::datapath::PROG_TO_CONTAINER, "where": format!("{} egress (tcx)", c.host_ifname), "container": c.name}));
        }
        let cg = crate::datapath::attach::cgroup2_root()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        for (name, _) in crate::datapath::SOCK_PROGS {
            attach.push(json!({"program": name, "where": format!("cgroup {cg}")}));
        }
        let m = &self.dp.maps;
        let ct_entries = m.conntrack.count()?;
        let maps = json!({
            "TG_PORTMAP": {"entries": m.portmap.keys()?.len(), "max": datapath_common::maps::PORTMAP_MAX},
            "TG_ENDPOINTS": {"entries": m.endpoints.ips()?.len(), "max": datapath_common::maps::ENDPOINTS_MAX},
            "TG_LOCAL_ADDRS": {"entries": m.endpoints.locals()?.len(), "max": datapath_common::maps::LOCAL_ADDRS_MAX},
            "TG_CT": {"entries": ct_entries, "max": self.settings.conntrack_max},
            "TG_POLICY": {"entries": m.policy.prefixes()?.len(), "max": datapath_common::maps::POLICY_MAX},
            "TG_LINKS": {"entries": m.policy.links()?.len(), "max": datapath_common::maps::LINKS_MAX},
        });
        let counters = m.stats.counters()?;
        let cnt = |i: u32| counters.get(i as usize).copied().unwrap_or(0);
        let entries = ct_entries as u64;
        let (created, removed) = (cnt(CNT_CT_CREATED), cnt(CNT_CT_REMOVED));
        let named: serde_json::Map<String, Value> = datapath_common::stats::NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), json!(counters.get(i).copied().unwrap_or(0))))
            .collect();
        Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uplink": self.settings.uplink,
            "uplink_ips": self.uplink_ips,
            "netns": self.settings.netns,
            "pool": self.settings.pool.net().to_string(),
            "snat_ip": self.settings.snat_ip,
            "icc": self.settings.icc,
            "port_range": format!("{}-{}", self.settings.port_range.start(), self.settings.port_range.end()),
            "uptime_secs": self.started.elapsed().as_secs(),
            "containers": self.state.containers.len(),
            "port_maps": self.state.all_ports().count(),
            "programs": programs,
            "attach_points": attach,
            "maps": maps,
            "pins": self.settings.bpffs.display().to_string(),
            "counters": named,
            "conntrack": {
                "entries": entries,
                "max": self.settings.conntrack_max,
                "created": created,
                "removed": removed,
                // LRU evictions are invisible to both sides; they are what is neither present
                // nor removed by the agent.
                "evicted": created.saturating_sub(removed).saturating_sub(entries),
            },
        }))
    }

    pub fn conntrack_list(&self) -> Result<Value> {
        let now = monotonic_ns();
        let list: Vec<Value> = self
            .dp
            .maps
            .conntrack
            .list()?
            .into_iter()
            .map(|c| ct_json(&c, now))
            .collect();
        Ok(Value::Array(list))
    }

    pub fn conntrack_flush(&mut self, container: Option<&str>) -> Result<Value> {
        let n = match container {
            None => self.dp.maps.conntrack.remove_where(|_| true)?,
            Some(name) => {
                let c = self.container(name)?.clone();
                self.dp
                    .maps
                    .conntrack
                    .remove_where(|v| v.endpoint_id == c.id)?
            }
        };
        self.dp.maps.stats.add_ct_removed(n as u64)?;
        Ok(json!({"flushed": n}))
    }

    /// Removes conntrack entries idle for longer than their timeout (the datapath already
    /// ignores them; this frees the slots and keeps `conntrack list` honest).
    pub fn conntrack_gc(&mut self) -> Result<usize> {
        let now = monotonic_ns();
        let t = self.settings.ct;
        let n = self
            .dp
            .maps
            .conntrack
            .remove_where(|v| now.saturating_sub(v.last_seen_ns) > t.of(v))?;
        self.dp.maps.stats.add_ct_removed(n as u64)?;
        Ok(n)
    }

    /// Per-container counters (`stats [NAME]`).
    pub fn stats(&self, name: Option<&str>) -> Result<Value> {
        let list: Vec<&crate::state::Container> = match name {
            Some(n) => vec![self.container(n)?],
            None => self.state.containers.values().collect(),
        };
        let ct = self.dp.maps.conntrack.list()?;
        let mut out = Vec::new();
        for c in list {
            let t = self.dp.maps.stats.endpoint(c.id)?;
            let drops: serde_json::Map<String, Value> = datapath_common::drop::DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), json!(t.drops[*r as usize])))
                .collect();
            out.push(json!({
                "container": c.name,
                "ip": c.ip,
                "rx_packets": t.rx_packets,
                "rx_bytes": t.rx_bytes,
                "tx_packets": t.tx_packets,
                "tx_bytes": t.tx_bytes,
                "drops": drops,
                "conntrack_entries": ct.iter().filter(|v| v.endpoint_id == c.id).count(),
            }));
        }
        Ok(match name {
            Some(_) => out.pop().unwrap_or(Value::Null),
            None => Value::Array(out),
        })
    }

    pub fn container(&self, name: &str) -> Result<&crate::state::Container> {
        self.state.containers.get(name).ok_or_else(|| {
            anyhow::anyhow!("unknown container {name:?} (see `tollgate container list`)")
        })
    }
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn ct_json(c: &CtView, now: u64) -> Value {
    use datapath_common::conntrack::*;
    let proto = match c.proto {
        datapath_common::proto::TCP => "tcp",
        datapath_common::proto::UDP => "udp",
        datapath_common::proto::ICMP => "icmp",
        _ => "other",
    };
    let ep = |t: (Ipv4Addr, u16)| format!("{}:{}", t.0, t.1);
    let mut flags = Vec::new();
    for (b, n) in [
        (CT_DNAT, "dnat"),
        (CT_SNAT, "snat"),
        (CT_REPLY, "reply"),
        (CT_HAIRPIN, "hairpin"),
        (CT_CLOSING, "closing"),
        (CT_MASQ, "masq"),
        (CT_SEEN_REPLY, "seen_reply"),
    ] {
        if c.flags & b != 0 {
            flags.push(n);
        }
    }
    json!({
        "proto": proto,
        "direction": if c.flags & CT_REPLY != 0 { "reply" } else { "original" },
        "src": ep(c.src),
        "dst": ep(c.dst),
        "translated_src": ep(c.nat_src.unwrap_or(c.src)),
        "translated_dst": ep(c.nat_dst.unwrap_or(c.dst)),
        "flags": flags,
        "endpoint_id": c.endpoint_id,
        "age_secs": now.saturating_sub(c.created_ns) / 1_000_000_000,
        "idle_secs": now.saturating_sub(c.last_seen_ns) / 1_000_000_000,
        "packets": c.packets,
        "bytes": c.bytes,
    })
}
