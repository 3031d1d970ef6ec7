//! `tollgate daemon`: enter the node namespace, load/reopen the datapath, re-apply the state,
//! then serve the API (HTTP/1.1 + JSON on the unix socket, 0600) until SIGTERM/SIGINT.
//! Stopping leaves the datapath pinned and forwarding; only `tollgate reset` tears it down.

pub mod conn;
pub mod metrics;
pub mod routes;

use std::{
    collections::BTreeMap, net::Ipv4Addr, os::unix::fs::PermissionsExt, sync::Arc, time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    net::UnixListener,
    sync::{mpsc, Mutex},
};
use tracing::{debug, info, warn};

use crate::{
    api::types::cni_queue_dir,
    cluster::{Cluster, ClusterConfig, ClusterView},
    datapath::{kernel::KernelDatapath, Datapath, PROG_FROM_UPLINK},
    netlink::{addr, link},
    node::{cluster::ClusterCtx, ClusterSettings, Node, Settings, Uplink},
    store::{FileStore, Store},
};
pub use routes::{router, App};

pub async fn run(settings: Settings) -> Result<()> {
    // Before anything opens fds: the API's connection cap is sized from it.
    let nofile = conn::raise_nofile();
    let store = FileStore::open(&settings.state_dir)?;
    let dp = KernelDatapath::open(&settings.bpffs, settings.conntrack_max, &settings.state_dir)?;
    let ifindex = link::require_index(&dp.nl, &settings.uplink)
        .await
        .with_context(|| format!("--uplink {}", settings.uplink))?;
    let ips = addr::list_v4(&dp.nl, Some(ifindex)).await?;
    if ips.is_empty() {
        warn!(uplink = %settings.uplink, "the uplink has no IPv4 address yet; port maps answer on 127.0.0.1 and gateways only");
    }
    let socket = settings.socket.clone();
    let cluster = match &settings.cluster {
        Some(cs) => Some(cluster_config(cs, &ips)?),
        None => None,
    };
    let mut node = Node::new(settings, Uplink { ifindex, ips }, dp, store).map_err(|e| e.err)?;
    node.start().await.map_err(|e| e.err)?;
    // DELs the CNI plugin queued while no daemon answered: done before serving, so a runtime
    // that re-ADDs the same container never meets the leftover.
    let replayed = node.cni_replay(&cni_queue_dir(&socket)).await;
    if replayed > 0 {
        info!(replayed, "queued CNI DELs carried out");
    }
    forward_ebpf_logs(node.datapath());

    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %socket.display(), "tollgate daemon ready");

    let handle = match cluster {
        Some(cfg) => {
            let name = cfg.node_name.clone();
            let handle = Cluster::connect(cfg).await.map_err(|e| e.err)?;
            node.set_cluster(ClusterCtx {
                handle: handle.clone(),
                node_name: name,
                view: ClusterView::default(),
                last_seen: BTreeMap::new(),
            });
            Some(handle)
        }
        None => None,
    };
    let gc_every = node.settings.ct_gc_interval;
    let metrics_addr = node.settings.metrics;
    let node = Arc::new(Mutex::new(node));
    let (stop_tx, mut stop_rx) = mpsc::channel::<()>(1);
    let app = App {
        node: node.clone(),
        stop: Some(stop_tx),
    };
    if let Some(h) = handle {
        follow_cluster(node.clone(), h);
    }
    spawn_conntrack_gc(node, gc_every);
    if let Some(addr) = metrics_addr {
        metrics::serve(addr, app.clone()).await?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stopped = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping (datapath stays pinned)"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping (datapath stays pinned)"),
            _ = stop_rx.recv() => info!("shutdown requested"),
        }
    };
    let limits = conn::Limits::for_nofile(nofile);
    debug!(
        nofile,
        max_connections = limits.max_connections,
        "API limits"
    );
    conn::serve(listener, router(app), limits, stopped)
        .await
        .context("serving the API")?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The cluster store's settings for this node; the underlay address defaults to the
/// uplink's primary one.
fn cluster_config(cs: &ClusterSettings, uplink_ips: &[Ipv4Addr]) -> Result<ClusterConfig> {
    let underlay = cs
        .underlay_ip
        .or_else(|| uplink_ips.first().copied())
        .context(
            "cluster mode needs an underlay address: the uplink has none yet; give --underlay-ip",
        )?;
    let mut cfg = ClusterConfig::new(cs.endpoints.clone(), &cs.node_name, underlay);
    cfg.prefix.clone_from(&cs.prefix);
    cfg.ttl = cs.ttl;
    Ok(cfg)
}

/// Registers the node and applies every view of the store as it changes. Both go on in the
/// background, retrying while the store is down: the node serves its containers from its
/// own state meanwhile, and catches up when the store answers.
fn follow_cluster<D: Datapath, S: Store>(node: Arc<Mutex<Node<D, S>>>, handle: Cluster) {
    let mut views = handle.watch();
    tokio::spawn(async move {
        if let Err(e) = handle.register().await {
            warn!("registering in the cluster store (retrying in the background): {e}");
        }
        loop {
            let view = views.borrow_and_update().clone();
            if let Err(e) = node.lock().await.apply_view(view).await {
                warn!("applying the cluster view: {}", e.err);
            }
            if views.changed().await.is_err() {
                break;
            }
        }
    });
}

/// Forwards the programs' aya-log records to `tracing` (debug level is set by the programs;
/// the `log` records reach tracing through tracing-log).
fn forward_ebpf_logs(dp: &KernelDatapath) {
    let Some(prog) = dp.loaded.tc.get(PROG_FROM_UPLINK) else {
        return;
    };
    let Ok(info) = prog.info() else { return };
    match aya_log::EbpfLogger::init_from_id(info.id()) {
        // SAFETY: the logger owns its ring buffer fd and keeps it open for as long as the
        // AsyncFd owns the logger.
        Ok(logger) => match unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        } {
            Ok(mut fd) => {
                tokio::spawn(async move {
                    loop {
                        let Ok(mut guard) = fd.readable_mut().await else {
                            break;
                        };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => debug!("aya-log: {e}"),
        },
        Err(e) => debug!("no eBPF log forwarding: {e}"),
    }
}

/// Periodic conntrack GC (expired entries are already ignored by the datapath; this frees
/// them). Runs under the node lock like any request.
fn spawn_conntrack_gc<D: Datapath, S: Store>(node: Arc<Mutex<Node<D, S>>>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match node.lock().await.conntrack_gc() {
                Ok(0) => {}
                Ok(n) => debug!(removed = n, "conntrack gc"),
                Err(e) => warn!("conntrack gc: {e}"),
            }
        }
    });
}
