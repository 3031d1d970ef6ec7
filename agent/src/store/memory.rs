//! A store in memory, for tests: it can be told to fail its next commits.

use anyhow::{bail, Result};

use super::{Commit, Store};
use crate::model::State;

#[derive(Default)]
pub struct MemoryStore {
    pub state: State,
    /// Commits left to refuse (simulates an unwritable disk or an unreachable cluster).
    pub fail_commits: usize,
    pub commits: usize,
}

impl Store for MemoryStore {
    fn load(&mut self) -> Result<State> {
        Ok(self.state.clone())
    }

    fn commit(&mut self, next: &State, _what: &Commit) -> Result<()> {
        if self.fail_commits > 0 {
            self.fail_commits -= 1;
            bail!("store unavailable (injected)");
        }
        self.state = next.clone();
        self.commits += 1;
        Ok(())
    }
}
