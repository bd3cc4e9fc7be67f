//! `spooky-bench pick-cost`: nanoseconds per backend pick for each load-balancing type.
//!
//! Builds the data plane's own balancer (the code shards run) over N backends and times a
//! million picks per type, reporting the best of several rounds to keep a noisy machine's
//! interference out of the figure.

use std::hint::black_box;
use std::time::Instant;

use shards::balance::{stable_hash, Balancer};
use shards::plan::{BackendPlan, Balancing, HashKey};

/// Returns (type name, ns per pick) for every type, over `backends` backends.
pub fn measure(backends: usize, picks: u32, rounds: u32) -> Vec<(&'static str, f64)> {
    let plans: Vec<BackendPlan> = (0..backends)
        .map(|i| BackendPlan {
            id: format!("backend-{i}"),
            address: ([10, 0, 0, 1], 8000 + i as u16).into(),
            weight: 100 + (i as u32 % 3) * 50,
            health_check: None,
            name: None,
            stats_slot: i,
        })
        .collect();
    let kinds: [(&'static str, Balancing); 5] = [
        ("round-robin", Balancing::RoundRobin),
        ("random", Balancing::Random),
        ("least-request", Balancing::LeastRequest),
        ("consistent-hash", Balancing::ConsistentHash(HashKey::Path)),
        ("latency-aware", Balancing::LatencyAware),
    ];
    let keys: Vec<u64> = (0..1024u64)
        .map(|k| stable_hash(&k.to_le_bytes()))
        .collect();
    kinds
        .into_iter()
        .map(|(name, kind)| {
            let hashed = matches!(kind, Balancing::ConsistentHash(_));
            let mut balancer = Balancer::new(kind, &plans, 42);
            let mut best = f64::MAX;
            for _ in 0..rounds {
                let now = Instant::now();
                let started = Instant::now();
                for i in 0..picks {
                    let key = hashed.then(|| keys[i as usize & 1023]);
                    black_box(balancer.pick_excluding(now, &[], key));
                }
                best = best.min(started.elapsed().as_nanos() as f64 / f64::from(picks));
            }
            (name, best)
        })
        .collect()
}
