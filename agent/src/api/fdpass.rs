//! Open file descriptors sent along an API request on the unix socket (`SCM_RIGHTS`). The CNI
//! plugin hands the daemon the container's network namespace this way: the runtime may have
//! made `CNI_NETNS` in a mount namespace the daemon cannot see, but an fd works anywhere.
//!
//! `FdStream` wraps a connection on both ends. A client stream attaches its fd to the first
//! bytes it writes (the request line); a server stream receives with `recvmsg` throughout and
//! keeps whatever fds arrive in a `Received` slot that the request handler takes them from.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::UnixStream,
};

/// At most this many fds are kept per connection (a request needs one).
pub const MAX_FDS: usize = 4;

/// What the server knows of a connection: the fds it has received so far, and the pid of
/// the process that connected (`SO_PEERCRED`, in the daemon's pid namespace).
#[derive(Clone, Debug, Default)]
pub struct Received {
    fds: Arc<Mutex<Vec<OwnedFd>>>,
    pub peer_pid: Option<u32>,
}

impl Received {
    pub fn for_peer(peer_pid: Option<u32>) -> Self {
        Self {
            fds: Arc::default(),
            peer_pid,
        }
    }

    /// The first fd received and not yet taken.
    pub fn take(&self) -> Option<OwnedFd> {
        let mut v = self
            .fds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (!v.is_empty()).then(|| v.remove(0))
    }

    fn keep(&self, fds: Vec<OwnedFd>) {
        let mut v = self
            .fds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for fd in fds {
            // Extra fds are closed (dropped) rather than piling up.
            if v.len() < MAX_FDS {
                v.push(fd);
            }
        }
    }
}

pub struct FdStream {
    inner: UnixStream,
    /// Client side: the fd to attach to the first write.
    send: Option<OwnedFd>,
    /// Server side: where received fds go.
    received: Option<Received>,
}

impl FdStream {
    /// A client connection that sends `fd` (if any) with its first bytes.
    pub fn client(inner: UnixStream, fd: Option<OwnedFd>) -> Self {
        Self {
            inner,
            send: fd,
            received: None,
        }
    }

    /// Writes what the socket takes right now, without waiting (an answer the server writes
    /// beside its HTTP connection: see `server::conn`).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.inner.try_write(buf)
    }

    /// A server connection that collects the fds it receives into `received`.
    pub fn server(inner: UnixStream, received: Received) -> Self {
        Self {
            inner,
            send: None,
            received: Some(received),
        }
    }
}

fn recv_with_fds(fd: RawFd, dst: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(dst)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these fds in our table for us; nothing else owns them.
            fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    Ok((msg.bytes, fds))
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(received) = this.received.clone() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let raw = this.inner.as_raw_fd();
            let dst = buf.initialize_unfilled();
            match this
                .inner
                .try_io(Interest::READABLE, || recv_with_fds(raw, dst))
            {
                Ok((n, fds)) => {
                    received.keep(fds);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(fd) = this.send.as_ref().map(AsRawFd::as_raw_fd) else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        loop {
            ready!(this.inner.poll_write_ready(cx))?;
            let raw = this.inner.as_raw_fd();
            let sent = this.inner.try_io(Interest::WRITABLE, || {
                sendmsg::<()>(
                    raw,
                    &[IoSlice::new(buf)],
                    &[ControlMessage::ScmRights(&[fd])],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Ok(n) => {
                    // The kernel holds its own reference now; ours can go.
                    this.send = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn an_fd_travels_with_the_first_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/proc/self/ns/net").unwrap();
        let mut client = FdStream::client(a, Some(file.as_fd().try_clone_to_owned().unwrap()));
        let received = Received::default();
        let mut server = FdStream::server(b, received.clone());
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        client.write_all(b"\r\n").await.unwrap();
        drop(client);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
        let fd = received.take().expect("an fd arrived");
        let meta = |f: &dyn AsFd| nix::sys::stat::fstat(f.as_fd().as_raw_fd()).unwrap();
        // The same namespace: same device and inode.
        let (x, y) = (meta(&fd), meta(&file));
        assert_eq!((x.st_dev, x.st_ino), (y.st_dev, y.st_ino));
        assert!(received.take().is_none());
    }
}
