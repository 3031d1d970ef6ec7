//! The `/v1` routes (axum): each handler takes the node lock, runs one node operation and
//! answers its typed result as JSON, or `{"message": ...}` with the error's status.

use std::{os::fd::OwnedFd, sync::Arc};

use axum::{
    body::Bytes,
    extract::{ConnectInfo, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
    Extension, Json, Router,
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, Mutex};
use tracing::debug;

use crate::{
    api::{
        fdpass::Received,
        types::{self as api, paths},
    },
    datapath::Datapath,
    node::{
        error::{Error, Kind},
        Node,
    },
    store::Store,
};

pub struct App<D, S> {
    pub node: Arc<Mutex<Node<D, S>>>,
    /// Asks the daemon to stop (`POST /v1/shutdown`, used by `tollgate reset`).
    pub stop: Option<mpsc::Sender<()>>,
}

impl<D, S> Clone for App<D, S> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            stop: self.stop.clone(),
        }
    }
}

/// An error answer.
pub struct ApiError(StatusCode, String);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match e.kind {
            Kind::BadInput => StatusCode::BAD_REQUEST,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, format!("{:#}", e.err))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        debug!(status = %self.0, message = %self.1, "request refused");
        (self.0, Json(api::ErrorBody { message: self.1 })).into_response()
    }
}

type Answer<T> = Result<Json<T>, ApiError>;
type Created<T> = Result<(StatusCode, Json<T>), ApiError>;

/// A JSON body, whatever its content type says (`curl -d` sends form-urlencoded).
fn body<T: DeserializeOwned>(b: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(b).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("malformed request body: {e}"),
        )
    })
}

pub fn router<D: Datapath, S: Store>(app: App<D, S>) -> Router {
    Router::new()
        .route(paths::STATUS, get(status::<D, S>))
        .route(
            paths::CONTAINERS,
            get(containers::<D, S>).post(container_add::<D, S>),
        )
        .route(
            paths::CONTAINER,
            get(container_get::<D, S>).delete(container_del::<D, S>),
        )
        .route(
            paths::CONTAINER_PORTS,
            get(container_ports::<D, S>)
                .post(port_add::<D, S>)
                .delete(port_del::<D, S>),
        )
        .route(paths::PORTS, get(ports::<D, S>))
        .route(paths::STATS, get(stats::<D, S>))
        .route(paths::CONTAINER_STATS, get(container_stats::<D, S>))
        .route(
            paths::CONNTRACK,
            get(conntrack::<D, S>).delete(conntrack_flush::<D, S>),
        )
        .route(
            paths::CONTAINER_CONNTRACK,
            delete(container_conntrack_flush::<D, S>),
        )
        .route(paths::CONTAINER_POLICY, get(policy::<D, S>))
        .route(paths::CONTAINER_EGRESS, put(egress::<D, S>))
        .route(
            paths::CONTAINER_RULES,
            post(rule_add::<D, S>).delete(rule_del::<D, S>),
        )
        .route(
            paths::CONTAINER_LINK,
            put(link_add::<D, S>).delete(link_del::<D, S>),
        )
        .route(paths::LIMITS, get(limits::<D, S>))
        .route(
            paths::CONTAINER_LIMITS,
            get(limit::<D, S>)
                .put(limit_set::<D, S>)
                .delete(limit_clear::<D, S>),
        )
        .route(
            paths::CNI_ATTACHMENTS,
            get(cni_list::<D, S>)
                .post(cni_add::<D, S>)
                .delete(cni_del::<D, S>),
        )
        .route(
            paths::NETWORKS,
            get(networks::<D, S>).post(network_create::<D, S>),
        )
        .route(
            paths::NETWORK,
            get(network_get::<D, S>).delete(network_rm::<D, S>),
        )
        .route(paths::NODES, get(nodes::<D, S>))
        .route(paths::CNI_CHECK, post(cni_check::<D, S>))
        .route(paths::CNI_GC, post(cni_gc::<D, S>))
        .route(paths::SHUTDOWN, post(shutdown::<D, S>))
        .route(paths::METRICS, get(super::metrics::scrape::<D, S>))
        .fallback(|| async {
            ApiError(
                StatusCode::NOT_FOUND,
                "no such route (the API's routes start with /v1, see the README)".into(),
            )
        })
        .with_state(app)
}

async fn status<D: Datapath, S: Store>(State(app): State<App<D, S>>) -> Answer<api::Status> {
    Ok(Json(app.node.lock().await.status()?))
}

async fn containers<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
) -> Answer<Vec<api::ContainerInfo>> {
    Ok(Json(app.node.lock().await.container_list()))
}

async fn container_add<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    b: Bytes,
) -> Created<api::ContainerInfo> {
    let req: api::ContainerCreate = body(&b)?;
    let c = app.node.lock().await.container_add(req).await?;
    Ok((StatusCode::CREATED, Json(c)))
}

async fn nodes<D: Datapath, S: Store>(State(app): State<App<D, S>>) -> Answer<Vec<api::NodeInfo>> {
    Ok(Json(app.node.lock().await.node_list()?))
}

async fn networks<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
) -> Answer<Vec<api::NetworkInfo>> {
    Ok(Json(app.node.lock().await.network_list()))
}

async fn network_create<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    b: Bytes,
) -> Created<api::NetworkInfo> {
    let req: api::NetworkCreate = body(&b)?;
    let n = app.node.lock().await.network_create(&req).await?;
    Ok((StatusCode::CREATED, Json(n)))
}

async fn network_get<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
) -> Answer<api::NetworkInfo> {
    Ok(Json(app.node.lock().await.network_get(&name)?))
}

async fn network_rm<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
) -> Answer<api::NetworkDeleted> {
    Ok(Json(app.node.lock().await.network_rm(&name).await?))
}

/// The fds that came with the request's connection (`fdpass`); none when the router is not
/// served over `FdListener` (unit tests).
type Fds = Option<Extension<ConnectInfo<Received>>>;

fn take_fd(fds: Option<&Extension<ConnectInfo<Received>>>) -> Option<OwnedFd> {
    fds.and_then(|Extension(ConnectInfo(r))| r.take())
}

async fn cni_add<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    fds: Fds,
    b: Bytes,
) -> Created<api::CniAttachmentInfo> {
    let mut req: api::CniAdd = body(&b)?;
    // The runtime is the plugin's parent. Found here rather than told by the plugin: the
    // runtime may run in a pid namespace of its own, and the bind hook compares the pid as
    // the kernel's initial namespace sees it, as this daemon does.
    req.runtime_pid = fds
        .as_ref()
        .and_then(|Extension(ConnectInfo(r))| r.peer_pid)
        .and_then(parent_pid);
    let Some(netns) = take_fd(fds.as_ref()) else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "a CNI ADD must carry an open fd of the container's network namespace (SCM_RIGHTS); use tollgate-cni".into(),
        ));
    };
    let a = app.node.lock().await.cni_add(req, netns).await?;
    Ok((StatusCode::CREATED, Json(a)))
}

/// The parent of process `pid` (`PPid:` of /proc/PID/status).
fn parent_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
}

async fn cni_del<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    b: Bytes,
) -> Answer<api::CniDeleted> {
    let req: api::CniDel = body(&b)?;
    Ok(Json(app.node.lock().await.cni_del(&req.key).await?))
}

async fn cni_list<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Query(q): Query<api::CniQuery>,
) -> Answer<Vec<api::CniAttachmentInfo>> {
    Ok(Json(app.node.lock().await.cni_list(q.network.as_deref())))
}

async fn cni_check<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    fds: Fds,
    b: Bytes,
) -> Answer<api::CniAttachmentInfo> {
    let req: api::CniCheck = body(&b)?;
    let netns = take_fd(fds.as_ref());
    Ok(Json(app.node.lock().await.cni_check(&req, netns).await?))
}

async fn cni_gc<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    b: Bytes,
) -> Answer<api::CniGcDone> {
    let req: api::CniGc = body(&b)?;
    Ok(Json(app.node.lock().await.cni_gc(&req).await?))
}

async fn container_get<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
) -> Answer<api::ContainerInfo> {
    Ok(Json(app.node.lock().await.container_get(&name)?))
}

async fn container_del<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
) -> Answer<api::Deleted> {
    Ok(Json(app.node.lock().await.container_del(&name).await?))
}

async fn container_ports<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
) -> Answer<Vec<api::PortMapInfo>> {
    Ok(Json(app.node.lock().await.port_list(Some(&name))?))
}

async fn ports<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Query(q): Query<api::PortsQuery>,
) -> Answer<Vec<api::PortMapInfo>> {
    Ok(Json(
        app.node.lock().await.port_list(q.container.as_deref())?,
    ))
}

async fn port_add<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
    b: Bytes,
) -> Created<Vec<api::PortMapInfo>> {
    let req: api::PortsAdd = body(&b)?;
    let maps = app.node.lock().await.port_add(&name, &req.specs).await?;
    Ok((StatusCode::CREATED, Json(maps)))
}

async fn port_del<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
    b: Bytes,
) -> Answer<Vec<api::PortMapInfo>> {
    let req: api::PortsDel = body(&b)?;
    Ok(Json(
        app.node.lock().await.port_del(&name, &req.specs).await?,
    ))
}

async fn stats<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
) -> Answer<Vec<api::ContainerStats>> {
    Ok(Json(app.node.lock().await.stats(None)?))
}

async fn container_stats<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
) -> Answer<api::ContainerStats> {
    let mut v = app.node.lock().await.stats(Some(&name))?;
    v.pop()
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no stats for {name}")))
}

async fn conntrack<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
) -> Answer<Vec<api::ConntrackEntry>> {
    Ok(Json(app.node.lock().await.conntrack_list()?))
}

async fn conntrack_flush<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
) -> Answer<api::Flushed> {
    Ok(Json(app.node.lock().await.conntrack_flush(None)?))
}

async fn container_conntrack_flush<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
) -> Answer<api::Flushed> {
    Ok(Json(app.node.lock().await.conntrack_flush(Some(&name))?))
}

async fn policy<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
) -> Answer<api::PolicyInfo> {
    Ok(Json(app.node.lock().await.policy_list(&name)?))
}

async fn egress<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
    b: Bytes,
) -> Answer<api::PolicyInfo> {
    let req: api::EgressSet = body(&b)?;
    Ok(Json(
        app.node
            .lock()
            .await
            .policy_egress(&name, req.egress)
            .await?,
    ))
}

async fn rule_add<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
    b: Bytes,
) -> Answer<api::PolicyInfo> {
    let req: api::RuleAdd = body(&b)?;
    let mut node = app.node.lock().await;
    Ok(Json(
        node.policy_rule_add(&name, req.rule.0, req.action).await?,
    ))
}

async fn rule_del<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
    b: Bytes,
) -> Answer<api::PolicyInfo> {
    let req: api::RuleDel = body(&b)?;
    Ok(Json(
        app.node
            .lock()
            .await
            .policy_rule_del(&name, req.rule.0)
            .await?,
    ))
}

async fn link_add<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path((name, to)): Path<(String, String)>,
) -> Answer<api::LinkInfo> {
    Ok(Json(
        app.node.lock().await.policy_link(&name, &to, true).await?,
    ))
}

async fn link_del<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path((name, to)): Path<(String, String)>,
) -> Answer<api::LinkInfo> {
    Ok(Json(
        app.node.lock().await.policy_link(&name, &to, false).await?,
    ))
}

async fn limits<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
) -> Answer<Vec<api::LimitInfo>> {
    Ok(Json(app.node.lock().await.limit_list()))
}

async fn limit<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
) -> Answer<api::LimitInfo> {
    Ok(Json(app.node.lock().await.limit_get(&name)?))
}

async fn limit_set<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
    b: Bytes,
) -> Answer<api::LimitInfo> {
    let req: api::LimitSet = body(&b)?;
    Ok(Json(app.node.lock().await.limit_set(&name, &req).await?))
}

async fn limit_clear<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
    Path(name): Path<String>,
) -> Answer<api::LimitCleared> {
    Ok(Json(app.node.lock().await.limit_clear(&name).await?))
}

async fn shutdown<D: Datapath, S: Store>(
    State(app): State<App<D, S>>,
) -> Answer<api::ShuttingDown> {
    if let Some(stop) = &app.stop {
        let _ = stop.send(()).await;
    }
    Ok(Json(api::ShuttingDown { stopping: true }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Mutex;

    use super::{router, App};
    use crate::{
        api::{
            client::ApiError,
            types::{self as api, path, paths},
            Client,
        },
        datapath::memory::MemoryDatapath,
        model::AddSpec,
        node::{tests::settings, Node, Uplink},
        store::MemoryStore,
    };

    /// The status of a refused call.
    fn status<T: std::fmt::Debug>(r: anyhow::Result<T>) -> u16 {
        r.unwrap_err()
            .downcast_ref::<ApiError>()
            .expect("an answer of the daemon")
            .status
            .as_u16()
    }

    /// The whole stack without root: the CLI's client, HTTP on a unix socket, the routes, the
    /// node on the in-memory datapath and store.
    #[test]
    fn routes_answer_typed_bodies_and_error_statuses() {
        let dir = std::env::temp_dir().join(format!("tg-routes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut node = Node::new(
            settings(),
            Uplink::default(),
            MemoryDatapath::default(),
            MemoryStore::default(),
        )
        .unwrap();
        rt.block_on(node.start()).unwrap();
        let (stop, mut stopped) = tokio::sync::mpsc::channel(1);
        let app = App {
            node: Arc::new(Mutex::new(node)),
            stop: Some(stop),
        };
        let listener = rt
            .block_on(async { tokio::net::UnixListener::bind(&sock) })
            .unwrap();
        rt.spawn(async move { axum::serve(listener, router(app)).await });

        let c = Client::new(&sock).unwrap();
        let add = |name: &str| {
            c.post::<_, api::ContainerInfo>(
                paths::CONTAINERS,
                &api::ContainerCreate {
                    name: name.into(),
                    netns: None,
                    ip: None,
                    network: None,
                },
            )
        };
        let web = add("web").unwrap();
        assert_eq!(web.ip.to_string(), "10.254.0.2");
        assert_eq!(status(add("web")), 409);
        assert_eq!(status(add("a b")), 400);
        let maps: Vec<api::PortMapInfo> = c
            .post(
                &path(paths::CONTAINER_PORTS, "web"),
                &api::PortsAdd {
                    specs: vec!["8080:80".parse::<AddSpec>().unwrap()],
                },
            )
            .unwrap();
        assert_eq!(maps[0].host_port, 8080);
        let again = c.post::<_, Vec<api::PortMapInfo>>(
            &path(paths::CONTAINER_PORTS, "web"),
            &api::PortsAdd {
                specs: vec!["8080:80".parse::<AddSpec>().unwrap()],
            },
        );
        assert_eq!(status(again), 409);
        assert_eq!(
            status(c.get::<api::ContainerInfo>("/v1/containers/nosuch")),
            404
        );
        let st: Vec<api::ContainerStats> = c.get(paths::STATS).unwrap();
        assert_eq!(st[0].container, "web");
        let text = rt.block_on(get_metrics(&sock));
        assert!(text.contains("tollgate_port_maps 1"), "{text}");
        let d: api::Deleted = c
            .delete(&path(paths::CONTAINER, "web"), None::<&()>)
            .unwrap();
        assert_eq!(d.deleted, "web");
        assert!(c
            .get::<Vec<api::ContainerInfo>>(paths::CONTAINERS)
            .unwrap()
            .is_empty());
        let bye: api::ShuttingDown = c
            .call(hyper::Method::POST, paths::SHUTDOWN, None::<&()>)
            .unwrap();
        assert!(bye.stopping);
        assert_eq!(stopped.try_recv(), Ok(()), "the daemon was asked to stop");
        drop(rt);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `GET /metrics` over the socket (the exposition is text, not one of the API's bodies).
    async fn get_metrics(sock: &std::path::Path) -> String {
        use http_body_util::{BodyExt, Empty};
        use hyper::body::Bytes;
        let s = tokio::net::UnixStream::connect(sock).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(paths::METRICS)
            .header(hyper::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let body = tx.send_request(req).await.unwrap().into_body();
        String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }
}
