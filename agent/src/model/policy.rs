//! Egress policy: rule specs (`CIDR[:PORT[-PORT]][/proto]`), a container's policy, and its
//! compilation into `TG_POLICY` chains.
//!
//! Rules are kept per container in the state and compiled into `TG_POLICY` chains: for every
//! prefix a container has rules for, the chain lists every rule that covers that prefix
//! (its own and its enclosing prefixes'), most specific first: longest prefix, then an
//! explicit port before any port, then an explicit protocol before any. The datapath's LPM
//! lookup finds the longest prefix and takes the first rule of its chain that matches the
//! packet, which is exactly "most specific rule wins".

use std::{collections::BTreeSet, fmt, net::Ipv4Addr, str::FromStr};

use anyhow::{anyhow, bail, Context, Result};
use datapath_common::{
    endpoint::{PolicyChain, PolicyRule, POLICY_ALLOW, POLICY_CHAIN_MAX, POLICY_DENY},
    proto,
};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleProto {
    Tcp,
    Udp,
    Icmp,
}

impl RuleProto {
    pub fn number(self) -> u8 {
        match self {
            RuleProto::Tcp => proto::TCP,
            RuleProto::Udp => proto::UDP,
            RuleProto::Icmp => proto::ICMP,
        }
    }
}

impl fmt::Display for RuleProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleProto::Tcp => "tcp",
            RuleProto::Udp => "udp",
            RuleProto::Icmp => "icmp",
        })
    }
}

/// What a rule matches: `CIDR[:PORT[-PORT]][/tcp|/udp|/icmp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Match {
    pub net: Ipv4Net,
    pub ports: Option<(u16, u16)>,
    pub proto: Option<RuleProto>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(flatten)]
    pub m: Match,
    pub action: Action,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub egress_deny: bool,
    pub rules: Vec<Rule>,
}

impl FromStr for Match {
    type Err = anyhow::Error;
    fn from_str(spec: &str) -> Result<Self> {
        let ctx = || {
            format!("bad rule {spec:?} (expected CIDR[:PORT[-PORT]][/tcp|/udp|/icmp], e.g. 10.0.0.0/8:443/tcp)")
        };
        let (body, proto) = match spec.rsplit_once('/') {
            Some((b, p)) if p.chars().all(|c| c.is_ascii_alphabetic()) && !p.is_empty() => {
                let proto = match p {
                    "tcp" => RuleProto::Tcp,
                    "udp" => RuleProto::Udp,
                    "icmp" => RuleProto::Icmp,
                    _ => {
                        return Err(anyhow!("unknown protocol {p:?} (use tcp, udp or icmp)"))
                            .with_context(ctx)
                    }
                };
                (b, Some(proto))
            }
            _ => (spec, None),
        };
        let (cidr, ports) = match body.split_once(':') {
            Some((c, p)) => (c, Some(p)),
            None => (body, None),
        };
        let net: Ipv4Net = if cidr.contains('/') {
            cidr.parse()
                .map_err(|_| anyhow!("{cidr:?} is not an IPv4 CIDR"))
                .with_context(ctx)?
        } else {
            let ip: Ipv4Addr = cidr
                .parse()
                .map_err(|_| anyhow!("{cidr:?} is not an IPv4 address"))
                .with_context(ctx)?;
            Ipv4Net::new(ip, 32).expect("/32 is valid")
        };
        let ports = match ports {
            None => None,
            Some(p) => {
                let r = crate::model::ports::parse_port_range(p).with_context(ctx)?;
                Some((*r.start(), *r.end()))
            }
        };
        if ports.is_some() && proto == Some(RuleProto::Icmp) {
            return Err(anyhow!("ICMP has no ports")).with_context(ctx);
        }
        Ok(Match {
            net: net.trunc(),
            ports,
            proto,
        })
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.net)?;
        if let Some((lo, hi)) = self.ports {
            if lo == hi {
                write!(f, ":{lo}")?;
            } else {
                write!(f, ":{lo}-{hi}")?;
            }
        }
        if let Some(p) = self.proto {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

/// A rule spec as the API carries it: `Match` in its string form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RuleSpec(pub Match);

impl FromStr for RuleSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        s.parse().map(RuleSpec)
    }
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

crate::model::ports::string_serde!(RuleSpec);

/// The default stance for a container's new outbound flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stance {
    Allow,
    Deny,
}

impl FromStr for Stance {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "allow" => Ok(Stance::Allow),
            "deny" => Ok(Stance::Deny),
            _ => bail!("egress stance must be allow or deny, not {s:?}"),
        }
    }
}

/// Compiles a policy into (prefix, chain) pairs.
pub fn compile(p: &Policy) -> Result<Vec<(Ipv4Net, PolicyChain)>> {
    let prefixes: BTreeSet<Ipv4Net> = p.rules.iter().map(|r| r.m.net).collect();
    let mut out = Vec::new();
    for prefix in prefixes {
        let mut covering: Vec<&Rule> = p
            .rules
            .iter()
            .filter(|r| r.m.net.contains(&prefix))
            .collect();
        // Most specific first. `rules` holds at most one rule per Match, so the order is total.
        covering.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.m.net.prefix_len()),
                r.m.ports.is_none(),
                r.m.proto.is_none(),
                r.m.ports,
            )
        });
        if covering.len() > POLICY_CHAIN_MAX {
            bail!(
                "too many rules apply to {prefix} ({}; at most {POLICY_CHAIN_MAX} may overlap one destination)",
                covering.len()
            );
        }
        let mut chain = PolicyChain {
            len: u32::try_from(covering.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        for (slot, r) in chain.rules.iter_mut().zip(&covering) {
            let (lo, hi) = r.m.ports.unwrap_or((0, 0));
            *slot = PolicyRule {
                port_lo: lo,
                port_hi: hi,
                proto: r.m.proto.map_or(0, RuleProto::number),
                action: if r.action == Action::Allow {
                    POLICY_ALLOW
                } else {
                    POLICY_DENY
                },
                _pad: 0,
            };
        }
        out.push((prefix, chain));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pol(deny: bool, rules: &[(&str, Action)]) -> Policy {
        Policy {
            egress_deny: deny,
            rules: rules
                .iter()
                .map(|(s, a)| Rule {
                    m: s.parse().unwrap(),
                    action: *a,
                })
                .collect(),
        }
    }

    /// Evaluates a compiled policy the way the datapath does.
    fn evaluate(p: &Policy, dst: Ipv4Addr, proto: u8, port: u16) -> Action {
        let chains = compile(p).expect("compiles");
        let best = chains
            .iter()
            .filter(|(n, _)| n.contains(&dst))
            .max_by_key(|(n, _)| n.prefix_len());
        if let Some((_, c)) = best {
            for r in &c.rules[..c.len as usize] {
                let proto_ok = r.proto == 0 || r.proto == proto;
                let port_ok = r.port_lo == 0
                    || (proto != proto::ICMP && (r.port_lo..=r.port_hi).contains(&port));
                if proto_ok && port_ok {
                    return if r.action == POLICY_ALLOW {
                        Action::Allow
                    } else {
                        Action::Deny
                    };
                }
            }
        }
        if p.egress_deny {
            Action::Deny
        } else {
            Action::Allow
        }
    }

    const TCP: u8 = proto::TCP;
    const UDP: u8 = proto::UDP;

    #[test]
    fn parses_rule_specs() {
        let m: Match = "10.0.0.0/8:80-90/tcp".parse().unwrap();
        assert_eq!(m.net.to_string(), "10.0.0.0/8");
        assert_eq!((m.ports, m.proto), (Some((80, 90)), Some(RuleProto::Tcp)));
        let m: Match = "1.2.3.4".parse().unwrap();
        assert_eq!(m.net.prefix_len(), 32);
        let m: Match = "1.2.3.4/udp".parse().unwrap();
        assert_eq!((m.net.prefix_len(), m.proto), (32, Some(RuleProto::Udp)));
        assert_eq!(
            "10.1.2.3/8".parse::<Match>().unwrap().net.to_string(),
            "10.0.0.0/8"
        );
        for bad in [
            "10.0.0.0/33",
            "x",
            "10.0.0.0/8:0",
            "10.0.0.0/8:99999",
            "1.2.3.4/sctp",
            "1.2.3.4:80/icmp",
            "1.2.3.4:90-80",
        ] {
            assert!(bad.parse::<Match>().is_err(), "{bad}");
        }
    }

    #[test]
    fn longest_prefix_then_port_wins() {
        let a = Ipv4Addr::new(10, 1, 2, 3);
        let p = pol(
            false,
            &[
                ("10.0.0.0/8", Action::Deny),
                ("10.1.2.3/32:80/tcp", Action::Allow),
            ],
        );
        assert_eq!(evaluate(&p, a, TCP, 80), Action::Allow);
        assert_eq!(
            evaluate(&p, a, TCP, 443),
            Action::Deny,
            "the /32 port rule does not match; the /8 deny does"
        );
        assert_eq!(
            evaluate(&p, Ipv4Addr::new(8, 8, 8, 8), TCP, 80),
            Action::Allow,
            "default stance"
        );
        let p = pol(
            false,
            &[
                ("192.168.0.0/16", Action::Deny),
                ("192.168.5.2/32", Action::Allow),
            ],
        );
        assert_eq!(
            evaluate(&p, Ipv4Addr::new(192, 168, 5, 2), UDP, 53),
            Action::Allow
        );
        let p = pol(
            false,
            &[
                ("192.168.0.0/16", Action::Allow),
                ("192.168.5.2/32", Action::Deny),
            ],
        );
        assert_eq!(
            evaluate(&p, Ipv4Addr::new(192, 168, 5, 2), UDP, 53),
            Action::Deny
        );
        assert_eq!(
            evaluate(&p, Ipv4Addr::new(192, 168, 5, 3), UDP, 53),
            Action::Allow
        );
    }

    #[test]
    fn explicit_port_beats_same_prefix_and_proto_specificity() {
        let d = Ipv4Addr::new(192, 168, 1, 1);
        let p = pol(
            true,
            &[
                ("192.168.1.0/24/udp", Action::Deny),
                ("192.168.1.0/24:53", Action::Allow),
            ],
        );
        assert_eq!(evaluate(&p, d, UDP, 53), Action::Allow);
        assert_eq!(evaluate(&p, d, UDP, 54), Action::Deny);
        assert_eq!(
            evaluate(&p, d, TCP, 80),
            Action::Deny,
            "egress deny default"
        );
        let p = pol(true, &[("192.168.1.1:80/tcp", Action::Allow)]);
        assert_eq!(evaluate(&p, d, TCP, 80), Action::Allow);
        assert_eq!(evaluate(&p, d, TCP, 81), Action::Deny);
        assert_eq!(evaluate(&p, d, UDP, 80), Action::Deny);
    }

    #[test]
    fn chains_are_bounded() {
        let specs: Vec<String> = (1..=17).map(|i| format!("10.0.0.0/8:{i}/tcp")).collect();
        let p = Policy {
            egress_deny: false,
            rules: specs
                .iter()
                .map(|s| Rule {
                    m: s.parse().unwrap(),
                    action: Action::Allow,
                })
                .collect(),
        };
        assert!(compile(&p).is_err());
    }
}
