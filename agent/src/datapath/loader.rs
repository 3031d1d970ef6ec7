//! Loads the embedded object once and pins everything under `--bpffs`:
//! `maps/<MAP>`, `progs/<prog>`, `links/<prog>[@<ifname>]`.
//!
//! A restarted daemon reuses the pinned maps (aya's `map_pin_path` opens an existing pin
//! instead of creating a map) and the pinned programs, so neither conntrack nor the attached
//! datapath is disturbed. When the embedded object differs from the one that was pinned (an
//! upgrade), the new programs replace the old ones inside the existing links atomically
//! (`BPF_LINK_UPDATE`): traffic never sees a moment without a program. A pinned map whose
//! layout changed in the upgrade is replaced and its entries carried over (`migrate`).

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::ProgramArray,
    programs::{CgroupSockAddr, SchedClassifier},
    EbpfLoader,
};
use datapath_common::{kfunc, maps as names};
use tracing::{debug, info};

use super::{
    maps::Maps, OBJECT, PROG_FROM_CONTAINER, PROG_FROM_CONTAINER_NEW, PROG_FROM_OVERLAY,
    PROG_FROM_UPLINK, PROG_TO_CONTAINER, SOCK_PROGS,
};

pub struct Loaded {
    pub maps: Maps,
    pub tc: BTreeMap<&'static str, SchedClassifier>,
    pub sock: BTreeMap<&'static str, CgroupSockAddr>,
}

pub struct Pins {
    pub root: PathBuf,
}

impl Pins {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }
    pub fn prog(&self, name: &str) -> PathBuf {
        self.root.join("progs").join(name)
    }
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn link(&self, prog: &str, ifname: Option<&str>) -> PathBuf {
        match ifname {
            Some(i) => self.links_dir().join(format!("{prog}@{i}")),
            None => self.links_dir().join(prog),
        }
    }
    /// Pin of the object fingerprint: an empty-valued marker map would need a map; a
    /// directory name is enough and is removed with the rest on reset.
    fn stamp_dir(&self) -> PathBuf {
        self.root.join("object")
    }
}

fn object_id() -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    OBJECT.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Mounts bpffs at /sys/fs/bpf when the pin directory lives there and nothing is mounted.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let has_bpf = |p: &str| {
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[2] == "bpf" && f[1] == p
        })
    };
    if root.starts_with("/sys/fs/bpf") && !has_bpf("/sys/fs/bpf") {
        nix::mount::mount(
            Some("bpf"),
            "/sys/fs/bpf",
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mounting bpffs on /sys/fs/bpf")?;
        info!("mounted bpffs on /sys/fs/bpf");
    }
    Ok(())
}

/// Loads (or reopens) the datapath. `ct_max` sizes the conntrack map when it is created.
pub fn load(pins: &Pins, ct_max: u32) -> Result<Loaded> {
    ensure_bpffs(&pins.root)?;
    for d in ["maps", "progs", "links"] {
        std::fs::create_dir_all(pins.root.join(d))
            .with_context(|| format!("creating {}/{d} (is it on a bpffs?)", pins.root.display()))?;
    }
    let mut loader = EbpfLoader::new();
    // The programs log (aya-log) only at debug level. Unless the daemon itself logs at debug,
    // their log statements are switched off at load time, so flow creation does not pay for
    // formatting records nobody reads. (Pinned programs keep the level they were loaded with.)
    let ebpf_log_level: u8 = if tracing::enabled!(tracing::Level::DEBUG) {
        0xff
    } else {
        3
    };
    loader.override_global("AYA_LOG_LEVEL", &ebpf_log_level, false);
    // The programs' kfunc calls, resolved against the running kernel (`kfunc`).
    let patched = kfunc::patch(OBJECT)
        .map_err(|e| anyhow!("preparing the eBPF object for this kernel: {e}"))?;
    loader
        .override_global(
            kfunc::GLOBAL_IP_SUMMED_OFF,
            &patched.layout.ip_summed_off,
            true,
        )
        .override_global(
            kfunc::GLOBAL_IP_SUMMED_SHIFT,
            &patched.layout.ip_summed_shift,
            true,
        );
    let map_paths: Vec<(&str, PathBuf)> = names::ALL
        .iter()
        .chain(std::iter::once(&"AYA_LOGS"))
        .map(|n| (*n, pins.map(n)))
        .collect();
    for (n, p) in &map_paths {
        loader.map_pin_path(n, p.as_path());
    }
    loader.map_max_entries(names::CONNTRACK, ct_max);
    // Pinned maps of an older layout move aside; the load below creates them anew.
    let migrations = super::migrate::set_aside(pins, OBJECT, names::ALL)?;
    let mut ebpf = loader
        .load(&patched.object)
        .context("loading the eBPF object")?;
    for m in &migrations {
        m.copy(pins, false)?;
    }

    let id = object_id();
    let stamp = pins.stamp_dir().join(&id);
    let upgrade = !stamp.exists();

    let mut tc = BTreeMap::new();
    // The tail-call targets first: `from_container` jumps into them from its first packet.
    for name in [
        PROG_FROM_CONTAINER_NEW,
        PROG_FROM_UPLINK,
        PROG_FROM_CONTAINER,
        PROG_TO_CONTAINER,
        PROG_FROM_OVERLAY,
    ] {
        let pin = ensure_pinned(&mut ebpf, pins, name, upgrade, |p| {
            <&mut SchedClassifier>::try_from(p)?
                .load()
                .map_err(Into::into)
        })?;
        let prog = SchedClassifier::from_pin(&pin);
        tc.insert(
            name,
            prog.with_context(|| format!("opening {}", pin.display()))?,
        );
    }
    fill_tail_calls(&mut ebpf, &tc)?;
    let mut sock = BTreeMap::new();
    for (name, at) in SOCK_PROGS {
        let pin = ensure_pinned(&mut ebpf, pins, name, upgrade, |p| {
            <&mut CgroupSockAddr>::try_from(p)?
                .load()
                .map_err(Into::into)
        })?;
        let prog = CgroupSockAddr::from_pin(&pin, *at);
        sock.insert(
            *name,
            prog.with_context(|| format!("opening {}", pin.display()))?,
        );
    }
    if upgrade {
        // Existing links (from an older object) now run the new programs.
        super::attach::update_links(pins, &mut tc, &sock)?;
        let _ = std::fs::remove_dir_all(pins.stamp_dir());
        std::fs::create_dir_all(&stamp).context("recording the object id in bpffs")?;
        info!(object = %id, "datapath programs loaded and pinned");
    } else {
        debug!(object = %id, "reusing pinned datapath programs");
    }
    // The new programs run now: pick up what the old ones wrote meanwhile.
    for m in migrations {
        m.finish(pins)?;
    }
    let maps = Maps::take(&mut ebpf)?;
    // The object's own (unpinned) program handles go; the pinned ones stay loaded.
    drop(ebpf);
    Ok(Loaded { maps, tc, sock })
}

/// Puts the (pinned) tail-call targets in `TG_PROGS`, whose pin keeps them there while no
/// daemon runs. Done at every start: after an upgrade the slots get the new programs before
/// the links switch to the new `from_container`.
fn fill_tail_calls(
    ebpf: &mut aya::Ebpf,
    tc: &BTreeMap<&'static str, SchedClassifier>,
) -> Result<()> {
    let mut slots = ProgramArray::try_from(
        ebpf.map_mut(names::PROGS)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", names::PROGS))?,
    )?;
    let prog = tc
        .get(PROG_FROM_CONTAINER_NEW)
        .ok_or_else(|| anyhow!("program {PROG_FROM_CONTAINER_NEW} not loaded"))?;
    slots
        .set(names::PROG_SLOT_CONTAINER_NEW, prog.fd()?, 0)
        .with_context(|| format!("putting {PROG_FROM_CONTAINER_NEW} in {}", names::PROGS))
}

/// Loads program `name` of the object (through `load`, which knows its type) and pins it,
/// unless a pin exists and this is not an upgrade; returns the pin's path.
fn ensure_pinned(
    ebpf: &mut aya::Ebpf,
    pins: &Pins,
    name: &str,
    upgrade: bool,
    load: impl FnOnce(&mut aya::programs::Program) -> Result<()>,
) -> Result<PathBuf> {
    let pin = pins.prog(name);
    if upgrade || !pin.exists() {
        let p = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?;
        load(p).with_context(|| format!("loading program {name} (verifier)"))?;
        replace_pin(&pin, |path| p.pin(path).map_err(Into::into))?;
    }
    Ok(pin)
}

/// Pins via `pin_fn` at `path`, replacing an existing pin atomically enough for our needs
/// (pin under a temporary name, then rename over the old one).
fn replace_pin(path: &Path, pin_fn: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    // bpffs refuses names containing '.', so no `.new` suffix.
    let tmp = path.with_file_name(format!(
        "{}_new",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    pin_fn(&tmp).with_context(|| format!("pinning {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("pinning {}", path.display()))
}

/// Removes every pin under `root` (links first, so programs detach), then the directory.
pub fn unpin_all(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    for sub in ["links", "progs", "maps", "object"] {
        let dir = root.join(sub);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    std::fs::remove_dir(root).with_context(|| format!("removing {}", root.display()))
}
