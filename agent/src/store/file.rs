//! The embedded store: the state as JSON under `--state-dir`, a snapshot written atomically
//! (temp file + fsync + rename) so a `kill -9` leaves either the old or the new file, plus a
//! journal of port-map changes.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::{Commit, Store};
use crate::model::{PortChange, State};

/// Journal lines after which the snapshot is rewritten and the journal emptied.
const COMPACT_AFTER: usize = 512;

/// The state on disk: `state.json` (snapshot, replaced atomically: temp file, fsync, rename)
/// plus `journal.jsonl` (port-map changes appended and fsynced), under an exclusive lock on
/// the directory so two daemons can never share one state (they would fight over the maps).
/// A `kill -9` at any point leaves a loadable state: at worst a torn last journal line, which
/// is ignored because the change it carried was never acknowledged.
pub struct FileStore {
    path: PathBuf,
    journal: PathBuf,
    journal_lines: std::sync::atomic::AtomicUsize,
    _lock: File,
}

impl FileStore {
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
            journal: dir.join("journal.jsonl"),
            journal_lines: std::sync::atomic::AtomicUsize::new(0),
            _lock: lock,
        })
    }

    /// Writes a full snapshot and empties the journal.
    fn save(&self, state: &State) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let data = serde_json::to_vec(state)?;
        let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        // Only after the snapshot holds every change.
        match std::fs::remove_file(&self.journal) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing {}", self.journal.display()))
            }
        }
        self.journal_lines
            .store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Records a port-map change: one appended, fsynced line (a full snapshot every
    /// `COMPACT_AFTER` changes, given `state`, which must already include the change).
    fn save_ports(&self, change: &PortChange, state: &State) -> Result<()> {
        if self
            .journal_lines
            .load(std::sync::atomic::Ordering::Relaxed)
            >= COMPACT_AFTER
        {
            return self.save(state);
        }
        let mut line = serde_json::to_vec(change)?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)
            .with_context(|| format!("opening {}", self.journal.display()))?;
        f.write_all(&line)?;
        f.sync_data()
            .with_context(|| format!("syncing {}", self.journal.display()))?;
        self.journal_lines
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

impl Store for FileStore {
    /// Snapshot plus journal; the result is saved as a fresh snapshot right away.
    fn load(&mut self) -> Result<State> {
        let st = load_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        self.save(&st)?;
        Ok(st)
    }

    fn commit(&mut self, next: &State, what: &Commit) -> Result<()> {
        match what {
            Commit::Snapshot => self.save(next),
            Commit::Ports(change) => self.save_ports(change, next),
        }
    }
}

/// Reads the state of `dir` (snapshot + journal) without locking (also used by `reset`, which
/// runs without a daemon).
pub fn load_dir(dir: &Path) -> Result<State> {
    let path = dir.join("state.json");
    let mut st = match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data)
            .with_context(|| format!("parsing {} (corrupt state file)", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let journal = dir.join("journal.jsonl");
    match std::fs::read_to_string(&journal) {
        Ok(text) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                // A torn last line (killed mid-write) was never acknowledged: skip it.
                if let Ok(change) = serde_json::from_str::<PortChange>(line) {
                    change.apply(&mut st);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", journal.display())),
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortMapping, Proto};

    fn pm(port: u16) -> PortMapping {
        PortMapping {
            host_ip: None,
            host_port: port,
            container_port: 80,
            proto: Proto::Tcp,
        }
    }

    #[test]
    fn journal_replays_idempotently_and_skips_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("tg-state-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = FileStore::open(&dir).unwrap();
        let mut st = store.load().unwrap();
        for (added, removed) in [(vec![pm(1), pm(2)], vec![]), (vec![pm(3)], vec![pm(1)])] {
            let c = PortChange {
                container: "web".into(),
                added,
                removed,
            };
            c.apply(&mut st);
            store.save_ports(&c, &st).unwrap();
        }
        // A torn line, as after kill -9 in the middle of a write.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("journal.jsonl"))
            .unwrap();
        f.write_all(br#"{"container":"web","added":[{"host_ip":nu"#)
            .unwrap();
        let back = load_dir(&dir).unwrap();
        assert_eq!(back.ports["web"], vec![pm(2), pm(3)]);
        // Replaying on top of a snapshot that already has the changes changes nothing.
        store.save(&back).unwrap();
        let c = PortChange {
            container: "web".into(),
            added: vec![pm(3)],
            removed: vec![pm(1)],
        };
        store.save_ports(&c, &back).unwrap();
        assert_eq!(load_dir(&dir).unwrap().ports["web"], vec![pm(2), pm(3)]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
