//! The task behind `Cluster::watch`: list at revision R, watch the prefix from R + 1 with the
//! previous values, apply each event to the view and publish it. A watch that the store
//! cancels because its start was compacted away lists again: the view is replaced by a fresh
//! list, never patched by guessing what the missing events were (Flannel once deleted subnets
//! after a compaction). A broken stream marks the view unhealthy (its data kept), then the task
//! reconnects with backoff and lists again.

use etcd_client::{EventType, WatchOptions};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{plan, ClusterView, Core, MAX_BACKOFF};

/// How a watch stream ended.
enum End {
    /// Its start revision was compacted away (the store's compact revision).
    Compacted(i64),
    /// The connection broke, the store canceled it, or it could not be opened.
    Broken(String),
    /// Nobody looks at the view any more.
    Unwatched,
}

/// Runs until aborted (or, with `stop_when_unwatched`, until the last receiver is dropped).
/// `start`: a view to follow from instead of listing first.
pub(super) async fn run(
    core: Core,
    tx: watch::Sender<ClusterView>,
    start: Option<ClusterView>,
    stop_when_unwatched: bool,
) {
    let mut view = start.unwrap_or_default();
    let mut need_list = view.revision == 0;
    let mut attempt = 0u32;
    loop {
        if stop_when_unwatched && tx.is_closed() {
            return;
        }
        if need_list {
            match core.list().await {
                Ok(v) => {
                    debug!(revision = v.revision, "cluster: listed");
                    view = v;
                    tx.send_replace(view.clone());
                    attempt = 0;
                }
                Err(e) => {
                    unhealthy(&tx, &mut view, &e.to_string());
                    tokio::time::sleep(plan::backoff(attempt, MAX_BACKOFF)).await;
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            }
        }
        // However a watch ends, the next one starts from a fresh list.
        need_list = true;
        match follow(&core, &tx, &mut view, stop_when_unwatched).await {
            End::Compacted(rev) => {
                info!(
                    from = view.revision + 1,
                    compacted = rev,
                    "cluster: the watch's start was compacted; listing again"
                );
            }
            End::Broken(why) => {
                warn!(error = %why, "cluster: watch broken; reconnecting");
                unhealthy(&tx, &mut view, &why);
                tokio::time::sleep(plan::backoff(attempt, MAX_BACKOFF)).await;
                attempt = attempt.saturating_add(1);
            }
            End::Unwatched => return,
        }
    }
}

/// Marks the view unhealthy (publishing only when that changes something).
fn unhealthy(tx: &watch::Sender<ClusterView>, view: &mut ClusterView, why: &str) {
    if view.healthy || view.error.as_deref() != Some(why) {
        view.healthy = false;
        view.error = Some(why.to_string());
        tx.send_replace(view.clone());
    }
}

/// Follows the store from `view.revision + 1`, publishing each change.
async fn follow(
    core: &Core,
    tx: &watch::Sender<ClusterView>,
    view: &mut ClusterView,
    stop_when_unwatched: bool,
) -> End {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(view.revision + 1)
        .with_prev_key();
    let key = core.keys.all();
    let mut stream = match core
        .call(false, "watching the cluster", |mut c| {
            let (key, opts) = (key.clone(), opts.clone());
            async move { c.watch(key, Some(opts)).await }
        })
        .await
    {
        Ok(s) => s,
        Err(e) => return End::Broken(e.to_string()),
    };
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            () = tx.closed(), if stop_when_unwatched => return End::Unwatched,
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => {
                return End::Broken(core.unavailable("the store closed the watch").to_string())
            }
            Err(e) => return End::Broken(core.etcd_error("watching the cluster", &e).to_string()),
        };
        if resp.compact_revision() != 0 {
            return End::Compacted(resp.compact_revision());
        }
        if resp.canceled() {
            return End::Broken(
                core.unavailable(format!(
                    "the store canceled the watch: {}",
                    resp.cancel_reason()
                ))
                .to_string(),
            );
        }
        let mut changed = false;
        if resp.created() && !view.healthy {
            view.healthy = true;
            view.error = None;
            changed = true;
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            match ev.event_type() {
                EventType::Put => view.apply(&core.keys.prefix, key, Some(kv.value())),
                EventType::Delete => view.apply(&core.keys.prefix, key, None),
            }
            view.revision = view.revision.max(kv.mod_revision());
            changed = true;
        }
        if changed {
            tx.send_replace(view.clone());
        }
    }
}
