//! `cargo xtask bench [--quick] [--out DIR] [--only WORKLOAD]`: the same sandbox built four
//! times (client ns <-> node ns <-> veth <-> container ns; nothing in the root namespace), one
//! per mode, and every workload run against every mode, interleaved (A B C D A B C D ...).
//!
//! Modes:
//! - `baseline`: routed veth, the client talks to the container IP; no NAT, no rules.
//! - `iptables`: what Docker with `--userland-proxy=false` installs (DOCKER DNAT chain from
//!   PREROUTING/OUTPUT, MASQUERADE of the pool and the hairpins, FORWARD chains) plus Warden's
//!   per-instance FORWARD chain; iptables-restore in the node namespace.
//! - `proxy`: one docker-proxy style userland proxy process per published port (`bench-proxy`).
//! - `tollgate`: `tollgate daemon --netns NODE`, `tollgate container add`, `tollgate port add`.
//!
//! See docs/benchmarks.md for the workloads and the latest numbers.

pub mod cni;
mod report;
// Also the soak's sandbox (`soak.rs`).
pub(crate) mod sandbox;
pub mod tools;
mod workloads;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use report::{Metric, Report};
use sandbox::Sandbox;

use crate::{build, is_root, repo_root, setup};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Mode {
    Baseline,
    Iptables,
    Proxy,
    Tollgate,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Baseline, Mode::Iptables, Mode::Proxy, Mode::Tollgate];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Iptables => "iptables",
            Mode::Proxy => "proxy",
            Mode::Tollgate => "tollgate",
        }
    }

    /// One letter for namespace names.
    fn short(self) -> &'static str {
        match self {
            Mode::Baseline => "b",
            Mode::Iptables => "i",
            Mode::Proxy => "p",
            Mode::Tollgate => "t",
        }
    }

    fn color(self) -> &'static str {
        match self {
            Mode::Baseline => "#7f7f7f",
            Mode::Iptables => "#d62728",
            Mode::Proxy => "#ff7f0e",
            Mode::Tollgate => "#1f77b4",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Workload {
    Stream,
    Rr,
    Crr,
    Cpu,
    Install,
    Memory,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Stream => "stream",
            Workload::Rr => "rr",
            Workload::Crr => "crr",
            Workload::Cpu => "cpu",
            Workload::Install => "install",
            Workload::Memory => "memory",
        }
    }
}

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Smoke run: 1 repetition of about 1 s per measurement, scale points 1 and 1,000 only.
    #[arg(long)]
    pub quick: bool,
    /// Where results.md, results.json and crr-port-maps.svg go (default: target/bench).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run only these workloads (comma-separated or repeated).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "WORKLOAD")]
    pub only: Vec<Workload>,
    /// Run only these modes (comma-separated or repeated; default: all four).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "MODE")]
    pub modes: Vec<Mode>,
    /// Repetitions per measurement (default: 3, --quick: 1).
    #[arg(long, value_name = "N")]
    pub reps: Option<u32>,
    /// Skip setup and the build; use the existing target/release/tollgate.
    #[arg(long)]
    pub no_build: bool,
    /// Also write the table and chart into docs/benchmarks.md (between its bench markers)
    /// and docs/benchmarks-crr.svg.
    #[arg(long)]
    pub docs: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C / SIGTERM: stop at the next check, so the sandboxes are torn down by their Drop.
fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Durations and sizes of one run.
struct Plan {
    reps: u32,
    stream_secs: f64,
    stream_omit: u32,
    rr_secs: f64,
    crr_secs: f64,
    crr_threads: usize,
    scales: Vec<u32>,
    cpu_secs: f64,
    /// iperf3 `-b` of the CPU measurement, and the paced crr rate.
    cpu_stream_rate: &'static str,
    cpu_crr_rate: u64,
    install_sizes: Vec<u32>,
    /// Ports timed with one `iptables -A` per rule / proxy processes started, for estimates.
    install_sample: u32,
    memory_sample: u32,
}

impl Plan {
    fn new(args: &BenchArgs) -> Self {
        let q = args.quick;
        Plan {
            reps: args.reps.unwrap_or(if q { 1 } else { 3 }).max(1),
            stream_secs: if q { 1.0 } else { 3.0 },
            stream_omit: u32::from(!q),
            rr_secs: if q { 1.0 } else { 2.0 },
            crr_secs: if q { 1.0 } else { 2.0 },
            crr_threads: 4,
            scales: if q {
                vec![1, 1000]
            } else {
                vec![1, 1000, 10_000]
            },
            cpu_secs: if q { 1.0 } else { 3.0 },
            cpu_stream_rate: "1G",
            cpu_crr_rate: 2000,
            install_sizes: if q { vec![1000] } else { vec![1000, 10_000] },
            install_sample: if q { 20 } else { 100 },
            memory_sample: if q { 10 } else { 50 },
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
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
        .unwrap_or_else(|| repo_root().join("target").join("bench"));
    let report = bench(args, &bin)?;
    write_outputs(&report, &selected_modes(args), &out, args.docs)?;
    let (_, missing) = report.coverage();
    if !missing.is_empty() {
        bail!(
            "{} measurement(s) produced no numbers:\n  {}",
            missing.len(),
            missing.join("\n  ")
        );
    }
    Ok(())
}

/// The smoke run of `cargo xtask test`: `--quick`, every workload, every mode. Returns
/// (cells with numbers, cells without, with why).
pub fn smoke(bin: &Path) -> Result<(usize, Vec<String>)> {
    let args = BenchArgs {
        quick: true,
        out: Some(repo_root().join("target").join("bench-smoke")),
        only: Vec::new(),
        modes: Vec::new(),
        reps: None,
        no_build: true,
        docs: false,
    };
    let report = bench(&args, bin)?;
    write_outputs(
        &report,
        &Mode::ALL,
        args.out.as_deref().expect("set above"),
        false,
    )?;
    Ok(report.coverage())
}

fn selected_modes(args: &BenchArgs) -> Vec<Mode> {
    if args.modes.is_empty() {
        Mode::ALL.to_vec()
    } else {
        Mode::ALL
            .into_iter()
            .filter(|m| args.modes.contains(m))
            .collect()
    }
}

fn write_outputs(report: &Report, modes: &[Mode], out: &Path, docs: bool) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let md = report.markdown(modes);
    std::fs::write(out.join("results.md"), &md)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&report.json())? + "\n",
    )?;
    let svg = report.svg(modes);
    if let Some(svg) = &svg {
        std::fs::write(out.join("crr-port-maps.svg"), svg)?;
    }
    println!("\n{md}");
    println!("bench: results in {}", out.display());
    if docs {
        update_docs(report, &md, svg.as_deref())?;
    }
    Ok(())
}

const DOCS_BEGIN: &str = "<!-- bench:begin -->";
const DOCS_END: &str = "<!-- bench:end -->";

fn update_docs(report: &Report, md: &str, svg: Option<&str>) -> Result<()> {
    let path = repo_root().join("docs").join("benchmarks.md");
    let doc = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let (Some(b), Some(e)) = (doc.find(DOCS_BEGIN), doc.find(DOCS_END)) else {
        bail!(
            "{} has no {DOCS_BEGIN} ... {DOCS_END} markers",
            path.display()
        );
    };
    let mut meta = String::new();
    for (k, v) in &report.meta {
        let _ = writeln!(meta, "- {k}: {v}");
    }
    let chart = if svg.is_some() {
        "\n![connections/s against port maps](benchmarks-crr.svg)\n"
    } else {
        ""
    };
    let new = format!(
        "{}{DOCS_BEGIN}\n{meta}\n{md}{chart}\n{}",
        &doc[..b],
        &doc[e..]
    );
    std::fs::write(&path, new)?;
    if let Some(svg) = svg {
        std::fs::write(repo_root().join("docs").join("benchmarks-crr.svg"), svg)?;
    }
    println!("bench: updated {}", path.display());
    Ok(())
}

fn define(
    report: &mut Report,
    w: Workload,
    id: impl Into<String>,
    label: impl Into<String>,
    unit: &str,
    higher: bool,
    modes: &[Mode],
) {
    report.metrics.push(Metric {
        id: id.into(),
        workload: w,
        label: label.into(),
        unit: unit.into(),
        higher_is_better: higher,
        modes: modes.to_vec(),
        samples: BTreeMap::new(),
        errors: BTreeMap::new(),
        scale: None,
        note: None,
    });
}

/// The CPU as precisely as the machine tells it: a VM's model name is often only the brand
/// ("AMD EPYC", "Intel Xeon Processor"), so vendor, family, model and stepping follow, and
/// whether it runs under a hypervisor. Stream rows differ between CPU generations by more
/// than any datapath change, so a result names what it ran on.
fn cpu_model(first: &dyn Fn(&str, &str) -> Option<String>) -> String {
    let f = |k: &str| first("/proc/cpuinfo", k).unwrap_or_default();
    let virt = if f("flags").split_whitespace().any(|x| x == "hypervisor") {
        ", virtualized"
    } else {
        ""
    };
    format!(
        "{}: {} family {} model {} stepping {}{virt}",
        f("model name"),
        f("vendor_id"),
        f("cpu family"),
        f("model\t"),
        f("stepping")
    )
}

fn machine_meta(report: &mut Report, args: &BenchArgs, plan: &Plan) {
    let first = |path: &str, key: &str| {
        std::fs::read_to_string(path).ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
    };
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpu = cpu_model(&first);
    let mem = first("/proc/meminfo", "MemTotal").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let ipt =
        crate::output_of(std::process::Command::new("iptables").arg("-V")).unwrap_or_default();
    let iperf = crate::output_of(std::process::Command::new("iperf3").arg("--version"))
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    let mut cmd = String::from("cargo xtask bench");
    if args.quick {
        cmd.push_str(" --quick");
    }
    if !args.only.is_empty() {
        let w: Vec<&str> = args.only.iter().map(|w| w.name()).collect();
        let _ = write!(cmd, " --only {}", w.join(","));
    }
    if !args.modes.is_empty() {
        let m: Vec<&str> = args.modes.iter().map(|m| m.name()).collect();
        let _ = write!(cmd, " --modes {}", m.join(","));
    }
    if let Some(r) = args.reps {
        let _ = write!(cmd, " --reps {r}");
    }
    for (k, v) in [
        ("command", format!("`{cmd}`")),
        ("machine", format!("{cores} cores ({cpu}), {mem}")),
        ("kernel", kernel.trim().to_string()),
        ("iptables", ipt.trim().to_string()),
        ("iperf3", iperf.trim().to_string()),
        ("repetitions", plan.reps.to_string()),
        (
            "load averages at start",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ] {
        report.meta.insert(k.into(), v);
    }
}

/// Runs every selected workload against every selected mode.
fn bench(args: &BenchArgs, tollgate: &Path) -> Result<Report> {
    if !is_root() {
        bail!("the bench needs root (it creates network namespaces and loads eBPF programs)");
    }
    catch_signals();
    // The echo server, proxy and load generator are this crate's code: run them optimized
    // (`cargo xtask` itself is a dev build).
    crate::run_cmd(crate::cargo().args(["build", "--quiet", "--release", "-p", "xtask"]))
        .context("building the bench tools (xtask, release)")?;
    sandbox::set_tools_exe(repo_root().join("target").join("release").join("xtask"));
    let plan = Plan::new(args);
    let modes = selected_modes(args);
    let want = |w: Workload| args.only.is_empty() || args.only.contains(&w);
    let mut report = Report::default();
    machine_meta(&mut report, args, &plan);

    define_metrics(&mut report, &plan, &modes, &want);

    // The sandboxes, built once, torn down by Drop (also on error and Ctrl-C).
    let t0 = Instant::now();
    let mut boxes: Vec<Sandbox> = Vec::new();
    for &m in &modes {
        check_interrupted()?;
        match Sandbox::new(m, tollgate) {
            Ok(sb) => boxes.push(sb),
            Err(e) => {
                eprintln!("bench: {} sandbox failed: {e:#}", m.name());
                report.broken.insert(m, format!("{e:#}"));
            }
        }
    }
    println!(
        "bench: {} sandbox(es) up in {:.1} s",
        boxes.len(),
        t0.elapsed().as_secs_f64()
    );

    let res = run_workloads(&mut report, &mut boxes, &plan, &want, tollgate);
    drop(boxes);
    res?;
    report.meta.insert(
        "duration".into(),
        format!("{:.0} s", t0.elapsed().as_secs_f64()),
    );
    Ok(report)
}

/// Defines the metrics of the selected workloads, in report order.
#[expect(
    clippy::too_many_lines,
    reason = "a flat table of metric definitions, one `define` each"
)]
fn define_metrics(
    report: &mut Report,
    plan: &Plan,
    modes: &[Mode],
    want: &dyn Fn(Workload) -> bool,
) {
    let all = modes;
    let publishing: Vec<Mode> = modes
        .iter()
        .copied()
        .filter(|m| *m != Mode::Baseline)
        .collect();
    if want(Workload::Stream) {
        for reverse in [false, true] {
            for streams in [1, 4] {
                let dir = if reverse { "down" } else { "up" };
                let arrow = if reverse {
                    "container → client"
                } else {
                    "client → container"
                };
                let s = if streams == 1 { "" } else { "s" };
                define(
                    report,
                    Workload::Stream,
                    format!("stream_{dir}_{streams}"),
                    format!("TCP stream {arrow}, {streams} stream{s}"),
                    "Gbit/s",
                    true,
                    all,
                );
            }
        }
    }
    if want(Workload::Rr) {
        define(
            report,
            Workload::Rr,
            "rr_tps",
            "1-byte request/response, 1 connection",
            "transactions/s",
            true,
            all,
        );
        define(
            report,
            Workload::Rr,
            "rr_p50",
            "request/response latency p50",
            "µs",
            false,
            all,
        );
        define(
            report,
            Workload::Rr,
            "rr_p99",
            "request/response latency p99",
            "µs",
            false,
            all,
        );
        define(
            report,
            Workload::Rr,
            "rr_pin_tps",
            "1-byte request/response, client and server pinned to one CPU",
            "transactions/s",
            true,
            all,
        );
        define(
            report,
            Workload::Rr,
            "rr_pin_p50",
            "request/response latency p50, pinned to one CPU",
            "µs",
            false,
            all,
        );
        report.metric_mut("rr_pin_tps").note = Some(
            "both ends on the last CPU (`taskset`), so a transaction is pure CPU work on one \
             core: the two packets' paths through the node plus the two sockets, without the \
             cross-CPU wake-ups that dominate (and scatter) the unpinned figures in a VM"
                .into(),
        );
    }
    if want(Workload::Crr) {
        for &n in &plan.scales {
            let id = format!("crr_{n}");
            let maps = if n == 1 { "map" } else { "maps" };
            define(
                report,
                Workload::Crr,
                &id,
                format!(
                    "new connections ({} threads), {} port {maps}",
                    plan.crr_threads,
                    report::int(n)
                ),
                "connections/s",
                true,
                all,
            );
            report.metric_mut(&id).scale = Some(n);
            define(
                report,
                Workload::Crr,
                format!("crr_cpu_{n}"),
                format!(
                    "CPU busy per 1k connections at full rate, {} port {maps}",
                    report::int(n)
                ),
                "CPU-ms/1k conn",
                false,
                all,
            );
        }
    }
    if want(Workload::Cpu) {
        let stream = format!("1 stream at {}bit/s", plan.cpu_stream_rate);
        let crr = format!("new connections paced at {}/s", plan.cpu_crr_rate);
        for (id, label, unit) in [
            (
                "cpu_stream",
                format!("CPU busy per Gbit, {stream}"),
                "CPU-ms/Gbit",
            ),
            (
                "cpu_stream_sys",
                format!("CPU sys+softirq per Gbit, {stream} (tick-sampled)"),
                "CPU-ms/Gbit",
            ),
            (
                "cpu_crr",
                format!("CPU busy per 1k connections, {crr}"),
                "CPU-ms/1k conn",
            ),
            (
                "cpu_crr_sys",
                format!("CPU sys+softirq per 1k connections, {crr} (tick-sampled)"),
                "CPU-ms/1k conn",
            ),
        ] {
            define(report, Workload::Cpu, id, label, unit, false, all);
        }
        report.metric_mut("cpu_stream").note = Some(
            "machine-wide /proc/stat deltas over the run, so they include the client's and the \
             server's own work (the same in every mode) and anything else the machine did \
             meanwhile. *busy* is wall time × CPUs − idle (idle is measured exactly on this \
             NO_HZ kernel); *sys+softirq* is sampled at the scheduler tick, which misses most \
             of the short bursts of packet work (no IRQ_TIME_ACCOUNTING), so it reads low and \
             noisy for paced loads"
                .into(),
        );
    }
    if want(Workload::Install) {
        for &n in &plan.install_sizes {
            let nn = report::int(n);
            let installers: Vec<Mode> = publishing
                .iter()
                .copied()
                .filter(|m| *m != Mode::Proxy)
                .collect();
            define(
                report,
                Workload::Install,
                format!("install_{n}"),
                format!(
                    "install {nn} port maps: tollgate one `port add` batch, iptables one `iptables-restore`"
                ),
                "s",
                false,
                &installers,
            );
            define(
                report,
                Workload::Install,
                format!("install_{n}_one"),
                format!(
                    "publish one more port with {nn} present: tollgate one `port add` (median of 20 CLI calls), iptables its 3 `iptables -A`"
                ),
                "ms",
                false,
                &installers,
            );
            if publishing.contains(&Mode::Iptables) {
                define(
                    report,
                    Workload::Install,
                    format!("install_{n}_each"),
                    format!("install {nn} port maps, one `iptables -A` per rule (estimated)"),
                    "s",
                    false,
                    &[Mode::Iptables],
                );
                report.metric_mut(&format!("install_{n}_each")).note = Some(format!(
                    "{} ports (3 rules each, one process per rule) timed on the base ruleset \
                     and again on top of {} ports; the mean rate times {n}",
                    plan.install_sample,
                    n - plan.install_sample
                ));
            }
            if publishing.contains(&Mode::Proxy) {
                define(
                    report,
                    Workload::Install,
                    format!("install_{n}_proxy"),
                    format!("start {nn} proxy processes (estimated)"),
                    "s",
                    false,
                    &[Mode::Proxy],
                );
                report.metric_mut(&format!("install_{n}_proxy")).note = Some(format!(
                    "{} processes started until all listen, times {n}/{}",
                    plan.install_sample, plan.install_sample
                ));
            }
        }
    }
    if want(Workload::Memory) {
        for &n in &plan.install_sizes {
            let nn = report::int(n);
            define(
                report,
                Workload::Memory,
                format!("mem_{n}"),
                format!("memory taken by {nn} published ports, all in"),
                "KiB",
                false,
                &publishing,
            );
        }
        define(
            report,
            Workload::Memory,
            "mem_port",
            "memory per published port, all in",
            "bytes",
            false,
            &publishing,
        );
        report.metric_mut("mem_port").note = Some(
            "iptables: kernel memory charged to a temporary memory cgroup that \
             `iptables-restore` ran in (Docker's 3 rules per port); proxy: PSS of one proxy \
             process (measured over a sample of processes); tollgate: growth of a fresh \
             daemon's RSS plus the memlock growth of TG_PORTMAP and TG_PORT_GUARD"
                .into(),
        );
        if publishing.contains(&Mode::Proxy) {
            define(
                report,
                Workload::Memory,
                "mem_proxy_rss",
                "proxy RSS per process (shared pages counted in full)",
                "bytes",
                false,
                &[Mode::Proxy],
            );
        }
        if publishing.contains(&Mode::Tollgate) {
            define(
                report,
                Workload::Memory,
                "mem_bpf_kv",
                "BPF key+value bytes per port map (TG_PORTMAP + TG_PORT_GUARD)",
                "bytes",
                false,
                &[Mode::Tollgate],
            );
            define(
                report,
                Workload::Memory,
                "mem_bpf_memlock",
                "BPF memlock of TG_PORTMAP + TG_PORT_GUARD (whole tables)",
                "KiB",
                false,
                &[Mode::Tollgate],
            );
            define(
                report,
                Workload::Memory,
                "mem_bpf_slots",
                "TG_PORTMAP slots (max_entries)",
                "maps",
                true,
                &[Mode::Tollgate],
            );
        }
    }
}

/// Interleaves `f` over the sandboxes, `reps` times; each call returns (metric id, value)s.
fn interleave(
    report: &mut Report,
    boxes: &mut [Sandbox],
    reps: u32,
    ids: &[&str],
    what: &str,
    mut f: impl FnMut(&mut Sandbox) -> Result<Vec<(String, f64)>>,
) -> Result<()> {
    for rep in 0..reps {
        for sb in boxes.iter_mut() {
            check_interrupted()?;
            let mode = sb.mode;
            print!("bench: {what} [{}/{reps}] {:<9} ", rep + 1, mode.name());
            let _ = std::io::Write::flush(&mut std::io::stdout());
            match f(sb) {
                Ok(vals) => {
                    let shown: Vec<String> = vals
                        .iter()
                        .map(|(k, v)| format!("{k}={}", report::num(*v)))
                        .collect();
                    println!("{}", shown.join(" "));
                    for (k, v) in vals {
                        report.record(&k, mode, v);
                    }
                }
                Err(e) => {
                    check_interrupted()?;
                    println!("FAILED: {e:#}");
                    for id in ids {
                        report.fail(id, mode, format!("{e:#}"));
                    }
                }
            }
        }
    }
    Ok(())
}

#[expect(
    clippy::too_many_lines,
    reason = "one sequential block per workload, in report order"
)]
fn run_workloads(
    report: &mut Report,
    boxes: &mut [Sandbox],
    plan: &Plan,
    want: &dyn Fn(Workload) -> bool,
    tollgate: &Path,
) -> Result<()> {
    if want(Workload::Stream) {
        for reverse in [false, true] {
            for streams in [1u32, 4] {
                let id = format!("stream_{}_{streams}", if reverse { "down" } else { "up" });
                interleave(report, boxes, plan.reps, &[&id], &id, |sb| {
                    let (gbps, _) = workloads::iperf(
                        sb,
                        plan.stream_secs,
                        streams,
                        reverse,
                        plan.stream_omit,
                        None,
                    )?;
                    Ok(vec![(id.clone(), gbps)])
                })?;
            }
        }
    }
    if want(Workload::Rr) {
        let ids = ["rr_tps", "rr_p50", "rr_p99"];
        interleave(report, boxes, plan.reps, &ids, "rr", |sb| {
            let r = workloads::load(sb, "rr", plan.rr_secs, 1, 0)?;
            Ok(vec![
                ("rr_tps".into(), r.per_sec()),
                ("rr_p50".into(), r.p50_us),
                ("rr_p99".into(), r.p99_us),
            ])
        })?;
        let ids = ["rr_pin_tps", "rr_pin_p50"];
        interleave(report, boxes, plan.reps, &ids, "rr pinned", |sb| {
            let r = workloads::load_pinned(sb, "rr", plan.rr_secs)?;
            Ok(vec![
                ("rr_pin_tps".into(), r.per_sec()),
                ("rr_pin_p50".into(), r.p50_us),
            ])
        })?;
    }
    if want(Workload::Crr) {
        for &n in &plan.scales {
            let id = format!("crr_{n}");
            for sb in boxes.iter_mut() {
                check_interrupted()?;
                let t = Instant::now();
                if let Err(e) = sb.set_extra(n - 1) {
                    report.fail(&id, sb.mode, format!("installing {n} port maps: {e:#}"));
                } else if n > 1 && sb.mode != Mode::Baseline {
                    println!(
                        "bench: {} now has {n} port maps ({:.1} s)",
                        sb.mode.name(),
                        t.elapsed().as_secs_f64()
                    );
                }
            }
            let threads = plan.crr_threads;
            let cpu_id = format!("crr_cpu_{n}");
            interleave(report, boxes, plan.reps, &[&id, &cpu_id], &id, |sb| {
                if sb.extra != n - 1 {
                    bail!("the {n} port maps are not installed");
                }
                let snap = workloads::CpuSnap::now()?;
                let r = workloads::load(sb, "crr", plan.crr_secs, threads, 0)?;
                let (_, busy) = snap.since()?;
                if r.errors * 100 > r.transactions {
                    bail!(
                        "{} of {} connections failed",
                        r.errors,
                        r.errors + r.transactions
                    );
                }
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "a connection count, exact in f64 below 2^52"
                )]
                let k = r.transactions as f64 / 1000.0;
                Ok(vec![
                    (id.clone(), r.per_sec()),
                    (cpu_id.clone(), busy * 1000.0 / k),
                ])
            })?;
        }
        for sb in boxes.iter_mut() {
            if let Err(e) = sb.set_extra(0) {
                eprintln!(
                    "bench: {}: removing the extra port maps: {e:#}",
                    sb.mode.name()
                );
            }
        }
    }
    if want(Workload::Cpu) {
        let ids = ["cpu_stream", "cpu_stream_sys"];
        interleave(report, boxes, plan.reps, &ids, "cpu stream", |sb| {
            let snap = workloads::CpuSnap::now()?;
            let (_, bits) =
                workloads::iperf(sb, plan.cpu_secs, 1, false, 0, Some(plan.cpu_stream_rate))?;
            let (sys, busy) = snap.since()?;
            if bits <= 0.0 {
                bail!("no data transferred");
            }
            let g = bits / 1e9;
            Ok(vec![
                ("cpu_stream".into(), busy * 1000.0 / g),
                ("cpu_stream_sys".into(), sys * 1000.0 / g),
            ])
        })?;
        interleave(
            report,
            boxes,
            plan.reps,
            &["cpu_crr", "cpu_crr_sys"],
            "cpu crr",
            |sb| {
                let snap = workloads::CpuSnap::now()?;
                let r = workloads::load(sb, "crr", plan.cpu_secs, 2, plan.cpu_crr_rate)?;
                let (sys, busy) = snap.since()?;
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "a connection count, exact in f64 below 2^52"
                )]
                let k = r.transactions as f64 / 1000.0;
                Ok(vec![
                    ("cpu_crr".into(), busy * 1000.0 / k),
                    ("cpu_crr_sys".into(), sys * 1000.0 / k),
                ])
            },
        )?;
    }
    if want(Workload::Install) {
        for &n in &plan.install_sizes {
            let ids = [
                format!("install_{n}"),
                format!("install_{n}_each"),
                format!("install_{n}_proxy"),
                format!("install_{n}_one"),
            ];
            let sample = plan.install_sample;
            let what = format!("install {n}");
            for rep in 0..plan.reps {
                // Baseline publishes nothing: interleave over the others only.
                for sb in boxes.iter_mut().filter(|b| b.mode != Mode::Baseline) {
                    check_interrupted()?;
                    let mode = sb.mode;
                    print!(
                        "bench: {what} [{}/{}] {:<9} ",
                        rep + 1,
                        plan.reps,
                        mode.name()
                    );
                    let _ = std::io::Write::flush(&mut std::io::stdout());
                    match workloads::install(sb, n, sample) {
                        Ok(r) => {
                            let id = match mode {
                                Mode::Proxy => &ids[2],
                                _ => &ids[0],
                            };
                            report.record(id, mode, r.secs);
                            print!("{id}={:.3}s", r.secs);
                            if let Some(e) = r.per_rule_estimate {
                                report.record(&ids[1], mode, e);
                                print!(" {}={e:.2}s", ids[1]);
                            }
                            if let Some(ms) = r.one_ms {
                                report.record(&ids[3], mode, ms);
                                print!(" {}={ms:.2}ms", ids[3]);
                            }
                            println!();
                        }
                        Err(e) => {
                            check_interrupted()?;
                            println!("FAILED: {e:#}");
                            for id in &ids {
                                if report
                                    .metrics
                                    .iter()
                                    .any(|m| m.id == *id && m.modes.contains(&mode))
                                {
                                    report.fail(id, mode, format!("{e:#}"));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if want(Workload::Memory) {
        let sample = plan.memory_sample;
        let largest = plan.install_sizes.iter().copied().max().unwrap_or(1);
        for &n in &plan.install_sizes {
            for sb in boxes.iter() {
                check_interrupted()?;
                let mode = sb.mode;
                if mode == Mode::Baseline {
                    continue;
                }
                // A fresh daemon for tollgate: freed heap is not given back, so a daemon that
                // held more maps before would hide the growth.
                let fresh = if mode == Mode::Tollgate {
                    match Sandbox::named(mode, tollgate, &format!("m{n}")) {
                        Ok(sb) => Some(sb),
                        Err(e) => {
                            report.fail(&format!("mem_{n}"), mode, format!("{e:#}"));
                            continue;
                        }
                    }
                } else {
                    None
                };
                let sb = fresh.as_ref().unwrap_or(sb);
                match workloads::memory(sb, n, sample) {
                    Ok(m) => {
                        println!(
                            "bench: memory {n} {:<9} {:.0} KiB, {:.0} B per port",
                            mode.name(),
                            m.total / 1024.0,
                            m.total / f64::from(n)
                        );
                        report.record(&format!("mem_{n}"), mode, m.total / 1024.0);
                        if n == largest {
                            report.record("mem_port", mode, m.total / f64::from(n));
                            match (mode, m.detail, m.memlock) {
                                (Mode::Proxy, Some(r), _) => {
                                    report.record("mem_proxy_rss", mode, r);
                                }
                                (Mode::Tollgate, Some(kv), Some((mem, slots))) => {
                                    report.record("mem_bpf_kv", mode, kv);
                                    report.record("mem_bpf_memlock", mode, mem / 1024.0);
                                    report.record("mem_bpf_slots", mode, slots);
                                }
                                _ => {}
                            }
                        }
                    }
                    Err(e) => {
                        check_interrupted()?;
                        println!("bench: memory {n} {} FAILED: {e:#}", mode.name());
                        report.fail(&format!("mem_{n}"), mode, format!("{e:#}"));
                        if n == largest {
                            report.fail("mem_port", mode, format!("{e:#}"));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
