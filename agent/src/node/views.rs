//! The API's view of the node's state and of the datapath's entries: the response bodies
//! built from the model, in one place.

use std::net::Ipv4Addr;

use crate::{
    api::types as api,
    datapath::CtView,
    model::{self, rate::Rate, Container, PortMapping, Rule},
};

pub fn container_info(c: &Container) -> api::ContainerInfo {
    api::ContainerInfo {
        name: c.name.clone(),
        netns: c.netns.clone(),
        ip: c.ip,
        gateway: c.gateway,
        prefix_len: c.prefix_len,
        host_ifname: c.host_ifname.clone(),
        network: c.network.clone(),
    }
}

pub fn mapping_info(container: &str, m: &PortMapping) -> api::PortMapInfo {
    api::PortMapInfo {
        container: container.to_string(),
        host_ip: m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        host_port: m.host_port,
        container_port: m.container_port,
        proto: m.proto,
    }
}

pub fn rule_info(r: &Rule) -> api::RuleInfo {
    api::RuleInfo {
        cidr: r.m.net.to_string(),
        ports: r.m.ports.map(|(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        }),
        proto: r.m.proto.map(|p| p.to_string()),
        action: r.action,
    }
}

pub fn limit_info(name: &str, l: &model::Limit) -> api::LimitInfo {
    api::LimitInfo {
        container: name.to_string(),
        egress_bps: l.egress,
        ingress_bps: l.ingress,
        egress: l.egress.map(|r| Rate(r).to_string()),
        ingress: l.ingress.map(|r| Rate(r).to_string()),
        burst_bytes: l.burst_bytes(),
    }
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

pub fn ct_entry(c: &CtView, now: u64) -> api::ConntrackEntry {
    use datapath_common::conntrack::{CT_REPLY, FLAG_NAMES};
    let proto = match c.proto {
        datapath_common::proto::TCP => "tcp",
        datapath_common::proto::UDP => "udp",
        datapath_common::proto::ICMP => "icmp",
        _ => "other",
    };
    let ep = |t: (Ipv4Addr, u16)| format!("{}:{}", t.0, t.1);
    let flags = FLAG_NAMES
        .iter()
        .filter(|(b, _)| c.flags & b != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    api::ConntrackEntry {
        proto: proto.to_string(),
        direction: if c.flags & CT_REPLY != 0 {
            "reply"
        } else {
            "original"
        }
        .to_string(),
        src: ep(c.src),
        dst: ep(c.dst),
        translated_src: ep(c.nat_src.unwrap_or(c.src)),
        translated_dst: ep(c.nat_dst.unwrap_or(c.dst)),
        flags,
        endpoint_id: c.endpoint_id,
        age_secs: now.saturating_sub(c.created_ns) / 1_000_000_000,
        idle_secs: now.saturating_sub(c.last_seen_ns) / 1_000_000_000,
        packets: c.packets,
        bytes: c.bytes,
    }
}
