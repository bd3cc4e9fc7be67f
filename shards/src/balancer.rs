//! Backend selection within one pool, per shard.
//!
//! Each shard owns one [`Balancer`] per upstream and decides alone: no shared counters, no locks.
//! Health comes from two places: the coordinator's snapshots (active checks) and this shard's own
//! outlier detection (see [`crate::outlier`]). A backend unhealthy by either is skipped by every
//! algorithm, except that when passive ejection alone would leave nothing to pick, ejections are
//! ignored (a "panic" mode, as Envoy does) rather than failing every request. Weights are
//! honoured by both algorithms.

use std::time::{Duration, Instant};

use crate::outlier::Outliers;
use crate::plan::{BackendPlan, Balancing};

/// Index of a backend within its upstream.
pub type BackendIndex = usize;

/// Maglev lookup table size: a prime well above any pool size, so each backend owns many slots
/// and removing one of N moves about 1/N of keys.
const MAGLEV_TABLE: usize = 65_537;
/// Response-time smoothing for `latency-aware` (weight of the newest sample).
const EWMA_ALPHA: f64 = 0.3;
/// Assumed response time of a backend with no sample yet, so new backends get tried.
const EWMA_UNKNOWN_US: f64 = 1_000.0;

pub struct Balancer {
    algorithm: Balancing,
    ids: Vec<String>,
    weights: Vec<u32>,
    healthy: Vec<bool>,
    /// Smooth weighted round-robin state (nginx's algorithm): each pick adds every eligible
    /// backend's weight to its current value, takes the largest, and subtracts the total from it.
    /// Picks interleave (a:5 b:1 c:1 gives a a b a c a a) instead of bursting.
    current: Vec<i64>,
    rng: XorShift64,
    pub outliers: Outliers,
    /// Requests in flight from this shard, per backend.
    in_flight: Vec<u32>,
    /// Smoothed time to response headers, in microseconds (0 = no sample yet).
    ewma_us: Vec<f64>,
    /// Consistent-hash table over the actively healthy backends (empty for other algorithms).
    maglev: Vec<u32>,
    /// Reused per pick: which backends may be picked.
    eligible: Vec<bool>,
}

impl Balancer {
    pub fn new(algorithm: Balancing, backends: &[BackendPlan], seed: u64) -> Self {
        let mut balancer = Balancer {
            algorithm,
            ids: backends.iter().map(|b| b.id.clone()).collect(),
            weights: backends.iter().map(|b| b.weight).collect(),
            healthy: vec![true; backends.len()],
            current: vec![0; backends.len()],
            rng: XorShift64::new(seed),
            outliers: Outliers::new(backends.len()),
            in_flight: vec![0; backends.len()],
            ewma_us: vec![0.0; backends.len()],
            maglev: Vec::new(),
            eligible: Vec::with_capacity(backends.len()),
        };
        balancer.rebuild_maglev();
        balancer
    }

    /// Replaces the health view. A length mismatch (never produced by the coordinator) leaves the
    /// missing backends healthy rather than dropping traffic.
    pub fn set_health(&mut self, healthy: &[bool]) {
        for (i, slot) in self.healthy.iter_mut().enumerate() {
            *slot = healthy.get(i).copied().unwrap_or(true);
        }
        self.rebuild_maglev();
    }

    fn rebuild_maglev(&mut self) {
        if matches!(self.algorithm, Balancing::ConsistentHash(_)) {
            self.maglev = maglev_table(&self.ids, &self.weights, &self.healthy);
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
        // Eligibility is computed into a buffer the balancer keeps, so a pick never allocates.
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
        let picked = match &self.algorithm {
            Balancing::RoundRobin => self.pick_round_robin(&eligible),
            Balancing::Random => self.pick_random(&eligible),
            Balancing::LeastRequest => self.pick_two(&mut eligible, |b, i| {
                f64::from(b.in_flight[i] + 1) / f64::from(b.weights[i])
            }),
            Balancing::LatencyAware => self.pick_two(&mut eligible, |b, i| {
                let ewma = if b.ewma_us[i] > 0.0 {
                    b.ewma_us[i]
                } else {
                    EWMA_UNKNOWN_US
                };
                ewma * f64::from(b.in_flight[i] + 1) / f64::from(b.weights[i])
            }),
            Balancing::ConsistentHash(_) => match key_hash {
                Some(hash) => self.pick_hashed(&eligible, hash),
                None => self.pick_random(&eligible),
            },
        };
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

    /// Power of two choices: two weighted-random candidates, the lower `score` wins.
    fn pick_two(
        &mut self,
        eligible: &mut [bool],
        score: impl Fn(&Balancer, BackendIndex) -> f64,
    ) -> Option<BackendIndex> {
        let first = self.pick_random(eligible)?;
        if eligible.iter().filter(|ok| **ok).count() < 2 {
            return Some(first);
        }
        eligible[first] = false;
        let second = self.pick_random(eligible);
        eligible[first] = true;
        let second = second?;
        Some(if score(self, second) < score(self, first) {
            second
        } else {
            first
        })
    }

    /// The backend owning the hash's slot; if it is ejected or already tried, the next slots'
    /// owners in table order, so the fallback is as stable as the first choice.
    fn pick_hashed(&mut self, eligible: &[bool], hash: u64) -> Option<BackendIndex> {
        if self.maglev.is_empty() {
            return None;
        }
        let start = (hash % self.maglev.len() as u64) as usize;
        (0..self.maglev.len())
            .map(|step| self.maglev[(start + step) % self.maglev.len()] as usize)
            .find(|&backend| eligible[backend])
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

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Builds a Maglev lookup table (Eisenbud et al., NSDI 2016) over the included backends. Each
/// backend's preference order comes from hashes of its id, so the table depends only on the ids,
/// weights and health, never on order of arrival. Weights are honoured by giving each backend
/// `weight / gcd` turns per round.
fn maglev_table(ids: &[String], weights: &[u32], include: &[bool]) -> Vec<u32> {
    let members: Vec<usize> = (0..ids.len()).filter(|&i| include[i]).collect();
    if members.is_empty() {
        return Vec::new();
    }
    let m = MAGLEV_TABLE as u64;
    let divisor = members.iter().fold(0, |g, &i| gcd(g, weights[i])).max(1);
    let turns: Vec<u32> = members
        .iter()
        .map(|&i| (weights[i] / divisor).clamp(1, 1000))
        .collect();
    let prefs: Vec<(u64, u64)> = members
        .iter()
        .map(|&i| {
            let offset = stable_hash(format!("offset:{}", ids[i]).as_bytes()) % m;
            let skip = stable_hash(format!("skip:{}", ids[i]).as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut table = vec![u32::MAX; MAGLEV_TABLE];
    let mut filled = 0;
    loop {
        for (k, &backend) in members.iter().enumerate() {
            for _ in 0..turns[k] {
                let (offset, skip) = prefs[k];
                loop {
                    let slot = ((offset + next[k] * skip) % m) as usize;
                    next[k] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = backend as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == MAGLEV_TABLE {
                    return table;
                }
            }
        }
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
            assert_eq!(b.pick_excluding(now, &[0], None), Some(1));
        }
        b.outliers
            .record_failure(0, crate::outlier::Failure::Connect, now);
        for _ in 0..10 {
            assert_eq!(b.pick_excluding(now, &[], None), Some(1));
        }
        b.outliers
            .record_failure(1, crate::outlier::Failure::Connect, now);
        // Both ejected: panic mode spreads traffic over the healthy set again.
        let picks: Vec<_> = (0..4)
            .map(|_| b.pick_excluding(now, &[], None).unwrap())
            .collect();
        assert!(picks.contains(&0) && picks.contains(&1));
    }

    fn named(n: usize) -> Vec<BackendPlan> {
        backends(&vec![100; n])
    }

    #[test]
    fn least_request_avoids_a_busy_backend() {
        let mut b = Balancer::new(Balancing::LeastRequest, &named(3), 9);
        for _ in 0..50 {
            b.started(0);
        }
        let counts = shares(&mut b, 3000, 3);
        // Backend 0 only wins when both choices are backend... never: P2C picks two distinct.
        assert_eq!(counts[0], 0, "{counts:?}");
    }

    #[test]
    fn latency_aware_prefers_the_fast_backend() {
        let mut b = Balancer::new(Balancing::LatencyAware, &named(2), 11);
        for _ in 0..10 {
            b.started(0);
            b.finished(0, Some(Duration::from_millis(50)));
            b.started(1);
            b.finished(1, Some(Duration::from_millis(1)));
        }
        let counts = shares(&mut b, 1000, 2);
        assert_eq!(counts, vec![0, 1000]);
    }

    fn hashed(n: usize) -> Balancer {
        Balancer::new(
            Balancing::ConsistentHash(crate::plan::HashKey::Path),
            &named(n),
            1,
        )
    }

    #[test]
    fn consistent_hash_is_the_same_everywhere_and_moves_about_one_nth() {
        let keys: Vec<u64> = (0..10_000)
            .map(|k| stable_hash(format!("user-{k}").as_bytes()))
            .collect();
        let now = Instant::now();
        let mut a = hashed(5);
        // Another shard or process: a different seed, the same table.
        let mut other = Balancer::new(
            Balancing::ConsistentHash(crate::plan::HashKey::Path),
            &named(5),
            777,
        );
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| a.pick_excluding(now, &[], Some(k)).unwrap())
            .collect();
        for (&k, &owner) in keys.iter().zip(&before) {
            assert_eq!(other.pick_excluding(now, &[], Some(k)), Some(owner));
        }
        let shares = (0..5)
            .map(|i| before.iter().filter(|&&o| o == i).count())
            .collect::<Vec<_>>();
        assert!(
            shares.iter().all(|&n| (1_700..=2_300).contains(&n)),
            "{shares:?}"
        );
        a.set_health(&[true, true, false, true, true]);
        let after: Vec<usize> = keys
            .iter()
            .map(|&k| a.pick_excluding(now, &[], Some(k)).unwrap())
            .collect();
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        assert!((1_500..=2_500).contains(&moved), "moved {moved} of 10000");
        // Maglev trades perfect minimal disruption for balance: nearly all moved keys are the
        // removed backend's own.
        let collateral = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| x != y && **x != 2)
            .count();
        assert!(
            collateral < 300,
            "{collateral} keys of surviving backends moved"
        );
    }

    #[test]
    fn consistent_hash_honours_weights() {
        let mut b = Balancer::new(
            Balancing::ConsistentHash(crate::plan::HashKey::Path),
            &backends(&[1, 3]),
            1,
        );
        let now = Instant::now();
        let heavy = (0..20_000u64)
            .filter(|k| b.pick_excluding(now, &[], Some(stable_hash(&k.to_le_bytes()))) == Some(1))
            .count();
        assert!((14_000..=16_000).contains(&heavy), "{heavy}");
    }
}
