//! Whether a node process already holds a port (a port map over it would silently steal or
//! lose its traffic). Asked of the kernel directly by trying to bind the port in the daemon's
//! namespace: exact for every address and far cheaper than reading /proc/net/{tcp,udp},
//! whose cost grows with every socket of every namespace on the machine.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsRawFd,
};

use crate::model::Proto;

/// True when `ip:port` (every address when None) cannot be bound for `proto` because a socket
/// holds it: a TCP listener (`SO_REUSEADDR`, as servers use, so `TIME_WAIT` leftovers do not
/// count) or any bound UDP socket. A host IP that is not the node's cannot be held by a node
/// process, so it is reported free.
pub fn held(ip: Option<Ipv4Addr>, port: u16, proto: Proto) -> bool {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let ty = match proto {
        Proto::Tcp => SockType::Stream,
        Proto::Udp => SockType::Datagram,
    };
    let Ok(fd) = socket(AddressFamily::Inet, ty, SockFlag::SOCK_CLOEXEC, None) else {
        return false;
    };
    if proto == Proto::Tcp {
        let _ = setsockopt(&fd, sockopt::ReuseAddr, &true);
    }
    let addr = SockaddrIn::from(SocketAddrV4::new(ip.unwrap_or(Ipv4Addr::UNSPECIFIED), port));
    matches!(
        bind(fd.as_raw_fd(), &addr),
        Err(nix::errno::Errno::EADDRINUSE)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_holds_its_port_and_a_closed_one_does_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(
            held(None, port, Proto::Tcp),
            "wildcard overlaps the loopback listener"
        );
        assert!(held(Some(Ipv4Addr::LOCALHOST), port, Proto::Tcp));
        let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let uport = u.local_addr().unwrap().port();
        assert!(held(None, uport, Proto::Udp));
        drop((l, u));
        assert!(!held(None, port, Proto::Tcp));
        assert!(!held(None, uport, Proto::Udp));
        // Not a node address: nothing can hold it.
        assert!(!held(Some(Ipv4Addr::new(192, 0, 2, 1)), port, Proto::Tcp));
    }
}
