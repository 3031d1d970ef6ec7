//! `cargo xtask setup`: make this machine able to build and test Tollgate.
//!
//! Idempotent and quiet when everything is already in place. Works on a fresh machine as root
//! with no stdin (CI). Steps:
//! 1. Debian packages the tests and the demo use (root only).
//! 2. The nightly toolchain with `rust-src` (the eBPF crate builds with `-Z build-std=core`) and
//!    clippy, and clippy + rustfmt on the default toolchain (`cargo xtask test` lints both).
//! 3. `bpf-linker`, built against nightly's own shared libLLVM (see
//!    shared/reference/ebpf-toolchain.md); rebuilt when nightly's LLVM changes.
//! 4. bpffs mounted at /sys/fs/bpf (root only).

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{is_root, output_of, run_cmd};

/// Debian packages used by the integration tests, the demo and debugging.
const PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iptables",
    "iperf3",
    "bpftool",
    "socat",
    "netcat-openbsd",
    "tcpdump",
    "procps",
    // tests/tests/api.rs drives the API with `curl --unix-socket`.
    "curl",
    // tests/src/runtime.rs runs real podman (CNI backend) and containerd (`ctr run --cni`)
    // offline: the runtimes, crun (podman) and runc (containerd's default), conmon, catatonit
    // (`--init`, and the runtime namespace's PID 1), a static busybox for the image, and the
    // standard CNI plugins in /usr/lib/cni.
    "podman",
    "crun",
    "conmon",
    "catatonit",
    "busybox-static",
    "containernetworking-plugins",
    "containerd",
    "runc",
    // `cargo xtask package` (dpkg-shlibdeps) and its tests (tests/tests/package.rs):
    // `systemd-analyze verify` of the unit, `man -l` of the pages, the zsh and fish
    // completions run by their shells.
    "dpkg-dev",
    "systemd",
    "man-db",
    "zsh",
    "fish",
    // The cluster store: etcd-client's build runs `protoc` (tonic/prost code generation) on
    // protos that import the well-known types (google/protobuf/descriptor.proto, only
    // recommended by protobuf-compiler, so not there with --no-install-recommends), and
    // tests/tests/cluster_store.rs runs a real etcd (Debian's 3.4) in a namespace of its own.
    "protobuf-compiler",
    "libprotobuf-dev",
    "etcd-server",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> Result<()> {
    let root = is_root();
    debian_packages(root).context("installing Debian packages")?;
    toolchains().context("setting up the Rust toolchains")?;
    bpf_linker().context("setting up bpf-linker")?;
    bpffs(root).context("mounting bpffs")?;
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    output_of(Command::new("dpkg").args(["-s", package])).is_some_and(|out| {
        out.lines()
            .any(|l| l.starts_with("Status:") && l.contains("install ok installed"))
    })
}

fn debian_packages(root: bool) -> Result<()> {
    if output_of(Command::new("dpkg").arg("--version")).is_none() {
        println!(
            "setup: no dpkg here; make sure these are installed: {}",
            PACKAGES.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !root {
        println!(
            "setup: not root: skipping the Debian packages {} (run `cargo xtask setup` as root)",
            missing.join(" ")
        );
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            // Wait for another apt/dpkg run instead of failing on its lock.
            .args([
                "-o",
                "DPkg::Lock::Timeout=600",
                "-o",
                "Dpkg::Use-Pty=0",
                "-qq",
            ])
            .args(args);
        cmd
    };
    run_cmd(&mut apt(&["update"]))?;
    run_cmd(apt(&["install", "-y", "--no-install-recommends"]).args(&missing))?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !dpkg_installed(p)).collect();
    if !still.is_empty() {
        bail!(
            "still not installed after apt-get install: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn rustup(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(args).stdin(Stdio::null());
    cmd
}

fn toolchains() -> Result<()> {
    let toolchains = output_of(&mut rustup(&["toolchain", "list"]))
        .context("`rustup toolchain list` failed; is rustup installed?")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly-")) {
        println!("setup: installing the nightly toolchain (for the eBPF crate)");
        run_cmd(&mut rustup(&[
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let has = |list: &str, component: &str| list.lines().any(|l| l.starts_with(component));

    let nightly = output_of(&mut rustup(&[
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !has(&nightly, "clippy") {
        println!("setup: adding clippy to nightly (`cargo xtask test` lints the eBPF crate)");
        run_cmd(&mut rustup(&[
            "component",
            "add",
            "clippy",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !has(&nightly, "rust-src") {
        println!("setup: adding rust-src to nightly (for -Z build-std=core)");
        run_cmd(&mut rustup(&[
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // The toolchain this workspace builds with (the default one): `cargo xtask test` lints.
    let current = output_of(&mut rustup(&["component", "list", "--installed"])).unwrap_or_default();
    let lints: Vec<&str> = ["clippy", "rustfmt"]
        .into_iter()
        .filter(|c| !has(&current, c))
        .collect();
    if !lints.is_empty() {
        println!(
            "setup: adding {} to the default toolchain",
            lints.join(" and ")
        );
        run_cmd(rustup(&["component", "add"]).args(&lints))?;
    }
    Ok(())
}

fn nightly_rustc(args: &[&str]) -> Result<String> {
    output_of(Command::new("rustc").arg("+nightly").args(args))
        .with_context(|| format!("`rustc +nightly {}` failed", args.join(" ")))
}

/// `bpf-linker --version` works (it loads the libLLVM it was linked against).
fn bpf_linker_works() -> bool {
    output_of(Command::new("bpf-linker").arg("--version")).is_some()
}

fn bpf_linker() -> Result<()> {
    let sysroot = nightly_rustc(&["--print", "sysroot"])?;
    let nightly_lib = PathBuf::from(sysroot.trim()).join("lib");
    let mut sos: Vec<String> = fs::read_dir(&nightly_lib)
        .with_context(|| format!("reading {}", nightly_lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("libLLVM.so."))
        .collect();
    sos.sort();
    let Some(llvm_so) = sos.into_iter().next() else {
        bail!("nightly ships no libLLVM.so.* in {}", nightly_lib.display());
    };
    let verbose = nightly_rustc(&["--version", "--verbose"])?;
    let major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
        .context("no `LLVM version: N` in `rustc +nightly --version --verbose`")?
        .to_string();

    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let prefix = Path::new(&home).join(".cache/tollgate/rust-llvm");
    let stamp = prefix.join("bpf-linker.stamp");
    let want = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{major} {llvm_so}\n");

    let works = bpf_linker_works();
    if works && fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(());
    }
    // A bpf-linker built by this same recipe before the stamp existed: adopt it when the
    // dynamic loader resolves it to exactly this nightly's libLLVM in our prefix.
    if works && !stamp.exists() && linked_against(&prefix, &llvm_so) {
        write_stamp(&prefix, &stamp, &want)?;
        return Ok(());
    }

    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} \
         ({llvm_so}); about a minute"
    );
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    // Drop links to an older nightly's LLVM, then link this one under both names.
    for entry in fs::read_dir(&lib)?.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with("libLLVM") {
            remove_if_present(&entry.path())?;
        }
    }
    for name in ["libLLVM.so", llvm_so.as_str()] {
        let link = lib.join(name);
        symlink(nightly_lib.join(&llvm_so), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }

    let mut install = Command::new("cargo");
    install
        .current_dir(&prefix) // away from this repository's .cargo/config.toml
        .env("LLVM_PREFIX", &prefix)
        .stdin(Stdio::null())
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ]);
    if works || installed_bpf_linker_exists() {
        // `cargo install` skips a crate already installed with the same version and features,
        // but this one was linked against another LLVM build.
        install.arg("--force");
    }
    run_cmd(&mut install)?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but `bpf-linker --version` fails; is cargo's bin \
             directory ($CARGO_HOME/bin) on PATH?"
        );
    }
    write_stamp(&prefix, &stamp, &want)
}

fn installed_bpf_linker_exists() -> bool {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    cargo_home.is_some_and(|h| h.join("bin/bpf-linker").exists())
}

/// `ldd $(which bpf-linker)` shows `LLVM_SO => PREFIX/lib/LLVM_SO`.
fn linked_against(prefix: &Path, llvm_so: &str) -> bool {
    let Some(path) = output_of(Command::new("sh").args(["-c", "command -v bpf-linker"])) else {
        return false;
    };
    let Some(ldd) = output_of(Command::new("ldd").arg(path.trim())) else {
        return false;
    };
    let expected = format!(
        "{llvm_so} => {}",
        prefix.join("lib").join(llvm_so).display()
    );
    ldd.lines().any(|l| l.trim_start().starts_with(&expected))
}

fn write_stamp(prefix: &Path, stamp: &Path, contents: &str) -> Result<()> {
    fs::create_dir_all(prefix)?;
    fs::write(stamp, contents).with_context(|| format!("writing {}", stamp.display()))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut fields = l.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}

fn bpffs(root: bool) -> Result<()> {
    if bpffs_mounted()? {
        return Ok(());
    }
    if !root {
        println!(
            "setup: not root: skipping mounting bpffs at {BPFFS} (run `cargo xtask setup` as root)"
        );
        return Ok(());
    }
    println!("setup: mounting bpffs at {BPFFS}");
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}
