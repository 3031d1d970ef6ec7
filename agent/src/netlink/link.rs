//! Links: lookup by name, veth pairs with the peer created directly in the container's
//! namespace, up/down, delete.

use std::os::fd::AsRawFd;

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::Handle;

/// ifindex of the link called `name`, or None.
pub async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(msg)) => Ok(Some(msg.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
    }
}

/// Like `index_of` but the link must exist.
pub async fn require_index(handle: &Handle, name: &str) -> Result<u32> {
    index_of(handle, name)
        .await?
        .ok_or_else(|| anyhow!("no interface named {name} in the node namespace"))
}

/// Creates a veth pair: `host_name` here, `peer_name` (with `peer_mac`, if given) inside the namespace
/// `peer_netns`. Creating the peer directly in its namespace avoids a name clash with this
/// namespace's own interfaces (the node may well have an `eth0` of its own).
pub async fn add_veth(
    handle: &Handle,
    host_name: &str,
    peer_name: &str,
    macs: [Option<[u8; 6]>; 2],
    peer_netns: &std::fs::File,
) -> Result<()> {
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(peer_name.to_string()));
    if let Some(mac) = macs[1] {
        peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    peer.attributes
        .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
    let mut req = handle.link().add();
    let msg = req.message_mut();
    msg.attributes
        .push(LinkAttribute::IfName(host_name.to_string()));
    if let Some(mac) = macs[0] {
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    req.execute().await.map_err(|e| match e {
        rtnetlink::Error::NetlinkError(ref n) if n.raw_code() == -libc::EEXIST => anyhow!(
            "creating veth pair {host_name}/{peer_name}: an interface named {peer_name} already exists in the container's namespace"
        ),
        e => anyhow!(e).context(format!("creating veth pair {host_name}/{peer_name}")),
    })
}

pub async fn set_up(handle: &Handle, index: u32) -> Result<()> {
    handle
        .link()
        .set(index)
        .up()
        .execute()
        .await
        .with_context(|| format!("setting link {index} up"))
}

/// Deletes a link; a link that is already gone is not an error.
pub async fn delete(handle: &Handle, name: &str) -> Result<()> {
    let Some(index) = index_of(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting link {name}")),
    }
}

/// The MAC address of link `index`.
pub async fn mac_of(handle: &Handle, index: u32) -> Result<Option<[u8; 6]>> {
    let mut links = handle.link().get().match_index(index).execute();
    let msg = links
        .try_next()
        .await
        .with_context(|| format!("looking up link {index}"))?;
    Ok(msg.and_then(|m| {
        m.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Address(v) => v.try_into().ok(),
            _ => None,
        })
    }))
}

/// The node's collect-metadata VXLAN device `name` (`ip link add NAME type vxlan external
/// dstport PORT`): created if missing, given `mtu` and set up; returns its ifindex. Without
/// FDB learning: the datapath sets every packet's tunnel key.
pub async fn ensure_vxlan(handle: &Handle, name: &str, port: u16, mtu: u32) -> Result<u32> {
    if index_of(handle, name).await?.is_none() {
        let mut req = handle.link().add();
        let msg = req.message_mut();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Port(port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        req.execute()
            .await
            .with_context(|| format!("creating the VXLAN device {name}"))?;
    }
    let index = require_index(handle, name).await?;
    set_mtu(handle, index, mtu).await?;
    set_up(handle, index).await?;
    Ok(index)
}

pub async fn set_mtu(handle: &Handle, index: u32, mtu: u32) -> Result<()> {
    handle
        .link()
        .set(index)
        .mtu(mtu)
        .execute()
        .await
        .with_context(|| format!("setting the MTU of link {index} to {mtu}"))
}

/// The MTU of link `index`.
pub async fn mtu_of(handle: &Handle, index: u32) -> Result<u32> {
    let mut links = handle.link().get().match_index(index).execute();
    let msg = links
        .try_next()
        .await
        .with_context(|| format!("looking up link {index}"))?
        .ok_or_else(|| anyhow!("no link {index}"))?;
    msg.attributes
        .into_iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(m),
            _ => None,
        })
        .ok_or_else(|| anyhow!("link {index} has no MTU"))
}

/// Creates a bridge called `name` (`ip link add NAME type bridge`) and sets it up; returns its
/// ifindex.
pub async fn add_bridge(handle: &Handle, name: &str) -> Result<u32> {
    handle
        .link()
        .add()
        .bridge(name.to_string())
        .execute()
        .await
        .with_context(|| format!("creating the bridge {name}"))?;
    let index = require_index(handle, name).await?;
    set_up(handle, index).await?;
    Ok(index)
}

/// Makes link `index` a port of the bridge `bridge` (`ip link set LINK master BRIDGE`) and
/// sets it up.
pub async fn set_controller(handle: &Handle, index: u32, bridge: u32) -> Result<()> {
    handle
        .link()
        .set(index)
        .controller(bridge)
        .up()
        .execute()
        .await
        .with_context(|| format!("adding link {index} to bridge {bridge}"))
}
