//! The configuration file's schema, exactly as written by the operator.
//!
//! These types only describe shape: every table rejects unknown keys, so a misspelt key fails
//! loudly instead of silently falling back to a default. Numbers are kept as TOML's native `i64`
//! and strings stay strings, so that range and format checks happen in `validate`, which can
//! report all of them at once with operator-friendly wording, instead of serde stopping at the
//! first out-of-range integer with a message about Rust types.

use std::fmt;
use std::path::PathBuf;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// A TOML integer, range-checked later by `validate`.
///
/// Plain `i64` would work, but serde would then describe a type mismatch as "expected i64";
/// operators should read "expected an integer".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Int(pub i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Int, E> {
                // TOML integers are i64, so this only guards other deserializers.
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
        }

        deserializer.deserialize_i64(IntVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: RawListen,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub quic: RawQuic,
    pub limits: Option<RawLimits>,
    pub overload: Option<RawOverload>,
    /// Absent and empty are both reported by validation as "no upstreams", alongside any other
    /// problem, rather than as a parse error that would hide the rest.
    #[serde(default)]
    pub upstream: Upstreams,
    #[serde(default)]
    pub log: RawLog,
    pub admin: Option<RawAdmin>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub address: String,
    pub port: Int,
    pub tls: RawTls,
    /// Whether TCP responses advertise HTTP/3 (`Alt-Svc`).
    pub alt_svc: Option<bool>,
    pub alt_svc_max_age: Option<Int>,
    pub redirect: Option<RawRedirect>,
    /// `[[listen.certificates]]`: further certificates, chosen by SNI.
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Defaults to the DNS names in the certificate.
    pub hosts: Option<Vec<String>>,
}

/// `[listen.redirect]`: a plain-HTTP listener that redirects to HTTPS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub port: Int,
    /// Defaults to `listen.address`.
    pub address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub cores: Option<Vec<Int>>,
    pub shards: Option<Int>,
    pub drain_timeout_ms: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuic {
    pub idle_timeout_ms: Option<Int>,
    pub max_concurrent_streams: Option<Int>,
    pub stream_window: Option<Int>,
    pub connection_window: Option<Int>,
    pub max_udp_payload_size: Option<Int>,
    pub path_mtu_discovery: Option<bool>,
    pub steering: Option<String>,
    pub bpf_pin_dir: Option<String>,
    pub retry: Option<String>,
    pub retry_above: Option<Int>,
    pub handshake_timeout_ms: Option<Int>,
    pub max_connections: Option<Int>,
    pub max_handshakes: Option<Int>,
    pub new_connection_rate: Option<Int>,
    pub new_connection_burst: Option<Int>,
}

/// The `[upstream.NAME]` tables in the order they appear in the file.
///
/// The order matters: it becomes the upstream index the data plane uses as an id, and keeping
/// file order makes logs and plans line up with what the operator wrote. A `BTreeMap` would
/// sort by name instead, so this collects the map entries itself.
#[derive(Debug, Default)]
pub struct Upstreams(pub Vec<(String, RawUpstream)>);

impl<'de> Deserialize<'de> for Upstreams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UpstreamsVisitor;

        impl<'de> Visitor<'de> for UpstreamsVisitor {
            type Value = Upstreams;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of upstream pools, one `[upstream.NAME]` table each")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Upstreams, A::Error> {
                // TOML itself rejects a table defined twice, so no duplicate-name check here.
                let mut entries = Vec::new();
                while let Some((name, upstream)) = map.next_entry::<String, RawUpstream>()? {
                    entries.push((name, upstream));
                }
                Ok(Upstreams(entries))
            }
        }

        deserializer.deserialize_map(UpstreamsVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub route: RawRoute,
    #[serde(default)]
    pub load_balancing: Option<RawLoadBalancing>,
    #[serde(default)]
    pub timeouts: Option<RawTimeouts>,
    pub retries: Option<Int>,
    pub retry_budget_percent: Option<Int>,
    /// `h2c` (the default), `h2` or `http/1.1`, checked by validation so the message names
    /// the key.
    pub protocol: Option<String>,
    pub keepalive: Option<RawKeepAlive>,
    pub tls: Option<RawBackendTls>,
    pub resolve_interval_ms: Option<Int>,
    pub limits: Option<RawLimits>,
    /// Defaults to empty so that an empty pool is reported by validation with its key path.
    #[serde(default)]
    pub backends: Vec<RawBackend>,
}

/// `[limits]` and `[upstream.NAME.limits]`: bounds on one request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: Option<Int>,
    pub max_headers: Option<Int>,
    pub max_uri_bytes: Option<Int>,
    pub max_request_body_bytes: Option<Int>,
    pub requests_per_second: Option<Int>,
    pub requests_burst: Option<Int>,
}

/// `[overload]`: where a shard starts shedding work.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverload {
    pub connections: Option<Int>,
    pub requests: Option<Int>,
    pub memory_bytes: Option<Int>,
}

/// `[upstream.NAME.keepalive]`: idle HTTP/1.1 connections.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepAlive {
    pub max_idle: Option<Int>,
    pub idle_timeout_ms: Option<Int>,
}

/// `[upstream.NAME.tls]`: TLS towards the backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTls {
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path_prefix: String,
    pub host: Option<String>,
    pub method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoadBalancing {
    #[serde(rename = "type")]
    pub kind: BalancingKind,
    /// The hash input of `consistent-hash`.
    pub key: Option<String>,
}

/// Only the strategies the data plane implements; serde's "unknown variant" error lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalancingKind {
    RoundRobin,
    Random,
    LeastRequest,
    ConsistentHash,
    LatencyAware,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect_ms: Option<Int>,
    pub response_headers_ms: Option<Int>,
    pub body_idle_ms: Option<Int>,
    pub total_ms: Option<Int>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub id: String,
    pub address: String,
    pub weight: Option<Int>,
    pub health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: String,
    pub interval: Option<Int>,
    pub timeout_ms: Option<Int>,
    pub failure_threshold: Option<Int>,
    pub success_threshold: Option<Int>,
}
