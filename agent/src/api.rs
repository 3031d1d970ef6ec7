//! The CLI <-> daemon protocol: one JSON request line per connection on the unix socket, one
//! JSON response line back. The socket is created 0600 (root only).

use std::{
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    ContainerAdd {
        name: String,
        netns: Option<PathBuf>,
        ip: Option<Ipv4Addr>,
    },
    ContainerDel {
        name: String,
    },
    ContainerList,
    PortAdd {
        container: String,
        specs: Vec<String>,
    },
    PortDel {
        container: String,
        specs: Vec<String>,
    },
    PortList {
        container: Option<String>,
    },
    ConntrackList,
    ConntrackFlush {
        container: Option<String>,
    },
    Stats {
        container: Option<String>,
    },
    PolicyLink {
        from: String,
        to: String,
        add: bool,
    },
    PolicyEgress {
        container: String,
        stance: String,
    },
    /// `action` None removes the rule.
    PolicyRule {
        container: String,
        spec: String,
        action: Option<crate::policy::Action>,
    },
    PolicyList {
        container: String,
    },
    LimitSet {
        container: String,
        egress: Option<String>,
        ingress: Option<String>,
        burst: Option<String>,
    },
    LimitClear {
        container: String,
    },
    LimitShow {
        container: Option<String>,
    },
    Shutdown,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub result: serde_json::Value,
    #[serde(default)]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Self {
            ok: true,
            result,
            error: None,
        }
    }
    pub fn err(e: &anyhow::Error) -> Self {
        Self {
            ok: false,
            result: serde_json::Value::Null,
            error: Some(format!("{e:#}")),
        }
    }
}

/// Sends one request and returns the daemon's result, or its error as an `Err`.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!("cannot reach the tollgate daemon at {} (is `tollgate daemon` running? set --socket or TOLLGATE_SOCKET)", socket.display())
    })?;
    // Large batches (thousands of port maps) take a while; never hang forever.
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)
        .context("sending the request to the daemon")?;
    let mut resp = String::new();
    BufReader::new(&s)
        .read_line(&mut resp)
        .context("reading the daemon's answer")?;
    if resp.is_empty() {
        bail!("the daemon closed the connection without answering (see its log)");
    }
    let r: Response = serde_json::from_str(&resp).context("parsing the daemon's answer")?;
    if r.ok {
        Ok(r.result)
    } else {
        bail!("{}", r.error.unwrap_or_else(|| "unknown error".into()))
    }
}
