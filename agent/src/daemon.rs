//! `tollgate daemon`: enter the node namespace, load/reopen the datapath, re-apply the state,
//! then serve the CLI on the unix socket until SIGTERM/SIGINT. Stopping leaves the datapath
//! pinned and forwarding; only `tollgate reset` tears it down.

use std::{os::unix::fs::PermissionsExt, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::Mutex,
};
use tracing::{debug, info, warn};

use crate::{
    api::{Request, Response},
    datapath::{loader, PROG_FROM_UPLINK},
    netlink::{self, addr, link},
    node::{Node, Settings},
    state::Store,
};

pub async fn run(settings: Settings) -> Result<()> {
    let store = Store::open(&settings.state_dir)?;
    let state = store.load()?;
    let pins = loader::Pins::new(&settings.bpffs);
    let dp = loader::load(&pins, settings.conntrack_max)?;
    let nl = netlink::connect()?;
    let uplink_ifindex = link::require_index(&nl, &settings.uplink)
        .await
        .with_context(|| format!("--uplink {}", settings.uplink))?;
    let uplink_ips = addr::list_v4(&nl, Some(uplink_ifindex)).await?;
    if uplink_ips.is_empty() {
        warn!(uplink = %settings.uplink, "the uplink has no IPv4 address yet; port maps answer on 127.0.0.1 and gateways only");
    }
    let socket = settings.socket.clone();
    let mut node = Node {
        settings,
        store,
        state,
        dp,
        pins,
        nl,
        uplink_ifindex,
        uplink_ips,
        started: Instant::now(),
    };
    node.reconcile().await?;
    forward_ebpf_logs(&node);

    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %socket.display(), "tollgate daemon ready");

    let gc_every = node.settings.ct_gc_interval;
    let metrics = node.settings.metrics;
    let node = Arc::new(Mutex::new(node));
    spawn_conntrack_gc(node.clone(), gc_every);
    if let Some(addr) = metrics {
        crate::metrics::serve(addr, node.clone()).await?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (stream, _) = r.context("accepting a CLI connection")?;
                let node = node.clone();
                let stop = stop_tx.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, node, stop).await {
                        debug!("client connection: {e:#}");
                    }
                });
            }
            _ = term.recv() => { info!("SIGTERM: stopping (datapath stays pinned)"); break; }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping (datapath stays pinned)"); break; }
            _ = stop_rx.recv() => { info!("shutdown requested"); break; }
        }
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn serve(
    stream: UnixStream,
    node: Arc<Mutex<Node>>,
    stop: tokio::sync::mpsc::Sender<()>,
) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let resp = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Shutdown) => {
            let _ = stop.send(()).await;
            Response::ok(serde_json::Value::Null)
        }
        Ok(req) => {
            let mut n = node.lock().await;
            match handle(&mut n, req).await {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(&e),
            }
        }
        Err(e) => Response::err(&anyhow::anyhow!("malformed request: {e}")),
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    Ok(())
}

async fn handle(n: &mut Node, req: Request) -> Result<serde_json::Value> {
    debug!(?req, "request");
    match req {
        Request::Status => n.status(),
        Request::ContainerAdd { name, netns, ip } => n.container_add(&name, netns, ip).await,
        Request::ContainerDel { name } => n.container_del(&name).await,
        Request::ContainerList => Ok(n.container_list()),
        Request::PortAdd { container, specs } => n.port_add(&container, &specs),
        Request::PortDel { container, specs } => n.port_del(&container, &specs),
        Request::PortList { container } => n.port_list(container.as_deref()),
        Request::ConntrackList => n.conntrack_list(),
        Request::ConntrackFlush { container } => n.conntrack_flush(container.as_deref()),
        Request::Stats { container } => n.stats(container.as_deref()),
        Request::PolicyLink { from, to, add } => n.policy_link(&from, &to, add),
        Request::PolicyEgress { container, stance } => n.policy_egress(&container, &stance),
        Request::PolicyRule {
            container,
            spec,
            action,
        } => n.policy_rule(&container, &spec, action),
        Request::PolicyList { container } => n.policy_list(&container),
        Request::LimitSet {
            container,
            egress,
            ingress,
            burst,
        } => n.limit_set(&container, egress, ingress, burst),
        Request::LimitClear { container } => n.limit_clear(&container),
        Request::LimitShow { container } => n.limit_show(container.as_deref()),
        Request::Shutdown => unreachable!("handled by serve"),
    }
}

/// Forwards the programs' aya-log records to `tracing` (debug level is set by the programs;
/// the `log` records reach tracing through tracing-log).
fn forward_ebpf_logs(node: &Node) {
    let Some(prog) = node.dp.tc.get(PROG_FROM_UPLINK) else {
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
fn spawn_conntrack_gc(node: Arc<Mutex<Node>>, every: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match node.lock().await.conntrack_gc() {
                Ok(0) => {}
                Ok(n) => debug!(removed = n, "conntrack gc"),
                Err(e) => warn!("conntrack gc: {e:#}"),
            }
        }
    });
}
