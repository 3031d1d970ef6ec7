//! Runs a parsed command: the daemon, reset, the demo, or a CLI request to the daemon with its
//! output formatted for people (or as JSON with `--json`).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    api::{self, Request},
    cli::{Cli, Cmd, ConntrackCmd, ContainerCmd, DaemonArgs, LimitCmd, PolicyCmd, PortCmd},
    node::Settings,
    policy::Action,
    pool::Pool,
    ports::parse_port_range,
};

pub fn run(cli: Cli) -> Result<()> {
    let sock = cli.socket.as_path();
    match cli.cmd {
        Cmd::Daemon(a) => daemon(a, sock),
        Cmd::Reset(a) => crate::reset::run(sock, a.netns.as_deref(), &a.state_dir, &a.bpffs),
        Cmd::Demo(a) => crate::demo::run(a),
        Cmd::DemoServe { netns, port, name } => crate::demo::serve(&netns, port, &name),
        Cmd::Status { json } => {
            let v = api::call(sock, &Request::Status)?;
            if json {
                print_json(&v)
            } else {
                print_status(&v);
            }
            Ok(())
        }
        Cmd::Container(c) => container(sock, c),
        Cmd::Port(p) => port(sock, p),
        Cmd::Conntrack(c) => conntrack(sock, c),
        Cmd::Policy(p) => policy(sock, p),
        Cmd::Stats { name, json, watch } => stats(sock, name, json, watch),
        Cmd::Limit(l) => limit(sock, l),
    }
}

fn daemon(a: DaemonArgs, sock: &Path) -> Result<()> {
    let settings = Settings {
        uplink: a.uplink,
        netns: a.netns.clone(),
        pool: Pool::new(a.pool)?,
        port_range: parse_port_range(&a.port_range)?,
        snat_ip: a.snat_ip,
        icc: a.icc,
        state_dir: a.state_dir,
        bpffs: a.bpffs,
        socket: sock.to_path_buf(),
        conntrack_max: a.conntrack_max,
        nat_ports: crate::ports::parse_port_range(&a.nat_ports).context("--nat-ports")?,
        ct: crate::node::CtTimeouts {
            tcp_syn: datapath_common::config::CT_TCP_SYN_S_DEFAULT,
            tcp_est: a.ct_tcp_timeout,
            tcp_close: datapath_common::config::CT_TCP_CLOSE_S_DEFAULT,
            udp: a.ct_udp_timeout,
            icmp: a.ct_icmp_timeout,
        },
        ct_gc_interval: std::time::Duration::from_secs(a.ct_gc_interval.max(1)),
        metrics: a.metrics,
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
    rt.block_on(crate::daemon::run(settings))
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
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
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// The elements of a JSON array (none for anything else), for table rows.
fn rows_of(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn container(sock: &Path, c: ContainerCmd) -> Result<()> {
    match c {
        ContainerCmd::Add {
            name,
            netns,
            ip,
            json,
        } => {
            let v = api::call(sock, &Request::ContainerAdd { name, netns, ip })?;
            if json {
                print_json(&v);
            } else {
                println!(
                    "{} ip {}/{} gateway {} netns {} veth {}",
                    s(&v, "name"),
                    s(&v, "ip"),
                    s(&v, "prefix_len"),
                    s(&v, "gateway"),
                    s(&v, "netns"),
                    s(&v, "host_ifname")
                );
            }
        }
        ContainerCmd::Del { name } => {
            api::call(sock, &Request::ContainerDel { name })?;
        }
        ContainerCmd::List { json } => {
            let v = api::call(sock, &Request::ContainerList)?;
            if json {
                print_json(&v);
            } else {
                let rows = rows_of(&v)
                    .map(|c| {
                        vec![
                            s(c, "name"),
                            format!("{}/{}", s(c, "ip"), s(c, "prefix_len")),
                            s(c, "gateway"),
                            s(c, "host_ifname"),
                            s(c, "netns"),
                        ]
                    })
                    .collect();
                table(&["NAME", "IP", "GATEWAY", "VETH", "NETNS"], rows);
            }
        }
    }
    Ok(())
}

fn port(sock: &Path, p: PortCmd) -> Result<()> {
    match p {
        PortCmd::Add { name, specs, json } => {
            let v = api::call(
                sock,
                &Request::PortAdd {
                    container: name,
                    specs,
                },
            )?;
            if json {
                print_json(&v);
            } else {
                for m in v.as_array().cloned().unwrap_or_default() {
                    println!("{}", s(&m, "host_port"));
                }
            }
        }
        PortCmd::Del { name, specs } => {
            api::call(
                sock,
                &Request::PortDel {
                    container: name,
                    specs,
                },
            )?;
        }
        PortCmd::List { name, json } => {
            let v = api::call(sock, &Request::PortList { container: name })?;
            if json {
                print_json(&v);
            } else {
                let rows = rows_of(&v)
                    .map(|m| {
                        vec![
                            s(m, "container"),
                            s(m, "host_ip"),
                            s(m, "host_port"),
                            s(m, "container_port"),
                            s(m, "proto"),
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

fn conntrack(sock: &Path, c: ConntrackCmd) -> Result<()> {
    match c {
        ConntrackCmd::List { json } => {
            let v = api::call(sock, &Request::ConntrackList)?;
            if json {
                print_json(&v);
            } else {
                let rows = rows_of(&v)
                    .map(|e| {
                        vec![
                            s(e, "proto"),
                            s(e, "direction"),
                            s(e, "src"),
                            s(e, "dst"),
                            s(e, "translated_src"),
                            s(e, "translated_dst"),
                            s(e, "age_secs"),
                            s(e, "packets"),
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
            let v = api::call(sock, &Request::ConntrackFlush { container: name })?;
            println!("flushed {} entries", s(&v, "flushed"));
        }
    }
    Ok(())
}

fn print_status(v: &Value) {
    println!(
        "tollgate {}  uptime {}s",
        s(v, "version"),
        s(v, "uptime_secs")
    );
    println!(
        "uplink {} {}  netns {}",
        s(v, "uplink"),
        v["uplink_ips"],
        s(v, "netns")
    );
    println!("pool {}  port range {}", s(v, "pool"), s(v, "port_range"));
    println!(
        "containers {}  port maps {}",
        s(v, "containers"),
        s(v, "port_maps")
    );
    println!("programs:");
    for p in v["programs"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {:<20} {:<18} id {}",
            s(&p, "name"),
            s(&p, "type"),
            s(&p, "id")
        );
    }
    println!("attach points:");
    for a in v["attach_points"].as_array().cloned().unwrap_or_default() {
        println!("  {:<20} {}", s(&a, "program"), s(&a, "where"));
    }
    println!("maps:");
    if let Some(m) = v["maps"].as_object() {
        for (k, e) in m {
            println!("  {:<16} {}/{}", k, s(e, "entries"), s(e, "max"));
        }
    }
    println!("pins {}", s(v, "pins"));
    if let Some(c) = v["counters"].as_object() {
        let parts: Vec<String> = c.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("counters {}", parts.join(" "));
    }
}

fn policy(sock: &Path, p: PolicyCmd) -> Result<()> {
    let req = match p {
        PolicyCmd::Link { from, to } => Request::PolicyLink {
            from,
            to,
            add: true,
        },
        PolicyCmd::Unlink { from, to } => Request::PolicyLink {
            from,
            to,
            add: false,
        },
        PolicyCmd::Egress { name, stance } => Request::PolicyEgress {
            container: name,
            stance,
        },
        PolicyCmd::Allow { name, rule } => Request::PolicyRule {
            container: name,
            spec: rule,
            action: Some(Action::Allow),
        },
        PolicyCmd::Deny { name, rule } => Request::PolicyRule {
            container: name,
            spec: rule,
            action: Some(Action::Deny),
        },
        PolicyCmd::Rm { name, rule } => Request::PolicyRule {
            container: name,
            spec: rule,
            action: None,
        },
        PolicyCmd::List { name, json } => {
            let v = api::call(sock, &Request::PolicyList { container: name })?;
            if json {
                print_json(&v);
            } else {
                print_policy(&v);
            }
            return Ok(());
        }
    };
    api::call(sock, &req)?;
    Ok(())
}

fn print_policy(v: &Value) {
    println!(
        "{}: egress {} (icc {})",
        s(v, "container"),
        s(v, "egress"),
        s(v, "icc")
    );
    let links: Vec<String> = v["links"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|l| l.as_str().unwrap_or("").to_string())
        .collect();
    println!(
        "links to: {}",
        if links.is_empty() {
            "-".to_string()
        } else {
            links.join(", ")
        }
    );
    let rows = v["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| vec![s(r, "action"), s(r, "cidr"), s(r, "ports"), s(r, "proto")])
        .collect();
    table(&["ACTION", "CIDR", "PORTS", "PROTO"], rows);
}

fn print_stats(list: &[Value]) {
    let rows = list
        .iter()
        .map(|c| {
            let drops: Vec<String> = c["drops"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                        .map(|(k, n)| format!("{k}={n}"))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                s(c, "container"),
                s(c, "rx_packets"),
                s(c, "rx_bytes"),
                s(c, "tx_packets"),
                s(c, "tx_bytes"),
                s(c, "conntrack_entries"),
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

fn stats(sock: &Path, name: Option<String>, json: bool, watch: bool) -> Result<()> {
    let fetch = || -> Result<Vec<Value>> {
        let v = api::call(
            sock,
            &Request::Stats {
                container: name.clone(),
            },
        )?;
        Ok(if name.is_some() {
            vec![v]
        } else {
            v.as_array().cloned().unwrap_or_default()
        })
    };
    if !watch {
        let list = fetch()?;
        if json {
            print_json(&if name.is_some() {
                list[0].clone()
            } else {
                Value::Array(list)
            });
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
            let rate = |c: &Value, k: &str| {
                let before = prev
                    .iter()
                    .find(|p| p["container"] == c["container"])
                    .map(|p| p[k].as_u64().unwrap_or(0))
                    .unwrap_or(0);
                c[k].as_u64().unwrap_or(0).saturating_sub(before)
            };
            let rows = cur
                .iter()
                .map(|c| {
                    vec![
                        s(c, "container"),
                        crate::limits::Rate(rate(c, "rx_bytes") * 8).to_string(),
                        crate::limits::Rate(rate(c, "tx_bytes") * 8).to_string(),
                        rate(c, "rx_packets").to_string(),
                        rate(c, "tx_packets").to_string(),
                    ]
                })
                .collect();
            table(&["CONTAINER", "RX/s", "TX/s", "RX_PPS", "TX_PPS"], rows);
        }
        prev = cur;
    }
}

fn limit(sock: &Path, l: LimitCmd) -> Result<()> {
    match l {
        LimitCmd::Set {
            name,
            egress,
            ingress,
            burst,
        } => {
            api::call(
                sock,
                &Request::LimitSet {
                    container: name,
                    egress,
                    ingress,
                    burst,
                },
            )?;
        }
        LimitCmd::Clear { name } => {
            api::call(sock, &Request::LimitClear { container: name })?;
        }
        LimitCmd::Show { name, json } => {
            let v = api::call(
                sock,
                &Request::LimitShow {
                    container: name.clone(),
                },
            )?;
            if json {
                print_json(&v);
            } else {
                let list = if name.is_some() {
                    vec![v]
                } else {
                    v.as_array().cloned().unwrap_or_default()
                };
                let rows = list
                    .iter()
                    .map(|l| {
                        vec![
                            s(l, "container"),
                            s(l, "egress"),
                            s(l, "ingress"),
                            s(l, "burst_bytes"),
                        ]
                    })
                    .collect();
                table(&["CONTAINER", "EGRESS", "INGRESS", "BURST_BYTES"], rows);
            }
        }
    }
    Ok(())
}
