//! Attach points: TCX ingress on the uplink and on each container's host veth, and the cgroup
//! v2 root for the socket hooks. Every attachment is a `bpf_link` pinned under `links/`, so it
//! outlives the daemon; removing the pin (and the last fd) detaches it.

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType,
};
use tracing::{debug, info};

use super::loader::Pins;

/// Attaches `prog` at TCX ingress or egress of `ifname` (in the daemon's namespace) unless a pinned
/// link for it already exists.
pub fn attach_tc(
    pins: &Pins,
    prog_name: &str,
    prog: &mut SchedClassifier,
    ifname: &str,
    at: TcAttachType,
) -> Result<()> {
    let pin = pins.link(prog_name, Some(ifname));
    if pin.exists() {
        debug!(%ifname, prog = prog_name, "TC link already pinned");
        return Ok(());
    }
    let id = prog
        .attach_with_options(ifname, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching {prog_name} to {ifname} {at:?} (TCX)"))?;
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("TCX link is not an fd link")?;
    link.pin(&pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    info!(%ifname, prog = prog_name, "attached");
    Ok(())
}

/// Detaches the TC link of `ifname` by removing its pin (a vanished interface has already
/// detached it).
pub fn detach_tc(pins: &Pins, prog_name: &str, ifname: &str) -> Result<()> {
    let pin = pins.link(prog_name, Some(ifname));
    match std::fs::remove_file(&pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", pin.display())),
    }
}

/// The cgroup v2 mount point (hybrid hierarchies mount it at /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .ok_or_else(|| {
            anyhow!(
                "no cgroup2 filesystem is mounted (the node-local port-map path needs cgroup v2)"
            )
        })
}

/// Attaches the socket hooks to the cgroup v2 root (multi-attach, so other tools' and other
/// tollgate daemons' programs coexist). They act only in this daemon's namespace.
pub fn attach_sock(pins: &Pins, progs: &mut BTreeMap<&'static str, CgroupSockAddr>) -> Result<()> {
    let root = cgroup2_root()?;
    let cg = File::open(&root).with_context(|| format!("opening cgroup {}", root.display()))?;
    for (name, prog) in progs.iter_mut() {
        let pin = pins.link(name, None);
        if pin.exists() {
            continue;
        }
        let id = prog
            // bpf_link attachments to a cgroup are always multi-attach; the kernel rejects
            // any attach flag on BPF_LINK_CREATE, so "Single" (0) is the right value here.
            .attach(cg.as_fd(), CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to cgroup {}", root.display()))?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .context("cgroup link is not an fd link")?;
        link.pin(&pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        info!(prog = name, cgroup = %root.display(), "attached");
    }
    Ok(())
}

/// Points every pinned link at the freshly loaded program of the same name
/// (`BPF_LINK_UPDATE` swaps the program atomically).
pub fn update_links(
    pins: &Pins,
    tc: &mut BTreeMap<&'static str, SchedClassifier>,
    sock: &BTreeMap<&'static str, CgroupSockAddr>,
) -> Result<()> {
    let dir = pins.links_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        let fname = e.file_name().to_string_lossy().to_string();
        let prog_name = fname.split('@').next().unwrap_or_default();
        if let Some(prog) = tc.get_mut(prog_name) {
            // aya's own API: reopen the pinned TCX link and hand it to the new program.
            let link: FdLink = PinnedLink::from_pin(e.path())
                .with_context(|| format!("opening {}", e.path().display()))?
                .into();
            let link = SchedClassifierLink::try_from(link)
                .with_context(|| format!("{fname} is not a TCX link"))?;
            let id = prog
                .attach_to_link(link)
                .with_context(|| format!("replacing the program of link {fname}"))?;
            // The pin keeps the link; the program's copy of its fd is not needed.
            drop(prog.take_link(id)?);
        } else if let Some(p) = sock.get(prog_name) {
            // aya 0.14 has no link update for cgroup links (only TC and XDP ones): the syscall
            // is made directly on the link's pinned fd.
            let link =
                obj_get(&e.path()).with_context(|| format!("opening {}", e.path().display()))?;
            link_update(link.as_raw_fd(), p.fd()?.as_fd().as_raw_fd())
                .with_context(|| format!("replacing the program of link {fname}"))?;
        } else {
            continue;
        }
        info!(link = %fname, "program replaced");
    }
    Ok(())
}

/// `BPF_LINK_UPDATE` (see `update_links` for why it is not aya's).
fn link_update(link_fd: i32, prog_fd: i32) -> std::io::Result<()> {
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    const BPF_LINK_UPDATE: libc::c_long = 29;
    let attr = LinkUpdateAttr {
        link_fd: link_fd.cast_unsigned(),
        new_prog_fd: prog_fd.cast_unsigned(),
        flags: 0,
        old_prog_fd: 0,
    };
    // SAFETY: attr is a valid, fully initialised BPF_LINK_UPDATE attribute of the given size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            &raw const attr,
            size_of::<LinkUpdateAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `BPF_OBJ_GET`: opens a pinned object as a plain fd (aya's `PinnedLink` keeps its fd private,
/// and the cgroup link update above needs it).
fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: attr points at a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const attr,
            size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("fd out of range"))?;
    // SAFETY: the kernel returned a fresh fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
