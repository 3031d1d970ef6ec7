//! Network namespaces: named ones under /run/netns (created the way `ip netns add` does),
//! entering one for the whole daemon, running a closure inside one on a private thread, and
//! the netns cookie the socket hooks compare against.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
};

pub const NETNS_DIR: &str = "/run/netns";

/// Path of a named namespace.
pub fn named_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Moves the calling thread into the namespace at `path`. Called before any other thread
/// exists so that every thread the daemon starts (tokio workers included) inherits it.
pub fn enter(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| {
        format!(
            "opening network namespace {} (does it exist? `ip netns list`)",
            path.display()
        )
    })?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", path.display()))
}

/// Creates the named namespace `name` (like `ip netns add`): a fresh netns bind-mounted on
/// /run/netns/NAME so it outlives every process. Fails if it already exists.
pub fn create_named(name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(NETNS_DIR).context("creating /run/netns")?;
    let path = named_path(name);
    if path.exists() {
        bail!("network namespace {name} already exists (remove it or pass --netns PATH)");
    }
    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let target = path.clone();
    // unshare() affects only the calling thread; a throwaway thread keeps the daemon's own
    // threads in the node namespace.
    let res = std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind-mounting the new namespace on {}", target.display()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns creation thread panicked"))?;
    if let Err(e) = res {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Removes a named namespace created by `create_named` (its interfaces go with it once no
/// process holds it).
pub fn delete_named(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", path.display())),
    }
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
}

/// Runs `f` on a private thread inside the namespace at `path`, so the caller's namespace
/// is untouched. Sockets created by `f` (e.g. a netlink connection) stay bound to that
/// namespace.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = File::open(path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    let p = path.display().to_string();
    std::thread::spawn(move || -> Result<T> {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering network namespace {p}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace worker thread panicked"))?
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, kernel >= 5.14):
/// the same value `bpf_get_netns_cookie()` returns for sockets in it.
pub fn current_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))
        .context("creating a socket to read the netns cookie")?;
    let mut cookie: u64 = 0;
    let mut len: libc::socklen_t = 8;
    // SAFETY: valid fd, buffer and length for a u64 option.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(SO_NETNS_COOKIE)");
    }
    Ok(cookie)
}

/// Writes a sysctl of the calling process's network namespace.
pub fn set_sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("setting {key}={value}"))
}
