//! The shard's upstreams: routing table, balancers, retry budgets and backend connections.
//!
//! Built once per shard from the plan; every piece is the shard's own, so picking a backend and
//! finding a connection to it touch no shared state. Backends are reached through the
//! [`connector`] seam; [`pool`] implements it for cleartext HTTP/2 (h2c).

pub mod connector;
pub mod h2c;
pub mod pool;
pub mod retry_budget;
pub mod router;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::balance::Balancer;
use crate::control::HealthSnapshot;
use crate::plan::{ProxyPlan, UpstreamPlan};
use crate::stats::ShardStats;
use pool::BackendPool;
pub use retry_budget::RetryBudget;
use router::{Router, UpstreamIndex};

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
