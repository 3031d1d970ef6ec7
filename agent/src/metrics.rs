//! Prometheus text exposition on `--metrics ADDR` (GET /metrics): the same counters as
//! `tollgate stats` and `tollgate status`, read from the maps at scrape time.

use std::{fmt::Write as _, net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Mutex,
};
use tracing::{debug, info};

use crate::node::Node;

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the exposition text from `stats` (array) and `status` (object) as the API returns
/// them, so the metrics can never disagree with the CLI.
pub fn render(stats: &Value, status: &Value) -> String {
    let mut o = String::new();
    let per_container = [
        ("rx_packets", "Packets delivered to the container."),
        ("rx_bytes", "Bytes delivered to the container."),
        ("tx_packets", "Packets sent by the container."),
        ("tx_bytes", "Bytes sent by the container."),
    ];
    let list = stats.as_array().cloned().unwrap_or_default();
    for (k, help) in per_container {
        let _ = writeln!(o, "# HELP tollgate_container_{k}_total {help}\n# TYPE tollgate_container_{k}_total counter");
        for c in &list {
            let name = esc(c["container"].as_str().unwrap_or(""));
            let _ = writeln!(
                o,
                "tollgate_container_{k}_total{{container=\"{name}\"}} {}",
                c[k].as_u64().unwrap_or(0)
            );
        }
    }
    let _ = writeln!(o, "# HELP tollgate_container_drops_total Packets the datapath dropped, by container and reason.\n# TYPE tollgate_container_drops_total counter");
    for c in &list {
        let name = esc(c["container"].as_str().unwrap_or(""));
        if let Some(d) = c["drops"].as_object() {
            for (reason, n) in d {
                let _ = writeln!(
                    o,
                    "tollgate_container_drops_total{{container=\"{name}\",reason=\"{reason}\"}} {}",
                    n.as_u64().unwrap_or(0)
                );
            }
        }
    }
    let _ = writeln!(o, "# HELP tollgate_container_conntrack_entries Conntrack entries owned by the container.\n# TYPE tollgate_container_conntrack_entries gauge");
    for c in &list {
        let name = esc(c["container"].as_str().unwrap_or(""));
        let _ = writeln!(
            o,
            "tollgate_container_conntrack_entries{{container=\"{name}\"}} {}",
            c["conntrack_entries"].as_u64().unwrap_or(0)
        );
    }
    let _ = writeln!(o, "# HELP tollgate_datapath_events_total Datapath event counters (translations, passes, drops).\n# TYPE tollgate_datapath_events_total counter");
    if let Some(m) = status["counters"].as_object() {
        for (k, n) in m {
            let _ = writeln!(
                o,
                "tollgate_datapath_events_total{{event=\"{}\"}} {}",
                esc(k),
                n.as_u64().unwrap_or(0)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP tollgate_map_entries Entries in each BPF map.\n# TYPE tollgate_map_entries gauge"
    );
    let _ = writeln!(o, "# HELP tollgate_map_max_entries Capacity of each BPF map.\n# TYPE tollgate_map_max_entries gauge");
    if let Some(m) = status["maps"].as_object() {
        for (k, v) in m {
            let _ = writeln!(
                o,
                "tollgate_map_entries{{map=\"{}\"}} {}",
                esc(k),
                v["entries"].as_u64().unwrap_or(0)
            );
            let _ = writeln!(
                o,
                "tollgate_map_max_entries{{map=\"{}\"}} {}",
                esc(k),
                v["max"].as_u64().unwrap_or(0)
            );
        }
    }
    let ct = &status["conntrack"];
    for (k, kind, help) in [
        (
            "created",
            "counter",
            "Conntrack entries created by the datapath.",
        ),
        (
            "removed",
            "counter",
            "Conntrack entries removed by the agent (GC, flush, deletes).",
        ),
        (
            "evicted",
            "counter",
            "Conntrack entries evicted by the LRU when the table was full.",
        ),
    ] {
        let _ = writeln!(o, "# HELP tollgate_conntrack_{k}_total {help}\n# TYPE tollgate_conntrack_{k}_total {kind}\ntollgate_conntrack_{k}_total {}", ct[k].as_u64().unwrap_or(0));
    }
    for (k, help) in [
        ("containers", "Containers."),
        ("port_maps", "Published ports."),
        ("uptime_secs", "Daemon uptime in seconds."),
    ] {
        let _ = writeln!(
            o,
            "# HELP tollgate_{k} {help}\n# TYPE tollgate_{k} gauge\ntollgate_{k} {}",
            status[k].as_u64().unwrap_or(0)
        );
    }
    o
}

pub async fn serve(addr: SocketAddr, node: Arc<Mutex<Node>>) -> Result<()> {
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --metrics {addr}"))?;
    info!(%addr, "serving Prometheus metrics on /metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let node = node.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut n = 0;
                // Read the request head (bounded); only the request line matters.
                while n < buf.len() {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        s.read(&mut buf[n..]),
                    )
                    .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(k)) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if head.starts_with("GET ")
                    && (path == "/metrics" || path.starts_with("/metrics?"))
                {
                    let n = node.lock().await;
                    match (n.stats(None), n.status()) {
                        (Ok(st), Ok(status)) => ("200 OK", render(&st, &status)),
                        (Err(e), _) | (_, Err(e)) => {
                            ("500 Internal Server Error", format!("{e:#}\n"))
                        }
                    }
                } else {
                    ("404 Not Found", "try /metrics\n".to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                if let Err(e) = s.write_all(resp.as_bytes()).await {
                    debug!("metrics client: {e}");
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_prometheus_text() {
        let stats = serde_json::json!([{"container": "web", "rx_packets": 3, "rx_bytes": 300, "tx_packets": 2, "tx_bytes": 200,
            "drops": {"policy": 5, "spoof": 0}, "conntrack_entries": 4}]);
        let status = serde_json::json!({"counters": {"dnat_uplink": 7}, "maps": {"TG_CT": {"entries": 4, "max": 10}},
            "conntrack": {"created": 6, "removed": 1, "evicted": 1}, "containers": 1, "port_maps": 2, "uptime_secs": 9});
        let t = super::render(&stats, &status);
        for line in [
            "tollgate_container_rx_bytes_total{container=\"web\"} 300",
            "tollgate_container_drops_total{container=\"web\",reason=\"policy\"} 5",
            "tollgate_datapath_events_total{event=\"dnat_uplink\"} 7",
            "tollgate_map_entries{map=\"TG_CT\"} 4",
            "tollgate_conntrack_evicted_total 1",
            "tollgate_port_maps 2",
            "# TYPE tollgate_container_tx_packets_total counter",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
    }
}
