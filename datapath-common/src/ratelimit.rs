//! Token-bucket policing per container and direction (`TG_RATELIMIT`, indexed by endpoint id).
//!
//! The bucket is kept in the GCRA ("virtual scheduling") form: one 64-bit word, `tat`, the
//! time at which the bucket will be full again. A packet of `len` bytes costs
//! `len / rate` of time; it conforms when, after paying, the bucket is not more than `depth`
//! bytes in debt, i.e. `max(tat, now) + cost <= now + fill_ns`. This is the same policer as a
//! token bucket of `depth` bytes refilled at `rate` (tokens = `(now + fill_ns - tat) * rate`),
//! but its whole state is one word, so the datapath can update it with a single
//! compare-and-swap shared by every CPU (docs/ratelimit.md). The same math runs in the eBPF
//! programs (`step`) and in host tests (`admit`).

pub const NS_PER_S: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Rate in bytes per second; 0 = unlimited.
    pub rate: u64,
    /// Bucket depth (burst), bytes.
    pub depth: u64,
    /// Time the rate takes to fill an empty bucket (`depth / rate`), ns: how far ahead of
    /// `now` the bucket's `tat` may run.
    pub fill_ns: u64,
    /// Theoretical arrival time, CLOCK_MONOTONIC ns: when the bucket is full again. 0 (or any
    /// time in the past) is a full bucket. The datapath updates it with compare-and-swap.
    pub tat: u64,
}

impl TokenBucket {
    /// A full bucket for `rate_bits` bits/s with `burst` bytes of depth.
    pub const fn new(rate_bits: u64, burst: u64) -> Self {
        let rate = rate_bits / 8;
        if rate == 0 {
            return TokenBucket {
                rate: 0,
                depth: 0,
                fill_ns: 0,
                tat: 0,
            };
        }
        TokenBucket {
            rate,
            depth: burst,
            fill_ns: cost_ns(burst, rate),
            tat: 0,
        }
    }

    /// The new `tat` if a packet of `len` bytes arriving at `now_ns` conforms to a bucket
    /// whose `tat` is `tat`, `None` if it must be dropped. Pure: the caller stores the result
    /// (plainly on the host, by compare-and-swap in the datapath).
    #[inline(always)]
    pub fn step(&self, tat: u64, len: u64, now_ns: u64) -> Option<u64> {
        let start = if tat > now_ns { tat } else { now_ns };
        let next = start.saturating_add(cost_ns(len, self.rate));
        if next <= now_ns.saturating_add(self.fill_ns) {
            Some(next)
        } else {
            None
        }
    }

    /// Takes `len` bytes if the bucket holds them at `now_ns`; returns whether the packet
    /// conforms. Single-threaded reference of what the datapath does atomically.
    #[inline(always)]
    pub fn admit(&mut self, len: u64, now_ns: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        match self.step(self.tat, len, now_ns) {
            Some(t) => {
                self.tat = t;
                true
            }
            None => false,
        }
    }
}

/// Time `len` bytes take at `rate` bytes/s, ns. `len * 1e9` fits a u64 up to 18 GB (bursts
/// are at most 4 GiB); eBPF has
/// 64-bit unsigned division (a zero divisor yields 0 there, never a fault).
#[inline(always)]
pub const fn cost_ns(len: u64, rate: u64) -> u64 {
    if rate == 0 {
        return 0;
    }
    len.saturating_mul(NS_PER_S) / rate
}

/// Value of `TG_RATELIMIT`: egress = what the container sends, ingress = what it receives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub egress: TokenBucket,
    pub ingress: TokenBucket,
}

/// Default burst for a rate (bits/s) when the user gives none: the rate x 300 ms, at least
/// 128 KiB, at most 4 GiB.
///
/// A policer drops what a shaper would delay. On a veth the RTT is tens of microseconds, so a
/// TCP sender puts whole windows on the wire at once (as GSO packets of up to 64 KiB) and
/// nearly every loss episode ends in a retransmission timeout (200 ms minimum) rather than a
/// fast retransmit. A bucket deeper than that stall banks the tokens the idle flow does not
/// use and lets it catch up afterwards; a shallow one throws them away. Measured with one
/// iperf3 TCP flow: depth = 25 ms of the rate gave 12 % of 100 mbit, 85 ms 44 %, 170 ms 80 %,
/// 300 ms 97-103 % at 10 mbit, 100 mbit and 1 gbit both ways (docs/ratelimit.md). The long-run
/// average is exactly the rate whatever the depth; a deep bucket only lets an idle container
/// send one burst of 300 ms worth at line rate. The floor keeps a 64 KiB GSO packet passable.
pub const fn default_burst(rate_bits: u64) -> u64 {
    let per_300ms = rate_bits / 8 / 10 * 3;
    if per_300ms < 128 * 1024 {
        128 * 1024
    } else if per_300ms > 4 << 30 {
        4 << 30
    } else {
        per_300ms
    }
}

crate::impl_pod!(TokenBucket, RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<TokenBucket>(), 32);
        assert_eq!(core::mem::align_of::<TokenBucket>(), 8);
        assert_eq!(core::mem::offset_of!(TokenBucket, tat), 24);
        assert_eq!(core::mem::size_of::<RateLimit>(), 64);
        assert_eq!(core::mem::offset_of!(RateLimit, ingress), 32);
    }

    #[test]
    fn unlimited_admits_everything() {
        let mut b = TokenBucket::new(0, 0);
        assert!(b.admit(u32::MAX as u64, 1));
    }

    #[test]
    fn burst_then_rate() {
        // 8 mbit/s = 1 MB/s, 10 kB burst.
        let mut b = TokenBucket::new(8_000_000, 10_000);
        let t0 = 1_000_000_000;
        let mut sent = 0;
        while b.admit(1000, t0) {
            sent += 1000;
        }
        assert_eq!(sent, 10_000, "a full bucket passes exactly the burst");
        // 1 ms later: 1 kB of tokens.
        assert!(b.admit(1000, t0 + 1_000_000));
        assert!(!b.admit(1, t0 + 1_000_000));
    }

    #[test]
    fn long_run_rate_is_exact() {
        // Offer 3x the rate for 2 s in 1500-byte packets; admitted bytes ~= rate x 2 s + burst.
        let rate_bits = 100_000_000u64;
        let burst = 100_000u64;
        let mut b = TokenBucket::new(rate_bits, burst);
        let (mut now, mut admitted) = (5 * NS_PER_S, 0u64);
        let interval = 1500 * 8 * NS_PER_S / (3 * rate_bits);
        while now < 7 * NS_PER_S {
            if b.admit(1500, now) {
                admitted += 1500;
            }
            now += interval;
        }
        let expect = rate_bits / 8 * 2 + burst;
        let err = admitted.abs_diff(expect) as f64 / expect as f64;
        assert!(err < 0.01, "admitted {admitted}, expected ~{expect}");
    }

    #[test]
    fn odd_rates_and_gso_sizes_stay_exact() {
        // 3 gbit/s (2.67 ns per byte, not an integer) with 64 KiB packets offered at 2x.
        let rate_bits = 3_000_000_000u64;
        let mut b = TokenBucket::new(rate_bits, default_burst(rate_bits));
        let (mut now, mut admitted) = (NS_PER_S, 0u64);
        let interval = 65536 * 8 * NS_PER_S / (2 * rate_bits);
        while now < 3 * NS_PER_S {
            if b.admit(65536, now) {
                admitted += 65536;
            }
            now += interval;
        }
        let expect = rate_bits / 8 * 2 + default_burst(rate_bits);
        let err = admitted.abs_diff(expect) as f64 / expect as f64;
        assert!(err < 0.01, "admitted {admitted}, expected ~{expect}");
    }

    #[test]
    fn idle_refill_is_capped_at_depth() {
        let mut b = TokenBucket::new(1_000_000_000, 50_000);
        assert!(b.admit(50_000, 1));
        assert!(!b.admit(1, 2));
        // Hours later: no overflow, exactly one bucket.
        let later = 3600 * NS_PER_S;
        assert!(b.admit(50_000, later));
        assert!(!b.admit(1, later));
    }

    #[test]
    fn rejected_packets_cost_nothing() {
        let mut b = TokenBucket::new(8_000_000, 10_000);
        assert!(b.admit(10_000, NS_PER_S));
        for _ in 0..100 {
            assert!(!b.admit(1500, NS_PER_S));
        }
        // 1.5 ms later exactly 1500 bytes are back, however many packets were refused.
        assert!(b.admit(1500, NS_PER_S + 1_500_000));
    }

    #[test]
    fn default_burst_fits_a_gso_packet_and_scales() {
        assert_eq!(default_burst(1_000_000), 128 * 1024);
        assert!(default_burst(1) > 65536);
        assert_eq!(default_burst(10_000_000), 375_000);
        assert_eq!(default_burst(1_000_000_000), 37_500_000);
        assert_eq!(default_burst(1_000_000_000_000), 4 << 30);
        // The depth in byte-ns must not saturate: 4 GiB x 1e9 < 2^64.
        let b = TokenBucket::new(1_000_000_000_000, default_burst(1_000_000_000_000));
        assert_eq!(b.fill_ns, cost_ns(4 << 30, b.rate));
    }
}
