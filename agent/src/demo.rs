//! `tollgate demo` (placeholder until the sandbox demo lands).

use std::path::Path;

use anyhow::{bail, Result};

use crate::cli::DemoArgs;

pub fn run(_a: DemoArgs) -> Result<()> {
    bail!("the demo is not available in this build")
}

pub fn serve(_netns: &Path, _port: u16, _name: &str) -> Result<()> {
    bail!("the demo is not available in this build")
}
