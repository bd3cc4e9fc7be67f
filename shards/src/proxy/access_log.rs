//! The access log line of a finished request (`log.access_log`), under the `spooky::access` log
//! target so that operators can route it apart from the diagnostic log.

use std::time::Instant;

use super::decision::Outcome;
use super::tally::Tallied;
use super::{ProxyContext, ServedBy};
use crate::http::Downstream;

pub(super) fn write<D: Downstream>(
    context: &ProxyContext,
    downstream: &Tallied<'_, D>,
    served_by: &ServedBy,
    outcome: Outcome,
    started: Instant,
) {
    let upstream = served_by
        .upstream
        .as_ref()
        .map(|(upstreams, index)| upstreams.get(*index));
    let upstream_name = upstream.map_or("-", |u| u.plan.name.as_str());
    let backend = upstream
        .zip(served_by.backend)
        .map_or("-", |(u, b)| u.plan.backends[b].id.as_str());
    log::info!(
        target: "spooky::access",
        "client={} protocol={} stream={} upstream={upstream_name} backend={backend} status={} bytes_in={} bytes_out={} duration_us={} outcome={} shard={}",
        downstream.peer(),
        downstream.protocol().as_str(),
        downstream.request_id(),
        downstream.status.get(),
        downstream.bytes_in.get(),
        downstream.bytes_out.get(),
        started.elapsed().as_micros(),
        outcome.describe(),
        context.shard_index,
    );
}
