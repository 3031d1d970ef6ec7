//! Which ports node processes already hold, from /proc/net/{tcp,udp} of the daemon's
//! namespace (a port map over them would silently steal or lose their traffic).

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use crate::ports::Proto;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// Parses /proc/net/tcp or /proc/net/udp text; TCP keeps LISTEN sockets only, UDP every bound
/// socket.
pub fn parse(text: &str, proto: Proto) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, state) = (f.get(1)?, f.get(3)?);
            if proto == Proto::Tcp && *state != "0A" {
                return None;
            }
            let (ip, port) = local.split_once(':')?;
            // The address is the kernel's __be32 printed as a host-order integer.
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(Listener { ip, port })
        })
        .collect()
}

pub fn current(proto: Proto) -> Result<Vec<Listener>> {
    let path = match proto {
        Proto::Tcp => "/proc/net/tcp",
        Proto::Udp => "/proc/net/udp",
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    Ok(parse(&text, proto))
}

/// Whether a listener conflicts with a map on `host_ip` (None = every local address).
pub fn conflicts(l: &Listener, host_ip: Option<Ipv4Addr>, port: u16) -> bool {
    l.port == port && (l.ip.is_unspecified() || host_ip.is_none() || Some(l.ip) == host_ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:A000 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_listeners() {
        let l = parse(TCP, Proto::Tcp);
        assert_eq!(
            l,
            vec![
                Listener {
                    ip: Ipv4Addr::UNSPECIFIED,
                    port: 8080
                },
                Listener {
                    ip: Ipv4Addr::LOCALHOST,
                    port: 80
                },
            ]
        );
        // UDP counts every bound socket whatever its state.
        assert_eq!(parse(TCP, Proto::Udp).len(), 3);
    }

    #[test]
    fn conflict_rules() {
        let any = Listener {
            ip: Ipv4Addr::UNSPECIFIED,
            port: 80,
        };
        let lo = Listener {
            ip: Ipv4Addr::LOCALHOST,
            port: 80,
        };
        let other = Some(Ipv4Addr::new(10, 0, 0, 1));
        assert!(conflicts(&any, other, 80));
        assert!(conflicts(&lo, None, 80));
        assert!(!conflicts(&lo, other, 80));
        assert!(!conflicts(&any, None, 81));
    }
}
