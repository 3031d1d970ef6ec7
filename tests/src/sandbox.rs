//! A sandbox: client ns <-> (uplink `up0`) node ns with a tollgate daemon `--netns node`.
//!
//! ```text
//!  client ns  eth0 192.168.X.2/24 ──veth── up0 192.168.X.1/24  node ns (daemon)
//!                                           tgvN 10.254.0.1/30 ──veth── eth0 10.254.0.2/30  tg-NAME
//! ```

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Path of the tollgate binary under test (set by `cargo xtask test`).
pub fn tollgate_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TOLLGATE_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tollgate")
}

/// Whether privileged tests can run here; prints why not.
pub fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: integration tests need root");
        return false;
    }
    if !tollgate_bin().exists() {
        eprintln!(
            "skipped: {} not built (run `cargo xtask test`)",
            tollgate_bin().display()
        );
        return false;
    }
    true
}

/// Runs a command, failing with its stderr if it fails.
pub fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Result of one CLI call.
#[derive(Debug)]
pub struct Cli {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Cli {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).to_string(),
        }
    }
}

/// A tollgate daemon of one node namespace, run from the root mount namespace with
/// `--netns`, with its own state dir, bpffs dir and socket; driven through the real CLI.
pub struct Daemon {
    /// The node namespace.
    pub node: String,
    pub dir: PathBuf,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    /// The `--uplink` interface in the node namespace.
    pub uplink: String,
    /// Extra `daemon` flags (kept for restarts).
    pub daemon_flags: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    /// A daemon for `node`, keeping its files under `dir` and pins under `bpffs` (not started).
    pub fn new(node: &str, dir: &Path, bpffs: &Path, flags: &[&str]) -> Self {
        Self {
            node: node.to_string(),
            dir: dir.to_path_buf(),
            bpffs: bpffs.to_path_buf(),
            socket: dir.join("tollgate.sock"),
            uplink: "up0".into(),
            daemon_flags: flags.iter().map(ToString::to_string).collect(),
            child: None,
        }
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Starts the daemon and waits until it answers.
    pub fn start_daemon(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        let child = Command::new(tollgate_bin())
            .args(["daemon", "--uplink", &self.uplink, "--netns", &self.node])
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.daemon_flags)
            .env("TOLLGATE_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning tollgate daemon")?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if self.socket.exists() && self.tg(&["status", "--json"]).code == 0 {
                return Ok(());
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "daemon exited ({st}) during start-up:\n{}",
                    self.daemon_log()
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("daemon did not come up in 30 s:\n{}", self.daemon_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the daemon with SIGKILL (no clean-up of any kind).
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon with SIGTERM and waits for it.
    pub fn stop_daemon(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id().cast_signed(), libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI against this daemon.
    pub fn tg(&self, args: &[&str]) -> Cli {
        Command::new(tollgate_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running tollgate")
            .into()
    }

    /// Runs the CLI and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.tg(args);
        assert_eq!(
            r.code,
            0,
            "tollgate {} failed: {}\ndaemon log:\n{}",
            args.join(" "),
            r.stderr,
            self.tail_log()
        );
        r.stdout
    }

    /// Runs a listing command with `--json` and parses it.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("valid JSON")
    }

    pub fn tail_log(&self) -> String {
        let l = self.daemon_log();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the daemon and removes everything it made (`tollgate reset`).
    pub fn teardown(&mut self) {
        self.stop_daemon();
        let r = Command::new(tollgate_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(["reset", "--netns", &self.node])
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .output();
        if let Ok(o) = &r {
            if !o.status.success() && !std::thread::panicking() {
                eprintln!("reset failed: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
    }
}

pub struct Sandbox {
    pub tag: String,
    pub client: String,
    pub uplink_ip: Ipv4Addr,
    pub client_ip: Ipv4Addr,
    /// The node's daemon (its fields and methods are the sandbox's, through `Deref`).
    pub daemon: Daemon,
}

impl std::ops::Deref for Sandbox {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl std::ops::DerefMut for Sandbox {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl Sandbox {
    /// Creates the namespaces and the uplink, and starts the daemon. `test` must be short
    /// (it goes into namespace and container names).
    pub fn new(test: &str) -> Result<Self> {
        Self::with_flags(test, &[])
    }

    /// Like `new`, with extra `tollgate daemon` flags (e.g. `["--icc"]`).
    pub fn with_flags(test: &str, flags: &[&str]) -> Result<Self> {
        let pid = std::process::id();
        let tag = format!("{test}-{pid}");
        // A /24 per sandbox, derived from the test name, keeps captures readable; each lives in
        // its own namespaces so overlaps would not matter anyway.
        let octet = 100 + (test.bytes().map(u32::from).sum::<u32>() % 100) as u8;
        let dir = std::env::temp_dir().join(format!("tollgate-test-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut sb = Sandbox {
            client: format!("tgt-{tag}-c"),
            uplink_ip: Ipv4Addr::new(192, 168, octet, 1),
            client_ip: Ipv4Addr::new(192, 168, octet, 2),
            daemon: Daemon::new(
                &format!("tgt-{tag}-n"),
                &dir,
                Path::new(&format!("/sys/fs/bpf/tgt-{tag}")),
                flags,
            ),
            tag,
        };
        sb.build_topology()?;
        sb.start_daemon()?;
        Ok(sb)
    }

    fn build_topology(&self) -> Result<()> {
        let (n, c) = (self.node.as_str(), self.client.as_str());
        sh("ip", &["netns", "add", n])?;
        sh("ip", &["netns", "add", c])?;
        sh(
            "ip",
            &[
                "link", "add", "up0", "netns", n, "type", "veth", "peer", "name", "eth0", "netns",
                c,
            ],
        )?;
        let up = format!("{}/24", self.uplink_ip);
        let cl = format!("{}/24", self.client_ip);
        sh("ip", &["-n", n, "addr", "add", &up, "dev", "up0"])?;
        sh("ip", &["-n", n, "link", "set", "up0", "up"])?;
        sh("ip", &["-n", c, "addr", "add", &cl, "dev", "eth0"])?;
        sh("ip", &["-n", c, "link", "set", "eth0", "up"])?;
        sh("ip", &["-n", c, "link", "set", "lo", "up"])?;
        sh(
            "ip",
            &[
                "-n",
                c,
                "route",
                "add",
                "default",
                "via",
                &self.uplink_ip.to_string(),
            ],
        )?;
        Ok(())
    }

    /// A container name unique to this sandbox (its netns is `tg-<name>`).
    pub fn cname(&self, short: &str) -> String {
        format!("{}-{short}", self.tag)
    }

    /// Adds a container and returns (name, netns name, ip).
    pub fn container(&self, short: &str) -> (String, String, Ipv4Addr) {
        let name = self.cname(short);
        let v = self.json(&["container", "add", &name]);
        let ip: Ipv4Addr = v["ip"].as_str().unwrap().parse().unwrap();
        (name.clone(), format!("tg-{name}"), ip)
    }

    /// `port add` returning the host ports it printed.
    pub fn publish(&self, name: &str, spec: &str) -> Vec<u16> {
        self.ok(&["port", "add", name, spec])
            .lines()
            .map(|l| l.trim().parse().expect("port number"))
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.daemon.teardown();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.daemon.node])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client])
            .output();
        if std::thread::panicking() {
            eprintln!("--- daemon log ({}) ---\n{}", self.tag, self.tail_log());
        }
        let _ = std::fs::remove_dir_all(&self.daemon.dir);
    }
}
