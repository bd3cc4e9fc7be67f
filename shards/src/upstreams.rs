//! The shard's view of its upstream pools: routing table, balancers and HTTP/2 pools.
//!
//! Built once per shard from the plan; every piece is the shard's own, so picking a backend and
//! finding a connection to it touch no shared state.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::balancer::Balancer;
use crate::control::HealthSnapshot;
use crate::plan::{ProxyPlan, UpstreamPlan};
use crate::pool::BackendPool;
use crate::router::{Router, UpstreamIndex};
use crate::stats::ShardStats;

pub struct Upstream {
    pub plan: UpstreamPlan,
    pub balancer: RefCell<Balancer>,
    pub retry_budget: RetryBudget,
    /// One pool per backend, in plan order.
    pub pools: Vec<Rc<BackendPool>>,
}

pub struct Upstreams {
    pub router: Router,
    pub list: Vec<Upstream>,
    health_version: std::cell::Cell<Option<u64>>,
}

impl Upstreams {
    /// Builds the shard's upstreams for `plan`. Pools of `previous` whose backend is unchanged
    /// (same address, counter slot and connect timeout) are kept, so a reload does not drop
    /// warm HTTP/2 connections.
    pub fn new(
        plan: &ProxyPlan,
        shard_index: usize,
        stats: &Arc<ShardStats>,
        previous: Option<&Upstreams>,
    ) -> Self {
        let reusable: Vec<&Rc<BackendPool>> = previous
            .into_iter()
            .flat_map(|p| p.list.iter())
            .flat_map(|u| u.pools.iter())
            .collect();
        let list = plan
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, upstream)| Upstream {
                plan: upstream.clone(),
                retry_budget: RetryBudget::new(upstream.retry_budget),
                // Different seeds per shard and upstream keep random picks uncorrelated.
                balancer: RefCell::new(Balancer::new(
                    upstream.balancing.clone(),
                    &upstream.backends,
                    seed(shard_index, i),
                )),
                pools: upstream
                    .backends
                    .iter()
                    .map(|b| {
                        let connect = upstream.timeouts.connect;
                        reusable
                            .iter()
                            .find(|pool| pool.serves(b.address, b.stats_slot, connect))
                            .map(|pool| Rc::clone(pool))
                            .unwrap_or_else(|| {
                                BackendPool::new(b.address, b.stats_slot, connect, stats.clone())
                            })
                    })
                    .collect(),
            })
            .collect();
        Upstreams {
            router: Router::new(&plan.upstreams),
            list,
            health_version: std::cell::Cell::new(None),
        }
    }

    pub fn get(&self, index: UpstreamIndex) -> &Upstream {
        &self.list[index]
    }

    /// Applies a health snapshot unless an equal or newer one was already applied.
    pub fn apply_health(&self, snapshot: &HealthSnapshot) -> bool {
        if self
            .health_version
            .get()
            .is_some_and(|v| v >= snapshot.version)
        {
            return false;
        }
        self.health_version.set(Some(snapshot.version));
        for (upstream, healthy) in self.list.iter().zip(&snapshot.healthy) {
            upstream.balancer.borrow_mut().set_health(healthy);
        }
        true
    }
}

fn seed(shard_index: usize, upstream_index: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos
        ^ ((shard_index as u64) << 32)
        ^ (upstream_index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Limits retries to a share of requests, per shard and upstream: each request earns `ratio` of
/// a token, each retry spends one. A small reserve lets a quiet upstream still retry.
pub struct RetryBudget {
    ratio: f64,
    tokens: std::cell::Cell<f64>,
}

/// Retries allowed before any request earned tokens, and the most that can be saved up.
const RETRY_RESERVE: f64 = 10.0;
const RETRY_CEILING: f64 = 100.0;

impl RetryBudget {
    pub fn new(ratio: f64) -> Self {
        RetryBudget {
            ratio,
            tokens: std::cell::Cell::new(RETRY_RESERVE),
        }
    }

    pub fn on_request(&self) {
        self.tokens
            .set((self.tokens.get() + self.ratio).min(RETRY_CEILING));
    }

    pub fn try_spend(&self) -> bool {
        let tokens = self.tokens.get();
        if tokens >= 1.0 {
            self.tokens.set(tokens - 1.0);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RetryBudget;

    #[test]
    fn budget_allows_about_the_configured_share() {
        let budget = RetryBudget::new(0.2);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.on_request();
            if budget.try_spend() {
                retries += 1;
            }
        }
        // 10 reserve tokens plus 20% of 1000 requests.
        assert!((200..=211).contains(&retries), "{retries}");
    }
}
