//! Where the desired state lives: the `Store` trait, the embedded snapshot + journal store
//! (`file`) and an in-memory one for tests (`memory`). A cluster store (etcd) is the next
//! implementation.

pub mod file;
pub mod memory;

use anyhow::Result;

use crate::model::{PortChange, State};

pub use file::{load_dir, FileStore};
pub use memory::MemoryStore;

/// What a commit changed, so a store can record it cheaply: a port-map change is journaled
/// (one small append) where anything else rewrites the snapshot.
#[derive(Clone, Debug)]
pub enum Commit {
    Snapshot,
    Ports(PortChange),
}

pub trait Store: Send + 'static {
    /// The stored state (empty when nothing was stored yet).
    fn load(&mut self) -> Result<State>;
    /// Makes `next` the stored state; `what` says what changed. On error nothing was stored.
    fn commit(&mut self, next: &State, what: &Commit) -> Result<()>;
}
