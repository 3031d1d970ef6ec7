//! `tollgate demo`: a self-contained sandbox. It makes a client namespace and a node namespace
//! joined by an uplink veth, starts a daemon with `--netns`, adds two containers serving HTTP,
//! publishes their port 80, has the client make requests through the port maps, and prints a
//! live table of what the datapath did. Everything is removed on exit (also on Ctrl-C).
//! `tollgate demo --cluster` is the cluster mode's sandbox (`demo/cluster.rs`).

mod cluster;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    api::{
        types::{self as api, path, paths},
        Client,
    },
    cli::DemoArgs,
    netlink::{self, addr, link, route},
    netns,
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const UPLINK_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 2);

struct Sandbox {
    tag: String,
    node: String,
    client: String,
    dir: PathBuf,
    bpffs: PathBuf,
    socket: PathBuf,
    children: Vec<Child>,
}

impl Sandbox {
    fn daemon_args(&self, cmd: &str) -> Vec<String> {
        let mut a = vec![
            "--socket".into(),
            self.socket.display().to_string(),
            cmd.into(),
        ];
        a.extend(["--netns".into(), self.node.clone()]);
        a.extend([
            "--state-dir".into(),
            self.dir.join("state").display().to_string(),
        ]);
        a.extend(["--bpffs".into(), self.bpffs.display().to_string()]);
        a
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(exe) = std::env::current_exe() {
            let _ = Command::new(exe).args(self.daemon_args("reset")).status();
        }
        for ns in [&self.node, &self.client] {
            let _ = netns::delete_named(&netns::named_path(ns));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("demo {}: cleaned up", self.tag);
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "the demo is one script, read top to bottom"
)]
pub fn run(a: &DemoArgs) -> Result<()> {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if a.cluster {
        return cluster::run(a);
    }
    let tag = format!("tgdemo-{}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir)?;
    let mut sb = Sandbox {
        node: format!("{tag}-node"),
        client: format!("{tag}-client"),
        bpffs: PathBuf::from(format!("/sys/fs/bpf/{tag}")),
        socket: dir.join("tollgate.sock"),
        dir,
        tag,
        children: Vec::new(),
    };
    println!(
        "demo {}: building the sandbox (client ns <-> node ns <-> containers)",
        sb.tag
    );
    build_topology(&sb)?;
    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(sb.dir.join("daemon.log"))?;
    let mut args = sb.daemon_args("daemon");
    args.extend(["--uplink".into(), "up0".into()]);
    sb.children.push(
        Command::new(&exe)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    wait_ready(&mut sb)?;

    let mut published = Vec::new();
    for (i, short) in ["web1", "web2"].iter().enumerate() {
        let name = format!("{}-{short}", sb.tag);
        let client = Client::new(&sb.socket)?;
        let c: api::ContainerInfo = client.post(
            paths::CONTAINERS,
            &api::ContainerCreate {
                name: name.clone(),
                netns: None,
                ip: None,
                network: None,
            },
        )?;
        let ns = c.netns.display().to_string();
        sb.children.push(
            Command::new(&exe)
                .args([
                    "demo-serve",
                    "--netns",
                    &ns,
                    "--port",
                    "80",
                    "--name",
                    short,
                ])
                .stdin(Stdio::null())
                .spawn()?,
        );
        let host_port = 8080 + u16::try_from(i)?;
        let _: Vec<api::PortMapInfo> = client.post(
            &path(paths::CONTAINER_PORTS, &name),
            &api::PortsAdd {
                specs: vec![format!("{host_port}:80").parse()?],
            },
        )?;
        println!(
            "  container {short}: ip {} (netns {ns}), published {UPLINK_IP}:{host_port} -> :80",
            c.ip
        );
        published.push((short.to_string(), host_port));
    }
    println!("  client {CLIENT_IP} requests http://{UPLINK_IP}:8080/ and :8081/ (no iptables rule anywhere)\n");

    let client_ns = netns::named_path(&sb.client);
    let mut ok = vec![0u32; published.len()];
    let mut last_body = vec![String::new(); published.len()];
    for round in 0..a.requests {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        for (i, (_, port)) in published.iter().enumerate() {
            let port = *port;
            let r = netns::run_in(&client_ns, move || http_get(UPLINK_IP, port));
            if let Ok(body) = r {
                ok[i] += 1;
                last_body[i] = body.trim().to_string();
            }
        }
        if round % 5 == 4 || round + 1 == a.requests {
            print_table(&sb, &published, &ok, &last_body)?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let total: u32 = ok.iter().sum();
    let want = a.requests * u32::try_from(published.len())?;
    if total != want {
        bail!(
            "only {total} of {want} requests succeeded (daemon log: {})",
            sb.dir.join("daemon.log").display()
        );
    }
    println!("\nall {total} requests answered through eBPF port maps; the containers saw the client's own address.");
    Ok(())
}

fn print_table(
    sb: &Sandbox,
    published: &[(String, u16)],
    ok: &[u32],
    body: &[String],
) -> Result<()> {
    let client = Client::new(&sb.socket)?;
    let st: api::Status = client.get(paths::STATUS)?;
    let ct: Vec<api::ConntrackEntry> = client.get(paths::CONNTRACK)?;
    println!("{:<6} {:<22} {:>8}  LAST ANSWER", "NAME", "PUBLISHED", "OK");
    for (i, (name, port)) in published.iter().enumerate() {
        println!(
            "{:<6} {:<22} {:>8}  {}",
            name,
            format!("{UPLINK_IP}:{port}/tcp"),
            ok[i],
            body[i]
        );
    }
    let n = |k: &str| st.counters.get(k).copied().unwrap_or(0);
    println!(
        "datapath: dnat_uplink={} revnat={} conntrack_entries={} port_maps={}\n",
        n("dnat_uplink"),
        n("revnat"),
        ct.len(),
        st.maps.get("TG_PORTMAP").map_or(0, |m| m.entries)
    );
    Ok(())
}

fn build_topology(sb: &Sandbox) -> Result<()> {
    let node = netns::create_named(&sb.node)?;
    let client = netns::create_named(&sb.client)?;
    netlink::with_handle_in(&node, move |h| async move {
        let f = std::fs::File::open(&client)?;
        link::add_veth(&h, "up0", "eth0", [None, None], &f).await?;
        let up = link::require_index(&h, "up0").await?;
        addr::add(&h, up, UPLINK_IP, 24).await?;
        link::set_up(&h, up).await
    })?;
    netlink::with_handle_in(&netns::named_path(&sb.client), |h| async move {
        let lo = link::require_index(&h, "lo").await?;
        link::set_up(&h, lo).await?;
        let eth = link::require_index(&h, "eth0").await?;
        addr::add(&h, eth, CLIENT_IP, 24).await?;
        link::set_up(&h, eth).await?;
        route::add_default_v4(&h, UPLINK_IP).await
    })
}

fn wait_ready(sb: &mut Sandbox) -> Result<()> {
    let start = Instant::now();
    loop {
        if Client::new(&sb.socket)?
            .get::<api::Status>(paths::STATUS)
            .is_ok()
        {
            return Ok(());
        }
        if let Some(st) = sb.children[0].try_wait()? {
            let log = std::fs::read_to_string(sb.dir.join("daemon.log")).unwrap_or_default();
            bail!("the demo daemon exited ({st}):\n{log}");
        }
        if start.elapsed() > Duration::from_secs(30) || STOP.load(Ordering::SeqCst) {
            bail!("the demo daemon did not come up");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http_get(ip: Ipv4Addr, port: u16) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    // One write, one segment (`write!` on the stream would send each piece on its own).
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n").as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    if !head.starts_with("HTTP/1.0 200") {
        bail!("HTTP answer {head}");
    }
    Ok(body.to_string())
}

/// The demo's HTTP server: enters `netns` and answers every GET with who it is and who asked.
pub fn serve(netns_path: &Path, port: u16, name: &str) -> Result<()> {
    netns::enter(netns_path)?;
    let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding :{port}"))?;
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        let peer = c.peer_addr().map(|p| p.to_string()).unwrap_or_default();
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        // Read the whole request head: closing with unread data would send a RST instead of
        // our answer.
        let mut r = BufReader::new(&c);
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let body = format!("hello from {name}, you are {peer}\n");
        let answer = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = c.write_all(answer.as_bytes());
    }
    Ok(())
}
