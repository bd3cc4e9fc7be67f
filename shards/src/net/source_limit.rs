//! Token buckets per client address: how often one source may do something (open a QUIC
//! connection, send a request), in constant memory whatever the number of sources.
//!
//! A flood from millions of (spoofed) addresses must not grow a table, so sources are hashed
//! into a fixed array of buckets with a per-shard random key; sources that collide share a
//! bucket, which can only make the limit stricter for them, never looser.

use std::net::IpAddr;
use std::time::Instant;

/// Slots in the per-source table. Sources share a slot when their prefixes hash alike, so the
/// table never grows whatever a flood's spread of addresses: 16,384 slots of 16 bytes is 256 KiB
/// per shard, and two unrelated clients share a bucket with probability 1/16,384.
const SOURCE_SLOTS: usize = 16_384;

/// A token bucket per source prefix: `rate` new connections a second, up to `burst` at once.
pub struct SourceLimiter {
    /// Tokens in thousandths, and the millisecond (since `epoch`) they were last topped up.
    slots: Box<[(u32, u32)]>,
    hasher: ahash::RandomState,
    epoch: Instant,
    rate_per_sec: u32,
    burst: u32,
}

impl SourceLimiter {
    /// `rate_per_sec` 0 turns the limit off (and allocates nothing).
    pub fn new(rate_per_sec: u32, burst: u32, epoch: Instant) -> Self {
        let burst = burst.max(1);
        let full = burst.saturating_mul(1000);
        SourceLimiter {
            slots: vec![(full, 0); if rate_per_sec == 0 { 0 } else { SOURCE_SLOTS }]
                .into_boxed_slice(),
            hasher: ahash::RandomState::new(),
            epoch,
            rate_per_sec,
            burst,
        }
    }

    /// Whether the limit is off (every `allow` is `true`): lets a caller skip reading the clock.
    pub fn is_off(&self) -> bool {
        self.slots.is_empty()
    }

    /// Takes one token from `source`'s bucket at `now`; `false` when it is empty.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.slots.is_empty() {
            return true;
        }
        let slot = &mut self.slots[self.hasher.hash_one(prefix(source)) as usize % SOURCE_SLOTS];
        // Milliseconds wrap after 49 days: a wrapped stamp reads as far in the past, which only
        // refills the bucket.
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u32;
        let elapsed_ms = now_ms.wrapping_sub(slot.1) as u64;
        let full = self.burst as u64 * 1000;
        // Tokens are in thousandths and time in milliseconds: `rate` per second adds `rate`
        // thousandths per millisecond.
        let refilled = (slot.0 as u64 + elapsed_ms * self.rate_per_sec as u64).min(full);
        slot.1 = now_ms;
        if refilled < 1000 {
            slot.0 = refilled as u32;
            return false;
        }
        slot.0 = (refilled - 1000) as u32;
        true
    }
}

/// What a client's address is counted under: a host for IPv4, a /64 for IPv6 (one subscriber's
/// allocation, which they can spread over 2^64 addresses).
fn prefix(source: IpAddr) -> u128 {
    match source {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_ipv6_mapped().to_bits(),
            None => v6.to_bits() & !((1u128 << 64) - 1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut limiter = SourceLimiter::new(10, 5, start);
        let source = ip("203.0.113.9");
        for i in 0..5 {
            assert!(limiter.allow(source, start), "connection {i} of the burst");
        }
        assert!(!limiter.allow(source, start), "the burst is spent");
        // 10 a second: one token every 100 ms.
        assert!(!limiter.allow(source, start + Duration::from_millis(50)));
        assert!(limiter.allow(source, start + Duration::from_millis(150)));
        assert!(!limiter.allow(source, start + Duration::from_millis(160)));
        // A long pause refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(limiter.allow(source, later));
        }
        assert!(!limiter.allow(source, later));
    }

    #[test]
    fn sources_have_their_own_buckets() {
        let start = Instant::now();
        let mut limiter = SourceLimiter::new(1, 1, start);
        assert!(limiter.allow(ip("203.0.113.9"), start));
        assert!(!limiter.allow(ip("203.0.113.9"), start));
        assert!(limiter.allow(ip("203.0.113.10"), start));
    }

    #[test]
    fn ipv6_counts_per_slash_64_and_mapped_ipv4_as_ipv4() {
        let start = Instant::now();
        let mut limiter = SourceLimiter::new(1, 1, start);
        assert!(limiter.allow(ip("2001:db8:1:2::1"), start));
        assert!(
            !limiter.allow(ip("2001:db8:1:2:ffff::9"), start),
            "same /64"
        );
        assert!(limiter.allow(ip("2001:db8:1:3::1"), start), "another /64");
        assert!(limiter.allow(ip("192.0.2.1"), start));
        assert!(
            !limiter.allow(ip("::ffff:192.0.2.1"), start),
            "the same host"
        );
    }

    #[test]
    fn rate_zero_is_off() {
        let start = Instant::now();
        let mut limiter = SourceLimiter::new(0, 0, start);
        for _ in 0..10_000 {
            assert!(limiter.allow(ip("203.0.113.9"), start));
        }
    }
}
