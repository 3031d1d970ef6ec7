//! A store in memory, for tests: it can be told to fail its next commits.

use anyhow::{bail, Result};

use super::{Commit, Store};
use crate::model::{Container, State};

#[derive(Default)]
pub struct MemoryStore {
    pub state: State,
    /// Commits left to refuse (simulates an unwritable disk or an unreachable cluster).
    pub fail_commits: usize,
    pub commits: usize,
    /// What `set_creating` recorded.
    pub creating: Vec<Container>,
    /// The next commit panics, as a `kill -9` would stop the daemon after the datapath
    /// changed and before the state did.
    pub crash_on_commit: bool,
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<State> {
        Ok(self.state.clone())
    }

    fn commit(&mut self, next: &State, _what: &Commit) -> Result<()> {
        assert!(
            !std::mem::take(&mut self.crash_on_commit),
            "crash before the commit (injected)"
        );
        if self.fail_commits > 0 {
            self.fail_commits -= 1;
            bail!("store unavailable (injected)");
        }
        self.state = next.clone();
        self.commits += 1;
        Ok(())
    }

    fn set_creating(&mut self, containers: &[Container]) -> Result<()> {
        self.creating = containers.to_vec();
        Ok(())
    }

    fn creating(&mut self) -> Result<Vec<Container>> {
        Ok(self.creating.clone())
    }
}
