//! One sandbox per mode, all built the same way; nothing is created in the root namespace.
//!
//! ```text
//!  client ns  eth0 192.168.77.2/24 ──veth── up0 192.168.77.1/24  node ns (ip_forward=1)
//!                                  tgv1 10.254.0.1/30 ──veth── eth0 10.254.0.2/30  container ns
//! ```
//!
//! In the `tollgate` mode the container (namespace, veth, /30) is made by
//! `tollgate container add` against a daemon running `--netns NODE`; in the others the bench
//! makes the same thing itself. The container runs `iperf3 -s` (port 5201) and `bench-echo`
//! (port 80). Published as host ports 5201 and 8080 (`-p 5201:5201 -p 8080:80`).

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::Mode;

pub const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 1);
pub const CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 2);
pub const POOL: &str = "10.254.0.0/22";
/// Container ports of the two servers and the host ports they are published on.
pub const ECHO_PORT: u16 = 80;
pub const ECHO_HOST_PORT: u16 = 8080;
pub const IPERF_PORT: u16 = 5201;
pub const IPERF_HOST_PORT: u16 = 5201;
/// Extra port maps (the "N maps" of crr) are `P:P` for P from here on.
pub const EXTRA_BASE: u16 = 10000;
/// Ports used by the install measurements (a second, empty container).
pub const INSTALL_BASE: u16 = 21000;
/// Ports used by the memory measurement's extra proxies.
pub const MEMORY_BASE: u16 = 20000;
/// Host-side veth name in the modes that build the container themselves.
const HOST_VETH: &str = "tgv1";

/// Runs a command and returns its stdout, failing with its stderr.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let shown = crate::display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

/// `ip netns exec NS PROG ARGS...`
pub fn in_ns(ns: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(prog);
    cmd
}

static TOOLS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Uses this (optimized) xtask binary for the hidden subcommands run inside namespaces.
pub fn set_tools_exe(path: PathBuf) {
    let _ = TOOLS.set(path);
}

/// The xtask binary that runs the hidden subcommands (echo server, proxy, load generator):
/// the release build when the bench made one, else this very binary.
pub fn self_exe() -> PathBuf {
    TOOLS.get().cloned().unwrap_or_else(|| {
        std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
    })
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    sh(in_ns(ns, "sysctl").args(["-qw", &format!("{key}={value}")])).map(|_| ())
}

pub fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns a long-running process (output to a log file) and returns it.
fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let shown = crate::display(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))
}

/// Waits until something listens on TCP `port` in namespace `ns`.
pub fn wait_listening(ns: &str, port: u16, children: &mut [Child]) -> Result<()> {
    let start = Instant::now();
    loop {
        let out = sh(in_ns(ns, "ss").args(["-Hltn", &format!("sport = :{port}")]))?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        for c in children.iter_mut() {
            if let Some(st) = c.try_wait()? {
                bail!("a server in {ns} exited ({st}) before listening on {port}");
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("nothing listens on {port} in {ns} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Docker (`--userland-proxy=false`) + Warden ruleset for the node namespace, with the
/// used maps (`8080:80`, `5201:5201`) published last, after `extra` other maps (`P:P`, P from
/// `EXTRA_BASE`). A map is Docker's three rules: nat DOCKER DNAT, filter DOCKER ACCEPT and the
/// POSTROUTING hairpin MASQUERADE.
pub fn iptables_ruleset(extra: u32) -> String {
    let c = CONTAINER_IP;
    let mut nat = String::new();
    let mut filter = String::new();
    let mut post = String::new();
    let mut publish = |host: u32, cport: u32| {
        let _ = writeln!(
            nat,
            "-A DOCKER ! -i {HOST_VETH} -p tcp -m tcp --dport {host} -j DNAT --to-destination {c}:{cport}"
        );
        let _ = writeln!(
            filter,
            "-A DOCKER -d {c}/32 ! -i {HOST_VETH} -o {HOST_VETH} -p tcp -m tcp --dport {cport} -j ACCEPT"
        );
        let _ = writeln!(
            post,
            "-A POSTROUTING -s {c}/32 -d {c}/32 -p tcp -m tcp --dport {cport} -j MASQUERADE"
        );
    };
    for i in 0..extra {
        let p = u32::from(EXTRA_BASE) + i;
        publish(p, p);
    }
    publish(u32::from(IPERF_HOST_PORT), u32::from(IPERF_PORT));
    publish(u32::from(ECHO_HOST_PORT), u32::from(ECHO_PORT));
    format!(
        "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s {POOL} ! -o tgv+ -j MASQUERADE
-A POSTROUTING -o tgv+ -m addrtype --src-type LOCAL -j MASQUERADE
{post}-A DOCKER -i {HOST_VETH} -j RETURN
{nat}COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
:warden-forward - [0:0]
:warden-default - [0:0]
:warden-instance-1 - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -i tgv+ -j warden-forward
-A FORWARD -o tgv+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o tgv+ -j DOCKER
-A FORWARD -i tgv+ ! -o tgv+ -j ACCEPT
-A FORWARD -i tgv+ -o tgv+ -j ACCEPT
{filter}-A DOCKER-ISOLATION-STAGE-1 -i tgv+ ! -o tgv+ -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o tgv+ -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
-A warden-forward -i {HOST_VETH} -g warden-instance-1
-A warden-forward -j DROP
-A warden-instance-1 -g warden-default
-A warden-default -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"
    )
}

/// The rules `count` more published ports (`P:P` to a second container 10.254.0.6, P from
/// `first`) add, as `iptables-restore --noflush` input, or as `iptables` argument lists.
pub fn iptables_port_rules(first: u16, count: u32) -> Vec<(&'static str, String)> {
    let c = Ipv4Addr::new(10, 254, 0, 6);
    let mut v = Vec::with_capacity(count as usize * 3);
    for i in 0..count {
        let p = u32::from(first) + i;
        v.push((
            "nat",
            format!(
                "-A DOCKER ! -i tgv2 -p tcp -m tcp --dport {p} -j DNAT --to-destination {c}:{p}"
            ),
        ));
        v.push((
            "filter",
            format!("-A DOCKER -d {c}/32 ! -i tgv2 -o tgv2 -p tcp -m tcp --dport {p} -j ACCEPT"),
        ));
        v.push((
            "nat",
            format!("-A POSTROUTING -s {c}/32 -d {c}/32 -p tcp -m tcp --dport {p} -j MASQUERADE"),
        ));
    }
    v
}

pub fn restore_input(rules: &[(&str, String)]) -> String {
    let mut s = String::new();
    for table in ["nat", "filter"] {
        let _ = writeln!(s, "*{table}");
        for (t, r) in rules {
            if *t == table {
                let _ = writeln!(s, "{r}");
            }
        }
        let _ = writeln!(s, "COMMIT");
    }
    s
}

pub struct Sandbox {
    pub mode: Mode,
    pub node: String,
    pub client: String,
    /// The container's namespace name.
    pub container_ns: String,
    /// The tollgate container name (tollgate mode).
    pub container: String,
    pub dir: PathBuf,
    pub bpffs: PathBuf,
    pub socket: PathBuf,
    pub tollgate: PathBuf,
    namespaces: Vec<String>,
    servers: Vec<Child>,
    proxies: Vec<Child>,
    /// `bench-listen` holding the proxy mode's extra ports.
    filler: Option<Child>,
    daemon: Option<Child>,
    /// Extra port maps currently installed (crr scale).
    pub extra: u32,
}

impl Sandbox {
    pub fn new(mode: Mode, tollgate: &Path) -> Result<Self> {
        Self::named(mode, tollgate, "")
    }

    /// A sandbox whose names carry `suffix` too (a second one of the same mode).
    pub fn named(mode: Mode, tollgate: &Path, suffix: &str) -> Result<Self> {
        Self::create(mode, tollgate, suffix, true)
    }

    /// The node and client namespaces with the uplink and, in the `tollgate` mode, the daemon,
    /// but no container and no servers (`bench cni` makes its containers with podman).
    pub fn bare(mode: Mode, tollgate: &Path, suffix: &str) -> Result<Self> {
        Self::create(mode, tollgate, suffix, false)
    }

    fn create(mode: Mode, tollgate: &Path, suffix: &str, container: bool) -> Result<Self> {
        let pid = std::process::id();
        let tag = format!("tgb{pid}{}{suffix}", mode.short());
        let dir = crate::repo_root()
            .join("target")
            .join("bench-run")
            .join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut sb = Sandbox {
            mode,
            node: format!("{tag}-n"),
            client: format!("{tag}-c"),
            container_ns: format!("{tag}-k"),
            container: format!("{tag}k"),
            bpffs: PathBuf::from(format!("/sys/fs/bpf/{tag}")),
            socket: dir.join("tollgate.sock"),
            tollgate: tollgate.to_path_buf(),
            dir,
            namespaces: Vec::new(),
            servers: Vec::new(),
            proxies: Vec::new(),
            filler: None,
            daemon: None,
            extra: 0,
        };
        let built = if container {
            sb.build()
        } else {
            sb.build_node().and_then(|()| {
                if mode == Mode::Tollgate {
                    sb.start_daemon()
                } else {
                    Ok(())
                }
            })
        };
        built.with_context(|| format!("building the {} sandbox", mode.name()))?;
        Ok(sb)
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The container, made by the tollgate daemon, with the two used ports published.
    fn add_tollgate_container(&mut self) -> Result<()> {
        self.start_daemon()?;
        let out = self.tg(&["container", "add", &self.container.clone(), "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("container add --json")?;
        let netns = v["netns"].as_str().context("container add: no netns")?;
        self.container_ns = Path::new(netns)
            .file_name()
            .context("container netns path")?
            .to_string_lossy()
            .into_owned();
        self.namespaces.push(self.container_ns.clone());
        let ip_ = v["ip"].as_str().unwrap_or_default();
        if ip_ != CONTAINER_IP.to_string() {
            bail!("tollgate gave the container {ip_}, expected {CONTAINER_IP}");
        }
        self.tg(&[
            "port",
            "add",
            &self.container.clone(),
            &format!("{ECHO_HOST_PORT}:{ECHO_PORT}"),
            &format!("{IPERF_HOST_PORT}:{IPERF_PORT}"),
        ])?;
        Ok(())
    }

    /// The container for the other modes: a namespace on a veth to the node `n`.
    fn add_veth_container(&mut self, n: &str) -> Result<()> {
        let k = self.container_ns.clone();
        self.add_netns(&k)?;
        ip(&[
            "link", "add", HOST_VETH, "netns", n, "type", "veth", "peer", "name", "eth0", "netns",
            &k,
        ])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{GATEWAY_IP}/30"),
            "dev",
            HOST_VETH,
        ])?;
        ip(&["-n", n, "link", "set", HOST_VETH, "up"])?;
        ip(&[
            "-n",
            &k,
            "addr",
            "add",
            &format!("{CONTAINER_IP}/30"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &k, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &k,
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_IP.to_string(),
        ])?;
        Ok(())
    }

    /// The node and client namespaces, the uplink between them, the sysctls.
    fn build_node(&mut self) -> Result<()> {
        let (n, c) = (self.node.clone(), self.client.clone());
        self.add_netns(&n)?;
        self.add_netns(&c)?;
        ip(&[
            "link", "add", "up0", "netns", &n, "type", "veth", "peer", "name", "eth0", "netns", &c,
        ])?;
        ip(&[
            "-n",
            &n,
            "addr",
            "add",
            &format!("{UPLINK_IP}/24"),
            "dev",
            "up0",
        ])?;
        ip(&["-n", &n, "link", "set", "up0", "up"])?;
        ip(&[
            "-n",
            &c,
            "addr",
            "add",
            &format!("{CLIENT_IP}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &c, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &c,
            "route",
            "add",
            "default",
            "via",
            &UPLINK_IP.to_string(),
        ])?;
        sysctl(&n, "net.ipv4.ip_forward", "1")?;
        // Many short connections: TIME_WAIT reuse on the sides that open connections (the
        // client; the node for the proxy's upstream connections), and an ephemeral range above
        // the fixed ports the bench publishes (10000-30999).
        for ns in [&n, &c] {
            sysctl(ns, "net.ipv4.ip_local_port_range", "32768 65000")?;
            sysctl(ns, "net.ipv4.tcp_tw_reuse", "1")?;
        }
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        self.build_node()?;
        let n = self.node.clone();
        if self.mode == Mode::Tollgate {
            self.add_tollgate_container()?;
        } else {
            self.add_veth_container(&n)?;
        }

        // The servers.
        let k = self.container_ns.clone();
        let mut iperf = in_ns(&k, "iperf3");
        iperf.args(["-s", "-p", &IPERF_PORT.to_string()]);
        self.servers
            .push(spawn_logged(iperf, &self.dir.join("iperf3.log"))?);
        let mut echo = in_ns(&k, self_exe());
        echo.args(["bench-echo", "--port", &ECHO_PORT.to_string()]);
        self.servers
            .push(spawn_logged(echo, &self.dir.join("echo.log"))?);
        wait_listening(&k, IPERF_PORT, &mut self.servers)?;
        wait_listening(&k, ECHO_PORT, &mut self.servers)?;

        match self.mode {
            Mode::Iptables => self.restore_rules(0)?,
            Mode::Proxy => {
                for (h, c) in [(ECHO_HOST_PORT, ECHO_PORT), (IPERF_HOST_PORT, IPERF_PORT)] {
                    let p = self.spawn_proxy(h, c)?;
                    self.proxies.push(p);
                }
                for h in [ECHO_HOST_PORT, IPERF_HOST_PORT] {
                    wait_listening(&n, h, &mut self.proxies)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// One docker-proxy style process for `host:container` (TCP), in the node namespace.
    pub fn spawn_proxy(&self, host: u16, cport: u16) -> Result<Child> {
        let mut cmd = in_ns(&self.node, self_exe());
        cmd.args(["bench-proxy", "--host-port", &host.to_string()])
            .args(["--container-ip", &CONTAINER_IP.to_string()])
            .args(["--container-port", &cport.to_string()]);
        spawn_logged(cmd, &self.dir.join("proxy.log"))
    }

    /// Loads the full iptables ruleset with `extra` port maps ahead of the used ones.
    pub fn restore_rules(&self, extra: u32) -> Result<()> {
        self.iptables_restore(&iptables_ruleset(extra), false)
    }

    pub fn iptables_restore(&self, input: &str, noflush: bool) -> Result<()> {
        let path = self.dir.join("rules.txt");
        std::fs::write(&path, input)?;
        let mut cmd = in_ns(&self.node, "iptables-restore");
        if noflush {
            cmd.arg("--noflush");
        }
        cmd.arg(&path);
        sh(&mut cmd).map(|_| ())
    }

    fn start_daemon(&mut self) -> Result<()> {
        let log = self.dir.join("daemon.log");
        let mut cmd = Command::new(&self.tollgate);
        cmd.args(["daemon", "--uplink", "up0", "--netns", &self.node])
            .args(["--pool", POOL])
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--socket")
            .arg(&self.socket);
        self.daemon = Some(spawn_logged(cmd, &log)?);
        let start = Instant::now();
        loop {
            if self.socket.exists() && self.tg(&["status", "--json"]).is_ok() {
                return Ok(());
            }
            if let Some(st) = self
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten())
            {
                bail!(
                    "tollgate daemon exited ({st}) during start-up:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("tollgate daemon did not answer in 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// PID of the container's `bench-echo` (`ip netns exec` execs it, so the child is it).
    pub fn echo_pid(&self) -> Option<u32> {
        self.servers.get(1).map(Child::id)
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Runs the tollgate CLI against this sandbox's daemon; stdout on success.
    pub fn tg(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.tollgate);
        cmd.arg("--socket").arg(&self.socket).args(args);
        sh(&mut cmd).map_err(|e| {
            // Keep the error short: the spec lists of big batches are long.
            let mut s = format!("{e:#}");
            if s.len() > 600 {
                let cut = (0..=600)
                    .rev()
                    .find(|&i| s.is_char_boundary(i))
                    .unwrap_or(0);
                s.truncate(cut);
                s.push_str("...");
            }
            anyhow::anyhow!(s)
        })
    }

    /// Where the client connects for a container port: the container itself (baseline) or
    /// the published host port on the uplink address.
    pub fn target(&self, container_port: u16) -> SocketAddrV4 {
        if self.mode == Mode::Baseline {
            return SocketAddrV4::new(CONTAINER_IP, container_port);
        }
        let host = if container_port == ECHO_PORT {
            ECHO_HOST_PORT
        } else {
            IPERF_HOST_PORT
        };
        SocketAddrV4::new(UPLINK_IP, host)
    }

    /// Sets the number of extra port maps (crr at N maps: N - 1 extra).
    pub fn set_extra(&mut self, extra: u32) -> Result<()> {
        if extra == self.extra {
            return Ok(());
        }
        match self.mode {
            Mode::Baseline => {}
            Mode::Iptables => self.restore_rules(extra)?,
            Mode::Proxy => {
                if let Some(mut f) = self.filler.take() {
                    kill_child(&mut f);
                }
                if extra > 0 {
                    let mut cmd = in_ns(&self.node, self_exe());
                    cmd.args(["bench-listen", "--first", &EXTRA_BASE.to_string()])
                        .args(["--count", &extra.to_string()]);
                    let mut child = spawn_logged(cmd, &self.dir.join("listen.log"))?;
                    let last = EXTRA_BASE
                        + u16::try_from(extra - 1).context("too many extra port maps")?;
                    let r = wait_listening(&self.node, last, std::slice::from_mut(&mut child));
                    self.filler = Some(child);
                    r?;
                }
            }
            Mode::Tollgate => {
                let name = self.container.clone();
                if extra < self.extra {
                    let spec = format!(
                        "{}-{}",
                        u32::from(EXTRA_BASE) + extra,
                        u32::from(EXTRA_BASE) + self.extra - 1
                    );
                    self.tg(&["port", "del", &name, &spec])?;
                } else {
                    let specs: Vec<String> = (self.extra..extra)
                        .map(|i| {
                            let p = u32::from(EXTRA_BASE) + i;
                            format!("{p}:{p}")
                        })
                        .collect();
                    for chunk in specs.chunks(10_000) {
                        let mut args = vec!["port", "add", name.as_str()];
                        args.extend(chunk.iter().map(String::as_str));
                        self.tg(&args)?;
                    }
                }
            }
        }
        self.extra = extra;
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for c in self
            .servers
            .iter_mut()
            .chain(self.proxies.iter_mut())
            .chain(self.filler.iter_mut())
        {
            kill_child(c);
        }
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(d.id().cast_signed(), libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = d.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kill_child(&mut d);
        }
        if self.mode == Mode::Tollgate {
            let mut cmd = Command::new(&self.tollgate);
            cmd.arg("--socket")
                .arg(&self.socket)
                .args(["reset", "--netns", &self.node])
                .arg("--state-dir")
                .arg(self.dir.join("state"))
                .arg("--bpffs")
                .arg(&self.bpffs);
            if let Err(e) = sh(&mut cmd) {
                eprintln!("warning: {e:#}");
            }
        }
        for ns in self.namespaces.iter().rev() {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = ip(&["netns", "del", ns]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
