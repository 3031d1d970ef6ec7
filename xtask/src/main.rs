//! `cargo xtask`: Tollgate's build tooling.
//!
//! - `cargo xtask setup`: install what building and testing need (idempotent; quiet when done).
//! - `cargo xtask build [--debug]`: setup, then build `tollgate` (eBPF object embedded) and the
//!   CNI plugin `tollgate-cni`.
//! - `cargo xtask install-cni DIR`: build, then install the CNI plugin as `DIR/tollgate`.
//! - `cargo xtask test`: setup, lint, build, unit tests, then the privileged integration tests.
//! - `cargo xtask build-and-run`: build, then run `tollgate demo` and `tollgate demo --cluster`.
//! - `cargo xtask package [--no-build] [--out DIR]`: build, then the Debian package.
//! - `cargo xtask bench [--quick] [--out DIR] [--only WORKLOAD]`: baseline vs iptables vs
//!   userland proxy vs tollgate, in namespaces of its own (docs/benchmarks.md).
//! - `cargo xtask bench cni [--quick] [--runs N] [--others N] ...`: podman on Tollgate
//!   (through `tollgate-cni`) against podman on bridge + portmap, in one sandbox.
//! - `cargo xtask soak [--minutes N]`: long-lived flows and new connections while other
//!   containers churn; nothing lost, maps back to size, memory flat (docs/soak.md).

mod bench;
// `bench ratelimit` sits beside the main bench's modules but is dispatched from `main`, so the
// two benches evolve without editing each other's files.
#[path = "bench/ratelimit.rs"]
mod bench_ratelimit;
mod build;
mod package;
mod run;
mod setup;
mod soak;
mod test;

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Tollgate build tooling",
    version
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: Debian packages, nightly + rust-src,
    /// bpf-linker against nightly's LLVM, bpffs at /sys/fs/bpf. Idempotent.
    Setup,
    /// Setup, then build the `tollgate` binary (the eBPF object is built and embedded by
    /// agent/build.rs) and the CNI plugin `tollgate-cni`.
    Build(build::BuildArgs),
    /// Build, then install the CNI plugin into a runtime's plugin directory as `DIR/tollgate`.
    InstallCni(build::InstallCniArgs),
    /// Setup, lint (fmt, clippy), build, run the unit tests, then the privileged integration
    /// tests (crate tollgate-tests) against target/release/tollgate.
    Test(test::TestArgs),
    /// Build (release), then run `tollgate demo` (one node) and `tollgate demo --cluster` (two
    /// nodes and an etcd member); fails if either demo fails.
    BuildAndRun(run::RunArgs),
    /// Setup, build, then the Debian package (tollgate, the CNI plugin, tollgate.service,
    /// completions, man pages) in target/debian (--out).
    Package(package::PackageArgs),
    /// Setup, build, then benchmark baseline (routed veth), iptables (Docker + Warden rules),
    /// a userland proxy per port and tollgate, interleaved; writes results.md, results.json and
    /// an SVG chart to --out (default target/bench).
    Bench(bench::BenchArgs),
    /// Setup, build, then a soak: long-lived TCP flows, UDP and a stream of new connections
    /// through port maps while other containers, port maps, policies and limits churn; at the
    /// end no flow lost, every map back to its size, the daemon's memory flat. Writes
    /// results.md and results.json to --out (default target/soak).
    Soak(soak::SoakArgs),
    /// The bench's echo server (run in the container namespace).
    #[command(hide = true)]
    BenchEcho(bench::tools::EchoArgs),
    /// The bench's docker-proxy style userland proxy, one process per port.
    #[command(hide = true)]
    BenchProxy(bench::tools::ProxyArgs),
    /// The bench's listening-socket holder (proxy mode's other published ports).
    #[command(hide = true)]
    BenchListen(bench::tools::ListenArgs),
    /// The bench's load generator (rr, crr).
    #[command(hide = true)]
    BenchLoad(bench::tools::LoadArgs),
}

/// `cargo xtask bench ratelimit [--secs N] [--reps N] [--no-build]`.
#[derive(Parser)]
#[command(name = "cargo xtask bench ratelimit")]
struct RatelimitCli {
    #[command(flatten)]
    args: bench_ratelimit::RatelimitArgs,
}

/// `cargo xtask bench cni [--quick] [--runs N] [--others N] [--ports-per-other N] ...`.
#[derive(Parser)]
#[command(name = "cargo xtask bench cni")]
struct CniCli {
    #[command(flatten)]
    args: bench::cni::CniArgs,
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    let sub = raw.get(1..3);
    let result = if sub == Some(&["bench".to_string(), "ratelimit".to_string()]) {
        bench_ratelimit::run(&RatelimitCli::parse_from(&raw[2..]).args)
    } else if sub == Some(&["bench".to_string(), "cni".to_string()]) {
        bench::cni::run(&CniCli::parse_from(&raw[2..]).args)
    } else {
        match Cli::parse().task {
            Task::Setup => setup::run(),
            Task::Build(args) => build::run(&args).map(|_| ()),
            Task::InstallCni(args) => build::install_cni(&args),
            Task::Test(args) => test::run(&args),
            Task::BuildAndRun(args) => run::run(&args),
            Task::Package(args) => package::run(&args),
            Task::Bench(args) => bench::run(&args),
            Task::Soak(args) => soak::run(&args),
            Task::BenchEcho(args) => bench::tools::echo(&args),
            Task::BenchProxy(args) => bench::tools::proxy(&args),
            Task::BenchListen(args) => bench::tools::listen(&args),
            Task::BenchLoad(args) => bench::tools::load(&args),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a subdirectory of the workspace")
        .to_path_buf()
}

/// Effective uid 0 (read from /proc/self/status, `Uid: real effective saved fs`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Render a command for messages: `prog arg arg`.
pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run a command with inherited stdio (output streams through) and fail unless it succeeds.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Run a command quietly and return its stdout if it succeeded, `None` if it failed or could
/// not be started.
pub fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(std::process::Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `cargo` command run from the workspace root (through rustup's proxy, so `+nightly` works).
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(repo_root());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_cni_flags() {
        let cli = CniCli::try_parse_from(["cni", "--quick", "--others", "3", "--docs"]).unwrap();
        assert!(cli.args.quick && cli.args.docs);
        assert_eq!(cli.args.others, Some(3));
        assert!(CniCli::try_parse_from(["cni", "--bogus"]).is_err());
    }

    #[test]
    fn test_args_after_double_dash() {
        let cli = Cli::try_parse_from([
            "xtask",
            "test",
            "--test-threads",
            "4",
            "--",
            "portmap",
            "--",
            "--nocapture",
        ])
        .unwrap();
        let Task::Test(args) = cli.task else {
            panic!("not the test task")
        };
        assert_eq!(args.test_threads, 4);
        assert_eq!(args.extra, ["portmap", "--", "--nocapture"]);
    }
}
