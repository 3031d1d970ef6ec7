//! Conntrack/NAT table. A translated flow owns two entries: one keyed by the tuple as it
//! arrives (original direction) and one keyed by the tuple of its replies as the container
//! sends them (reply direction). Each says how to rewrite the packet, so both directions are
//! one hash lookup.

/// Key of `TG_CT`: a packet's tuple as seen by the hook, before any rewrite. Network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// ICMP echo: `KEY_ECHO_REQUEST` in the key of the request direction (a flow's original
    /// half), 0 in the reply direction's; always 0 for other protocols. (This byte was
    /// padding, always 0: the keys of TCP and UDP flows did not change.)
    pub echo: u8,
    pub _pad: [u8; 2],
}

/// `CtKey.echo` of an ICMP echo request's key.
pub const KEY_ECHO_REQUEST: u8 = 1;

/// `CtEntry.flags` bits.
/// Destination is rewritten to `nat_daddr:nat_dport` (original direction of a port map).
pub const CT_DNAT: u32 = 1;
/// Source is rewritten to `nat_saddr:nat_sport`.
pub const CT_SNAT: u32 = 2;
/// This entry is the reply-direction half of a flow.
pub const CT_REPLY: u32 = 4;
/// The flow entered through a container's veth (hairpin).
pub const CT_HAIRPIN: u32 = 8;
/// A FIN or RST was seen (TCP); the entry may be retired early.
pub const CT_CLOSING: u32 = 16;
/// The flow is masqueraded (container -> outside through the uplink): the original half
/// SNATs to `Config.snat_ip`, the reply half DNATs back to the container.
pub const CT_MASQ: u32 = 32;
/// A packet was seen in the reply direction (TCP: the handshake completed).
pub const CT_SEEN_REPLY: u32 = 64;

/// Each `CT_*` bit with the name the agent shows for it (`conntrack list`).
pub const FLAG_NAMES: [(u32, &str); 7] = [
    (CT_DNAT, "dnat"),
    (CT_SNAT, "snat"),
    (CT_REPLY, "reply"),
    (CT_HAIRPIN, "hairpin"),
    (CT_CLOSING, "closing"),
    (CT_MASQ, "masq"),
    (CT_SEEN_REPLY, "seen_reply"),
];

/// Which idle timeout (`Config.ct_*_s`) applies to an entry: the datapath treats an entry idle
/// for longer as absent, and the agent's GC removes it by the same rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// TCP after a FIN or RST (`CT_CLOSING`).
    TcpClose,
    /// TCP not yet answered (`CT_SEEN_REPLY` unset).
    TcpSyn,
    TcpEstablished,
    Udp,
    /// ICMP echo.
    Icmp,
}

impl Timeout {
    /// The timeout of an entry with `flags` in a flow of protocol `proto`.
    #[inline(always)]
    pub const fn of(flags: u32, proto: u8) -> Self {
        match proto {
            crate::proto::TCP if flags & CT_CLOSING != 0 => Timeout::TcpClose,
            crate::proto::TCP if flags & CT_SEEN_REPLY == 0 => Timeout::TcpSyn,
            crate::proto::TCP => Timeout::TcpEstablished,
            crate::proto::UDP => Timeout::Udp,
            _ => Timeout::Icmp,
        }
    }
}

// ICMP echo flows carry the echo identifier in the port of the end that sent the request: a
// request is keyed `sport = id, dport = 0`, a reply `sport = 0, dport = id`, so the two halves
// swap like TCP/UDP ones and a ping each way between two addresses with the same identifier
// are two flows. Identifier 0 would make a request and a reply between the same two
// addresses the same tuple (both ports 0): `CtKey.echo` tells them apart, as the ICMP type in
// Linux's conntrack tuple does. Masquerade rewrites the identifier (`nat_sport` on the
// original half, `nat_dport` on the reply half).
// Plain tracked flows (no translation, e.g. container -> container) have neither CT_DNAT nor
// CT_SNAT: the reply half only lets replies through with ICC off.

/// Value of `TG_CT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// New source address/port (valid with `CT_SNAT`), network order.
    pub nat_saddr: u32,
    /// New destination address/port (valid with `CT_DNAT`), network order.
    pub nat_daddr: u32,
    pub nat_sport: u16,
    pub nat_dport: u16,
    /// `CT_*` bits.
    pub flags: u32,
    /// Where to send the rewritten packet without the stack (0: let the stack route it).
    pub redirect_ifindex: u32,
    /// Owning container id (for `container del` and stats).
    pub endpoint_id: u32,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Next hop of this direction's packets as the FIB last gave it (the hook's redirect
    /// target): MAC block (destination, then source), the egress ifindex, and when it was
    /// looked up (`last_seen_ns`'s clock; 0: never). Reused for `FIB_CACHE_NS`, so an
    /// established flow's packets skip the FIB lookup. Fields are only ever appended to
    /// `CtEntry`: the agent migrates a pinned table of an older, shorter layout by
    /// zero-extending its values (an all-zero cache is simply stale).
    pub fib_macs: [u8; 12],
    pub fib_ifindex: u32,
    pub fib_checked_ns: u64,
}

/// How long a FIB answer cached in a flow's entry (`CtEntry.fib_*`) is reused: the time a
/// changed route or neighbour takes to be followed by established flows.
pub const FIB_CACHE_NS: u64 = 1_000_000_000;

crate::impl_pod!(CtKey, CtEntry);

#[cfg(test)]
mod tests {
    #[test]
    fn timeouts_follow_the_tcp_state() {
        use super::{Timeout, CT_CLOSING, CT_REPLY, CT_SEEN_REPLY};
        use crate::proto::{ICMP, TCP, UDP};
        assert_eq!(Timeout::of(0, TCP), Timeout::TcpSyn);
        assert_eq!(Timeout::of(CT_REPLY, TCP), Timeout::TcpSyn);
        assert_eq!(Timeout::of(CT_SEEN_REPLY, TCP), Timeout::TcpEstablished);
        assert_eq!(
            Timeout::of(CT_SEEN_REPLY | CT_CLOSING, TCP),
            Timeout::TcpClose
        );
        assert_eq!(Timeout::of(CT_CLOSING, UDP), Timeout::Udp);
        assert_eq!(Timeout::of(0, ICMP), Timeout::Icmp);
    }

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<super::CtKey>(), 16);
        assert_eq!(core::mem::size_of::<super::CtEntry>(), 80);
        assert_eq!(core::mem::align_of::<super::CtEntry>(), 8);
    }
}
