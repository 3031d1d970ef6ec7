//! `kill -9` of the daemon at random moments of 1,000 mixed operations (containers, port
//! maps, egress policy, links, limits) made through the real CLI. The test keeps a model of
//! what the daemon acknowledged (exit 0); an operation whose call the kill cut short may have
//! happened or not, but wholly: after the restart the state must equal the model with it or
//! the model without it. After every restart, and at the end, the state must equal the model
//! and the datapath (pinned maps, veths, attached programs, link pins, namespaces) must hold
//! exactly that state: no orphan entries, none missing.
//!
//! The run is reproducible: it prints its seed, and `TOLLGATE_CRASH_SEED=N` replays it.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tollgate::model::Stance;
use tollgate_tests::{
    consistency::{datapath_agrees, Shown},
    *,
};

const OPS: u64 = 1000;
/// Container names in play (`k0`..): few enough that operations meet each other.
const NAMES: u64 = 10;

/// xorshift64*: small, deterministic, seedable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[usize::try_from(self.below(u64::try_from(v.len()).unwrap())).unwrap()]
    }
}

/// What the daemon acknowledged, in the terms `Shown` gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Model {
    containers: BTreeSet<String>,
    /// (container, host port, container port, proto).
    ports: BTreeSet<(String, u16, u16, String)>,
    deny: BTreeSet<String>,
    /// (container, rule) -> allow?
    rules: BTreeMap<(String, String), bool>,
    links: BTreeSet<(String, String)>,
    /// container -> (egress, ingress) bits/s.
    limits: BTreeMap<String, (Option<u64>, Option<u64>)>,
}

impl Model {
    fn of(s: &Shown) -> Self {
        let mut m = Model {
            containers: s.containers.iter().map(|c| c.name.clone()).collect(),
            ports: s
                .ports
                .iter()
                .map(|p| {
                    (
                        p.container.clone(),
                        p.host_port,
                        p.container_port,
                        p.proto.to_string(),
                    )
                })
                .collect(),
            limits: s
                .limits
                .iter()
                .map(|l| (l.container.clone(), (l.egress_bps, l.ingress_bps)))
                .collect(),
            ..Model::default()
        };
        for p in &s.policies {
            if p.egress == Stance::Deny {
                m.deny.insert(p.container.clone());
            }
            for t in &p.links {
                m.links.insert((p.container.clone(), t.clone()));
            }
            for r in &p.rules {
                let spec = format!(
                    "{}{}{}",
                    r.cidr,
                    r.ports
                        .as_ref()
                        .map(|p| format!(":{p}"))
                        .unwrap_or_default(),
                    r.proto
                        .as_ref()
                        .map(|p| format!("/{p}"))
                        .unwrap_or_default()
                );
                m.rules.insert(
                    (p.container.clone(), spec),
                    r.action == tollgate::model::Action::Allow,
                );
            }
        }
        m
    }
}

/// One operation: its CLI arguments and what it does to the model when it succeeds.
#[derive(Clone, Debug)]
enum Op {
    Add(String),
    Del(String),
    PortAdd(String, Vec<(u16, u16, &'static str)>),
    PortDel(String, u16, &'static str),
    Egress(String, bool),
    Rule(String, String, bool),
    RuleRm(String, String),
    Link(String, String, bool),
    Limit(String, Option<u64>, Option<u64>),
    LimitClear(String),
}

impl Op {
    fn args(&self) -> Vec<String> {
        let words = |a: &[&str]| a.iter().map(ToString::to_string).collect::<Vec<_>>();
        match self {
            Op::Add(n) => words(&["container", "add", n]),
            Op::Del(n) => words(&["container", "del", n]),
            Op::PortAdd(n, specs) => {
                let mut a = words(&["port", "add", n]);
                for (h, c, p) in specs {
                    a.push(if *p == "udp" {
                        format!("{h}:{c}/udp")
                    } else {
                        format!("{h}:{c}")
                    });
                }
                a
            }
            Op::PortDel(n, h, p) => words(&["port", "del", n, &format!("{h}/{p}")]),
            Op::Egress(n, deny) => {
                words(&["policy", "egress", n, if *deny { "deny" } else { "allow" }])
            }
            Op::Rule(n, r, allow) => {
                words(&["policy", if *allow { "allow" } else { "deny" }, n, r])
            }
            Op::RuleRm(n, r) => words(&["policy", "rm", n, r]),
            Op::Link(a, b, on) => words(&["policy", if *on { "link" } else { "unlink" }, a, b]),
            Op::Limit(n, egress, ingress) => {
                let mut a = words(&["limit", "set", n]);
                if let Some(e) = egress {
                    a.extend(words(&["--egress", &format!("{}mbit", e / 1_000_000)]));
                }
                if let Some(i) = ingress {
                    a.extend(words(&["--ingress", &format!("{}mbit", i / 1_000_000)]));
                }
                a
            }
            Op::LimitClear(n) => words(&["limit", "clear", n]),
        }
    }

    /// The model after this operation succeeded.
    fn apply(&self, m: &Model) -> Model {
        let mut m = m.clone();
        match self {
            Op::Add(n) => {
                m.containers.insert(n.clone());
            }
            Op::Del(n) => {
                m.containers.remove(n);
                m.ports.retain(|p| &p.0 != n);
                m.deny.remove(n);
                m.rules.retain(|(c, _), _| c != n);
                m.links.retain(|(a, b)| a != n && b != n);
                m.limits.remove(n);
            }
            Op::PortAdd(n, specs) => {
                for (h, c, p) in specs {
                    m.ports.insert((n.clone(), *h, *c, (*p).to_string()));
                }
            }
            Op::PortDel(n, h, p) => m.ports.retain(|x| !(&x.0 == n && x.1 == *h && x.3 == *p)),
            Op::Egress(n, deny) => {
                if *deny {
                    m.deny.insert(n.clone());
                } else {
                    m.deny.remove(n);
                }
            }
            Op::Rule(n, r, allow) => {
                m.rules.insert((n.clone(), r.clone()), *allow);
            }
            Op::RuleRm(n, r) => {
                m.rules.remove(&(n.clone(), r.clone()));
            }
            Op::Link(a, b, on) => {
                if *on {
                    m.links.insert((a.clone(), b.clone()));
                } else {
                    m.links.remove(&(a.clone(), b.clone()));
                }
            }
            Op::Limit(n, egress, ingress) => {
                let l = m.limits.entry(n.clone()).or_default();
                if egress.is_some() {
                    l.0 = *egress;
                }
                if ingress.is_some() {
                    l.1 = *ingress;
                }
            }
            Op::LimitClear(n) => {
                m.limits.remove(n);
            }
        }
        m
    }
}

const RULES: &[&str] = &[
    "10.1.0.0/16:443/tcp",
    "10.1.0.0/16",
    "10.2.0.0/16:25/tcp",
    "192.168.7.0/24/udp",
    "0.0.0.0/0:53/udp",
    "10.0.0.0/8",
];

/// A random operation, mostly on containers that exist (some on ones that do not, which the
/// daemon refuses).
fn random_op(rng: &mut Rng, m: &Model, name: &dyn Fn(u64) -> String) -> Op {
    let existing: Vec<String> = m.containers.iter().cloned().collect();
    let some = |rng: &mut Rng| {
        if existing.is_empty() || rng.below(10) == 0 {
            name(rng.below(NAMES))
        } else {
            rng.pick(&existing).clone()
        }
    };
    let port = |rng: &mut Rng| u16::try_from(30000 + rng.below(24)).unwrap();
    let proto = |rng: &mut Rng| if rng.below(4) == 0 { "udp" } else { "tcp" };
    match rng.below(100) {
        0..=11 => Op::Add(name(rng.below(NAMES))),
        12..=17 => Op::Del(some(rng)),
        18..=42 => {
            let n = some(rng);
            let specs = (0..=rng.below(2))
                .map(|_| {
                    (
                        port(rng),
                        u16::try_from(80 + rng.below(4)).unwrap(),
                        proto(rng),
                    )
                })
                .collect();
            Op::PortAdd(n, specs)
        }
        43..=57 => {
            let owned: Vec<_> = m.ports.iter().collect();
            if owned.is_empty() || rng.below(8) == 0 {
                let (n, p) = (some(rng), port(rng));
                Op::PortDel(n, p, proto(rng))
            } else {
                let (n, h, _, p) = (*rng.pick(&owned)).clone();
                Op::PortDel(n, h, if p == "udp" { "udp" } else { "tcp" })
            }
        }
        58..=65 => Op::Egress(some(rng), rng.below(2) == 0),
        66..=77 => {
            let n = some(rng);
            Op::Rule(n, (*rng.pick(RULES)).to_string(), rng.below(2) == 0)
        }
        78..=83 => Op::RuleRm(some(rng), (*rng.pick(RULES)).to_string()),
        84..=91 => {
            let (a, b) = (some(rng), some(rng));
            Op::Link(a, b, rng.below(3) != 0)
        }
        92..=97 => {
            let mbit =
                |rng: &mut Rng| (rng.below(2) == 0).then(|| (1 + rng.below(500)) * 1_000_000);
            let (mut e, i) = (mbit(rng), mbit(rng));
            if e.is_none() && i.is_none() {
                e = Some(10_000_000);
            }
            Op::Limit(some(rng), e, i)
        }
        _ => Op::LimitClear(some(rng)),
    }
}

/// How a CLI call ended.
enum Ended {
    Acked,
    Refused,
    /// No answer: the kill cut it (or it never reached the daemon).
    Cut(String),
}

fn ended(code: i32, stderr: &str) -> Ended {
    match code {
        0 => Ended::Acked,
        1 if stderr.starts_with("error: ")
            && !stderr.contains("closed the connection")
            && !stderr.contains("cannot reach")
            && !stderr.contains("talking to the daemon")
            && !stderr.contains("did not answer") =>
        {
            Ended::Refused
        }
        _ => Ended::Cut(format!("exit {code}: {}", stderr.trim())),
    }
}

/// Reads the state after a restart and checks it against the model and the datapath.
fn check(sb: &Sandbox, model: &Model, when: &str) -> Shown {
    let shown = Shown::read(sb).unwrap();
    let got = Model::of(&shown);
    assert_eq!(
        &got, model,
        "{when}: the state differs from the acknowledged operations"
    );
    if let Err(e) = datapath_agrees(sb, &shown, &sb.tag) {
        panic!("{when}: {e:#}\ndaemon log:\n{}", sb.tail_log());
    }
    shown
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: the operations, the kills and the checks read best in order"
)]
fn kill_9_during_1000_mixed_operations_keeps_exactly_the_acknowledged_state() {
    let mut sb = sandbox!("crash");
    let seed = std::env::var("TOLLGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_secs().wrapping_mul(1_000_000_007) ^ u64::from(t.subsec_nanos()) | 1
        });
    eprintln!("seed {seed} (replay with TOLLGATE_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let tag = sb.tag.clone();
    let name = move |i: u64| format!("{tag}-k{i}");
    let mut model = Model::default();
    let (mut acked, mut refused, mut kills) = (0, 0, 0);
    let (mut cut_applied, mut cut_not) = (Vec::new(), Vec::new());
    let mut next_kill = 40 + rng.below(80);
    let t0 = Instant::now();
    for i in 0..OPS {
        let mut op = random_op(&mut rng, &model, &name);
        // Kills land on container creations and deletions more often than their share: the
        // longest transactions, with the most to undo or finish.
        if i == next_kill && rng.below(2) == 0 {
            let n = name(rng.below(NAMES));
            op = if model.containers.contains(&n) {
                Op::Del(n)
            } else {
                Op::Add(n)
            };
        }
        let args = op.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if i != next_kill {
            let r = sb.tg(&args);
            match ended(r.code, &r.stderr) {
                Ended::Acked => {
                    model = op.apply(&model);
                    acked += 1;
                }
                Ended::Refused => refused += 1,
                Ended::Cut(why) => panic!(
                    "op {i} `{}` got no answer without a kill: {why}\n{}",
                    args.join(" "),
                    sb.tail_log()
                ),
            }
            continue;
        }
        // The kill: the call is in flight (or just done, or not yet read by the daemon).
        next_kill = i + 40 + rng.below(80);
        kills += 1;
        let pid = sb.pid().unwrap();
        let child = Command::new(tollgate_bin())
            .arg("--socket")
            .arg(&sb.socket)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // An operation takes 3 to 40 ms (the CLI's start included).
        std::thread::sleep(Duration::from_micros(rng.below(25_000)));
        // SAFETY: signalling the daemon this test started.
        unsafe { libc::kill(pid.cast_signed(), libc::SIGKILL) };
        let out: Cli = child.wait_with_output().unwrap().into();
        sb.kill_daemon();
        sb.start_daemon().unwrap();
        let when = format!("after kill {kills} (op {i} `{}`)", args.join(" "));
        match ended(out.code, &out.stderr) {
            Ended::Acked => {
                model = op.apply(&model);
                acked += 1;
            }
            Ended::Refused => refused += 1,
            Ended::Cut(_) => {
                let now = Model::of(&Shown::read(&sb).unwrap());
                let applied = op.apply(&model);
                if now == applied && applied != model {
                    cut_applied.push(i);
                    model = applied;
                } else if now == model {
                    cut_not.push(i);
                } else {
                    panic!(
                        "{when}: the cut operation is neither applied nor absent:\n  before: {model:?}\n  applied: {applied:?}\n  now: {now:?}"
                    );
                }
            }
        }
        check(&sb, &model, &when);
    }
    // A last restart, then the final comparison.
    sb.kill_daemon();
    sb.start_daemon().unwrap();
    let shown = check(&sb, &model, "after the final restart");
    let agreed = datapath_agrees(&sb, &shown, &sb.tag).unwrap();
    eprintln!(
        "{OPS} operations in {:.1} s: {acked} acknowledged, {refused} refused; {kills} kills: \
         {} cut calls found applied {cut_applied:?}, {} not {cut_not:?}; final state {} containers, \
         {} port maps, {} rules, {} links, {} limits; datapath agrees: {agreed:?}",
        t0.elapsed().as_secs_f64(),
        cut_applied.len(),
        cut_not.len(),
        model.containers.len(),
        model.ports.len(),
        model.rules.len(),
        model.links.len(),
        model.limits.len(),
    );
    assert!(kills >= 6, "only {kills} kills");
}
