//! Runs a parsed command: the daemon, reset, the demo, or a CLI request to the daemon's API
//! with its answer formatted for people (or as JSON with `--json`).

use std::path::Path;

use anyhow::{Context, Result};
use hyper::Method;
use serde::Serialize;

use crate::{
    api::{
        types::{self as api, path, paths},
        Client,
    },
    cli::{
        Cli, Cmd, ConntrackCmd, ContainerCmd, DaemonArgs, LimitCmd, NetworkCmd, NodeCmd, PolicyCmd,
        PortCmd,
    },
    model::{Action, AddSpec, DelSpec, Rate, RuleSpec},
    node::{ClusterSettings, CtTimeouts, Settings},
};

pub fn run(cli: Cli) -> Result<()> {
    let sock = cli.socket.as_path();
    match cli.cmd {
        Cmd::Daemon(a) => daemon(a, sock),
        Cmd::Reset(a) => crate::reset::run(sock, a.netns.as_deref(), &a.state_dir, &a.bpffs),
        Cmd::Demo(a) => crate::demo::run(&a),
        Cmd::DemoServe { netns, port, name } => crate::demo::serve(&netns, port, &name),
        Cmd::Status { json } => {
            let st: api::Status = Client::new(sock)?.get(paths::STATUS)?;
            if json {
                print_json(&st);
            } else {
                print_status(&st);
            }
            Ok(())
        }
        Cmd::Container(c) => container(&Client::new(sock)?, c),
        Cmd::Network(n) => network(&Client::new(sock)?, n),
        Cmd::Node(NodeCmd::List { json }) => nodes(&Client::new(sock)?, json),
        Cmd::Port(p) => port(&Client::new(sock)?, p),
        Cmd::Conntrack(c) => conntrack(&Client::new(sock)?, c),
        Cmd::Policy(p) => policy(&Client::new(sock)?, p),
        Cmd::Stats { name, json, watch } => {
            stats(&Client::new(sock)?, name.as_deref(), json, watch)
        }
        Cmd::Limit(l) => limit(&Client::new(sock)?, l),
        Cmd::Completions { shell } => {
            crate::cli_docs::completions(shell);
            Ok(())
        }
        Cmd::Man { dir } => {
            for page in crate::cli_docs::man_pages(&dir)? {
                println!("{}", page.display());
            }
            Ok(())
        }
    }
}

fn daemon(a: DaemonArgs, sock: &Path) -> Result<()> {
    let settings = Settings {
        uplink: a.uplink,
        netns: a.netns.clone(),
        pool: a.pool,
        port_range: a.port_range,
        snat_ip: a.snat_ip,
        icc: a.icc,
        state_dir: a.state_dir,
        bpffs: a.bpffs,
        socket: sock.to_path_buf(),
        conntrack_max: a.conntrack_max,
        nat_ports: a.nat_ports,
        ct: CtTimeouts {
            tcp_syn: datapath_common::config::CT_TCP_SYN_S_DEFAULT,
            tcp_est: a.ct_tcp_timeout,
            tcp_close: datapath_common::config::CT_TCP_CLOSE_S_DEFAULT,
            udp: a.ct_udp_timeout,
            icmp: a.ct_icmp_timeout,
        },
        ct_gc_interval: std::time::Duration::from_secs(a.ct_gc_interval.max(1)),
        metrics: a.metrics,
        cluster: match &a.cluster {
            Some(url) => Some(ClusterSettings {
                endpoints: crate::cluster::parse_cluster_url(url)
                    .map_err(|e| anyhow::anyhow!("--cluster {url:?}: {e}"))?,
                prefix: a.cluster_prefix.clone(),
                node_name: match &a.node_name {
                    Some(n) => n.clone(),
                    None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .context("reading the host name (or give --node-name)")?
                        .trim()
                        .to_string(),
                },
                underlay_ip: a.underlay_ip,
                ttl: std::time::Duration::from_secs(a.node_ttl.max(1)),
            }),
            None => None,
        },
    };
    // Enter the node namespace before any other thread exists: tokio's workers inherit it.
    if let Some(ns) = &a.netns {
        crate::netns::enter(&crate::netns::named_path(ns))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(crate::server::run(settings))
}

fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// An optional value as a table cell (`-` when absent).
fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(ToString::to_string).collect());
    for r in rows {
        line(r);
    }
}

fn container(client: &Client, c: ContainerCmd) -> Result<()> {
    match c {
        ContainerCmd::Add {
            name,
            netns,
            ip,
            network,
            json,
        } => {
            let v: api::ContainerInfo = client.post(
                paths::CONTAINERS,
                &api::ContainerCreate {
                    name,
                    netns,
                    ip,
                    network,
                },
            )?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{} ip {}/{} gateway {} netns {} veth {}",
                    v.name,
                    v.ip,
                    v.prefix_len,
                    v.gateway,
                    v.netns.display(),
                    v.host_ifname
                );
            }
        }
        ContainerCmd::Del { name } => {
            let _: api::Deleted = client.delete(&path(paths::CONTAINER, &name), None::<&()>)?;
        }
        ContainerCmd::List { json } => {
            let v: Vec<api::ContainerInfo> = client.get(paths::CONTAINERS)?;
            if json {
                print_json(&v);
            } else {
                let rows = v
                    .iter()
                    .map(|c| {
                        vec![
                            c.name.clone(),
                            format!("{}/{}", c.ip, c.prefix_len),
                            c.gateway.to_string(),
                            c.network.clone(),
                            c.host_ifname.clone(),
                            c.netns.display().to_string(),
                        ]
                    })
                    .collect();
                table(&["NAME", "IP", "GATEWAY", "NETWORK", "VETH", "NETNS"], rows);
            }
        }
    }
    Ok(())
}

fn nodes(client: &Client, json: bool) -> Result<()> {
    let v: Vec<api::NodeInfo> = client.get(paths::NODES)?;
    if json {
        print_json(&v);
        return Ok(());
    }
    let rows = v
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                opt(n.underlay_ip),
                n.state.clone(),
                if n.blocks.is_empty() {
                    "-".into()
                } else {
                    n.blocks.join(", ")
                },
                opt(n.containers),
                opt(n.last_seen),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "UNDERLAY_IP",
            "STATE",
            "BLOCKS",
            "CONTAINERS",
            "LAST_SEEN",
        ],
        rows,
    );
    Ok(())
}

fn network(client: &Client, n: NetworkCmd) -> Result<()> {
    match n {
        NetworkCmd::Create {
            name,
            subnet,
            no_icc,
            internal,
            json,
        } => {
            let v: api::NetworkInfo = client.post(
                paths::NETWORKS,
                &api::NetworkCreate {
                    name,
                    subnet,
                    no_icc,
                    internal,
                },
            )?;
            if json {
                print_json(&v);
            } else {
                println!("{}", v.subnet);
            }
        }
        NetworkCmd::Rm { name } => {
            let _: api::NetworkDeleted =
                client.delete(&path(paths::NETWORK, &name), None::<&()>)?;
        }
        NetworkCmd::List { json } => {
            let v: Vec<api::NetworkInfo> = client.get(paths::NETWORKS)?;
            if json {
                print_json(&v);
            } else {
                let rows = v
                    .iter()
                    .map(|n| {
                        vec![
                            n.name.clone(),
                            n.subnet.clone(),
                            n.scope.clone(),
                            opt(n.vni),
                            if n.icc { "on" } else { "off" }.to_string(),
                            if n.internal { "yes" } else { "no" }.to_string(),
                            n.containers.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "NAME",
                        "SUBNET",
                        "SCOPE",
                        "VNI",
                        "ICC",
                        "INTERNAL",
                        "CONTAINERS",
                    ],
                    rows,
                );
            }
        }
    }
    Ok(())
}

fn port(client: &Client, p: PortCmd) -> Result<()> {
    match p {
        PortCmd::Add { name, specs, json } => {
            // Parsed here, with the daemon's own parser, so a bad spec says what is wrong
            // before anything is sent.
            let specs = specs
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<AddSpec>>>()?;
            let v: Vec<api::PortMapInfo> = client.post(
                &path(paths::CONTAINER_PORTS, &name),
                &api::PortsAdd { specs },
            )?;
            if json {
                print_json(&v);
            } else {
                for m in &v {
                    println!("{}", m.host_port);
                }
            }
        }
        PortCmd::Del { name, specs } => {
            let specs = specs
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<DelSpec>>>()?;
            let _: Vec<api::PortMapInfo> = client.delete(
                &path(paths::CONTAINER_PORTS, &name),
                Some(&api::PortsDel { specs }),
            )?;
        }
        PortCmd::List { name, json } => {
            let v: Vec<api::PortMapInfo> = match &name {
                Some(n) => client.get(&path(paths::CONTAINER_PORTS, n))?,
                None => client.get(paths::PORTS)?,
            };
            if json {
                print_json(&v);
            } else {
                let rows = v
                    .iter()
                    .map(|m| {
                        vec![
                            m.container.clone(),
                            m.host_ip.to_string(),
                            m.host_port.to_string(),
                            m.container_port.to_string(),
                            m.proto.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "CONTAINER",
                        "HOST_IP",
                        "HOST_PORT",
                        "CONTAINER_PORT",
                        "PROTO",
                    ],
                    rows,
                );
            }
        }
    }
    Ok(())
}

fn conntrack(client: &Client, c: ConntrackCmd) -> Result<()> {
    match c {
        ConntrackCmd::List { json } => {
            let v: Vec<api::ConntrackEntry> = client.get(paths::CONNTRACK)?;
            if json {
                print_json(&v);
            } else {
                let rows = v
                    .into_iter()
                    .map(|e| {
                        vec![
                            e.proto,
                            e.direction,
                            e.src,
                            e.dst,
                            e.translated_src,
                            e.translated_dst,
                            e.age_secs.to_string(),
                            e.packets.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "PROTO",
                        "DIR",
                        "SRC",
                        "DST",
                        "XLATED_SRC",
                        "XLATED_DST",
                        "AGE",
                        "PKTS",
                    ],
                    rows,
                );
            }
        }
        ConntrackCmd::Flush { name } => {
            let route = match &name {
                Some(n) => path(paths::CONTAINER_CONNTRACK, n),
                None => paths::CONNTRACK.to_string(),
            };
            let v: api::Flushed = client.delete(&route, None::<&()>)?;
            println!("flushed {} entries", v.flushed);
        }
    }
    Ok(())
}

fn print_status(v: &api::Status) {
    println!("tollgate {}  uptime {}s", v.version, v.uptime_secs);
    println!(
        "uplink {} {}  netns {}",
        v.uplink,
        serde_json::to_string(&v.uplink_ips).unwrap_or_default(),
        opt(v.netns.as_ref())
    );
    println!("pool {}  port range {}", v.pool, v.port_range);
    println!("containers {}  port maps {}", v.containers, v.port_maps);
    println!("programs:");
    for p in &v.programs {
        println!("  {:<20} {:<18} id {}", p.name, p.kind, p.id);
    }
    println!("attach points:");
    for a in &v.attach_points {
        println!("  {:<20} {}", a.program, a.at);
    }
    println!("maps:");
    for (k, e) in &v.maps {
        println!("  {:<16} {}/{}", k, e.entries, e.max);
    }
    println!("pins {}", v.pins);
    let parts: Vec<String> = v.counters.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!("counters {}", parts.join(" "));
}

fn rule(spec: &str) -> Result<RuleSpec> {
    spec.parse()
}

/// `policy allow|deny NAME RULE`: one rule added with `action`.
fn add_rule(client: &Client, name: &str, r: &str, action: Action) -> Result<serde::de::IgnoredAny> {
    client.post(
        &path(paths::CONTAINER_RULES, name),
        &api::RuleAdd {
            rule: rule(r)?,
            action,
        },
    )
}

fn policy(client: &Client, p: PolicyCmd) -> Result<()> {
    let _: serde::de::IgnoredAny = match p {
        PolicyCmd::Link { from, to } => {
            client.call(Method::PUT, &api::link_path(&from, &to), None::<&()>)?
        }
        PolicyCmd::Unlink { from, to } => {
            client.delete(&api::link_path(&from, &to), None::<&()>)?
        }
        PolicyCmd::Egress { name, stance } => client.put(
            &path(paths::CONTAINER_EGRESS, &name),
            &api::EgressSet { egress: stance },
        )?,
        PolicyCmd::Allow { name, rule: r } => add_rule(client, &name, &r, Action::Allow)?,
        PolicyCmd::Deny { name, rule: r } => add_rule(client, &name, &r, Action::Deny)?,
        PolicyCmd::Rm { name, rule: r } => client.delete(
            &path(paths::CONTAINER_RULES, &name),
            Some(&api::RuleDel { rule: rule(&r)? }),
        )?,
        PolicyCmd::List { name, json } => {
            let v: api::PolicyInfo = client.get(&path(paths::CONTAINER_POLICY, &name))?;
            if json {
                print_json(&v);
            } else {
                print_policy(&v);
            }
            return Ok(());
        }
    };
    Ok(())
}

fn print_policy(v: &api::PolicyInfo) {
    let stance = |s| {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
    };
    println!(
        "{}: egress {} (icc {})",
        v.container,
        stance(v.egress).unwrap_or_default(),
        v.icc
    );
    println!(
        "links to: {}",
        if v.links.is_empty() {
            "-".to_string()
        } else {
            v.links.join(", ")
        }
    );
    let rows = v
        .rules
        .iter()
        .map(|r| {
            vec![
                if r.action == Action::Allow {
                    "allow"
                } else {
                    "deny"
                }
                .to_string(),
                r.cidr.clone(),
                opt(r.ports.as_ref()),
                opt(r.proto.as_ref()),
            ]
        })
        .collect();
    table(&["ACTION", "CIDR", "PORTS", "PROTO"], rows);
}

fn print_stats(list: &[api::ContainerStats]) {
    let rows = list
        .iter()
        .map(|c| {
            let drops: Vec<String> = c
                .drops
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            vec![
                c.container.clone(),
                c.rx_packets.to_string(),
                c.rx_bytes.to_string(),
                c.tx_packets.to_string(),
                c.tx_bytes.to_string(),
                c.conntrack_entries.to_string(),
                if drops.is_empty() {
                    "-".into()
                } else {
                    drops.join(" ")
                },
            ]
        })
        .collect();
    table(
        &[
            "CONTAINER",
            "RX_PKTS",
            "RX_BYTES",
            "TX_PKTS",
            "TX_BYTES",
            "CT",
            "DROPS",
        ],
        rows,
    );
}

fn stats(client: &Client, name: Option<&str>, json: bool, watch: bool) -> Result<()> {
    let fetch = || -> Result<Vec<api::ContainerStats>> {
        Ok(match name {
            Some(n) => vec![client.get(&path(paths::CONTAINER_STATS, n))?],
            None => client.get(paths::STATS)?,
        })
    };
    if !watch {
        let list = fetch()?;
        if json {
            match name {
                Some(_) => print_json(&list[0]),
                None => print_json(&list),
            }
        } else {
            print_stats(&list);
        }
        return Ok(());
    }
    let mut prev = fetch()?;
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let cur = fetch()?;
        if json {
            println!("{}", serde_json::to_string(&cur)?);
        } else {
            print!("\x1b[2J\x1b[H");
            print_stats(&cur);
            println!();
            let rate = |c: &api::ContainerStats, k: fn(&api::ContainerStats) -> u64| {
                let before = prev
                    .iter()
                    .find(|p| p.container == c.container)
                    .map_or(0, k);
                k(c).saturating_sub(before)
            };
            let rows = cur
                .iter()
                .map(|c| {
                    vec![
                        c.container.clone(),
                        Rate(rate(c, |s| s.rx_bytes) * 8).to_string(),
                        Rate(rate(c, |s| s.tx_bytes) * 8).to_string(),
                        rate(c, |s| s.rx_packets).to_string(),
                        rate(c, |s| s.tx_packets).to_string(),
                    ]
                })
                .collect();
            table(&["CONTAINER", "RX/s", "TX/s", "RX_PPS", "TX_PPS"], rows);
        }
        prev = cur;
    }
}

fn limit(client: &Client, l: LimitCmd) -> Result<()> {
    match l {
        LimitCmd::Set {
            name,
            egress,
            ingress,
            burst,
        } => {
            let _: api::LimitInfo = client.put(
                &path(paths::CONTAINER_LIMITS, &name),
                &api::LimitSet {
                    egress_bps: egress.map(|r| r.0),
                    ingress_bps: ingress.map(|r| r.0),
                    burst_bytes: burst.map(|s| s.0),
                },
            )?;
        }
        LimitCmd::Clear { name } => {
            let _: api::LimitCleared =
                client.delete(&path(paths::CONTAINER_LIMITS, &name), None::<&()>)?;
        }
        LimitCmd::Show { name, json } => {
            let list: Vec<api::LimitInfo> = match &name {
                Some(n) => vec![client.get(&path(paths::CONTAINER_LIMITS, n))?],
                None => client.get(paths::LIMITS)?,
            };
            if json {
                match name {
                    Some(_) => print_json(&list[0]),
                    None => print_json(&list),
                }
            } else {
                let rows = list
                    .iter()
                    .map(|l| {
                        vec![
                            l.container.clone(),
                            opt(l.egress.as_ref()),
                            opt(l.ingress.as_ref()),
                            opt(l.burst_bytes),
                        ]
                    })
                    .collect();
                table(&["CONTAINER", "EGRESS", "INGRESS", "BURST_BYTES"], rows);
            }
        }
    }
    Ok(())
}
