//! The embedded store: the state as JSON under `--state-dir`, a snapshot written atomically
//! (temp file + fsync + rename) so a `kill -9` leaves either the old or the new file, plus a
//! journal of port-map changes.
//!
//! Journal lines carry increasing sequence numbers and the snapshot the last one it includes,
//! so a journal that outlived the snapshot that folded it in (killed between the rename and the
//! journal's removal) is never replayed over it: replaying "add port 8080 to web" after a
//! snapshot without `web` would resurrect the map for a container that no longer exists.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{Commit, Store};
use crate::model::{Container, PortChange, State};

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
    /// `creating.json`: the containers a change is creating (see `Store::set_creating`).
    creating: PathBuf,
    journal_lines: std::sync::atomic::AtomicUsize,
    /// The sequence number of the last journaled change (the snapshot's `journal_seq` once it
    /// is rewritten).
    seq: std::sync::atomic::AtomicU64,
    _lock: File,
}

/// `state.json`: the state, and the sequence number of the last journal line folded into it
/// (absent in files of older versions: 0).
#[derive(Serialize)]
struct SnapshotOut<'a> {
    journal_seq: u64,
    #[serde(flatten)]
    state: &'a State,
}

#[derive(Deserialize)]
struct SnapshotIn {
    #[serde(default)]
    journal_seq: u64,
    #[serde(flatten)]
    state: State,
}

/// One line of `journal.jsonl` (`seq` is 0 in lines of older versions).
#[derive(Serialize, Deserialize)]
struct JournalLine {
    #[serde(default)]
    seq: u64,
    #[serde(flatten)]
    change: PortChange,
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
            creating: dir.join("creating.json"),
            journal_lines: std::sync::atomic::AtomicUsize::new(0),
            seq: std::sync::atomic::AtomicU64::new(0),
            _lock: lock,
        })
    }

    /// Writes a full snapshot and empties the journal. `state` includes every change
    /// journaled so far.
    fn save(&self, state: &State) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let data = serde_json::to_vec(&SnapshotOut {
            journal_seq: self.seq.load(std::sync::atomic::Ordering::Relaxed),
            state,
        })?;
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
        let seq = self.seq.load(std::sync::atomic::Ordering::Relaxed) + 1;
        let mut line = serde_json::to_vec(&JournalLine {
            seq,
            change: change.clone(),
        })?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)
            .with_context(|| format!("opening {}", self.journal.display()))?;
        let len = f.metadata()?.len();
        let written = f.write_all(&line).and_then(|()| f.sync_data());
        if let Err(e) = written {
            // The change is refused, so it must not come back on the next start: cut the
            // line off again (a torn line is skipped anyway; a whole one would be replayed).
            let _ = f.set_len(len);
            return Err(e).with_context(|| format!("writing {}", self.journal.display()));
        }
        self.seq.store(seq, std::sync::atomic::Ordering::Relaxed);
        self.journal_lines
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

impl Store for FileStore {
    /// Snapshot plus journal; the result is saved as a fresh snapshot right away.
    fn load(&mut self) -> Result<State> {
        let (st, seq) = load_seq(self.path.parent().unwrap_or(Path::new(".")))?;
        self.seq.store(seq, std::sync::atomic::Ordering::Relaxed);
        self.save(&st)?;
        Ok(st)
    }

    fn commit(&mut self, next: &State, what: &Commit) -> Result<()> {
        match what {
            Commit::Snapshot => self.save(next),
            Commit::Ports(change) => self.save_ports(change, next),
        }
    }

    /// `creating.json`, replaced atomically like the snapshot; removed when empty.
    fn set_creating(&mut self, containers: &[Container]) -> Result<()> {
        if containers.is_empty() {
            return match std::fs::remove_file(&self.creating) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).with_context(|| format!("removing {}", self.creating.display())),
            };
        }
        let tmp = self.creating.with_extension("json.tmp");
        let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(containers)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.creating)
            .with_context(|| format!("replacing {}", self.creating.display()))
    }

    fn creating(&mut self) -> Result<Vec<Container>> {
        match std::fs::read(&self.creating) {
            Ok(data) => serde_json::from_slice(&data)
                .with_context(|| format!("parsing {}", self.creating.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.creating.display())),
        }
    }
}

/// Reads the state of `dir` (snapshot + journal) without locking (also used by `reset`, which
/// runs without a daemon).
pub fn load_dir(dir: &Path) -> Result<State> {
    load_seq(dir).map(|(st, _)| st)
}

/// The state of `dir` and the sequence number of the last change in it.
fn load_seq(dir: &Path) -> Result<(State, u64)> {
    let path = dir.join("state.json");
    let snap = match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data)
            .with_context(|| format!("parsing {} (corrupt state file)", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SnapshotIn {
            journal_seq: 0,
            state: State::default(),
        },
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let (mut st, mut seq) = (snap.state, snap.journal_seq);
    let journal = dir.join("journal.jsonl");
    match std::fs::read_to_string(&journal) {
        Ok(text) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                // A torn last line (killed mid-write) was never acknowledged: skip it.
                let Ok(l) = serde_json::from_str::<JournalLine>(line) else {
                    continue;
                };
                // Lines the snapshot already holds are skipped; lines of an older version
                // (no sequence numbers) only follow a snapshot of that version.
                let new = if l.seq == 0 {
                    snap.journal_seq == 0
                } else {
                    l.seq > snap.journal_seq
                };
                if new {
                    l.change.apply(&mut st);
                    seq = seq.max(l.seq);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", journal.display())),
    }
    Ok((st, seq))
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

    /// `kill -9` between a snapshot's rename and the journal's removal leaves a journal whose
    /// changes the snapshot already holds, followed by changes the snapshot undid (here the
    /// container's deletion): replaying it must not bring the deleted container's maps back.
    #[test]
    fn a_journal_left_behind_by_a_snapshot_is_not_replayed() {
        let dir = std::env::temp_dir().join(format!("tg-state-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = FileStore::open(&dir).unwrap();
        let mut st = store.load().unwrap();
        let add = PortChange {
            container: "web".into(),
            added: vec![pm(8080)],
            removed: vec![],
        };
        add.apply(&mut st);
        store.commit(&st, &Commit::Ports(add)).unwrap();
        let journal = std::fs::read(dir.join("journal.jsonl")).unwrap();
        // `container del web`: a snapshot without its maps...
        st.ports.remove("web");
        store.commit(&st, &Commit::Snapshot).unwrap();
        // ...and the journal the kill kept from being removed.
        std::fs::write(dir.join("journal.jsonl"), &journal).unwrap();
        assert_eq!(
            load_dir(&dir).unwrap(),
            st,
            "the stale journal was replayed"
        );
        // Changes journaled after that snapshot still count, also across a reopen.
        drop(store);
        let mut store = FileStore::open(&dir).unwrap();
        let mut st = store.load().unwrap();
        let add = PortChange {
            container: "db".into(),
            added: vec![pm(5432)],
            removed: vec![],
        };
        add.apply(&mut st);
        store.commit(&st, &Commit::Ports(add)).unwrap();
        assert_eq!(load_dir(&dir).unwrap().ports["db"], vec![pm(5432)]);
        assert!(!load_dir(&dir).unwrap().ports.contains_key("web"));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A state directory of an older version (no sequence numbers) loads as before.
    #[test]
    fn files_without_sequence_numbers_still_load() {
        let dir = std::env::temp_dir().join(format!("tg-state-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("state.json"),
            serde_json::to_vec(&State::default()).unwrap(),
        )
        .unwrap();
        let line = serde_json::to_string(&PortChange {
            container: "web".into(),
            added: vec![pm(1)],
            removed: vec![],
        })
        .unwrap();
        std::fs::write(dir.join("journal.jsonl"), line + "\n").unwrap();
        assert_eq!(load_dir(&dir).unwrap().ports["web"], vec![pm(1)]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
