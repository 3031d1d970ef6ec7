//! The API socket under abuse, as any local process could do it: bytes that are not HTTP,
//! bodies of 100 MB, endless headers, clients that send half a request and stall or never
//! read their answer, connections held open by the thousand, and a hundred clients at once.
//! Each time the daemon must go on answering promptly, its error answers must say what
//! happened, its state must be unchanged (or changed exactly as the clients asked) and its
//! pinned maps must agree with that state.

use std::{
    io::{ErrorKind, Read, Write},
    os::unix::net::UnixStream,
    sync::{Arc, Barrier, Mutex},
    time::{Duration, Instant},
};

use tollgate::api::types::ErrorBody;
use tollgate_tests::{
    consistency::{datapath_agrees, Shown},
    *,
};

/// 100 MB, the size of the bodies sent.
const BIG: usize = 100 << 20;
/// Connections held open at once.
const HELD: usize = 1500;

/// What "promptly" means for `tollgate status` while the socket is abused (it takes a few
/// milliseconds on an idle daemon).
const PROMPT: Duration = Duration::from_secs(1);

fn connect(sb: &Sandbox) -> UnixStream {
    let s = UnixStream::connect(&sb.socket).expect("connecting to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads one answer: (status, body), status 0 when the daemon closed without one.
fn answer(s: &mut UnixStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if buf.len() >= end + 4 + len {
                let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return (status, body);
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (0, String::from_utf8_lossy(&buf).to_string()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One request on its own connection (`connection: close`): (status, body).
fn http(sb: &Sandbox, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = connect(sb);
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(req.as_bytes());
    answer(&mut s)
}

/// The `message` of a JSON error answer.
fn message(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("not a JSON error answer ({e}): {body:?}"))
        .message
}

/// How long `tollgate status` takes.
fn status_time(sb: &Sandbox) -> Duration {
    let t = Instant::now();
    sb.ok(&["status"]);
    t.elapsed()
}

fn daemon_fds(sb: &Sandbox) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", sb.pid().expect("daemon running")))
        .map_or(0, Iterator::count)
}

/// Waits until the daemon's open fds fall to `at_most`.
fn fds_settle(sb: &Sandbox, at_most: usize) -> usize {
    let t = Instant::now();
    loop {
        let n = daemon_fds(sb);
        if n <= at_most || t.elapsed() > Duration::from_secs(5) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A state worth protecting: two containers, three port maps, a link, a rule, a limit.
fn populate(sb: &Sandbox) -> Shown {
    let (web, _, _) = sb.container("web");
    let (db, _, _) = sb.container("db");
    sb.publish(&web, "8080:80");
    sb.publish(&web, "53:53/udp");
    sb.publish(&db, "5432:5432");
    sb.ok(&["policy", "link", &web, &db]);
    sb.ok(&["policy", "deny", &web, "10.0.0.0/8:25/tcp"]);
    sb.ok(&["limit", "set", &db, "--egress", "20mbit"]);
    Shown::read(sb).unwrap()
}

/// The daemon answers, its state is `before`, its datapath agrees, and it never restarted.
fn intact(sb: &Sandbox, before: &Shown, pid: Option<u32>) {
    assert_eq!(sb.pid(), pid);
    let alive = std::fs::metadata(format!("/proc/{}", pid.unwrap())).is_ok();
    assert!(alive, "the daemon died:\n{}", sb.tail_log());
    let t = status_time(sb);
    assert!(t < PROMPT, "status took {t:?}");
    let now = Shown::read(sb).unwrap();
    assert_eq!(&now, before, "the state changed");
    let agreed = datapath_agrees(sb, &now, &sb.tag).unwrap();
    eprintln!("state intact, datapath agrees: {agreed:?}");
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next().to_le_bytes()[3]).collect()
    }
}

/// Writes `total` bytes of `chunk` on `s` from a thread; returns how many went out before
/// the daemon closed the connection.
fn flood(mut s: UnixStream, chunk: Vec<u8>, total: usize) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut sent = 0;
        while sent < total {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        sent
    })
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: the slow clients stall while the rest of the abuse goes on"
)]
fn malformed_oversized_and_slow_requests_leave_the_daemon_serving() {
    let sb = sandbox!("abuse-raw");
    let before = populate(&sb);
    let pid = sb.pid();
    let fds = daemon_fds(&sb);
    let mut rng = Rng(0x7011_6a7e_5eed);

    // Slow clients first: they stall for the whole test. Half a head, half a body, a head
    // trickled a line per second, an idle connection, and one that never reads its answers.
    let t0 = Instant::now();
    let mut half_head = connect(&sb);
    half_head
        .write_all(b"GET /v1/status HTTP/1.1\r\nhost: loc")
        .unwrap();
    let mut half_body = connect(&sb);
    half_body
        .write_all(b"POST /v1/containers HTTP/1.1\r\nhost: x\r\ncontent-length: 200\r\n\r\n{\"name\": \"sl")
        .unwrap();
    let mut idle = connect(&sb);
    let mut trickle = connect(&sb);
    trickle.write_all(b"GET /v1/status HTTP/1.1\r\n").unwrap();
    let deaf = connect(&sb);
    let pipelined = b"GET /v1/containers HTTP/1.1\r\nhost: x\r\n\r\n".repeat(1000);
    let deaf_writer = flood(deaf.try_clone().unwrap(), pipelined, 20 << 20);

    // Garbage: random bytes, then things that are almost HTTP.
    for i in 0..20 {
        let n = 1 << (8 + i % 8);
        let mut s = connect(&sb);
        let _ = s.write_all(&rng.bytes(n));
        let (code, _) = answer(&mut s);
        assert!([0, 400, 431].contains(&code), "garbage {i}: {code}");
    }
    for raw in [
        &b"hello\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /v1/status HTTP/1.1\r\ncontent-length: -5\r\n\r\n",
    ] {
        let mut s = connect(&sb);
        let _ = s.write_all(raw);
        assert_eq!(answer(&mut s).0, 400, "{:?}", String::from_utf8_lossy(raw));
    }
    // Errors the router finds are JSON and say what is wrong.
    let (code, body) = http(&sb, "PATCH", "/v1/status", None);
    assert_eq!(code, 405);
    assert!(message(&body).contains("allowed: GET"), "{body}");
    let (code, body) = http(&sb, "POST", "/v1/containers", Some("{\"name\": "));
    assert_eq!(code, 400);
    assert!(message(&body).contains("malformed"), "{body}");
    let (code, body) = http(&sb, "GET", "/v1/containers/%ff%fe", None);
    assert_eq!(code, 400);
    assert!(!message(&body).is_empty());
    let (code, body) = http(&sb, "GET", "/nosuch", None);
    assert_eq!(code, 404);
    assert!(message(&body).contains("no such route"), "{body}");

    // 100 MB bodies, declared and chunked: 413 while the sender is still sending.
    let mut s = connect(&sb);
    s.write_all(
        format!("POST /v1/containers HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {BIG}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let sender = flood(s.try_clone().unwrap(), vec![b'a'; 1 << 16], BIG);
    let (code, body) = answer(&mut s);
    assert_eq!(code, 413, "{body}");
    assert!(message(&body).contains("larger than"), "{body}");
    drop(s);
    let sent = sender.join().unwrap();
    assert!(sent < BIG, "the daemon read all 100 MB");
    eprintln!(
        "100 MB body, declared: 413, {} MB sent before the close",
        sent >> 20
    );
    let mut s = connect(&sb);
    s.write_all(b"POST /v1/containers HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("10000\r\n{}\r\n", "b".repeat(0x10000)).into_bytes();
    let sender = flood(s.try_clone().unwrap(), chunk, BIG);
    let (code, body) = answer(&mut s);
    assert_eq!(code, 413, "{body}");
    drop(s);
    let sent = sender.join().unwrap();
    assert!(sent < BIG, "the daemon read all 100 MB");
    eprintln!(
        "100 MB body, chunked: 413, {} MB sent before the close",
        sent >> 20
    );

    // A header flood: hyper stops at its head buffer (431) and closes.
    let mut s = connect(&sb);
    s.write_all(b"GET /v1/status HTTP/1.1\r\n").unwrap();
    let line = format!("x-flood: {}\r\n", "f".repeat(200)).into_bytes();
    let sender = flood(s.try_clone().unwrap(), line, BIG);
    assert_eq!(answer(&mut s).0, 431);
    drop(s);
    assert!(sender.join().unwrap() < BIG);

    // All the while the stalled clients wait: the daemon answers everyone else at once.
    for _ in 0..5 {
        let t = status_time(&sb);
        assert!(t < PROMPT, "status took {t:?} next to stalled clients");
        let _ = trickle.write_all(b"x-slow: 1\r\n");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Then the deadlines: 408 with a message for a request begun, a close for the idle one.
    let (code, body) = answer(&mut half_head);
    assert_eq!(code, 408, "{body}");
    assert!(message(&body).contains("did not arrive"), "{body}");
    let (code, body) = answer(&mut half_body);
    assert_eq!(code, 408, "{body}");
    assert!(message(&body).contains("body"), "{body}");
    assert_eq!(answer(&mut trickle).0, 408, "trickled bytes kept it open");
    assert_eq!(answer(&mut idle).0, 0, "the idle connection is closed");
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(25),
        "the deadlines took {waited:?}"
    );
    // The client that never reads is dropped once its answers stop moving.
    let sent = deaf_writer.join().unwrap();
    assert!(
        sent < 20 << 20,
        "the daemon kept taking requests nobody reads"
    );
    drop(deaf);
    eprintln!("stalled clients answered 408 / closed after {waited:?}");

    let after = fds_settle(&sb, fds + 2);
    assert!(
        after <= fds + 2,
        "the daemon holds {after} fds, {fds} before"
    );
    intact(&sb, &before, pid);
}

/// Sets the daemon's soft `RLIMIT_NOFILE` (systemd starts services with 1,024).
fn limit_daemon_fds(sb: &Sandbox, soft: u64) {
    let pid = sb.pid().unwrap().cast_signed();
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers; reading then lowering another process's limit (we are root).
    unsafe {
        assert_eq!(
            libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &raw mut cur),
            0
        );
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: cur.rlim_max,
        };
        assert_eq!(
            libc::prlimit(
                pid,
                libc::RLIMIT_NOFILE,
                &raw const new,
                std::ptr::null_mut()
            ),
            0
        );
    }
}

#[test]
fn connections_held_open_by_the_thousand_do_not_starve_the_api() {
    let sb = sandbox!("abuse-hold");
    let before = populate(&sb);
    let pid = sb.pid();
    let fds = daemon_fds(&sb);
    raise_nofile(8192).unwrap();
    limit_daemon_fds(&sb, 1024);

    // 1,500 connections: most idle or with half a head, one in ten with a head and half a
    // body (a request being served, which the daemon may not close for room).
    let t = Instant::now();
    let mut held = Vec::with_capacity(HELD);
    for i in 0..HELD {
        let mut s = connect(&sb);
        match i % 10 {
            0 => {
                let _ = s.write_all(
                    b"POST /v1/containers HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n\r\n{",
                );
            }
            1..=5 => {
                let _ = s.write_all(b"GET /v1/status HTTP/1.1\r\n");
            }
            _ => {}
        }
        held.push(s);
    }
    eprintln!("{HELD} connections opened in {:?}", t.elapsed());
    let open = daemon_fds(&sb);
    assert!(
        open < 900,
        "the daemon holds {open} fds for them (limit 1,024)"
    );
    let t = status_time(&sb);
    assert!(t < PROMPT, "status took {t:?} with {HELD} connections held");
    // It can still open what operations need (namespaces, netlink sockets, files).
    let (extra, _, _) = sb.container("extra");
    sb.publish(&extra, "9090:90");
    sb.ok(&["container", "del", &extra]);
    let served = held
        .iter_mut()
        .take(10)
        .map(|s| {
            let _ = s.write_all(b"\r\n");
            answer(s).0
        })
        .collect::<Vec<_>>();
    eprintln!(
        "daemon fds: {fds} before, {open} with {HELD} held; status in {t:?}; first held ones got {served:?}"
    );
    drop(held);
    let after = fds_settle(&sb, fds + 2);
    assert!(
        after <= fds + 2,
        "the daemon holds {after} fds, {fds} before"
    );
    intact(&sb, &before, pid);
}

/// What one client got: the operations refused and why, and those that failed outright
/// (no answer, a timeout, an unexpected status).
#[derive(Default)]
struct Outcomes {
    refused: Vec<String>,
    failed: Vec<String>,
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "the clients' script and the state it must add up to, side by side"
)]
fn a_hundred_concurrent_clients_all_get_answers_and_the_state_adds_up() {
    const CLIENTS: usize = 100;
    const CONTESTED: u16 = 19999;
    let sb = Arc::new(sandbox!("abuse-many"));
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let winners = Arc::new(Mutex::new(Vec::new()));
    let name = |i: usize| sb.cname(&format!("c{i}"));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (sb, barrier, outcomes, winners) = (
                sb.clone(),
                barrier.clone(),
                outcomes.clone(),
                winners.clone(),
            );
            let me = name(i);
            let prev = name(i.saturating_sub(1));
            std::thread::spawn(move || {
                // Even clients use the CLI, odd ones HTTP. An operation either succeeds or
                // is refused with a message; `contested` says a refusal is expected.
                let op = |cli: &[&str],
                          method: &str,
                          path: &str,
                          body: Option<&str>,
                          contested: bool|
                 -> bool {
                    let what = format!("client {i}: {}", cli.join(" "));
                    let (ok, refusal) = if i.is_multiple_of(2) {
                        let r = sb.tg(cli);
                        match r.code {
                            0 => (true, None),
                            1 if r.stderr.starts_with("error: ")
                                && !r.stderr.contains("closed the connection") =>
                            {
                                (false, Some(r.stderr.trim().to_string()))
                            }
                            c => {
                                outcomes
                                    .lock()
                                    .unwrap()
                                    .failed
                                    .push(format!("{what}: exit {c}: {}", r.stderr.trim()));
                                return false;
                            }
                        }
                    } else {
                        match http(&sb, method, path, body) {
                            (200 | 201, _) => (true, None),
                            (c @ (400..=499 | 503), b) => {
                                (false, Some(format!("{c} {}", message(&b))))
                            }
                            (c, b) => {
                                outcomes
                                    .lock()
                                    .unwrap()
                                    .failed
                                    .push(format!("{what}: HTTP {c}: {b}"));
                                return false;
                            }
                        }
                    };
                    if let Some(r) = refusal {
                        let mut o = outcomes.lock().unwrap();
                        if contested && r.contains("already mapped") {
                            o.refused.push(r);
                        } else {
                            o.failed.push(format!("{what}: refused: {r}"));
                        }
                    }
                    ok
                };
                barrier.wait();
                op(
                    &["container", "add", &me],
                    "POST",
                    "/v1/containers",
                    Some(&format!(r#"{{"name": "{me}"}}"#)),
                    false,
                );
                barrier.wait();
                let own = format!("{}:80", 20000 + i);
                op(
                    &["port", "add", &me, &own],
                    "POST",
                    &format!("/v1/containers/{me}/ports"),
                    Some(&format!(r#"{{"specs": ["{own}"]}}"#)),
                    false,
                );
                let contested = format!("{CONTESTED}:80");
                if op(
                    &["port", "add", &me, &contested],
                    "POST",
                    &format!("/v1/containers/{me}/ports"),
                    Some(&format!(r#"{{"specs": ["{contested}"]}}"#)),
                    true,
                ) {
                    winners.lock().unwrap().push(i);
                }
                let rule = format!("10.{i}.0.0/16:443/tcp");
                op(
                    &["policy", "allow", &me, &rule],
                    "POST",
                    &format!("/v1/containers/{me}/policy/rules"),
                    Some(&format!(r#"{{"rule": "{rule}", "action": "allow"}}"#)),
                    false,
                );
                if i.is_multiple_of(2) {
                    let mbit = format!("{}mbit", i + 1);
                    op(
                        &["limit", "set", &me, "--egress", &mbit],
                        "PUT",
                        &format!("/v1/containers/{me}/limits"),
                        Some(&format!(r#"{{"egress_bps": {}}}"#, (i + 1) * 1_000_000)),
                        false,
                    );
                }
                op(&["container", "list"], "GET", "/v1/containers", None, false);
                op(&["status"], "GET", "/v1/status", None, false);
                barrier.wait();
                if i % 2 == 1 {
                    op(
                        &["policy", "link", &me, &prev],
                        "PUT",
                        &format!("/v1/containers/{me}/links/{prev}"),
                        None,
                        false,
                    );
                }
                barrier.wait();
                if i.is_multiple_of(4) {
                    op(
                        &["container", "del", &me],
                        "DELETE",
                        &format!("/v1/containers/{me}"),
                        None,
                        false,
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = t0.elapsed();
    let o = outcomes.lock().unwrap();
    assert!(
        o.failed.is_empty(),
        "{} operations failed:\n{}",
        o.failed.len(),
        o.failed.join("\n")
    );
    let winners = winners.lock().unwrap().clone();
    assert_eq!(winners.len(), 1, "the contested port went to {winners:?}");
    assert_eq!(o.refused.len(), CLIENTS - 1, "one refusal per loser");
    eprintln!(
        "{CLIENTS} clients, mixed CLI and HTTP: every call answered in {elapsed:?}; port {CONTESTED} won by client {}",
        winners[0]
    );

    // The state is what the answers said, and the datapath agrees.
    let shown = Shown::read(&sb).unwrap();
    let alive = |i: usize| !i.is_multiple_of(4);
    let mut names: Vec<String> = (0..CLIENTS).filter(|i| alive(*i)).map(name).collect();
    names.sort();
    let got: Vec<String> = shown.containers.iter().map(|c| c.name.clone()).collect();
    assert_eq!(got, names);
    let mut want_ports: Vec<(String, u16)> = (0..CLIENTS)
        .filter(|i| alive(*i))
        .map(|i| (name(i), u16::try_from(20000 + i).unwrap()))
        .chain(
            winners
                .iter()
                .filter(|w| alive(**w))
                .map(|w| (name(*w), CONTESTED)),
        )
        .collect();
    want_ports.sort();
    let mut got_ports: Vec<(String, u16)> = shown
        .ports
        .iter()
        .map(|m| (m.container.clone(), m.host_port))
        .collect();
    got_ports.sort();
    assert_eq!(got_ports, want_ports);
    for p in &shown.policies {
        let i: usize = p.container.rsplit('c').next().unwrap().parse().unwrap();
        let rules: Vec<&str> = p.rules.iter().map(|r| r.cidr.as_str()).collect();
        assert_eq!(rules, [format!("10.{i}.0.0/16")], "{}", p.container);
        let links: Vec<String> = if i % 4 == 3 {
            vec![name(i - 1)]
        } else {
            vec![]
        };
        assert_eq!(p.links, links, "{}", p.container);
    }
    let mut limits: Vec<(String, Option<u64>)> = shown
        .limits
        .iter()
        .map(|l| (l.container.clone(), l.egress_bps))
        .collect();
    limits.sort();
    let mut want_limits: Vec<(String, Option<u64>)> = (0..CLIENTS)
        .filter(|i| alive(*i) && i.is_multiple_of(2))
        .map(|i| (name(i), Some((u64::try_from(i).unwrap() + 1) * 1_000_000)))
        .collect();
    want_limits.sort();
    assert_eq!(limits, want_limits);
    let agreed = datapath_agrees(&sb, &shown, &sb.tag).unwrap();
    eprintln!("final state as acknowledged; datapath agrees: {agreed:?}");
}
