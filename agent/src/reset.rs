//! `tollgate reset`: removes everything a daemon with the same flags created (its namespaces
//! and veths, the pinned programs, links and maps, the ports it kept out of the node
//! namespace's ephemeral range, the state). Works without a daemon; a running one is asked to
//! stop first. Errors are collected and reported together.

use std::path::Path;

use anyhow::{bail, Result};
use hyper::Method;

use crate::{
    api::{
        types::{paths, ShuttingDown},
        Client,
    },
    datapath::{loader, reserved},
    netlink::{self, link},
    netns, store,
};

pub fn run(socket: &Path, netns_name: Option<&str>, state_dir: &Path, bpffs: &Path) -> Result<()> {
    // A running daemon would re-pin things behind our back.
    let asked = Client::new(socket)
        .and_then(|c| c.call::<(), ShuttingDown>(Method::POST, paths::SHUTDOWN, None));
    if asked.is_ok() {
        for _ in 0..50 {
            if !socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let st = store::load_dir(state_dir)?;
    let mut errors: Vec<String> = Vec::new();
    let node_ns = netns_name.map(netns::named_path);
    // The overlay's VXLAN device (cluster mode) goes too.
    let ifnames: Vec<String> = st
        .containers
        .values()
        .map(|c| c.host_ifname.clone())
        .chain(std::iter::once(
            datapath_common::overlay::OVERLAY_IFNAME.to_string(),
        ))
        .collect();
    let record = reserved::record_path(state_dir);
    let del_links = move || -> Result<()> {
        // The user's own reserved ports stay; only those the record says Tollgate added go.
        let released = reserved::release(&record);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deleted = rt.block_on(async move {
            let h = netlink::connect()?;
            for n in ifnames {
                link::delete(&h, &n).await?;
            }
            Ok(())
        });
        released.and(deleted)
    };
    let r = match &node_ns {
        Some(p) if p.exists() => netns::run_in(p, del_links),
        Some(_) => Ok(()), // the node namespace itself is gone, and its veths with it
        None => del_links(),
    };
    if let Err(e) = r {
        errors.push(format!("{e:#}"));
    }
    for c in st.containers.values().filter(|c| c.netns_created) {
        if let Err(e) = netns::delete_named(&c.netns) {
            errors.push(format!("{e:#}"));
        }
    }
    if let Err(e) = loader::unpin_all(bpffs) {
        errors.push(format!("{e:#}"));
    }
    if state_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(state_dir) {
            errors.push(format!("removing {}: {e}", state_dir.display()));
        }
    }
    let _ = std::fs::remove_file(socket);
    if !errors.is_empty() {
        bail!("reset incomplete: {}", errors.join("; "));
    }
    Ok(())
}
