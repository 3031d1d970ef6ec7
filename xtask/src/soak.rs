//! `cargo xtask soak [--minutes N] [--no-build] [--out DIR] [--rate N] [--seed N]`: a node
//! that keeps changing while its traffic must not notice.
//!
//! The bench's tollgate sandbox (client ns <-> node ns <-> container `k` running `bench-echo`
//! on port 80, published as 8080) plus, for the soak:
//!
//! - **Long-lived TCP flows** for the whole run, each carrying its own pseudo-random byte
//!   stream to the echo server and checking every byte that comes back: two from the client
//!   namespace to the uplink's 8080 (TC DNAT), one from the node itself to 127.0.0.1:8080
//!   (the socket hooks) and one from a second container, `h`, to the uplink's 8080
//!   (hairpin). A flow is intact when it never failed (no reset, no stall over 10 s) and,
//!   after its half-close, got back exactly what it sent.
//! - **UDP**: one datagram every 20 ms to `k`'s UDP echo (5353/udp), each answer checked.
//! - **New connections**: `--rate` per second (default 50) from the client namespace to the
//!   uplink's 8080, each sending 32 bytes and checking the echo. Only stable maps are aimed
//!   at, so every failure counts.
//! - **Churn** on other containers (`k-cN`, at most four at a time), about five operations a
//!   second: containers added and deleted, port maps (TCP and UDP) added and removed, egress
//!   stance, rules, links to `k`, rate limits set and cleared. Every operation must succeed.
//!
//! At the end the churn removes its containers and the traffic stops; then every map of
//! `status` and the bind guards and endpoints by veth (`bpftool`) must be back to their size
//! before the churn (conntrack at most that, once its GC has removed the closed flows), the
//! veths too, the daemon's fds as well, and its memory must be flat: its RSS at the end at
//! most 20 % above what it was after the warm-up (the first tenth of the run, at least 10 s).
//! Results go to `target/soak/results.md` and `results.json`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::{
    bench::{
        sandbox::{self as sbx, Sandbox, ECHO_HOST_PORT, UPLINK_IP},
        Mode,
    },
    build, is_root, repo_root, setup,
};

#[derive(Args, Clone)]
pub struct SoakArgs {
    /// How long the traffic and the churn run.
    #[arg(long, default_value_t = 30.0, value_name = "N")]
    pub minutes: f64,
    /// Skip setup and the build; use the existing target/release/tollgate.
    #[arg(long)]
    pub no_build: bool,
    /// Where results.md and results.json go (default: target/soak).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// New connections per second to the published port.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub rate: u32,
    /// Seed of the churn's choices and the flows' bytes (default: from the clock; printed).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

/// The UDP echo in `k` and its published port.
const UDP_PORT: u16 = 5353;
/// Long-lived flows: bytes per write and the pause between writes (about 256 KB/s each).
const FLOW_CHUNK: usize = 16 << 10;
const FLOW_PAUSE: Duration = Duration::from_millis(60);
/// A flow that gets nothing back for this long has stalled.
const STALL: Duration = Duration::from_secs(10);
/// Churned containers alive at once, and the churn's pace.
const CHURN_MAX: usize = 4;
const CHURN_PAUSE: Duration = Duration::from_millis(200);
/// Allowed RSS growth after the warm-up.
const RSS_GROWTH: f64 = 0.20;

pub fn run(args: &SoakArgs) -> Result<()> {
    let bin = if args.no_build {
        let bin = build::binary_path(false);
        if !bin.is_file() {
            bail!("{} is missing (run `cargo xtask build`)", bin.display());
        }
        bin
    } else {
        setup::run().context("setup failed")?;
        build::build(false)?
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| repo_root().join("target").join("soak"));
    let report = soak(&bin, args)?;
    report.write(&out)?;
    if !report.failures.is_empty() {
        bail!("the soak failed:\n  {}", report.failures.join("\n  "));
    }
    Ok(())
}

/// The one-minute soak of `cargo xtask test`; returns its failures.
pub fn smoke(bin: &Path) -> Result<Vec<String>> {
    let args = SoakArgs {
        minutes: 1.0,
        no_build: true,
        out: Some(repo_root().join("target").join("soak-smoke")),
        rate: 50,
        seed: None,
    };
    let report = soak(bin, &args)?;
    report.write(args.out.as_deref().expect("set above"))?;
    Ok(report.failures)
}

static STOP_ALL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP_ALL.store(true, Ordering::Relaxed);
}

/// Ctrl-C / SIGTERM end the run early (and fail it); the sandbox is still torn down.
fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Enters the network namespace at `path` (this thread only).
fn enter(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: setns on a valid namespace fd, affecting only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns {}", path.display()));
    }
    Ok(())
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// A thread inside namespace `ns` running `f`.
fn spawn_in<T: Send + 'static>(
    ns: PathBuf,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    thread::spawn(move || {
        enter(&ns)?;
        f()
    })
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).unwrap_or(0)
    }
}

/// A flow's byte stream: a random pattern of a prime length, repeated, so that a received
/// slice is checked with a comparison instead of byte by byte.
struct Pattern(Vec<u8>);

impl Pattern {
    const LEN: usize = 65_521;

    fn new(seed: u64) -> Self {
        let mut r = Rng(seed | 1);
        Self((0..Self::LEN).map(|_| r.next().to_le_bytes()[5]).collect())
    }

    /// Whether `got` is the stream at `offset`.
    fn matches(&self, offset: u64, got: &[u8]) -> bool {
        let mut at = usize::try_from(offset % Self::LEN as u64).unwrap_or(0);
        let mut rest = got;
        while !rest.is_empty() {
            let n = rest.len().min(Self::LEN - at);
            if rest[..n] != self.0[at..at + n] {
                return false;
            }
            rest = &rest[n..];
            at = 0;
        }
        true
    }

    /// The stream at `offset`, `len` bytes.
    fn slice(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut at = usize::try_from(offset % Self::LEN as u64).unwrap_or(0);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = (len - out.len()).min(Self::LEN - at);
            out.extend_from_slice(&self.0[at..at + n]);
            at = 0;
        }
        out
    }
}

/// What a long-lived flow did.
#[derive(Debug, Default, Clone)]
struct FlowReport {
    name: String,
    sent: u64,
    echoed: u64,
    error: Option<String>,
}

/// One long-lived echoed flow from namespace `ns` to `to`, until `stop`.
fn flow(
    name: &str,
    ns: PathBuf,
    to: SocketAddrV4,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<FlowReport>> {
    let name = name.to_string();
    spawn_in(ns, move || {
        let mut report = FlowReport {
            name: name.clone(),
            ..FlowReport::default()
        };
        let s = match TcpStream::connect_timeout(&to.into(), Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => {
                report.error = Some(format!("connecting to {to}: {e}"));
                return Ok(report);
            }
        };
        s.set_read_timeout(Some(STALL))?;
        s.set_write_timeout(Some(STALL))?;
        let pattern = Arc::new(Pattern::new(seed));
        let (mut rd, p2) = (s.try_clone()?, pattern.clone());
        let reader = thread::spawn(move || -> (u64, Option<String>) {
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0u64;
            loop {
                match rd.read(&mut buf) {
                    Ok(0) => return (got, None),
                    Ok(n) => {
                        if !p2.matches(got, &buf[..n]) {
                            return (got, Some(format!("echoed bytes differ at offset {got}")));
                        }
                        got += n as u64;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return (got, Some(format!("reading at offset {got}: {e}"))),
                }
            }
        });
        let mut w = s;
        while !stop.load(Ordering::Relaxed) && !STOP_ALL.load(Ordering::Relaxed) {
            let chunk = pattern.slice(report.sent, FLOW_CHUNK);
            if let Err(e) = w.write_all(&chunk) {
                report.error = Some(format!("writing at offset {}: {e}", report.sent));
                break;
            }
            report.sent += FLOW_CHUNK as u64;
            thread::sleep(FLOW_PAUSE);
        }
        let _ = w.shutdown(Shutdown::Write);
        let (echoed, err) = reader.join().unwrap_or((0, Some("reader panicked".into())));
        report.echoed = echoed;
        if report.error.is_none() {
            report.error = err;
        }
        if report.error.is_none() && report.echoed != report.sent {
            report.error = Some(format!(
                "sent {} bytes, {} came back",
                report.sent, report.echoed
            ));
        }
        Ok(report)
    })
}

/// The new-connection stream's and the UDP flow's counts.
#[derive(Debug, Default, Clone)]
struct Counts {
    ok: u64,
    failed: u64,
    /// The first few failures, with why.
    errors: Vec<String>,
}

impl Counts {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        if self.errors.len() < 10 {
            self.errors.push(why);
        }
    }
}

/// `rate` new connections a second from `ns` to `to` until `stop`.
fn connections(
    ns: PathBuf,
    to: SocketAddrV4,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<Counts>> {
    spawn_in(ns, move || {
        let every = Duration::from_secs(1) / rate.max(1);
        let mut c = Counts::default();
        let start = Instant::now();
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) && !STOP_ALL.load(Ordering::Relaxed) {
            // On schedule, without bursts after a slow one.
            let due = start + every * n;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            } else if now - due > every * 10 {
                n = u32::try_from((now - start).as_nanos() / every.as_nanos()).unwrap_or(n);
            }
            n += 1;
            let msg = format!("conn {n:>10} {:>16x}\n", c.ok ^ 0x5eed);
            let r = (|| -> std::io::Result<bool> {
                let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.write_all(msg.as_bytes())?;
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back)?;
                Ok(back == msg.as_bytes())
            })();
            match r {
                Ok(true) => c.ok += 1,
                Ok(false) => c.fail(format!("connection {n}: the echo differs")),
                Err(e) => c.fail(format!("connection {n}: {e}")),
            }
        }
        Ok(c)
    })
}

/// A UDP echo server in namespace `ns` on `port`, until `stop`.
fn udp_echo(ns: PathBuf, port: u16, stop: Arc<AtomicBool>) -> Result<JoinHandle<Result<()>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = spawn_in(ns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port));
        let s = match s {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return Ok(());
            }
        };
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], peer);
            }
        }
        Ok(())
    });
    rx.recv()
        .context("the UDP echo thread died")?
        .map_err(|e| anyhow::anyhow!("binding the UDP echo: {e}"))?;
    Ok(h)
}

/// One datagram every 20 ms from `ns` to `to`, each answer checked, until `stop`.
fn datagrams(ns: PathBuf, to: SocketAddrV4, stop: Arc<AtomicBool>) -> JoinHandle<Result<Counts>> {
    spawn_in(ns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.connect(to)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut c = Counts::default();
        let mut buf = [0u8; 2048];
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) && !STOP_ALL.load(Ordering::Relaxed) {
            seq += 1;
            let msg = format!("datagram {seq}");
            if let Err(e) = s.send(msg.as_bytes()) {
                c.fail(format!("datagram {seq}: sending: {e}"));
                continue;
            }
            // Answers of earlier datagrams that came late are skipped, not counted twice.
            loop {
                match s.recv(&mut buf) {
                    Ok(n) if buf[..n] == *msg.as_bytes() => {
                        c.ok += 1;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        c.fail(format!("datagram {seq}: no answer: {e}"));
                        break;
                    }
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(c)
    })
}

/// Runs the CLI against the sandbox's daemon.
fn tg(bin: &Path, socket: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .context("running tollgate")?;
    if !out.status.success() {
        bail!(
            "tollgate {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the churn did.
#[derive(Debug, Default, Clone)]
struct Churn {
    ops: BTreeMap<&'static str, u64>,
    failed: Vec<String>,
}

/// A churned container as the churn knows it.
#[derive(Default)]
struct Churned {
    name: String,
    ports: Vec<String>,
    rules: Vec<String>,
    limited: bool,
    linked: bool,
}

/// Changes other containers until `stop`, then removes them.
#[expect(
    clippy::too_many_lines,
    reason = "one match over the churn's operations, each a few lines"
)]
fn churn(
    bin: PathBuf,
    socket: PathBuf,
    stable: String,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Churn> {
    thread::spawn(move || {
        let mut rng = Rng(seed | 1);
        let mut live: Vec<Churned> = Vec::new();
        let mut done = Churn::default();
        let mut next = 0u32;
        let mut port = 0u16;
        let op = |c: &mut Churn, what: &'static str, args: &[&str]| -> bool {
            match tg(&bin, &socket, args) {
                Ok(_) => {
                    *c.ops.entry(what).or_default() += 1;
                    true
                }
                Err(e) => {
                    if c.failed.len() < 20 {
                        c.failed.push(format!("{e:#}"));
                    }
                    false
                }
            }
        };
        while !stop.load(Ordering::Relaxed) && !STOP_ALL.load(Ordering::Relaxed) {
            thread::sleep(CHURN_PAUSE);
            if live.len() < CHURN_MAX && (live.is_empty() || rng.below(4) == 0) {
                let name = format!("{stable}-c{next}");
                next += 1;
                if op(&mut done, "container add", &["container", "add", &name]) {
                    live.push(Churned {
                        name,
                        ..Churned::default()
                    });
                }
                continue;
            }
            let pick = rng.below(live.len());
            let k = &mut live[pick];
            let mut new_port = || {
                port = (port + 1) % 2000;
                40000 + port
            };
            // What cannot be removed (no port map, no rule) is added instead.
            let roll = match rng.below(10) {
                2 if k.ports.is_empty() => 0,
                4 if k.rules.is_empty() => 3,
                r => r,
            };
            match roll {
                0 | 1 | 8 => {
                    let (tcp, udp) = (new_port(), new_port());
                    let specs = [format!("{tcp}:80"), format!("{udp}:53/udp")];
                    if op(
                        &mut done,
                        "port add",
                        &["port", "add", &k.name, &specs[0], &specs[1]],
                    ) {
                        k.ports.push(tcp.to_string());
                        k.ports.push(format!("{udp}/udp"));
                    }
                }
                2 => {
                    let p = k.ports.swap_remove(rng.below(k.ports.len()));
                    op(&mut done, "port del", &["port", "del", &k.name, &p]);
                }
                3 => {
                    let rule = format!("10.{}.0.0/16:443/tcp", rng.below(200));
                    let verb = if rng.below(2) == 0 { "allow" } else { "deny" };
                    if op(&mut done, "policy rule", &["policy", verb, &k.name, &rule]) {
                        k.rules.push(rule);
                    }
                }
                4 => {
                    let r = k.rules.swap_remove(rng.below(k.rules.len()));
                    op(&mut done, "policy rm", &["policy", "rm", &k.name, &r]);
                }
                5 => {
                    let stance = if rng.below(2) == 0 { "deny" } else { "allow" };
                    op(
                        &mut done,
                        "policy egress",
                        &["policy", "egress", &k.name, stance],
                    );
                }
                6 => {
                    let verb = if k.linked { "unlink" } else { "link" };
                    if op(
                        &mut done,
                        "policy link",
                        &["policy", verb, &k.name, &stable],
                    ) {
                        k.linked = !k.linked;
                    }
                }
                7 => {
                    if k.limited && rng.below(2) == 0 {
                        if op(&mut done, "limit clear", &["limit", "clear", &k.name]) {
                            k.limited = false;
                        }
                    } else {
                        let rate = format!("{}mbit", 1 + rng.below(1000));
                        if op(
                            &mut done,
                            "limit set",
                            &[
                                "limit",
                                "set",
                                &k.name,
                                "--egress",
                                &rate,
                                "--ingress",
                                &rate,
                            ],
                        ) {
                            k.limited = true;
                        }
                    }
                }
                _ => {
                    let gone = live.swap_remove(pick);
                    op(
                        &mut done,
                        "container del",
                        &["container", "del", &gone.name],
                    );
                }
            }
        }
        for k in live {
            op(&mut done, "container del", &["container", "del", &k.name]);
        }
        done
    })
}

/// The daemon's resident memory (kB) and open fds.
fn daemon_usage(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

/// Entries per map: those `status --json` counts, and the bind guards and endpoints by veth
/// (`bpftool map dump` of their pins under `bpffs`).
fn map_entries(bin: &Path, socket: &Path, bpffs: &Path) -> Result<BTreeMap<String, u64>> {
    let v: Value = serde_json::from_str(&tg(bin, socket, &["status", "--json"])?)?;
    let maps = v["maps"].as_object().context("status: no maps")?;
    let mut out: BTreeMap<String, u64> = maps
        .iter()
        .map(|(k, m)| (k.clone(), m["entries"].as_u64().unwrap_or(0)))
        .collect();
    for name in ["TG_PORT_GUARD", "TG_EP_BY_IF"] {
        let pin = bpffs.join("maps").join(name);
        let dump = sbx::sh(
            Command::new("bpftool")
                .args(["map", "dump", "pinned"])
                .arg(&pin)
                .arg("-j"),
        )?;
        let entries: Value = serde_json::from_str(&dump).context("bpftool map dump -j")?;
        out.insert(
            name.to_string(),
            entries.as_array().map_or(0, Vec::len) as u64,
        );
    }
    Ok(out)
}

fn veth_count(node: &str) -> usize {
    sbx::ip(&["-n", node, "-o", "link", "show"])
        .map_or(0, |s| s.lines().filter(|l| l.contains(": tgv")).count())
}

/// One sample of the daemon.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    rss_kb: u64,
    fds: usize,
    ct: u64,
}

/// Everything the soak measured and what failed.
#[derive(Default)]
struct Report {
    meta: Vec<(String, String)>,
    flows: Vec<FlowReport>,
    conns: Counts,
    udp: Counts,
    churn: Churn,
    baseline: BTreeMap<String, u64>,
    end: BTreeMap<String, u64>,
    ct_wait_secs: f64,
    veths: (usize, usize),
    samples: Vec<Sample>,
    warmup_secs: f64,
    /// How long the traffic and the churn ran.
    traffic_secs: f64,
    failures: Vec<String>,
}

#[expect(
    clippy::cast_precision_loss,
    reason = "kB, byte and connection counts, exact in f64 below 2^52"
)]
fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

impl Report {
    fn rss_at(&self, secs: f64) -> u64 {
        self.samples
            .iter()
            .find(|s| s.secs >= secs)
            .or(self.samples.last())
            .map_or(0, |s| s.rss_kb)
    }

    fn rss(&self) -> (u64, u64, u64, u64) {
        let start = self.samples.first().map_or(0, |s| s.rss_kb);
        let warm = self.rss_at(self.warmup_secs);
        let peak = self.samples.iter().map(|s| s.rss_kb).max().unwrap_or(0);
        let end = self.samples.last().map_or(0, |s| s.rss_kb);
        (start, warm, peak, end)
    }

    #[expect(
        clippy::cast_precision_loss,
        reason = "byte and connection counts, exact in f64 below 2^52"
    )]
    fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Soak results\n");
        for (k, v) in &self.meta {
            let _ = writeln!(s, "- {k}: {v}");
        }
        let verdict = if self.failures.is_empty() {
            "**passed**".to_string()
        } else {
            format!("**failed**: {}", self.failures.join("; "))
        };
        let _ = writeln!(s, "- result: {verdict}\n");
        let _ = writeln!(s, "| check | result |\n|---|---|");
        for f in &self.flows {
            let state = f.error.as_deref().unwrap_or("intact");
            let _ = writeln!(
                s,
                "| long-lived flow {} | {state}: {:.1} MB sent, {:.1} MB echoed back identical |",
                f.name,
                f.sent as f64 / 1e6,
                f.echoed as f64 / 1e6
            );
        }
        let secs = self.traffic_secs.max(1.0);
        let _ = writeln!(
            s,
            "| new connections to the published port | {} made ({:.1}/s), {} failed |",
            self.conns.ok,
            self.conns.ok as f64 / secs,
            self.conns.failed
        );
        let _ = writeln!(
            s,
            "| UDP datagrams (echoed) | {} answered identical, {} lost or wrong |",
            self.udp.ok, self.udp.failed
        );
        let total: u64 = self.churn.ops.values().sum();
        let detail: Vec<String> = self
            .churn
            .ops
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "| churn on other containers | {total} operations ({}), {} failed |",
            detail.join(", "),
            self.churn.failed.len()
        );
        for (k, b) in &self.baseline {
            let e = self.end.get(k).copied().unwrap_or(0);
            let peak = if k == "TG_CT" {
                format!(
                    ", peak {} (gone {:.0} s after the traffic stopped)",
                    self.samples.iter().map(|x| x.ct).max().unwrap_or(0),
                    self.ct_wait_secs
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "| {k} entries | {b} before the churn, {e} at the end{peak} |"
            );
        }
        let _ = writeln!(
            s,
            "| tgv veths in the node namespace | {} before, {} at the end |",
            self.veths.0, self.veths.1
        );
        let (start, warm, peak, end) = self.rss();
        let _ = writeln!(
            s,
            "| daemon RSS | {:.1} MB at the start, {:.1} MB after the {:.0} s warm-up, peak {:.1} MB, {:.1} MB at the end |",
            mb(start),
            mb(warm),
            self.warmup_secs,
            mb(peak),
            mb(end)
        );
        let fds = (
            self.samples.first().map_or(0, |x| x.fds),
            self.samples.last().map_or(0, |x| x.fds),
        );
        let _ = writeln!(
            s,
            "| daemon open fds | {} at the start, {} at the end |",
            fds.0, fds.1
        );
        s
    }

    fn json(&self) -> Value {
        let (start, warm, peak, end) = self.rss();
        json!({
            "meta": self.meta.iter().cloned().collect::<BTreeMap<_, _>>(),
            "passed": self.failures.is_empty(),
            "failures": self.failures,
            "flows": self.flows.iter().map(|f| json!({
                "name": f.name, "sent_bytes": f.sent, "echoed_bytes": f.echoed, "error": f.error,
            })).collect::<Vec<_>>(),
            "new_connections": {"ok": self.conns.ok, "failed": self.conns.failed, "errors": self.conns.errors},
            "udp": {"answered": self.udp.ok, "lost": self.udp.failed, "errors": self.udp.errors},
            "churn": {"ops": self.churn.ops, "failed": self.churn.failed},
            "maps": {"baseline": self.baseline, "end": self.end, "ct_gone_after_secs": self.ct_wait_secs},
            "veths": {"baseline": self.veths.0, "end": self.veths.1},
            "traffic_secs": self.traffic_secs,
            "rss_kb": {"start": start, "after_warmup": warm, "peak": peak, "end": end, "warmup_secs": self.warmup_secs},
            "samples": self.samples.iter().map(|s| json!({
                "secs": s.secs, "rss_kb": s.rss_kb, "fds": s.fds, "conntrack": s.ct,
            })).collect::<Vec<_>>(),
        })
    }

    fn write(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let md = self.markdown();
        std::fs::write(out.join("results.md"), &md)?;
        std::fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(&self.json())? + "\n",
        )?;
        println!("\n{md}");
        println!("soak: results in {}", out.display());
        Ok(())
    }
}

/// The CPU as the machine names it (with family/model for VMs whose name is only a brand).
fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let f = |k: &str| {
        info.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let cores = thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!(
        "{cores} × {} ({} family {} model {})",
        f("model name"),
        f("vendor_id"),
        f("cpu family"),
        f("model\t")
    )
}

#[expect(
    clippy::too_many_lines,
    reason = "the run in order: setup, traffic, churn, stop, checks"
)]
fn soak(bin: &Path, args: &SoakArgs) -> Result<Report> {
    if !is_root() {
        bail!("the soak needs root (it creates network namespaces and loads eBPF programs)");
    }
    catch_signals();
    let seed = args.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.as_secs().wrapping_mul(1_000_000_007) ^ u64::from(t.subsec_nanos())
    });
    let run_for = Duration::from_secs_f64(args.minutes.max(0.05) * 60.0);
    println!(
        "soak: {:.1} min, {} new connections/s, seed {seed} (--seed {seed} replays the churn)",
        args.minutes, args.rate
    );
    let mut report = Report::default();
    report.meta.push((
        "command".into(),
        format!(
            "`cargo xtask soak --minutes {} --rate {}`",
            args.minutes, args.rate
        ),
    ));
    report.meta.push(("machine".into(), cpu()));
    report.meta.push((
        "kernel".into(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
    ));
    report.meta.push(("seed".into(), seed.to_string()));

    let t_setup = Instant::now();
    let sb = Sandbox::named(Mode::Tollgate, bin, "s")?;
    let (bin, socket, bpffs) = (sb.tollgate.clone(), sb.socket.clone(), sb.bpffs.clone());
    let pid = sb.daemon_pid().context("no daemon")?;
    let k_ns = netns_path(&sb.container_ns);
    let stop_udp_server = Arc::new(AtomicBool::new(false));
    let udp_server = udp_echo(k_ns.clone(), UDP_PORT, stop_udp_server.clone())?;
    tg(
        &bin,
        &socket,
        &[
            "port",
            "add",
            &sb.container,
            &format!("{UDP_PORT}:{UDP_PORT}/udp"),
        ],
    )?;
    let hairpin = format!("{}h", sb.container);
    let h: Value = serde_json::from_str(&tg(
        &bin,
        &socket,
        &["container", "add", &hairpin, "--json"],
    )?)?;
    let h_ns = PathBuf::from(h["netns"].as_str().context("container add: no netns")?);
    let published = SocketAddrV4::new(UPLINK_IP, ECHO_HOST_PORT);
    let (client_ns, node_ns) = (netns_path(&sb.client), netns_path(&sb.node));

    let stop_traffic = Arc::new(AtomicBool::new(false));
    let flows = vec![
        flow(
            "client→uplink:8080 #1",
            client_ns.clone(),
            published,
            seed ^ 1,
            stop_traffic.clone(),
        ),
        flow(
            "client→uplink:8080 #2",
            client_ns.clone(),
            published,
            seed ^ 2,
            stop_traffic.clone(),
        ),
        flow(
            "node→127.0.0.1:8080",
            node_ns,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, ECHO_HOST_PORT),
            seed ^ 3,
            stop_traffic.clone(),
        ),
        flow(
            "container h→uplink:8080 (hairpin)",
            h_ns,
            published,
            seed ^ 4,
            stop_traffic.clone(),
        ),
    ];
    let udp = datagrams(
        client_ns.clone(),
        SocketAddrV4::new(UPLINK_IP, UDP_PORT),
        stop_traffic.clone(),
    );
    thread::sleep(Duration::from_secs(1));
    report.baseline = map_entries(&bin, &socket, &bpffs)?;
    report.veths.0 = veth_count(&sb.node);
    println!(
        "soak: sandbox, 4 flows and UDP up in {:.1} s; maps {:?}",
        t_setup.elapsed().as_secs_f64(),
        report.baseline
    );

    // The run: new connections, churn, samples.
    let stop_churn = Arc::new(AtomicBool::new(false));
    let conns = connections(client_ns, published, args.rate, stop_traffic.clone());
    let churner = churn(
        bin.clone(),
        socket.clone(),
        sb.container.clone(),
        seed,
        stop_churn.clone(),
    );
    let t0 = Instant::now();
    report.warmup_secs = (run_for.as_secs_f64() / 10.0).max(10.0);
    let sample_every = if run_for > Duration::from_mins(5) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(2)
    };
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sample = |samples: &Mutex<Vec<Sample>>| {
        let (rss_kb, fds) = daemon_usage(pid);
        let ct = map_entries(&bin, &socket, &bpffs)
            .ok()
            .and_then(|m| m.get("TG_CT").copied())
            .unwrap_or(0);
        samples.lock().unwrap().push(Sample {
            secs: t0.elapsed().as_secs_f64(),
            rss_kb,
            fds,
            ct,
        });
    };
    let mut next_report = Duration::from_mins(1);
    while t0.elapsed() < run_for && !STOP_ALL.load(Ordering::Relaxed) {
        sample(&samples);
        if t0.elapsed() >= next_report {
            next_report += Duration::from_mins(1);
            let last = *samples.lock().unwrap().last().expect("sampled");
            println!(
                "soak: {:.0} s, daemon RSS {:.1} MB, {} fds, {} conntrack entries",
                last.secs,
                mb(last.rss_kb),
                last.fds,
                last.ct
            );
        }
        thread::sleep(sample_every.min(run_for.saturating_sub(t0.elapsed())));
    }
    if STOP_ALL.load(Ordering::Relaxed) {
        report.failures.push("interrupted".into());
    }

    // Stop: the churn cleans up, the traffic ends, then the checks.
    report.traffic_secs = t0.elapsed().as_secs_f64();
    stop_churn.store(true, Ordering::Relaxed);
    report.churn = churner
        .join()
        .map_err(|_| anyhow::anyhow!("churn panicked"))?;
    stop_traffic.store(true, Ordering::Relaxed);
    report.conns = conns
        .join()
        .map_err(|_| anyhow::anyhow!("connection thread panicked"))??;
    report.udp = udp
        .join()
        .map_err(|_| anyhow::anyhow!("UDP thread panicked"))??;
    for f in flows {
        report
            .flows
            .push(f.join().map_err(|_| anyhow::anyhow!("flow panicked"))??);
    }
    stop_udp_server.store(true, Ordering::Relaxed);
    let _ = udp_server.join();
    sample(&samples);
    // The closed flows' conntrack entries go once idle past the closing timeout (10 s) and
    // the GC's next pass (5 s).
    let base_ct = report.baseline.get("TG_CT").copied().unwrap_or(0);
    let t_ct = Instant::now();
    let mut end = map_entries(&bin, &socket, &bpffs)?;
    while end.get("TG_CT").copied().unwrap_or(0) > base_ct
        && t_ct.elapsed() < Duration::from_secs(40)
    {
        thread::sleep(Duration::from_secs(1));
        end = map_entries(&bin, &socket, &bpffs)?;
    }
    report.ct_wait_secs = t_ct.elapsed().as_secs_f64();
    report.end = end;
    report.veths.1 = veth_count(&sb.node);
    sample(&samples);
    report.samples.clone_from(&samples.lock().unwrap());
    drop(sb);

    // The verdict.
    for f in &report.flows {
        if let Some(e) = &f.error {
            report.failures.push(format!("flow {}: {e}", f.name));
        }
    }
    if report.conns.failed > 0 {
        report.failures.push(format!(
            "{} new connections failed: {}",
            report.conns.failed,
            report.conns.errors.join("; ")
        ));
    }
    if report.udp.failed > 0 {
        report.failures.push(format!(
            "{} datagrams lost: {}",
            report.udp.failed,
            report.udp.errors.join("; ")
        ));
    }
    if !report.churn.failed.is_empty() {
        report.failures.push(format!(
            "churn operations failed: {}",
            report.churn.failed.join("; ")
        ));
    }
    for (k, b) in &report.baseline {
        let e = report.end.get(k).copied().unwrap_or(0);
        if e > *b || (k != "TG_CT" && e != *b) {
            report
                .failures
                .push(format!("{k}: {e} entries at the end, {b} before the churn"));
        }
    }
    if report.veths.0 != report.veths.1 {
        report.failures.push(format!(
            "{} tgv veths at the end, {} before",
            report.veths.1, report.veths.0
        ));
    }
    let (_, warm, peak, end_rss) = report.rss();
    #[expect(
        clippy::cast_precision_loss,
        reason = "kB counts, exact in f64 below 2^52"
    )]
    if end_rss as f64 > warm as f64 * (1.0 + RSS_GROWTH) {
        report.failures.push(format!(
            "daemon RSS grew from {:.1} MB after the warm-up to {:.1} MB (peak {:.1} MB)",
            mb(warm),
            mb(end_rss),
            mb(peak)
        ));
    }
    let (fd0, fd1) = (
        report.samples.first().map_or(0, |s| s.fds),
        report.samples.last().map_or(0, |s| s.fds),
    );
    if fd1 > fd0 + 2 {
        report
            .failures
            .push(format!("daemon fds: {fd0} at the start, {fd1} at the end"));
    }
    report.meta.push((
        "duration".into(),
        format!("{:.1} min of traffic and churn", report.traffic_secs / 60.0),
    ));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn a_pattern_checks_slices_across_its_wrap() {
        let p = Pattern::new(7);
        let at = (Pattern::LEN - 10) as u64;
        let s = p.slice(at, 100);
        assert!(p.matches(at, &s));
        assert!(p.matches(at + Pattern::LEN as u64, &s));
        let mut bad = s.clone();
        bad[50] ^= 1;
        assert!(!p.matches(at, &bad));
        assert!(!p.matches(at + 1, &s));
    }
}
