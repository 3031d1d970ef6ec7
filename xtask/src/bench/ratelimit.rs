//! `cargo xtask bench ratelimit [--secs N] [--reps N] [--no-build]`: per-container rate
//! limits, tollgate's policer against the two qdiscs that classic stacks use for the same
//! job, on the same topology built afresh for each:
//!
//! ```text
//!  client ns eth0 192.168.77.2 ──veth── up0 192.168.77.1  node ns  ──veth── eth0  container ns
//! ```
//! - `tollgate`: `tollgate daemon --netns NODE`, `container add`, `port add`, `limit set`
//!   (egress = container -> client via masquerade, ingress = client -> published port);
//! - `htb`: routed veth (no NAT), `htb default 10` + one class `rate R ceil R`;
//! - `tbf`: routed veth, `tbf rate R burst B latency 50ms` (what the CNI bandwidth plugin
//!   installs).
//!
//! The qdiscs go where a classic stack puts them: on the host veth's egress for the ingress
//! direction, on the container's eth0 egress for the egress direction (no ifb here). The
//! latter shapes at the sender's own device, where TCP Small Queues give it back-pressure: an
//! easier job than policing at the far end of the veth, which is all eBPF can do without
//! `sch_fq`. Every run is one iperf3 flow: TCP for `secs` (first second omitted), UDP offered
//! at twice the rate. Prints a Markdown table of the achieved rate as % of the limit
//! (median of the repetitions). Everything lives in namespaces this task creates.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Clone)]
pub struct RatelimitArgs {
    /// Seconds per iperf3 run (TCP runs omit one more second at the start).
    #[arg(long, default_value_t = 10)]
    pub secs: u32,
    /// Repetitions per cell (the table shows the median).
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// Skip setup and the build; use the existing target/release/tollgate.
    #[arg(long)]
    pub no_build: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tollgate,
    Htb,
    Tbf,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tollgate => "tollgate",
            Kind::Htb => "htb",
            Kind::Tbf => "tbf",
        }
    }
}

const RATES_MBIT: [u64; 3] = [10, 100, 1000];
const CLIENT_IP: &str = "192.168.77.2";
const UPLINK_IP: &str = "192.168.77.1";
/// Container address of the qdisc topologies (tollgate allocates its own).
const QDISC_CIP: &str = "10.77.0.2";
const PORT: u16 = 5201;

pub fn run(args: &RatelimitArgs) -> Result<()> {
    if !crate::is_root() {
        bail!("bench ratelimit needs root (network namespaces, qdiscs, eBPF)");
    }
    let bin = if args.no_build {
        crate::repo_root().join("target/release/tollgate")
    } else {
        crate::setup::run()?;
        crate::run_cmd(crate::cargo().args(["build", "--release", "-p", "tollgate"]))?;
        crate::repo_root().join("target/release/tollgate")
    };
    if !bin.is_file() {
        bail!("{} is missing (run `cargo xtask build`)", bin.display());
    }
    // (kind, rate, test) -> % of the limit for each rep.
    let tests = [
        "TCP egress",
        "TCP ingress",
        "UDP 2x egress",
        "UDP 2x ingress",
    ];
    let kinds = [Kind::Tollgate, Kind::Htb, Kind::Tbf];
    let mut cells: Vec<(Kind, u64, &str, Vec<f64>)> = Vec::new();
    for rep in 0..args.reps {
        for &kind in &kinds {
            for &mbit in &RATES_MBIT {
                let sb = Topo::new(kind, &bin, mbit)
                    .with_context(|| format!("{} sandbox at {mbit} mbit", kind.name()))?;
                for (i, t) in tests.iter().enumerate() {
                    let udp = i >= 2;
                    let egress = i % 2 == 0;
                    #[expect(
                        clippy::cast_precision_loss,
                        reason = "a rate in Mbit/s, exact in f64"
                    )]
                    let pct = sb.measure(egress, udp, args.secs)? / (mbit as f64 * 1e6) * 100.0;
                    eprintln!(
                        "rep {rep} {:8} {mbit:>4} mbit {t:14} {pct:6.1}%",
                        kind.name()
                    );
                    match cells
                        .iter_mut()
                        .find(|c| c.0 == kind && c.1 == mbit && c.2 == *t)
                    {
                        Some(c) => c.3.push(pct),
                        None => cells.push((kind, mbit, t, vec![pct])),
                    }
                }
            }
        }
    }
    println!("\n| limit | test | tollgate | HTB | TBF |\n|---|---|---|---|---|");
    for &mbit in &RATES_MBIT {
        for t in tests {
            let cell = |k: Kind| {
                cells
                    .iter()
                    .find(|c| c.0 == k && c.1 == mbit && c.2 == t)
                    .map(|c| {
                        let mut v = c.3.clone();
                        v.sort_by(f64::total_cmp);
                        let (lo, hi) = (v[0], v[v.len() - 1]);
                        format!("{:.1}% ({lo:.0}-{hi:.0})", v[v.len() / 2])
                    })
                    .unwrap_or_default()
            };
            println!(
                "| {mbit} mbit | {t} | {} | {} | {} |",
                cell(Kind::Tollgate),
                cell(Kind::Htb),
                cell(Kind::Tbf)
            );
        }
    }
    println!(
        "\nmedian % of the limit (min-max of {} runs); TCP: one flow, {} s after 1 s omitted; \
         UDP: offered at 2x for {} s, rate at the receiver.",
        args.reps, args.secs, args.secs
    );
    Ok(())
}

/// client ns <-> node ns <-> container ns, torn down on drop.
struct Topo {
    tag: String,
    kind: Kind,
    client: String,
    node: String,
    container_ns: String,
    /// The container's address as the client reaches it (published port for tollgate).
    target: String,
    dir: PathBuf,
    bpffs: PathBuf,
    bin: PathBuf,
    daemon: Option<Child>,
    mbit: u64,
}

fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns_sh(ns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["netns", "exec", ns, cmd];
    a.extend_from_slice(args);
    sh("ip", &a)
}

impl Topo {
    fn new(kind: Kind, bin: &Path, mbit: u64) -> Result<Self> {
        let tag = format!("tgrl{}{}", std::process::id(), &kind.name()[..2]);
        let dir = crate::repo_root().join("target/bench-run").join(&tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut t = Topo {
            client: format!("{tag}-c"),
            node: format!("{tag}-n"),
            container_ns: format!("{tag}-k"),
            target: QDISC_CIP.to_string(),
            bpffs: PathBuf::from(format!("/sys/fs/bpf/{tag}")),
            bin: bin.to_path_buf(),
            daemon: None,
            mbit,
            tag,
            kind,
            dir,
        };
        t.build(mbit)?;
        Ok(t)
    }

    fn build(&mut self, mbit: u64) -> Result<()> {
        let (c, n) = (self.client.clone(), self.node.clone());
        sh("ip", &["netns", "add", &c])?;
        sh("ip", &["netns", "add", &n])?;
        sh(
            "ip",
            &[
                "link", "add", "up0", "netns", &n, "type", "veth", "peer", "name", "eth0", "netns",
                &c,
            ],
        )?;
        sh(
            "ip",
            &[
                "-n",
                &n,
                "addr",
                "add",
                &format!("{UPLINK_IP}/24"),
                "dev",
                "up0",
            ],
        )?;
        sh(
            "ip",
            &[
                "-n",
                &c,
                "addr",
                "add",
                &format!("{CLIENT_IP}/24"),
                "dev",
                "eth0",
            ],
        )?;
        for (ns, dev) in [(&n, "up0"), (&c, "eth0"), (&n, "lo"), (&c, "lo")] {
            sh("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        sh(
            "ip",
            &["-n", &c, "route", "add", "default", "via", UPLINK_IP],
        )?;
        let rate = format!("{mbit}mbit");
        match self.kind {
            Kind::Tollgate => self.tollgate(&rate),
            Kind::Htb | Kind::Tbf => self.routed(&rate, mbit),
        }
    }

    fn tollgate(&mut self, rate: &str) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("daemon.log"))?;
        let sock = self.dir.join("tollgate.sock");
        self.daemon = Some(
            Command::new(&self.bin)
                .args(["daemon", "--uplink", "up0", "--netns", &self.node])
                .arg("--state-dir")
                .arg(self.dir.join("state"))
                .arg("--bpffs")
                .arg(&self.bpffs)
                .arg("--socket")
                .arg(&sock)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting tollgate daemon")?,
        );
        let start = Instant::now();
        while self.tg(&["status"]).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "tollgate daemon did not come up (see {})",
                    self.dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let name = format!("{}k", self.tag);
        self.tg(&["container", "add", &name])?;
        self.container_ns = format!("tg-{name}");
        self.target = UPLINK_IP.to_string();
        for spec in [format!("{PORT}:{PORT}"), format!("{PORT}:{PORT}/udp")] {
            self.tg(&["port", "add", &name, &spec])?;
        }
        self.tg(&["limit", "set", &name, "--egress", rate, "--ingress", rate])?;
        Ok(())
    }

    fn tg(&self, args: &[&str]) -> Result<String> {
        let sock = self.dir.join("tollgate.sock");
        let mut a = vec!["--socket", sock.to_str().unwrap()];
        a.extend_from_slice(args);
        sh(self.bin.to_str().unwrap(), &a)
    }

    fn routed(&mut self, rate: &str, mbit: u64) -> Result<()> {
        let (n, k) = (self.node.clone(), self.container_ns.clone());
        sh("ip", &["netns", "add", &k])?;
        sh(
            "ip",
            &[
                "link", "add", "vk0", "netns", &n, "type", "veth", "peer", "name", "eth0", "netns",
                &k,
            ],
        )?;
        sh(
            "ip",
            &["-n", &n, "addr", "add", "10.77.0.1/30", "dev", "vk0"],
        )?;
        sh(
            "ip",
            &[
                "-n",
                &k,
                "addr",
                "add",
                &format!("{QDISC_CIP}/30"),
                "dev",
                "eth0",
            ],
        )?;
        for (ns, dev) in [(&n, "vk0"), (&k, "eth0"), (&k, "lo")] {
            sh("ip", &["-n", ns, "link", "set", dev, "up"])?;
        }
        sh(
            "ip",
            &["-n", &k, "route", "add", "default", "via", "10.77.0.1"],
        )?;
        ns_sh(&n, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        // Ingress: the host veth's egress. Egress: the container's eth0 egress.
        for (ns, dev) in [(&n, "vk0"), (&k, "eth0")] {
            if self.kind == Kind::Htb {
                sh(
                    "tc",
                    &[
                        "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
                        "default", "10",
                    ],
                )?;
                sh(
                    "tc",
                    &[
                        "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:10",
                        "htb", "rate", rate, "ceil", rate,
                    ],
                )?;
            } else {
                // The CNI bandwidth plugin's shape: tbf with a burst and a 50 ms latency
                // bound; burst = 10 ms of the rate, at least 64 KiB.
                let burst = (mbit * 1_000_000 / 8 / 100).max(64 * 1024).to_string();
                sh(
                    "tc",
                    &[
                        "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst",
                        &burst, "latency", "50ms",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// One iperf3 flow; returns the rate at the receiver, bits/s.
    fn measure(&self, egress: bool, udp: bool, secs: u32) -> Result<f64> {
        let port = PORT.to_string();
        // Egress: server in the client ns, the container sends; ingress: the other way.
        let (srv_ns, cli_ns, dst) = if egress {
            (&self.client, &self.container_ns, CLIENT_IP)
        } else {
            (&self.container_ns, &self.client, self.target.as_str())
        };
        let mut srv = Command::new("ip")
            .args(["netns", "exec", srv_ns, "iperf3", "-s", "-1", "-p", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let res = (|| {
            let start = Instant::now();
            while !ns_sh(srv_ns, "ss", &["-Hltn"])?.contains(&format!(":{port} ")) {
                if start.elapsed() > Duration::from_secs(5) {
                    bail!("iperf3 server did not listen");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let secs_arg = secs.to_string();
            let mut args = vec!["-c", dst, "-p", &port, "-t", &secs_arg, "-J"];
            let udp_rate = format!("{}M", self.mbit * 2);
            if udp {
                args.extend(["-u", "-b", &udp_rate, "-l", "1400"]);
            } else {
                args.extend(["-O", "1"]);
            }
            let out = ns_sh(
                cli_ns,
                "timeout",
                &[&(secs + 20).to_string(), "iperf3"]
                    .iter()
                    .copied()
                    .chain(args)
                    .collect::<Vec<_>>(),
            )?;
            let json: serde_json::Value = serde_json::from_str(&out).context("iperf3 JSON")?;
            let end = &json["end"];
            if udp {
                let sum = &end["sum"];
                let lost = sum["lost_percent"].as_f64().unwrap_or(100.0);
                Ok(sum["bits_per_second"].as_f64().unwrap_or(0.0) * (100.0 - lost) / 100.0)
            } else {
                Ok(end["sum_received"]["bits_per_second"]
                    .as_f64()
                    .unwrap_or(0.0))
            }
        })();
        let _ = srv.kill();
        let _ = srv.wait();
        res
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(d.id().cast_signed(), libc::SIGTERM) };
            let _ = d.wait();
            let _ = Command::new(&self.bin)
                .args(["reset", "--netns", &self.node])
                .arg("--state-dir")
                .arg(self.dir.join("state"))
                .arg("--bpffs")
                .arg(&self.bpffs)
                .output();
        }
        for ns in [&self.client, &self.node, &self.container_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
