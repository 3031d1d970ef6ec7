//! Traffic helpers: servers and clients on threads that entered a namespace, so sockets live
//! in that namespace while the test process stays where it is. All I/O is bounded by timeouts.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `f` on a new thread inside the named namespace and returns its result.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

fn enter(path: &str) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd, affecting only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {path}"));
    }
    Ok(())
}

/// A server thread that stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Runs a server thread in `ns`: `setup` (bind, in the namespace) must succeed before this
/// returns; `run` then serves until the returned `Server` is dropped (it sets the flag).
fn serve_in<S: 'static>(
    ns: &str,
    setup: impl FnOnce() -> Result<S> + Send + 'static,
    run: impl FnOnce(S, Arc<AtomicBool>) + Send + 'static,
) -> Result<Server> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, path) = (stop.clone(), format!("/run/netns/{ns}"));
    let handle = std::thread::spawn(move || match enter(&path).and_then(|()| setup()) {
        Ok(sock) => {
            let _ = tx.send(Ok(()));
            run(sock, s2);
        }
        Err(e) => {
            let _ = tx.send(Err(e));
        }
    });
    rx.recv().context("server thread died")??;
    Ok(Server {
        stop,
        handle: Some(handle),
    })
}

/// TCP server in `ns` on `port`: greets each connection with `<tag> peer=<ip>:<port>\n`,
/// then echoes everything back until EOF.
pub fn tcp_echo(ns: &str, port: u16, tag: &str) -> Result<Server> {
    let tag = tag.to_string();
    serve_in(
        ns,
        move || {
            let l = TcpListener::bind(("0.0.0.0", port)).context("bind")?;
            l.set_nonblocking(true)?;
            Ok(l)
        },
        move |l, s2| {
            while !s2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, peer)) => {
                        let tag = tag.clone();
                        let s3 = s2.clone();
                        std::thread::spawn(move || {
                            let _ = c.set_nonblocking(false);
                            let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                            let _ = writeln!(c, "{tag} peer={peer}");
                            let mut buf = vec![0u8; 65536];
                            loop {
                                match c.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if c.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) =>
                                    {
                                        if s3.load(Ordering::SeqCst) {
                                            break;
                                        }
                                    }
                                    Err(_) => break,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        },
    )
}

/// UDP server in `ns` on `port`: answers each datagram with `<tag> peer=<ip>:<port> <data>`.
pub fn udp_echo(ns: &str, port: u16, tag: &str) -> Result<Server> {
    let tag = tag.to_string();
    serve_in(
        ns,
        move || {
            let s = UdpSocket::bind(("0.0.0.0", port)).context("bind")?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(s)
        },
        move |sock, s2| {
            // Whole datagrams, up to the largest UDP payload (fragmented ones included).
            let mut buf = vec![0u8; 65536];
            while !s2.load(Ordering::SeqCst) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let msg = format!("{tag} peer={peer} {}", String::from_utf8_lossy(&buf[..n]));
                    let _ = sock.send_to(msg.as_bytes(), peer);
                }
            }
        },
    )
}

/// Connects from `ns` to `ip:port`, sends `msg`, half-closes, and returns everything the
/// server sent (the greeting line plus the echo).
pub fn tcp_request(ns: &str, ip: Ipv4Addr, port: u16, msg: &str) -> Result<String> {
    tcp_request_timeout(ns, ip, port, msg, IO_TIMEOUT)
}

/// What `echo_transfer` sent and got back, and the server's greeting line.
pub struct Transfer {
    pub greeting: String,
    pub sent: Vec<u8>,
    pub got: Vec<u8>,
}

/// Starts a long echoed transfer from `ns` to the `tcp_echo` at `ip:port`: `chunks` chunks of
/// `chunk_len` bytes, `pause` apart (so it spans whatever the caller does meanwhile), then a
/// half-close; the thread returns everything sent and everything echoed back.
pub fn echo_transfer(
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
    chunks: u32,
    chunk_len: u32,
    pause: Duration,
) -> JoinHandle<Result<Transfer>> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        in_ns(&ns, move || {
            let mut c = TcpStream::connect((ip, port))?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            // A broken flow fails the transfer instead of blocking the writer forever.
            c.set_write_timeout(Some(Duration::from_secs(10)))?;
            let mut ch = [0u8; 1];
            let mut line = Vec::new();
            while c.read(&mut ch)? == 1 && ch[0] != b'\n' {
                line.push(ch[0]);
            }
            let reader = c.try_clone()?;
            let rd = std::thread::spawn(move || -> Result<Vec<u8>> {
                let mut r = reader;
                let mut all = Vec::new();
                r.read_to_end(&mut all)?;
                Ok(all)
            });
            let mut sent = Vec::new();
            for i in 0..chunks {
                let chunk: Vec<u8> = (0..chunk_len).map(|j| ((i * 7 + j) % 251) as u8).collect();
                c.write_all(&chunk)?;
                sent.extend_from_slice(&chunk);
                std::thread::sleep(pause);
            }
            c.shutdown(std::net::Shutdown::Write)?;
            let got = rd.join().unwrap()?;
            Ok(Transfer {
                greeting: String::from_utf8_lossy(&line).to_string(),
                sent,
                got,
            })
        })
    })
}

/// Sends one datagram from `ns` (from `src_port`, 0 = any) and waits for one answer;
/// retries a few times since UDP may lose the first datagram while ARP resolves.
pub fn udp_request(ns: &str, ip: Ipv4Addr, port: u16, src_port: u16, msg: &str) -> Result<String> {
    let msg = msg.to_string();
    in_ns(ns, move || {
        let s = UdpSocket::bind(("0.0.0.0", src_port)).context("bind client")?;
        udp_exchange(&s, ip, port, &msg)
    })
}

/// One request/answer on an existing socket (3 tries of 1 s).
pub fn udp_exchange(s: &UdpSocket, ip: Ipv4Addr, port: u16, msg: &str) -> Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..3 {
        s.send_to(msg.as_bytes(), (ip, port))?;
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return Ok(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    bail!("no UDP answer from {ip}:{port}")
}

/// Polls `f` until it returns Ok or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for the masquerade / policy tests.

/// Like `tcp_request`, with a caller-chosen connect timeout (short for "must not connect").
pub fn tcp_request_timeout(
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
    msg: &str,
    connect_timeout: Duration,
) -> Result<String> {
    let msg = msg.to_string();
    in_ns(ns, move || {
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
        let mut c = TcpStream::connect_timeout(&addr, connect_timeout)
            .with_context(|| format!("connect {addr}"))?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.write_all(msg.as_bytes())?;
        c.shutdown(std::net::Shutdown::Write)?;
        let mut out = String::new();
        c.read_to_string(&mut out)
            .with_context(|| format!("reading from {addr}"))?;
        Ok(out)
    })
}

/// The address in a `tcp_echo`/`udp_echo` answer (`<tag> peer=<ip>:<port> ...`).
pub fn answer_peer(answer: &str) -> Result<SocketAddrV4> {
    let p = answer
        .split("peer=")
        .nth(1)
        .with_context(|| format!("no peer in {answer:?}"))?;
    let p = p.split_whitespace().next().unwrap_or_default();
    p.parse()
        .with_context(|| format!("bad peer {p:?} in {answer:?}"))
}

/// What a recorder saw: (source address, payload) per packet.
pub type Seen = Arc<std::sync::Mutex<Vec<(SocketAddrV4, Vec<u8>)>>>;

/// A server thread plus what it recorded.
pub struct Recorder {
    pub seen: Seen,
    _server: Server,
}

impl Recorder {
    pub fn snapshot(&self) -> Vec<(SocketAddrV4, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }
}

/// UDP sink in `ns` on `port`: records every datagram (source, payload), answers nothing.
pub fn udp_sink(ns: &str, port: u16) -> Result<Recorder> {
    let seen = Seen::default();
    let seen2 = seen.clone();
    Ok(Recorder {
        seen,
        _server: serve_in(
            ns,
            move || {
                let s = UdpSocket::bind(("0.0.0.0", port)).context("bind")?;
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(s)
            },
            move |sock, s2| {
                let mut buf = vec![0u8; 65536];
                while !s2.load(Ordering::SeqCst) {
                    if let Ok((n, SocketAddr::V4(peer))) = sock.recv_from(&mut buf) {
                        seen2.lock().unwrap().push((peer, buf[..n].to_vec()));
                    }
                }
            },
        )?,
    })
}

/// Raw ICMP listener in `ns`: records the source address and the ICMP header+payload of every
/// ICMP packet the namespace receives (the kernel still answers echo requests itself).
/// The recorded port is the echo identifier for echo messages, 0 otherwise.
pub fn icmp_sink(ns: &str) -> Result<Recorder> {
    let seen = Seen::default();
    let seen2 = seen.clone();
    Ok(Recorder {
        seen,
        _server: serve_in(
            ns,
            move || {
                // SAFETY: plain socket(2) call; the fd is owned below.
                let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error()).context("raw ICMP socket");
                }
                // SAFETY: fd is a fresh socket we own.
                let fd =
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 50_000,
                };
                // SAFETY: valid socket and option buffer.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        (&raw const tv).cast::<libc::c_void>(),
                        libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>())
                            .unwrap_or(0),
                    )
                };
                Ok(fd)
            },
            move |fd, s2| {
                let mut buf = [0u8; 2048];
                while !s2.load(Ordering::SeqCst) {
                    // SAFETY: reading into a buffer we own.
                    let n = unsafe {
                        libc::recv(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast::<libc::c_void>(),
                            buf.len(),
                            0,
                        )
                    };
                    if n < 20 {
                        continue;
                    }
                    let pkt = &buf[..n.cast_unsigned()];
                    let ihl = usize::from(pkt[0] & 0x0f) * 4;
                    if pkt.len() < ihl + 8 {
                        continue;
                    }
                    let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
                    let icmp = &pkt[ihl..];
                    let id = if icmp[0] == 8 || icmp[0] == 0 {
                        u16::from_be_bytes([icmp[4], icmp[5]])
                    } else {
                        0
                    };
                    seen2
                        .lock()
                        .unwrap()
                        .push((SocketAddrV4::new(src, id), icmp.to_vec()));
                }
            },
        )?,
    })
}

/// `ping -c1 -W2` from `ns` (iputils); true when an answer came back.
pub fn ping(ns: &str, ip: Ipv4Addr) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-c1", "-W2"])
        .arg(ip.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends `count` datagrams from `ns`, from a socket bound to `src` (port 0 = any), to `dst`.
pub fn udp_send_from(
    ns: &str,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    msg: &str,
    count: usize,
) -> Result<()> {
    let msg = msg.to_string();
    in_ns(ns, move || {
        let s = UdpSocket::bind(src).with_context(|| format!("bind {src}"))?;
        for _ in 0..count {
            s.send_to(msg.as_bytes(), dst)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
}

/// Raises this process's `RLIMIT_NOFILE` soft limit to `want` (capped at the hard limit);
/// returns the limit in force.
pub fn raise_nofile(want: u64) -> Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit");
    }
    let target = want.min(r.rlim_max);
    if r.rlim_cur < target {
        r.rlim_cur = target;
        // SAFETY: valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const r) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit");
        }
    }
    Ok(target.max(r.rlim_cur))
}

/// A TCP echo server for many concurrent connections: one thread, `poll(2)` over every
/// connection, no greeting; records each accepted peer address.
pub fn tcp_mass_echo(ns: &str, port: u16) -> Result<Recorder> {
    let seen = Seen::default();
    let seen2 = seen.clone();
    Ok(Recorder {
        seen,
        _server: serve_in(
            ns,
            move || {
                let l = TcpListener::bind(("0.0.0.0", port)).context("bind")?;
                l.set_nonblocking(true)?;
                Ok(l)
            },
            move |l, s2| {
                let mut conns: Vec<TcpStream> = Vec::new();
                let mut buf = [0u8; 4096];
                while !s2.load(Ordering::SeqCst) {
                    let mut fds: Vec<libc::pollfd> = std::iter::once(l.as_raw_fd())
                        .chain(conns.iter().map(AsRawFd::as_raw_fd))
                        .map(|fd| libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        })
                        .collect();
                    // SAFETY: fds is a valid array of pollfd.
                    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
                    if n <= 0 {
                        continue;
                    }
                    let mut closed = Vec::new();
                    for (i, p) in fds.iter().enumerate().skip(1) {
                        if p.revents == 0 {
                            continue;
                        }
                        let c = &mut conns[i - 1];
                        match c.read(&mut buf) {
                            Ok(0) => closed.push(i - 1),
                            Ok(k) => {
                                let _ = c.set_nonblocking(false);
                                if c.write_all(&buf[..k]).is_err() {
                                    closed.push(i - 1);
                                }
                                let _ = c.set_nonblocking(true);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => closed.push(i - 1),
                        }
                    }
                    for i in closed.into_iter().rev() {
                        conns.swap_remove(i);
                    }
                    if fds[0].revents != 0 {
                        while let Ok((c, peer)) = l.accept() {
                            let _ = c.set_nonblocking(true);
                            if let SocketAddr::V4(p) = peer {
                                seen2.lock().unwrap().push((p, Vec::new()));
                            }
                            conns.push(c);
                        }
                    }
                }
            },
        )?,
    })
}

/// `GET /metrics` from a daemon's `--metrics` listener on 127.0.0.1:`port` of namespace `ns`:
/// the whole answer, head and body.
pub fn scrape_metrics(ns: &str, port: u16) -> String {
    in_ns(ns, move || {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut s = eventually(Duration::from_secs(5), || {
            Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?)
        })?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .expect("fetching /metrics")
}

/// Sends the Ethernet `frame` out of interface `ifname` of `ns` (a packet socket, nothing of
/// the namespace's stack), built so that only its Ethernet header is in the skb's linear data
/// and the rest in page fragments, as some NICs and drivers hand packets over: the socket's
/// virtio-net header asks for no more than that to be linear (`PACKET_VNET_HDR`, header
/// length 0), and the kernel honours it for frames of a page or more (`packet_alloc_skb`).
pub fn send_paged_frame(ns: &str, ifname: &str, frame: Vec<u8>) -> Result<()> {
    /// `struct virtio_net_hdr`: no checksum offload, no GSO, header length 0.
    const VNET_HDR: [u8; 10] = [0; 10];
    anyhow::ensure!(frame.len() >= 4096, "a frame under a page is sent linear");
    let ifname = ifname.to_string();
    in_ns(ns, move || {
        let ifindex = ifindex_of(&ifname)?;
        // SAFETY: plain socket call; the fd is owned right after.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("packet socket");
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let on: libc::c_int = 1;
        // SAFETY: an int option of the size given, on our socket.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                (&raw const on).cast(),
                libc::socklen_t::try_from(size_of::<libc::c_int>())?,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("PACKET_VNET_HDR");
        }
        // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = u16::try_from(libc::AF_PACKET)?;
        to.sll_protocol = u16::from_be_bytes([frame[12], frame[13]]).to_be();
        to.sll_ifindex = ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        let mut buf = VNET_HDR.to_vec();
        buf.extend_from_slice(&frame);
        // SAFETY: `buf` and `to` are live for the call, with the lengths given.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&raw const to).cast(),
                libc::socklen_t::try_from(size_of::<libc::sockaddr_ll>())?,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("sending the frame");
        }
        Ok(())
    })
}

/// The index of interface `ifname` in this thread's namespace.
fn ifindex_of(ifname: &str) -> Result<i32> {
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: a NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(idx != 0, "no interface {ifname}");
    Ok(i32::try_from(idx)?)
}
