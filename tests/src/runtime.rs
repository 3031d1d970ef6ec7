//! Real container runtimes in a test's sandbox: podman 4.3 (CNI backend) and containerd 1.6
//! (`ctr run --cni`), offline, inside the node network namespace of a [`crate::Sandbox`].
//!
//! ```text
//!  root ns (untouched)           node netns tgt-TAG-n
//!  test process ──nsenter──►  ┌ RuntimeNs: private mount + PID namespace, PID 1 = catatonit ┐
//!                             │ podman, conmon, containers, containerd, shims, ctr           │
//!                             │ /sys new sysfs (+ bpffs, cgroup v1 hierarchies)             │
//!                             │ /run, /dev/shm, /var/lib/cni, /var/lib/containers: tmpfs    │
//!                             │ /etc/cni/net.d, /opt/cni/bin: the test's own dirs (bind)    │
//!                             └──────────────────────────────────────────────────────────────┘
//! ```
//!
//! Every podman / containerd / ctr command of a test runs in one [`RuntimeNs`] (so overlay
//! mounts and podman's `/run/netns/netns-*` bind mounts persist across commands, and so
//! host-local IPAM state is shared between podman and ctr). Nothing is mounted or created in the
//! root mount namespace: the holder's mount namespace is private, directories that do not exist
//! on the host (`/var/lib/cni`, `/opt/cni/bin`) are made on an overlay of their nearest existing
//! parent whose upper layer lives in the test's directory. The holder is PID 1 of a PID namespace
//! of its own; killing it (drop) kills every process the runtimes started, containers included,
//! and the mount namespace with its overlay and nsfs mounts dies with them. If the test process
//! itself is killed, the holder follows (parent-death signal, `unshare --kill-child`); only
//! the runc cgroups of `ctr` containers still running then stay behind.
//!
//! What a CNI plugin under test sees there: the node netns; `/tmp` (and so the sandbox's dir,
//! the daemon's socket) as on the host; a fresh `/run` (the host's `/run/tollgate`, `/run/netns`
//! are hidden: `/run/netns` holds the node netns, podman's `netns-*` and what
//! [`RuntimeNs::expose_netns`] adds); bpffs at `/sys/fs/bpf` as on the host. The `CNI_NETNS`
//! paths it gets (`/run/netns/netns-*` from podman, `/proc/PID/ns/net` with a PID of the
//! runtime's PID namespace from ctr) only resolve inside: a daemon in the root mount namespace
//! cannot open them, hand it an open fd. `ctr run --cni` uses the lexically first conflist of
//! the CNI config dir.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Read,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{Cli, Sandbox};

/// Upper bound for one podman / ctr command.
pub const CMD_TIMEOUT: Duration = Duration::from_mins(1);

/// Where the standard CNI plugins live (Debian's containernetworking-plugins).
pub const SYSTEM_CNI_BIN: &str = "/usr/lib/cni";

/// The holder's set-up, run by `sh -s` as PID 1 of the new PID namespace before it becomes
/// `catatonit -P` (a reaper that waits forever). `$1` work dir, `$2` node netns name,
/// `$3` CNI config dir, `$4` CNI plugin dir.
const HOLDER_SCRIPT: &str = r#"
set -eu
D=$1; NODE=$2; CONF=$3; BIN=$4; M=$D/mnt
mkdir -p "$M"
# Make directory $1 exist without touching the host's filesystem: overlay its nearest
# existing ancestor (upper layer in the work dir), then create it there.
ensure_dir() {
  [ -d "$1" ] && return 0
  a=$(dirname "$1")
  while [ ! -d "$a" ]; do a=$(dirname "$a"); done
  [ "$a" = / ] && { echo "refusing to overlay / for $1" >&2; exit 1; }
  u=$M/ovl/$(echo "$a" | tr / _)
  mkdir -p "$u/up" "$u/work"
  mount -t overlay -o "lowerdir=$a,upperdir=$u/up,workdir=$u/work" overlay "$a"
  mkdir -p "$1"
}
# `ip netns exec` semantics: a sysfs of the node netns (the old /sys shows the root netns'
# devices). That hides bpffs and the cgroup mounts crun/runc check: carry bpffs over, mount the
# cgroup v1 hierarchies again (not the hybrid `unified` cgroup2: crun refuses hybrid mode).
cgroups=$(awk '$3 == "cgroup" { print $2, $4 }' /proc/self/mounts)
cg2=$(awk '$2 == "/sys/fs/cgroup" && $3 == "cgroup2" { print "yes" }' /proc/self/mounts)
bpf=$(awk '$2 == "/sys/fs/bpf" && $3 == "bpf" { print "yes" }' /proc/self/mounts)
if [ -n "$bpf" ]; then mkdir -p "$M/bpf"; mount --bind /sys/fs/bpf "$M/bpf"; fi
mount -t sysfs sysfs /sys
if [ -n "$bpf" ]; then mount --move "$M/bpf" /sys/fs/bpf; fi
if [ -n "$cg2" ]; then
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
else
  mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
  echo "$cgroups" | while read -r dir opts; do
    [ -n "$dir" ] || continue
    mkdir -p "$dir"; mount -t cgroup -o "$opts" cgroup "$dir"
  done
fi
# Runtime state outside the work dir: fresh, private, gone with the namespace.
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/netns /run/lock
touch "/run/netns/$NODE"; mount --bind /proc/self/ns/net "/run/netns/$NODE"
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
for d in /var/lib/cni /var/lib/containers; do ensure_dir "$d"; mount -t tmpfs -o mode=755 tmpfs "$d"; done
# containerd's CNI dirs are fixed: bind the test's own over them.
ensure_dir /etc/cni/net.d; mount --bind "$CONF" /etc/cni/net.d
ensure_dir /opt/cni/bin; mount --bind "$BIN" /opt/cni/bin
touch "$M/ready"
exec catatonit -P
"#;

/// Runs `cmd` (stdin /dev/null) with a time limit; a timeout kills the direct child and reports
/// code -1 (processes it left inside a [`RuntimeNs`] die with the namespace).
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Cli {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Cli {
                code: -1,
                stdout: String::new(),
                stderr: format!("spawning {}: {e}", cmd.get_program().display()),
            }
        }
    };
    let stdout = read_in_thread(child.stdout.take());
    let stderr = read_in_thread(child.stderr.take());
    let pid = child.id().cast_signed();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let (code, timed_out) = match rx.recv_timeout(timeout) {
        Ok(Ok(st)) => (st.code().unwrap_or(-1), false),
        Ok(Err(_)) => (-1, false),
        Err(_) => {
            // SAFETY: the child is not reaped yet (its waiter is blocked), so the pid is ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv_timeout(Duration::from_secs(5));
            (-1, true)
        }
    };
    // A grandchild may keep a pipe open: take what came within a short grace period.
    let grace = Duration::from_secs(2);
    let stdout = stdout.recv_timeout(grace).unwrap_or_default();
    let mut stderr = stderr.recv_timeout(grace).unwrap_or_default();
    if timed_out {
        let _ = write!(stderr, "\n(timed out after {timeout:?})");
    }
    Cli {
        code,
        stdout,
        stderr,
    }
}

fn read_in_thread(r: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// `cli` must have succeeded; returns its stdout.
pub fn require(what: &str, cli: Cli) -> Result<String> {
    if cli.code != 0 {
        bail!(
            "{what} failed ({}): {}{}",
            cli.code,
            cli.stderr.trim(),
            if cli.stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", cli.stdout.trim())
            }
        );
    }
    Ok(cli.stdout)
}

/// The direct children of `pid` (as the root PID namespace numbers them).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Inode of `/proc/PID/ns/KIND`, the identity of that namespace.
fn ns_inode(pid: u32, kind: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .map(|m| m.ino())
}

/// Every process (root-namespace pid) whose `kind` namespace is `inode`.
fn procs_in_ns(kind: &str, inode: u64) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| ns_inode(p, kind) == Some(inode))
        .collect()
}

/// One private mount namespace (and PID namespace) inside the node netns, kept alive by a holder
/// process, in which every podman / containerd / ctr command of a test runs. See the module doc.
pub struct RuntimeNs {
    node: String,
    dir: PathBuf,
    cni_conf_dir: PathBuf,
    cni_bin_dir: PathBuf,
    tag: String,
    /// `nsenter --net` turned `unshare`: the holder's parent, waited for on drop.
    unshare: Child,
    /// The holder (PID 1 of the private PID namespace), as the root namespace numbers it.
    holder: u32,
    mnt_ns: u64,
    pid_ns: u64,
}

impl RuntimeNs {
    /// Starts the holder in `node_netns`. `dir` is the namespace's own work directory (created
    /// here, removed on drop); `cni_conf_dir` and `cni_bin_dir` appear at `/etc/cni/net.d` and
    /// `/opt/cni/bin` inside (podman is pointed at them by path, see [`Podman`]). All three must
    /// be absolute and outside `/run`, `/var/lib/cni`, `/var/lib/containers`, `/sys`, `/dev/shm`.
    pub fn new(
        node_netns: &str,
        dir: &Path,
        cni_conf_dir: &Path,
        cni_bin_dir: &Path,
    ) -> Result<Self> {
        for p in [dir, cni_conf_dir, cni_bin_dir] {
            if !p.is_absolute() {
                bail!("{} must be absolute", p.display());
            }
        }
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        fs::create_dir_all(cni_conf_dir)?;
        fs::create_dir_all(cni_bin_dir)?;
        let log = fs::File::create(dir.join("holder.log"))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{node_netns}"))
            .args([
                "--",
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                "-c",
                HOLDER_SCRIPT,
                "holder",
            ])
            .arg(dir)
            .arg(node_netns)
            .arg(cni_conf_dir)
            .arg(cni_bin_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl in the forked child before exec; async-signal-safe. `unshare` (what
        // nsenter becomes) then dies with this thread, and takes the holder with it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut unshare = cmd
            .spawn()
            .context("spawning the runtime namespace holder")?;
        let (holder, mnt_ns, pid_ns) = match wait_for_holder(&mut unshare, dir) {
            Ok(h) => h,
            Err(e) => {
                // `unshare` dying takes the holder (--kill-child) and its namespaces along.
                let _ = unshare.kill();
                let _ = unshare.wait();
                let _ = fs::remove_dir_all(dir);
                return Err(e);
            }
        };
        Ok(Self {
            node: node_netns.to_string(),
            dir: dir.to_path_buf(),
            cni_conf_dir: cni_conf_dir.to_path_buf(),
            cni_bin_dir: cni_bin_dir.to_path_buf(),
            tag: node_netns.trim_end_matches("-n").to_string(),
            unshare,
            holder,
            mnt_ns,
            pid_ns,
        })
    }

    /// The holder's pid (PID 1 of the runtime's PID namespace), as the root namespace sees it.
    pub fn holder_pid(&self) -> u32 {
        self.holder
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cni_conf_dir(&self) -> &Path {
        &self.cni_conf_dir
    }

    pub fn cni_bin_dir(&self) -> &Path {
        &self.cni_bin_dir
    }

    /// A prefix unique to this test (the node netns name without `-n`), for names that must
    /// not collide with other tests' (containerd ids, whose cgroups are cleaned up by it).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `program` to run inside the namespace (net, mount and PID namespaces of the holder).
    /// The environment passes through.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.holder.to_string(),
            "-m",
            "-n",
            "-p",
            "--",
            program,
        ]);
        c
    }

    /// Runs `program args` inside, bounded by [`CMD_TIMEOUT`].
    pub fn run(&self, program: &str, args: &[&str]) -> Cli {
        let mut c = self.command(program);
        c.args(args);
        run_bounded(c, CMD_TIMEOUT)
    }

    /// Runs a shell script inside (`sh -c`).
    pub fn sh(&self, script: &str) -> Cli {
        self.run("sh", &["-c", script])
    }

    /// Makes the root namespace's `/run/netns/NAME` (another netns of the test) visible at the
    /// same path inside, for tools that look netns up by name there.
    pub fn expose_netns(&self, name: &str) -> Result<()> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{name}"))
            .args(["-t", &self.holder.to_string(), "-m", "-p", "--", "sh", "-c"])
            .arg(r#"touch "/run/netns/$0" && mount --bind /proc/self/ns/net "/run/netns/$0""#)
            .arg(name);
        require(
            &format!("exposing netns {name}"),
            run_bounded(c, CMD_TIMEOUT),
        )
        .map(drop)
    }

    /// Processes living in the namespace (root-namespace pids), the holder included.
    pub fn processes(&self) -> Vec<u32> {
        procs_in_ns("pid", self.pid_ns)
    }
}

/// Waits until the holder script is done; returns the holder's pid and its mount and PID
/// namespace inodes.
fn wait_for_holder(unshare: &mut Child, dir: &Path) -> Result<(u32, u64, u64)> {
    let ready = dir.join("mnt/ready");
    let start = Instant::now();
    let log = || fs::read_to_string(dir.join("holder.log")).unwrap_or_default();
    while !ready.exists() {
        if let Some(st) = unshare.try_wait()? {
            bail!("runtime namespace holder exited ({st}):\n{}", log());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("runtime namespace holder not ready in 10 s:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let holder = children_of(unshare.id())
        .first()
        .copied()
        .context("holder process not found")?;
    match (ns_inode(holder, "mnt"), ns_inode(holder, "pid")) {
        (Some(mnt), Some(pid)) => Ok((holder, mnt, pid)),
        _ => bail!("holder {holder} vanished:\n{}", log()),
    }
}

/// The usual set-up for a sandbox: CNI dirs `sb.dir/cni/net.d` (empty) and `sb.dir/cni/bin`
/// (the system plugins plus `extra_plugins`, see [`cni_bin_dir`]), and a [`RuntimeNs`] in the
/// node netns with its work dir at `sb.dir/rt`.
pub fn runtime_for(sb: &Sandbox, extra_plugins: &[(&str, &Path)]) -> Result<Arc<RuntimeNs>> {
    let cni = sb.dir.join("cni");
    cni_bin_dir(&cni.join("bin"), extra_plugins)?;
    Ok(Arc::new(RuntimeNs::new(
        &sb.node,
        &sb.dir.join("rt"),
        &cni.join("net.d"),
        &cni.join("bin"),
    )?))
}

impl Drop for RuntimeNs {
    fn drop(&mut self) {
        // Anything that entered the mount namespace without its PID namespace (not via
        // `command`) would survive the holder: kill it first.
        for p in procs_in_ns("mnt", self.mnt_ns) {
            if ns_inode(p, "pid") != Some(self.pid_ns) {
                // SAFETY: plain kill(2) of a process found in our own namespace.
                unsafe { libc::kill(p.cast_signed(), libc::SIGKILL) };
            }
        }
        // PID 1 gone: the kernel kills every process of the PID namespace (nested ones too).
        // SAFETY: plain kill(2); the holder is our grandchild and not reaped by anyone else
        // while `unshare` (its parent, ours) is alive.
        unsafe { libc::kill(self.holder.cast_signed(), libc::SIGKILL) };
        let start = Instant::now();
        loop {
            let unshare_done = matches!(self.unshare.try_wait(), Ok(Some(_)) | Err(_));
            if unshare_done
                && procs_in_ns("pid", self.pid_ns).is_empty()
                && procs_in_ns("mnt", self.mnt_ns).is_empty()
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.unshare.kill();
                let _ = self.unshare.wait();
                eprintln!("runtime namespace {}: processes left behind", self.tag);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        remove_cgroups(&self.tag);
        if std::thread::panicking() {
            let log = fs::read_to_string(self.dir.join("holder.log")).unwrap_or_default();
            if !log.trim().is_empty() {
                eprintln!("--- runtime holder log ({}) ---\n{log}", self.tag);
            }
        }
        if fs::remove_dir_all(&self.dir).is_err() {
            // Nothing is mounted under dir in the root namespace by design; if something is
            // (a foreign mount), detach it and try again.
            unmount_under(&self.dir);
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes (empty, leaf-first) cgroup v1 directories whose name starts with `TAG-`: runc makes
/// one per container in every hierarchy below the caller's cgroup and removes it on `task rm`;
/// a container killed with its namespace leaves them behind.
fn remove_cgroups(tag: &str) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2 && f[2] == "cgroup" {
            remove_tagged(Path::new(f[1]), tag, 4);
        }
    }
}

fn remove_tagged(dir: &Path, tag: &str, depth: u32) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let p = e.path();
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{tag}-"))
        {
            remove_cgroup_tree(&p);
        } else if depth > 0 {
            remove_tagged(&p, tag, depth - 1);
        }
    }
}

fn remove_cgroup_tree(p: &Path) {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(p);
}

/// Lazily unmounts every mount point at or under `dir` (deepest first) in our namespace.
fn unmount_under(dir: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = Command::new("umount").args(["-l", m]).output();
    }
}

// ---------------------------------------------------------------------------------------------
// Images and CNI helpers.

/// Builds a busybox root filesystem at `dest` (created): `/bin/busybox` (busybox-static) with a
/// symlink per applet, `/bin/sh`, `etc/passwd`, `etc/group`, `etc/hosts`, `www/index.html`
/// ([`INDEX_HTML`]) and the usual mount-point directories.
pub fn build_rootfs(dest: &Path) -> Result<()> {
    const BUSYBOX: &str = "/bin/busybox";
    let bin = dest.join("bin");
    for d in [
        "bin", "etc", "www", "proc", "sys", "dev", "tmp", "root", "run",
    ] {
        fs::create_dir_all(dest.join(d))?;
    }
    fs::set_permissions(dest.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::copy(BUSYBOX, bin.join("busybox"))
        .with_context(|| format!("copying {BUSYBOX} (package busybox-static)"))?;
    let list = require(
        "busybox --list",
        run_bounded(
            {
                let mut c = Command::new(BUSYBOX);
                c.arg("--list");
                c
            },
            CMD_TIMEOUT,
        ),
    )?;
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let link = bin.join(applet);
        if applet != "busybox" && fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }
    fs::write(
        dest.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    fs::write(dest.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    fs::write(dest.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    fs::write(dest.join("www/index.html"), INDEX_HTML)?;
    // `GET /cgi-bin/peer` answers the client's address as the container sees it.
    fs::create_dir_all(dest.join("www/cgi-bin"))?;
    let cgi = dest.join("www/cgi-bin/peer");
    fs::write(
        &cgi,
        "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"peer=$REMOTE_ADDR\"\n",
    )?;
    fs::set_permissions(&cgi, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// What `www/index.html` of [`build_rootfs`] holds.
pub const INDEX_HTML: &str = "tollgate test busybox\n";

/// Makes `dir` a CNI plugin directory: a symlink to every plugin of [`SYSTEM_CNI_BIN`] plus
/// `extra` (name, binary) pairs (a plugin under test, say).
pub fn cni_bin_dir(dir: &Path, extra: &[(&str, &Path)]) -> Result<()> {
    fs::create_dir_all(dir)?;
    for e in fs::read_dir(SYSTEM_CNI_BIN)
        .with_context(|| format!("{SYSTEM_CNI_BIN} (package containernetworking-plugins)"))?
        .flatten()
    {
        let link = dir.join(e.file_name());
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(e.path(), link)?;
        }
    }
    for (name, bin) in extra {
        let link = dir.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(bin, link)?;
    }
    Ok(())
}

/// The standard podman-style network: `bridge` (gateway, masquerade, hairpin) with `host-local`
/// IPAM over `subnet` (`10.89.0.0/24`: gateway `.1`) and `portmap`, as a cniVersion 1.0.0
/// conflist.
pub fn bridge_conflist(name: &str, bridge: &str, subnet: &str) -> Value {
    let gateway = subnet
        .split('/')
        .next()
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
        .map(|ip| std::net::Ipv4Addr::from(u32::from(ip) + 1).to_string())
        .unwrap_or_default();
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "ranges": [[{"subnet": subnet, "gateway": gateway}]]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
}

/// Writes `bin_dir/name`: a CNI plugin that runs `real` with the same environment and stdin,
/// answers what it answered, and appends a record of the call to `log` (see [`read_capture`]).
pub fn capture_plugin(bin_dir: &Path, name: &str, real: &Path, log: &Path) -> Result<()> {
    let script = format!(
        r#"#!/bin/sh
# CNI call recorder: runs {real} and logs the call to {log}.
in=$(cat)
out=$(printf '%s' "$in" | '{real}'); rc=$?
if [ -n "${{CNI_NETNS:-}}" ] && [ -e "$CNI_NETNS" ]; then ns=yes; else ns=no; fi
{{
  printf '=== %s\n' "$(date +%H:%M:%S.%N)"
  env | grep '^CNI_' | sort
  printf 'TG_NETNS_EXISTS=%s\n' "$ns"
  printf -- '--- stdin\n%s\n--- stdout\n%s\n--- rc %s\n' "$in" "$out" "$rc"
}} | flock '{log}' sh -c 'cat >> "$0"' '{log}'
printf '%s' "$out"
exit $rc
"#,
        real = real.display(),
        log = log.display()
    );
    let path = bin_dir.join(name);
    let _ = fs::remove_file(&path);
    fs::write(&path, script)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// One recorded plugin call.
#[derive(Debug, Clone, Default)]
pub struct CniCall {
    /// `CNI_*` variables (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
    /// `CNI_ARGS`, `CNI_PATH`), plus `TG_NETNS_EXISTS` (`yes`/`no`).
    pub env: BTreeMap<String, String>,
    pub stdin: String,
    pub stdout: String,
    pub rc: i32,
}

impl CniCall {
    pub fn command(&self) -> &str {
        self.env.get("CNI_COMMAND").map_or("", String::as_str)
    }

    pub fn var(&self, k: &str) -> &str {
        self.env.get(k).map_or("", String::as_str)
    }

    /// Whether `CNI_NETNS` named an existing file when the plugin ran.
    pub fn netns_existed(&self) -> bool {
        self.var("TG_NETNS_EXISTS") == "yes"
    }

    /// The config on stdin (`Value::Null` if it does not parse).
    pub fn config(&self) -> Value {
        serde_json::from_str(&self.stdin).unwrap_or(Value::Null)
    }
}

/// Parses a [`capture_plugin`] log (missing file: no calls).
pub fn read_capture(log: &Path) -> Vec<CniCall> {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut calls = Vec::new();
    for rec in text.split("=== ").skip(1) {
        let mut call = CniCall::default();
        let mut section = "";
        for line in rec.lines().skip(1) {
            if line == "--- stdin" || line == "--- stdout" {
                section = line;
                continue;
            }
            if let Some(rc) = line.strip_prefix("--- rc ") {
                call.rc = rc.trim().parse().unwrap_or(-1);
                break;
            }
            match section {
                "--- stdin" => call.stdin.push_str(line),
                "--- stdout" => {
                    call.stdout.push_str(line);
                    call.stdout.push('\n');
                }
                _ => {
                    if let Some((k, v)) = line.split_once('=') {
                        call.env.insert(k.to_string(), v.to_string());
                    }
                }
            }
        }
        calls.push(call);
    }
    calls
}

// ---------------------------------------------------------------------------------------------
// podman.

/// Podman 4.3 with the CNI backend, private storage and configuration under
/// `RuntimeNs::dir()/podman`, networks from the namespace's CNI config dir, plugins from its CNI
/// plugin dir. Drop removes every container (`podman rm -af -t 0`, so CNI DEL runs).
pub struct Podman {
    rt: Arc<RuntimeNs>,
    dir: PathBuf,
}

impl Podman {
    pub fn new(rt: &Arc<RuntimeNs>) -> Result<Self> {
        let dir = rt.dir().join("podman");
        for d in ["graph", "run", "tmp", "home"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let q = |p: &Path| Value::String(p.display().to_string());
        let conf = format!(
            r#"[containers]
cgroups = "disabled"
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
log_driver = "k8s-file"
pids_limit = 0

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
tmp_dir = {tmp}
image_copy_tmp_dir = {tmp}

[network]
network_backend = "cni"
cni_plugin_dirs = [{bin}]
network_config_dir = {conf}
"#,
            tmp = q(&dir.join("tmp")),
            bin = q(rt.cni_bin_dir()),
            conf = q(rt.cni_conf_dir()),
        );
        fs::write(dir.join("containers.conf"), conf)?;
        let storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = {}\nrunroot = {}\n",
            q(&dir.join("graph")),
            q(&dir.join("run")),
        );
        fs::write(dir.join("storage.conf"), storage)?;
        Ok(Self {
            rt: rt.clone(),
            dir,
        })
    }

    pub fn runtime(&self) -> &Arc<RuntimeNs> {
        &self.rt
    }

    /// `podman ARGS` as a command (private environment set), for callers needing more control.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = self.rt.command("podman");
        c.args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", "/dev/null")
            .env("TMPDIR", self.dir.join("tmp"))
            .env("HOME", self.dir.join("home"))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME");
        c
    }

    /// Runs `podman ARGS` in the namespace, bounded by [`CMD_TIMEOUT`].
    pub fn podman(&self, args: &[&str]) -> Cli {
        run_bounded(self.command(args), CMD_TIMEOUT)
    }

    /// `podman ARGS` that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        require(&format!("podman {}", args.join(" ")), self.podman(args))
    }

    /// Writes the network `name` (`CNI_CONF_DIR/name.conflist`).
    pub fn write_conflist(&self, name: &str, json: &Value) -> Result<()> {
        write_conflist(self.rt.cni_conf_dir(), name, json)
    }

    /// Imports a [`build_rootfs`] image (`podman import`, no registry) and returns its
    /// reference, `localhost/tg-bb`.
    pub fn import_busybox(&self) -> Result<String> {
        const IMAGE: &str = "localhost/tg-bb";
        let rootfs = self.dir.join("rootfs");
        let tar = self.dir.join("rootfs.tar");
        build_rootfs(&rootfs)?;
        let mut c = Command::new("tar");
        c.arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".");
        require("tar", run_bounded(c, CMD_TIMEOUT))?;
        self.ok(&["import", &tar.display().to_string(), IMAGE])?;
        Ok(IMAGE.to_string())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let r = run_bounded(self.command(&["rm", "-af", "-t", "0"]), CMD_TIMEOUT);
        if r.code != 0 && !std::thread::panicking() {
            eprintln!("podman rm -af: {}", r.stderr.trim());
        }
    }
}

/// Writes `dir/name.conflist`.
pub fn write_conflist(dir: &Path, name: &str, json: &Value) -> Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(
        dir.join(format!("{name}.conflist")),
        serde_json::to_string_pretty(json)?,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// containerd.

/// containerd 1.6 with its own root, state, socket and config under `RuntimeNs::dir()/containerd`,
/// running in the namespace; `ctr run --cni` uses the namespace's `/etc/cni/net.d` (the
/// lexically first conflist there) and `/opt/cni/bin`. Drop deletes leftover tasks and
/// containers and stops containerd.
pub struct Containerd {
    rt: Arc<RuntimeNs>,
    dir: PathBuf,
    socket: PathBuf,
    rootfs: PathBuf,
    /// `nsenter` whose child is containerd.
    child: Child,
}

impl Containerd {
    /// Starts containerd and waits (up to 10 s) until it answers; builds [`Self::rootfs`].
    pub fn start(rt: &Arc<RuntimeNs>) -> Result<Self> {
        let dir = rt.dir().join("containerd");
        fs::create_dir_all(&dir)?;
        let socket = dir.join("containerd.sock");
        let q = |p: &Path| Value::String(p.display().to_string());
        let config = format!(
            r#"version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = {sock}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}
"#,
            root = q(&dir.join("root")),
            state = q(&dir.join("state")),
            sock = q(&socket),
            ttrpc = q(&dir.join("containerd.sock.ttrpc")),
            opt = q(&dir.join("opt")),
        );
        fs::write(dir.join("config.toml"), config)?;
        let rootfs = dir.join("rootfs");
        build_rootfs(&rootfs)?;
        let log = fs::File::create(dir.join("containerd.log"))?;
        let child = rt
            .command("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning containerd")?;
        let mut c = Self {
            rt: rt.clone(),
            dir,
            socket,
            rootfs,
            child,
        };
        let start = Instant::now();
        loop {
            if c.socket.exists() && c.ctr(&["version"]).code == 0 {
                return Ok(c);
            }
            if let Some(st) = c.child.try_wait()? {
                bail!("containerd exited ({st}):\n{}", c.log());
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("containerd did not answer in 10 s:\n{}", c.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A busybox root filesystem ([`build_rootfs`]) for `ctr run --rootfs`.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A container id for this test (`TAG-short`): ids must start with the tag so that a
    /// container killed with the namespace has its runc cgroups removed.
    pub fn id(&self, short: &str) -> String {
        format!("{}-{short}", self.rt.tag())
    }

    /// `ctr --address SOCKET ARGS` in the namespace, bounded by [`CMD_TIMEOUT`].
    pub fn ctr(&self, args: &[&str]) -> Cli {
        let mut c = self.rt.command("ctr");
        c.arg("--address").arg(&self.socket).args(args);
        run_bounded(c, CMD_TIMEOUT)
    }

    /// `ctr run --cni --cgroup "" --rm --rootfs ROOTFS ID COMMAND...` (foreground): the
    /// container `id` (see [`Self::id`]) on the CNI network, removed (CNI DEL) when `command`
    /// exits. `--rootfs` containers get no PATH: give `command[0]` as an absolute path.
    pub fn run_rm(&self, id: &str, command: &[&str]) -> Cli {
        let rootfs = self.rootfs.display().to_string();
        let mut args = vec![
            "run", "--cni", "--cgroup", "", "--rm", "--rootfs", &rootfs, id,
        ];
        args.extend_from_slice(command);
        self.ctr(&args)
    }

    fn stop(&mut self) {
        // Leftover tasks and containers (no CNI DEL for these: ctr only runs DEL on `run --rm`).
        let tasks = self.ctr(&["task", "ls", "-q"]).stdout;
        for id in tasks.split_whitespace() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["task", "rm", "-f", id]);
        }
        let containers = self.ctr(&["containers", "ls", "-q"]).stdout;
        for id in containers.split_whitespace() {
            let _ = self.ctr(&["containers", "rm", id]);
        }
        for pid in children_of(self.child.id()) {
            // SAFETY: kill(2) of containerd, the child of our own nsenter child.
            unsafe { libc::kill(pid.cast_signed(), libc::SIGTERM) };
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in children_of(self.child.id()) {
            // SAFETY: as above.
            unsafe { libc::kill(pid.cast_signed(), libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- containerd log ---\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
    }
}
