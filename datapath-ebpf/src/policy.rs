//! Whether a container may open a new flow (the FORWARD chain this replaces): ICC between
//! containers, `policy link` exceptions, then the container's egress rules and default stance.
//! Only new flows are judged; replies and established flows are conntrack hits and never get
//! here.

use datapath_common::{
    config::{Config, CFG_ICC},
    drop::DropReason,
    endpoint::{Endpoint, LinkKey, PolicyKey, PolicyRule, EP_EGRESS_DENY, POLICY_ALLOW},
    proto,
};

use crate::maps::{PolicyLpmKey, TG_LINKS, TG_POLICY};

/// `from` may reach `to` by IP: a link from -> to (one-way), or ICC on.
#[inline(always)]
pub fn icc(from: &Endpoint, to: &Endpoint, cfg: &Config) -> Result<(), DropReason> {
    if linked(from, to) || cfg.flags & CFG_ICC != 0 {
        Ok(())
    } else {
        Err(DropReason::Icc)
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
/// it outright, ICC off refuses it, ICC on leaves it to the egress rules; anything else is up
/// to the egress rules.
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
        if cfg.flags & CFG_ICC == 0 {
            return Err(DropReason::Icc);
        }
    }
    egress(ep, daddr, proto, dport)
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
