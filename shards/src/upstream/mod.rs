//! The shard's upstreams: routing table, balancers, retry budgets and backend connections.
//!
//! Built once per shard from the plan; every piece is the shard's own, so picking a backend and
//! finding a connection to it touch no shared state. Backends are reached through the
//! [`connector`] seam, which [`http2`] implements for cleartext HTTP/2 and [`http1`] for HTTP/1.1.

pub mod auto;
pub mod connector;
pub mod dial;
pub mod http1;
pub mod http2;
pub mod retry_budget;
pub mod router;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::balance::Balancer;
use crate::control::HealthSnapshot;
use crate::net::source_limit::SourceLimiter;
use crate::plan::{BackendPlan, BackendProtocol, ProxyPlan, UpstreamPlan};
use crate::stats::ShardStats;
use dial::Dialer;
use http1::pool::Http1Pool;
use http2::pool::Http2Pool;
pub use retry_budget::RetryBudget;
use router::{Router, UpstreamIndex};

pub struct Upstream {
    pub plan: UpstreamPlan,
    pub balancer: RefCell<Balancer>,
    pub retry_budget: RetryBudget,
    /// Per-client request buckets (`limits.requests_per_second`); empty when unlimited. Built
    /// anew on reload, so a reload refills every bucket.
    pub request_rate: RefCell<SourceLimiter>,
    /// One pool per backend, in plan order.
    pub pools: Vec<BackendPool>,
    /// What each pool was built for, so a reload keeps the pools of unchanged backends.
    pool_keys: Vec<PoolKey>,
}

/// Everything a backend's pool depends on: equal keys mean the pool can be kept as it is.
#[derive(PartialEq)]
struct PoolKey {
    address: std::net::SocketAddr,
    host: Option<String>,
    protocol: BackendProtocol,
    tls: Option<crate::tls::backend::BackendTls>,
    stats_slot: usize,
    connect_timeout: std::time::Duration,
}

impl PoolKey {
    fn new(upstream: &UpstreamPlan, backend: &BackendPlan) -> PoolKey {
        PoolKey {
            address: backend.address,
            host: backend.name.as_ref().map(|n| n.host.clone()),
            protocol: upstream.protocol,
            tls: upstream.tls.clone(),
            stats_slot: backend.stats_slot,
            connect_timeout: upstream.timeouts.connect,
        }
    }
}

/// One shard's connections to one backend, in the upstream's protocol.
#[derive(Clone)]
pub enum BackendPool {
    Http2(Rc<Http2Pool>),
    Http1(Rc<Http1Pool>),
    Auto(Rc<auto::AutoPool>),
}

impl BackendPool {
    fn new(upstream: &UpstreamPlan, backend: &BackendPlan, stats: &Arc<ShardStats>) -> BackendPool {
        let host = backend.name.as_ref().map(|n| n.host.as_str());
        let dialer = Dialer::new(backend.address, host, upstream.tls.as_ref());
        let connect_timeout = upstream.timeouts.connect;
        match upstream.protocol {
            BackendProtocol::Http2 => BackendPool::Http2(Http2Pool::new(
                dialer,
                backend.stats_slot,
                connect_timeout,
                stats.clone(),
            )),
            BackendProtocol::Http1(keepalive) => BackendPool::Http1(Http1Pool::new(
                dialer,
                backend.stats_slot,
                connect_timeout,
                keepalive,
                stats.clone(),
            )),
            BackendProtocol::Auto(keepalive) => match &upstream.tls {
                Some(tls) => BackendPool::Auto(auto::AutoPool::new(
                    backend.address,
                    host,
                    tls,
                    backend.stats_slot,
                    connect_timeout,
                    keepalive,
                    stats.clone(),
                )),
                // Validation gives `auto` TLS always; without it, HTTP/1.1 is what is left.
                None => BackendPool::Http1(Http1Pool::new(
                    dialer,
                    backend.stats_slot,
                    connect_timeout,
                    keepalive,
                    stats.clone(),
                )),
            },
        }
    }
}

pub struct Upstreams {
    pub router: Router,
    pub list: Vec<Upstream>,
    health_version: std::cell::Cell<Option<u64>>,
}

impl Upstreams {
    /// Builds the shard's upstreams for `plan`. Pools of `previous` whose backend is unchanged
    /// (same protocol, address, TLS, counter slot and connection settings) are kept, so a reload
    /// does not drop warm connections.
    pub fn new(
        plan: &ProxyPlan,
        shard_index: usize,
        stats: &Arc<ShardStats>,
        previous: Option<&Upstreams>,
    ) -> Self {
        let reusable: Vec<(&PoolKey, &BackendPool)> = previous
            .into_iter()
            .flat_map(|p| p.list.iter())
            .flat_map(|u| u.pool_keys.iter().zip(&u.pools))
            .collect();
        let list = plan
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, upstream)| {
                let pool_keys: Vec<PoolKey> = upstream
                    .backends
                    .iter()
                    .map(|b| PoolKey::new(upstream, b))
                    .collect();
                let pools = upstream
                    .backends
                    .iter()
                    .zip(&pool_keys)
                    .map(|(b, key)| {
                        reusable
                            .iter()
                            .find(|(kept, _)| *kept == key)
                            .map(|(_, pool)| (*pool).clone())
                            .unwrap_or_else(|| BackendPool::new(upstream, b, stats))
                    })
                    .collect();
                Upstream {
                    plan: upstream.clone(),
                    retry_budget: RetryBudget::new(upstream.retry_budget),
                    request_rate: RefCell::new(match upstream.limits.rate {
                        Some(rate) => {
                            SourceLimiter::new(rate.per_second, rate.burst, Instant::now())
                        }
                        None => SourceLimiter::new(0, 0, Instant::now()),
                    }),
                    // Different seeds per shard and upstream keep random picks uncorrelated.
                    balancer: RefCell::new(Balancer::new(
                        upstream.balancing.clone(),
                        &upstream.backends,
                        seed(shard_index, i),
                    )),
                    pools,
                    pool_keys,
                }
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
