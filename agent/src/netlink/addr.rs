//! IPv4 addresses on links.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use rtnetlink::Handle;

/// Adds `ip/prefix` to link `index`; an identical existing address is fine.
pub async fn add(handle: &Handle, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
    match handle
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
        Err(e) => Err(e).with_context(|| format!("adding {ip}/{prefix} to link {index}")),
    }
}

/// IPv4 addresses on link `index` (all links when None), primary first as the kernel lists them.
pub async fn list_v4(handle: &Handle, index: Option<u32>) -> Result<Vec<Ipv4Addr>> {
    let mut req = handle.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let mut stream = req.execute();
    let mut out = Vec::new();
    while let Some(msg) = stream.try_next().await.context("listing addresses")? {
        for attr in msg.attributes {
            if let AddressAttribute::Local(IpAddr::V4(ip)) = attr {
                out.push(ip);
            }
        }
    }
    Ok(out)
}
