//! Routes.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use rtnetlink::Handle;

/// `default via gw`; an existing identical route is fine.
pub async fn add_default_v4(handle: &Handle, gw: Ipv4Addr) -> Result<()> {
    match handle.route().add().v4().gateway(gw).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(e).with_context(|| format!("adding default route via {gw}")),
    }
}
