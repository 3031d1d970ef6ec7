//! The bench's own network programs, run inside the sandbox namespaces as hidden xtask
//! subcommands (`ip netns exec NS xtask bench-echo ...`):
//!
//! - `bench-echo`: the server in the container: every byte read is written back, one thread per
//!   open connection (a pool that grows on demand), until the peer closes.
//! - `bench-proxy`: a docker-proxy style userland proxy for one published port (one process per
//!   port, as Docker does): TCP terminates the client's connection and opens a new one to the
//!   container; UDP keeps one upstream socket per client address.
//! - `bench-listen`: holds listening sockets on a port range (the proxy mode's "other" published
//!   ports when measuring with many port maps).
//! - `bench-load`: the load generator: `rr` (one persistent connection, 1-byte ping-pong,
//!   per-transaction latency) or `crr` (connect, 1-byte request, 1-byte reply, close; several
//!   threads, optionally paced). Prints one JSON object on stdout.

use std::{
    collections::{hash_map::Entry, HashMap},
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct EchoArgs {
    /// TCP port to listen on (all addresses).
    #[arg(long)]
    pub port: u16,
}

#[derive(Args)]
pub struct ProxyArgs {
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    pub proto: Proto,
    /// Host port to listen on (all addresses).
    #[arg(long)]
    pub host_port: u16,
    #[arg(long)]
    pub container_ip: Ipv4Addr,
    #[arg(long)]
    pub container_port: u16,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Args)]
pub struct ListenArgs {
    /// First port of the range.
    #[arg(long)]
    pub first: u16,
    /// Number of ports.
    #[arg(long)]
    pub count: u16,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LoadKind {
    Rr,
    Crr,
}

#[derive(Args)]
pub struct LoadArgs {
    #[arg(long, value_enum)]
    pub kind: LoadKind,
    /// Server address (IP:PORT).
    #[arg(long)]
    pub target: SocketAddrV4,
    /// Seconds to run.
    #[arg(long)]
    pub secs: f64,
    /// Client threads (crr).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Pace crr to this many connections per second in total (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
}

/// A pool of threads that grows when no thread is idle (an idle proxy or echo server has one
/// thread; a busy one as many as it has connections). A job is only queued after claiming an
/// idle thread, so it never waits behind a long-lived connection.
struct Pool<T: Send + 'static> {
    tx: mpsc::Sender<T>,
    rx: Arc<Mutex<mpsc::Receiver<T>>>,
    idle: Arc<AtomicUsize>,
    work: Arc<dyn Fn(T) + Send + Sync>,
}

impl<T: Send + 'static> Pool<T> {
    fn new(work: impl Fn(T) + Send + Sync + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            tx,
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::new(AtomicUsize::new(0)),
            work: Arc::new(work),
        }
    }

    fn submit(&self, job: T) {
        let claimed = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |i| i.checked_sub(1))
            .is_ok();
        if claimed {
            let _ = self.tx.send(job);
            return;
        }
        let (rx, idle, work) = (self.rx.clone(), self.idle.clone(), self.work.clone());
        thread::spawn(move || {
            work(job);
            loop {
                idle.fetch_add(1, Ordering::AcqRel);
                let job = rx.lock().map(|r| r.recv());
                match job {
                    Ok(Ok(job)) => work(job),
                    _ => return,
                }
            }
        });
    }
}

pub fn echo(args: &EchoArgs) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, args.port))
        .with_context(|| format!("binding port {}", args.port))?;
    let pool = Pool::new(|mut s: TcpStream| {
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
    loop {
        match listener.accept() {
            Ok((s, _)) => pool.submit(s),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("bench-echo: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Raises the open-files soft limit to the hard limit (thousands of listening sockets).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
        }
    }
}

pub fn listen(args: &ListenArgs) -> Result<()> {
    raise_nofile();
    let mut held = Vec::with_capacity(usize::from(args.count));
    for i in 0..args.count {
        let port = args.first + i;
        held.push(
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .with_context(|| format!("binding port {port}"))?,
        );
    }
    loop {
        thread::park();
    }
}

pub fn proxy(args: &ProxyArgs) -> Result<()> {
    let upstream = SocketAddr::from((args.container_ip, args.container_port));
    match args.proto {
        Proto::Tcp => proxy_tcp(args.host_port, upstream),
        Proto::Udp => proxy_udp(args.host_port, upstream),
    }
}

fn proxy_tcp(port: u16, upstream: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("binding port {port}"))?;
    let pool = Pool::new(move |client: TcpStream| {
        let Ok(server) = TcpStream::connect(upstream) else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        splice_both(client, server);
    });
    loop {
        match listener.accept() {
            Ok((s, _)) => pool.submit(s),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("bench-proxy: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Copy both ways between two sockets in one thread (poll), half-closing like docker-proxy:
/// EOF on one side shuts down writing on the other; done when both directions ended.
fn splice_both(mut a: TcpStream, mut b: TcpStream) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut open = [true, true]; // a->b, b->a
    while open[0] || open[1] {
        let mut fds = [
            libc::pollfd {
                fd: if open[0] { a.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if open[1] { b.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        for dir in 0..2 {
            if !open[dir] || fds[dir].revents == 0 {
                continue;
            }
            let (from, to) = if dir == 0 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    open[dir] = false;
                    let _ = to.shutdown(Shutdown::Write);
                }
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn proxy_udp(port: u16, upstream: SocketAddr) -> Result<()> {
    let listener = Arc::new(
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
            .with_context(|| format!("binding udp port {port}"))?,
    );
    let mut flows: HashMap<SocketAddr, UdpSocket> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = match listener.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => bail!("recv: {e}"),
        };
        let up = match flows.entry(from) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let up = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                up.connect(upstream)?;
                let (reader, back) = (up.try_clone()?, listener.clone());
                thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = reader.recv(&mut buf) {
                        let _ = back.send_to(&buf[..n], from);
                    }
                });
                e.insert(up)
            }
        };
        let _ = up.send(&buf[..n]);
    }
}

/// What `bench-load` prints (one JSON object).
#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    pub transactions: u64,
    pub secs: f64,
    pub errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl LoadResult {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a transaction count, exact in f64 below 2^52"
    )]
    pub fn per_sec(&self) -> f64 {
        self.transactions as f64 / self.secs.max(1e-9)
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "transactions": self.transactions,
            "secs": self.secs,
            "errors": self.errors,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
        })
    }

    pub fn from_json(s: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(s.trim()).context("bench-load output")?;
        let f = |k: &str| v[k].as_f64().with_context(|| format!("bench-load: no {k}"));
        // `to_json` writes the counters as integers.
        let count = |k: &str| v[k].as_u64().with_context(|| format!("bench-load: no {k}"));
        Ok(Self {
            transactions: count("transactions")?,
            secs: f("secs")?,
            errors: count("errors")?,
            p50_us: f("p50_us")?,
            p99_us: f("p99_us")?,
        })
    }
}

pub fn load(args: &LoadArgs) -> Result<()> {
    let dur = Duration::from_secs_f64(args.secs);
    let res = match args.kind {
        LoadKind::Rr => rr(args.target, dur)?,
        LoadKind::Crr => crr(args.target, dur, args.threads.max(1), args.rate)?,
    };
    println!("{}", res.to_json());
    Ok(())
}

#[expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a sample index: below 2^52, and p in [0, 1] keeps it in range"
)]
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn rr(target: SocketAddrV4, dur: Duration) -> Result<LoadResult> {
    let mut s = TcpStream::connect_timeout(&target.into(), Duration::from_secs(3))
        .with_context(|| format!("connecting to {target}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut b = [0u8; 1];
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        s.write_all(b"x")?;
        s.read_exact(&mut b).context("reading the echo")?;
        lat.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok(LoadResult {
        transactions: lat.len() as u64,
        secs,
        errors: 0,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
    })
}

fn one_crr(target: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    Ok(())
}

fn crr(target: SocketAddrV4, dur: Duration, threads: usize, rate: u64) -> Result<LoadResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                #[expect(
                    clippy::cast_precision_loss,
                    reason = "a thread count and a rate, exact in f64 below 2^52"
                )]
                let interval =
                    (rate > 0).then(|| Duration::from_secs_f64(threads as f64 / rate as f64));
                let (mut ok, mut err) = (0u64, 0u64);
                let mut lat: Vec<u32> = Vec::with_capacity(1 << 18);
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(iv) = interval {
                        #[expect(
                            clippy::cast_precision_loss,
                            reason = "connection counts, exact in f64 below 2^52"
                        )]
                        let due = t0 + iv.mul_f64(ok as f64 + err as f64);
                        let now = Instant::now();
                        if due > now {
                            thread::sleep(due - now);
                        }
                    }
                    let t = Instant::now();
                    match one_crr(target.into()) {
                        Ok(()) => {
                            ok += 1;
                            lat.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
                        }
                        Err(_) => err += 1,
                    }
                }
                (ok, err, lat)
            })
        })
        .collect();
    thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    let mut res = LoadResult::default();
    let mut lat = Vec::new();
    for h in handles {
        let (ok, err, l) = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        res.transactions += ok;
        res.errors += err;
        lat.extend(l);
    }
    res.secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    res.p50_us = percentile(&lat, 0.50);
    res.p99_us = percentile(&lat, 0.99);
    Ok(res)
}
