//! The data plane's validated view of the configuration.
//!
//! `src/config.rs` parses and validates the operator's TOML and turns it into a [`ProxyPlan`]. Shards
//! only ever see these plain, already-checked values: nothing here can fail, so a shard never has to
//! report a configuration error from inside the request path.

use crate::tls::backend::BackendTls;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything one shard needs to serve traffic. Every shard of a process receives a clone.
#[derive(Clone, Debug)]
pub struct ProxyPlan {
    /// The listener's certificate and key, parsed by the coordinator.
    pub tls: crate::tls::TlsIdentity,
    /// Further certificates, chosen by the client's SNI on both listeners.
    pub sni: crate::tls::SniCertificates,
    pub quic: QuicSettings,
    /// Where overload shedding starts (`[overload]`); all `None` turns it off.
    pub overload: OverloadMarks,
    /// Upstream pools, in configuration order. Their index is the upstream id used in routing.
    pub upstreams: Vec<UpstreamPlan>,
    /// Write one access log line per request (target `spooky::access`).
    pub access_log: bool,
    /// How long TCP clients may remember that we serve HTTP/3 (`Alt-Svc`'s `ma`, RFC 7838 §3),
    /// or `None` to not advertise it.
    pub alt_svc_max_age: Option<u32>,
    /// The plain-HTTP listener that redirects to HTTPS, if any. The coordinator resolves a port
    /// of 0 before the shards see it, so that every shard binds the same one.
    pub redirect: Option<std::net::SocketAddr>,
}

/// The loads at which a shard sheds work (`[overload]`): each stage starts at a share of the
/// nearest mark (see `shard::overload`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverloadMarks {
    /// Live connections per shard, QUIC and TCP together.
    pub connections: Option<u64>,
    /// Requests in flight per shard.
    pub requests: Option<u64>,
    /// Resident memory of the whole process.
    pub memory_bytes: Option<u64>,
}

/// A day, as nginx's and Caddy's examples use.
pub const DEFAULT_ALT_SVC_MAX_AGE: u32 = 86_400;

/// Transport settings advertised to every client.
#[derive(Clone, Debug)]
pub struct QuicSettings {
    /// Connections with no traffic for this long are closed silently (RFC 9000 §10.1).
    pub idle_timeout: Duration,
    /// How many request streams a client may have open at once on one connection.
    pub max_concurrent_streams: u64,
    /// Flow-control window per request stream, in bytes: bounds what one upload may buffer here.
    pub stream_window: u64,
    /// Flow-control window per connection, in bytes.
    pub connection_window: u64,
    /// Largest UDP payload we send without path MTU discovery. With it: the size on a path a
    /// client migrates to (quiche does not probe those), and the ceiling when a client's route
    /// cannot be read.
    pub max_udp_payload: usize,
    /// Probe each connection's path up to its route's MTU (see `shards::net::path_mtu`).
    pub path_mtu_discovery: bool,
    /// How packets reach the shard that owns their connection (read at startup only).
    pub steering: SteeringMode,
    /// bpffs directory where the reuseport group's socket map is shared between processes.
    pub bpf_pin_dir: PathBuf,
    /// When new clients must prove their address with a Retry first (RFC 9000 §8.1.2).
    pub retry: RetryMode,
    /// With [`RetryMode::Auto`]: Retry once the shard holds more unvalidated connections.
    pub retry_above: usize,
    /// A connection still in its handshake after this long is dropped without a reply.
    pub handshake_timeout: Duration,
    /// Connections a shard holds at most; Initials beyond are dropped.
    pub max_connections: usize,
    /// Connections in their handshake a shard holds at most; Initials beyond are dropped.
    pub max_handshakes: usize,
    /// New connections per second one client address (IPv4 /32, IPv6 /64) may open per shard,
    /// after a burst of `new_connection_burst`; 0 turns the limit off.
    pub new_connection_rate: u32,
    pub new_connection_burst: u32,
}

/// When a shard answers a new client's first Initial with a Retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryMode {
    /// Once the shard holds more than `retry_above` connections whose address is not validated.
    Auto,
    /// Every new connection.
    Always,
    /// Never: unvalidated connections are bounded by `max_handshakes` alone.
    Off,
}

/// How packets are steered to their connection's shard (see `shards::steering`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteeringMode {
    /// Kernel steering by connection ID when it can be set up; otherwise the kernel's 4-tuple
    /// hash and hand-off between this process's shards.
    Auto,
    /// Kernel steering by connection ID, or refuse to start.
    Bpf,
    /// The kernel's 4-tuple hash and hand-off between shards only.
    Off,
}

impl Default for QuicSettings {
    fn default() -> Self {
        QuicSettings {
            idle_timeout: Duration::from_secs(30),
            max_concurrent_streams: 256,
            stream_window: 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_udp_payload: 1350,
            path_mtu_discovery: true,
            steering: SteeringMode::Auto,
            bpf_pin_dir: PathBuf::from("/sys/fs/bpf/spooky"),
            retry: RetryMode::Auto,
            // HAProxy's `quic-retry-threshold` default: a busy shard has far fewer half-open
            // connections than this from real clients, whose handshakes finish in one round trip.
            retry_above: 100,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_handshakes: 10_000,
            new_connection_rate: 200,
            new_connection_burst: 400,
        }
    }
}

/// One backend pool and the requests that go to it.
#[derive(Clone, Debug)]
pub struct UpstreamPlan {
    pub name: String,
    pub route: RoutePlan,
    pub balancing: Balancing,
    pub timeouts: UpstreamTimeouts,
    /// How many other backends a request that was not processed (connect failure, refused
    /// stream) may be sent to.
    pub retries: u32,
    /// Retries allowed as a share of requests (0.2 = 20%), so retries cannot multiply load when
    /// a whole pool struggles.
    pub retry_budget: f64,
    /// How the shards talk to this pool's backends.
    pub protocol: BackendProtocol,
    /// TLS towards the backends (`[upstream.NAME.tls]`, or implied by `protocol = "h2"`);
    /// `None` is cleartext.
    pub tls: Option<BackendTls>,
    /// How often the coordinator re-resolves this upstream's backend names.
    pub resolve_interval: Duration,
    /// What a request to this pool may be (`[limits]`, overridden by `[upstream.NAME.limits]`).
    pub limits: RequestLimits,
    pub backends: Vec<BackendPlan>,
}

/// Largest request field section quiche accepts before Spooky sees it: beyond this, quiche closes
/// the connection (H3_EXCESSIVE_LOAD) instead of letting Spooky answer `431` on the stream, so
/// `max_header_bytes` is capped at a quarter of it.
pub const FIELD_SECTION_CEILING: u64 = 1024 * 1024;

/// Bounds on one request, each answered on its own stream (the connection and its other
/// requests carry on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Field section size as RFC 9114 §4.2.2 counts it (name + value + 32 per field) -> `431`.
    pub max_header_bytes: usize,
    /// Fields in the request's header section, pseudo-headers included -> `431`.
    pub max_headers: usize,
    /// Length of the request target (path and query) -> `414`.
    pub max_uri_bytes: usize,
    /// Request body bytes -> `413` (at once for a larger `content-length`, else when the stream
    /// crosses it); `None` is unlimited.
    pub max_body_bytes: Option<u64>,
    /// Requests per second one client address (IPv4, IPv6 /64) may send to the pool on one shard
    /// after a burst, beyond which it gets `429`; `None` is unlimited.
    pub rate: Option<RequestRate>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestRate {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RequestLimits {
    fn default() -> Self {
        // Envoy's header defaults (60 KiB, 100 fields) rounded to a power of two; nginx's 8 KiB
        // request line. No body or rate limit unless the operator asks: either would break some
        // application that worked before.
        RequestLimits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: None,
            rate: None,
        }
    }
}

/// The protocol a pool's backends speak (`upstream.NAME.protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendProtocol {
    /// HTTP/2: with prior knowledge in cleartext (h2c, RFC 9113 §3.3), or negotiated by ALPN
    /// over TLS (h2, §3.2). Requests are multiplexed on few connections.
    Http2,
    /// HTTP/1.1 (RFC 9112): one request at a time per connection, idle connections kept.
    Http1(KeepAlive),
    /// Over TLS, whichever of HTTP/2 and HTTP/1.1 each backend chooses by ALPN (`auto`); the
    /// keep-alive settings apply to those that choose HTTP/1.1.
    Auto(KeepAlive),
}

/// How a shard keeps idle HTTP/1.1 connections to one backend (`upstream.NAME.keepalive`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepAlive {
    /// Idle connections kept per backend per shard; more are closed as they come free.
    pub max_idle: usize,
    /// An idle connection unused for this long is closed.
    pub idle_timeout: Duration,
}

/// The idle timeout is nginx's `keepalive_timeout` default. A backend with a shorter keep-alive
/// closes the idle connection first; the pool sees the close and never sends on it. Only a
/// request that crosses the close on the wire fails, as a break an idempotent request is retried
/// after (RFC 9112 §9.3.1).
///
/// The idle cap must cover a shard's peak concurrency towards one backend, or connections are
/// closed as a burst ends and reopened by the next one: with 256 requests in flight, a cap of 32
/// (nginx's common `keepalive 32`) cost 97 µs of CPU per request against 65 µs with 1024, and
/// SYN retransmits showed as 1 s stalls. Envoy and HAProxy keep every idle connection by
/// default; 1024 (Envoy's default connection limit per host) bounds the worst case, and the
/// idle timeout closes what a quiet period leaves.
pub const DEFAULT_KEEPALIVE: KeepAlive = KeepAlive {
    max_idle: 1024,
    idle_timeout: Duration::from_secs(60),
};

/// Envoy's `dns_refresh_rate` default.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// Retry defaults, as Envoy's: 2 retries within a 20% budget.
pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;

/// Which requests an upstream receives.
#[derive(Clone, Debug)]
pub struct RoutePlan {
    /// Requests whose path starts with this prefix match; the longest matching prefix wins.
    pub path_prefix: String,
    /// Only requests for this host (lowercase; `*.example.com` matches any subdomain).
    pub host: Option<String>,
    /// Only requests with this method.
    pub method: Option<String>,
}

/// How a shard picks a backend within a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Balancing {
    /// Smooth weighted round-robin.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Power of two choices on requests in flight (per weight).
    LeastRequest,
    /// Maglev consistent hashing of a request attribute.
    ConsistentHash(HashKey),
    /// Power of two choices on an EWMA of response time times requests in flight (per weight).
    LatencyAware,
}

/// What `consistent-hash` hashes (`load_balancing.key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// A request header, by lowercase name.
    Header(String),
    /// A cookie, by name.
    Cookie(String),
    /// A query parameter, by name.
    Query(String),
    /// The path, without the query string.
    Path,
    /// The `:authority`.
    Authority,
    /// The client's IP address.
    ClientIp,
}

impl HashKey {
    /// Parses the configuration form: `header:NAME`, `cookie:NAME`, `query:NAME`, `path`,
    /// `authority`, `client-ip`.
    pub fn parse(text: &str) -> Option<HashKey> {
        let named = |prefix: &str| {
            text.strip_prefix(prefix)
                .filter(|name| !name.is_empty())
                .map(str::to_string)
        };
        Some(match text {
            "path" => HashKey::Path,
            "authority" => HashKey::Authority,
            "client-ip" => HashKey::ClientIp,
            _ => {
                if let Some(name) = named("header:") {
                    HashKey::Header(name.to_ascii_lowercase())
                } else if let Some(name) = named("cookie:") {
                    HashKey::Cookie(name)
                } else if let Some(name) = named("query:") {
                    HashKey::Query(name)
                } else {
                    return None;
                }
            }
        })
    }
}

/// Time limits on the backend side of a request.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamTimeouts {
    /// Limit on opening a TCP connection to a backend (and, for HTTP/2, completing its
    /// handshake).
    pub connect: Duration,
    /// Limit between sending the request headers and receiving the response headers.
    pub response_headers: Duration,
    /// Limit on a body (either direction) making no progress: no byte from the backend while
    /// relaying the response, or from the client while uploading.
    pub body_idle: Duration,
    /// Limit on the whole request, from routing to the last response byte; `None` = no limit
    /// (streams may be long-lived).
    pub total: Option<Duration>,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        UpstreamTimeouts {
            connect: Duration::from_secs(2),
            response_headers: Duration::from_secs(30),
            body_idle: Duration::from_secs(60),
            total: None,
        }
    }
}

/// One backend server, reached over its upstream's [`BackendProtocol`].
#[derive(Clone, Debug)]
pub struct BackendPlan {
    pub id: String,
    /// Where the shards connect. For a backend given by name, the coordinator puts one
    /// endpoint per resolved address in the plan the shards get; each has this form.
    pub address: SocketAddr,
    /// The DNS name the backend was given by, if it was (`address = "api.internal:8080"`).
    pub name: Option<BackendName>,
    pub weight: u32,
    /// Active health checking by the coordinator; `None` means the backend is taken as healthy.
    pub health_check: Option<HealthCheckPlan>,
    /// Which of the shard's per-backend counter slots this backend uses (below
    /// [`MAX_BACKENDS`]). A backend keeps its slot across reloads, so its counters continue.
    pub stats_slot: usize,
}

/// A backend address given as `host:port`, resolved by the coordinator, never by a shard.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendName {
    /// Lowercase, without a trailing dot.
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for BackendName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// How the coordinator probes one backend: a GET of `path` every `interval`, in the upstream's
/// protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckPlan {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that turn a healthy backend unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes that turn an unhealthy backend healthy again.
    pub success_threshold: u32,
}

/// Most backends one process can have configured at once: the size of each shard's fixed
/// per-backend counter table, which never reallocates, so the coordinator can read it while the
/// shard writes.
pub const MAX_BACKENDS: usize = 1024;

impl ProxyPlan {
    /// Gives every backend a counter slot: the slot it had in `previous` when a backend with
    /// the same id existed there, otherwise the lowest free slot. Fails when more than
    /// [`MAX_BACKENDS`] backends would be configured.
    pub fn assign_stats_slots(&mut self, previous: Option<&ProxyPlan>) -> Result<(), usize> {
        let kept: std::collections::HashMap<&str, usize> = previous
            .into_iter()
            .flat_map(|p| p.upstreams.iter())
            .flat_map(|u| u.backends.iter())
            .map(|b| (b.id.as_str(), b.stats_slot))
            .collect();
        let mut used = vec![false; MAX_BACKENDS];
        let mut pending = Vec::new();
        for (u, upstream) in self.upstreams.iter_mut().enumerate() {
            for (b, backend) in upstream.backends.iter_mut().enumerate() {
                match kept.get(backend.id.as_str()) {
                    Some(&slot) if !used[slot] => {
                        used[slot] = true;
                        backend.stats_slot = slot;
                    }
                    _ => pending.push((u, b)),
                }
            }
        }
        let mut free = (0..MAX_BACKENDS).filter(|slot| !used[*slot]);
        let total = self
            .upstreams
            .iter()
            .map(|u| u.backends.len())
            .sum::<usize>();
        for (u, b) in pending {
            let slot = free.next().ok_or(total)?;
            self.upstreams[u].backends[b].stats_slot = slot;
        }
        Ok(())
    }
}
