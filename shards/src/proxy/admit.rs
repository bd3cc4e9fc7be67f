//! The first phases of a request: validate and translate its head, route it, and hold it to
//! its pool's limits.

use std::rc::Rc;
use std::time::Instant;

use super::limits::{self, Exceeded, HeadSize};
use super::Job;
use crate::http::{translate_request, ClientInfo, Malformed};
use crate::stats::ShardStats;
use crate::upstream::Upstreams;

/// Decides what a new request stream gets: a `400` for a malformed head, a `404` without a
/// route, a `431`/`414`/`413`/`429` for a request over its pool's limits, else a proxied
/// exchange under the configuration current now (`upstreams`). While `shedding`, every request
/// that is well formed gets `503`.
pub fn admit<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    client: ClientInfo,
    has_body: bool,
    upstreams: &Rc<Upstreams>,
    shedding: bool,
    stats: &ShardStats,
) -> Job {
    let mut size = HeadSize::default();
    let measured = fields
        .into_iter()
        .inspect(|(name, value)| size.count(name, value));
    let head = match translate_request(measured, client) {
        Ok(head) => head,
        Err(malformed) => return refuse(malformed, client, stats),
    };
    let host = head.uri.authority().map_or("", |a| a.as_str());
    let grpc = || super::grpc::is_grpc(&head.headers);
    if shedding {
        stats.limited.count(Exceeded::Overload);
        return Job::Limited {
            reply: Exceeded::Overload.reply(),
            grpc: grpc(),
        };
    }
    let Some(index) =
        upstreams
            .router
            .route(host, head.uri.path().as_bytes(), head.method.as_str())
    else {
        return Job::NoRoute { grpc: grpc() };
    };
    let upstream = upstreams.get(index);
    size.uri_bytes = head.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    size.content_length = head.content_length;
    let exceeded = limits::check(&upstream.plan.limits, &size).or_else(|| {
        let mut rate = upstream.request_rate.borrow_mut();
        (!rate.is_off() && !rate.allow(client.ip, Instant::now())).then_some(Exceeded::Rate)
    });
    if let Some(exceeded) = exceeded {
        stats.limited.count(exceeded);
        log::debug!(
            "request from {} to upstream {}: {}",
            client.ip,
            upstream.plan.name,
            exceeded.reason()
        );
        return Job::Limited {
            reply: exceeded.reply(),
            grpc: grpc(),
        };
    }
    Job::Proxy {
        head: Box::new(head),
        upstreams: upstreams.clone(),
        upstream: index,
        has_body,
    }
}

/// A request found malformed before its fields could be admitted (by a protocol's own rules,
/// such as HTTP/1.1's single `Host`): counted and answered `400` like any other.
pub fn refuse(malformed: Malformed, client: ClientInfo, stats: &ShardStats) -> Job {
    stats.malformed_requests.incr();
    log::debug!("malformed request from {}: {malformed}", client.ip);
    Job::Malformed(malformed)
}
