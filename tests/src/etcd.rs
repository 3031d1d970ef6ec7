//! A real etcd for the cluster store's tests: Debian's `etcd` (one member, or three) in a
//! network namespace the harness creates (`tge-<test>-<pid>`, loopback only) or in one the
//! caller owns, its data in a temp dir; killed and removed in `Drop`, also on panic.
//!
//! The test process reaches it from a thread that entered the namespace (`block_on_in`):
//! a tokio current-thread runtime on that thread keeps every socket in there. The harness
//! itself needs no runtime: it checks health (`/health`) and compacts (`/v3/kv/compaction`)
//! over etcd's HTTP gateway on the client port, so it can be called from inside a test's
//! async body.

use std::{
    fs::File,
    future::Future,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{in_ns, sh};

/// The first member's client port; member i uses `BASE + 10 i` (client) and `+ 1` (peer).
const BASE_PORT: u16 = 2379;
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether the etcd tests can run here (root for namespaces, Debian's `etcd`); prints why not.
pub fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the etcd tests need root (network namespaces)");
        return false;
    }
    if Command::new("etcd").arg("--version").output().is_err() {
        eprintln!("skipped: no etcd here (Debian package etcd-server; `cargo xtask setup`)");
        return false;
    }
    true
}

struct Member {
    name: String,
    client: SocketAddrV4,
    peer: SocketAddrV4,
    child: Option<Child>,
}

pub struct Etcd {
    /// The namespace etcd runs in.
    pub ns: String,
    pub dir: PathBuf,
    /// Whether the harness created `ns` (and deletes it).
    own_ns: bool,
    token: String,
    members: Vec<Member>,
}

impl Etcd {
    /// One member on 127.0.0.1 in a namespace of its own.
    pub fn new(test: &str) -> Result<Self> {
        Self::cluster(test, 1)
    }

    /// `n` members on 127.0.0.1 in a namespace of its own.
    pub fn cluster(test: &str, n: usize) -> Result<Self> {
        let ns = format!("tge-{test}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh("ip", &["netns", "add", &ns])?;
        let r = sh("ip", &["-n", &ns, "link", "set", "lo", "up"])
            .and_then(|_| Self::launch(test, &ns, true, Ipv4Addr::LOCALHOST, n));
        if r.is_err() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
        r
    }

    /// `n` members listening on `ip` (an address of `ns`) in the caller's namespace `ns`,
    /// which the caller deletes (after this is dropped).
    pub fn in_netns(test: &str, ns: &str, ip: Ipv4Addr, n: usize) -> Result<Self> {
        Self::launch(test, ns, false, ip, n)
    }

    fn launch(test: &str, ns: &str, own_ns: bool, ip: Ipv4Addr, n: usize) -> Result<Self> {
        assert!((1..=9).contains(&n), "1 to 9 members");
        let tag = format!("{test}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("tollgate-etcd-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let members = (0..n)
            .map(|i| {
                let port = BASE_PORT + 10 * u16::try_from(i).unwrap();
                Member {
                    name: format!("m{i}"),
                    client: SocketAddrV4::new(ip, port),
                    peer: SocketAddrV4::new(ip, port + 1),
                    child: None,
                }
            })
            .collect();
        let mut e = Etcd {
            ns: ns.to_string(),
            dir,
            own_ns,
            token: tag,
            members,
        };
        // Members of a new cluster wait for each other: spawn them all, then wait.
        for i in 0..n {
            e.spawn(i)?;
        }
        e.wait_healthy()?;
        Ok(e)
    }

    /// The client endpoints, `http://IP:PORT` each (what `ClusterConfig` takes).
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    /// One member's endpoint.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.members[i].client)
    }

    /// The `--cluster` URL: `etcd://IP:PORT,...`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.members.iter().map(|m| m.client.to_string()).collect();
        format!("etcd://{}", hosts.join(","))
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let data = self.dir.join(&m.name);
        // A member that has data restarts from it; `--initial-*` are then ignored.
        let state = if data.exists() { "existing" } else { "new" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))?;
        let client = format!("http://{}", m.client);
        let peer = format!("http://{}", m.peer);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcd", "--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning etcd (ip netns exec)")?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until every running member answers `/health` with true (a leader, a quorum).
    pub fn wait_healthy(&mut self) -> Result<()> {
        let start = Instant::now();
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            loop {
                if let Some(st) = self.members[i].child.as_mut().unwrap().try_wait()? {
                    bail!(
                        "etcd member {} exited ({st}) during start-up:\n{}",
                        self.members[i].name,
                        self.log_tail(i)
                    );
                }
                let addr = self.members[i].client;
                let ok =
                    http(&self.ns, addr, "GET", "/health", "").is_ok_and(|v| v["health"] == "true");
                if ok {
                    break;
                }
                if start.elapsed() > START_TIMEOUT {
                    bail!(
                        "etcd member {} not healthy in {START_TIMEOUT:?}:\n{}",
                        self.members[i].name,
                        self.log_tail(i)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Kills every member (SIGKILL: the store goes away as in a crash); the data stays.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }

    /// Kills member `i`.
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts every stopped member again from its data and waits until the store is healthy.
    pub fn start(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i)?;
            }
        }
        self.wait_healthy()
    }

    /// Starts member `i` again (without waiting for it).
    pub fn start_member(&mut self, i: usize) -> Result<()> {
        if self.members[i].child.is_none() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<i64> {
        let v = self.gateway("/v3/kv/range", r#"{"key":"AA=="}"#)?;
        header_revision(&v)
    }

    /// Compacts the store's history up to its current revision (physically: watches from
    /// before it are canceled with `compact_revision`). Returns that revision.
    pub fn compact(&self) -> Result<i64> {
        let rev = self.revision()?;
        self.gateway(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{rev}","physical":true}}"#),
        )?;
        Ok(rev)
    }

    /// Revokes every lease (as if each had expired: the keys on them go). Returns how many.
    pub fn revoke_leases(&self) -> Result<usize> {
        let v = self.gateway("/v3/lease/leases", "{}")?;
        let ids: Vec<String> = v["leases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ID"].as_str().map(ToString::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for id in &ids {
            self.gateway("/v3/lease/revoke", &format!(r#"{{"ID":"{id}"}}"#))?;
        }
        Ok(ids.len())
    }

    /// A POST to the first running member's HTTP gateway.
    fn gateway(&self, path: &str, body: &str) -> Result<Value> {
        let m = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .context("no etcd member is running")?;
        http(&self.ns, m.client, "POST", path, body)
    }

    fn log_tail(&self, i: usize) -> String {
        let l = std::fs::read_to_string(self.dir.join(format!("{}.log", self.members[i].name)))
            .unwrap_or_default();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.members.len() {
                eprintln!(
                    "--- etcd {} log ({}) ---\n{}",
                    self.members[i].name,
                    self.token,
                    self.log_tail(i)
                );
            }
        }
        self.stop();
        if self.own_ns {
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn header_revision(v: &Value) -> Result<i64> {
    v["header"]["revision"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no revision in {v}"))
}

/// One HTTP/1.0 request to etcd's client port from inside `ns`; the JSON answer.
fn http(ns: &str, addr: SocketAddrV4, method: &str, path: &str, body: &str) -> Result<Value> {
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        // No half-close: etcd's gateway cancels the request when the client's side closes.
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).to_string())
    })?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed answer from etcd: {answer:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "etcd answered {method} {path}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    serde_json::from_str(body).with_context(|| format!("etcd answered {body:?}"))
}

/// Runs `f`'s future on a tokio current-thread runtime on a thread that entered the network
/// namespace `ns`, and returns its result. Unlike `in_ns`, `f` may borrow from the caller
/// (an `&mut Etcd`, say).
pub fn block_on_in<T, F, Fut>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T>>,
{
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on a valid namespace fd, affecting only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("setns {path}"));
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(f())
        })
        .join()
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(ToString::to_string))
                .unwrap_or_default();
            anyhow::anyhow!("the test thread in {ns} panicked: {msg}")
        })?
    })
}
