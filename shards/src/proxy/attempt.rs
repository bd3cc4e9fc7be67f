//! One attempt at a backend: open an exchange, stream the body up while the response comes down,
//! and keep the balancer's view of the backend current (requests in flight, response time,
//! passive health).

use std::cell::Cell;
use std::time::{Duration, Instant};

use futures_lite::future;

use super::decision::{AttemptFailure, Outcome};
use super::relay;
use crate::balance::outlier::Failure;
use crate::balance::BackendIndex;
use crate::http::{Downstream, RequestHead};
use crate::stats::ShardStats;
use crate::upstream::connector::{Connector, ExchangeFailure};
use crate::upstream::{BackendPool, Upstream};

/// Sends the request to `backend` and relays its response. `Err`: nothing reached the client.
pub async fn attempt<D: Downstream>(
    downstream: &D,
    head: &RequestHead,
    upstream: &Upstream,
    backend: BackendIndex,
    has_body: bool,
    body_started: &Cell<bool>,
    stats: &ShardStats,
) -> Result<Outcome, AttemptFailure> {
    let in_flight = InFlight::new(upstream, backend);
    let exchange = Exchange {
        downstream,
        head,
        upstream,
        has_body,
        body_started,
        stats,
        in_flight: &in_flight,
    };
    let learned;
    let pool = match &upstream.pools[backend] {
        BackendPool::Auto(auto) => match auto.pool().await {
            Some(pool) => {
                learned = pool;
                &learned
            }
            None => return Err(AttemptFailure::Exchange(ExchangeFailure::Connect)),
        },
        pool => pool,
    };
    match pool {
        BackendPool::Http2(pool) => exchange.run(pool).await,
        // Boxed: inline, the HTTP/1.1 exchange (its codec and upload state) would triple the
        // size of every attempt, HTTP/2 ones included.
        BackendPool::Http1(pool) => Box::pin(exchange.run(pool)).await,
        // `AutoPool::pool` gives the pool it learned, never another `Auto`.
        BackendPool::Auto(_) => Err(AttemptFailure::Exchange(ExchangeFailure::Connect)),
    }
}

/// One attempt's request and where its response goes, for whichever connector the backend has.
struct Exchange<'a, D> {
    downstream: &'a D,
    head: &'a RequestHead,
    upstream: &'a Upstream,
    has_body: bool,
    body_started: &'a Cell<bool>,
    stats: &'a ShardStats,
    in_flight: &'a InFlight<'a>,
}

impl<D: Downstream> Exchange<'_, D> {
    async fn run<C: Connector>(self, connector: &C) -> Result<Outcome, AttemptFailure> {
        let Exchange {
            downstream,
            head,
            upstream,
            has_body,
            body_started,
            stats,
            in_flight,
        } = self;
        let (pending, mut upload) = connector
            .open(head, has_body)
            .await
            .map_err(AttemptFailure::Exchange)?;
        let timeouts = &upstream.plan.timeouts;
        let download = relay::response(
            downstream,
            pending,
            timeouts.response_headers,
            timeouts.body_idle,
            &in_flight.latency,
        );
        if !has_body {
            return download.await;
        }
        // The upload only ends the race when it fails; a finished upload waits for the
        // response.
        let upload = async {
            let uploaded = relay::upload(
                downstream,
                &mut upload,
                head.content_length,
                body_started,
                timeouts.body_idle,
                stats,
            );
            match uploaded.await {
                Ok(()) => future::pending().await,
                Err(outcome) => Ok(outcome),
            }
        };
        future::or(download, upload).await
    }
}

/// Feeds one request's result to the shard's outlier detection for that backend.
pub fn record_health(
    stats: &ShardStats,
    upstream: &Upstream,
    backend: BackendIndex,
    failure: Option<Failure>,
) {
    let mut balancer = upstream.balancer.borrow_mut();
    let Some(failure) = failure else {
        balancer.outliers.record_success(backend);
        return;
    };
    if let Some(backoff) = balancer
        .outliers
        .record_failure(backend, failure, Instant::now())
    {
        let plan = &upstream.plan.backends[backend];
        log::warn!(
            "shard ejected backend {} of upstream {} for {backoff:?} after {failure:?}",
            plan.id,
            upstream.plan.name
        );
        if let Some(counters) = stats.backend(plan.stats_slot) {
            counters.ejections.incr();
        }
    }
}

/// Counts a request in its backend's in-flight total for as long as it lives (however the task
/// ends), and reports its time to response headers to the balancer.
struct InFlight<'a> {
    upstream: &'a Upstream,
    backend: BackendIndex,
    latency: Cell<Option<Duration>>,
}

impl<'a> InFlight<'a> {
    fn new(upstream: &'a Upstream, backend: BackendIndex) -> Self {
        upstream.balancer.borrow_mut().started(backend);
        InFlight {
            upstream,
            backend,
            latency: Cell::new(None),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.upstream
            .balancer
            .borrow_mut()
            .finished(self.backend, self.latency.get());
    }
}
