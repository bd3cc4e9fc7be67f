//! The first phases of a request: validate and translate its head, then route it.

use std::rc::Rc;

use super::Job;
use crate::http::{translate_request, ClientInfo};
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
        Err(malformed) => {
            stats.malformed_requests.incr();
            log::debug!("malformed request from {}: {malformed}", client.ip);
            return Job::Malformed(malformed);
        }
    };
    let host = head.uri.authority().map_or("", |a| a.as_str());
    match upstreams
        .router
        .route(host, head.uri.path().as_bytes(), head.method.as_str())
    {
        None => Job::NoRoute,
        Some(upstream) => Job::Proxy {
            head: Box::new(head),
            upstreams: upstreams.clone(),
            upstream,
            has_body,
        },
    }
}
