//! One measurement of one workload against one sandbox.

use std::{
    fmt::Write as _,
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    sandbox::{
        in_ns, iptables_port_rules, kill_child, restore_input, self_exe, sh, Sandbox, ECHO_PORT,
        INSTALL_BASE, IPERF_PORT, MEMORY_BASE,
    },
    tools::LoadResult,
    Mode,
};

/// Runs a command with a wall-clock limit; returns stdout if it succeeded.
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Result<String> {
    let shown = crate::display(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() > limit || super::interrupted() {
            kill_child(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (
        t_out.join().unwrap_or_default(),
        t_err.join().unwrap_or_default(),
    );
    match status {
        None if super::interrupted() => bail!("interrupted"),
        None => bail!("`{shown}` did not finish in {limit:?}"),
        Some(st) if !st.success() => {
            let msg = if stderr.trim().is_empty() {
                stdout.trim().chars().take(400).collect::<String>()
            } else {
                stderr.trim().chars().take(400).collect()
            };
            bail!("`{shown}` failed ({st}): {msg}")
        }
        Some(_) => Ok(stdout),
    }
}

/// A /proc/stat snapshot for CPU-time deltas.
pub struct CpuSnap {
    at: Instant,
    cpus: f64,
    /// system + softirq, seconds (tick-sampled).
    sys_softirq: f64,
    /// idle + iowait, seconds (exact on `NO_HZ` kernels: measured at idle entry and exit).
    idle: f64,
}

impl CpuSnap {
    pub fn now() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 8 {
            bail!("unexpected /proc/stat: {line}");
        }
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count()
            .max(1);
        let cpus = f64::from(u32::try_from(cpus)?);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        let hz = f64::from(u32::try_from(hz).context("clock ticks per second")?);
        // user nice system idle iowait irq softirq steal
        Ok(Self {
            at: Instant::now(),
            cpus,
            sys_softirq: (v[2] + v[6]) / hz,
            idle: (v[3] + v[4]) / hz,
        })
    }

    /// (sys+softirq seconds, busy seconds = wall × CPUs − idle) since `self`.
    pub fn since(&self) -> Result<(f64, f64)> {
        let now = Self::now()?;
        let wall = now.at.duration_since(self.at).as_secs_f64();
        Ok((
            now.sys_softirq - self.sys_softirq,
            (wall * self.cpus - (now.idle - self.idle)).max(0.0),
        ))
    }
}

/// iperf3 result: (Gbit/s received, bits received).
pub fn iperf(
    sb: &Sandbox,
    secs: f64,
    streams: u32,
    reverse: bool,
    omit: u32,
    rate: Option<&str>,
) -> Result<(f64, f64)> {
    let t = sb.target(IPERF_PORT);
    let mut cmd = in_ns(&sb.client, "iperf3");
    cmd.args(["-c", &t.ip().to_string(), "-p", &t.port().to_string()])
        .args(["-t", &format!("{secs}"), "-P", &streams.to_string()])
        .args(["-J", "--connect-timeout", "3000"]);
    if omit > 0 {
        cmd.args(["-O", &omit.to_string()]);
    }
    if reverse {
        cmd.arg("-R");
    }
    if let Some(r) = rate {
        cmd.args(["-b", r]);
    }
    let limit = Duration::from_secs_f64(secs + f64::from(omit) + 20.0);
    let out = run_timeout(&mut cmd, limit)?;
    let v: serde_json::Value = serde_json::from_str(&out).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let sum = &v["end"]["sum_received"];
    let bps = sum["bits_per_second"]
        .as_f64()
        .context("iperf3: no end.sum_received.bits_per_second")?;
    let bytes = sum["bytes"].as_f64().unwrap_or(0.0);
    Ok((bps / 1e9, bytes * 8.0))
}

/// Runs `bench-load` in the client namespace.
pub fn load(sb: &Sandbox, kind: &str, secs: f64, threads: usize, rate: u64) -> Result<LoadResult> {
    let t = sb.target(ECHO_PORT);
    let mut cmd = in_ns(&sb.client, self_exe());
    cmd.args(["bench-load", "--kind", kind, "--target", &t.to_string()])
        .args(["--secs", &format!("{secs}")])
        .args(["--threads", &threads.to_string()])
        .args(["--rate", &rate.to_string()]);
    let out = run_timeout(&mut cmd, Duration::from_secs_f64(secs + 20.0))?;
    let r = LoadResult::from_json(&out)?;
    if r.transactions == 0 {
        bail!("no transaction completed ({} errors)", r.errors);
    }
    Ok(r)
}

/// `load` with the load generator and the container's echo server (all its threads) pinned to
/// the last CPU; the server's affinity is restored afterwards.
pub fn load_pinned(sb: &Sandbox, kind: &str, secs: f64) -> Result<LoadResult> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let (one, all) = ((cpus - 1).to_string(), format!("0-{}", cpus - 1));
    let echo = sb.echo_pid().context("no echo server")?.to_string();
    sh(Command::new("taskset").args(["-a", "-p", "-c", &one, &echo]))?;
    let t = sb.target(ECHO_PORT);
    let mut cmd = in_ns(&sb.client, "taskset");
    cmd.args(["-c", &one])
        .arg(self_exe())
        .args(["bench-load", "--kind", kind, "--target", &t.to_string()])
        .args(["--secs", &format!("{secs}")]);
    let out = run_timeout(&mut cmd, Duration::from_secs_f64(secs + 20.0));
    let restored = sh(Command::new("taskset").args(["-a", "-p", "-c", &all, &echo]));
    let r = LoadResult::from_json(&out?)?;
    restored?;
    if r.transactions == 0 {
        bail!("no transaction completed ({} errors)", r.errors);
    }
    Ok(r)
}

/// `VmRSS` of a process, bytes.
pub fn rss(pid: u32) -> Result<f64> {
    proc_kb(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// `Pss` of a process (`smaps_rollup`), bytes.
pub fn pss(pid: u32) -> Result<f64> {
    proc_kb(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

fn proc_kb(path: &str, key: &str) -> Result<f64> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in {path}"))?;
    Ok(kb * 1024.0)
}

/// Counts TCP listeners in `ns` on ports `first..first+count`.
fn count_listening(ns: &str, first: u16, count: u32) -> Result<u32> {
    let out = sh(in_ns(ns, "ss").args(["-Hltn"]))?;
    let last = u32::from(first) + count;
    let n = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|a| a.rsplit(':').next()?.parse::<u32>().ok())
        .filter(|p| (u32::from(first)..last).contains(p))
        .count();
    Ok(u32::try_from(n)?)
}

/// Starts `count` proxy processes (ports from `first`) and waits until all listen; returns
/// them and the time it took.
pub fn spawn_proxies(sb: &Sandbox, first: u16, count: u32) -> Result<(Vec<Child>, f64)> {
    let start = Instant::now();
    let mut procs = Vec::new();
    let res = (|| {
        for i in 0..count {
            let p = first + u16::try_from(i)?;
            procs.push(sb.spawn_proxy(p, ECHO_PORT)?);
        }
        loop {
            if count_listening(&sb.node, first, count)? == count {
                return Ok(());
            }
            for c in &mut procs {
                if let Some(st) = c.try_wait()? {
                    bail!("a proxy exited ({st})");
                }
            }
            if start.elapsed() > Duration::from_mins(1) {
                bail!("proxies not listening after 60 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })();
    let took = start.elapsed().as_secs_f64();
    if let Err(e) = res {
        for c in &mut procs {
            kill_child(c);
        }
        return Err(e);
    }
    Ok((procs, took))
}

/// What installing `n` port maps cost in one mode.
pub struct Install {
    /// Seconds.
    pub secs: f64,
    /// `iptables -A` per rule, estimated seconds (iptables mode).
    pub per_rule_estimate: Option<f64>,
    /// Publishing one more port on top of the `n`, milliseconds: tollgate the median of
    /// `ONE_ADDS` `port add` calls, iptables the mean of its sample's 3 `iptables -A` per port.
    pub one_ms: Option<f64>,
}

/// Single `port add` calls timed on top of a batch.
const ONE_ADDS: u32 = 20;

/// Installs `n` port maps and removes them again. `sample` bounds the per-process estimates.
pub fn install(sb: &Sandbox, n: u32, sample: u32) -> Result<Install> {
    match sb.mode {
        Mode::Tollgate => {
            let port_specs: Vec<String> = (0..n)
                .map(|i| {
                    let p = u32::from(INSTALL_BASE) + i;
                    format!("{p}:{p}")
                })
                .collect();
            let mut args = vec!["port", "add", sb.container.as_str()];
            args.extend(port_specs.iter().map(String::as_str));
            let start = Instant::now();
            sb.tg(&args)?;
            let secs = start.elapsed().as_secs_f64();
            // Then one more port at a time on top of the n: a whole CLI call each (process
            // start, socket round trip, state journal fsync, map writes).
            let mut one = Vec::new();
            let first = u32::from(INSTALL_BASE) + n;
            for i in 0..ONE_ADDS {
                let spec = format!("{p}:{p}", p = first + i);
                let t = Instant::now();
                sb.tg(&["port", "add", &sb.container, &spec])?;
                one.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            one.sort_by(f64::total_cmp);
            let range = format!("{}-{}", INSTALL_BASE, first + ONE_ADDS - 1);
            sb.tg(&["port", "del", &sb.container, &range])?;
            Ok(Install {
                secs,
                per_rule_estimate: None,
                one_ms: Some(one[one.len() / 2]),
            })
        }
        Mode::Iptables => {
            let rules = iptables_port_rules(INSTALL_BASE, n);
            std::fs::write(sb.dir.join("install.txt"), restore_input(&rules))?;
            let mut restore = in_ns(&sb.node, "iptables-restore");
            restore.arg("--noflush").arg(sb.dir.join("install.txt"));
            let start = Instant::now();
            sh(&mut restore)?;
            let secs = start.elapsed().as_secs_f64();
            sb.restore_rules(sb.extra)?;
            // One `iptables -A` per rule: time `sample` ports (3 rules each) on the base
            // ruleset and again on top of n - sample ports; extrapolate with the mean rate.
            let sample = sample.min(n);
            let t0 = iptables_append(sb, sample)?;
            sb.restore_rules(sb.extra)?;
            let pre = iptables_port_rules(INSTALL_BASE + u16::try_from(sample)?, n - sample);
            sb.iptables_restore(&restore_input(&pre), true)?;
            let t1 = iptables_append(sb, sample)?;
            sb.restore_rules(sb.extra)?;
            let estimate = f64::from(n) / f64::from(sample) * (t0 + t1) / 2.0;
            Ok(Install {
                secs,
                per_rule_estimate: Some(estimate),
                // One more port on top of the others: its 3 `iptables -A` processes.
                one_ms: Some(t1 / f64::from(sample) * 1000.0),
            })
        }
        Mode::Proxy => {
            let sample = sample.min(n);
            let (mut procs, took) = spawn_proxies(sb, INSTALL_BASE, sample)?;
            for c in &mut procs {
                kill_child(c);
            }
            Ok(Install {
                secs: took * f64::from(n) / f64::from(sample),
                per_rule_estimate: None,
                one_ms: None,
            })
        }
        Mode::Baseline => bail!("baseline publishes no ports"),
    }
}

/// Runs `cmd` in a memory cgroup of its own and returns (seconds, kernel memory it left
/// charged, bytes). The kernel memory `nf_tables` allocates for rules is charged to the cgroup of
/// the process that adds them and stays there after it exits. `None` when no memory cgroup can
/// be made (the time is still measured). The cgroup is removed afterwards.
fn kernel_memory_of(mut cmd: Command) -> Result<(f64, Option<f64>)> {
    let name = format!("tgb-{}", std::process::id());
    let v1 = Path::new("/sys/fs/cgroup/memory");
    let v2_root = Path::new("/sys/fs/cgroup");
    let (dir, counter) = if v1.join("memory.usage_in_bytes").exists() {
        (v1.join(&name), "memory.kmem.usage_in_bytes")
    } else if std::fs::read_to_string(v2_root.join("cgroup.subtree_control"))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
    {
        (v2_root.join(&name), "memory.current")
    } else {
        let start = Instant::now();
        sh(&mut cmd)?;
        return Ok((start.elapsed().as_secs_f64(), None));
    };
    let _ = std::fs::remove_dir(&dir);
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let read = |f: &str| -> Option<f64> {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let procs = dir.join("cgroup.procs");
    // The child joins the cgroup before it runs the command.
    let script = format!("echo $$ > '{}' && exec \"$@\"", procs.display());
    let mut wrapped = Command::new("sh");
    wrapped
        .args(["-c", &script, "sh"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    let before = read(counter).unwrap_or(0.0);
    let start = Instant::now();
    let r = sh(&mut wrapped);
    let secs = start.elapsed().as_secs_f64();
    let after = read(counter);
    let _ = std::fs::remove_dir(&dir);
    r?;
    Ok((secs, after.map(|a| (a - before).max(0.0))))
}

/// Seconds to add `ports` ports' rules (3 each) with one `iptables -A` process per rule.
fn iptables_append(sb: &Sandbox, ports: u32) -> Result<f64> {
    let rules = iptables_port_rules(INSTALL_BASE, ports);
    let mut script = String::from("set -e\n");
    for (table, r) in &rules {
        let _ = writeln!(script, "iptables -w -t {table} {r}");
    }
    let path = sb.dir.join("append.sh");
    std::fs::write(&path, script)?;
    let start = Instant::now();
    sh(in_ns(&sb.node, "sh").arg(&path))?;
    Ok(start.elapsed().as_secs_f64())
}

/// `bpftool map show pinned PATH -j`: (key+value bytes, `max_entries`, memlock bytes).
pub fn bpf_map(path: &Path) -> Result<(f64, f64, f64)> {
    let out = sh(Command::new("bpftool")
        .args(["map", "show", "pinned"])
        .arg(path)
        .arg("-j"))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("bpftool -j output")?;
    let f = |k: &str| v[k].as_f64().with_context(|| format!("bpftool: no {k}"));
    Ok((
        f("bytes_key")? + f("bytes_value")?,
        f("max_entries")?,
        f("bytes_memlock")?,
    ))
}

/// Memory that `n` published ports take in one mode, all in, bytes.
pub struct Memory {
    pub total: f64,
    /// Proxy: RSS per process; tollgate: key+value bytes of one map in `TG_PORTMAP` and
    /// `TG_PORT_GUARD`.
    pub detail: Option<f64>,
    /// Tollgate: memlock of the two maps (whole tables) and `TG_PORTMAP`'s `max_entries`.
    pub memlock: Option<(f64, f64)>,
}

/// `sb` must be fresh for the tollgate mode (a daemon that never held more maps), since freed
/// heap is not returned to the system.
pub fn memory(sb: &Sandbox, n: u32, sample: u32) -> Result<Memory> {
    match sb.mode {
        Mode::Proxy => {
            let sample = sample.min(n);
            let (mut procs, _) = spawn_proxies(sb, MEMORY_BASE, sample)?;
            let r = (|| {
                let (mut p, mut r) = (0.0, 0.0);
                for c in &procs {
                    p += pss(c.id())?;
                    r += rss(c.id())?;
                }
                let k = f64::from(sample);
                Ok(Memory {
                    total: p / k * f64::from(n),
                    detail: Some(r / k),
                    memlock: None,
                })
            })();
            for c in &mut procs {
                kill_child(c);
            }
            r
        }
        Mode::Iptables => {
            let rules = iptables_port_rules(INSTALL_BASE, n);
            std::fs::write(sb.dir.join("install.txt"), restore_input(&rules))?;
            let mut restore = in_ns(&sb.node, "iptables-restore");
            restore.arg("--noflush").arg(sb.dir.join("install.txt"));
            let (_, mem) = kernel_memory_of(restore)?;
            sb.restore_rules(sb.extra)?;
            Ok(Memory {
                total: mem.context("no memory cgroup to measure the kernel's share")?,
                detail: None,
                memlock: None,
            })
        }
        Mode::Tollgate => {
            let pid = sb.daemon_pid().context("no daemon")?;
            let maps = sb.bpffs.join("maps");
            let both = || -> Result<(f64, f64, f64)> {
                let (a_kv, a_max, a_mem) = bpf_map(&maps.join("TG_PORTMAP"))?;
                let (b_kv, _, b_mem) = bpf_map(&maps.join("TG_PORT_GUARD"))?;
                Ok((a_kv + b_kv, a_max, a_mem + b_mem))
            };
            let (kv, slots, mem0) = both()?;
            let rss0 = rss(pid)?;
            let specs: Vec<String> = (0..n)
                .map(|i| {
                    let p = u32::from(INSTALL_BASE) + i;
                    format!("{p}:{p}")
                })
                .collect();
            let mut args = vec!["port", "add", sb.container.as_str()];
            args.extend(specs.iter().map(String::as_str));
            sb.tg(&args)?;
            let (_, _, mem1) = both()?;
            let rss1 = rss(pid)?;
            Ok(Memory {
                total: (rss1 - rss0).max(0.0) + (mem1 - mem0).max(0.0),
                detail: Some(kv),
                memlock: Some((mem1, slots)),
            })
        }
        Mode::Baseline => bail!("baseline publishes no ports"),
    }
}
