//! Differential fuzzing of the TC programs (issue #13, item 4): random and mutated frames go
//! through every TC program with `BPF_PROG_TEST_RUN` and through a host-side reference model
//! of what the program must do (`model`), and the two are compared case by case:
//!
//! - the verdict (pass, redirect, drop, or the kernel refusing the input);
//! - the output frame byte for byte, every checksum field aside, and each checksum by
//!   recomputation: the region it covers must have the same residual as in the input
//!   (`wire::residual`: a valid checksum stays valid, an invalid one stays exactly as
//!   invalid: never "fixed", never broken), and a translated frame whose input checksums
//!   were all valid must have valid ones, computed from scratch;
//! - after each scenario, the conntrack table (`TG_CT`: keys, translations, owners, state
//!   bits, packet and byte counts), the global counters (`TG_COUNTERS`: every pass, drop
//!   reason, translation, redirect and creation) and each container's (`TG_EP_STATS`: rx, tx,
//!   drops by reason).
//!
//! A run is `TOLLGATE_FUZZ_CASES` cases (default 100,000) from `TOLLGATE_FUZZ_SEED` (default:
//! the clock; printed). Every `EPOCH` scenarios a new world (maps' contents, `world`) is
//! installed; each scenario starts from an empty conntrack table, so it replays on its own:
//! a failure prints `TOLLGATE_FUZZ_REPLAY=<world seed>:<scenario seed>`, which reruns just
//! that scenario with the state checked after every case and the model's path printed.
//!
//! `cargo test -p tollgate-tests --test prog_fuzz -- --nocapture` (root; the eBPF object
//! built, see `prog_harness`). `TOLLGATE_FUZZ_PATHS=1` prints how many cases took each path.
//!
//! Half the frames run on `CHECKSUM_COMPLETE` skbs (`summed_of`; the kernel then fails the
//! run if `skb->csum` no longer matches the bytes), the rest on `CHECKSUM_NONE` ones. What `BPF_PROG_TEST_RUN` cannot show: `CHECKSUM_PARTIAL` skbs (the
//! real-traffic tests carry those), skbs with headers in paged data (`bpf_skb_load_bytes`
//! and the pulls: the kernel's flag for them came after 6.18), redirects are not carried
//! out (the verdict and the frame are compared, not where it goes), `from_overlay`
//! has no tunnel metadata (it always drops `no_mapping` here), rate limits are made
//! all-or-nothing (no timing), and one CPU runs everything.

#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "random values and header fields are cut to their widths on purpose"
)]
#![expect(
    clippy::too_many_lines,
    clippy::many_single_char_names,
    reason = "a hook's model reads as one path with the datapath's names (k, e, r, p), as the hook"
)]
#![expect(
    clippy::wrong_self_convention,
    reason = "the model's methods are named after the programs and helpers they model"
)]

#[path = "../prog_harness/mod.rs"]
mod prog_harness;

mod gen;
mod model;
mod regress;
mod rng;
mod wire;
mod world;

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    fmt::Write as _,
    time::Instant,
};

use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray},
    programs::SchedClassifier,
    Ebpf,
};
use datapath_common::{
    config::Config,
    conntrack::{CtEntry, CtKey},
    drop::DropReason,
    endpoint::{Endpoint, EpStats, LinkKey, PolicyChain, PolicyKey},
    frag::{FragKey, FragPorts},
    maps,
    overlay::Remote,
    portmap::{PortKey, PortValue},
    ratelimit::RateLimit,
    stats::{CNT_MAX, NAMES},
};
use prog_harness::{
    enter_test_netns, ip_cmd, load_classifier, monotonic_ns, object, run_program_summed, IpSummed,
    LpmKey,
};

use model::{Ent, EpFx, Key, Model, Prog, Refusals, Verdict, TC_ACT_SHOT};
use wire::{checksums_valid, hex, P};
use world::{Net, World, GHOST_ID};

/// Scenarios per world.
const EPOCH: u64 = 200;
const PROGS: [Prog; 4] = [
    Prog::FromUplink,
    Prog::FromContainer,
    Prog::ToContainer,
    Prog::FromOverlay,
];
/// Containers whose `TG_EP_STATS` slots are compared.
const EP_IDS: [u32; 5] = [1, 2, 3, 4, GHOST_ID];

/// The maps the fuzzer fills and reads, taken out of the object.
pub struct Maps {
    ct: HashMap<MapData, CtKey, CtEntry>,
    portmap: HashMap<MapData, PortKey, PortValue>,
    local: HashMap<MapData, u32, u32>,
    endpoints: HashMap<MapData, u32, Endpoint>,
    by_if: HashMap<MapData, u32, Endpoint>,
    links: HashMap<MapData, LinkKey, u32>,
    policy: LpmTrie<MapData, PolicyKey, PolicyChain>,
    config: Array<MapData, Config>,
    remotes: LpmTrie<MapData, u32, Remote>,
    ratelimit: Array<MapData, RateLimit>,
    frags: HashMap<MapData, FragKey, FragPorts>,
    counters: PerCpuArray<MapData, u64>,
    ep_stats: PerCpuArray<MapData, EpStats>,
}

impl Maps {
    fn take(bpf: &mut Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            bpf.take_map(name)
                .ok_or_else(|| anyhow::anyhow!("map {name} missing"))
        };
        Ok(Self {
            ct: take(maps::CONNTRACK)?.try_into()?,
            portmap: take(maps::PORTMAP)?.try_into()?,
            local: take(maps::LOCAL_ADDRS)?.try_into()?,
            endpoints: take(maps::ENDPOINTS)?.try_into()?,
            by_if: take(maps::EP_BY_IF)?.try_into()?,
            links: take(maps::LINKS)?.try_into()?,
            policy: take(maps::POLICY)?.try_into()?,
            config: take(maps::CONFIG)?.try_into()?,
            remotes: take(maps::REMOTES)?.try_into()?,
            ratelimit: take(maps::RATELIMIT)?.try_into()?,
            frags: take(maps::FRAGS)?.try_into()?,
            counters: take(maps::COUNTERS)?.try_into()?,
            ep_stats: take(maps::EP_STATS)?.try_into()?,
        })
    }

    /// Replaces the maps' contents with `w`'s, conntrack emptied.
    fn install(&mut self, w: &World) -> anyhow::Result<()> {
        fn clear<K: aya::Pod, V: aya::Pod>(m: &mut HashMap<MapData, K, V>) -> anyhow::Result<()> {
            let keys: Vec<K> = m.keys().collect::<Result<_, _>>()?;
            for k in keys {
                m.remove(&k)?;
            }
            Ok(())
        }
        clear(&mut self.ct)?;
        clear(&mut self.frags)?;
        clear(&mut self.portmap)?;
        clear(&mut self.local)?;
        clear(&mut self.endpoints)?;
        clear(&mut self.by_if)?;
        clear(&mut self.links)?;
        let keys: Vec<LpmKey<PolicyKey>> = self.policy.keys().collect::<Result<_, _>>()?;
        for k in keys {
            self.policy.remove(&k)?;
        }
        let keys: Vec<LpmKey<u32>> = self.remotes.keys().collect::<Result<_, _>>()?;
        for k in keys {
            self.remotes.remove(&k)?;
        }
        for &(net, plen, node, vni) in &w.remotes {
            self.remotes.insert(
                &LpmKey::new(u32::from(plen), u32::from_ne_bytes(net)),
                Remote {
                    node_ip: u32::from_ne_bytes(node),
                    vni,
                },
                0,
            )?;
        }
        for id in EP_IDS {
            let e = w.eps.iter().find(|e| e.id == id);
            let rl = RateLimit {
                egress: e.map_or_else(Default::default, |e| e.egress.bucket()),
                ingress: e.map_or_else(Default::default, |e| e.ingress.bucket()),
            };
            self.ratelimit.set(id, rl, 0)?;
        }
        self.config.set(0, w.cfg, 0)?;
        for a in &w.local {
            self.local.insert(u32::from_ne_bytes(*a), 1, 0)?;
        }
        for e in &w.eps {
            let ep = Endpoint {
                id: e.id,
                host_ifindex: e.ifindex,
                gateway_ip: u32::from_ne_bytes(e.gw),
                flags: e.flags,
                ip: u32::from_ne_bytes(e.ip),
                net: e.net,
            };
            self.endpoints.insert(ep.ip, ep, 0)?;
            self.by_if.insert(ep.host_ifindex, ep, 0)?;
        }
        for m in &w.maps {
            self.portmap.insert(
                PortKey {
                    host_ip: u32::from_ne_bytes(m.host),
                    port: m.port.to_be(),
                    proto: m.proto,
                    _pad: 0,
                },
                PortValue {
                    container_ip: u32::from_ne_bytes(m.cip),
                    container_port: m.cport.to_be(),
                    _pad: 0,
                    host_ifindex: m.ifindex,
                    endpoint_id: m.eid,
                },
                0,
            )?;
        }
        for &(a, b) in &w.links {
            self.links.insert(
                LinkKey {
                    from_id: a,
                    to_id: b,
                },
                1,
                0,
            )?;
        }
        for (&(id, net, plen), rules) in &w.policy {
            let mut chain = PolicyChain {
                len: rules.len() as u32,
                ..PolicyChain::default()
            };
            chain.rules[..rules.len()].copy_from_slice(rules);
            let key = LpmKey::new(
                32 + u32::from(plen),
                PolicyKey {
                    endpoint_id_be: id.to_be(),
                    ip: u32::from_ne_bytes(net),
                },
            );
            self.policy.insert(&key, chain, 0)?;
        }
        Ok(())
    }

    fn ct_dump(&self) -> anyhow::Result<StdHashMap<Key, (CtEntry, Ent)>> {
        let mut out = StdHashMap::new();
        for k in self.ct.keys() {
            let k = k?;
            if let Ok(e) = self.ct.get(&k, 0) {
                out.insert(Key::from_ct(&k), (e, Ent::from_ct(&e)));
            }
        }
        Ok(out)
    }

    /// Empties `TG_CT` and `TG_FRAGS` (between scenarios).
    fn ct_clear(&mut self) -> anyhow::Result<()> {
        let keys: Vec<CtKey> = self.ct.keys().collect::<Result<_, _>>()?;
        for k in keys {
            let _ = self.ct.remove(&k);
        }
        let keys: Vec<FragKey> = self.frags.keys().collect::<Result<_, _>>()?;
        for k in keys {
            let _ = self.frags.remove(&k);
        }
        Ok(())
    }

    fn frags_dump(&self) -> anyhow::Result<BTreeMap<model::FragKey, model::FragPorts>> {
        let mut out = BTreeMap::new();
        for k in self.frags.keys() {
            let k = k?;
            if let Ok(v) = self.frags.get(&k, 0) {
                out.insert(
                    model::FragKey {
                        saddr: k.saddr.to_ne_bytes(),
                        daddr: k.daddr.to_ne_bytes(),
                        id: u16::from_be(k.id),
                        proto: k.proto,
                    },
                    model::FragPorts {
                        sport: u16::from_be(v.sport),
                        dport: u16::from_be(v.dport),
                        icmp_type: v.icmp_type,
                    },
                );
            }
        }
        Ok(out)
    }

    fn counters(&self) -> anyhow::Result<Vec<u64>> {
        (0..CNT_MAX)
            .map(|i| Ok(self.counters.get(&i, 0)?.iter().sum()))
            .collect()
    }

    fn ep(&self, id: u32) -> anyhow::Result<EpFx> {
        let mut s = EpFx::default();
        for v in self.ep_stats.get(&id, 0)?.iter() {
            s.rx_packets += v.rx_packets;
            s.rx_bytes += v.rx_bytes;
            s.tx_packets += v.tx_packets;
            s.tx_bytes += v.tx_bytes;
            for (d, x) in s.drops.iter_mut().zip(v.drops) {
                *d += x;
            }
        }
        Ok(s)
    }
}

/// Everything a run needs that lives as long as it.
pub struct Bench<'a> {
    progs: StdHashMap<Prog, &'a SchedClassifier>,
    maps: Maps,
    refusals: Refusals,
    /// Whether entries can be aged past every timeout (the clock is far enough from boot).
    can_age: bool,
    /// Counters as the model expects them in the maps now.
    counters: Vec<u64>,
    /// Cases by program, verdict and the model's last step (what the run covered).
    paths: BTreeMap<String, u64>,
    eps: BTreeMap<u32, EpFx>,
}

/// Runs `p` once on `frame` arriving on `ifindex`, as CHECKSUM_NONE or COMPLETE as
/// `summed_of` picks.
fn test_run(p: &SchedClassifier, ifindex: u32, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
    run_program_summed(p, ifindex, frame, summed_of(frame)).map_err(|e| format!("{e:?}"))
}

/// How a frame's skb arrives, a function of its bytes (so a replay runs it the same way):
/// half CHECKSUM_NONE, half CHECKSUM_COMPLETE.
fn summed_of(frame: &[u8]) -> IpSummed {
    // FNV-1a over the frame.
    let h = frame.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    if h & 1 == 0 {
        IpSummed::None
    } else {
        IpSummed::Complete
    }
}

/// One failed check: a signature (what kind of disagreement, for grouping) and the details.
#[derive(Clone)]
pub struct Failure {
    pub signature: String,
    pub detail: String,
}

/// A scenario in progress: the model, the cases so far, the first failure.
pub struct Runner<'b, 'a> {
    bench: &'b mut Bench<'a>,
    world: &'b World,
    net: &'b Net,
    model: Model<'b>,
    log: Vec<String>,
    failure: Option<Failure>,
    cases: u64,
    /// Check conntrack and counters after every case (replay, regressions).
    check_each: bool,
    /// Print every case with the model's path (replay).
    verbose: bool,
}

impl<'b, 'a> Runner<'b, 'a> {
    fn new(
        bench: &'b mut Bench<'a>,
        world: &'b World,
        net: &'b Net,
        check_each: bool,
        verbose: bool,
    ) -> Self {
        let model = Model::new(world, net, bench.refusals);
        Self {
            bench,
            world,
            net,
            model,
            log: Vec::new(),
            failure: None,
            cases: 0,
            check_each,
            verbose,
        }
    }

    fn fail(&mut self, kind: &str, detail: String) {
        if self.failure.is_some() {
            return;
        }
        self.failure = Some(Failure {
            signature: kind.to_string(),
            detail,
        });
    }

    /// Lost halves the datapath recreated meanwhile (see `Model::lost`).
    fn resolve_lost(&mut self) {
        let lost: Vec<Key> = self.model.lost.keys().copied().collect();
        for k in lost {
            if self.bench.maps.ct.get(&k.to_ct(), 0).is_ok() {
                if let Err(e) = self.model.found_lost(k) {
                    self.fail("conntrack: lost half", e);
                }
            }
        }
    }

    /// Compares conntrack and counters with the model's.
    fn check_state(&mut self) -> anyhow::Result<()> {
        self.resolve_lost();
        let real = self.bench.maps.ct_dump()?;
        let mut diffs = Vec::new();
        let mut kinds = std::collections::BTreeSet::new();
        for (k, (_, e)) in &real {
            match self.model.ct.get(k) {
                Some(m) if m.comparable() == e.comparable() => {}
                Some(m) => {
                    kinds.insert(ct_diff_kind(e, m));
                    diffs.push(format!(
                        "  {}\n    TG_CT {}\n    model {}",
                        k.show(),
                        e.show(),
                        m.show()
                    ));
                }
                None => {
                    kinds.insert("an entry the model does not expect".to_string());
                    diffs.push(format!(
                        "  {}\n    TG_CT {}\n    model: none",
                        k.show(),
                        e.show()
                    ));
                }
            }
        }
        for (k, m) in &self.model.ct {
            if !real.contains_key(k) {
                kinds.insert("an entry missing".to_string());
                diffs.push(format!(
                    "  {}\n    TG_CT: none\n    model {}",
                    k.show(),
                    m.show()
                ));
            }
        }
        if !diffs.is_empty() {
            diffs.sort();
            let kinds: Vec<String> = kinds.into_iter().collect();
            self.fail(
                &format!("conntrack differs: {}", kinds.join("; ")),
                diffs.join("\n"),
            );
        }
        let real = self.bench.maps.frags_dump()?;
        let want: BTreeMap<_, _> = self.model.frags.iter().map(|(k, v)| (*k, *v)).collect();
        if real != want {
            let show = |m: &BTreeMap<model::FragKey, model::FragPorts>| {
                m.iter()
                    .map(|(k, v)| {
                        format!(
                            "{} -> {} id {} /{}: {}:{} type {}",
                            wire::ip_str(k.saddr),
                            wire::ip_str(k.daddr),
                            k.id,
                            k.proto,
                            v.sport,
                            v.dport,
                            v.icmp_type
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let kind = if real.len() > want.len() {
                "TG_FRAGS holds a datagram the model did not record"
            } else if real.len() < want.len() {
                "TG_FRAGS lacks a datagram the model recorded"
            } else {
                "TG_FRAGS differs"
            };
            self.fail(
                kind,
                format!("  TG_FRAGS {}\n  model    {}", show(&real), show(&want)),
            );
        }
        let fx = std::mem::take(&mut self.model.fx);
        for (i, n) in fx.counters {
            self.bench.counters[i as usize] += n;
        }
        for (id, d) in fx.ep {
            let e = self.bench.eps.entry(id).or_default();
            e.rx_packets += d.rx_packets;
            e.rx_bytes += d.rx_bytes;
            e.tx_packets += d.tx_packets;
            e.tx_bytes += d.tx_bytes;
            for (a, b) in e.drops.iter_mut().zip(d.drops) {
                *a += b;
            }
        }
        let real = self.bench.maps.counters()?;
        if real != self.bench.counters {
            let names: Vec<String> = self
                .bench
                .counters
                .iter()
                .zip(&real)
                .enumerate()
                .filter(|(_, (w, g))| w != g)
                .map(|(i, (w, g))| {
                    format!(
                        "{}: TG_COUNTERS {} more than the model",
                        NAMES.get(i).copied().unwrap_or("?"),
                        *g as i64 - *w as i64
                    )
                })
                .collect();
            let sig = format!(
                "counters differ: {}",
                names
                    .iter()
                    .map(|n| n.split(':').next().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            self.fail(&sig, names.join("\n"));
            self.bench.counters = real;
        }
        for id in EP_IDS {
            let got = self.bench.maps.ep(id)?;
            let want = self.bench.eps.get(&id).copied().unwrap_or_default();
            if got != want {
                let mut d = Vec::new();
                let pairs = [
                    ("rx_packets", want.rx_packets, got.rx_packets),
                    ("rx_bytes", want.rx_bytes, got.rx_bytes),
                    ("tx_packets", want.tx_packets, got.tx_packets),
                    ("tx_bytes", want.tx_bytes, got.tx_bytes),
                ];
                for (n, w, g) in pairs {
                    if w != g {
                        d.push(format!("{n}: TG_EP_STATS {g}, model {w}"));
                    }
                }
                for (i, (w, g)) in want.drops.iter().zip(got.drops).enumerate() {
                    if *w != g {
                        let name = DropReason::ALL
                            .iter()
                            .find(|r| **r as usize == i)
                            .map_or("slot", |r| r.name());
                        d.push(format!("drops[{name}]: TG_EP_STATS {g}, model {w}"));
                    }
                }
                self.fail(&format!("c{id} stats differ"), d.join("\n"));
                self.bench.eps.insert(id, got);
            }
        }
        Ok(())
    }

    /// Ends the scenario: checks the state, empties conntrack.
    fn finish(mut self) -> anyhow::Result<(u64, Option<Failure>)> {
        self.check_state()?;
        self.bench.maps.ct_clear()?;
        let log = self.log.join("\n");
        let failure = self.failure.map(|mut f| {
            f.detail = format!("{}\n  cases of the scenario:\n{log}", f.detail);
            f
        });
        Ok((self.cases, failure))
    }

    fn compare(
        &mut self,
        prog: Prog,
        frame: &[u8],
        verdict: &Verdict,
        actual: &Result<(u32, Vec<u8>), String>,
        trace: &[String],
    ) {
        let path = trace.join(" | ");
        let where_ = || format!("{} {}", prog.name(), class(&path));
        let show = |what: &str, got: &str, want: &str| {
            format!(
                "  {what}\n  input  {}\n  output {got}\n  model  {want}\n  path   {path}",
                hex(frame)
            )
        };
        match (verdict, actual) {
            (Verdict::Refused, Err(_)) => {}
            (Verdict::Refused, Ok((ret, out))) => self.fail(
                &format!("{}: the model expects the kernel to refuse", prog.name()),
                show("refused?", &format!("retval {ret} {}", hex(out)), "refused"),
            ),
            (Verdict::Ret { retval, .. }, Err(e)) => self.fail(
                &format!("{}: the kernel refused", prog.name()),
                show("kernel refused", e, &format!("retval {retval}")),
            ),
            (
                Verdict::Ret {
                    retval,
                    frame: want,
                    regions,
                },
                Ok((ret, out)),
            ) => {
                if ret != retval {
                    self.fail(
                        &format!("{}: retval {ret}, model {retval}", where_()),
                        show(
                            "retval differs",
                            &format!("retval {ret} {}", hex(out)),
                            &format!("retval {retval} {}", hex(want)),
                        ),
                    );
                    return;
                }
                if *ret == TC_ACT_SHOT {
                    return;
                }
                let slots: Vec<usize> = regions.iter().map(model::Region::csum_off).collect();
                let differs = out.len() != want.len()
                    || (0..out.len())
                        .any(|i| out[i] != want[i] && !slots.iter().any(|&s| i == s || i == s + 1));
                if differs {
                    let first = (0..out.len().min(want.len()))
                        .find(|&i| out[i] != want[i])
                        .unwrap_or(0);
                    self.fail(
                        &format!("{}: output frame differs", where_()),
                        show(
                            &format!("output differs (first at byte {first})"),
                            &hex(out),
                            &hex(want),
                        ),
                    );
                    return;
                }
                for r in regions {
                    let (a, b) = (r.residual(frame), r.residual(out));
                    if a != b {
                        self.fail(
                            &format!("{}: checksum {r:?}", where_()).replace(|c: char| c.is_ascii_digit(), "#"),
                            show(
                                &format!(
                                    "checksum at {} wrong: residual {a:#06x} in the input, {b:#06x} out",
                                    r.csum_off()
                                ),
                                &hex(out),
                                &hex(want),
                            ),
                        );
                        return;
                    }
                }
                if out != frame && P::parse(frame).is_some() && checksums_valid(frame).is_ok() {
                    if let Err(e) = checksums_valid(out) {
                        self.fail(
                            &format!("{}: translated frame with a wrong {e}", where_()),
                            show("checksum invalid after translation", &hex(out), &hex(want)),
                        );
                    }
                }
            }
        }
    }
}

/// How a `TG_CT` entry differs from the model's (groups failures of one kind).
fn ct_diff_kind(real: &Ent, model: &Ent) -> String {
    let flag_names = |f: u32| {
        datapath_common::conntrack::FLAG_NAMES
            .iter()
            .filter(|(b, _)| f & b != 0)
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut k = Vec::new();
    if real.flags != model.flags {
        k.push(format!(
            "flags +[{}] -[{}]",
            flag_names(real.flags & !model.flags),
            flag_names(model.flags & !real.flags)
        ));
    }
    if (
        real.nat_saddr,
        real.nat_sport,
        real.nat_daddr,
        real.nat_dport,
        real.redirect,
    ) != (
        model.nat_saddr,
        model.nat_sport,
        model.nat_daddr,
        model.nat_dport,
        model.redirect,
    ) {
        k.push("translation".into());
    }
    if real.eid != model.eid {
        k.push("owner".into());
    }
    if (real.packets, real.bytes) != (model.packets, model.bytes) {
        k.push("counters".into());
    }
    k.join(" ")
}

/// A trace's path without its numbers (groups failures of one kind).
fn class(path: &str) -> String {
    let last = path.rsplit(" | ").next().unwrap_or("");
    let s: String = last
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    let mut t = String::new();
    for c in s.chars() {
        if !(c == '#' && t.ends_with('#')) {
            t.push(c);
        }
    }
    format!("[{t}]")
}

impl gen::Driver for Runner<'_, '_> {
    fn send(
        &mut self,
        prog: Prog,
        dev: &str,
        frame: Vec<u8>,
        note: &str,
    ) -> Option<(u32, Vec<u8>)> {
        if self.failure.is_some() {
            return None;
        }
        self.resolve_lost();
        let ifindex = self.net.ifindex.get(dev).copied().unwrap_or(0);
        let model = &mut self.model;
        let predicted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            model.predict(prog, ifindex, &frame)
        }));
        let actual = test_run(self.bench.progs[&prog], ifindex, &frame);
        self.cases += 1;
        let line = format!(
            "    #{} {} on {dev}: {note}\n      input  {}\n      got    {}",
            self.log.len(),
            prog.name(),
            hex(&frame),
            match &actual {
                Ok((r, o)) if o == &frame => format!("retval {r}, untouched"),
                Ok((r, o)) => format!("retval {r} {}", hex(o)),
                Err(e) => format!("refused: {e}"),
            }
        );
        self.log.push(line.clone());
        let (verdict, trace) = match predicted {
            Ok(v) => v,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_default();
                self.fail(
                    &format!("{}: the model panicked", prog.name()),
                    format!("  model panic: {msg}\n  input {}", hex(&frame)),
                );
                return None;
            }
        };
        let kind = match (&verdict, &actual) {
            (Verdict::Refused, _) => "refused",
            (Verdict::Ret { retval: 2, .. }, _) => "drop",
            (Verdict::Ret { retval: 7, .. }, _) => "redirect",
            (Verdict::Ret { frame: f, .. }, _) if *f == frame => "pass",
            _ => "rewrite",
        };
        let last = trace.last().map_or("", String::as_str);
        let later = if trace.iter().any(|t| t.contains("later fragment")) {
            " (later fragment)"
        } else {
            ""
        };
        *self
            .bench
            .paths
            .entry(format!("{} {kind:8} {}{later}", prog.name(), class(last)))
            .or_default() += 1;
        if self.verbose {
            println!(
                "{line}\n      model  {:?}\n      path   {}",
                verdict_short(&verdict),
                trace.join(" | ")
            );
        }
        self.compare(prog, &frame, &verdict, &actual, &trace);
        if self.check_each && self.failure.is_none() {
            if let Err(e) = self.check_state() {
                self.fail("harness", format!("{e:#}"));
            }
        }
        if self.failure.is_some() {
            return None;
        }
        actual.ok()
    }

    fn age(&mut self, k: Key) {
        if !self.bench.can_age || self.failure.is_some() {
            return;
        }
        let ck = k.to_ct();
        if let Ok(mut e) = self.bench.maps.ct.get(&ck, 0) {
            e.last_seen_ns = 1;
            if self.bench.maps.ct.insert(ck, e, 0).is_ok() {
                if let Some(m) = self.model.ct.get_mut(&k) {
                    m.expired = true;
                }
                self.log.push(format!("    (aged {})", k.show()));
            }
        }
    }

    fn stale(&mut self, k: Key) {
        if self.failure.is_some() {
            return;
        }
        let ck = k.to_ct();
        if let Ok(mut e) = self.bench.maps.ct.get(&ck, 0) {
            e.last_seen_ns = coarse_ns().saturating_sub(2_000_000_000);
            if self.bench.maps.ct.insert(ck, e, 0).is_ok() {
                if let Some(m) = self.model.ct.get_mut(&k) {
                    // Live again if it was aged.
                    m.expired = false;
                    m.stale = true;
                }
                self.log
                    .push(format!("    (idle clock 2 s old: {})", k.show()));
            }
        }
    }

    fn lose(&mut self, k: Key) {
        if self.failure.is_some() || self.bench.maps.ct.remove(&k.to_ct()).is_err() {
            return;
        }
        self.log.push(format!("    (lost {})", k.show()));
        if let Some(e) = self.model.ct.remove(&k) {
            self.model.lost.remove(&k);
            // Its other half, if it is there and would recreate exactly this one.
            let (rk, _) = model_reverse(k, &e);
            if let Some(p) = self.model.ct.get(&rk) {
                if model_reverse(rk, p).0 == k && rk != k {
                    self.model.lost.insert(k, rk);
                }
            }
        }
    }

    fn entries(&self) -> Vec<(Key, Ent)> {
        let mut v: Vec<(Key, Ent)> = self.model.ct.iter().map(|(k, e)| (*k, *e)).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    fn world(&self) -> &World {
        self.world
    }
}

/// `CLOCK_MONOTONIC_COARSE`, the clock of the datapath's `bpf_ktime_get_coarse_ns`.
fn coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn model_reverse(k: Key, e: &Ent) -> (Key, Ent) {
    model::reverse_of(k, e)
}

fn verdict_short(v: &Verdict) -> String {
    match v {
        Verdict::Refused => "refused".into(),
        Verdict::Ret {
            retval,
            frame,
            regions,
        } => format!("retval {retval} {} (checksums: {regions:?})", hex(frame)),
    }
}

/// Sets up the namespace, the object and its maps; `None` when this machine cannot run it.
fn bench_up(bpf: &mut Ebpf) -> anyhow::Result<(Maps, Net)> {
    enter_test_netns()?;
    for args in [
        "link add tgh4 type veth peer name tgh4p",
        "addr add 10.254.0.13/30 dev tgh4",
        "link set tgh4p up",
        "link set tgh4 up",
        "neigh replace 198.51.100.8 lladdr 02:00:00:00:00:08 dev tgt0 nud permanent",
        "neigh replace 10.254.0.6 lladdr 02:00:00:00:00:c2 dev tgh2 nud permanent",
        "neigh replace 10.254.0.14 lladdr 02:00:00:00:00:c4 dev tgh4 nud permanent",
    ] {
        ip_cmd(args)?;
    }
    for p in PROGS {
        load_retrying(bpf, p.name())?;
    }
    let maps = Maps::take(bpf)?;
    let net = Net::read(ip_cmd)?;
    Ok((maps, net))
}

/// `load_classifier`, again when the kernel says EAGAIN: the verifier gives up when a signal
/// is pending for the loading thread (seen once in a dozen runs, the two tests loading
/// side by side, `from_container` taking the verifier close to a million instructions);
/// that is no verdict on the program, and loading it again is.
fn load_retrying(bpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        match load_classifier(bpf, name) {
            Ok(_) => return Ok(()),
            Err(e) if tries < 4 && format!("{e:?}").contains("os error 11") => {
                tries += 1;
                eprintln!("prog_fuzz: loading {name}: EAGAIN, again ({tries})");
            }
            Err(e) => return Err(e),
        }
    }
}

/// What `BPF_PROG_TEST_RUN` refuses on this kernel (short frames).
fn probe_refusals(p: &SchedClassifier, ifindex: u32) -> Refusals {
    let min = |ethertype: u16, max: usize| {
        (0..=max)
            .find(|&n| {
                let mut f = vec![0u8; n.max(14)];
                f[12..14].copy_from_slice(&ethertype.to_be_bytes());
                f[14..].iter_mut().for_each(|b| *b = 0x45);
                f.truncate(n);
                test_run(p, ifindex, &f).is_ok()
            })
            .unwrap_or(max + 1)
    };
    Refusals {
        any: min(0x88b5, 64),
        ipv4: min(wire::ETH_P_IP, 64),
        ipv6: min(wire::ETH_P_IPV6, 80),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Loads the object into a fresh namespace of this thread; `None` when this machine cannot
/// run the test (not root, no object).
fn setup<'a>(bpf: &'a mut Ebpf) -> anyhow::Result<(Bench<'a>, Net)> {
    let (maps, net) = bench_up(bpf)?;
    let bpf: &'a Ebpf = bpf;
    let progs: StdHashMap<Prog, &SchedClassifier> = PROGS
        .iter()
        .map(|p| {
            let c: &SchedClassifier = bpf.program(p.name()).unwrap().try_into().unwrap();
            (*p, c)
        })
        .collect();
    // How close each program is to the verifier's 1,000,000-instruction budget.
    let tail: &SchedClassifier = bpf.program("from_container_new").unwrap().try_into()?;
    let verified: Vec<String> = PROGS
        .iter()
        .map(|p| (p.name(), progs[p]))
        .chain([("from_container_new", tail)])
        .map(|(name, p)| {
            let n = p.info().ok().and_then(|i| i.verified_instruction_count());
            format!("{name} {}", n.map_or("?".into(), |n| n.to_string()))
        })
        .collect();
    println!("prog_fuzz: verified instructions: {}", verified.join(", "));
    let refusals = probe_refusals(progs[&Prog::FromUplink], net.ifindex["tgt0"]);
    let can_age = monotonic_ns() > 2 * u64::from(world::TIMEOUTS.1) * 1_000_000_000;
    println!(
        "prog_fuzz: the kernel refuses frames under {} bytes, IPv4 under {}, IPv6 under {}; \
         aging {}",
        refusals.any,
        refusals.ipv4,
        refusals.ipv6,
        if can_age {
            "on"
        } else {
            "off (booted too recently)"
        }
    );
    let bench = Bench {
        progs,
        counters: maps.counters()?,
        eps: EP_IDS
            .iter()
            .map(|&id| Ok((id, maps.ep(id)?)))
            .collect::<anyhow::Result<_>>()?,
        maps,
        refusals,
        can_age,
        paths: BTreeMap::new(),
    };
    Ok((bench, net))
}

/// Every regression case (`regress`), each from an empty conntrack table in the base world.
#[test]
fn fuzz_regressions() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    let mut bpf = prog_harness::load(&obj)?;
    let (mut bench, net) = setup(&mut bpf)?;
    let world = World::base(&net);
    bench.maps.install(&world)?;
    let mut failed = Vec::new();
    for r in regress::all() {
        let mut runner = Runner::new(&mut bench, &world, &net, true, false);
        (r.run)(&mut runner);
        let (cases, failure) = runner.finish()?;
        match failure {
            None => println!("ok: {} ({cases} cases)", r.name),
            Some(f) => failed.push(format!("{}: {}\n{}", r.name, f.signature, f.detail)),
        }
    }
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n\n"));
    Ok(())
}

#[test]
fn differential_fuzz() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    let mut bpf = prog_harness::load(&obj)?;
    let (mut bench, net) = setup(&mut bpf)?;

    // Replay one scenario.
    if let Ok(r) = std::env::var("TOLLGATE_FUZZ_REPLAY") {
        let (ws, ss) = r
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("TOLLGATE_FUZZ_REPLAY=<world seed>:<scenario seed>"))?;
        let parse = |s: &str| {
            u64::from_str_radix(s.trim_start_matches("0x"), 16)
                .map_err(|e| anyhow::anyhow!("seed {s}: {e}"))
        };
        let world = World::generate(parse(ws)?, &net);
        println!("{}", world.describe());
        bench.maps.install(&world)?;
        let mut runner = Runner::new(&mut bench, &world, &net, true, true);
        gen::scenario(&mut rng::Rng::new(parse(ss)?), &mut runner);
        let (cases, failure) = runner.finish()?;
        if let Some(f) = failure {
            anyhow::bail!(
                "replay failed ({cases} cases): {}\n{}",
                f.signature,
                f.detail
            );
        }
        println!("replay passed ({cases} cases)");
        return Ok(());
    }

    let seed = env_u64("TOLLGATE_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let target = env_u64("TOLLGATE_FUZZ_CASES").unwrap_or(100_000);
    println!(
        "prog_fuzz: seed {seed:#x} (TOLLGATE_FUZZ_SEED={seed:#x} reruns this run), {target} cases"
    );

    let mut failures: BTreeMap<String, (u64, Failure)> = BTreeMap::new();
    let start = Instant::now();
    let (mut cases, mut scenarios, mut epoch) = (0u64, 0u64, 0u64);
    while cases < target {
        let world_seed = rng::derive(seed, epoch);
        let world = World::generate(world_seed, &net);
        bench.maps.install(&world)?;
        for i in 0..EPOCH {
            let scenario_seed = rng::derive(world_seed, i);
            let mut runner = Runner::new(&mut bench, &world, &net, false, false);
            gen::scenario(&mut rng::Rng::new(scenario_seed), &mut runner);
            let (n, failure) = runner.finish()?;
            cases += n;
            scenarios += 1;
            if let Some(f) = failure {
                let f = Failure {
                    detail: format!(
                        "TOLLGATE_FUZZ_REPLAY={world_seed:#x}:{scenario_seed:#x}\n  {}\n{}",
                        world.describe(),
                        f.detail
                    ),
                    ..f
                };
                failures.entry(f.signature.clone()).or_insert((0, f)).0 += 1;
            }
            if cases >= target {
                break;
            }
        }
        epoch += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "prog_fuzz: {cases} cases in {scenarios} scenarios over {epoch} worlds, {secs:.1} s ({:.0} cases/s), seed {seed:#x}",
        cases as f64 / secs
    );
    if std::env::var_os("TOLLGATE_FUZZ_PATHS").is_some() {
        let mut paths: Vec<(&String, &u64)> = bench.paths.iter().collect();
        paths.sort_by(|a, b| b.1.cmp(a.1));
        println!("cases by program, verdict and the model's last step:");
        for (p, n) in paths {
            println!("{n:8}  {p}");
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let mut report = format!(
        "{} kind(s) of disagreement between the datapath and the model (seed {seed:#x}):\n",
        failures.len()
    );
    for (sig, (n, f)) in &failures {
        let _ = write!(
            report,
            "\n=== {sig} ({n} scenario(s)); first:\n{}\n",
            f.detail
        );
    }
    anyhow::bail!(report)
}
