//! Prometheus text exposition of the shards' counters and the process's own figures.
//!
//! Shards only ever write their own counters; this module reads all of them on each scrape and
//! sums or labels them, on the admin thread, so scrapes cost the request path nothing.

use std::fmt::Write as _;
use std::sync::Arc;

use shards::http::Protocol;
use shards::plan::ProxyPlan;
use shards::stats::{Counter, DURATION_BUCKETS_US};
use shards::ShardStats;

/// What a scrape reads.
pub struct MetricsSource<'a> {
    pub shards: &'a [Arc<ShardStats>],
    pub plan: &'a ProxyPlan,
    /// Health per upstream then backend, as last published to the shards.
    pub healthy: &'a [Vec<bool>],
    pub config_generation: u64,
}

/// Renders every metric in Prometheus text format 0.0.4.
pub fn render(source: &MetricsSource<'_>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    shard_counters(&mut out, source.shards);
    backend_metrics(&mut out, source);
    duration_histogram(&mut out, source.shards);
    process_metrics(&mut out, source.config_generation);
    out
}

/// A label value as the exposition format requires: backslash, double quote and line feed
/// escaped (Prometheus text format 0.0.4).
fn label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    let mut escaped = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped.into()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A per-shard series: one sample per shard, labelled `shard`.
fn per_shard(
    out: &mut String,
    shards: &[Arc<ShardStats>],
    name: &str,
    kind: &str,
    help: &str,
    field: impl Fn(&ShardStats) -> &Counter,
) {
    header(out, name, kind, help);
    for (index, stats) in shards.iter().enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{index}\"}} {}", field(stats).get());
    }
}

fn shard_counters(out: &mut String, shards: &[Arc<ShardStats>]) {
    per_shard(
        out,
        shards,
        "spooky_shard_up",
        "gauge",
        "1 while the shard serves traffic.",
        |s| &s.running,
    );
    per_shard(
        out,
        shards,
        "spooky_quic_connections_active",
        "gauge",
        "Open QUIC connections.",
        |s| &s.connections_active,
    );
    per_shard(
        out,
        shards,
        "spooky_quic_connections_accepted_total",
        "counter",
        "QUIC connections accepted.",
        |s| &s.connections_accepted,
    );
    per_shard(
        out,
        shards,
        "spooky_quic_handshakes_total",
        "counter",
        "QUIC handshakes completed.",
        |s| &s.handshakes_completed,
    );
    per_shard(
        out,
        shards,
        "spooky_quic_handshake_failures_total",
        "counter",
        "QUIC connections closed before their handshake completed.",
        |s| &s.handshake_failures,
    );
    per_shard(
        out,
        shards,
        "spooky_http3_streams_active",
        "gauge",
        "Requests in progress.",
        |s| &s.streams_active,
    );
    let name = "spooky_requests_total";
    header(
        out,
        name,
        "counter",
        "Requests received, by the protocol they arrived in (h3, h2, http/1.1).",
    );
    for (index, stats) in shards.iter().enumerate() {
        for protocol in Protocol::ALL {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{index}\",protocol=\"{}\"}} {}",
                protocol.as_str(),
                stats.requests.get(protocol).get()
            );
        }
    }
    per_shard(
        out,
        shards,
        "spooky_tcp_connections_accepted_total",
        "counter",
        "Connections accepted by the TCP+TLS listener.",
        |s| &s.tcp_connections_accepted,
    );
    per_shard(
        out,
        shards,
        "spooky_websocket_tunnels_total",
        "counter",
        "WebSocket tunnels opened (the backend answered 101).",
        |s| &s.websocket_tunnels,
    );
    per_shard(
        out,
        shards,
        "spooky_websocket_tunnels_active",
        "gauge",
        "WebSocket tunnels open now.",
        |s| &s.websocket_tunnels_active,
    );
    per_shard(
        out,
        shards,
        "spooky_redirects_total",
        "counter",
        "Plain-HTTP requests redirected to HTTPS.",
        |s| &s.redirects,
    );
    per_shard(
        out,
        shards,
        "spooky_tcp_connections_active",
        "gauge",
        "Open connections on the TCP+TLS listener.",
        |s| &s.tcp_connections_active,
    );
    per_shard(
        out,
        shards,
        "spooky_requests_malformed_total",
        "counter",
        "Requests rejected as malformed.",
        |s| &s.malformed_requests,
    );
    header(
        out,
        "spooky_requests_limited_total",
        "counter",
        "Requests answered 431, 414, 413 or 429 for breaking a limit, by reason.",
    );
    for (index, stats) in shards.iter().enumerate() {
        for exceeded in shards::proxy::limits::Exceeded::ALL {
            let _ = writeln!(
                out,
                "spooky_requests_limited_total{{shard=\"{index}\",reason=\"{}\"}} {}",
                exceeded.reason(),
                stats.limited.get(exceeded).get()
            );
        }
    }
    per_shard(
        out,
        shards,
        "spooky_requests_cancelled_total",
        "counter",
        "Requests the client cancelled before completion.",
        |s| &s.client_cancels,
    );
    per_shard(
        out,
        shards,
        "spooky_streams_reset_total",
        "counter",
        "Client streams reset after a backend failure mid-response.",
        |s| &s.streams_reset,
    );
    per_shard(
        out,
        shards,
        "spooky_datagrams_received_total",
        "counter",
        "UDP datagrams received.",
        |s| &s.datagrams_received,
    );
    per_shard(
        out,
        shards,
        "spooky_datagrams_sent_total",
        "counter",
        "UDP datagrams sent.",
        |s| &s.datagrams_sent,
    );
    header(
        out,
        "spooky_datagrams_dropped_total",
        "counter",
        "UDP datagrams dropped, by reason.",
    );
    for (index, stats) in shards.iter().enumerate() {
        for (reason, counter) in [
            ("unknown_connection", &stats.datagrams_dropped_unknown),
            ("malformed", &stats.datagrams_dropped_malformed),
            ("send_failed", &stats.datagrams_send_failed),
            ("foreign_id", &stats.datagrams_dropped_foreign_id),
            ("handoff_failed", &stats.datagrams_dropped_handoff),
            ("initial_too_small", &stats.refusals.too_small),
            ("draining", &stats.refusals.draining),
            ("connection_limit", &stats.refusals.connection_limit),
            ("handshake_limit", &stats.refusals.handshake_limit),
            ("source_rate", &stats.refusals.source_rate),
            ("invalid_token", &stats.refusals.invalid_token),
            ("overload", &stats.refusals.overload),
        ] {
            let _ = writeln!(
                out,
                "spooky_datagrams_dropped_total{{shard=\"{index}\",reason=\"{reason}\"}} {}",
                counter.get()
            );
        }
    }
    per_shard(
        out,
        shards,
        "spooky_overload_stage",
        "gauge",
        "Overload stage: 0 normal, 1 Retry every new connection, 2 refuse new connections, 3 answer new requests 503.",
        |s| &s.overload_stage,
    );
    per_shard(
        out,
        shards,
        "spooky_tcp_connections_refused_total",
        "counter",
        "TCP connections closed at accept because the shard refuses new connections (overload).",
        |s| &s.tcp_connections_refused,
    );
    per_shard(
        out,
        shards,
        "spooky_quic_retries_sent_total",
        "counter",
        "Retry packets sent to make new clients prove their address (RFC 9000 §8.1.2).",
        |s| &s.retries_sent,
    );
    per_shard(
        out,
        shards,
        "spooky_quic_handshake_timeouts_total",
        "counter",
        "Connections dropped because their handshake outlived quic.handshake_timeout_ms.",
        |s| &s.handshake_timeouts,
    );
    per_shard(
        out,
        shards,
        "spooky_quic_handshakes_active",
        "gauge",
        "QUIC connections still in their handshake.",
        |s| &s.handshakes_active,
    );
    per_shard(
        out,
        shards,
        "spooky_quic_unvalidated_connections",
        "gauge",
        "Connections in their handshake whose client address is not validated yet.",
        |s| &s.unvalidated_active,
    );
    header(
        out,
        "spooky_quic_unvalidated_bytes_total",
        "counter",
        "Bytes exchanged with unvalidated addresses; sent stays at most 3x received (RFC 9000 §8.1).",
    );
    for (index, stats) in shards.iter().enumerate() {
        for (direction, counter) in [
            ("received", &stats.unvalidated_bytes_received),
            ("sent", &stats.unvalidated_bytes_sent),
        ] {
            let _ = writeln!(
                out,
                "spooky_quic_unvalidated_bytes_total{{shard=\"{index}\",direction=\"{direction}\"}} {}",
                counter.get()
            );
        }
    }
    per_shard(
        out,
        shards,
        "spooky_datagrams_handed_off_total",
        "counter",
        "Datagrams passed to the shard owning their connection (client address changed).",
        |s| &s.datagrams_handed_off,
    );
    per_shard(
        out,
        shards,
        "spooky_shard_stalls_total",
        "counter",
        "Times the shard's event loop stood still for 1 s or more.",
        |s| &s.stalls,
    );
    per_shard(
        out,
        shards,
        "spooky_shard_stalled",
        "gauge",
        "1 while the shard's event loop stands still.",
        |s| &s.stalled,
    );
    per_shard(
        out,
        shards,
        "spooky_gso_sends_total",
        "counter",
        "Segmented UDP sends (GSO), each carrying several datagrams.",
        |s| &s.gso_sends,
    );
    per_shard(
        out,
        shards,
        "spooky_version_negotiations_total",
        "counter",
        "Version Negotiation packets sent.",
        |s| &s.version_negotiations,
    );
    per_shard(
        out,
        shards,
        "spooky_bytes_received_total",
        "counter",
        "UDP payload bytes received.",
        |s| &s.bytes_received,
    );
    per_shard(
        out,
        shards,
        "spooky_bytes_sent_total",
        "counter",
        "UDP payload bytes sent.",
        |s| &s.bytes_sent,
    );
    per_shard(
        out,
        shards,
        "spooky_retries_total",
        "counter",
        "Requests sent again to another backend after an unprocessed failure.",
        |s| &s.retries,
    );
    per_shard(
        out,
        shards,
        "spooky_backend_connects_total",
        "counter",
        "HTTP/2 connections opened to backends.",
        |s| &s.backend_connects,
    );
    per_shard(
        out,
        shards,
        "spooky_backend_connect_failures_total",
        "counter",
        "Failed attempts to connect to a backend.",
        |s| &s.backend_connect_failures,
    );
}

fn backend_metrics(out: &mut String, source: &MetricsSource<'_>) {
    header(
        out,
        "spooky_backend_responses_total",
        "counter",
        "Responses by upstream, backend and status class (summed over shards).",
    );
    for upstream in &source.plan.upstreams {
        for (b, backend) in upstream.backends.iter().enumerate() {
            if !first_endpoint(upstream, b) {
                continue;
            }
            let sum = |pick: &dyn Fn(&shards::stats::BackendStats) -> &Counter| -> u64 {
                source
                    .shards
                    .iter()
                    .filter_map(|s| s.backend(backend.stats_slot))
                    .map(|c| pick(c).get())
                    .sum()
            };
            for (class, value) in [
                ("2xx", sum(&|c| &c.responses.class_2xx)),
                ("3xx", sum(&|c| &c.responses.class_3xx)),
                ("4xx", sum(&|c| &c.responses.class_4xx)),
                ("5xx", sum(&|c| &c.responses.class_5xx)),
            ] {
                let _ = writeln!(
                    out,
                    "spooky_backend_responses_total{{upstream=\"{}\",backend=\"{}\",class=\"{class}\"}} {value}",
                    label(&upstream.name),
                    label(&backend.id)
                );
            }
        }
    }
    let per_backend = |out: &mut String,
                       name: &str,
                       kind: &str,
                       help: &str,
                       value: &dyn Fn(usize, usize, usize) -> u64| {
        header(out, name, kind, help);
        for (u, upstream) in source.plan.upstreams.iter().enumerate() {
            for (b, backend) in upstream.backends.iter().enumerate() {
                if !first_endpoint(upstream, b) {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\",backend=\"{}\"}} {}",
                    label(&upstream.name),
                    label(&backend.id),
                    value(u, b, backend.stats_slot)
                );
            }
        }
    };
    let summed = |slot: usize, pick: &dyn Fn(&shards::stats::BackendStats) -> &Counter| -> u64 {
        source
            .shards
            .iter()
            .filter_map(|s| s.backend(slot))
            .map(|c| pick(c).get())
            .sum()
    };
    per_backend(
        out,
        "spooky_backend_failures_total",
        "counter",
        "Requests to a backend that ended without a complete response (client gone, reset).",
        &|_, _, slot| summed(slot, &|c| &c.failures),
    );
    per_backend(
        out,
        "spooky_backend_ejections_total",
        "counter",
        "Passive-health ejections of a backend (summed over shards).",
        &|_, _, slot| summed(slot, &|c| &c.ejections),
    );
    per_backend(
        out,
        "spooky_backend_h2_connections",
        "gauge",
        "Open HTTP/2 connections to a backend (summed over shards).",
        &|_, _, slot| summed(slot, &|c| &c.h2_connections),
    );
    per_backend(
        out,
        "spooky_backend_http1_connections",
        "gauge",
        "Open HTTP/1.1 connections to a backend, busy or idle (summed over shards).",
        &|_, _, slot| summed(slot, &|c| &c.http1_connections),
    );
    per_backend(
        out,
        "spooky_backend_healthy",
        "gauge",
        "1 when active health checks let the backend (one of its endpoints, for a DNS name) \
         receive traffic.",
        &|u, _, slot| {
            let upstream = &source.plan.upstreams[u];
            let healthy = |b: usize| {
                source
                    .healthy
                    .get(u)
                    .and_then(|h| h.get(b))
                    .copied()
                    .unwrap_or(true)
            };
            u64::from(
                upstream
                    .backends
                    .iter()
                    .enumerate()
                    .any(|(b, backend)| backend.stats_slot == slot && healthy(b)),
            )
        },
    );
    per_backend(
        out,
        "spooky_backend_endpoints",
        "gauge",
        "Addresses the backend is reached at: 1 for an IP address, the addresses its DNS name \
         resolved to last for a name.",
        &|u, _, slot| {
            source.plan.upstreams[u]
                .backends
                .iter()
                .filter(|backend| backend.stats_slot == slot)
                .count() as u64
        },
    );
}

/// Endpoints of one DNS-named backend share its id and counters: only the first of them is
/// shown, so each backend is one series. (A name that resolves to nothing has no endpoint in
/// the running plan, and no series until it resolves.)
fn first_endpoint(upstream: &shards::plan::UpstreamPlan, index: usize) -> bool {
    let slot = upstream.backends[index].stats_slot;
    !upstream.backends[..index]
        .iter()
        .any(|b| b.stats_slot == slot)
}

fn duration_histogram(out: &mut String, shards: &[Arc<ShardStats>]) {
    let name = "spooky_request_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "Time from request headers received to response complete.",
    );
    let mut cumulative = 0u64;
    for (i, bound) in DURATION_BUCKETS_US.iter().enumerate() {
        cumulative += shards
            .iter()
            .map(|s| s.request_duration.buckets[i].get())
            .sum::<u64>();
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    cumulative += shards
        .iter()
        .map(|s| s.request_duration.buckets[DURATION_BUCKETS_US.len()].get())
        .sum::<u64>();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum_us: u64 = shards.iter().map(|s| s.request_duration.sum_us.get()).sum();
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
}

fn process_metrics(out: &mut String, config_generation: u64) {
    header(
        out,
        "spooky_config_generation",
        "gauge",
        "Configuration generation: 1 at start, +1 per applied reload.",
    );
    let _ = writeln!(out, "spooky_config_generation {config_generation}");
    // A figure the kernel will not give reads as zero rather than hiding the others.
    use shards::procfs;
    let figures: [(&str, &str, &str, f64); 3] = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size.",
            procfs::rss_bytes("self").unwrap_or(0) as f64,
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            procfs::open_fds("self").unwrap_or(0) as f64,
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time.",
            procfs::cpu_seconds("self").unwrap_or(0.0),
        ),
    ];
    for (name, kind, help, value) in figures {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::label;

    #[test]
    fn label_values_are_escaped_as_the_text_format_requires() {
        assert_eq!(label("api-01"), "api-01");
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("two\nlines"), "two\\nlines");
    }
}
