//! Prometheus metrics (`GET /metrics`, on `--metrics ADDR` and on the API socket): the same
//! counters as `tollgate stats` and `tollgate status`, built from their typed answers at scrape
//! time so the two can never disagree, and encoded by `prometheus-client`.

use std::{
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use anyhow::{Context, Result};
use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::routes::App;
use crate::{
    api::types::{paths, ContainerStats, Status, DROPS_INTERNAL},
    datapath::Datapath,
    store::Store,
};

type Labels = Vec<(&'static str, String)>;
type Counters = Family<Labels, Counter<u64, AtomicU64>>;
type Gauges = Family<Labels, Gauge<i64>>;
/// A per-container counter of the stats.
type Field = fn(&ContainerStats) -> u64;

fn gauge(v: impl TryInto<i64>) -> Gauge<i64> {
    let g = Gauge::default();
    g.set(v.try_into().unwrap_or(i64::MAX));
    g
}

fn counter(v: u64) -> Counter<u64, AtomicU64> {
    let c = Counter::default();
    c.inc_by(v);
    c
}

/// The exposition text (`OpenMetrics`) of `stats` and `status`.
pub fn render(containers: &[ContainerStats], status: &Status) -> Result<String> {
    let mut r = Registry::default();
    let per_container: [(&str, &str, Field); 4] = [
        ("rx_packets", "Packets delivered to the container", |s| {
            s.rx_packets
        }),
        ("rx_bytes", "Bytes delivered to the container", |s| {
            s.rx_bytes
        }),
        ("tx_packets", "Packets sent by the container", |s| {
            s.tx_packets
        }),
        ("tx_bytes", "Bytes sent by the container", |s| s.tx_bytes),
    ];
    for (k, help, field) in per_container {
        let f = Counters::default();
        for c in containers {
            f.get_or_create(&vec![("container", c.container.clone())])
                .inc_by(field(c));
        }
        // The `_total` suffix is added by the encoder for counters.
        r.register(format!("tollgate_container_{k}"), help, f);
    }
    let drops = Counters::default();
    for c in containers {
        // `internal` is the sum of the failed-step reasons: exported once, by step.
        for (reason, n) in c.drops.iter().filter(|(r, _)| *r != DROPS_INTERNAL) {
            drops
                .get_or_create(&vec![
                    ("container", c.container.clone()),
                    ("reason", reason.clone()),
                ])
                .inc_by(*n);
        }
    }
    r.register(
        "tollgate_container_drops",
        "Packets the datapath dropped, by container and reason",
        drops,
    );
    let ct = Gauges::default();
    for c in containers {
        ct.get_or_create(&vec![("container", c.container.clone())])
            .set(i64::try_from(c.conntrack_entries).unwrap_or(i64::MAX));
    }
    r.register(
        "tollgate_container_conntrack_entries",
        "Conntrack entries owned by the container",
        ct,
    );
    let events = Counters::default();
    for (k, n) in &status.counters {
        events.get_or_create(&vec![("event", k.clone())]).inc_by(*n);
    }
    r.register(
        "tollgate_datapath_events",
        "Datapath event counters (translations, passes, drops)",
        events,
    );
    let (entries, max) = (Gauges::default(), Gauges::default());
    for (k, v) in &status.maps {
        entries
            .get_or_create(&vec![("map", k.clone())])
            .set(i64::try_from(v.entries).unwrap_or(i64::MAX));
        max.get_or_create(&vec![("map", k.clone())])
            .set(i64::from(v.max));
    }
    r.register("tollgate_map_entries", "Entries in each BPF map", entries);
    r.register("tollgate_map_max_entries", "Capacity of each BPF map", max);
    let c = &status.conntrack;
    r.register(
        "tollgate_conntrack_created",
        "Conntrack entries created by the datapath",
        counter(c.created),
    );
    r.register(
        "tollgate_conntrack_removed",
        "Conntrack entries removed by the agent (GC, flush, deletes)",
        counter(c.removed),
    );
    r.register(
        "tollgate_conntrack_evicted",
        "Conntrack entries evicted by the LRU when the table was full",
        counter(c.evicted),
    );
    r.register(
        "tollgate_containers",
        "Containers",
        gauge(status.containers),
    );
    r.register(
        "tollgate_port_maps",
        "Published ports",
        gauge(status.port_maps),
    );
    r.register(
        "tollgate_uptime_secs",
        "Daemon uptime in seconds",
        gauge(status.uptime_secs),
    );
    let mut out = String::new();
    encode(&mut out, &r).context("encoding the metrics")?;
    Ok(out)
}

pub async fn scrape<D: Datapath, S: Store>(State(app): State<App<D, S>>) -> Response {
    let text = {
        let n = app.node.lock().await;
        match (n.stats(None), n.status()) {
            (Ok(st), Ok(status)) => render(&st, &status),
            (Err(e), _) | (_, Err(e)) => Err(e.err),
        }
    };
    match text {
        Ok(t) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            t,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
    }
}

/// Bounds of the `--metrics` listener, a TCP port that anything able to reach it may open
/// connections to: at most `METRICS_MAX_CONNECTIONS` at once (one more is closed at once),
/// a request head within `METRICS_HEAD_TIMEOUT`, a connection at most `METRICS_CONN_LIFETIME`.
/// A scraper needs one connection for a few milliseconds; without bounds, clients that connect
/// and stall would take the daemon's file descriptors, which its API socket and every
/// container's namespace also need.
pub const METRICS_MAX_CONNECTIONS: usize = 64;
pub const METRICS_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
pub const METRICS_CONN_LIFETIME: Duration = Duration::from_mins(1);

/// Serves `/metrics` alone on `addr` (the rest of the API stays on the root-only socket),
/// within the bounds above.
pub async fn serve<D: Datapath, S: Store>(addr: SocketAddr, app: App<D, S>) -> Result<()> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --metrics {addr}"))?;
    info!(%addr, "serving Prometheus metrics on /metrics");
    let router = Router::new()
        .route(paths::METRICS, get(scrape::<D, S>))
        .with_state(app);
    let slots = Arc::new(Semaphore::new(METRICS_MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let stream = match l.accept().await {
                Ok((stream, _)) => stream,
                // Out of fds and the like: back off instead of spinning.
                Err(e) => {
                    warn!("accepting a metrics connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!("{METRICS_MAX_CONNECTIONS} metrics connections open: closing one more");
                continue;
            };
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(METRICS_HEAD_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Ok(Err(e)) = tokio::time::timeout(METRICS_CONN_LIFETIME, conn).await {
                    debug!("metrics connection: {e}");
                }
                drop(slot);
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::types::{ConntrackSummary, MapFill};

    #[test]
    fn renders_the_metric_names_of_the_exposition() {
        let containers = vec![ContainerStats {
            container: "web".into(),
            ip: "10.254.0.2".parse().unwrap(),
            rx_packets: 3,
            rx_bytes: 300,
            tx_packets: 2,
            tx_bytes: 200,
            drops: [("policy".to_string(), 5), ("spoof".to_string(), 0)].into(),
            conntrack_entries: 4,
        }];
        let status = Status {
            version: "0".into(),
            uplink: "up0".into(),
            uplink_ips: vec![],
            netns: None,
            pool: "10.254.0.0/22".into(),
            snat_ip: None,
            icc: false,
            port_range: "1-2".into(),
            uptime_secs: 9,
            containers: 1,
            port_maps: 2,
            programs: vec![],
            attach_points: vec![],
            maps: [(
                "TG_CT".to_string(),
                MapFill {
                    entries: 4,
                    max: 10,
                },
            )]
            .into(),
            pins: String::new(),
            counters: BTreeMap::from([("dnat_uplink".to_string(), 7)]),
            conntrack: ConntrackSummary {
                entries: 4,
                max: 10,
                created: 6,
                removed: 1,
                evicted: 1,
            },
        };
        let t = render(&containers, &status).unwrap();
        for line in [
            "tollgate_container_rx_bytes_total{container=\"web\"} 300",
            "tollgate_container_drops_total{container=\"web\",reason=\"policy\"} 5",
            "tollgate_datapath_events_total{event=\"dnat_uplink\"} 7",
            "tollgate_map_entries{map=\"TG_CT\"} 4",
            "tollgate_conntrack_evicted_total 1",
            "tollgate_port_maps 2",
            "# TYPE tollgate_container_tx_packets counter",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
    }
}
