//! Podman 4.3 (CNI backend), offline, inside the bench sandbox's node namespace: a port of
//! what `cargo xtask bench cni` needs of `tests/src/runtime.rs` (xtask cannot depend on the
//! tests crate, which builds the eBPF object before setup has run).
//!
//! ```text
//!  root ns (untouched)        node netns TAG-n
//!  xtask ──nsenter──►  ┌ RuntimeNs: private mount + PID namespace, PID 1 = catatonit ┐
//!                      │ podman, conmon, crun, the containers                         │
//!                      │ /sys: new sysfs (+ bpffs, cgroup v1 hierarchies)             │
//!                      │ /run, /dev/shm, /var/lib/cni, /var/lib/containers: tmpfs     │
//!                      └──────────────────────────────────────────────────────────────┘
//! ```
//!
//! Every podman command runs in the one [`RuntimeNs`], so overlay mounts, podman's
//! `/run/netns/netns-*` files and host-local's IPAM state persist between commands. Nothing is
//! mounted in the root mount namespace: a directory missing on the host (`/var/lib/cni`) is
//! made on an overlay of its nearest existing parent, inside. Killing the holder (drop) kills
//! every process podman started, containers included, and the mount namespace dies with them;
//! if xtask dies, the holder follows (parent-death signal, `unshare --kill-child`). The holder
//! has a process group of its own, so a Ctrl-C at the terminal reaches xtask, which tears the
//! namespace down in order, and not the holder.

use std::{
    fs,
    io::Read,
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Upper bound for one podman command.
pub const CMD_TIMEOUT: Duration = Duration::from_mins(1);

/// Where the standard CNI plugins live (Debian's containernetworking-plugins).
pub const SYSTEM_CNI_BIN: &str = "/usr/lib/cni";

/// The holder's set-up, run by `sh -c` as PID 1 of the new PID namespace before it becomes
/// `catatonit -P` (a reaper that waits forever). `$1` work dir, `$2` node netns name.
const HOLDER_SCRIPT: &str = r#"
set -eu
D=$1; NODE=$2; M=$D/mnt
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
# `ip netns exec` semantics: a sysfs of the node netns. That hides bpffs and the cgroup mounts
# crun checks: carry bpffs over, mount the cgroup v1 hierarchies again (not the hybrid
# `unified` cgroup2: crun refuses hybrid mode).
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
touch "$M/ready"
exec catatonit -P
"#;

/// What a bounded command left behind.
pub struct Output {
    /// Exit code; -1 when killed (timeout, interrupt) or not started.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Stdout if the command succeeded, else an error naming `what` with its stderr.
    pub fn ok(self, what: &str) -> Result<String> {
        if self.code != 0 {
            bail!(
                "{what} failed ({}): {}{}",
                self.code,
                self.stderr.trim(),
                if self.stdout.trim().is_empty() {
                    String::new()
                } else {
                    format!("\nstdout: {}", self.stdout.trim())
                }
            );
        }
        Ok(self.stdout)
    }
}

/// Runs `cmd` (stdin /dev/null) with a time limit; a timeout or an interrupt (Ctrl-C) kills
/// the direct child and reports code -1 (what it left inside a [`RuntimeNs`] dies with it).
/// Output a grandchild keeps a pipe of open for is taken for a short grace period only.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Output {
                code: -1,
                stdout: String::new(),
                stderr: format!("spawning {}: {e}", cmd.get_program().display()),
            }
        }
    };
    let stdout = read_in_thread(child.stdout.take());
    let stderr = read_in_thread(child.stderr.take());
    let start = Instant::now();
    let (code, why) = loop {
        match child.try_wait() {
            Ok(Some(st)) => break (st.code().unwrap_or(-1), None),
            Err(e) => break (-1, Some(format!("waiting: {e}"))),
            Ok(None) => {}
        }
        if super::super::interrupted() {
            super::super::sandbox::kill_child(&mut child);
            break (-1, Some("interrupted".to_string()));
        }
        if start.elapsed() > timeout {
            super::super::sandbox::kill_child(&mut child);
            break (-1, Some(format!("timed out after {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let grace = Duration::from_secs(2);
    let stdout = stdout.recv_timeout(grace).unwrap_or_default();
    let mut stderr = stderr.recv_timeout(grace).unwrap_or_default();
    if let Some(why) = why {
        stderr.push_str("\n(");
        stderr.push_str(&why);
        stderr.push(')');
    }
    Output {
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

/// One private mount namespace (and PID namespace) inside the node netns, kept alive by a
/// holder process, in which every podman command runs. See the module doc.
pub struct RuntimeNs {
    dir: PathBuf,
    /// `nsenter --net` turned `unshare`: the holder's parent, waited for on drop.
    unshare: Child,
    /// The holder (PID 1 of the private PID namespace), as the root namespace numbers it.
    holder: u32,
    mnt_ns: u64,
    pid_ns: u64,
}

impl RuntimeNs {
    /// Starts the holder in `node_netns`; `dir` (absolute, outside the directories the holder
    /// mounts over) is its work directory, created here and removed on drop.
    pub fn new(node_netns: &str, dir: &Path) -> Result<Self> {
        if !dir.is_absolute() {
            bail!("{} must be absolute", dir.display());
        }
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
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
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setpgid and prctl in the forked child before exec; both async-signal-safe.
        // A process group of its own keeps the terminal's Ctrl-C away (xtask tears down);
        // `unshare` (what nsenter becomes) dies with this thread and takes the holder along.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
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
            dir: dir.to_path_buf(),
            unshare,
            holder,
            mnt_ns,
            pid_ns,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every process the holder has started, containers' included (root-namespace pids).
    pub fn descendants(&self) -> Vec<u32> {
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&p| self.is_ancestor_of(p))
            .collect()
    }

    /// Whether the holder is an ancestor of `pid` (through the parent pids in
    /// `/proc/PID/stat`).
    fn is_ancestor_of(&self, mut pid: u32) -> bool {
        for _ in 0..64 {
            let Some(parent) = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
            else {
                return false;
            };
            if parent == self.holder {
                return true;
            }
            if parent <= 1 {
                return false;
            }
            pid = parent;
        }
        false
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

impl Drop for RuntimeNs {
    fn drop(&mut self) {
        // Anything that entered the mount namespace without its PID namespace would survive
        // the holder: kill it first.
        for p in procs_in_ns("mnt", self.mnt_ns) {
            if ns_inode(p, "pid") != Some(self.pid_ns) {
                // SAFETY: plain kill(2) of a process found in our own namespace.
                unsafe { libc::kill(p.cast_signed(), libc::SIGKILL) };
            }
        }
        // PID 1 gone: the kernel kills every process of the PID namespace. The holder is our
        // grandchild, not reaped while `unshare` (its parent, our child) lives: check first.
        if matches!(self.unshare.try_wait(), Ok(None)) {
            // SAFETY: plain kill(2) of the holder, whose parent we have not reaped.
            unsafe { libc::kill(self.holder.cast_signed(), libc::SIGKILL) };
        }
        let start = Instant::now();
        loop {
            let unshare_done = matches!(self.unshare.try_wait(), Ok(Some(_)) | Err(_));
            if unshare_done
                && procs_in_ns("pid", self.pid_ns).is_empty()
                && procs_in_ns("mnt", self.mnt_ns).is_empty()
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.unshare.kill();
                let _ = self.unshare.wait();
                eprintln!(
                    "bench cni: runtime namespace {}: processes left behind",
                    self.dir.display()
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if fs::remove_dir_all(&self.dir).is_err() {
            // Nothing is mounted under dir in the root namespace by design; if something is
            // (a foreign mount), detach it and try again.
            unmount_under(&self.dir);
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
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

/// Makes `dir` a CNI plugin directory: a symlink to every plugin of [`SYSTEM_CNI_BIN`], and
/// a copy of `plugin` named `name` (as `cargo xtask install-cni` installs it).
pub fn cni_bin_dir(dir: &Path, name: &str, plugin: &Path) -> Result<()> {
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
    let dest = dir.join(name);
    let _ = fs::remove_file(&dest);
    fs::copy(plugin, &dest).with_context(|| format!("copying {}", plugin.display()))?;
    Ok(())
}

/// The standard podman-style network: `bridge` (gateway, masquerade, hairpin) with
/// `host-local` IPAM over `subnet` (`10.89.0.0/24`: gateway `.1`) and `portmap`, as a
/// cniVersion 1.0.0 conflist.
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

/// A network on Tollgate through `tollgate-cni` (installed as `tollgate`), as the README
/// shows it.
pub fn tollgate_conflist(name: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "tollgate",
            "socket": socket,
            "network": "default",
            "capabilities": {"portMappings": true, "bandwidth": true},
        }],
    })
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

/// Podman 4.3 with the CNI backend, private storage and configuration under
/// `RuntimeNs::dir()/podman`, networks from `cni_conf`, plugins from `cni_bin`.
pub struct Podman<'a> {
    rt: &'a RuntimeNs,
    dir: PathBuf,
}

impl<'a> Podman<'a> {
    pub fn new(rt: &'a RuntimeNs, cni_conf: &Path, cni_bin: &Path) -> Result<Self> {
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
            bin = q(cni_bin),
            conf = q(cni_conf),
        );
        fs::write(dir.join("containers.conf"), conf)?;
        let storage = format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = {}\nrunroot = {}\n",
            q(&dir.join("graph")),
            q(&dir.join("run")),
        );
        fs::write(dir.join("storage.conf"), storage)?;
        Ok(Self { rt, dir })
    }

    /// `podman ARGS` as a command (private environment set).
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

    /// `podman ARGS` that must succeed (within [`CMD_TIMEOUT`]); returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        run_bounded(self.command(args), CMD_TIMEOUT).ok(&format!("podman {}", args.join(" ")))
    }

    /// Imports a [`build_rootfs`] image (`podman import`, no registry) with `extra` binaries
    /// in it, and returns its reference.
    pub fn import_image(&self, name: &str, extra: &[(&Path, &str)]) -> Result<String> {
        let rootfs = self.dir.join("rootfs");
        let tar = self.dir.join("rootfs.tar");
        build_rootfs(&rootfs, extra)?;
        let mut c = Command::new("tar");
        c.arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".");
        run_bounded(c, CMD_TIMEOUT).ok("tar")?;
        self.ok(&["import", &tar.display().to_string(), name])?;
        Ok(name.to_string())
    }
}

/// Builds a busybox root filesystem at `dest` (created): `/bin/busybox` (busybox-static) with a
/// symlink per applet, `etc/passwd`, `etc/group`, `etc/hosts`, `www/index.html`, the usual
/// mount-point directories, and each `extra` (host binary, path in the image) with the shared
/// libraries `ldd` lists for it, at their host paths.
pub fn build_rootfs(dest: &Path, extra: &[(&Path, &str)]) -> Result<()> {
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
    let mut list = Command::new(BUSYBOX);
    list.arg("--list");
    let list = run_bounded(list, CMD_TIMEOUT).ok("busybox --list")?;
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
    fs::write(dest.join("www/index.html"), "tollgate bench busybox\n")?;
    for (host, inside) in extra {
        copy_into(dest, host, inside)?;
        let mut ldd = Command::new("ldd");
        ldd.arg(host);
        let libs = run_bounded(ldd, CMD_TIMEOUT).ok(&format!("ldd {}", host.display()))?;
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2
        // (0x...)`, `linux-vdso.so.1 (0x...)` (no file).
        for lib in libs
            .lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        {
            copy_into(dest, Path::new(lib), lib)?;
        }
    }
    Ok(())
}

/// Copies host file `from` (symlinks followed) to `root/inside`, mode kept.
fn copy_into(root: &Path, from: &Path, inside: &str) -> Result<()> {
    let to = root.join(inside.trim_start_matches('/'));
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(from, &to).with_context(|| format!("copying {} into the image", from.display()))?;
    Ok(())
}
