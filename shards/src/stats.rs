//! Per-shard counters.
//!
//! Each shard is the only writer of its own [`ShardStats`]; the coordinator only reads. A counter
//! is therefore bumped with a relaxed load and store (a plain add on x86), never a locked
//! read-modify-write, and each shard's block sits on its own cache lines, so counting costs the
//! request path no cross-core traffic.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::proxy::limits::Exceeded;
use crate::quic::admission::Refusal;

/// A counter with exactly one writer: its shard.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning shard may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        let current = self.0.load(Ordering::Relaxed);
        self.0.store(current.wrapping_add(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn incr(&self) {
        self.add(1);
    }

    /// Lowers a gauge. Only the owning shard may call this.
    #[inline]
    pub fn sub(&self, n: u64) {
        let current = self.0.load(Ordering::Relaxed);
        self.0.store(current.saturating_sub(n), Ordering::Relaxed);
    }

    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one shard has done since it started. Gauges say so in their doc comment.
/// Upper bounds, in microseconds, of the request duration histogram buckets (plus +Inf).
pub const DURATION_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Request durations, from request headers received to response complete (or failed).
#[derive(Default, Debug)]
pub struct DurationHistogram {
    /// Count per bucket of `DURATION_BUCKETS_US`, then the +Inf bucket; not cumulative.
    pub buckets: [Counter; DURATION_BUCKETS_US.len() + 1],
    pub sum_us: Counter,
    pub count: Counter,
}

impl DurationHistogram {
    pub fn record(&self, micros: u64) {
        let index = DURATION_BUCKETS_US
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(DURATION_BUCKETS_US.len());
        self.buckets[index].incr();
        self.sum_us.add(micros);
        self.count.incr();
    }
}

/// Responses counted by status class.
#[derive(Default, Debug)]
pub struct StatusClasses {
    pub class_2xx: Counter,
    pub class_3xx: Counter,
    pub class_4xx: Counter,
    /// 5xx, and anything outside 200-499 (1xx never completes a request).
    pub class_5xx: Counter,
}

impl StatusClasses {
    pub fn count(&self, status: u16) {
        match status {
            200..=299 => self.class_2xx.incr(),
            300..=399 => self.class_3xx.incr(),
            400..=499 => self.class_4xx.incr(),
            _ => self.class_5xx.incr(),
        }
    }
}

/// What one shard has done with one backend.
#[derive(Default, Debug)]
pub struct BackendStats {
    pub responses: StatusClasses,
    /// Requests that ended without a backend status (connect failure, timeout, reset).
    pub failures: Counter,
    /// Times this shard's outlier detection ejected the backend.
    pub ejections: Counter,
    /// Open HTTP/2 connections from this shard to the backend (gauge).
    pub h2_connections: Counter,
    /// Open HTTP/1.1 connections from this shard to the backend, busy or idle (gauge).
    pub http1_connections: Counter,
}

impl BackendStats {
    pub fn count_status(&self, status: u16) {
        self.responses.count(status);
    }
}

#[derive(Default, Debug)]
#[repr(align(128))]
pub struct ShardStats {
    /// Kernel thread id of the shard, set once it runs (0 before): lets operators and tests read
    /// the thread's CPU affinity from `/proc`.
    pub thread_id: Counter,
    /// 1 while the shard serves traffic (gauge).
    pub running: Counter,
    /// Control ticks run (one per 10 ms while the event loop turns); read by the watchdog.
    pub heartbeat: Counter,
    /// Stall episodes (heartbeat still for 1 s) and whether the shard is stalled now (gauge).
    /// Written by the watchdog thread, their only writer.
    pub stalls: Counter,
    pub stalled: Counter,
    pub datagrams_received: Counter,
    pub datagrams_sent: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    /// Datagrams dropped because they belong to no connection and cannot start one.
    pub datagrams_dropped_unknown: Counter,
    /// Datagrams dropped because they could not be parsed as QUIC.
    pub datagrams_dropped_malformed: Counter,
    /// Datagrams the kernel refused to queue for sending (socket buffer full).
    pub datagrams_send_failed: Counter,
    pub version_negotiations: Counter,
    /// Segmented (GSO) sends, each carrying several datagrams.
    pub gso_sends: Counter,
    /// Datagrams passed to the shard that owns their connection (client address changed and
    /// kernel steering is off).
    pub datagrams_handed_off: Counter,
    /// Short-header and Handshake datagrams whose connection ID no shard of this process issued
    /// (noise, or another process's connection on a shared port).
    pub datagrams_dropped_foreign_id: Counter,
    /// Datagrams for another shard of ours that could not be handed to it.
    pub datagrams_dropped_handoff: Counter,
    /// Initials that did not start a connection, by reason.
    pub refusals: Refusals,
    /// Retry packets sent (RFC 9000 §8.1.2).
    pub retries_sent: Counter,
    /// Connections dropped because their handshake outlived `quic.handshake_timeout_ms`.
    pub handshake_timeouts: Counter,
    /// Connections in their handshake, and those of them whose address is not validated
    /// (gauges).
    pub handshakes_active: Counter,
    pub unvalidated_active: Counter,
    /// Bytes received from and sent to addresses not yet validated: RFC 9000 §8.1 allows at
    /// most three times as many out as in.
    pub unvalidated_bytes_received: Counter,
    pub unvalidated_bytes_sent: Counter,
    pub connections_accepted: Counter,
    /// Open QUIC connections (gauge).
    pub connections_active: Counter,
    pub handshakes_completed: Counter,
    pub requests: PerProtocol,
    /// TCP connections accepted by the listener beside QUIC, and those open now (gauge).
    pub tcp_connections_accepted: Counter,
    pub tcp_connections_active: Counter,
    /// WebSocket tunnels opened (a `101` from the backend), and those open now (gauge).
    pub websocket_tunnels: Counter,
    pub websocket_tunnels_active: Counter,
    /// Plain-HTTP requests answered with a redirect to HTTPS (`[listen.redirect]`).
    pub redirects: Counter,
    /// Requests in progress (gauge).
    pub streams_active: Counter,
    /// Responses sent to clients, by status class.
    pub responses: StatusClasses,
    /// Request streams reset towards the client after a failure mid-response.
    pub streams_reset: Counter,
    /// Requests the client cancelled before their response completed.
    pub client_cancels: Counter,
    pub malformed_requests: Counter,
    /// Requests answered `431`, `414`, `413` or `429` for breaking a limit, or `503` while the
    /// shard sheds requests.
    pub limited: LimitCounters,
    /// The overload stage (gauge): 0 normal, 1 Retry all, 2 refuse connections, 3 shed requests.
    pub overload_stage: Counter,
    /// TCP connections closed at accept because the shard refuses new connections.
    pub tcp_connections_refused: Counter,
    pub backend_connects: Counter,
    pub backend_connect_failures: Counter,
    /// Requests sent again to another backend after a failure that left them unprocessed.
    pub retries: Counter,
    /// Connections that closed before their handshake completed.
    pub handshake_failures: Counter,
    pub request_duration: DurationHistogram,
    /// Per backend, indexed by the backend's `stats_slot`; fixed size, never reallocated.
    pub backends: Box<[BackendStats]>,
}

/// Initials refused before any TLS work, one counter per [`Refusal`].
#[derive(Default, Debug)]
pub struct Refusals {
    pub too_small: Counter,
    pub draining: Counter,
    pub connection_limit: Counter,
    pub handshake_limit: Counter,
    pub source_rate: Counter,
    pub invalid_token: Counter,
    pub overload: Counter,
}

impl Refusals {
    pub fn counter(&self, refusal: Refusal) -> &Counter {
        match refusal {
            Refusal::TooSmall => &self.too_small,
            Refusal::Draining => &self.draining,
            Refusal::ConnectionLimit => &self.connection_limit,
            Refusal::HandshakeLimit => &self.handshake_limit,
            Refusal::SourceRate => &self.source_rate,
            Refusal::InvalidToken => &self.invalid_token,
            Refusal::Overload => &self.overload,
        }
    }
}

/// A counter per [`Exceeded`] limit.
#[derive(Default, Debug)]
pub struct LimitCounters {
    header: Counter,
    uri: Counter,
    body: Counter,
    rate: Counter,
    overload: Counter,
}

impl LimitCounters {
    pub fn get(&self, exceeded: Exceeded) -> &Counter {
        match exceeded {
            Exceeded::Header => &self.header,
            Exceeded::Uri => &self.uri,
            Exceeded::Body => &self.body,
            Exceeded::Rate => &self.rate,
            Exceeded::Overload => &self.overload,
        }
    }

    pub fn count(&self, exceeded: Exceeded) {
        self.get(exceeded).incr();
    }
}

/// A counter per client protocol.
#[derive(Default, Debug)]
pub struct PerProtocol {
    h3: Counter,
    h2: Counter,
    http1: Counter,
}

impl PerProtocol {
    pub fn get(&self, protocol: crate::http::Protocol) -> &Counter {
        match protocol {
            crate::http::Protocol::H3 => &self.h3,
            crate::http::Protocol::H2 => &self.h2,
            crate::http::Protocol::Http1 => &self.http1,
        }
    }

    pub fn total(&self) -> u64 {
        self.h3.get() + self.h2.get() + self.http1.get()
    }
}

impl ShardStats {
    /// Counters with room for every backend slot.
    pub fn new() -> Self {
        ShardStats {
            backends: (0..crate::plan::MAX_BACKENDS)
                .map(|_| BackendStats::default())
                .collect(),
            ..ShardStats::default()
        }
    }

    pub fn backend(&self, stats_slot: usize) -> Option<&BackendStats> {
        self.backends.get(stats_slot)
    }

    pub fn count_status(&self, status: u16) {
        self.responses.count(status);
    }
}
