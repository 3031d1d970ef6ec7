//! Whether a container may open a new flow (the FORWARD chain this replaces): ICC between
//! containers, `policy link` exceptions, then the container's egress rules and default stance.
//! Only new flows are judged; replies and established flows are conntrack hits and never get
//! here.

use datapath_common::{
    config::{Config, CFG_ICC},
    drop::DropReason,
    endpoint::{
        Endpoint, LinkKey, PolicyKey, PolicyRule, EP_EGRESS_DENY, EP_NET_ICC, EP_NET_INTERNAL,
        POLICY_ALLOW,
    },
    proto,
};

use crate::{
    lookup,
    maps::{PolicyLpmKey, TG_LINKS, TG_POLICY},
};

/// `from` may reach `to` by IP: a link from -> to (one-way), or both on one network with ICC.
#[inline(always)]
pub fn icc(from: &Endpoint, to: &Endpoint, cfg: &Config) -> Result<(), DropReason> {
    if linked(from, to) || same_net_icc(from, to, cfg) {
        Ok(())
    } else {
        Err(DropReason::Icc)
    }
}

/// Both on one network, and that network lets its containers reach each other: `default`
/// by the daemon's `--icc`, user-created networks by their own flag.
#[inline(always)]
fn same_net_icc(from: &Endpoint, to: &Endpoint, cfg: &Config) -> bool {
    if from.net != to.net {
        return false;
    }
    if from.net == 0 {
        cfg.flags & CFG_ICC != 0
    } else {
        from.flags & EP_NET_ICC != 0
    }
}

#[inline(always)]
fn linked(from: &Endpoint, to: &Endpoint) -> bool {
    let key = LinkKey {
        from_id: from.id,
        to_id: to.id,
    };
    TG_LINKS.get_ptr(key).is_some()
}

/// A new flow from `ep` to `daddr:dport/proto`: to another container (`peer`), a link allows
/// it outright, ICC off or another network refuses it, ICC on leaves it to the egress rules;
/// anything else is refused from an internal network unless it is the node's, and is up to
/// the egress rules.
#[inline(always)]
pub fn new_flow(
    ep: &Endpoint,
    peer: Option<&Endpoint>,
    cfg: &Config,
    daddr: u32,
    proto: u8,
    dport: u16,
) -> Result<(), DropReason> {
    if let Some(peer) = peer {
        if linked(ep, peer) {
            return Ok(());
        }
        if !same_net_icc(ep, peer, cfg) {
            return Err(DropReason::Icc);
        }
    } else if ep.flags & EP_NET_INTERNAL != 0 && !lookup::is_local(daddr) {
        // An internal network has no way out.
        return Err(DropReason::Policy);
    }
    egress(ep, daddr, proto, dport)
}

/// A flow between `ep` and a container of another node (`vni` is its network's): only within
/// one network, with that network's ICC on (links are between containers of one node), then
/// the container's egress rules.
#[inline(always)]
pub fn to_remote(
    ep: &Endpoint,
    vni: u32,
    daddr: u32,
    proto: u8,
    dport: u16,
) -> Result<(), DropReason> {
    remote_icc(ep, vni)?;
    egress(ep, daddr, proto, dport)
}

/// Whether `ep` and a container of another node on network `vni` may talk: the same network
/// (never `default`, which is each node's own), with ICC on.
#[inline(always)]
pub fn remote_icc(ep: &Endpoint, vni: u32) -> Result<(), DropReason> {
    if vni != 0 && ep.net == vni && ep.flags & EP_NET_ICC != 0 {
        Ok(())
    } else {
        Err(DropReason::Icc)
    }
}

/// The container's egress rules for `daddr`: the chain of the longest matching prefix (the
/// agent orders each chain by specificity and folds the enclosing prefixes' rules in), its
/// first rule that matches protocol and port decides; none means the default stance.
#[inline(always)]
pub fn egress(ep: &Endpoint, daddr: u32, proto: u8, dport: u16) -> Result<(), DropReason> {
    let key = PolicyLpmKey::new(
        64,
        PolicyKey {
            endpoint_id_be: ep.id.to_be(),
            ip: daddr,
        },
    );
    if let Some(chain) = TG_POLICY.get(&key) {
        let port = u16::from_be(dport);
        let len = chain.len as usize;
        for (i, rule) in chain.rules.iter().enumerate() {
            if i >= len {
                break;
            }
            if matches(rule, proto, port) {
                return if rule.action == POLICY_ALLOW {
                    Ok(())
                } else {
                    Err(DropReason::Policy)
                };
            }
        }
    }
    if ep.flags & EP_EGRESS_DENY != 0 {
        Err(DropReason::Policy)
    } else {
        Ok(())
    }
}

/// `proto == 0` is any protocol; `port_lo == 0` any port. A rule with ports only matches
/// TCP and UDP (ICMP has no port).
#[inline(always)]
fn matches(r: &PolicyRule, proto: u8, port: u16) -> bool {
    if r.proto != 0 && r.proto != proto {
        return false;
    }
    if r.port_lo == 0 {
        return true;
    }
    (proto == proto::TCP || proto == proto::UDP) && r.port_lo <= port && port <= r.port_hi
}
