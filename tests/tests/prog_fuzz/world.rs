//! What the datapath is told (the maps' contents: containers, node addresses, port maps,
//! links, policy, config) and what the network namespace it runs in holds (routes,
//! neighbours, interface MACs): one `World` per epoch of the fuzz run, generated from a seed,
//! and the fixed `Net` read back from the kernel once. The model answers every question the
//! datapath asks a map or the FIB from here.
//!
//! ```text
//!  outside 198.51.100.0/24 [tgt0 = uplink]       node: 192.0.2.10 (local, snat_ip), 192.0.2.20 (not
//!    .7 client, .8 peer (neighbour known),        local, specific maps only), gateways, 127/8
//!    .9 peer, .1 the namespace's own address
//!  203.0.113.0/24: no route                       c1 10.254.0.2  [tgh1]  gw .1
//!  pool 10.254.0.0/22 (10.254.1.50: no route)     c2 10.254.0.6  [tgh2]  gw .5  (neighbour known)
//!  10.254.0.18: a port map's container that       c3 10.254.0.10 [tgh3]  gw .9
//!    is no endpoint (no route either)             c4 10.254.0.14 [tgh4]  gw .13 (neighbour known)
//! ```
//! Per world: ICC on or off, masquerade on or off, the NAT port range (the default, or one to
//! three ports so that it runs out), each container's network, `--internal`, default egress
//! stance, links, egress chains (any prefixes and rules, not only what the agent compiles),
//! and extra port maps (one on the SNAT address inside the NAT range, one to the ghost).

use std::collections::{BTreeMap, HashMap};

use datapath_common::{
    config::{Config, CFG_ICC},
    endpoint::{
        PolicyRule, EP_EGRESS_DENY, EP_NET_ICC, EP_NET_INTERNAL, POLICY_ALLOW, POLICY_DENY,
    },
    proto,
};

use super::rng::Rng;

pub const CLIENT: [u8; 4] = [198, 51, 100, 7];
pub const PEER8: [u8; 4] = [198, 51, 100, 8];
pub const PEER9: [u8; 4] = [198, 51, 100, 9];
pub const UPLINK_ADDR: [u8; 4] = [198, 51, 100, 1];
pub const FAR: [u8; 4] = [198, 51, 100, 200];
pub const UNROUTED: [u8; 4] = [203, 0, 113, 9];
pub const HOST: [u8; 4] = [192, 0, 2, 10];
pub const HOST_SPECIFIC: [u8; 4] = [192, 0, 2, 20];
pub const LOOPBACK: [u8; 4] = [127, 0, 0, 1];
pub const C1: [u8; 4] = [10, 254, 0, 2];
pub const GW1: [u8; 4] = [10, 254, 0, 1];
pub const C2: [u8; 4] = [10, 254, 0, 6];
pub const GW2: [u8; 4] = [10, 254, 0, 5];
pub const C3: [u8; 4] = [10, 254, 0, 10];
pub const GW3: [u8; 4] = [10, 254, 0, 9];
pub const C4: [u8; 4] = [10, 254, 0, 14];
pub const GW4: [u8; 4] = [10, 254, 0, 13];
pub const GHOST: [u8; 4] = [10, 254, 0, 18];
pub const POOL_OTHER: [u8; 4] = [10, 254, 1, 50];
/// Containers of other nodes (cluster mode), in the prefixes of `REMOTES`.
pub const REMOTE5: [u8; 4] = [10, 254, 2, 7];
pub const REMOTE7: [u8; 4] = [10, 254, 3, 9];
/// Other nodes' container prefixes: prefix, length, node, VNI (the network's id).
pub const REMOTES: &[([u8; 4], u8, [u8; 4], u32)] = &[
    ([10, 254, 2, 0], 24, [192, 0, 2, 50], 5),
    ([10, 254, 3, 0], 25, [192, 0, 2, 51], 7),
];
pub const GHOST_ID: u32 = 9;

/// Addresses outside the node, by how likely a scenario picks them.
pub const OUTSIDE: &[[u8; 4]] = &[CLIENT, CLIENT, PEER8, PEER9, FAR, UNROUTED, UPLINK_ADDR];
pub const NODE: &[[u8; 4]] = &[HOST, HOST, HOST_SPECIFIC, GW1, GW2, LOOPBACK];
pub const CONTAINERS: &[[u8; 4]] = &[C1, C2, C3, C4];
pub const DEVS: &[&str] = &["tgh1", "tgh2", "tgh3", "tgh4"];
/// Every address a random frame may use.
pub const ALL: &[[u8; 4]] = &[
    CLIENT,
    PEER8,
    PEER9,
    FAR,
    UNROUTED,
    UPLINK_ADDR,
    HOST,
    HOST_SPECIFIC,
    LOOPBACK,
    C1,
    C2,
    C3,
    C4,
    GW1,
    GW2,
    GW3,
    GW4,
    GHOST,
    POOL_OTHER,
    REMOTE5,
    REMOTE7,
];
/// Ports the published ones and the policy rules use, to make hits likely.
pub const PORTS: &[u16] = &[
    0, 53, 80, 90, 443, 5353, 7000, 8000, 8080, 8100, 8101, 8443, 9090, 9999, 40000, 65535,
];

pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_SCTP: u8 = 132;

pub fn in_prefix(ip: [u8; 4], net: [u8; 4], plen: u8) -> bool {
    let mask = if plen == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(plen))
    };
    u32::from_be_bytes(ip) & mask == u32::from_be_bytes(net) & mask
}

pub fn masked(ip: [u8; 4], plen: u8) -> [u8; 4] {
    let mask = if plen == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(plen))
    };
    (u32::from_be_bytes(ip) & mask).to_be_bytes()
}

/// What `bpf_fib_lookup` answers for a destination (the namespace has no gateways and no
/// policy routing, so the source and the input device do not matter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fib {
    /// No route, or a local or broadcast one (`BPF_FIB_LKUP_RET_NOT_FWDED` and kin).
    NotFwded,
    /// `BPF_FIB_LKUP_RET_NO_NEIGH`.
    NoNeigh { ifindex: u32 },
    /// `BPF_FIB_LKUP_RET_SUCCESS`: the neighbour's MAC and the device's.
    Resolved {
        ifindex: u32,
        dmac: [u8; 6],
        smac: [u8; 6],
    },
}

impl Fib {
    /// The egress device when it is a forwarding route (`BPF_FIB_LOOKUP_SKIP_NEIGH`).
    pub fn egress(self) -> Option<u32> {
        match self {
            Fib::NotFwded => None,
            Fib::NoNeigh { ifindex } | Fib::Resolved { ifindex, .. } => Some(ifindex),
        }
    }
}

/// The test namespace as the kernel holds it: read back once after setting it up.
pub struct Net {
    pub ifindex: HashMap<String, u32>,
    pub mac: HashMap<u32, [u8; 6]>,
    /// Prefixes of the local table (local, broadcast): never forwarded.
    pub local_routes: Vec<([u8; 4], u8)>,
    /// The main table's unicast routes: prefix, length, device.
    pub routes: Vec<([u8; 4], u8, u32)>,
    /// Resolved neighbours by (device, address).
    pub neigh: HashMap<(u32, [u8; 4]), [u8; 6]>,
}

fn parse_prefix(s: &str) -> Option<([u8; 4], u8)> {
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    let ip: std::net::Ipv4Addr = a.parse().ok()?;
    Some((ip.octets(), l.parse().ok()?))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

impl Net {
    /// Reads devices, routes and neighbours of the calling thread's namespace (`ip`).
    pub fn read(ip: impl Fn(&str) -> anyhow::Result<String>) -> anyhow::Result<Self> {
        let mut net = Net {
            ifindex: HashMap::new(),
            mac: HashMap::new(),
            local_routes: Vec::new(),
            routes: Vec::new(),
            neigh: HashMap::new(),
        };
        // "3: tgt0@tgt1: <...> ... link/ether 02:..."
        for line in ip("-o link show")?.lines() {
            let mut w = line.split_whitespace();
            let idx: u32 = w.next().unwrap_or("").trim_end_matches(':').parse()?;
            let name = w.next().unwrap_or("").trim_end_matches(':');
            let name = name.split('@').next().unwrap_or(name).to_string();
            let words: Vec<&str> = line.split_whitespace().collect();
            if let Some(i) = words.iter().position(|w| *w == "link/ether") {
                if let Some(m) = words.get(i + 1).and_then(|m| parse_mac(m)) {
                    net.mac.insert(idx, m);
                }
            }
            net.ifindex.insert(name, idx);
        }
        for line in ip("-4 route show table local")?.lines() {
            let mut w = line.split_whitespace();
            let _type = w.next();
            if let Some(p) = w.next().and_then(parse_prefix) {
                net.local_routes.push(p);
            }
        }
        for line in ip("-4 route show table main")?.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(p), Some(d)) = (
                words.first().and_then(|p| parse_prefix(p)),
                words.iter().position(|w| *w == "dev"),
            ) else {
                anyhow::bail!("unexpected route (the model knows connected routes only): {line}");
            };
            anyhow::ensure!(
                !words.contains(&"via"),
                "unexpected route with a gateway: {line}"
            );
            let dev = words.get(d + 1).copied().unwrap_or("");
            net.routes.push((p.0, p.1, net.ifindex[dev]));
        }
        for line in ip("-4 neigh show")?.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (Some(a), Some(d), Some(l)) = (
                words
                    .first()
                    .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok()),
                words.iter().position(|w| *w == "dev"),
                words.iter().position(|w| *w == "lladdr"),
            ) else {
                continue;
            };
            let valid = words
                .iter()
                .any(|w| matches!(*w, "PERMANENT" | "REACHABLE" | "STALE" | "NOARP"));
            if let (Some(mac), true) = (parse_mac(words[l + 1]), valid) {
                net.neigh
                    .insert((net.ifindex[words[d + 1]], a.octets()), mac);
            }
        }
        Ok(net)
    }

    pub fn fib(&self, dst: [u8; 4]) -> Fib {
        if self.local_routes.iter().any(|&(p, l)| in_prefix(dst, p, l)) {
            return Fib::NotFwded;
        }
        let Some(&(_, _, ifindex)) = self
            .routes
            .iter()
            .filter(|&&(p, l, _)| in_prefix(dst, p, l))
            .max_by_key(|&&(_, l, _)| l)
        else {
            return Fib::NotFwded;
        };
        match self.neigh.get(&(ifindex, dst)) {
            Some(&dmac) => Fib::Resolved {
                ifindex,
                dmac,
                smac: self.mac.get(&ifindex).copied().unwrap_or_default(),
            },
            None => Fib::NoNeigh { ifindex },
        }
    }
}

/// A container's rate limit in one direction, chosen so that the verdict does not depend on
/// timing: none, one no packet here can exceed, or one every packet (but ARP) exceeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    None,
    Open,
    Shut,
}

impl Limit {
    pub fn bucket(self) -> datapath_common::ratelimit::TokenBucket {
        use datapath_common::ratelimit::TokenBucket;
        match self {
            Limit::None => TokenBucket::default(),
            // 1 TB/s with a second of burst: a few MB of test frames never run it dry.
            Limit::Open => TokenBucket::new(8_000_000_000_000, 1_000_000_000_000),
            // 1 B/s with a 1-byte burst: no frame conforms.
            Limit::Shut => TokenBucket::new(8, 1),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Ep {
    pub id: u32,
    pub ip: [u8; 4],
    pub gw: [u8; 4],
    pub dev: &'static str,
    pub ifindex: u32,
    pub flags: u32,
    pub net: u32,
    pub egress: Limit,
    pub ingress: Limit,
}

/// A port map, ports in host order; `host == [0; 4]`: every local address.
#[derive(Clone, Copy, Debug)]
pub struct Map {
    pub host: [u8; 4],
    pub port: u16,
    pub proto: u8,
    pub cip: [u8; 4],
    pub cport: u16,
    pub eid: u32,
    pub ifindex: u32,
}

/// The maps' contents for one epoch.
#[derive(Clone, Debug)]
pub struct World {
    pub seed: u64,
    pub cfg: Config,
    pub eps: Vec<Ep>,
    pub local: Vec<[u8; 4]>,
    pub maps: Vec<Map>,
    pub links: Vec<(u32, u32)>,
    /// Egress chains by (container id, prefix, length), rules in order.
    pub policy: BTreeMap<(u32, [u8; 4], u8), Vec<PolicyRule>>,
    /// Other nodes' prefixes (`TG_REMOTES`), used when `cfg.overlay_ifindex` is set.
    pub remotes: Vec<([u8; 4], u8, [u8; 4], u32)>,
}

pub const TIMEOUTS: (u32, u32, u32, u32, u32) = (60, 600, 10, 60, 30);

impl World {
    /// The fixed world of the regression cases: ICC off, masquerade to `HOST` over the default
    /// range, the four containers on the default network with no policy, the harness's port
    /// maps (8080/tcp -> c1:80, 5353/udp -> c1:53, 192.0.2.20:9090/tcp -> c2:90).
    pub fn base(net: &Net) -> Self {
        let ifx = |d: &str| net.ifindex.get(d).copied().unwrap_or(0);
        let cfg = Config {
            uplink_ifindex: ifx("tgt0"),
            snat_ip: u32::from_ne_bytes(HOST),
            pool_net: u32::from_ne_bytes([10, 254, 0, 0]),
            pool_mask: u32::from_ne_bytes([255, 255, 252, 0]),
            ct_tcp_syn_s: TIMEOUTS.0,
            ct_tcp_est_s: TIMEOUTS.1,
            ct_tcp_close_s: TIMEOUTS.2,
            ct_udp_s: TIMEOUTS.3,
            ct_icmp_s: TIMEOUTS.4,
            ..Config::default()
        };
        let eps: Vec<Ep> = CONTAINERS
            .iter()
            .zip([GW1, GW2, GW3, GW4])
            .enumerate()
            .map(|(i, (&ip, gw))| Ep {
                id: i as u32 + 1,
                ip,
                gw,
                dev: DEVS[i],
                ifindex: ifx(DEVS[i]),
                flags: 0,
                net: 0,
                egress: Limit::None,
                ingress: Limit::None,
            })
            .collect();
        let map = |host: [u8; 4], port: u16, proto: u8, e: Ep, cport: u16| Map {
            host,
            port,
            proto,
            cip: e.ip,
            cport,
            eid: e.id,
            ifindex: e.ifindex,
        };
        World {
            seed: 0,
            cfg,
            maps: vec![
                map([0; 4], 8080, proto::TCP, eps[0], 80),
                map([0; 4], 5353, proto::UDP, eps[0], 53),
                map(HOST_SPECIFIC, 9090, proto::TCP, eps[1], 90),
            ],
            eps,
            local: vec![HOST, GW1, GW2, GW3, GW4],
            links: Vec::new(),
            policy: BTreeMap::new(),
            remotes: Vec::new(),
        }
    }

    pub fn generate(seed: u64, net: &Net) -> Self {
        let mut r = Rng::new(seed ^ 0x5eed_0fa3_017d);
        let ifx = |d: &str| net.ifindex.get(d).copied().unwrap_or(0);
        let mut cfg = Config {
            uplink_ifindex: ifx("tgt0"),
            snat_ip: u32::from_ne_bytes(HOST),
            pool_net: u32::from_ne_bytes([10, 254, 0, 0]),
            pool_mask: u32::from_ne_bytes([255, 255, 252, 0]),
            ct_tcp_syn_s: TIMEOUTS.0,
            ct_tcp_est_s: TIMEOUTS.1,
            ct_tcp_close_s: TIMEOUTS.2,
            ct_udp_s: TIMEOUTS.3,
            ct_icmp_s: TIMEOUTS.4,
            ..Config::default()
        };
        if r.chance(0.4) {
            cfg.flags |= CFG_ICC;
        }
        if r.chance(0.08) {
            cfg.snat_ip = 0;
        }
        let tiny_nat = r.chance(0.35);
        if tiny_nat {
            let lo = 20_000 + r.below(10_000) as u16;
            cfg.nat_port_min = lo;
            cfg.nat_port_max = lo + r.below(3) as u16;
        } else if r.chance(0.1) {
            // Inverted: the datapath falls back to the defaults.
            cfg.nat_port_min = 30_000;
            cfg.nat_port_max = 29_000;
        }
        let mut eps = Vec::new();
        for (i, (&ip, gw)) in CONTAINERS.iter().zip([GW1, GW2, GW3, GW4]).enumerate() {
            let mut flags = 0;
            let mut netid = 0;
            if i >= 1 && r.chance(0.3) {
                netid = 5;
                if r.chance(0.7) {
                    flags |= EP_NET_ICC;
                }
                if r.chance(0.3) {
                    flags |= EP_NET_INTERNAL;
                }
            }
            if r.chance(if i == 2 { 0.6 } else { 0.15 }) {
                flags |= EP_EGRESS_DENY;
            }
            let mut limit = || match r.below(40) {
                0 => Limit::Shut,
                1..=6 => Limit::Open,
                _ => Limit::None,
            };
            let (egress, ingress) = (limit(), limit());
            eps.push(Ep {
                id: i as u32 + 1,
                ip,
                gw,
                dev: DEVS[i],
                ifindex: ifx(DEVS[i]),
                flags,
                net: netid,
                egress,
                ingress,
            });
        }
        // Containers of one network share its flags (the agent writes them per network).
        let net5 = eps
            .iter()
            .find(|e| e.net == 5)
            .map(|e| e.flags & (EP_NET_ICC | EP_NET_INTERNAL));
        if let Some(f) = net5 {
            for e in eps.iter_mut().filter(|e| e.net == 5) {
                e.flags = (e.flags & EP_EGRESS_DENY) | f;
            }
        }
        let mut local = vec![HOST, GW1, GW2, GW3, GW4];
        if r.chance(0.2) {
            local.push(UPLINK_ADDR);
        }
        let ep = |i: usize| eps[i];
        let map = |host: [u8; 4], port: u16, proto: u8, e: Ep, cport: u16| Map {
            host,
            port,
            proto,
            cip: e.ip,
            cport,
            eid: e.id,
            ifindex: e.ifindex,
        };
        let mut maps = vec![
            map([0; 4], 8080, proto::TCP, ep(0), 80),
            map([0; 4], 5353, proto::UDP, ep(0), 53),
            map(HOST_SPECIFIC, 9090, proto::TCP, ep(1), 90),
        ];
        if r.chance(0.5) {
            maps.push(map([0; 4], 8443, proto::TCP, ep(2), 443));
        }
        if r.chance(0.5) {
            maps.push(map([0; 4], 7000, proto::UDP, ep(3), 7000));
        }
        if r.chance(0.4) {
            maps.push(map(HOST, 9999, proto::UDP, ep(1), 53));
        }
        if r.chance(0.3) {
            maps.push(Map {
                host: [0; 4],
                port: 8000,
                proto: proto::TCP,
                cip: GHOST,
                cport: 8000,
                eid: GHOST_ID,
                ifindex: 0,
            });
        }
        if tiny_nat && r.chance(0.5) {
            // A port published on the SNAT address inside the NAT range: masquerade skips it.
            let p = cfg.nat_port_min
                + r.below(u64::from(cfg.nat_port_max - cfg.nat_port_min) + 1) as u16;
            let proto = if r.chance(0.5) {
                proto::TCP
            } else {
                proto::UDP
            };
            let host = if r.chance(0.5) { HOST } else { [0; 4] };
            maps.push(map(host, p, proto, ep(3), 80));
        }
        let mut links = Vec::new();
        for a in 1..=4 {
            for b in 1..=4 {
                if a != b && r.chance(0.2) {
                    links.push((a, b));
                }
            }
        }
        let mut policy = BTreeMap::new();
        for _ in 0..r.below(7) {
            let id = 1 + r.below(4) as u32;
            let (net, plen) = *r.pick(&[
                (CLIENT, 32),
                (PEER8, 32),
                ([198, 51, 100, 0], 24),
                ([198, 51, 100, 0], 25),
                ([0; 4], 0),
                ([10, 254, 0, 0], 22),
                (C1, 32),
                (C2, 32),
                (HOST, 32),
                ([192, 0, 2, 0], 24),
                (UNROUTED, 32),
                ([10, 254, 2, 0], 24),
                (REMOTE7, 32),
            ]);
            let mut rules = Vec::new();
            for _ in 0..=r.below(5) {
                let proto = *r.pick(&[0, 0, proto::TCP, proto::UDP, proto::ICMP, IPPROTO_SCTP]);
                let (lo, hi) = *r.pick(&[
                    (0, 0),
                    (0, 0),
                    (53, 53),
                    (80, 80),
                    (443, 443),
                    (8000, 8100),
                    (8080, 8080),
                    (7000, 7000),
                    (1, 65535),
                ]);
                rules.push(PolicyRule {
                    port_lo: lo,
                    port_hi: hi,
                    proto,
                    action: if r.chance(0.5) {
                        POLICY_ALLOW
                    } else {
                        POLICY_DENY
                    },
                    _pad: 0,
                });
            }
            policy.insert((id, masked(net, plen), plen), rules);
        }
        let mut remotes = Vec::new();
        if r.chance(0.4) {
            // Cluster mode: the overlay device (any ifindex: the redirect is not carried out).
            cfg.overlay_ifindex = ifx("tgt1");
            remotes = REMOTES.to_vec();
        }
        World {
            seed,
            cfg,
            eps,
            local,
            maps,
            links,
            policy,
            remotes,
        }
    }

    pub fn is_local(&self, ip: [u8; 4]) -> bool {
        ip[0] == 127 || self.local.contains(&ip)
    }

    pub fn endpoint(&self, ip: [u8; 4]) -> Option<Ep> {
        self.eps.iter().find(|e| e.ip == ip).copied()
    }

    pub fn ep_by_ifindex(&self, ifindex: u32) -> Option<Ep> {
        self.eps.iter().find(|e| e.ifindex == ifindex).copied()
    }

    /// `lookup::published`: a map on that exact address, else a wildcard one on a local one.
    pub fn published(&self, daddr: [u8; 4], dport: u16, proto: u8) -> Option<Map> {
        let find = |host: [u8; 4]| {
            self.maps
                .iter()
                .find(|m| m.host == host && m.port == dport && m.proto == proto)
                .copied()
        };
        if let Some(m) = find(daddr) {
            return Some(m);
        }
        if !self.is_local(daddr) {
            return None;
        }
        find([0; 4])
    }

    /// `overlay::remote_for`: the other node (and VNI) holding `ip`, in cluster mode.
    pub fn remote(&self, ip: [u8; 4]) -> Option<([u8; 4], u32)> {
        if self.cfg.overlay_ifindex == 0 {
            return None;
        }
        self.remotes
            .iter()
            .filter(|(p, l, _, _)| in_prefix(ip, *p, *l))
            .max_by_key(|(_, l, _, _)| *l)
            .map(|&(_, _, node, vni)| (node, vni))
    }

    pub fn linked(&self, from: u32, to: u32) -> bool {
        self.links.contains(&(from, to))
    }

    /// The chain of the longest prefix holding `daddr` for container `id`.
    pub fn chain(&self, id: u32, daddr: [u8; 4]) -> Option<&Vec<PolicyRule>> {
        self.policy
            .iter()
            .filter(|((i, net, plen), _)| *i == id && in_prefix(daddr, *net, *plen))
            .max_by_key(|((_, _, plen), _)| *plen)
            .map(|(_, rules)| rules)
    }

    pub fn snat_ip(&self) -> [u8; 4] {
        self.cfg.snat_ip.to_ne_bytes()
    }

    pub fn in_pool(&self, ip: [u8; 4]) -> bool {
        u32::from_ne_bytes(ip) & self.cfg.pool_mask == self.cfg.pool_net
    }

    /// `config::nat_ports`: (first, count), the defaults when unset or inverted.
    pub fn nat_ports(&self) -> (u32, u32) {
        let (lo, hi) =
            if self.cfg.nat_port_min == 0 || self.cfg.nat_port_max < self.cfg.nat_port_min {
                (
                    datapath_common::config::NAT_PORT_MIN_DEFAULT,
                    datapath_common::config::NAT_PORT_MAX_DEFAULT,
                )
            } else {
                (self.cfg.nat_port_min, self.cfg.nat_port_max)
            };
        (u32::from(lo), u32::from(hi - lo) + 1)
    }

    pub fn describe(&self) -> String {
        let ep = |e: &Ep| {
            format!(
                "c{}(net {} flags {} limits {:?}/{:?})",
                e.id, e.net, e.flags, e.egress, e.ingress
            )
        };
        format!(
            "world {:#x}: icc {}, snat {}, nat {}..{}, overlay {}, eps [{}], links {:?}, {} chains, {} maps",
            self.seed,
            self.cfg.flags & CFG_ICC != 0,
            super::wire::ip_str(self.snat_ip()),
            self.cfg.nat_port_min,
            self.cfg.nat_port_max,
            self.cfg.overlay_ifindex != 0,
            self.eps.iter().map(ep).collect::<Vec<_>>().join(" "),
            self.links,
            self.policy.len(),
            self.maps.len()
        )
    }
}
