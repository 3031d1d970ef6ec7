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

/// TCP server in `ns` on `port`: greets each connection with `<tag> peer=<ip>:<port>\n`,
/// then echoes everything back until EOF.
pub fn tcp_echo(ns: &str, port: u16, tag: &str) -> Result<Server> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, path, tag) = (stop.clone(), format!("/run/netns/{ns}"), tag.to_string());
    let handle = std::thread::spawn(move || {
        let l = match enter(&path).and_then(|_| {
            let l = TcpListener::bind(("0.0.0.0", port)).context("bind")?;
            l.set_nonblocking(true)?;
            Ok(l)
        }) {
            Ok(l) => {
                let _ = tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
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
    });
    rx.recv().context("server thread died")??;
    Ok(Server {
        stop,
        handle: Some(handle),
    })
}

/// UDP server in `ns` on `port`: answers each datagram with `<tag> peer=<ip>:<port> <data>`.
pub fn udp_echo(ns: &str, port: u16, tag: &str) -> Result<Server> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, path, tag) = (stop.clone(), format!("/run/netns/{ns}"), tag.to_string());
    let handle = std::thread::spawn(move || {
        let sock = match enter(&path).and_then(|_| {
            let s = UdpSocket::bind(("0.0.0.0", port)).context("bind")?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(s)
        }) {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let mut buf = [0u8; 2048];
        while !s2.load(Ordering::SeqCst) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let msg = format!("{tag} peer={peer} {}", String::from_utf8_lossy(&buf[..n]));
                let _ = sock.send_to(msg.as_bytes(), peer);
            }
        }
    });
    rx.recv().context("server thread died")??;
    Ok(Server {
        stop,
        handle: Some(handle),
    })
}

/// Connects from `ns` to `ip:port`, sends `msg`, half-closes, and returns everything the
/// server sent (the greeting line plus the echo).
pub fn tcp_request(ns: &str, ip: Ipv4Addr, port: u16, msg: &str) -> Result<String> {
    let msg = msg.to_string();
    in_ns(ns, move || {
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
        let mut c = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
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
    let mut buf = [0u8; 2048];
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
