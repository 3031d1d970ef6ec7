//! The daemon's desired state, persisted as JSON under `--state-dir` and written atomically
//! (temp file + fsync + rename) so a `kill -9` leaves either the old or the new file.
//! On start the daemon re-applies it to the kernel (see `reconcile`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{File, OpenOptions},
    io::Write,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::ports::Proto;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    /// Agent-assigned id, also used in interface names and the datapath's endpoint id.
    pub id: u32,
    /// Path of the container's network namespace.
    pub netns: PathBuf,
    /// Whether tollgate created the namespace (and so deletes it).
    pub netns_created: bool,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    pub host_ifname: String,
    /// ifindex of the host veth when it was set up; a different current ifindex means the
    /// veth was recreated and its pinned TC link is stale.
    #[serde(default)]
    pub host_ifindex: u32,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMapping {
    /// None: every local address of the node.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub containers: BTreeMap<String, Container>,
    /// Port maps by container name.
    pub ports: BTreeMap<String, Vec<PortMapping>>,
    /// Kept for state files of older versions; ids are now the smallest free one.
    #[serde(default)]
    pub next_id: u32,
    /// One-way ICC exceptions: (from, to) container names.
    #[serde(default)]
    pub links: BTreeSet<(String, String)>,
    /// Egress policy by container name (absent: allow everything, no rules).
    #[serde(default)]
    pub policies: BTreeMap<String, crate::policy::Policy>,
    /// Rate limits by container name.
    #[serde(default)]
    pub limits: BTreeMap<String, crate::limits::Limit>,
}

impl State {
    pub fn all_ports(&self) -> impl Iterator<Item = (&str, &PortMapping)> {
        self.ports
            .iter()
            .flat_map(|(c, v)| v.iter().map(move |m| (c.as_str(), m)))
    }
}

/// The state file plus an exclusive lock on the state directory, so two daemons can never
/// share one state (they would fight over the same maps).
pub struct Store {
    path: PathBuf,
    _lock: File,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state dir {}", dir.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .with_context(|| format!("opening {}/lock", dir.display()))?;
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!(
                "another tollgate daemon is using state dir {} (stop it, or pass another --state-dir)",
                dir.display()
            );
        }
        Ok(Self {
            path: dir.join("state.json"),
            _lock: lock,
        })
    }

    pub fn load(&self) -> Result<State> {
        load_file(&self.path)
    }

    pub fn save(&self, state: &State) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        // Compact: with 10,000 port maps the file is rewritten on every change.
        let data = serde_json::to_vec(state)?;
        let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))
    }
}

/// Reads a state file without locking (used by `reset`, which runs without a daemon).
pub fn load_file(path: &Path) -> Result<State> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .with_context(|| format!("parsing {} (corrupt state file)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}
