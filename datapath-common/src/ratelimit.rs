//! Token-bucket policing per container and direction (`TG_RATELIMIT`, indexed by endpoint id).
//!
//! Tokens are kept in byte-nanoseconds (bytes x 1e9) so that refilling is one multiply,
//! `elapsed_ns * rate_bytes_per_s`, with no division in the datapath and no rounding loss
//! however often packets arrive. The same code runs in the eBPF programs and in host tests.

pub const NS_PER_S: u64 = 1_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Rate in bytes per second; 0 = unlimited.
    pub rate: u64,
    /// Bucket depth in byte-ns (burst bytes x 1e9).
    pub depth: u64,
    /// Time to fill an empty bucket, ns (caps the refill so `elapsed * rate` cannot overflow).
    pub fill_ns: u64,
    /// Current tokens, byte-ns.
    pub tokens: u64,
    /// Last refill, CLOCK_MONOTONIC ns.
    pub last_ns: u64,
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
                tokens: 0,
                last_ns: 0,
            };
        }
        let depth = burst.saturating_mul(NS_PER_S);
        TokenBucket {
            rate,
            depth,
            fill_ns: depth / rate + 1,
            tokens: depth,
            last_ns: 0,
        }
    }

    /// Refills for the time since the last call, then takes `len` bytes if there are enough
    /// tokens. Returns whether the packet conforms.
    #[inline(always)]
    pub fn admit(&mut self, len: u64, now_ns: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut elapsed = now_ns.saturating_sub(self.last_ns);
        if elapsed > self.fill_ns {
            elapsed = self.fill_ns;
        }
        let mut t = self
            .tokens
            .saturating_add(elapsed.saturating_mul(self.rate));
        if t > self.depth {
            t = self.depth;
        }
        self.last_ns = now_ns;
        let need = len.saturating_mul(NS_PER_S);
        if t >= need {
            self.tokens = t - need;
            true
        } else {
            self.tokens = t;
            false
        }
    }
}

/// Value of `TG_RATELIMIT`: egress = what the container sends, ingress = what it receives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub egress: TokenBucket,
    pub ingress: TokenBucket,
}

/// Default burst for a rate (bits/s) when the user gives none: enough for TCP to keep its
/// window open under policing (a policer drops, it cannot delay like a shaper).
pub const fn default_burst(rate_bits: u64) -> u64 {
    let per_20ms = rate_bits / 8 / 50;
    if per_20ms > 64 * 1024 {
        per_20ms
    } else {
        64 * 1024
    }
}

crate::impl_pod!(TokenBucket, RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<TokenBucket>(), 40);
        assert_eq!(core::mem::size_of::<RateLimit>(), 80);
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
    fn default_burst_scales() {
        assert_eq!(default_burst(1_000_000), 64 * 1024);
        assert_eq!(default_burst(1_000_000_000), 2_500_000);
    }
}
