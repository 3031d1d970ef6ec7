//! Per-container rate limits (`tollgate limit set`) end to end, measured with iperf3 across
//! the sandbox's veths.
//!
//! ```text
//!  client ns (iperf3) ──up0── node ns ──tgvN── container ns (iperf3)
//!    egress:  container -> client   (masquerade), policed in from_container
//!    ingress: client -> container   (published port), policed in to_container
//! ```
//! Bounds are generous (2 shared cores, other builds running): the exact figures, beside HTB
//! and TBF, come from `cargo xtask bench ratelimit` (docs/ratelimit.md).

use std::{
    io::Read,
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tollgate_tests::*;

const MBIT: f64 = 1e6;

/// The shared `sandbox!`, plus iperf3 (installed by `cargo xtask setup`).
macro_rules! iperf_sandbox {
    ($name:expr) => {
        iperf_sandbox!($name, &[])
    };
    ($name:expr, $flags:expr) => {{
        if Command::new("iperf3").arg("--version").output().is_err() {
            eprintln!("skipped: iperf3 not installed (run `cargo xtask setup`)");
            return;
        }
        tollgate_tests::sandbox!($name, $flags)
    }};
}

/// An `iperf3 -s -1` in a namespace; killed on drop.
struct Iperf3Server(Child);

impl Iperf3Server {
    fn start(ns: &str, port: u16) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "iperf3", "-s", "-1", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning iperf3 -s");
        let srv = Iperf3Server(child);
        // Until it listens (checked from inside its namespace).
        let ns = ns.to_string();
        eventually(Duration::from_secs(5), || {
            let out = sh("ip", &["netns", "exec", &ns, "ss", "-Hltn"])?;
            if out.contains(&format!(":{port} ")) {
                Ok(())
            } else {
                bail!("iperf3 not listening on {port} yet")
            }
        })
        .expect("iperf3 server up");
        srv
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one iperf3 client run measured.
#[derive(Debug)]
struct Run {
    /// Goodput at the receiver, bits/s.
    rate: f64,
    /// Bytes the sender sent (TCP: payload; UDP: datagrams).
    sent_bytes: u64,
    /// Bytes the receiver got.
    recv_bytes: u64,
}

/// Runs `iperf3 -c ip -p port -t secs -J` (+ `extra`) in `ns`, killed after a deadline. TCP
/// runs omit their first second (`-O 1`): slow start and the full bucket every limit starts
/// with (300 ms of the rate, docs/ratelimit.md) would otherwise inflate a short run.
fn iperf3_client(ns: &str, ip: Ipv4Addr, port: u16, secs: u32, extra: &[&str]) -> Result<Run> {
    let udp = extra.contains(&"-u");
    let omit: &[&str] = if udp { &[] } else { &["-O", "1"] };
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iperf3", "-c"])
        .arg(ip.to_string())
        .args(["-p", &port.to_string(), "-t", &secs.to_string(), "-J"])
        .args(omit)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning iperf3 -c")?;
    let deadline = Instant::now() + Duration::from_secs(u64::from(secs) + 16);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("iperf3 -c {ip}:{port} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out)?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("iperf3 JSON: {out}"))?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let end = &v["end"];
    let (sent, recv) = if udp {
        // iperf3 3.12: `sum` is the sender's view, with the server's loss report folded in.
        let s = &end["sum"];
        let sent = s["bytes"].as_u64().unwrap_or(0);
        let pkts = s["packets"].as_f64().unwrap_or(0.0);
        let lost = s["lost_packets"].as_f64().unwrap_or(0.0);
        let recv = if pkts > 0.0 {
            (sent as f64 * (pkts - lost) / pkts) as u64
        } else {
            0
        };
        (sent, recv)
    } else {
        (
            end["sum_sent"]["bytes"].as_u64().unwrap_or(0),
            end["sum_received"]["bytes"].as_u64().unwrap_or(0),
        )
    };
    let secs_run = if udp {
        end["sum"]["seconds"].as_f64()
    } else {
        end["sum_received"]["seconds"].as_f64()
    }
    .unwrap_or(f64::from(secs));
    Ok(Run {
        rate: recv as f64 * 8.0 / secs_run,
        sent_bytes: sent,
        recv_bytes: recv,
    })
}

/// Egress: the container sends to an iperf3 server in the client namespace (masquerade).
fn egress_run(sb: &Sandbox, ns: &str, port: u16, secs: u32, extra: &[&str]) -> Run {
    let _srv = Iperf3Server::start(&sb.client, port);
    iperf3_client(ns, sb.client_ip, port, secs, extra).expect("iperf3 egress run")
}

/// Ingress: the client sends to an iperf3 server in the container through published `port`.
fn ingress_run(sb: &Sandbox, name: &str, ns: &str, port: u16, secs: u32, extra: &[&str]) -> Run {
    let _srv = Iperf3Server::start(ns, port);
    sb.publish(name, &format!("{port}:{port}"));
    if extra.contains(&"-u") {
        sb.publish(name, &format!("{port}:{port}/udp"));
    }
    iperf3_client(&sb.client, sb.uplink_ip, port, secs, extra).expect("iperf3 ingress run")
}

fn assert_within(what: &str, rate: f64, limit: f64, lo: f64, hi: f64) {
    let pct = rate / limit * 100.0;
    eprintln!(
        "{what}: {:.2} mbit/s = {pct:.1}% of {:.0} mbit",
        rate / MBIT,
        limit / MBIT
    );
    assert!(
        (lo..=hi).contains(&pct),
        "{what}: {:.2} mbit/s is {pct:.1}% of the {:.0} mbit limit, expected {lo}-{hi}%",
        rate / MBIT,
        limit / MBIT
    );
}

/// `tollgate stats NAME --json` as one object.
fn stats(sb: &Sandbox, name: &str) -> Value {
    let v = sb.json(&["stats", name]);
    match v {
        Value::Array(mut a) => a.remove(0),
        v => v,
    }
}

fn num(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_u64()
        .unwrap_or_else(|| panic!("no {path:?} in {v}"))
}

#[test]
fn egress_tcp_10_and_100_mbit() {
    let sb = iperf_sandbox!("rl-eg");
    let (name, ns, _) = sb.container("a");
    for (mbit, port) in [(10u64, 5301u16), (100, 5302)] {
        sb.ok(&["limit", "set", &name, "--egress", &format!("{mbit}mbit")]);
        let r = egress_run(&sb, &ns, port, 3, &[]);
        assert_within(
            &format!("egress TCP {mbit}mbit"),
            r.rate,
            mbit as f64 * MBIT,
            75.0,
            110.0,
        );
    }
}

#[test]
fn ingress_tcp_10_and_100_mbit() {
    let sb = iperf_sandbox!("rl-in");
    let (name, ns, _) = sb.container("a");
    for (mbit, port) in [(10u64, 5311u16), (100, 5312)] {
        sb.ok(&["limit", "set", &name, "--ingress", &format!("{mbit}mbit")]);
        let r = ingress_run(&sb, &name, &ns, port, 3, &[]);
        assert_within(
            &format!("ingress TCP {mbit}mbit"),
            r.rate,
            mbit as f64 * MBIT,
            75.0,
            110.0,
        );
    }
}

/// One 1 gbit run each way. Two shared cores may not push much more than 1 gbit through
/// masquerade and iperf3 at once, so the lower bound is loose; the bench has the figures.
#[test]
fn tcp_1_gbit_both_ways() {
    let sb = iperf_sandbox!("rl-gb");
    let (name, ns, _) = sb.container("a");
    sb.ok(&[
        "limit",
        "set",
        &name,
        "--egress",
        "1gbit",
        "--ingress",
        "1gbit",
    ]);
    let r = egress_run(&sb, &ns, 5321, 3, &[]);
    assert_within("egress TCP 1gbit", r.rate, 1e9, 50.0, 110.0);
    let r = ingress_run(&sb, &name, &ns, 5322, 3, &[]);
    assert_within("ingress TCP 1gbit", r.rate, 1e9, 50.0, 110.0);
}

/// UDP offered at twice the limit is held at the limit (not at what was offered), and the
/// excess shows up as ratelimit drops in `stats`, in the per-container metrics and in the
/// byte counters.
#[test]
fn udp_at_twice_the_rate_is_policed_and_counted() {
    let sb = iperf_sandbox!("rl-udp", &["--metrics", "127.0.0.1:9361"]);
    let (name, ns, _) = sb.container("a");
    sb.ok(&[
        "limit",
        "set",
        &name,
        "--egress",
        "20mbit",
        "--ingress",
        "20mbit",
    ]);
    let m0 = scrape_metrics(&sb.node, 9361);
    let s0 = stats(&sb, &name);

    let eg = egress_run(&sb, &ns, 5331, 3, &["-u", "-b", "40M", "-l", "1400"]);
    assert_within(
        "egress UDP 40M offered / 20mbit",
        eg.rate,
        20e6,
        90.0,
        110.0,
    );
    let s1 = stats(&sb, &name);
    let eg_drops = num(&s1, &["drops", "ratelimit"]) - num(&s0, &["drops", "ratelimit"]);
    // Every datagram the server missed was dropped by the policer (nothing else loses
    // packets on a veth): about half of them at 2x.
    let sent_pkts = eg.sent_bytes / 1400;
    let lost_pkts = (eg.sent_bytes - eg.recv_bytes) / 1400;
    eprintln!(
        "egress: sent {sent_pkts} datagrams, server lost {lost_pkts}, ratelimit drops {eg_drops}"
    );
    assert!(
        eg_drops as f64 >= lost_pkts as f64 * 0.9 && eg_drops <= sent_pkts,
        "ratelimit drops {eg_drops} vs {lost_pkts} datagrams lost of {sent_pkts}"
    );
    let tx = num(&s1, &["tx_bytes"]) - num(&s0, &["tx_bytes"]);
    assert!(
        tx >= eg.sent_bytes,
        "tx_bytes moved by {tx}, iperf3 sent {} bytes of payload",
        eg.sent_bytes
    );

    let ing = ingress_run(&sb, &name, &ns, 5332, 3, &["-u", "-b", "40M", "-l", "1400"]);
    assert_within(
        "ingress UDP 40M offered / 20mbit",
        ing.rate,
        20e6,
        90.0,
        110.0,
    );
    let s2 = stats(&sb, &name);
    let rx = num(&s2, &["rx_bytes"]) - num(&s1, &["rx_bytes"]);
    assert!(
        rx >= ing.recv_bytes,
        "rx_bytes moved by {rx}, iperf3 received {} bytes of payload",
        ing.recv_bytes
    );
    let all_drops = num(&s2, &["drops", "ratelimit"]) - num(&s0, &["drops", "ratelimit"]);
    assert!(
        all_drops > eg_drops,
        "ingress overload added no ratelimit drops"
    );

    // The metrics are the same counters: they moved by at least what the runs imply.
    let m1 = scrape_metrics(&sb.node, 9361);
    let label = format!("container=\"{name}\"");
    let tx_m = metric(&m1, "tollgate_container_tx_bytes_total", &label)
        - metric(&m0, "tollgate_container_tx_bytes_total", &label);
    assert!(tx_m >= eg.sent_bytes, "metrics tx_bytes moved by {tx_m}");
    let rx_m = metric(&m1, "tollgate_container_rx_bytes_total", &label)
        - metric(&m0, "tollgate_container_rx_bytes_total", &label);
    assert!(rx_m >= ing.recv_bytes, "metrics rx_bytes moved by {rx_m}");
    let drop_label = format!("{label},reason=\"ratelimit\"");
    let d_m = metric(&m1, "tollgate_container_drops_total", &drop_label)
        - metric(&m0, "tollgate_container_drops_total", &drop_label);
    assert!(
        d_m >= all_drops,
        "metrics ratelimit drops moved by {d_m}, stats by {all_drops}"
    );
}

/// A limited container does not slow an unlimited neighbour sending at the same time.
#[test]
fn unlimited_neighbour_is_not_slowed() {
    let sb = iperf_sandbox!("rl-nb");
    let (a, a_ns, _) = sb.container("a");
    let (_b, b_ns, _) = sb.container("b");
    sb.ok(&["limit", "set", &a, "--egress", "10mbit"]);
    let _sa = Iperf3Server::start(&sb.client, 5341);
    let _sb = Iperf3Server::start(&sb.client, 5342);
    let client = sb.client_ip;
    let ta = std::thread::spawn(move || iperf3_client(&a_ns, client, 5341, 3, &[]));
    let rb = iperf3_client(&b_ns, client, 5342, 3, &[]).expect("B's run");
    let ra = ta.join().unwrap().expect("A's run");
    assert_within("limited A", ra.rate, 10e6, 75.0, 110.0);
    eprintln!("unlimited B alongside: {:.0} mbit/s", rb.rate / MBIT);
    assert!(
        rb.rate > 20.0 * ra.rate && rb.rate > 200e6,
        "B ({:.0} mbit/s) must not be held anywhere near A's 10 mbit",
        rb.rate / MBIT
    );
}

/// The egress limit also covers traffic to another container on the same node (it is
/// policed on A's own veth, before any routing decision).
#[test]
fn container_to_container_is_limited() {
    let sb = iperf_sandbox!("rl-c2c", &["--icc"]);
    let (a, a_ns, _) = sb.container("a");
    let (_b, b_ns, b_ip) = sb.container("b");
    sb.ok(&["limit", "set", &a, "--egress", "10mbit"]);
    let _srv = Iperf3Server::start(&b_ns, 5351);
    let r = iperf3_client(&a_ns, b_ip, 5351, 3, &[]).expect("A -> B");
    assert_within("A -> B TCP (A egress 10mbit)", r.rate, 10e6, 75.0, 110.0);
    // And B -> A is A's ingress: unlimited, so far above.
    let _srv = Iperf3Server::start(&b_ns, 5352);
    let r = iperf3_client(&a_ns, b_ip, 5352, 2, &["-R"]).expect("B -> A");
    assert!(
        r.rate > 100e6,
        "B -> A is not limited: {:.0} mbit/s",
        r.rate / MBIT
    );
}

/// `limit clear` takes the limit off at once; `limit show` reports what is set.
#[test]
fn clear_removes_the_limit() {
    let sb = iperf_sandbox!("rl-clr");
    let (name, ns, _) = sb.container("a");
    sb.ok(&["limit", "set", &name, "--egress", "10mbit"]);
    let shown = sb.json(&["limit", "show", &name]);
    assert_eq!(shown["egress_bps"], 10_000_000, "{shown}");
    sb.ok(&["limit", "clear", &name]);
    let r = egress_run(&sb, &ns, 5361, 2, &[]);
    assert!(r.rate > 100e6, "cleared, yet {:.0} mbit/s", r.rate / MBIT);
}

/// `bpftool map dump` of the pinned maps shows field names (the maps carry BTF).
#[test]
fn bpftool_dump_shows_field_names() {
    if Command::new("bpftool").arg("version").output().is_err() {
        eprintln!("skipped: bpftool not installed");
        return;
    }
    let sb = iperf_sandbox!("rl-btf");
    let (name, _, _) = sb.container("a");
    sb.ok(&[
        "limit",
        "set",
        &name,
        "--egress",
        "10mbit",
        "--ingress",
        "20mbit",
    ]);
    sb.publish(&name, "8080:80");
    let pin = |m: &str| sb.bpffs.join("maps").join(m).to_string_lossy().into_owned();
    let rl = sh("bpftool", &["map", "dump", "pinned", &pin("TG_RATELIMIT")]).unwrap();
    for field in [
        "\"egress\"",
        "\"ingress\"",
        "\"rate\"",
        "\"depth\"",
        "\"fill_ns\"",
        "\"tat\"",
    ] {
        assert!(
            rl.contains(field),
            "no {field} in TG_RATELIMIT dump:\n{}",
            &rl[..rl.len().min(2000)]
        );
    }
    assert!(
        rl.contains("1250000"),
        "10 mbit = 1250000 bytes/s not in the dump"
    );
    let pm = sh("bpftool", &["map", "dump", "pinned", &pin("TG_PORTMAP")]).unwrap();
    assert!(
        pm.contains("\"container_ip\""),
        "no container_ip in TG_PORTMAP dump:\n{pm}"
    );
}

/// Value of `name{labels}` in an exposition text, 0 when absent.
fn metric(text: &str, name: &str, labels: &str) -> u64 {
    let head = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&head))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}
