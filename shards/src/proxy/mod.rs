//! One request's life, whatever protocol it came in on: admit (validate, translate) -> route ->
//! select a backend -> attempt (retrying what may be retried) -> respond -> log.
//!
//! Each request runs as its own task on the shard, against a [`Downstream`] (the client's stream)
//! and the upstream [`crate::upstream::connector::Connector`] of the backend it picked. The
//! decisions (retry or not, which status) are plain functions in [`decision`]; the byte moving is
//! in [`relay`].

mod access_log;
pub mod admit;
mod attempt;
pub mod decision;
mod grpc;
pub mod limits;
mod relay;
mod tally;
pub mod tunnel;

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_lite::future;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::HeaderMap;

use crate::balance::hash_key::request_hash;
use crate::balance::BackendIndex;
use crate::http::{Abort, Downstream, Malformed, RequestHead};
use crate::plan::Balancing;
use crate::rt;
use crate::stats::ShardStats;
use crate::upstream::router::UpstreamIndex;
use crate::upstream::{Upstream, Upstreams};
pub use admit::admit;
use decision::{LocalReply, Outcome, RetryFacts};
use tally::Tallied;

/// What the shard's proxy needs from the shard: counters and the settings that change on reload.
pub struct ProxyContext {
    pub stats: Arc<ShardStats>,
    pub shard_index: usize,
    /// Whether to write an access log line per request (`log.access_log`).
    pub access_log: Cell<bool>,
}

/// What the task should do with a new request stream.
pub enum Job {
    Malformed(Malformed),
    NoRoute {
        /// A gRPC request, answered in gRPC's terms.
        grpc: bool,
    },
    /// Over one of its pool's limits (`431`, `414`, `413`, `429`).
    Limited {
        reply: LocalReply,
        grpc: bool,
    },
    Proxy {
        head: Box<RequestHead>,
        /// The configuration the request started under.
        upstreams: std::rc::Rc<Upstreams>,
        upstream: UpstreamIndex,
        /// Body or trailers follow the request head.
        has_body: bool,
    },
}

/// Which upstream and backend served the request, for the access log.
#[derive(Default)]
struct ServedBy {
    upstream: Option<(std::rc::Rc<Upstreams>, UpstreamIndex)>,
    backend: Option<BackendIndex>,
}

/// Serves one request to the end. Dropping `downstream` afterwards releases the client stream.
pub async fn serve<D: Downstream>(context: &ProxyContext, downstream: D, job: Job) {
    let started = Instant::now();
    let stats = &*context.stats;
    stats.requests.get(downstream.protocol()).incr();
    stats.streams_active.incr();
    let tallied = Tallied::new(&downstream, stats);
    let served_by = RefCell::new(ServedBy::default());
    let work = async {
        match job {
            Job::Malformed(malformed) => {
                let message = format!("malformed request: {malformed}");
                reply(&tallied, 400, &message, None, false).await
            }
            Job::NoRoute { grpc } => local(&tallied, decision::NO_ROUTE, grpc).await,
            Job::Limited { reply, grpc } => local(&tallied, reply, grpc).await,
            Job::Proxy {
                head,
                upstreams,
                upstream,
                has_body,
            } => {
                served_by.borrow_mut().upstream = Some((upstreams.clone(), upstream));
                let upstream = upstreams.get(upstream);
                match head.protocol.as_deref() {
                    None => {}
                    Some("websocket") => {
                        // Boxed, like the exchange below: a tunnel's state is large and rare.
                        let tunnel = tunnel::serve_extended(&tallied, &head, upstream, stats);
                        return Box::pin(tunnel).await;
                    }
                    Some(_) => {
                        let message = "extended CONNECT is supported for websocket only";
                        return reply(&tallied, 501, message, None, false).await;
                    }
                }
                let grpc = grpc::is_grpc(&head.headers);
                tallied.max_body.set(upstream.plan.limits.max_body_bytes);
                // Boxed: the exchange's state (HTTP/2 or HTTP/1.1 stream, relay, retries) is a
                // few kilobytes, and inline it would make every request task that large, copied
                // whole each time the task is spawned (memcpy was 12% of a shard at full load).
                let proxied = Box::pin(proxy(
                    &tallied, &head, upstream, has_body, stats, &served_by,
                ));
                let outcome = match upstream.plan.timeouts.total {
                    None => proxied.await,
                    Some(limit) => match rt::within(limit, proxied).await {
                        Some(outcome) => outcome,
                        None => total_timeout(&tallied, grpc).await,
                    },
                };
                match outcome {
                    Outcome::BodyTooLarge => body_too_large(&tallied, grpc, stats).await,
                    outcome => outcome,
                }
            }
        }
    };
    let gone = async {
        tallied.gone().await;
        Outcome::ClientGone
    };
    let outcome = future::or(work, gone).await;
    stats
        .request_duration
        .record(started.elapsed().as_micros() as u64);
    if context.access_log.get() {
        access_log::write(context, &tallied, &served_by.borrow(), outcome, started);
    }
    match outcome {
        Outcome::Responded(_) => {}
        Outcome::ClientGone => stats.client_cancels.incr(),
        Outcome::Reset => stats.streams_reset.incr(),
        Outcome::BodyTooLarge => {}
    }
    stats.streams_active.sub(1);
}

/// The upload crossed `max_request_body_bytes` (the backend exchange is already cancelled): a
/// `413` if nothing was sent yet, else a stream reset. Either way the rest of the body is not
/// read; HTTP/3 asks the client to stop sending with H3_NO_ERROR (RFC 9114 §4.1).
async fn body_too_large<D: Downstream>(
    downstream: &Tallied<'_, D>,
    grpc: bool,
    stats: &ShardStats,
) -> Outcome {
    stats.limited.count(limits::Exceeded::Body);
    if downstream.response_started() {
        downstream.abort(Abort::Cancelled);
        return Outcome::Reset;
    }
    local(downstream, limits::Exceeded::Body.reply(), grpc).await
}

/// The request outlived `timeouts.total`: a 504 if nothing was sent yet, else a stream reset.
async fn total_timeout<D: Downstream>(downstream: &Tallied<'_, D>, grpc: bool) -> Outcome {
    if downstream.response_started() {
        downstream.abort(Abort::Internal);
        Outcome::Reset
    } else {
        local(downstream, decision::REQUEST_TIMED_OUT, grpc).await
    }
}

async fn local<D: Downstream>(downstream: &D, reply_with: LocalReply, grpc: bool) -> Outcome {
    reply(
        downstream,
        reply_with.status,
        reply_with.message,
        reply_with.retry_after,
        grpc,
    )
    .await
}

/// Sends a response generated by the proxy itself: a small plain-text page, or for a gRPC
/// request a Trailers-Only gRPC reply ([`grpc`]). Either way the outcome records `status`, the
/// HTTP status it stands for, so that metrics and logs count a gRPC client's 502 as a 502.
async fn reply<D: Downstream>(
    downstream: &D,
    status: u16,
    message: &str,
    retry_after: Option<&'static str>,
    grpc: bool,
) -> Outcome {
    if grpc {
        let headers = grpc::trailers_only(status, message);
        return match downstream.send_head(200, &headers, true).await {
            Ok(()) => Outcome::Responded(status),
            Err(_) => Outcome::ClientGone,
        };
    }
    let body = format!("{message}\n");
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(seconds) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from_static(seconds));
    }
    if downstream.send_head(status, &headers, false).await.is_err() {
        return Outcome::ClientGone;
    }
    match downstream.write_body(Bytes::from(body), true).await {
        Ok(()) => Outcome::Responded(status),
        Err(_) => Outcome::ClientGone,
    }
}

/// Selects backends and makes attempts until one answers or the decisions say to reply.
async fn proxy<D: Downstream>(
    downstream: &D,
    head: &RequestHead,
    upstream: &Upstream,
    has_body: bool,
    stats: &ShardStats,
    served_by: &RefCell<ServedBy>,
) -> Outcome {
    upstream.retry_budget.on_request();
    // Set once any request body byte was taken from the client: from then on the request cannot
    // be replayed elsewhere, because the body was not kept.
    let body_started = Cell::new(false);
    let mut tried: Vec<BackendIndex> = Vec::new();
    let key_hash = match &upstream.plan.balancing {
        Balancing::ConsistentHash(key) => request_hash(key, head),
        _ => None,
    };
    loop {
        let Some(backend) = select(upstream, &tried, key_hash) else {
            let grpc = grpc::is_grpc(&head.headers);
            return local(downstream, decision::no_backend(!tried.is_empty()), grpc).await;
        };
        tried.push(backend);
        served_by.borrow_mut().backend = Some(backend);
        let attempted = attempt::attempt(
            downstream,
            head,
            upstream,
            backend,
            has_body,
            &body_started,
            stats,
        )
        .await;
        let counters = stats.backend(upstream.plan.backends[backend].stats_slot);
        let failure = match attempted {
            Ok(outcome) => {
                attempt::record_health(stats, upstream, backend, decision::outcome_health(outcome));
                if let Some(counters) = counters {
                    match outcome {
                        Outcome::Responded(status) => counters.count_status(status),
                        Outcome::Reset | Outcome::ClientGone => counters.failures.incr(),
                        // The client's fault, not the backend's.
                        Outcome::BodyTooLarge => {}
                    }
                }
                return outcome;
            }
            Err(failure) => failure,
        };
        attempt::record_health(
            stats,
            upstream,
            backend,
            Some(decision::failure_health(failure)),
        );
        let facts = RetryFacts {
            method: &head.method,
            has_body,
            body_started: body_started.get(),
            attempts: tried.len(),
            retries: upstream.plan.retries,
        };
        match decision::after_failure(failure, &facts, &upstream.retry_budget) {
            None => {
                stats.retries.incr();
                log::debug!(
                    "retrying request to upstream {} after {failure:?} from {}",
                    upstream.plan.name,
                    upstream.plan.backends[backend].id
                );
            }
            Some(reply_with) => {
                if let Some(counters) = counters {
                    counters.count_status(reply_with.status);
                }
                return local(downstream, reply_with, grpc::is_grpc(&head.headers)).await;
            }
        }
    }
}

/// Prefers a backend not tried yet; with none left, the same one may take the retry (a refused
/// stream on a busy backend often succeeds on a second try).
fn select(
    upstream: &Upstream,
    tried: &[BackendIndex],
    key_hash: Option<u64>,
) -> Option<BackendIndex> {
    let mut balancer = upstream.balancer.borrow_mut();
    let now = Instant::now();
    balancer.pick_excluding(now, tried, key_hash).or_else(|| {
        (!tried.is_empty())
            .then(|| balancer.pick_excluding(now, &[], key_hash))
            .flatten()
    })
}
