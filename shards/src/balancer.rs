//! Backend selection within one pool, per shard.
//!
//! Each shard owns one [`Balancer`] per upstream and decides alone: no shared counters, no locks.
//! Health comes from two places: the coordinator's snapshots (active checks) and this shard's own
//! outlier detection (see [`crate::outlier`]). A backend unhealthy by either is skipped by every
//! algorithm, except that when passive ejection alone would leave nothing to pick, ejections are
//! ignored (a "panic" mode, as Envoy does) rather than failing every request. Weights are
//! honoured by both algorithms.

use std::time::Instant;

use crate::outlier::Outliers;
use crate::plan::{BackendPlan, Balancing};

/// Index of a backend within its upstream.
pub type BackendIndex = usize;

pub struct Balancer {
    algorithm: Balancing,
    weights: Vec<u32>,
    healthy: Vec<bool>,
    /// Smooth weighted round-robin state (nginx's algorithm): each pick adds every healthy
    /// backend's weight to its current value, takes the largest, and subtracts the total from it.
    /// Picks interleave (a:5 b:1 c:1 gives a a b a c a a) instead of bursting.
    current: Vec<i64>,
    rng: XorShift64,
    pub outliers: Outliers,
}

impl Balancer {
    pub fn new(algorithm: Balancing, backends: &[BackendPlan], seed: u64) -> Self {
        Balancer {
            algorithm,
            weights: backends.iter().map(|b| b.weight).collect(),
            healthy: vec![true; backends.len()],
            current: vec![0; backends.len()],
            rng: XorShift64::new(seed),
            outliers: Outliers::new(backends.len()),
        }
    }

    /// Replaces the health view. A length mismatch (never produced by the coordinator) leaves the
    /// missing backends healthy rather than dropping traffic.
    pub fn set_health(&mut self, healthy: &[bool]) {
        for (i, slot) in self.healthy.iter_mut().enumerate() {
            *slot = healthy.get(i).copied().unwrap_or(true);
        }
    }

    /// Picks a healthy backend, or `None` when the pool has none.
    pub fn pick(&mut self) -> Option<BackendIndex> {
        self.pick_excluding(Instant::now(), &[])
    }

    /// Picks a healthy backend not in `tried` (used when retrying a request elsewhere).
    pub fn pick_excluding(&mut self, now: Instant, tried: &[BackendIndex]) -> Option<BackendIndex> {
        let candidates: Vec<bool> = (0..self.weights.len())
            .map(|i| self.healthy[i] && !tried.contains(&i))
            .collect();
        let not_ejected: Vec<bool> = candidates
            .iter()
            .enumerate()
            .map(|(i, ok)| *ok && !self.outliers.is_ejected(i, now))
            .collect();
        let eligible = if not_ejected.iter().any(|ok| *ok) {
            not_ejected
        } else {
            candidates
        };
        match self.algorithm {
            Balancing::RoundRobin => self.pick_round_robin(&eligible),
            Balancing::Random => self.pick_random(&eligible),
        }
    }

    fn pick_round_robin(&mut self, eligible: &[bool]) -> Option<BackendIndex> {
        let mut total = 0i64;
        let mut best: Option<BackendIndex> = None;
        for (i, _) in eligible.iter().enumerate().filter(|(_, ok)| **ok) {
            let weight = i64::from(self.weights[i]);
            self.current[i] += weight;
            total += weight;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }

    fn pick_random(&mut self, eligible: &[bool]) -> Option<BackendIndex> {
        let total: u64 = self
            .weights
            .iter()
            .zip(eligible)
            .filter(|(_, ok)| **ok)
            .map(|(w, _)| u64::from(*w))
            .sum();
        if total == 0 {
            return None;
        }
        let mut ticket = self.rng.next() % total;
        for (i, weight) in self.weights.iter().enumerate() {
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
}

/// Small, fast, non-cryptographic generator: load balancing needs spread, not secrecy.
struct XorShift64(u64);

impl XorShift64 {
    fn new(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves.
        XorShift64(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn round_robin_follows_weights_exactly_and_interleaves() {
        let mut b = Balancer::new(Balancing::RoundRobin, &backends(&[5, 1, 1]), 1);
        let picks: Vec<_> = (0..7).map(|_| b.pick().unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(shares(&mut b, 700, 3), vec![500, 100, 100]);
    }

    #[test]
    fn random_follows_weights_roughly() {
        let mut b = Balancer::new(Balancing::Random, &backends(&[1, 2, 3]), 42);
        let counts = shares(&mut b, 60_000, 3);
        for (count, expected) in counts.iter().zip([10_000, 20_000, 30_000]) {
            assert!(count.abs_diff(expected) < 1_000, "{counts:?}");
        }
    }

    #[test]
    fn unhealthy_backends_are_skipped() {
        for algorithm in [Balancing::RoundRobin, Balancing::Random] {
            let mut b = Balancer::new(algorithm, &backends(&[1, 1, 1]), 3);
            b.set_health(&[true, false, true]);
            let counts = shares(&mut b, 300, 3);
            assert_eq!(counts[1], 0);
            b.set_health(&[false, false, false]);
            assert_eq!(b.pick(), None);
        }
    }

    #[test]
    fn excluded_and_ejected_backends_are_skipped_but_ejection_never_empties_the_pool() {
        let mut b = Balancer::new(Balancing::RoundRobin, &backends(&[1, 1]), 5);
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(b.pick_excluding(now, &[0]), Some(1));
        }
        b.outliers
            .record_failure(0, crate::outlier::Failure::Connect, now);
        for _ in 0..10 {
            assert_eq!(b.pick_excluding(now, &[]), Some(1));
        }
        b.outliers
            .record_failure(1, crate::outlier::Failure::Connect, now);
        // Both ejected: panic mode spreads traffic over the healthy set again.
        let picks: Vec<_> = (0..4)
            .map(|_| b.pick_excluding(now, &[]).unwrap())
            .collect();
        assert!(picks.contains(&0) && picks.contains(&1));
    }
}
