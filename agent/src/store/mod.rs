//! Where the desired state lives: the `Store` trait, the embedded snapshot + journal store
//! (`file`) and an in-memory one for tests (`memory`). A cluster store (etcd) is the next
//! implementation.

pub mod file;
pub mod memory;

use anyhow::Result;

use crate::model::{Container, PortChange, State};

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
    /// Records the containers a change is about to create, before any of them is plumbed (an
    /// empty list once the change committed or was undone), so that the start after a crash
    /// in between finds what the crash left: the namespace, veth, pins and map entries of a
    /// container the state never got. The default keeps nothing (a store without a crash to
    /// outlive).
    fn set_creating(&mut self, _containers: &[Container]) -> Result<()> {
        Ok(())
    }
    /// What `set_creating` recorded last.
    fn creating(&mut self) -> Result<Vec<Container>> {
        Ok(Vec::new())
    }
}
