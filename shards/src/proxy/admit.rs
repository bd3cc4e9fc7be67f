//! The first phases of a request: validate and translate its head, then route it.

use std::rc::Rc;

use super::Job;
use crate::http::{translate_request, ClientInfo, Malformed};
use crate::stats::ShardStats;
use crate::upstream::Upstreams;

/// Decides what a new request stream gets: a `400` for a malformed head, a `404` without a
/// route, else a proxied exchange under the configuration current now (`upstreams`).
pub fn admit<'a>(
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    client: ClientInfo,
    has_body: bool,
    upstreams: &Rc<Upstreams>,
    stats: &ShardStats,
) -> Job {
    let head = match translate_request(fields, client) {
        Ok(head) => head,
        Err(malformed) => return refuse(malformed, client, stats),
    };
    let host = head.uri.authority().map_or("", |a| a.as_str());
    match upstreams
        .router
        .route(host, head.uri.path().as_bytes(), head.method.as_str())
    {
        None => Job::NoRoute {
            grpc: super::grpc::is_grpc(&head.headers),
        },
        Some(upstream) => Job::Proxy {
            head: Box::new(head),
            upstreams: upstreams.clone(),
            upstream,
            has_body,
        },
    }
}

/// A request found malformed before its fields could be admitted (by a protocol's own rules,
/// such as HTTP/1.1's single `Host`): counted and answered `400` like any other.
pub fn refuse(malformed: Malformed, client: ClientInfo, stats: &ShardStats) -> Job {
    stats.malformed_requests.incr();
    log::debug!("malformed request from {}: {malformed}", client.ip);
    Job::Malformed(malformed)
}
