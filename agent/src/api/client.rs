//! A blocking client of the daemon's API: HTTP/1.1 over the unix socket (hyper), one
//! connection per request, JSON bodies as the typed structs of `types`.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::UnixStream;

use super::{fdpass::FdStream, types::ErrorBody};

/// Large batches (thousands of port maps) take a while; never hang forever.
const TIMEOUT: Duration = Duration::from_mins(5);

/// An error answer of the daemon: its status and message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client runtime")?;
        Ok(Self {
            socket: socket.to_path_buf(),
            rt,
            timeout: TIMEOUT,
        })
    }

    /// How long a request may take before it fails.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None::<&()>)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::POST, path, Some(body))
    }

    pub fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.call(Method::PUT, path, Some(body))
    }

    pub fn delete<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        self.call(Method::DELETE, path, body)
    }

    /// Sends one request; a non-2xx answer becomes an `ApiError` with the daemon's message.
    pub fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        self.call_with_fd(method, path, body, None)
    }

    /// Like `call`, handing the daemon `fd` along with the request (`SCM_RIGHTS`; see `fdpass`).
    pub fn call_with_fd<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        fd: Option<OwnedFd>,
    ) -> Result<T> {
        let body = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let timeout = self.timeout;
        let (status, bytes) = self.rt.block_on(async {
            tokio::time::timeout(timeout, self.send(method, path, body, fd))
                .await
                .map_err(|_| anyhow!("the daemon did not answer within {timeout:?}"))?
        })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes).map_or_else(
                |_| format!("{status}: {}", String::from_utf8_lossy(&bytes).trim()),
                |e| e.message,
            );
            return Err(ApiError { status, message }.into());
        }
        serde_json::from_slice(&bytes).context("parsing the daemon's answer")
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        fd: Option<OwnedFd>,
    ) -> Result<(StatusCode, Bytes)> {
        let stream = UnixStream::connect(&self.socket).await.with_context(|| {
            format!("cannot reach the tollgate daemon at {} (is `tollgate daemon` running? set --socket or TOLLGATE_SOCKET)", self.socket.display())
        })?;
        let stream = FdStream::client(stream, fd);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("talking to the daemon")?;
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = sender.send_request(req).await.map_err(|e| {
            if e.is_incomplete_message() || e.is_closed() {
                anyhow!("the daemon closed the connection without answering (see its log)")
            } else {
                anyhow!(e).context("sending the request to the daemon")
            }
        })?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading the daemon's answer")?
            .to_bytes();
        drop(sender);
        conn.abort();
        Ok((status, bytes))
    }
}
