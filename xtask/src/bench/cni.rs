//! `cargo xtask bench cni`: podman on Tollgate (through `tollgate-cni`) against podman on its
//! standard network, `bridge` + `host-local` + `portmap` (iptables), side by side in one run:
//! the same sandbox, the same podman, the same image, the same node.
//!
//! ```text
//!  client ns  eth0 192.168.77.2 ──veth── up0 192.168.77.1  node ns   tollgate daemon --netns,
//!             eth1 192.168.78.2 ──veth── up1 192.168.78.1            --uplink up0
//!                                         ┌ runtime ns (mount + PID, in the node netns) ┐
//!                                         │ podman 4.3, CNI networks `tgnet` and `podbr` │
//!                                         └───────────────────────────────────────────────┘
//! ```
//!
//! Each network has its own uplink so that neither datapath sees the other's packets: Tollgate
//! attaches to `up0` only, the bridge network's traffic comes in through `up1`. The bridge
//! network's iptables rules stay in the node while Tollgate is measured; Tollgate's packets
//! are redirected at TC ingress, before netfilter.
//!
//! Measured, for each network, interleaving the networks (the order alternates per
//! repetition):
//! 1. `podman run -d --init -p HOSTPORT:80 --network NET IMAGE /bin/busybox httpd ...` until
//!    the first HTTP answer reaches the client namespace through uplink:HOSTPORT (a thread in
//!    the client namespace polls: a connect attempt every 5 ms), and until `podman run -d`
//!    returns; the container is removed after each run (not timed);
//! 2. new connections/s (`bench-load --kind crr`, 4 threads) and request/response/s (`rr`,
//!    unpinned, then with the client and the echo server pinned to the last CPU) through the
//!    published port of one container running the bench's echo server;
//! 3. the same with `--others` other containers per network each publishing
//!    `--ports-per-other` ports (started interleaved, each `podman run -d` timed), the
//!    measured echo container started after them, then (1) again.
//!
//! Writes results.md and results.json to --out (default target/bench/cni); `--docs` puts the
//! table into docs/benchmarks.md between `<!-- bench-cni:begin -->` and
//! `<!-- bench-cni:end -->`.

mod runtime;

use std::{
    fmt::Write as _,
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use super::{
    catch_signals, check_interrupted, cpu_model, interrupted,
    report::{num, stats, Stats, NOISY_SPREAD},
    sandbox::{self, in_ns, ip, self_exe, Sandbox, UPLINK_IP},
    tools::LoadResult,
    workloads::run_timeout,
    Mode,
};
use crate::{build, is_root, repo_root, setup};
use runtime::{Podman, RuntimeNs};

#[derive(Args, Clone, Default)]
pub struct CniArgs {
    /// Smoke run: --runs 3 --loaded-runs 2 --others 5 --ports-per-other 2 --secs 1 --reps 2
    /// (flags given explicitly still win).
    #[arg(long)]
    pub quick: bool,
    /// Container starts timed per network, with no other container (default 20).
    #[arg(long, value_name = "N")]
    pub runs: Option<u32>,
    /// Container starts timed per network with the other containers running (default 5).
    #[arg(long, value_name = "N")]
    pub loaded_runs: Option<u32>,
    /// Other containers per network for the loaded measurements (default 100).
    #[arg(long, value_name = "N")]
    pub others: Option<u32>,
    /// Published ports of each other container (default 10).
    #[arg(long, value_name = "N")]
    pub ports_per_other: Option<u32>,
    /// Seconds per load measurement, crr and rr (default 3).
    #[arg(long, value_name = "S")]
    pub secs: Option<f64>,
    /// Repetitions of each load measurement (default 5).
    #[arg(long, value_name = "N")]
    pub reps: Option<u32>,
    /// Skip setup and the build; use the existing target/release/tollgate and tollgate-cni.
    #[arg(long)]
    pub no_build: bool,
    /// Where results.md and results.json go (default: target/bench/cni).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also write the table into docs/benchmarks.md (between its bench-cni markers).
    #[arg(long)]
    pub docs: bool,
}

/// The two networks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Net {
    Bridge,
    Tollgate,
}

impl Net {
    const ALL: [Net; 2] = [Net::Bridge, Net::Tollgate];

    fn name(self) -> &'static str {
        match self {
            Net::Bridge => "bridge",
            Net::Tollgate => "tollgate",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Net::Bridge => "bridge+portmap",
            Net::Tollgate => "tollgate",
        }
    }

    fn idx(self) -> usize {
        match self {
            Net::Bridge => 0,
            Net::Tollgate => 1,
        }
    }

    /// The podman network (CNI config name).
    fn network(self) -> &'static str {
        match self {
            Net::Bridge => "podbr",
            Net::Tollgate => "tgnet",
        }
    }

    /// The node address the client reaches this network's published ports on.
    fn uplink_ip(self) -> Ipv4Addr {
        match self {
            Net::Bridge => UPLINK2_IP,
            Net::Tollgate => UPLINK_IP,
        }
    }

    /// Host port of the echo container (load measurements).
    fn echo_port(self) -> u16 {
        8080 + u16::try_from(self.idx()).unwrap_or(0)
    }

    /// Port of the echo server in the container (one per network, so that its process is
    /// found by its command line).
    fn echo_cport(self) -> u16 {
        80 + u16::try_from(self.idx()).unwrap_or(0)
    }

    /// Host port of the containers whose start is timed.
    fn start_port(self) -> u16 {
        8090 + u16::try_from(self.idx()).unwrap_or(0)
    }

    /// First host port of the other containers (up to `PORTS_PER_NET` of them).
    fn others_base(self) -> u32 {
        10_000 + 10_000 * u32::try_from(self.idx()).unwrap_or(0)
    }

    /// Networks in the order of repetition `rep` (alternating).
    fn order(rep: u32) -> [Net; 2] {
        if rep.is_multiple_of(2) {
            [Net::Bridge, Net::Tollgate]
        } else {
            [Net::Tollgate, Net::Bridge]
        }
    }
}

/// The second uplink (the bridge network's) and the client's side of it.
const UPLINK2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 1);
const CLIENT2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 2);
/// The bridge network's subnet (host-local) and bridge device.
const BRIDGE_SUBNET: &str = "10.89.0.0/24";
const BRIDGE_DEV: &str = "tgbr0";
/// Host ports each network's other containers may use (10000-19999, 20000-29999: below the
/// sandbox's ephemeral range, 32768-65000).
const PORTS_PER_NET: u32 = 10_000;
/// Containers each network can hold: Tollgate's /22 pool in /30s and the bridge's /24, less
/// the echo and the timed containers.
const MAX_OTHERS: u32 = 250;
const IMAGE: &str = "localhost/tg-bench";
/// Where the bench tools (this crate's release binary) sit in the image.
const IMAGE_TOOLS: &str = "/bench/xtask";
/// Load generator threads for crr (as the main bench).
const CRR_THREADS: usize = 4;
/// Pause between two connect attempts of the start probe.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// Limit of one connect attempt of the start probe (a refused connect returns at once).
const PROBE_CONNECT: Duration = Duration::from_millis(20);
/// Limit of one container start (podman, then the first answer).
const START_LIMIT: Duration = Duration::from_mins(1);

struct Plan {
    runs: u32,
    loaded_runs: u32,
    others: u32,
    ports: u32,
    secs: f64,
    reps: u32,
}

impl Plan {
    fn new(a: &CniArgs) -> Result<Self> {
        let q = a.quick;
        let p = Plan {
            runs: a.runs.unwrap_or(if q { 3 } else { 20 }),
            loaded_runs: a.loaded_runs.unwrap_or(if q { 2 } else { 5 }),
            others: a.others.unwrap_or(if q { 5 } else { 100 }),
            ports: a.ports_per_other.unwrap_or(if q { 2 } else { 10 }),
            secs: a.secs.unwrap_or(if q { 1.0 } else { 3.0 }),
            reps: a.reps.unwrap_or(if q { 2 } else { 5 }),
        };
        if p.runs == 0 || p.reps == 0 || p.secs <= 0.0 {
            bail!("--runs, --reps and --secs must be above 0");
        }
        if p.others > MAX_OTHERS {
            bail!(
                "--others {} is above {MAX_OTHERS} (the networks' address space)",
                p.others
            );
        }
        if p.ports == 0 || p.others * p.ports > PORTS_PER_NET {
            bail!(
                "--others x --ports-per-other must be between 1 and {PORTS_PER_NET} ports per network"
            );
        }
        Ok(p)
    }
}

/// One row of the table: samples per network.
struct Row {
    id: String,
    label: String,
    unit: &'static str,
    higher_is_better: bool,
    samples: [Vec<f64>; 2],
    errors: [Option<String>; 2],
}

impl Row {
    fn stats(&self, net: Net) -> Option<Stats> {
        stats(&self.samples[net.idx()])
    }

    /// Tollgate's median over the bridge's.
    fn ratio(&self) -> Option<f64> {
        let (t, b) = (self.stats(Net::Tollgate)?, self.stats(Net::Bridge)?);
        (b.median != 0.0).then(|| t.median / b.median)
    }

    fn noisy(&self) -> bool {
        Net::ALL
            .iter()
            .any(|n| self.stats(*n).is_some_and(|s| s.noisy()))
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    meta: Vec<(String, String)>,
    notes: Vec<String>,
}

impl Report {
    fn define(&mut self, id: &str, label: String, unit: &'static str, higher: bool) {
        self.rows.push(Row {
            id: id.into(),
            label,
            unit,
            higher_is_better: higher,
            samples: [Vec::new(), Vec::new()],
            errors: [None, None],
        });
    }

    fn row(&mut self, id: &str) -> &mut Row {
        self.rows
            .iter_mut()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("row {id} not defined"))
    }

    fn samples(&self, id: &str, net: Net) -> &[f64] {
        self.rows
            .iter()
            .find(|r| r.id == id)
            .map_or(&[], |r| &r.samples[net.idx()])
    }

    fn record(&mut self, id: &str, net: Net, v: f64) {
        self.row(id).samples[net.idx()].push(v);
    }

    fn fail(&mut self, id: &str, net: Net, e: &anyhow::Error) {
        self.row(id).errors[net.idx()].get_or_insert_with(|| format!("{e:#}"));
    }

    fn meta(&mut self, k: &str, v: impl Into<String>) {
        self.meta.push((k.into(), v.into()));
    }

    /// Cells without numbers, with why.
    fn missing(&self) -> Vec<String> {
        let mut v = Vec::new();
        for r in &self.rows {
            for n in Net::ALL {
                if r.stats(n).is_none() {
                    let why = r.errors[n.idx()].as_deref().unwrap_or("no sample");
                    v.push(format!("{} / {}: {why}", r.id, n.name()));
                }
            }
        }
        v
    }

    fn markdown(&self) -> String {
        let mut s = format!(
            "| metric | unit | better | {} | {} | tollgate ÷ bridge |\n\
             |---|---|---|---:|---:|---:|\n",
            Net::Bridge.title(),
            Net::Tollgate.title()
        );
        for r in &self.rows {
            let flag = if r.noisy() { " ⚠" } else { "" };
            let better = if r.higher_is_better {
                "higher"
            } else {
                "lower"
            };
            let _ = write!(s, "| {}{flag} | {} | {better} |", r.label, r.unit);
            for n in Net::ALL {
                let cell = match r.stats(n) {
                    Some(st) if st.n > 1 => {
                        let mark = if st.noisy() { " ⚠" } else { "" };
                        format!("{} ({}–{}){mark}", num(st.median), num(st.min), num(st.max))
                    }
                    Some(st) => num(st.median),
                    None if r.errors[n.idx()].is_some() => "failed".into(),
                    None => "–".into(),
                };
                let _ = write!(s, " {cell} |");
            }
            let ratio = r.ratio().map_or_else(|| "–".into(), |x| format!("{x:.2}×"));
            let _ = writeln!(s, " {ratio} |");
        }
        let _ = writeln!(
            s,
            "\nMedian (min–max). The ratio is tollgate's median over bridge+portmap's: above 1 \
             is better for tollgate in a \"higher\" row, below 1 in a \"lower\" row."
        );
        if self.rows.iter().any(Row::noisy) {
            let _ = writeln!(
                s,
                "\n⚠ min–max spread over {:.0}% of the median (in the cells marked): the row's \
                 difference between the networks is within its noise and carries no claim.",
                NOISY_SPREAD * 100.0
            );
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        let errs: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| {
                Net::ALL.iter().filter_map(move |n| {
                    r.errors[n.idx()]
                        .as_ref()
                        .map(|e| format!("- {} / {}: {e}", r.id, n.name()))
                })
            })
            .collect();
        if !errs.is_empty() {
            let _ = writeln!(s, "\nFailures:\n{}", errs.join("\n"));
        }
        s
    }

    fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut nets = serde_json::Map::new();
                for n in Net::ALL {
                    let Some(st) = r.stats(n) else { continue };
                    nets.insert(
                        n.name().into(),
                        json!({
                            "median": st.median,
                            "min": st.min,
                            "max": st.max,
                            "samples": r.samples[n.idx()],
                            "spread": st.spread(),
                            "noisy": st.noisy(),
                        }),
                    );
                }
                let errors: serde_json::Map<String, Value> = Net::ALL
                    .iter()
                    .filter_map(|n| {
                        r.errors[n.idx()]
                            .as_ref()
                            .map(|e| (n.name().to_string(), Value::from(e.as_str())))
                    })
                    .collect();
                json!({
                    "id": r.id,
                    "label": r.label,
                    "unit": r.unit,
                    "higher_is_better": r.higher_is_better,
                    "noisy": r.noisy(),
                    "networks": nets,
                    "ratio_tollgate_to_bridge": r.ratio(),
                    "errors": errors,
                })
            })
            .collect();
        let meta: serde_json::Map<String, Value> = self
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        json!({ "meta": meta, "notes": self.notes, "metrics": rows })
    }
}

pub fn run(args: &CniArgs) -> Result<()> {
    if !is_root() {
        bail!("bench cni needs root (network namespaces, eBPF, podman)");
    }
    let plan = Plan::new(args)?;
    let bin = if args.no_build {
        build::binary_path(false)
    } else {
        setup::run().context("setup failed")?;
        build::build(false)?
    };
    let plugin = build::cni_path(false);
    for b in [&bin, &plugin] {
        if !b.is_file() {
            bail!("{} is missing (run `cargo xtask build`)", b.display());
        }
    }
    // The echo server (in the image) and the load generator are this crate's code: optimized.
    crate::run_cmd(crate::cargo().args(["build", "--quiet", "--release", "-p", "xtask"]))
        .context("building the bench tools (xtask, release)")?;
    sandbox::set_tools_exe(repo_root().join("target").join("release").join("xtask"));
    catch_signals();

    let t0 = Instant::now();
    let mut report = Report::default();
    machine_meta(&mut report, args, &plan);
    define_rows(&mut report, &plan);
    bench(&mut report, &plan, &bin, &plugin)?;
    report.meta("duration", format!("{:.0} s", t0.elapsed().as_secs_f64()));

    let out = args
        .out
        .clone()
        .unwrap_or_else(|| repo_root().join("target").join("bench").join("cni"));
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let md = report.markdown();
    let mut meta = String::new();
    for (k, v) in &report.meta {
        let _ = writeln!(meta, "- {k}: {v}");
    }
    fs::write(out.join("results.md"), format!("{meta}\n{md}"))?;
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&report.json())? + "\n",
    )?;
    println!("\n{meta}\n{md}");
    println!("bench cni: results in {}", out.display());
    if args.docs {
        update_docs(&meta, &md)?;
    }
    let missing = report.missing();
    if !missing.is_empty() {
        bail!(
            "{} measurement(s) produced no numbers:\n  {}",
            missing.len(),
            missing.join("\n  ")
        );
    }
    Ok(())
}

const DOCS_BEGIN: &str = "<!-- bench-cni:begin -->";
const DOCS_END: &str = "<!-- bench-cni:end -->";

fn update_docs(meta: &str, md: &str) -> Result<()> {
    let path = repo_root().join("docs").join("benchmarks.md");
    let doc = fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let (Some(b), Some(e)) = (doc.find(DOCS_BEGIN), doc.find(DOCS_END)) else {
        bail!(
            "{} has no {DOCS_BEGIN} ... {DOCS_END} markers",
            path.display()
        );
    };
    let new = format!("{}{DOCS_BEGIN}\n{meta}\n{md}\n{}", &doc[..b], &doc[e..]);
    fs::write(&path, new)?;
    println!("bench cni: updated {}", path.display());
    Ok(())
}

fn define_rows(r: &mut Report, p: &Plan) {
    let others = format!(
        "{} other containers per network, {} ports each",
        p.others, p.ports
    );
    r.define(
        "start",
        "`podman run -d` until the first HTTP answer at the client, no other container".into(),
        "ms",
        false,
    );
    r.define(
        "start_return",
        "`podman run -d` returns, no other container".into(),
        "ms",
        false,
    );
    r.define(
        "crr",
        format!(
            "new connections/s through the published port ({CRR_THREADS} threads), 1 container"
        ),
        "connections/s",
        true,
    );
    r.define(
        "rr",
        "1-byte request/response/s, 1 connection, 1 container".into(),
        "transactions/s",
        true,
    );
    r.define(
        "rr_pin",
        "1-byte request/response/s, client and echo server pinned to one CPU, 1 container".into(),
        "transactions/s",
        true,
    );
    r.define(
        "others_start",
        format!("`podman run -d` of each of the {others} (returns)"),
        "ms",
        false,
    );
    r.define(
        "crr_others",
        format!("new connections/s ({CRR_THREADS} threads), {others}"),
        "connections/s",
        true,
    );
    r.define(
        "rr_others",
        format!("1-byte request/response/s, {others}"),
        "transactions/s",
        true,
    );
    r.define(
        "rr_pin_others",
        format!("1-byte request/response/s, pinned to one CPU, {others}"),
        "transactions/s",
        true,
    );
    r.define(
        "start_others",
        format!("`podman run -d` until the first HTTP answer, {others}"),
        "ms",
        false,
    );
    r.define(
        "start_return_others",
        format!("`podman run -d` returns, {others}"),
        "ms",
        false,
    );
}

fn machine_meta(r: &mut Report, a: &CniArgs, p: &Plan) {
    let first = |path: &str, key: &str| {
        fs::read_to_string(path).ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
    };
    let cores = thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem = first("/proc/meminfo", "MemTotal").unwrap_or_default();
    let mut cmd = String::from("cargo xtask bench cni");
    if a.quick {
        cmd.push_str(" --quick");
    }
    for (flag, v) in [
        ("--runs", a.runs.map(|x| x.to_string())),
        ("--loaded-runs", a.loaded_runs.map(|x| x.to_string())),
        ("--others", a.others.map(|x| x.to_string())),
        (
            "--ports-per-other",
            a.ports_per_other.map(|x| x.to_string()),
        ),
        ("--secs", a.secs.map(|x| x.to_string())),
        ("--reps", a.reps.map(|x| x.to_string())),
    ] {
        if let Some(v) = v {
            let _ = write!(cmd, " {flag} {v}");
        }
    }
    let version = |c: &mut Command| {
        crate::output_of(c)
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_default()
    };
    r.meta("command", format!("`{cmd}`"));
    r.meta(
        "machine",
        format!("{cores} cores ({}), {mem}", cpu_model(&first)),
    );
    r.meta(
        "kernel",
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
    );
    r.meta("podman", version(Command::new("podman").arg("--version")));
    r.meta("crun", version(Command::new("crun").arg("--version")));
    r.meta(
        "CNI plugins",
        format!(
            "containernetworking-plugins {}",
            version(Command::new("dpkg-query").args([
                "-W",
                "-f",
                "${Version}",
                "containernetworking-plugins"
            ]))
        ),
    );
    r.meta("iptables", version(Command::new("iptables").arg("-V")));
    r.meta(
        "plan",
        format!(
            "{} timed starts per network alone, {} with the others; load {} s x {} repetitions",
            p.runs, p.loaded_runs, p.secs, p.reps
        ),
    );
    r.meta(
        "load averages at start",
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
}

/// The sandbox, the runtime namespace, podman with both networks and the image.
struct Env<'a> {
    sb: &'a Sandbox,
    rt: &'a RuntimeNs,
    podman: Podman<'a>,
    log: PathBuf,
}

fn bench(report: &mut Report, plan: &Plan, bin: &Path, plugin: &Path) -> Result<()> {
    let t = Instant::now();
    let sb = Sandbox::bare(Mode::Tollgate, bin, "cni")?;
    second_uplink(&sb).context("adding the bridge network's uplink")?;
    let cni = sb.dir.join("cni");
    let (conf, plugins) = (cni.join("net.d"), cni.join("bin"));
    runtime::cni_bin_dir(&plugins, "tollgate", plugin)?;
    runtime::write_conflist(
        &conf,
        Net::Tollgate.network(),
        &runtime::tollgate_conflist(Net::Tollgate.network(), &sb.socket),
    )?;
    runtime::write_conflist(
        &conf,
        Net::Bridge.network(),
        &runtime::bridge_conflist(Net::Bridge.network(), BRIDGE_DEV, BRIDGE_SUBNET),
    )?;
    check_interrupted()?;
    let rt = RuntimeNs::new(&sb.node, &sb.dir.join("rt"))?;
    let podman = Podman::new(&rt, &conf, &plugins)?;
    podman.import_image(IMAGE, &[(&self_exe(), IMAGE_TOOLS)])?;
    let env = Env {
        sb: &sb,
        rt: &rt,
        podman,
        log: sb.dir.join("podman-run.log"),
    };
    println!(
        "bench cni: sandbox, runtime namespace and image ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // One start per network first, not recorded: the first container pays for cold caches
    // (the image's layer, podman's database, the bridge device).
    for net in Net::ALL {
        check_interrupted()?;
        env.start(net, "warmup")
            .with_context(|| format!("warm-up start on {}", net.name()))?;
    }

    // 1. Starts alone.
    env.starts(report, plan.runs, "start", "start_return", "")?;

    // 2. Load, one container.
    for net in Net::ALL {
        env.echo(net)?;
    }
    env.loads(report, plan, ["crr", "rr", "rr_pin"])?;

    // 3. The others, then the load and the starts again.
    for net in Net::ALL {
        env.podman.ok(&["rm", "-f", "-t", "0", &echo_name(net)])?;
    }
    match env.others(report, plan) {
        Ok(()) => {
            report.meta(&format!("with the {} others", plan.others), env.footprint());
            env.loads(report, plan, ["crr_others", "rr_others", "rr_pin_others"])?;
            env.starts(
                report,
                plan.loaded_runs,
                "start_others",
                "start_return_others",
                "o",
            )?;
        }
        Err(e) => {
            check_interrupted()?;
            println!("bench cni: starting the other containers FAILED: {e:#}");
            for id in [
                "crr_others",
                "rr_others",
                "rr_pin_others",
                "start_others",
                "start_return_others",
            ] {
                for net in Net::ALL {
                    report.fail(id, net, &e);
                }
            }
        }
    }
    report.notes.push(format!(
        "The bridge network's `portmap` chains in the node after the run: {}",
        env.chain_order()
    ));
    report.notes.push(answer_gaps(report));
    if let Some(growth) = others_growth(report) {
        report.notes.push(growth);
    }
    // Teardown: killing the runtime namespace takes every container along (no CNI DEL:
    // the daemon's reset and the node namespace's deletion clean up behind them).
    let t = Instant::now();
    drop(env);
    drop(rt);
    drop(sb);
    println!("bench cni: torn down in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// How long after `podman run -d` returned the first answer came, at most (negative: before).
fn answer_gaps(report: &Report) -> String {
    let mut parts = Vec::new();
    for net in Net::ALL {
        let gaps: Vec<f64> = [
            ("start", "start_return"),
            ("start_others", "start_return_others"),
        ]
        .iter()
        .flat_map(|(a, r)| {
            report
                .samples(a, net)
                .iter()
                .zip(report.samples(r, net))
                .map(|(a, r)| a - r)
        })
        .collect();
        if let Some(st) = stats(&gaps) {
            parts.push(format!(
                "{} {} ms (median {} ms)",
                net.title(),
                num(st.max),
                num(st.median)
            ));
        }
    }
    format!(
        "First answer after `podman run -d` returned, at most: {} (the answer can come before \
         podman returns; the probe's resolution is ~5 ms).",
        parts.join(", ")
    )
}

/// How `podman run -d` of the others changed as they piled up: the median of the first ten
/// and of the last ten, per network (with 20 others or more).
fn others_growth(report: &Report) -> Option<String> {
    let parts: Vec<String> = Net::ALL
        .iter()
        .filter_map(|&net| {
            let s = report.samples("others_start", net);
            if s.len() < 20 {
                return None;
            }
            let (first, last) = (stats(&s[..10])?, stats(&s[s.len() - 10..])?);
            Some(format!(
                "{} {} → {} ms",
                net.title(),
                num(first.median),
                num(last.median)
            ))
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "`podman run -d` of the others, median of the first ten → of the last ten: {} \
             (much of that row's spread is this growth).",
            parts.join(", ")
        )
    })
}

/// `up1` in the node (192.168.78.1/24) and `eth1` in the client (192.168.78.2/24): the
/// bridge network's way in, which Tollgate does not attach to.
fn second_uplink(sb: &Sandbox) -> Result<()> {
    let (n, c) = (sb.node.as_str(), sb.client.as_str());
    ip(&[
        "link", "add", "up1", "netns", n, "type", "veth", "peer", "name", "eth1", "netns", c,
    ])?;
    ip(&[
        "-n",
        n,
        "addr",
        "add",
        &format!("{UPLINK2_IP}/24"),
        "dev",
        "up1",
    ])?;
    ip(&[
        "-n",
        c,
        "addr",
        "add",
        &format!("{CLIENT2_IP}/24"),
        "dev",
        "eth1",
    ])?;
    ip(&["-n", n, "link", "set", "up1", "up"])?;
    ip(&["-n", c, "link", "set", "eth1", "up"])?;
    Ok(())
}

fn echo_name(net: Net) -> String {
    format!("{}-echo", net.name())
}

impl Env<'_> {
    /// Runs `podman ARGS` and returns how long it took, until it exited (ms); stderr goes to
    /// the log and into the error.
    fn podman_timed(&self, args: &[&str]) -> Result<(f64, Instant)> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let from = log.metadata()?.len();
        let mut cmd = self.podman.command(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let (tx, rx) = mpsc::channel();
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("spawning podman")?;
        let pid = child.id().cast_signed();
        thread::spawn(move || {
            let st = child.wait();
            let _ = tx.send((st, Instant::now()));
        });
        let (st, end) = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => break r,
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("podman waiter vanished"),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if interrupted() || t0.elapsed() > START_LIMIT {
                // SAFETY: kill(2) of our child, not reaped yet (its waiter has not returned).
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = rx.recv_timeout(Duration::from_secs(5));
                check_interrupted()?;
                bail!(
                    "`podman {}` did not finish in {START_LIMIT:?}",
                    args.join(" ")
                );
            }
        };
        let st = st?;
        if !st.success() {
            let mut err = String::new();
            if let Ok(mut f) = fs::File::open(&self.log) {
                let mut all = String::new();
                let _ = f.read_to_string(&mut all);
                err = all
                    .get(usize::try_from(from).unwrap_or(0)..)
                    .unwrap_or_default()
                    .trim()
                    .to_string();
            }
            bail!("`podman {}` failed ({st}): {err}", args.join(" "));
        }
        Ok((ms(end - t0), t0))
    }

    /// One timed start of an httpd container on `net` (published on the network's start
    /// port), removed afterwards: (ms until the first HTTP answer, ms until `podman run -d`
    /// returned).
    fn start(&self, net: Net, name: &str) -> Result<(f64, f64)> {
        let name = format!("{}-{name}", net.name());
        let port = net.start_port();
        let target = SocketAddrV4::new(net.uplink_ip(), port);
        let publish = format!("{port}:80");
        let args = [
            "run",
            "-d",
            "--init",
            "--name",
            &name,
            "-p",
            &publish,
            "--network",
            net.network(),
            IMAGE,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ];
        let stop = AtomicBool::new(false);
        let (ready_tx, ready_rx) = mpsc::channel();
        let res = thread::scope(|s| {
            let probe = s.spawn(|| {
                in_netns(&self.sb.client, || {
                    let _ = ready_tx.send(());
                    probe_http(target, &stop)
                })
            });
            if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                stop.store(true, Ordering::Relaxed);
                let why = probe.join().map_or_else(
                    |_| "it panicked".to_string(),
                    |r| r.err().map_or_else(String::new, |e| format!("{e:#}")),
                );
                bail!("the probe did not start: {why}");
            }
            let run = self.podman_timed(&args);
            if run.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            let answered = probe
                .join()
                .map_err(|_| anyhow::anyhow!("probe thread panicked"))?;
            let (returned, t0) = run?;
            Ok((ms(answered?.saturating_duration_since(t0)), returned))
        });
        // Removed whatever happened (not timed).
        let rm = self.podman.ok(&["rm", "-f", "-t", "0", &name]);
        let r = res?;
        rm?;
        Ok(r)
    }

    /// `n` timed starts per network, interleaved, into rows `answer` and `ret`.
    fn starts(
        &self,
        report: &mut Report,
        n: u32,
        answer: &str,
        ret: &str,
        tag: &str,
    ) -> Result<()> {
        for i in 0..n {
            for net in Net::order(i) {
                check_interrupted()?;
                print!("bench cni: {answer} [{}/{n}] {:<8} ", i + 1, net.name());
                let _ = std::io::stdout().flush();
                match self.start(net, &format!("s{tag}{i}")) {
                    Ok((a, r)) => {
                        println!("answer {a:.0} ms, podman returned {r:.0} ms");
                        report.record(answer, net, a);
                        report.record(ret, net, r);
                    }
                    Err(e) => {
                        check_interrupted()?;
                        println!("FAILED: {e:#}");
                        report.fail(answer, net, &e);
                        report.fail(ret, net, &e);
                    }
                }
            }
        }
        Ok(())
    }

    /// The echo container of `net` (the bench's echo server on port 80, published on the
    /// network's echo port), answering.
    fn echo(&self, net: Net) -> Result<()> {
        let name = echo_name(net);
        let cport = net.echo_cport().to_string();
        let publish = format!("{}:{cport}", net.echo_port());
        self.podman_timed(&[
            "run",
            "-d",
            "--init",
            "--name",
            &name,
            "-p",
            &publish,
            "--network",
            net.network(),
            IMAGE,
            IMAGE_TOOLS,
            "bench-echo",
            "--port",
            &cport,
        ])?;
        let target = SocketAddrV4::new(net.uplink_ip(), net.echo_port());
        let start = Instant::now();
        in_netns(&self.sb.client, || loop {
            check_interrupted()?;
            let echoed = (|| -> std::io::Result<()> {
                let mut s =
                    TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(1))?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.write_all(b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)
            })();
            match echoed {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() > Duration::from_secs(30) => {
                    bail!(
                        "the {} echo container does not answer on {target}: {e}",
                        net.name()
                    )
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        })
    }

    /// The root-namespace pid of `net`'s echo server.
    fn echo_pid(&self, net: Net) -> Result<u32> {
        let want = [
            IMAGE_TOOLS.to_string(),
            "bench-echo".into(),
            "--port".into(),
            net.echo_cport().to_string(),
        ];
        self.rt
            .descendants()
            .into_iter()
            .find(|p| {
                fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                    c.split(|b| *b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .eq(want.iter().cloned())
                })
            })
            .with_context(|| format!("the {} echo server's process", net.name()))
    }

    /// crr, rr and rr pinned to one CPU through each network's echo container, `reps` times,
    /// interleaved. `ids`: the rows of the three.
    fn loads(&self, report: &mut Report, plan: &Plan, ids: [&str; 3]) -> Result<()> {
        for rep in 0..plan.reps {
            for net in Net::order(rep) {
                for (id, kind, threads) in [
                    (ids[0], "crr", CRR_THREADS),
                    (ids[1], "rr", 1),
                    (ids[2], "rr-pinned", 1),
                ] {
                    check_interrupted()?;
                    print!(
                        "bench cni: {id} [{}/{}] {:<8} ",
                        rep + 1,
                        plan.reps,
                        net.name()
                    );
                    let _ = std::io::stdout().flush();
                    let target = SocketAddrV4::new(net.uplink_ip(), net.echo_port());
                    let r = if kind == "rr-pinned" {
                        self.echo_pid(net)
                            .and_then(|pid| load_pinned(&self.sb.client, target, plan.secs, pid))
                    } else {
                        load(&self.sb.client, target, kind, plan.secs, threads)
                    };
                    match r {
                        Ok(r) => {
                            println!("{}/s", num(r.per_sec()));
                            report.record(id, net, r.per_sec());
                        }
                        Err(e) => {
                            check_interrupted()?;
                            println!("FAILED: {e:#}");
                            report.fail(id, net, &e);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts the other containers, interleaved between the networks, each publishing
    /// `plan.ports` ports (`sleep`, with `--init`), then the echo containers again (the
    /// newest containers, as a container started among running ones is).
    fn others(&self, report: &mut Report, plan: &Plan) -> Result<()> {
        let t = Instant::now();
        for i in 0..plan.others {
            for net in Net::order(i) {
                check_interrupted()?;
                let first = net.others_base() + i * plan.ports;
                let last = first + plan.ports - 1;
                let publish = if plan.ports == 1 {
                    format!("{first}:{first}")
                } else {
                    format!("{first}-{last}:{first}-{last}")
                };
                let name = format!("{}-o{i}", net.name());
                let (ms, _) = self
                    .podman_timed(&[
                        "run",
                        "-d",
                        "--init",
                        "--name",
                        &name,
                        "-p",
                        &publish,
                        "--network",
                        net.network(),
                        IMAGE,
                        "/bin/busybox",
                        "sleep",
                        "1000000",
                    ])
                    .with_context(|| format!("starting {name}"))?;
                report.record("others_start", net, ms);
            }
            if (i + 1) % 10 == 0 || i + 1 == plan.others {
                let med = |n: Net| {
                    let all = report.samples("others_start", n);
                    stats(&all[all.len().saturating_sub(10)..]).map_or(0.0, |s| s.median)
                };
                println!(
                    "bench cni: {} other containers per network ({:.0} s); podman run -d of \
                     the last ones: bridge {:.0} ms, tollgate {:.0} ms (median)",
                    i + 1,
                    t.elapsed().as_secs_f64(),
                    med(Net::Bridge),
                    med(Net::Tollgate)
                );
            }
        }
        for net in Net::ALL {
            self.echo(net)?;
        }
        Ok(())
    }

    /// What the node holds: iptables rules, Tollgate's port maps and containers.
    fn footprint(&self) -> String {
        let rules = sandbox::sh(in_ns(&self.sb.node, "iptables-save").arg("-c"))
            .map(|s| s.lines().filter(|l| l.contains("-A ")).count())
            .map_or_else(|e| format!("? ({e:#})"), |n| n.to_string());
        let count = |what: &str| {
            self.sb
                .tg(&[what, "list", "--json"])
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .and_then(|v| v.as_array().map(Vec::len))
                .map_or_else(|| "?".into(), |n| n.to_string())
        };
        format!(
            "{rules} iptables rules in the node; Tollgate: {} containers, {} port maps",
            count("container"),
            count("port")
        )
    }

    /// Where the measured containers sit in `CNI-HOSTPORT-DNAT` (one jump per container).
    fn chain_order(&self) -> String {
        let Ok(nat) = sandbox::sh(in_ns(&self.sb.node, "iptables-save").args(["-t", "nat"])) else {
            return "iptables-save failed".into();
        };
        let jumps: Vec<&str> = nat
            .lines()
            .filter(|l| l.starts_with("-A CNI-HOSTPORT-DNAT "))
            .collect();
        let echo = jumps.iter().position(|l| {
            l.contains(&format!("{},", Net::Bridge.echo_port()))
                || l.contains(&format!("{} ", Net::Bridge.echo_port()))
        });
        format!(
            "`CNI-HOSTPORT-DNAT` holds {} jumps (one per container, `-m multiport --dports`); \
             the echo container's is number {}",
            jumps.len(),
            echo.map_or_else(|| "?".into(), |p| (p + 1).to_string())
        )
    }
}

/// Runs `f` on a thread that has joined network namespace `ns` (only that thread moves).
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    thread::scope(|s| {
        s.spawn(|| {
            let file = fs::File::open(&path).with_context(|| path.clone())?;
            // SAFETY: setns(2) on a valid fd; CLONE_NEWNET moves only the calling thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
    })
}

/// Polls `target` until an HTTP answer comes: a connect attempt (at most `PROBE_CONNECT`),
/// `GET /`, the first bytes of the answer; `PROBE_INTERVAL` between attempts. Returns when the
/// answer arrived.
fn probe_http(target: SocketAddrV4, stop: &AtomicBool) -> Result<Instant> {
    let start = Instant::now();
    let addr = SocketAddr::V4(target);
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("stopped");
        }
        check_interrupted()?;
        if start.elapsed() > START_LIMIT {
            bail!("no HTTP answer on {target} in {START_LIMIT:?}");
        }
        let answer = (|| -> std::io::Result<Instant> {
            let mut s = TcpStream::connect_timeout(&addr, PROBE_CONNECT)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.set_write_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut b = [0u8; 5];
            let n = s.read(&mut b)?;
            let t = Instant::now();
            if n > 0 && b"HTTP/".starts_with(&b[..n]) {
                Ok(t)
            } else {
                Err(std::io::Error::other("not an HTTP answer"))
            }
        })();
        if let Ok(t) = answer {
            return Ok(t);
        }
        thread::sleep(PROBE_INTERVAL);
    }
}

/// `bench-load` in the client namespace against `target`.
fn load(
    client: &str,
    target: SocketAddrV4,
    kind: &str,
    secs: f64,
    threads: usize,
) -> Result<LoadResult> {
    let mut cmd = in_ns(client, self_exe());
    cmd.args([
        "bench-load",
        "--kind",
        kind,
        "--target",
        &target.to_string(),
    ])
    .args(["--secs", &format!("{secs}")])
    .args(["--threads", &threads.to_string()]);
    let out = run_timeout(&mut cmd, Duration::from_secs_f64(secs + 20.0))?;
    let r = LoadResult::from_json(&out)?;
    if r.transactions == 0 {
        bail!("no transaction completed ({} errors)", r.errors);
    }
    if r.errors * 100 > r.transactions {
        bail!(
            "{} of {} connections failed",
            r.errors,
            r.errors + r.transactions
        );
    }
    Ok(r)
}

/// `bench-load --kind rr` in the client namespace with the load generator and the echo
/// server `echo` (all its threads) pinned to the last CPU; the server's affinity is restored
/// afterwards. A transaction is then pure CPU work on one core, without the run-to-run noise
/// of cross-CPU wake-ups.
fn load_pinned(client: &str, target: SocketAddrV4, secs: f64, echo: u32) -> Result<LoadResult> {
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let (one, all) = ((cpus - 1).to_string(), format!("0-{}", cpus - 1));
    let echo = echo.to_string();
    sandbox::sh(Command::new("taskset").args(["-a", "-p", "-c", &one, &echo]))?;
    let mut cmd = in_ns(client, "taskset");
    cmd.args(["-c", &one])
        .arg(self_exe())
        .args([
            "bench-load",
            "--kind",
            "rr",
            "--target",
            &target.to_string(),
        ])
        .args(["--secs", &format!("{secs}")]);
    let out = run_timeout(&mut cmd, Duration::from_secs_f64(secs + 20.0));
    let restored = sandbox::sh(Command::new("taskset").args(["-a", "-p", "-c", &all, &echo]));
    let r = LoadResult::from_json(&out?)?;
    restored?;
    if r.transactions == 0 {
        bail!("no transaction completed");
    }
    Ok(r)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_defaults_quick_and_limits() {
        let full = Plan::new(&CniArgs::default()).unwrap();
        assert_eq!((full.runs, full.others, full.ports), (20, 100, 10));
        let quick = Plan::new(&CniArgs {
            quick: true,
            others: Some(7),
            ..CniArgs::default()
        })
        .unwrap();
        assert_eq!((quick.runs, quick.others, quick.ports), (3, 7, 2));
        assert!(Plan::new(&CniArgs {
            others: Some(200),
            ports_per_other: Some(100),
            ..CniArgs::default()
        })
        .is_err());
        assert!(Plan::new(&CniArgs {
            others: Some(MAX_OTHERS + 1),
            ports_per_other: Some(1),
            ..CniArgs::default()
        })
        .is_err());
    }

    #[test]
    fn networks_alternate_and_ports_do_not_collide() {
        assert_eq!(Net::order(0), [Net::Bridge, Net::Tollgate]);
        assert_eq!(Net::order(1), [Net::Tollgate, Net::Bridge]);
        let (b, t) = (Net::Bridge, Net::Tollgate);
        let fixed = [b.echo_port(), t.echo_port(), b.start_port(), t.start_port()];
        for (i, p) in fixed.iter().enumerate() {
            assert!(!fixed[i + 1..].contains(p));
            assert!(u32::from(*p) < t.others_base().min(b.others_base()));
        }
        assert!(b.others_base() + PORTS_PER_NET <= t.others_base());
        assert!(
            t.others_base() + PORTS_PER_NET <= 32768,
            "below the ephemeral range"
        );
    }

    #[test]
    fn table_ratios_flags_and_failures() {
        let mut r = Report::default();
        r.define("a", "A".into(), "ms", false);
        r.define("b", "B".into(), "ops", true);
        for v in [100.0, 110.0, 105.0] {
            r.record("a", Net::Bridge, v);
        }
        for v in [50.0, 80.0, 52.0] {
            r.record("a", Net::Tollgate, v);
        }
        r.record("b", Net::Bridge, 10.0);
        r.fail("b", Net::Tollgate, &anyhow::anyhow!("boom"));
        let md = r.markdown();
        assert!(md.contains("| A ⚠ | ms | lower | 105 (100–110) | 52.0 (50.0–80.0) ⚠ | 0.50× |"));
        assert!(md.contains("| B | ops | higher | 10.0 | failed | – |"));
        assert!(md.contains("- b / tollgate: boom"));
        assert_eq!(r.missing(), ["b / tollgate: boom"]);
        let j = r.json();
        assert_eq!(j["metrics"][0]["networks"]["tollgate"]["samples"][1], 80.0);
        assert_eq!(j["metrics"][1]["errors"]["tollgate"], "boom");
    }
}
