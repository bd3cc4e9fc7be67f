//! Checks of `[limits]` and `[upstream.NAME.limits]` (the listener's bounds on one request, and a
//! pool's overrides of them: a key an upstream leaves out keeps the listener's value), and of
//! `[overload]` (the loads at which a shard sheds work).

use super::*;
use shards::plan::{OverloadMarks, RequestLimits, RequestRate, FIELD_SECTION_CEILING};

/// Largest body limit accepted: 1 TiB is far above any upload a proxy should stream.
const MAX_BODY_LIMIT: i64 = 1 << 40;

/// `raw` applied over `inherited`, with problems reported under `base` (`limits` or
/// `upstream.NAME.limits`).
pub(super) fn check_limits(
    p: &mut Problems,
    base: &str,
    raw: Option<&RawLimits>,
    inherited: RequestLimits,
) -> RequestLimits {
    let mut limits = inherited;
    let Some(raw) = raw else {
        return limits;
    };
    let size = |p: &mut Problems, key: &str, value: Option<Int>, lo: i64, hi: i64| {
        value.and_then(|Int(v)| p.in_range(&format!("{base}.{key}"), v, lo, hi, ""))
    };
    // A quarter of quiche's ceiling: between ours and its, the client gets a `431` on the stream.
    let header_ceiling = (FIELD_SECTION_CEILING / 4) as i64;
    if let Some(v) = size(
        p,
        "max_header_bytes",
        raw.max_header_bytes,
        256,
        header_ceiling,
    ) {
        limits.max_header_bytes = v as usize;
    }
    if let Some(v) = size(p, "max_headers", raw.max_headers, 8, 10_000) {
        limits.max_headers = v as usize;
    }
    if let Some(v) = size(p, "max_uri_bytes", raw.max_uri_bytes, 64, header_ceiling) {
        limits.max_uri_bytes = v as usize;
    }
    if let Some(v) = size(
        p,
        "max_request_body_bytes",
        raw.max_request_body_bytes,
        0,
        MAX_BODY_LIMIT,
    ) {
        limits.max_body_bytes = Some(v as u64);
    }
    let rate = size(
        p,
        "requests_per_second",
        raw.requests_per_second,
        0,
        1_000_000,
    );
    let burst = size(p, "requests_burst", raw.requests_burst, 1, 1_000_000);
    match (rate, burst) {
        (Some(0), _) => limits.rate = None,
        (Some(per_second), burst) => {
            limits.rate = Some(RequestRate {
                per_second: per_second as u32,
                // A second's worth at once by default.
                burst: burst.map_or(per_second as u32, |b| b as u32),
            })
        }
        (None, Some(burst)) => match &mut limits.rate {
            Some(rate) => rate.burst = burst as u32,
            None => p.push(
                format!("{base}.requests_burst"),
                "has no effect without requests_per_second",
            ),
        },
        (None, None) => {}
    }
    limits
}

/// `[overload]`: each mark is optional; none at all turns shedding off.
pub(super) fn check_overload(p: &mut Problems, raw: Option<&RawOverload>) -> OverloadMarks {
    let Some(raw) = raw else {
        return OverloadMarks::default();
    };
    let mark = |p: &mut Problems, key: &str, value: Option<Int>, lo: i64, hi: i64, unit: &str| {
        value
            .and_then(|Int(v)| p.in_range(&format!("overload.{key}"), v, lo, hi, unit))
            .map(|v| v as u64)
    };
    OverloadMarks {
        connections: mark(p, "connections", raw.connections, 10, MAX_CONNECTIONS, ""),
        requests: mark(p, "requests", raw.requests, 10, MAX_CONNECTIONS, ""),
        // At least 64 MiB: below that, the shards' own buffers would read as overload.
        memory_bytes: mark(
            p,
            "memory_bytes",
            raw.memory_bytes,
            64 << 20,
            1 << 50,
            " bytes",
        ),
    }
}
