//! Conntrack/NAT entries in `TG_CT`. A translated flow owns two entries, one per direction,
//! each keyed by the tuple as its packets arrive and saying how to rewrite them; either half
//! can be rebuilt from the other (`reverse`), so a flow survives losing one half to LRU
//! eviction, and a missing original half is recreated from `TG_PORTMAP` by the hooks.
//!
//! Expiry: an entry idle for longer than its timeout (`Config.ct_*_s`, by protocol and TCP
//! state) is treated as absent by `lookup_live` and overwritten when its tuple is used again;
//! deleting it is the agent's GC's job, never the datapath's. Both halves of a flow share one
//! idle clock (`touch` refreshes both, at most a sixteenth of the timeout apart: `needs_sync`),
//! so neither half expires while the other is in use.
//!
//! Every half this module creates (not overwrites) is counted in `CNT_CT_CREATED`; with the
//! agent's `CNT_CT_REMOVED` and the current size that gives the LRU evictions.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
};
use datapath_common::{
    config::Config,
    conntrack::{
        CtEntry, CtKey, Timeout, CT_CLOSING, CT_DNAT, CT_HAIRPIN, CT_MASQ, CT_REPLY, CT_SEEN_REPLY,
        CT_SNAT, KEY_ECHO_REQUEST,
    },
    drop::DropReason,
    proto,
    stats::CNT_CT_CREATED,
};

use crate::{
    config,
    maps::{TG_CT, TG_CT_SCRATCH},
    mem,
    packet::{Packet, ICMP_ECHO, ICMP_ECHO_REPLY, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    verdict,
};

/// A conntrack key (padding zeroed without a `memset`: see `mem`). `echo_request`: the key
/// of an ICMP echo flow's request direction (`CtKey.echo`; ignored for other protocols).
#[inline(always)]
pub fn make_key(
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    echo_request: bool,
) -> CtKey {
    let mut k: CtKey = mem::zeroed();
    k.saddr = saddr;
    k.daddr = daddr;
    k.sport = sport;
    k.dport = dport;
    k.proto = proto;
    if proto == proto::ICMP && echo_request {
        k.echo = KEY_ECHO_REQUEST;
    }
    k
}

/// Scratch slot (`TG_CT_SCRATCH`) of the half a new flow's packet hits.
pub const HALF: u32 = 0;
/// Scratch slot of the other half (`reverse`).
pub const REVERSE: u32 = 1;

/// A new entry of a flow owned by container `endpoint_id`, created at `now` (no translation,
/// no counts, no cached next hop), built in this CPU's scratch `slot` and valid until that
/// slot is built again in this program run. Word-wise volatile zeroing: plain zero stores
/// would be merged back into a `memset` call.
#[inline(always)]
pub fn new_entry(
    slot: u32,
    flags: u32,
    endpoint_id: u32,
    now: u64,
) -> Result<*mut CtEntry, DropReason> {
    let e = TG_CT_SCRATCH
        .get_ptr_mut(slot)
        .ok_or(DropReason::ConntrackFailed)?;
    let words = e.cast::<u64>();
    let mut i = 0;
    while i < size_of::<CtEntry>() / 8 {
        // SAFETY: `e` is this CPU's slot of a preallocated array element, 8-aligned, and
        // `i` words of 8 bytes lie inside it (`CtEntry` is a multiple of 8 bytes).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // SAFETY: as above; plain field writes.
    unsafe {
        (*e).flags = flags;
        (*e).endpoint_id = endpoint_id;
        (*e).created_ns = now;
        (*e).last_seen_ns = now;
    }
    Ok(e)
}

/// The conntrack key of the packet as it is now (its tuple, both ends as `Packet` keys them,
/// and for ICMP echo which way it goes).
#[inline(always)]
pub fn key_of(pkt: &Packet) -> CtKey {
    make_key(
        pkt.saddr,
        pkt.daddr,
        pkt.sport,
        pkt.dport,
        pkt.proto,
        pkt.icmp_type == ICMP_ECHO,
    )
}

/// Whether a packet that does not open a flow (`Packet::opens_flow`) and has no live entry
/// starts tracking one anyway: a mid-stream TCP segment with ACK and without SYN, FIN or RST,
/// which Linux's conntrack picks up by default (`nf_conntrack_tcp_loose`), e.g. the next
/// segment of a connection whose entries expired while it was idle. (A SYN-ACK, FIN or RST
/// without an entry is INVALID to Linux: no new flow.)
#[inline(always)]
pub fn picks_up(pkt: &Packet) -> bool {
    pkt.proto == proto::TCP && pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK) == TCP_ACK
}

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<*mut CtEntry> {
    TG_CT.get_ptr_mut(key)
}

/// Idle timeout of entry `e` of a `proto` flow, in nanoseconds.
#[inline(always)]
fn timeout_ns(flags: u32, proto: u8, cfg: &Config) -> u64 {
    let s = match Timeout::of(flags, proto) {
        Timeout::TcpClose => config::tcp_close_s(cfg),
        Timeout::TcpSyn => config::tcp_syn_s(cfg),
        Timeout::TcpEstablished => config::tcp_est_s(cfg),
        Timeout::Udp => config::udp_s(cfg),
        Timeout::Icmp => config::icmp_s(cfg),
    };
    u64::from(s) * 1_000_000_000
}

/// Whether `e` has been idle for longer than its timeout.
#[inline(always)]
pub fn expired(e: *mut CtEntry, proto: u8, cfg: &Config, now: u64) -> bool {
    // SAFETY: `e` came from a lookup in this program run; plain reads.
    let (flags, last) = unsafe { ((*e).flags, (*e).last_seen_ns) };
    now.saturating_sub(last) > timeout_ns(flags, proto, cfg)
}

/// The entry of `key`, unless it expired (an expired entry is as good as absent).
#[inline(always)]
pub fn lookup_live(key: &CtKey, cfg: &Config, now: u64) -> Option<*mut CtEntry> {
    let e = lookup(key)?;
    if expired(e, key.proto, cfg, now) {
        None
    } else {
        Some(e)
    }
}

/// The kind of flow an entry belongs to (the same for both halves).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// To a published port from outside or from the node: DNAT to the container.
    PortMap,
    /// From a container to a published port: DNAT, plus SNAT to its gateway when it calls
    /// itself.
    Hairpin,
    /// From a container to the outside through the uplink: SNAT to the node's address.
    Masq,
    /// Tracked untranslated (routed to a container's IP, container to container or node).
    Plain,
}

/// Which of its flow's two halves an entry is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// Keyed by the tuple of the packets that opened the flow.
    Original,
    /// Keyed by the tuple of the answers.
    Reply,
}

/// A live entry and what it means.
#[derive(Clone, Copy)]
pub struct Flow {
    pub entry: *mut CtEntry,
    pub kind: Kind,
    pub half: Half,
}

impl Flow {
    /// What entry `e` (from a lookup in this program run) means.
    #[inline(always)]
    pub fn of(e: *mut CtEntry) -> Self {
        let f = flags(e);
        let half = if f & CT_REPLY != 0 {
            Half::Reply
        } else {
            Half::Original
        };
        // The rewrite bits swap between the halves (a DNAT's reply half SNATs back), so the
        // kind is told by the bits both halves carry first.
        let kind = if f & CT_HAIRPIN != 0 {
            Kind::Hairpin
        } else if f & CT_MASQ != 0 {
            Kind::Masq
        } else if f & (CT_DNAT | CT_SNAT) != 0 {
            Kind::PortMap
        } else {
            Kind::Plain
        };
        Self {
            entry: e,
            kind,
            half,
        }
    }

    /// The container that owns the flow.
    #[inline(always)]
    pub fn owner(&self) -> u32 {
        // SAFETY: `entry` came from a lookup in this program run.
        unsafe { (*self.entry).endpoint_id }
    }
}

/// What conntrack knows of a packet's tuple.
pub enum Ct {
    /// No live entry: the packet is new (or answers something the datapath never saw open).
    New,
    /// A live entry for the packet's direction.
    Hit(Flow),
    /// A live entry of a closing TCP connection hit by a fresh SYN: the tuple is being reused
    /// by a new connection, which is judged and translated afresh (the mapping may have
    /// changed since).
    Reused(Flow),
    /// A live entry facing the other way: an ICMP echo reply with identifier 0 hitting the
    /// original half of a ping in the other direction, keyed before keys were marked
    /// (`same_direction`); gone once such entries are (30 s after an upgrade at most).
    Crossed(Flow),
}

/// Looks up the packet's tuple (`key`, from `key_of`) and says what its live entry means.
#[inline(always)]
pub fn classify(key: &CtKey, pkt: &Packet, cfg: &Config, now: u64) -> Ct {
    let Some(e) = lookup_live(key, cfg, now) else {
        return Ct::New;
    };
    let flow = Flow::of(e);
    if !same_direction(e, pkt) {
        Ct::Crossed(flow)
    } else if reused(e, pkt) {
        Ct::Reused(flow)
    } else {
        Ct::Hit(flow)
    }
}

/// Writes `e` at `key` (over whatever is there), counting it when the key was free. Tried
/// with `BPF_NOEXIST` first: for a new flow (the usual case) that is one map operation, and
/// its failure tells an occupied key without a lookup.
#[inline(always)]
fn put(key: &CtKey, e: &CtEntry) -> Result<(), DropReason> {
    if TG_CT.insert(key, e, u64::from(BPF_NOEXIST)).is_ok() {
        verdict::count(CNT_CT_CREATED);
        return Ok(());
    }
    TG_CT
        .insert(key, e, u64::from(BPF_ANY))
        .map_err(|_| DropReason::ConntrackFailed)
}

/// Takes `key` for `e` if no live entry holds it: the collision-free step of port allocation.
/// `BPF_NOEXIST` makes two CPUs racing for the same free key agree on one winner; an expired
/// holder is overwritten (that last step is not atomic, but the holder was idle for a whole
/// timeout).
#[inline(always)]
pub fn claim(key: &CtKey, e: &CtEntry, cfg: &Config, now: u64) -> bool {
    if TG_CT.insert(key, e, u64::from(BPF_NOEXIST)).is_ok() {
        verdict::count(CNT_CT_CREATED);
        return true;
    }
    match lookup(key) {
        Some(old) if expired(old, key.proto, cfg, now) => {
            TG_CT.insert(key, e, u64::from(BPF_ANY)).is_ok()
        }
        _ => false,
    }
}

/// Timestamps use `bpf_ktime_get_coarse_ns`, i.e. CLOCK_MONOTONIC_COARSE: the agent compares
/// them with `clock_gettime(CLOCK_MONOTONIC)`, which runs at most a tick ahead; idle timeouts
/// are seconds. The coarse clock is read without touching the TSC, which is much cheaper per
/// packet in a VM.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments or side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The other half of a flow. Its key is the tuple after `e` rewrote the packet, reversed; it
/// undoes `e`: a source rewrite becomes a destination rewrite back to the old source and vice
/// versa. Flags other than `CT_REPLY` (which flips) carry over, counters restart.
#[inline(always)]
pub fn reverse(key: &CtKey, e: &CtEntry) -> Result<(CtKey, *mut CtEntry), DropReason> {
    let (new_saddr, new_sport) = if e.flags & CT_SNAT != 0 {
        (e.nat_saddr, e.nat_sport)
    } else {
        (key.saddr, key.sport)
    };
    let (new_daddr, new_dport) = if e.flags & CT_DNAT != 0 {
        (e.nat_daddr, e.nat_dport)
    } else {
        (key.daddr, key.dport)
    };
    // ICMP echo keys like TCP/UDP: the requester's end carries the identifier, the other end
    // 0 (`Packet`), so swapping the ends is the reply direction's key too; the request
    // direction's is marked (`CtKey.echo`), and the other half of a reply half is it.
    let rkey = make_key(
        new_daddr,
        new_saddr,
        new_dport,
        new_sport,
        key.proto,
        e.flags & CT_REPLY != 0,
    );
    let mut flags = (e.flags & !(CT_SNAT | CT_DNAT)) ^ CT_REPLY;
    let (redirect_ifindex, last_seen_ns) = (e.redirect_ifindex, e.last_seen_ns);
    let (nat_saddr, nat_sport) = (key.daddr, key.dport);
    let (nat_daddr, nat_dport) = (key.saddr, key.sport);
    let dnat = e.flags & CT_DNAT != 0;
    let snat = e.flags & CT_SNAT != 0;
    let r = new_entry(REVERSE, 0, e.endpoint_id, e.created_ns)?;
    // SAFETY: `r` is this CPU's scratch slot (`new_entry`); `e` was read above, so it may
    // be any entry, the other scratch slot included.
    unsafe {
        (*r).redirect_ifindex = redirect_ifindex;
        (*r).last_seen_ns = last_seen_ns;
        if dnat {
            flags |= CT_SNAT;
            (*r).nat_saddr = nat_saddr;
            (*r).nat_sport = nat_sport;
        }
        if snat {
            flags |= CT_DNAT;
            (*r).nat_daddr = nat_daddr;
            (*r).nat_dport = nat_dport;
        }
        (*r).flags = flags;
    }
    Ok((rkey, r))
}

/// Whether two entries rewrite packets the same way (counters and timestamps aside).
#[inline(always)]
fn same_translation(a: &CtEntry, b: &CtEntry) -> bool {
    // State bits (CT_CLOSING, CT_SEEN_REPLY) do not change how packets are rewritten.
    const XLATE: u32 = CT_DNAT | CT_SNAT | CT_REPLY | CT_HAIRPIN | CT_MASQ;
    a.flags & XLATE == b.flags & XLATE
        && a.nat_saddr == b.nat_saddr
        && a.nat_daddr == b.nat_daddr
        && a.nat_sport == b.nat_sport
        && a.nat_dport == b.nat_dport
        && a.redirect_ifindex == b.redirect_ifindex
}

/// Makes `key` hold `want`'s translation: an existing equal entry (and its counters) is kept,
/// a missing or different one is (over)written.
#[inline(always)]
pub fn ensure(key: &CtKey, want: &CtEntry) -> Result<*mut CtEntry, DropReason> {
    if let Some(p) = lookup(key) {
        // SAFETY: `p` came from a lookup in this program run; only read here.
        if same_translation(unsafe { &*p }, want) {
            return Ok(p);
        }
    }
    put(key, want)?;
    lookup(key).ok_or(DropReason::ConntrackFailed)
}

/// `ensure` for the other half of a new flow, whose key is taken: the entry there is kept (state,
/// counters, cached next hop) only while its flow goes on, i.e. live, not closing and with the
/// same translation (an uplink packet recreating a flow's lost original half). One left by a
/// finished connection (closing, or idle past its timeout) is replaced even when it translates
/// the same way: a fresh SYN reusing a closing tuple, or a tuple used again after its entries
/// expired, is a new connection, which must not inherit the old one's state (a closing half
/// retires within seconds; a stale `CT_SEEN_REPLY` keeps the original half on the SYN timeout).
#[inline(always)]
fn ensure_new(key: &CtKey, want: &CtEntry) -> Result<*mut CtEntry, DropReason> {
    if let Some(p) = lookup(key) {
        // `want` was built for this packet: its idle clock is now.
        let finished = flags(p) & CT_CLOSING != 0
            || config::get().is_ok_and(|cfg| expired(p, key.proto, cfg, want.last_seen_ns));
        // SAFETY: `p` came from a lookup in this program run; only read here.
        if !finished && same_translation(unsafe { &*p }, want) {
            return Ok(p);
        }
    }
    put(key, want)?;
    lookup(key).ok_or(DropReason::ConntrackFailed)
}

/// Writes both halves of a new flow, `e` being the half that `key` (the current packet) hits;
/// returns pointers to that half and the other one.
#[inline(always)]
pub fn create(key: &CtKey, e: &CtEntry) -> Result<(*mut CtEntry, *mut CtEntry), DropReason> {
    put(key, e)?;
    let (rkey, r) = reverse(key, e)?;
    // SAFETY: `r` is this CPU's scratch slot, just built.
    let r = unsafe { &*r };
    // The reply tuple of a new flow is almost always free: try the insert first (a failed
    // `BPF_NOEXIST` says it is taken; `ensure_new` then looks).
    let other = if TG_CT.insert(rkey, r, u64::from(BPF_NOEXIST)).is_ok() {
        verdict::count(CNT_CT_CREATED);
        lookup(&rkey).ok_or(DropReason::ConntrackFailed)?
    } else {
        ensure_new(&rkey, r)?
    };
    // Looked up again after the second insert: with LRU, any insert may recycle a slot.
    let this = lookup(key).ok_or(DropReason::ConntrackFailed)?;
    Ok((this, other))
}

/// Inserts both halves of a new flow whose packet is already handled: `e` (this CPU's
/// scratch slot `HALF`) was accounted for it and given its next hop before, so neither half
/// needs looking up again afterwards (two lookups of a new flow's cost). A reply tuple held by
/// a live entry of the same translation is kept (`ensure_new`) and touched as `touch` would.
#[inline(always)]
pub fn insert_new(key: &CtKey, e: &CtEntry) -> Result<(), DropReason> {
    put(key, e)?;
    let (rkey, r) = reverse(key, e)?;
    // SAFETY: `r` is this CPU's scratch slot, just built.
    let r = unsafe { &*r };
    if TG_CT.insert(rkey, r, u64::from(BPF_NOEXIST)).is_ok() {
        verdict::count(CNT_CT_CREATED);
        return Ok(());
    }
    let other = ensure_new(&rkey, r)?;
    // What `touch` does to a kept other half: the shared idle clock, and a FIN/RST's mark.
    // SAFETY: `other` came from a lookup in this program run.
    unsafe {
        (*other).last_seen_ns = e.last_seen_ns;
        (*other).flags |= e.flags & CT_CLOSING;
    }
    Ok(())
}

/// Both halves of an untranslated (plain tracked) flow owned by container `endpoint_id`.
#[inline(always)]
pub fn create_plain(
    key: &CtKey,
    endpoint_id: u32,
    now: u64,
) -> Result<(*mut CtEntry, *mut CtEntry), DropReason> {
    let e = new_entry(HALF, 0, endpoint_id, now)?;
    // SAFETY: `e` is this CPU's scratch slot, just built.
    create(key, unsafe { &*e })
}

/// How an entry rewrites its packets: the part of `CtEntry` a hook acts on, copied out of the
/// map once so that the rewrite reads stable values while other CPUs update the entry (and
/// without the whole entry on the stack: the hooks are close to the 512-byte limit).
#[derive(Clone, Copy)]
pub struct Xlate {
    pub flags: u32,
    pub nat_saddr: u32,
    pub nat_daddr: u32,
    pub nat_sport: u16,
    pub nat_dport: u16,
    pub redirect_ifindex: u32,
    /// The container that owns the flow.
    pub endpoint_id: u32,
}

/// The rewrite entry `e` stands for.
#[inline(always)]
pub fn xlate(e: *mut CtEntry) -> Xlate {
    // SAFETY: `e` came from a lookup in this program run; plain reads.
    unsafe {
        Xlate {
            flags: (*e).flags,
            nat_saddr: (*e).nat_saddr,
            nat_daddr: (*e).nat_daddr,
            nat_sport: (*e).nat_sport,
            nat_dport: (*e).nat_dport,
            redirect_ifindex: (*e).redirect_ifindex,
            endpoint_id: (*e).endpoint_id,
        }
    }
}

/// The entry's `CT_*` flags.
#[inline(always)]
fn flags(e: *mut CtEntry) -> u32 {
    // SAFETY: `e` came from a lookup in this program run.
    unsafe { (*e).flags }
}

/// A closing TCP entry hit by a fresh SYN: the tuple is being reused by a new connection,
/// which is translated afresh (the mapping may have changed since).
#[inline(always)]
fn reused(e: *mut CtEntry, pkt: &Packet) -> bool {
    flags(e) & CT_CLOSING != 0 && pkt.proto == datapath_common::proto::TCP && pkt.opens_flow()
}

/// Whether the packet travels the way entry `e` faces. Only ICMP echo can tell: a request
/// belongs on an original half, a reply on a reply half. The keys say so (the identifier
/// sits in the requester's port, and `CtKey.echo` marks requests, which tells identifier 0's
/// request and reply apart); only an entry written before keys were marked can face the
/// other way (a request's unmarked original half, hit by a reply with identifier 0).
#[inline(always)]
fn same_direction(e: *mut CtEntry, pkt: &Packet) -> bool {
    !pkt.is_icmp() || (flags(e) & CT_REPLY != 0) == (pkt.icmp_type == ICMP_ECHO_REPLY)
}

/// Makes sure the other half of a hit flow exists, and returns it.
#[inline(always)]
pub fn ensure_reverse(key: &CtKey, e: *mut CtEntry) -> Result<*mut CtEntry, DropReason> {
    // SAFETY: `e` came from a lookup in this program run; `reverse` copies what it needs.
    let (rkey, r) = reverse(key, unsafe { &*e })?;
    // SAFETY: `r` is this CPU's scratch slot, just built.
    ensure(&rkey, unsafe { &*r })
}

/// Writes the original half `e` of a flow whose reply half (`rkey`) the caller already
/// claimed; returns pointers to both.
#[inline(always)]
pub fn create_claimed(
    key: &CtKey,
    e: &CtEntry,
    rkey: &CtKey,
) -> Result<(*mut CtEntry, *mut CtEntry), DropReason> {
    put(key, e)?;
    let other = lookup(rkey).ok_or(DropReason::ConntrackFailed)?;
    let this = lookup(key).ok_or(DropReason::ConntrackFailed)?;
    Ok((this, other))
}

/// Whether a packet hitting live entry `e` must also sync the flow's other half (look it up,
/// recreating it if it was lost, and refresh it): when it changes the flow's state (first
/// reply, FIN/RST), or when `e`'s idle clock is older than a sixteenth of its timeout (at most
/// 1 s). In between, only `e`'s counters move: the other half's lookup is most of the cost of
/// an established packet, and idle clocks never need to be finer than that (timeouts are
/// seconds; both halves are refreshed together, so neither expires while the flow is used).
#[inline(always)]
fn needs_sync(e: *mut CtEntry, pkt: &Packet, cfg: &Config, now: u64) -> bool {
    // SAFETY: `e` came from a lookup in this program run; plain reads.
    let (flags, last) = unsafe { ((*e).flags, (*e).last_seen_ns) };
    let refresh = (timeout_ns(flags, pkt.proto, cfg) / 16).min(1_000_000_000);
    pkt.closes_flow()
        || (flags & CT_REPLY != 0 && flags & CT_SEEN_REPLY == 0)
        || now.saturating_sub(last) >= refresh
}

/// The other half of an established flow whose entry `e` (at `key`) the packet hit, when
/// `needs_sync` says the packet needs it (ensured, i.e. recreated if lost); `None` otherwise.
#[inline(always)]
pub fn other_half(
    key: &CtKey,
    e: *mut CtEntry,
    pkt: &Packet,
    cfg: &Config,
    now: u64,
) -> Result<Option<*mut CtEntry>, DropReason> {
    if needs_sync(e, pkt, cfg, now) {
        ensure_reverse(key, e).map(Some)
    } else {
        Ok(None)
    }
}

/// A hit or new flow in a hook: the half the packet uses, the other half when it must be
/// touched too (`other_half`; always for a new flow), and the counter its packets bump.
pub type Hit = (*mut CtEntry, Option<*mut CtEntry>, Option<u32>);

/// Accounts one packet of `len` bytes on `e`. With the other half (`needs_sync` said so, or
/// the flow is new), also refreshes both halves' idle clock; a packet through the reply half
/// marks the flow answered (`CT_SEEN_REPLY`: TCP leaves the SYN timeout), a TCP FIN/RST
/// marks both halves closing so they are retired early.
#[inline(always)]
pub fn touch(e: *mut CtEntry, other: Option<*mut CtEntry>, pkt: &Packet, len: u32, now: u64) {
    // SAFETY: both pointers come from lookups in this program run. Plain read-modify-writes:
    // the bpfel target has no Rust atomic RMW, and a flow's packets in one direction mostly
    // stay on one CPU (RSS/RPS hash by flow), so a lost update is rare and only skews stats.
    unsafe {
        (*e).packets = (*e).packets.wrapping_add(1);
        (*e).bytes = (*e).bytes.wrapping_add(u64::from(len));
        let Some(other) = other else {
            return;
        };
        (*e).last_seen_ns = now;
        (*other).last_seen_ns = now;
        if (*e).flags & CT_REPLY != 0 && (*e).flags & CT_SEEN_REPLY == 0 {
            (*e).flags |= CT_SEEN_REPLY;
            (*other).flags |= CT_SEEN_REPLY;
        }
        if pkt.closes_flow() {
            (*e).flags |= CT_CLOSING;
            (*other).flags |= CT_CLOSING;
        }
    }
}
