//! `tollgate demo --cluster`: the cluster mode in a sandbox of its own. An underlay namespace
//! (a bridge, where one etcd member listens) joins two node namespaces; a daemon per node runs
//! with `--cluster`, one node creates a cluster network, each node gets a container serving
//! HTTP on it, and each container makes requests to the other over the VXLAN overlay while a
//! live table shows what every node sees. Everything is removed on exit (also on error and on
//! Ctrl-C): the children are in process groups of their own, so a Ctrl-C reaches the demo
//! alone, which stops them in order.
//!
//! ```text
//!   node-a ns: up0 192.168.201.10/24 ─veth─┐
//!                                          br0 192.168.201.250/24   underlay ns (etcd :2379)
//!   node-b ns: up0 192.168.201.11/24 ─veth─┘
//!   web-a (on node-a) <── VXLAN, UDP 4789 between the nodes ──> web-b (on node-b)
//! ```

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use super::{http_get, STOP};
use crate::{
    api::{
        types::{self as api, paths},
        Client,
    },
    cli::DemoArgs,
    netlink::{self, addr, link},
    netns,
};

/// The underlay: a /24 on the bridge of the underlay namespace.
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 201, 250);
const ETCD_PORT: u16 = 2379;
/// Node i's underlay address is `.(10 + i)`.
const NODE_NAMES: [&str; 2] = ["node-a", "node-b"];
const SERVERS: [&str; 2] = ["web-a", "web-b"];
/// The cluster network both containers join.
const NETWORK: &str = "demo";
/// Short, so that a node is dropped soon if its daemon dies.
const NODE_TTL: &str = "5";

fn underlay_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 201, 10 + u8::try_from(i).unwrap_or(0))
}

struct Container {
    short: &'static str,
    ip: Ipv4Addr,
    netns: PathBuf,
}

struct Node {
    name: &'static str,
    ns: String,
    dir: PathBuf,
    bpffs: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
    server: Option<Child>,
    container: Option<Container>,
}

impl Node {
    /// `tollgate --socket S CMD --netns NS --state-dir D --bpffs B`.
    fn args(&self, cmd: &str) -> Vec<String> {
        vec![
            "--socket".into(),
            self.socket.display().to_string(),
            cmd.into(),
            "--netns".into(),
            self.ns.clone(),
            "--state-dir".into(),
            self.dir.join("state").display().to_string(),
            "--bpffs".into(),
            self.bpffs.display().to_string(),
        ]
    }

    fn client(&self) -> Result<Client> {
        Client::new(&self.socket)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
}

struct Sandbox {
    tag: String,
    dir: PathBuf,
    underlay: String,
    etcd: Option<Child>,
    nodes: Vec<Node>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let exe = std::env::current_exe().ok();
        for n in &mut self.nodes {
            for c in [n.server.take(), n.daemon.take()].into_iter().flatten() {
                kill(c);
            }
        }
        // `reset` removes what each daemon made: its containers' namespaces and veths, the
        // VXLAN device, the pinned programs and maps (nothing else has them).
        for n in &self.nodes {
            // Its directory is made just before its daemon is started.
            if let (Some(exe), true) = (&exe, n.dir.exists()) {
                let _ = Command::new(exe)
                    .args(n.args("reset"))
                    .stdout(Stdio::null())
                    .status();
            }
            let _ = std::fs::remove_dir(&n.bpffs);
        }
        if let Some(c) = self.etcd.take() {
            kill(c);
        }
        for ns in self
            .nodes
            .iter()
            .map(|n| n.ns.as_str())
            .chain([self.underlay.as_str()])
        {
            let _ = netns::delete_named(&netns::named_path(ns));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("demo {}: cleaned up", self.tag);
    }
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// The demo's steps, read top to bottom; the sandbox's `Drop` undoes them.
pub fn run(a: &DemoArgs) -> Result<()> {
    let etcd = find_etcd()?;
    let tag = format!("tgdemo-{}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir)?;
    let nodes = NODE_NAMES
        .iter()
        .map(|name| {
            let short = name.trim_start_matches("node-");
            Node {
                name,
                ns: format!("{tag}-{short}"),
                dir: dir.join(name),
                bpffs: PathBuf::from(format!("/sys/fs/bpf/{tag}-{short}")),
                socket: dir.join(format!("{name}.sock")),
                daemon: None,
                server: None,
                container: None,
            }
        })
        .collect();
    let mut sb = Sandbox {
        underlay: format!("{tag}-u"),
        tag,
        dir,
        etcd: None,
        nodes,
    };
    let started = Instant::now();
    let net = set_up(&mut sb, &etcd)?;
    let (answered, last, sent) = traffic(&sb, a.requests)?;
    summary(&sb, &net, answered, &last, &sent)?;
    println!(
        "cluster demo done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The topology, etcd, the daemons, the network and the containers; returns once the overlay
/// carries requests both ways.
fn set_up(sb: &mut Sandbox, etcd: &Path) -> Result<api::NetworkInfo> {
    println!(
        "demo {} --cluster: building the sandbox (an underlay bridge, one etcd member, two nodes)",
        sb.tag
    );
    build_topology(sb)?;
    start_etcd(sb, etcd)?;
    println!(
        "  etcd      {ETCD_IP}:{ETCD_PORT} in netns {} (data {})",
        sb.underlay,
        sb.dir.join("etcd").display()
    );
    start_daemons(sb)?;
    for (i, n) in sb.nodes.iter().enumerate() {
        println!(
            "  {}    daemon --netns {} --cluster etcd://{ETCD_IP}:{ETCD_PORT} --node-name {}, underlay {}",
            n.name,
            n.ns,
            n.name,
            underlay_ip(i)
        );
    }

    let net: api::NetworkInfo = sb.nodes[0].client()?.post(
        paths::NETWORKS,
        &api::NetworkCreate {
            name: NETWORK.into(),
            ..Default::default()
        },
    )?;
    wait_for("node-b to see the network", Duration::from_secs(10), || {
        let l: Vec<api::NetworkInfo> = sb.nodes[1].client()?.get(paths::NETWORKS)?;
        Ok(l.iter().any(|n| n.name == NETWORK))
    })?;
    println!(
        "  network   {NETWORK}: scope {}, subnet {}, VNI {}; created on node-a, seen by node-b through etcd",
        net.scope,
        net.subnet,
        net.vni.map_or_else(|| "-".into(), |v| v.to_string())
    );
    add_containers(sb)?;
    let blocks: Vec<api::NodeInfo> = sb.nodes[0].client()?.get(paths::NODES)?;
    let blocks: Vec<String> = blocks
        .iter()
        .map(|n| format!("{} {}", n.name, n.blocks.join(" ")))
        .collect();
    println!(
        "  blocks    {}: each node gives addresses out of its own blocks",
        blocks.join(", ")
    );

    let ready = Instant::now();
    wait_for(
        "the overlay (each node learns the other's block from etcd)",
        Duration::from_secs(15),
        || Ok(request(sb, 0).is_ok() && request(sb, 1).is_ok()),
    )
    .map_err(|e| anyhow!("{e}\n{}", logs(sb)))?;
    println!(
        "  overlay   up in {} ms: web-a requests http://{}/ and web-b http://{}/ (VXLAN, UDP 4789 on the underlay)\n",
        ready.elapsed().as_millis(),
        sb.nodes[1].container.as_ref().map_or(Ipv4Addr::UNSPECIFIED, |c| c.ip),
        sb.nodes[0].container.as_ref().map_or(Ipv4Addr::UNSPECIFIED, |c| c.ip),
    );
    Ok(net)
}

/// `requests` rounds of one request each way, with a table every five; returns the requests
/// each node's container answered, its last answer, and the packets each node put into the
/// overlay meanwhile. Fails unless every request was answered over the overlay.
fn traffic(sb: &Sandbox, requests: u32) -> Result<([u32; 2], [String; 2], [u64; 2])> {
    let mut answered = [0u32; 2];
    let mut last = [String::new(), String::new()];
    let base = overlay_counters(sb)?;
    for round in 0..requests {
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        for from in 0..2 {
            if let Ok(body) = request(sb, from) {
                answered[1 - from] += 1;
                last[1 - from] = body.trim().to_string();
            }
        }
        if round % 5 == 4 || round + 1 == requests {
            print_table(sb, round + 1, answered, &last)?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let total: u32 = answered.iter().sum();
    let want = requests * 2;
    let counters = overlay_counters(sb)?;
    let sent = [0, 1].map(|i| counters[i].0 - base[i].0);
    if total != want || sent.contains(&0) {
        bail!(
            "only {total} of {want} requests were answered over the overlay (packets into it: node-a {}, node-b {})\n{}",
            sent[0],
            sent[1],
            logs(sb)
        );
    }
    Ok((answered, last, sent))
}

fn summary(
    sb: &Sandbox,
    net: &api::NetworkInfo,
    answered: [u32; 2],
    last: &[String; 2],
    sent: &[u64; 2],
) -> Result<()> {
    let total: u32 = answered.iter().sum();
    let own_address = (0..2).all(|i| {
        let peer = &sb.nodes[1 - i];
        peer.container
            .as_ref()
            .is_some_and(|c| last[i].contains(&format!("you are {}:", c.ip)))
    });
    println!(
        "all {total} requests answered across the two nodes, over the VXLAN overlay (VNI {}):",
        net.vni.unwrap_or(0)
    );
    println!(
        "  the eBPF datapath encapsulated {} packets on node-a and {} on node-b (overlay_tx), and decapsulated them on the other node (overlay_rx)",
        sent[0], sent[1]
    );
    if own_address {
        println!("  each container saw the other's own address (no NAT between the nodes)");
    }
    let mut all_up = true;
    for n in &sb.nodes {
        let view: Vec<api::NodeInfo> = n.client()?.get(paths::NODES)?;
        all_up &= view.len() == NODE_NAMES.len() && view.iter().all(|x| x.state == "up");
    }
    if all_up {
        println!("  each node sees both up in its node list (registered in etcd, renewed every few seconds)");
    }
    Ok(())
}

/// Debian's `etcd` (package etcd-server): in `PATH`, or `/usr/bin/etcd`.
fn find_etcd() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .context(
            "etcd is not installed: `tollgate demo --cluster` runs one etcd member (Debian package etcd-server; `cargo xtask setup` installs it)",
        )
}

fn build_topology(sb: &Sandbox) -> Result<()> {
    let underlay = netns::create_named(&sb.underlay)?;
    let mut paths = Vec::new();
    for n in &sb.nodes {
        paths.push(netns::create_named(&n.ns)?);
    }
    let nodes = paths.clone();
    netlink::with_handle_in(&underlay, move |h| async move {
        let lo = link::require_index(&h, "lo").await?;
        link::set_up(&h, lo).await?;
        let br = link::add_bridge(&h, "br0").await?;
        addr::add(&h, br, ETCD_IP, 24).await?;
        for (i, p) in nodes.iter().enumerate() {
            let port = format!("port{i}");
            link::add_veth(&h, &port, "up0", [None, None], &File::open(p)?).await?;
            let index = link::require_index(&h, &port).await?;
            link::set_controller(&h, index, br).await?;
        }
        Ok(())
    })?;
    for (i, p) in paths.iter().enumerate() {
        let ip = underlay_ip(i);
        netlink::with_handle_in(p, move |h| async move {
            let lo = link::require_index(&h, "lo").await?;
            link::set_up(&h, lo).await?;
            let up = link::require_index(&h, "up0").await?;
            addr::add(&h, up, ip, 24).await?;
            link::set_up(&h, up).await
        })?;
    }
    Ok(())
}

/// One etcd member in the underlay namespace (`ip netns exec`), its data in the demo's dir.
fn start_etcd(sb: &mut Sandbox, etcd: &Path) -> Result<()> {
    let log_path = sb.dir.join("etcd.log");
    let log = File::create(&log_path)?;
    let client = format!("http://{ETCD_IP}:{ETCD_PORT}");
    let peer = format!("http://{ETCD_IP}:{}", ETCD_PORT + 1);
    sb.etcd = Some(
        Command::new("ip")
            .args(["netns", "exec", &sb.underlay])
            .arg(etcd)
            .args(["--name", "demo", "--data-dir"])
            .arg(sb.dir.join("etcd"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("demo={peer}")])
            .args(["--initial-cluster-token", &sb.tag])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting etcd with `ip netns exec` (is iproute2 installed?)")?,
    );
    let underlay = netns::named_path(&sb.underlay);
    let start = Instant::now();
    loop {
        if let Some(st) = sb.etcd.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            bail!("etcd exited ({st}):\n{}", tail(&log_path, 15));
        }
        let health = netns::run_in(&underlay, etcd_health);
        if health.is_ok_and(|h| h) {
            return Ok(());
        }
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!(
                "etcd did not become healthy in 20 s:\n{}",
                tail(&log_path, 15)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether etcd's `/health` says `true` (a leader, a quorum).
fn etcd_health() -> Result<bool> {
    let addr = SocketAddrV4::new(ETCD_IP, ETCD_PORT);
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.contains(r#""health":"true""#))
}

/// Both daemons, started together, from this (the root) mount namespace with `--netns`.
fn start_daemons(sb: &mut Sandbox) -> Result<()> {
    let exe = std::env::current_exe()?;
    let cluster = format!("etcd://{ETCD_IP}:{ETCD_PORT}");
    for n in &mut sb.nodes {
        std::fs::create_dir_all(&n.dir)?;
        let log = File::create(n.log())?;
        let mut args = n.args("daemon");
        args.extend(
            [
                "--uplink",
                "up0",
                "--cluster",
                &cluster,
                "--node-name",
                n.name,
                "--node-ttl",
                NODE_TTL,
            ]
            .map(String::from),
        );
        n.daemon = Some(
            Command::new(&exe)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()?,
        );
    }
    let start = Instant::now();
    for n in &mut sb.nodes {
        loop {
            if n.client()?.get::<api::Status>(paths::STATUS).is_ok() {
                break;
            }
            if let Some(st) = n.daemon.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "the {} daemon exited ({st}):\n{}",
                    n.name,
                    tail(&n.log(), 20)
                );
            }
            if STOP.load(Ordering::SeqCst) {
                bail!("interrupted");
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the {} daemon did not come up:\n{}",
                    n.name,
                    tail(&n.log(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// A container on each node in the cluster network, each serving HTTP (`demo-serve`).
fn add_containers(sb: &mut Sandbox) -> Result<()> {
    let exe = std::env::current_exe()?;
    for (n, short) in sb.nodes.iter_mut().zip(SERVERS) {
        let c: api::ContainerInfo = n.client()?.post(
            paths::CONTAINERS,
            &api::ContainerCreate {
                name: format!("{}-{short}", sb.tag),
                netns: None,
                ip: None,
                network: Some(NETWORK.into()),
            },
        )?;
        n.server = Some(
            Command::new(&exe)
                .arg("demo-serve")
                .arg("--netns")
                .arg(&c.netns)
                .args(["--port", "80", "--name", short])
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()?,
        );
        println!(
            "  container {short} on {}: ip {} (netns {}), serving HTTP on :80",
            n.name,
            c.ip,
            c.netns.display()
        );
        n.container = Some(Container {
            short,
            ip: c.ip,
            netns: c.netns,
        });
    }
    Ok(())
}

/// One request from node `from`'s container to the other node's; the answer's body.
fn request(sb: &Sandbox, from: usize) -> Result<String> {
    let client = sb.nodes[from].container.as_ref().context("no container")?;
    let server = sb.nodes[1 - from]
        .container
        .as_ref()
        .context("no container")?;
    let ip = server.ip;
    netns::run_in(&client.netns, move || http_get(ip, 80))
}

/// (`overlay_tx`, `overlay_rx`) of each node.
fn overlay_counters(sb: &Sandbox) -> Result<Vec<(u64, u64)>> {
    sb.nodes
        .iter()
        .map(|n| {
            let st: api::Status = n.client()?.get(paths::STATUS)?;
            let c = |k: &str| st.counters.get(k).copied().unwrap_or(0);
            Ok((c("overlay_tx"), c("overlay_rx")))
        })
        .collect()
}

fn print_table(sb: &Sandbox, asked: u32, answered: [u32; 2], last: &[String; 2]) -> Result<()> {
    println!(
        "{:<7} {:<22} {:<18} {:>10} {:>10} {:>8}",
        "NODE", "NODE LIST (ITS VIEW)", "CONTAINERS", "OVERLAY_TX", "OVERLAY_RX", "ANSWERED"
    );
    for (i, n) in sb.nodes.iter().enumerate() {
        let c = n.client()?;
        let st: api::Status = c.get(paths::STATUS)?;
        let nodes: Vec<api::NodeInfo> = c.get(paths::NODES)?;
        let containers: Vec<api::ContainerInfo> = c.get(paths::CONTAINERS)?;
        let view: Vec<String> = nodes
            .iter()
            .map(|x| format!("{} {}", x.name, x.state))
            .collect();
        let prefix = format!("{}-", sb.tag);
        let cs: Vec<String> = containers
            .iter()
            .map(|x| {
                format!(
                    "{} {}",
                    x.name.strip_prefix(&prefix).unwrap_or(&x.name),
                    x.ip
                )
            })
            .collect();
        let k = |k: &str| st.counters.get(k).copied().unwrap_or(0);
        println!(
            "{:<7} {:<22} {:<18} {:>10} {:>10} {:>8}",
            n.name,
            view.join(", "),
            cs.join(", "),
            k("overlay_tx"),
            k("overlay_rx"),
            format!("{}/{asked}", answered[i])
        );
    }
    for (i, n) in sb.nodes.iter().enumerate() {
        let (Some(to), Some(from)) = (&n.container, &sb.nodes[1 - i].container) else {
            continue;
        };
        println!("  {} -> {}: {}", from.short, to.short, last[i]);
    }
    println!();
    Ok(())
}

/// Polls `f` every 100 ms until it holds, for up to `limit`.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    loop {
        if f().unwrap_or(false) {
            return Ok(());
        }
        if STOP.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The end of each daemon's log, for an error (the sandbox's directory goes on exit).
fn logs(sb: &Sandbox) -> String {
    sb.nodes
        .iter()
        .map(|n| format!("--- {} daemon log ---\n{}", n.name, tail(&n.log(), 15)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `n` lines of a log.
fn tail(path: &Path, n: usize) -> String {
    let l = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = l.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
