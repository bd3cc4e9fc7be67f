//! Backend selection within one pool, per shard.
//!
//! Each shard owns one [`Balancer`] per upstream and decides alone: no shared counters, no locks.
//! Health comes from two places: the coordinator's snapshots (active checks) and this shard's own
//! outlier detection ([`outlier`]). A backend unhealthy by either is skipped by every algorithm,
//! except that when passive ejection alone would leave nothing to pick, ejections are ignored (a
//! "panic" mode, as Envoy does) rather than failing every request.
//!
//! The algorithms are one type each behind [`Select`]: [`round_robin`], [`random`], [`p2c`]
//! (least-request and latency-aware) and [`maglev`] (consistent hash, keyed by [`hash_key`]).
//! Every one honours weights, and a pick never allocates.

pub mod hash_key;
pub mod maglev;
pub mod outlier;
pub mod p2c;
pub mod random;
pub mod rng;
pub mod round_robin;

use std::time::{Duration, Instant};

use crate::plan::{BackendPlan, Balancing};
use outlier::Outliers;
use rng::XorShift64;

/// Index of a backend within its upstream.
pub type BackendIndex = usize;

/// Response-time smoothing for `latency-aware` (weight of the newest sample).
const EWMA_ALPHA: f64 = 0.3;

/// One pick: which backends may be chosen, the request's key, and what an algorithm may look at
/// (the pool's weights and load, and the shard's generator).
pub struct Pick<'a> {
    /// Backends that may be chosen. An algorithm may clear and restore marks while it works.
    pub eligible: &'a mut [bool],
    /// The request's hash, for keyed algorithms (`None`: the request lacks the key).
    pub key: Option<u64>,
    pub weights: &'a [u32],
    /// Requests in flight from this shard, per backend.
    pub in_flight: &'a [u32],
    /// Smoothed time to response headers, in microseconds (0 = no sample yet).
    pub ewma_us: &'a [f64],
    pub rng: &'a mut XorShift64,
}

/// One load-balancing algorithm.
pub trait Select {
    /// Picks one of the eligible backends, or `None` when none is.
    fn select(&mut self, pick: &mut Pick<'_>) -> Option<BackendIndex>;
    /// The actively healthy set changed; algorithms with lookup structures rebuild them.
    fn health_changed(&mut self, _healthy: &[bool]) {}
}

/// Weighted random choice among the eligible backends.
pub fn weighted_random(pick: &mut Pick<'_>) -> Option<BackendIndex> {
    let eligible = &*pick.eligible;
    let total: u64 = pick
        .weights
        .iter()
        .zip(eligible)
        .filter(|(_, ok)| **ok)
        .map(|(w, _)| u64::from(*w))
        .sum();
    if total == 0 {
        return None;
    }
    let mut ticket = pick.rng.next() % total;
    for (i, weight) in pick.weights.iter().enumerate() {
        if !eligible[i] {
            continue;
        }
        let weight = u64::from(*weight);
        if ticket < weight {
            return Some(i);
        }
        ticket -= weight;
    }
    None
}

pub struct Balancer {
    algorithm: Box<dyn Select>,
    weights: Vec<u32>,
    healthy: Vec<bool>,
    rng: XorShift64,
    pub outliers: Outliers,
    in_flight: Vec<u32>,
    ewma_us: Vec<f64>,
    /// Reused per pick: which backends may be picked.
    eligible: Vec<bool>,
}

impl Balancer {
    pub fn new(algorithm: Balancing, backends: &[BackendPlan], seed: u64) -> Self {
        let n = backends.len();
        let algorithm: Box<dyn Select> = match algorithm {
            Balancing::RoundRobin => Box::new(round_robin::RoundRobin::new(n)),
            Balancing::Random => Box::new(random::Random),
            Balancing::LeastRequest => Box::new(p2c::PowerOfTwo::new(p2c::Score::LeastRequest)),
            Balancing::LatencyAware => Box::new(p2c::PowerOfTwo::new(p2c::Score::LatencyAware)),
            Balancing::ConsistentHash(_) => Box::new(maglev::Maglev::new(
                backends.iter().map(|b| b.id.clone()).collect(),
                backends.iter().map(|b| b.weight).collect(),
            )),
        };
        Balancer {
            algorithm,
            weights: backends.iter().map(|b| b.weight).collect(),
            healthy: vec![true; n],
            rng: XorShift64::new(seed),
            outliers: Outliers::new(n),
            in_flight: vec![0; n],
            ewma_us: vec![0.0; n],
            eligible: Vec::with_capacity(n),
        }
    }

    /// Replaces the health view. A length mismatch (never produced by the coordinator) leaves the
    /// missing backends healthy rather than dropping traffic. Only a change reaches the
    /// algorithm, so a snapshot that changed another upstream rebuilds nothing here.
    pub fn set_health(&mut self, healthy: &[bool]) {
        let mut changed = false;
        for (i, slot) in self.healthy.iter_mut().enumerate() {
            let now_healthy = healthy.get(i).copied().unwrap_or(true);
            changed |= *slot != now_healthy;
            *slot = now_healthy;
        }
        if changed {
            self.algorithm.health_changed(&self.healthy);
        }
    }

    /// Picks a healthy backend, or `None` when the pool has none.
    pub fn pick(&mut self) -> Option<BackendIndex> {
        self.pick_excluding(Instant::now(), &[], None)
    }

    /// Picks a healthy backend not in `tried` (used when retrying a request elsewhere).
    /// `key_hash` is the request's hash for `consistent-hash` (`None`: the key was absent, and
    /// the pick falls back to weighted random).
    pub fn pick_excluding(
        &mut self,
        now: Instant,
        tried: &[BackendIndex],
        key_hash: Option<u64>,
    ) -> Option<BackendIndex> {
        let mut eligible = std::mem::take(&mut self.eligible);
        eligible.clear();
        eligible.extend(
            (0..self.weights.len()).map(|i| {
                self.healthy[i] && !tried.contains(&i) && !self.outliers.is_ejected(i, now)
            }),
        );
        if !eligible.iter().any(|ok| *ok) {
            // Passive ejection alone must not empty the pool: ignore it for this pick.
            for (i, slot) in eligible.iter_mut().enumerate() {
                *slot = self.healthy[i] && !tried.contains(&i);
            }
        }
        let mut pick = Pick {
            eligible: &mut eligible,
            key: key_hash,
            weights: &self.weights,
            in_flight: &self.in_flight,
            ewma_us: &self.ewma_us,
            rng: &mut self.rng,
        };
        let picked = self.algorithm.select(&mut pick);
        self.eligible = eligible;
        picked
    }

    /// A request to `backend` started.
    pub fn started(&mut self, backend: BackendIndex) {
        if let Some(n) = self.in_flight.get_mut(backend) {
            *n += 1;
        }
    }

    /// A request to `backend` ended; `latency` is its time to response headers, if it got any.
    pub fn finished(&mut self, backend: BackendIndex, latency: Option<Duration>) {
        if let Some(n) = self.in_flight.get_mut(backend) {
            *n = n.saturating_sub(1);
        }
        if let (Some(latency), Some(ewma)) = (latency, self.ewma_us.get_mut(backend)) {
            let sample = latency.as_secs_f64() * 1e6;
            *ewma = if *ewma == 0.0 {
                sample
            } else {
                EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * *ewma
            };
        }
    }
}

/// A fixed 64-bit hash (FNV-1a, then a SplitMix64 finaliser): the same on every shard, process
/// and restart, unlike the per-process random hashers used for maps.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The load signals a test sets by hand.
    pub struct LoadState {
        pub weights: Vec<u32>,
        pub in_flight: Vec<u32>,
        pub ewma_us: Vec<f64>,
        pub rng: XorShift64,
    }

    impl LoadState {
        pub fn new(weights: &[u32]) -> Self {
            LoadState {
                weights: weights.to_vec(),
                in_flight: vec![0; weights.len()],
                ewma_us: vec![0.0; weights.len()],
                rng: XorShift64::new(7),
            }
        }

        pub fn pick<'a>(&'a mut self, eligible: &'a mut [bool], key: Option<u64>) -> Pick<'a> {
            Pick {
                eligible,
                key,
                weights: &self.weights,
                in_flight: &self.in_flight,
                ewma_us: &self.ewma_us,
                rng: &mut self.rng,
            }
        }
    }

    /// `n` picks through the trait, stopping at the first `None`; the marks must come back as
    /// they were given.
    pub fn through_trait(
        select: &mut dyn Select,
        state: &mut LoadState,
        eligible: &[bool],
        n: usize,
    ) -> Vec<usize> {
        let mut marks = eligible.to_vec();
        let mut picks = Vec::new();
        for _ in 0..n {
            let Some(pick) = select.select(&mut state.pick(&mut marks, None)) else {
                break;
            };
            assert!(eligible[pick], "picked ineligible backend {pick}");
            assert_eq!(marks, eligible, "eligibility marks not restored");
            picks.push(pick);
        }
        picks
    }

    fn backends(weights: &[u32]) -> Vec<BackendPlan> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| BackendPlan {
                id: format!("b{i}"),
                address: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                weight: *w,
                stats_slot: i,
                health_check: None,
                name: None,
            })
            .collect()
    }

    fn shares(balancer: &mut Balancer, n: usize, len: usize) -> Vec<usize> {
        let mut counts = vec![0; len];
        for _ in 0..n {
            counts[balancer.pick().unwrap()] += 1;
        }
        counts
    }

    const EVERY_ALGORITHM: [Balancing; 5] = [
        Balancing::RoundRobin,
        Balancing::Random,
        Balancing::LeastRequest,
        Balancing::LatencyAware,
        Balancing::ConsistentHash(crate::plan::HashKey::Path),
    ];

    /// A DNS-named backend that has not resolved leaves its upstream without endpoints.
    #[test]
    fn an_upstream_without_backends_picks_none() {
        for algorithm in EVERY_ALGORITHM {
            let mut b = Balancer::new(algorithm.clone(), &[], 1);
            assert_eq!(b.pick(), None, "{algorithm:?}");
            assert_eq!(b.pick_excluding(Instant::now(), &[], Some(7)), None);
            b.set_health(&[]);
        }
    }

    #[test]
    fn round_robin_through_the_balancer_follows_weights_exactly() {
        let mut b = Balancer::new(Balancing::RoundRobin, &backends(&[5, 1, 1]), 1);
        assert_eq!(shares(&mut b, 700, 3), vec![500, 100, 100]);
    }

    #[test]
    fn every_algorithm_skips_unhealthy_backends() {
        for algorithm in EVERY_ALGORITHM {
            let mut b = Balancer::new(algorithm.clone(), &backends(&[1, 1, 1]), 3);
            b.set_health(&[true, false, true]);
            let now = Instant::now();
            for key in 0..300u64 {
                let pick = b.pick_excluding(now, &[], Some(stable_hash(&key.to_le_bytes())));
                assert_ne!(pick, Some(1), "{algorithm:?}");
                assert!(pick.is_some(), "{algorithm:?}");
            }
            b.set_health(&[false, false, false]);
            assert_eq!(b.pick(), None, "{algorithm:?}");
            assert_eq!(b.pick_excluding(now, &[], Some(5)), None, "{algorithm:?}");
        }
    }

    #[test]
    fn excluded_and_ejected_backends_are_skipped_but_ejection_never_empties_the_pool() {
        for algorithm in EVERY_ALGORITHM {
            let mut b = Balancer::new(algorithm.clone(), &backends(&[1, 1]), 5);
            let now = Instant::now();
            for key in 0..10 {
                assert_eq!(
                    b.pick_excluding(now, &[0], Some(key)),
                    Some(1),
                    "{algorithm:?}"
                );
            }
            b.outliers.record_failure(0, outlier::Failure::Connect, now);
            for key in 0..10 {
                assert_eq!(
                    b.pick_excluding(now, &[], Some(key)),
                    Some(1),
                    "{algorithm:?}"
                );
            }
            b.outliers.record_failure(1, outlier::Failure::Connect, now);
            // Both ejected: panic mode spreads traffic over the healthy set again.
            let picks: Vec<_> = (0..64)
                .map(|key| {
                    b.pick_excluding(now, &[], Some(stable_hash(&[key])))
                        .unwrap()
                })
                .collect();
            assert!(picks.contains(&0) && picks.contains(&1), "{algorithm:?}");
        }
    }

    #[test]
    fn load_reports_reach_the_algorithm() {
        let mut b = Balancer::new(Balancing::LatencyAware, &backends(&[100, 100]), 11);
        for _ in 0..10 {
            b.started(0);
            b.finished(0, Some(Duration::from_millis(50)));
            b.started(1);
            b.finished(1, Some(Duration::from_millis(1)));
        }
        assert_eq!(shares(&mut b, 1000, 2), vec![0, 1000]);
        let mut b = Balancer::new(Balancing::LeastRequest, &backends(&[100; 3]), 9);
        for _ in 0..50 {
            b.started(0);
        }
        assert_eq!(shares(&mut b, 3000, 3)[0], 0);
    }
}
