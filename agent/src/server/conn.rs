//! What keeps the API socket serving whatever its clients do: bounds on every phase of a
//! connection, and on how many there are.
//!
//! - **Between requests** (accepted, or its last answer given) a connection must deliver a
//!   complete request head within `head_timeout`: a client that stalls half-way gets a 408
//!   and is closed, an idle one is just closed. Bytes trickling in do not extend it.
//! - **The body** must be complete within `body_timeout` (408) and at most `max_body` bytes
//!   (413, decided from `Content-Length` before reading when it says so).
//! - **The answer**: a write that makes no progress for `write_timeout` (a client that does
//!   not read) closes the connection.
//! - **How many**: at most `max_connections` are open; one more evicts the oldest idle one
//!   (no request being served), or, when every one is busy, is answered 503 and closed. Each
//!   costs an fd, and a daemon out of fds can neither accept its CLI nor open a namespace.
//!   While evicted ones are still closing, at most half as many again, accepting waits.
//! - **Errors are JSON** (`{"message": ...}`), also the router's own (405, a bad path) and
//!   the ones above. Only a request hyper cannot parse at all (not HTTP, a head over ~400 KB)
//!   gets hyper's bare 400/431 before the connection closes.
//!
//! A handler itself has no deadline: it may wait for the node lock behind other requests.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    http::{header, Method, StatusCode},
    response::{IntoResponse, Response},
    serve::IncomingStream,
    Router,
};
use futures::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::UnixListener,
    time::{Instant, Sleep},
};
use tower_service::Service;
use tracing::{debug, warn};

use super::routes::ApiError;
use crate::api::{
    fdpass::{FdStream, Received},
    types::ErrorBody,
};

/// The bounds of `module docs`.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest request body (a batch of 10,000 port specs is about 200 KB).
    pub max_body: usize,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 4 << 20,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 512,
        }
    }
}

impl Limits {
    /// The defaults, with no more connections than `nofile` fds can carry: each is an fd and
    /// may hold a few received ones (`fdpass`), evicted ones may take a moment to close (up
    /// to half as many again), and the daemon needs some fds for itself.
    pub fn for_nofile(nofile: u64) -> Self {
        let d = Self::default();
        let per_conn = 1 + crate::api::fdpass::MAX_FDS as u64;
        let fit =
            usize::try_from(nofile.saturating_sub(256) / per_conn * 2 / 3).unwrap_or(usize::MAX);
        Self {
            max_connections: d.max_connections.min(fit).max(16),
            ..d
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (systemd starts services with a soft
/// limit of 1,024); returns the limit in force.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) } != 0 {
        return 1024;
    }
    if r.rlim_cur < r.rlim_max {
        let want = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const want) } == 0 {
            return want.rlim_cur;
        }
    }
    r.rlim_cur
}

/// Serves `router` on `listener` within `limits` until `stopped` completes (then lets the
/// requests being served finish).
pub async fn serve(
    listener: UnixListener,
    router: Router,
    limits: Limits,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let conns = Arc::new(Conns {
        live: Mutex::default(),
        next_id: AtomicU64::new(1),
        limits,
    });
    axum::serve(FdListener { listener, conns }, MakeApi { router, limits })
        .with_graceful_shutdown(stopped)
        .await
}

/// One connection, as its stream and its service see it.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    /// Requests being served (from the head's arrival to the handler's answer).
    busy: AtomicUsize,
    /// When it last went idle: accepted, or its last request answered.
    idle_since: Mutex<Instant>,
    /// Bytes arrived since then (a request has begun).
    started: AtomicBool,
    evicted: AtomicBool,
    /// The connection's task, woken to notice an eviction.
    waker: AtomicWaker,
}

impl Conn {
    fn idle_since(&self) -> Instant {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        self.waker.wake();
    }
}

/// Marks a request being served; going idle again when dropped.
struct Busy(Arc<Conn>);

impl Busy {
    fn new(conn: Arc<Conn>) -> Self {
        conn.busy.fetch_add(1, Ordering::SeqCst);
        Self(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let c = &self.0;
        *c.idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        c.started.store(false, Ordering::SeqCst);
        c.busy.fetch_sub(1, Ordering::SeqCst);
        c.waker.wake();
    }
}

/// The open connections, oldest first.
struct Conns {
    live: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    limits: Limits,
}

impl Conns {
    /// A new connection, making room if needed; `None` when every open one is busy.
    fn admit(&self) -> Option<Arc<Conn>> {
        let mut live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = live
            .values()
            .filter(|c| !c.evicted.load(Ordering::SeqCst))
            .count();
        if open >= self.limits.max_connections {
            let idle = live.values().find(|c| {
                !c.evicted.load(Ordering::SeqCst) && c.busy.load(Ordering::SeqCst) == 0
            })?;
            debug!(
                conn = idle.id,
                "too many API connections: closing the oldest idle one"
            );
            idle.evict();
        }
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            started: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        live.insert(conn.id, conn.clone());
        Some(conn)
    }

    /// Open connections, the evicted ones still closing included.
    fn len(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    fn forget(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }
}

/// What the router's handlers learn of their connection (`ConnectInfo<Received>`), and its
/// state for the service.
#[derive(Clone, Debug)]
pub struct Peer {
    received: Received,
    conn: Arc<Conn>,
}

/// The API socket's listener: admits connections (`Conns`) and wraps them in `ApiStream`.
struct FdListener {
    listener: UnixListener,
    conns: Arc<Conns>,
}

impl axum::serve::Listener for FdListener {
    type Io = ApiStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // Evicted connections close when their task next runs; on a busy machine they
            // could pile up faster than that. Accepting waits for them (new clients queue in
            // the socket's backlog), so the fds of connections stay bounded.
            while self.conns.len() >= self.conns.limits.max_connections * 3 / 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let Some(conn) = self.conns.admit() else {
                        let n = self.conns.limits.max_connections;
                        warn!("{n} API connections are all busy: refusing one more");
                        let msg = format!(
                            "the daemon is serving {n} connections already (its limit); try again"
                        );
                        let _ =
                            stream.try_write(&raw_answer(StatusCode::SERVICE_UNAVAILABLE, &msg));
                        continue;
                    };
                    // The pid of the process that connected (`SO_PEERCRED`, in our pid
                    // namespace): the CNI plugin's, whose parent is the runtime.
                    let pid = stream
                        .peer_cred()
                        .ok()
                        .and_then(|c| c.pid())
                        .and_then(|p| u32::try_from(p).ok());
                    let received = Received::for_peer(pid);
                    let io = ApiStream {
                        inner: FdStream::server(stream, received.clone()),
                        conn: conn.clone(),
                        conns: self.conns.clone(),
                        head_timer: None,
                        write_timer: None,
                    };
                    return (io, Peer { received, conn });
                }
                // Out of fds and the like: back off instead of spinning.
                Err(e) => {
                    warn!("accepting an API connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Err(io::Error::other("the API socket has no address"))
    }
}

/// A whole HTTP answer with a JSON error body, written straight to a socket hyper is not
/// writing to (a refused connection, a request head that never completed).
fn raw_answer(status: StatusCode, message: &str) -> Vec<u8> {
    let body = serde_json::to_string(&ErrorBody {
        message: message.to_string(),
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes()
}

/// A connection's stream with the deadlines of the module docs.
pub struct ApiStream {
    inner: FdStream,
    conn: Arc<Conn>,
    conns: Arc<Conns>,
    /// While waiting for a request: (its deadline, a timer for it).
    head_timer: Option<(Instant, Pin<Box<Sleep>>)>,
    /// While a write makes no progress.
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl Drop for ApiStream {
    fn drop(&mut self) {
        self.conns.forget(self.conn.id);
    }
}

fn aborted(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, what.to_string())
}

impl ApiStream {
    /// Polls the head deadline of a connection waiting for a request; `Ready` once it passed
    /// (a begun request was answered 408).
    fn poll_head_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.conn.busy.load(Ordering::SeqCst) > 0 {
            self.head_timer = None;
            return Poll::Pending;
        }
        let limits = self.conns.limits;
        let deadline = self.conn.idle_since() + limits.head_timeout;
        if self.head_timer.as_ref().is_none_or(|(d, _)| *d != deadline) {
            self.head_timer = Some((deadline, Box::pin(tokio::time::sleep_until(deadline))));
        }
        let (_, timer) = self.head_timer.as_mut().expect("set above");
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.head_timer = None;
        if self.conn.started.load(Ordering::SeqCst) && self.write_timer.is_none() {
            let msg = format!(
                "the request did not arrive within {} s",
                limits.head_timeout.as_secs_f64()
            );
            let _ = self
                .inner
                .try_write(&raw_answer(StatusCode::REQUEST_TIMEOUT, &msg));
        }
        Poll::Ready(())
    }
}

impl AsyncRead for ApiStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.waker.register(cx.waker());
        if this.conn.evicted.load(Ordering::SeqCst) {
            return Poll::Ready(Err(aborted("closed to make room for a new connection")));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.conn.started.store(true, Ordering::SeqCst);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.poll_head_deadline(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete request in time",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for ApiStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.conn.waker.register(cx.waker());
        if this.conn.evicted.load(Ordering::SeqCst) {
            return Poll::Ready(Err(aborted("closed to make room for a new connection")));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.write_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = this.conns.limits.write_timeout;
                let timer = this
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client does not read its answer",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Makes each connection's `ApiService`.
#[derive(Clone)]
struct MakeApi {
    router: Router,
    limits: Limits,
}

impl Service<IncomingStream<'_, FdListener>> for MakeApi {
    type Response = ApiService;
    type Error = Infallible;
    type Future = std::future::Ready<Result<ApiService, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, s: IncomingStream<'_, FdListener>) -> Self::Future {
        let peer = s.remote_addr().clone();
        std::future::ready(Ok(ApiService {
            router: self.router.clone(),
            peer,
            limits: self.limits,
        }))
    }
}

/// One connection's service: reads the body within the limits, hands the request to the
/// router with the connection's `ConnectInfo<Received>`, and makes every error JSON.
#[derive(Clone)]
struct ApiService {
    router: Router,
    peer: Peer,
    limits: Limits,
}

impl Service<Request> for ApiService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let busy = Busy::new(self.peer.conn.clone());
        let (mut router, received, limits) =
            (self.router.clone(), self.peer.received.clone(), self.limits);
        Box::pin(async move {
            let (method, path) = (req.method().clone(), req.uri().path().to_string());
            let resp = match buffer_body(req, &limits).await {
                Ok(mut req) => {
                    req.extensions_mut().insert(ConnectInfo(received));
                    // A Router is always ready.
                    match router.call(req).await {
                        Ok(r) => r,
                        Err(e) => match e {},
                    }
                }
                Err(e) => e.into_response(),
            };
            drop(busy);
            Ok(json_errors(resp, &method, &path).await)
        })
    }
}

/// The request with its body read into memory, within the size and time limits.
async fn buffer_body(req: Request, limits: &Limits) -> Result<Request, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than {} bytes (the API's limit)",
                limits.max_body
            ),
        )
    };
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(
        limits.body_timeout,
        axum::body::to_bytes(body, limits.max_body),
    );
    let bytes = match read.await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    limits.body_timeout.as_secs_f64()
                ),
            ))
        }
        Ok(Err(e)) if is_length_limit(&e) => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            ))
        }
        Ok(Ok(b)) => b,
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = s.source();
    }
    false
}

/// An error answer of the router's own (405, a path that does not decode, ...) as
/// `{"message": ...}`; JSON and successful answers pass unchanged.
async fn json_errors(resp: Response, method: &Method, path: &str) -> Response {
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        format!("method {method} is not allowed on {path} (allowed: {allowed})")
    } else if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut out = ApiError::new(status, message).into_response();
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        os::unix::net::UnixStream,
        path::PathBuf,
        sync::Arc,
        time::{Duration, Instant},
    };

    use tokio::sync::Mutex;

    use super::{serve, Limits};
    use crate::{
        api::types::ErrorBody,
        datapath::memory::MemoryDatapath,
        node::{tests::settings, Node, Uplink},
        server::routes::{router, App},
        store::MemoryStore,
    };

    type TestApp = App<MemoryDatapath, MemoryStore>;

    const LIMITS: Limits = Limits {
        max_body: 64 << 10,
        head_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        write_timeout: Duration::from_millis(400),
        max_connections: 8,
    };

    /// A daemon on the in-memory node, served with `LIMITS`.
    struct Api {
        dir: PathBuf,
        sock: PathBuf,
        app: TestApp,
        rt: tokio::runtime::Runtime,
    }

    impl Api {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("tg-conn-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let sock = dir.join("api.sock");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
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
            let app = App {
                node: Arc::new(Mutex::new(node)),
                stop: None,
            };
            let listener = rt
                .block_on(async { tokio::net::UnixListener::bind(&sock) })
                .unwrap();
            let r = router(app.clone());
            rt.spawn(serve(listener, r, LIMITS, std::future::pending()));
            Self { dir, sock, app, rt }
        }

        fn connect(&self) -> UnixStream {
            let s = UnixStream::connect(&self.sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        }

        /// Sends `raw` on a new connection and reads the answer.
        fn raw(&self, raw: &[u8]) -> (u16, String) {
            let mut s = self.connect();
            // A refused connection may be closed before the request is written.
            let _ = s.write_all(raw);
            answer(&mut s)
        }

        fn get(&self, path: &str) -> (u16, String) {
            self.raw(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        }
    }

    impl Drop for Api {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Reads one answer: its status and body (up to its content-length, or EOF).
    fn answer(s: &mut UnixStream) -> (u16, String) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buf.len() >= end + 4 + len {
                    let status = head[9..12].parse().unwrap();
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]);
                    return (status, body.to_string());
                }
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return (0, String::from_utf8_lossy(&buf).to_string()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    fn message(body: &str) -> String {
        serde_json::from_str::<ErrorBody>(body)
            .unwrap_or_else(|e| panic!("not a JSON error ({e}): {body:?}"))
            .message
    }

    /// True when the server closed `s` (EOF or reset) within `within`.
    fn closed(s: &mut UnixStream, within: Duration) -> bool {
        s.set_read_timeout(Some(within)).unwrap();
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }

    #[test]
    fn connections_fit_the_fd_limit() {
        assert_eq!(Limits::for_nofile(524_288).max_connections, 512);
        // systemd's soft limit: 102 connections of 5 fds, half as many again closing, 256 spare.
        let l = Limits::for_nofile(1024);
        assert_eq!(l.max_connections, 102);
        assert!(l.max_connections * 3 / 2 * 5 + 256 <= 1024);
        assert_eq!(Limits::for_nofile(100).max_connections, 16);
    }

    #[test]
    fn garbage_and_router_errors_answer_and_the_api_goes_on() {
        let api = Api::new("garbage");
        let (code, _) = api.raw(b"\x00\xff\xfe not http at all\r\n\r\n");
        assert_eq!(code, 400, "hyper refuses what is not HTTP");
        let (code, body) = api.raw(b"PATCH /v1/status HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(code, 405);
        assert!(message(&body).contains("allowed: GET"), "{body}");
        let (code, body) = api.get("/v1/containers/%ff%fe");
        assert_eq!(code, 400);
        assert!(!message(&body).is_empty());
        let (code, body) =
            api.raw(b"POST /v1/containers HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\n{oops");
        assert_eq!(code, 400);
        assert!(message(&body).contains("malformed"), "{body}");
        let (code, _) = api.get("/v1/status");
        assert_eq!(code, 200);
    }

    #[test]
    fn oversized_bodies_get_413() {
        let api = Api::new("big");
        // Declared: refused before a byte of it is read.
        let head = b"POST /v1/containers HTTP/1.1\r\nhost: x\r\ncontent-length: 104857600\r\n\r\n";
        let (code, body) = api.raw(head);
        assert_eq!(code, 413);
        assert!(message(&body).contains("larger than"), "{body}");
        // Chunked, with no length: refused once it passes the limit.
        let mut s = api.connect();
        s.write_all(
            b"POST /v1/containers HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 8192, "a".repeat(8192));
        for _ in 0..(LIMITS.max_body / 8192 + 2) {
            if s.write_all(chunk.as_bytes()).is_err() {
                break;
            }
        }
        let (code, body) = answer(&mut s);
        assert_eq!(code, 413, "{body}");
        assert_eq!(api.get("/v1/containers").0, 200);
    }

    #[test]
    fn a_stalled_request_gets_408_while_others_are_served() {
        let api = Api::new("slow");
        let t0 = Instant::now();
        let mut head = api.connect();
        head.write_all(b"GET /v1/status HTTP/1.1\r\nhost:").unwrap();
        let mut body = api.connect();
        body.write_all(
            b"POST /v1/containers HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"na",
        )
        .unwrap();
        let mut idle = api.connect();
        // Trickling bytes does not move the deadline.
        let mut trickle = api.connect();
        trickle.write_all(b"GET /v1/status HTTP/1.1\r\n").unwrap();
        for _ in 0..4 {
            assert_eq!(api.get("/v1/status").0, 200, "served meanwhile");
            let _ = trickle.write_all(b"x-a: b\r\n");
            std::thread::sleep(Duration::from_millis(150));
        }
        let (code, b) = answer(&mut head);
        assert_eq!(code, 408, "{b}");
        assert!(message(&b).contains("did not arrive"), "{b}");
        let (code, b) = answer(&mut body);
        assert_eq!(code, 408, "{b}");
        assert!(message(&b).contains("body"), "{b}");
        assert_eq!(answer(&mut trickle).0, 408);
        assert!(
            closed(&mut idle, Duration::from_secs(2)),
            "an idle connection is closed"
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_client_that_does_not_read_is_dropped() {
        let api = Api::new("noread");
        let mut s = api.connect();
        // Thousands of pipelined requests whose answers nobody reads fill the socket.
        let req = b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n".repeat(200);
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        for _ in 0..50 {
            if s.write_all(&req).is_err() {
                break;
            }
        }
        std::thread::sleep(LIMITS.write_timeout * 3);
        assert_eq!(api.get("/v1/status").0, 200);
        assert!(closed(&mut s, Duration::from_secs(3)), "still open");
    }

    #[test]
    fn connections_beyond_the_cap_evict_idle_ones_or_get_503() {
        let api = Api::new("cap");
        let mut held: Vec<UnixStream> = (0..LIMITS.max_connections * 2)
            .map(|_| api.connect())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let (code, _) = api.get("/v1/status");
        assert_eq!(code, 200, "a new client is served");
        let gone = held
            .iter_mut()
            .filter_map(|s| closed(s, Duration::from_millis(200)).then_some(()))
            .count();
        assert!(
            gone > LIMITS.max_connections,
            "only {gone} idle ones closed"
        );
        drop(held);
        // Every connection busy (waiting for the node lock): the next one is refused.
        let lock = api.rt.block_on(api.app.node.clone().lock_owned());
        let mut busy: Vec<UnixStream> = (0..LIMITS.max_connections)
            .map(|_| {
                let mut s = api.connect();
                s.write_all(b"GET /v1/containers HTTP/1.1\r\nhost: x\r\n\r\n")
                    .unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let (code, body) = api.get("/v1/status");
        assert_eq!(code, 503, "{body}");
        assert!(message(&body).contains("connections"), "{body}");
        drop(lock);
        for s in &mut busy {
            assert_eq!(answer(s).0, 200);
        }
    }
}
