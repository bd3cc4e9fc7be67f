//! Semantic checks: turns a schema-valid [`RawConfig`] into a [`Config`], or lists everything wrong.
//!
//! Serde can only stop at the first problem; here every check runs and every failure is collected,
//! so one `spooky --check` shows the operator the whole list. This is also the only place that
//! looks outside the file (certificate files, the CPUs this process may run on), so that the data
//! plane receives a plan it can use without further checks.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;
use shards::plan::{
    BackendName, BackendPlan, BackendProtocol, Balancing, HashKey, HealthCheckPlan, KeepAlive,
    ProxyPlan, QuicSettings, RetryMode, RoutePlan, SteeringMode, UpstreamPlan, UpstreamTimeouts,
    DEFAULT_KEEPALIVE, DEFAULT_RESOLVE_INTERVAL, DEFAULT_RETRIES, DEFAULT_RETRY_BUDGET,
};

use rustls_pki_types::ServerName;
use shards::tls::backend::{
    BackendTls, BackendTlsError, BackendTlsSettings, ALPN_AUTO, ALPN_H2, ALPN_HTTP1,
};
use shards::tls::{SniCertificates, TlsError, TlsIdentity};

use super::error::Problem;
use super::model::{
    BalancingKind, Int, RawBackendTls, RawCertificate, RawConfig, RawHealthCheck, RawKeepAlive,
    RawLimits, RawOverload, RawQuic, RawRedirect, RawRuntime, RawUpstream,
};
use super::{Config, LogFormat};
use limits::{check_limits, check_overload};
use upstreams::check_upstreams;

mod limits;
mod upstreams;

/// Flow-control windows smaller than this stall transfers on any real path; QUIC implementations
/// commonly treat 16 KiB as the floor too.
pub const MIN_WINDOW: i64 = 16 * 1024;
/// Largest value a QUIC variable-length integer can carry (RFC 9000 §16); transport parameters
/// above it cannot be advertised.
pub const VARINT_MAX: i64 = (1 << 62) - 1;
/// RFC 9000 §4.6: a stream limit above 2^60 is a protocol error.
pub const MAX_STREAMS: i64 = 1 << 60;
/// Upper bound for connection counts: a shard cannot hold more than this in any memory.
pub const MAX_CONNECTIONS: i64 = 10_000_000;
/// Upper bound for per-source rates (new connections a second).
pub const MAX_SOURCE_RATE: i64 = 1_000_000;
/// RFC 9000 §14: QUIC requires paths to carry at least 1200-byte datagrams. The upper bound is
/// what one send of a shard carries (below IPv4's 65,507-byte UDP payload limit; §18.2's
/// 65,527 does not fit an IPv4 datagram at all).
pub const MIN_UDP_PAYLOAD: i64 = 1200;
pub const MAX_UDP_PAYLOAD: i64 = shards::net::udp::MAX_BATCH_BYTES as i64;
pub const DEFAULT_WEIGHT: u32 = 100;
pub const MAX_WEIGHT: i64 = 10_000;
/// How long a graceful stop waits for requests in flight when the file does not say.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub const DEFAULT_LOG_LEVEL: LevelFilter = LevelFilter::Info;

/// Facts about the machine that validation depends on, gathered once so that tests can supply
/// their own instead of depending on the CPUs of whatever machine runs them.
#[derive(Clone, Debug)]
pub struct Host {
    /// CPUs this process may run on, or `None` if the kernel would not say (then CPU indices are
    /// not checked and pinning reports the problem at start-up instead).
    pub allowed_cpus: Option<BTreeSet<usize>>,
}

impl Host {
    /// Reads the affinity mask of the calling thread. Shard threads are pinned later, by the
    /// runtime, so at configuration time this is still the mask the process was started with.
    pub fn current() -> Host {
        Host {
            allowed_cpus: shards::sys::allowed_cpus(),
        }
    }
}

/// Formats CPUs the way the kernel does in `/proc/*/status` (`0-3,8,10-11`), which operators
/// already know from `taskset` and cpusets.
pub fn format_cpu_list(cpus: &BTreeSet<usize>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = cpus.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(",")
    }
}

/// Accumulates problems; every check reports here and carries on.
#[derive(Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(key, message));
    }

    /// Problems found so far; a check compares it before and after to see whether it added any.
    pub(super) fn count(&self) -> usize {
        self.0.len()
    }

    /// Checks `lo <= value <= hi`; `unit` is appended to the bounds in the message.
    pub(super) fn in_range(
        &mut self,
        key: &str,
        value: i64,
        lo: i64,
        hi: i64,
        unit: &str,
    ) -> Option<i64> {
        if value < lo {
            self.push(key, format!("must be at least {lo}{unit}, got {value}"));
            None
        } else if value > hi {
            self.push(key, format!("must be at most {hi}{unit}, got {value}"));
            None
        } else {
            Some(value)
        }
    }
}

/// `[listen.redirect]`: `Some(None)` when absent, `None` after pushing a problem.
fn check_redirect(
    p: &mut Problems,
    redirect: Option<&RawRedirect>,
    listen_ip: Option<IpAddr>,
    listen_port: Option<i64>,
) -> Option<Option<SocketAddr>> {
    let Some(redirect) = redirect else {
        return Some(None);
    };
    let ip = match &redirect.address {
        None => listen_ip,
        Some(text) => match text.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                p.push(
                    "listen.redirect.address",
                    format!("`{text}` is not an IP address such as 0.0.0.0 or ::"),
                );
                None
            }
        },
    };
    let port = p.in_range(
        "listen.redirect.port",
        redirect.port.0,
        0,
        u16::MAX.into(),
        "",
    )?;
    if port != 0 && Some(port) == listen_port {
        p.push(
            "listen.redirect.port",
            format!("must differ from listen.port ({port}), where TLS is served"),
        );
        return None;
    }
    Some(Some(SocketAddr::new(ip?, port as u16)))
}

/// Checks everything and builds the [`Config`] only if nothing is wrong.
pub fn validate(raw: RawConfig, origin: &Path, host: &Host) -> Result<Config, Vec<Problem>> {
    let mut p = Problems::default();
    let base_dir = origin.parent().unwrap_or(Path::new(""));

    let ip = match raw.listen.address.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            p.push(
                "listen.address",
                format!(
                    "`{}` is not an IP address; give a literal IPv4 or IPv6 address such as \
                     0.0.0.0 or :: (host names are not resolved)",
                    raw.listen.address
                ),
            );
            None
        }
    };
    let port = p.in_range("listen.port", raw.listen.port.0, 0, u16::MAX.into(), "");
    let sni = check_certificates(&mut p, &raw.listen.certificates, base_dir);
    let redirect = check_redirect(&mut p, raw.listen.redirect.as_ref(), ip, port);
    let alt_svc_max_age = match (raw.listen.alt_svc, raw.listen.alt_svc_max_age) {
        (Some(false), Some(_)) => {
            p.push(
                "listen.alt_svc_max_age",
                "set while listen.alt_svc = false; remove one of them",
            );
            None
        }
        (Some(false), None) => Some(None),
        (_, None) => Some(Some(shards::plan::DEFAULT_ALT_SVC_MAX_AGE)),
        (_, Some(Int(seconds))) => p
            .in_range(
                "listen.alt_svc_max_age",
                seconds,
                1,
                i64::from(i32::MAX),
                " s",
            )
            .map(|seconds| Some(seconds as u32)),
    };
    let [cert_chain, private_key] = [
        (
            "listen.tls.cert",
            &raw.listen.tls.cert,
            PemKind::Certificate,
        ),
        ("listen.tls.key", &raw.listen.tls.key, PemKind::PrivateKey),
    ]
    .map(|(key, path, kind)| check_pem_file(&mut p, key, path, base_dir, kind));
    let tls = match (&cert_chain, &private_key) {
        (Some(cert), Some(key)) => load_identity(&mut p, "listen.tls", cert, key),
        _ => None,
    };

    let cores = check_runtime(&mut p, &raw.runtime, host);
    let drain_timeout = match raw.runtime.drain_timeout_ms {
        None => Some(DEFAULT_DRAIN_TIMEOUT),
        Some(ms) => p
            .in_range("runtime.drain_timeout_ms", ms.0, 1, 3_600_000, " ms")
            .map(|ms| Duration::from_millis(ms as u64)),
    };
    let admin = match &raw.admin {
        None => Some(None),
        Some(admin) => match admin.address.parse::<SocketAddr>() {
            Ok(address) => Some(Some(address)),
            Err(_) => {
                p.push(
                    "admin.address",
                    format!(
                        "`{}` is not an IP:port socket address such as 127.0.0.1:9090",
                        admin.address
                    ),
                );
                None
            }
        },
    };
    let quic = check_quic(&mut p, &raw.quic);
    let limits = check_limits(&mut p, "limits", raw.limits.as_ref(), Default::default());
    let overload = check_overload(&mut p, raw.overload.as_ref());
    let upstreams = check_upstreams(&mut p, &raw.upstream.0, base_dir, limits);

    let log_level = match raw.log.level.as_deref() {
        None => DEFAULT_LOG_LEVEL,
        Some(level) => match parse_level(level) {
            Some(level) => level,
            None => {
                p.push(
                    "log.level",
                    format!(
                        "unknown log level `{level}`; expected one of error, warn, info, debug, \
                         trace"
                    ),
                );
                DEFAULT_LOG_LEVEL
            }
        },
    };

    let log_format = match raw.log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.push(
                "log.format",
                format!("unknown log format `{other}`; expected \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };

    if !p.0.is_empty() {
        return Err(p.0);
    }
    // Every `None` above pushed a problem, so this branch means a bug in this module, not in the
    // operator's file; still, refusing the file beats panicking while loading it.
    let (
        Some(ip),
        Some(port),
        Some(tls),
        Some(cores),
        Some(drain_timeout),
        Some(admin),
        Some(alt_svc_max_age),
        Some(redirect),
        Some(sni),
    ) = (
        ip,
        port,
        tls,
        cores,
        drain_timeout,
        admin,
        alt_svc_max_age,
        redirect,
        sni,
    )
    else {
        return Err(vec![Problem::new(
            "",
            "internal error: a value was rejected without a reason; please report this",
        )]);
    };
    let mut plan = ProxyPlan {
        tls,
        sni,
        quic,
        overload,
        upstreams,
        access_log: raw.log.access_log.unwrap_or(false),
        alt_svc_max_age,
        redirect,
    };
    if let Err(total) = plan.assign_stats_slots(None) {
        return Err(vec![Problem::new(
            "upstream",
            format!(
                "{total} backends configured; at most {} are supported",
                shards::plan::MAX_BACKENDS
            ),
        )]);
    }
    Ok(Config {
        origin: origin.to_path_buf(),
        // `in_range` bounded the port to u16.
        listen: SocketAddr::new(ip, port as u16),
        cores,
        drain_timeout,
        admin,
        log_level,
        log_format,
        plan,
    })
}

fn parse_level(level: &str) -> Option<LevelFilter> {
    // Deliberately narrower than `LevelFilter::from_str` (which also takes `off` and any case):
    // the documented set is the whole set.
    Some(match level {
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PemKind {
    Certificate,
    PrivateKey,
}

/// Resolves a configured PEM path and checks that it holds the expected kind of block.
///
/// A textual check is enough here: the point is to catch the common mistakes (wrong path,
/// permissions, cert and key swapped, an encrypted key) before start-up with a precise key path.
/// BoringSSL still parses the files for real when each shard builds its TLS context.
fn check_pem_file(
    p: &mut Problems,
    key: &str,
    configured: &Path,
    base_dir: &Path,
    kind: PemKind,
) -> Option<PathBuf> {
    if configured.as_os_str().is_empty() {
        p.push(key, "must not be empty");
        return None;
    }
    // Relative to the configuration file, not the working directory, so that a config and its
    // certificates can be moved together and behave the same wherever spooky is started from.
    let joined = base_dir.join(configured);
    // Absolute so the plan stays valid even if the process changes directory later.
    let path = std::path::absolute(&joined).unwrap_or(joined);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => {
            p.push(key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|rest| rest.strip_suffix("-----"))
        })
        .collect();
    let has_cert = labels.contains(&"CERTIFICATE");
    let has_key = labels.iter().any(|l| l.ends_with("PRIVATE KEY"));
    let has_encrypted_key = labels.contains(&"ENCRYPTED PRIVATE KEY");
    let shown = path.display();
    let problem = match kind {
        PemKind::Certificate if has_cert => None,
        PemKind::Certificate if has_key => Some(format!(
            "{shown} contains a private key but no certificate; are `cert` and `key` swapped?"
        )),
        PemKind::Certificate => Some(format!(
            "{shown} contains no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )),
        PemKind::PrivateKey if has_encrypted_key => Some(format!(
            "{shown} holds an encrypted private key; spooky cannot prompt for a passphrase, \
             so store the key unencrypted with restrictive permissions"
        )),
        PemKind::PrivateKey if has_key => None,
        PemKind::PrivateKey if has_cert => Some(format!(
            "{shown} contains a certificate but no private key; are `cert` and `key` swapped?"
        )),
        PemKind::PrivateKey => Some(format!(
            "{shown} contains no PEM private key (-----BEGIN PRIVATE KEY----- or similar)"
        )),
    };
    match problem {
        Some(message) => {
            p.push(key, message);
            None
        }
        None => Some(path),
    }
}

/// Parses the certificate and key (the only time they are read; shards get the parsed result)
/// and checks they belong together.
/// Loads a certificate and key; a problem is reported under `{table}.cert` or `{table}.key`.
fn load_identity(p: &mut Problems, table: &str, cert: &Path, key: &Path) -> Option<TlsIdentity> {
    match TlsIdentity::load(cert, key) {
        Ok(identity) => Some(identity),
        Err(e) => {
            let field = match e {
                TlsError::Certificate { .. } => "cert",
                TlsError::Read { ref path, .. } if path == cert => "cert",
                TlsError::Unsupported { ref path, .. } if path == cert => "cert",
                _ => "key",
            };
            p.push(format!("{table}.{field}"), e.to_string());
            None
        }
    }
}

/// `[[listen.certificates]]`: each pair loads, each host is a valid name listed once.
fn check_certificates(
    p: &mut Problems,
    entries: &[RawCertificate],
    base_dir: &Path,
) -> Option<SniCertificates> {
    let before = p.0.len();
    let mut table = Vec::new();
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let at = format!("listen.certificates[{index}]");
        let cert = check_pem_file(
            p,
            &format!("{at}.cert"),
            &entry.cert,
            base_dir,
            PemKind::Certificate,
        );
        let key = check_pem_file(
            p,
            &format!("{at}.key"),
            &entry.key,
            base_dir,
            PemKind::PrivateKey,
        );
        let (Some(cert), Some(key)) = (cert, key) else {
            continue;
        };
        let Some(identity) = load_identity(p, &at, &cert, &key) else {
            continue;
        };
        let hosts: Vec<String> = match &entry.hosts {
            Some(hosts) => hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            None => identity.names().to_vec(),
        };
        if hosts.is_empty() {
            let why = if entry.hosts.is_some() {
                "is empty; list the names this certificate serves"
            } else {
                "not given, and the certificate names no DNS host; list the names it serves"
            };
            p.push(format!("{at}.hosts"), why);
            continue;
        }
        for host in &hosts {
            if !valid_host_pattern(host) {
                p.push(
                    format!("{at}.hosts"),
                    format!(
                        "`{host}` is not a host name (letters, digits, `-` and dots, optionally \
                         starting with `*.`)"
                    ),
                );
            } else if let Some(first) = owner.insert(host.clone(), index) {
                p.push(
                    format!("{at}.hosts"),
                    format!("`{host}` is already served by listen.certificates[{first}]"),
                );
            }
        }
        table.push((hosts, identity));
    }
    (p.0.len() == before).then(|| SniCertificates::new(table))
}

/// A DNS name, or `*.` and a DNS name: what SNI can ask for (RFC 6066 §3 sends no IP literals).
fn valid_host_pattern(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Returns the CPUs to run one shard on each, in the configured order.
fn check_runtime(p: &mut Problems, runtime: &RawRuntime, host: &Host) -> Option<Vec<usize>> {
    let allowed = host.allowed_cpus.as_ref();
    let allowed_text = || allowed.map(format_cpu_list).unwrap_or_default();

    if runtime.cores.is_some() && runtime.shards.is_some() {
        p.push(
            "runtime",
            "set either `cores` (which CPUs to use) or `shards` (how many, from CPU 0), not both",
        );
    }

    let mut cores: Option<Vec<usize>> = None;
    if let Some(shards) = runtime.shards.map(|s| s.0) {
        // The CPU set size bounds how many shards could ever be pinned.
        let max = shards::sys::CPU_SET_SIZE as i64;
        if let Some(n) = p.in_range("runtime.shards", shards, 1, max, "") {
            let wanted: Vec<usize> = (0..n as usize).collect();
            let missing = allowed.is_some_and(|a| wanted.iter().any(|c| !a.contains(c)));
            if missing {
                p.push(
                    "runtime.shards",
                    format!(
                        "{n} shards need CPUs 0-{}, but this process may only run on CPUs {}; \
                         lower `shards` or list the CPUs to use in `cores` instead",
                        n - 1,
                        allowed_text()
                    ),
                );
            } else {
                cores = Some(wanted);
            }
        }
    }

    if let Some(list) = &runtime.cores {
        if list.is_empty() {
            p.push("runtime.cores", "must list at least one CPU");
        }
        let mut ok = !list.is_empty();
        let mut seen: HashMap<i64, usize> = HashMap::new();
        let mut chosen = Vec::with_capacity(list.len());
        for (i, &Int(cpu)) in list.iter().enumerate() {
            let key = format!("runtime.cores[{i}]");
            if let Some(first) = seen.get(&cpu) {
                p.push(
                    &key,
                    format!("CPU {cpu} is listed twice (also at runtime.cores[{first}])"),
                );
                ok = false;
                continue;
            }
            seen.insert(cpu, i);
            if cpu < 0 {
                p.push(&key, format!("CPU index must not be negative, got {cpu}"));
                ok = false;
                continue;
            }
            let cpu = cpu as usize;
            if allowed.is_some_and(|a| !a.contains(&cpu)) {
                p.push(
                    &key,
                    format!(
                        "CPU {cpu} is not available to this process (allowed CPUs: {})",
                        allowed_text()
                    ),
                );
                ok = false;
                continue;
            }
            chosen.push(cpu);
        }
        if ok {
            cores = Some(chosen);
        }
    }

    if runtime.cores.is_none() && runtime.shards.is_none() {
        if allowed.is_some_and(|a| !a.contains(&0)) {
            p.push(
                "runtime",
                format!(
                    "neither `cores` nor `shards` is set, so spooky would run one shard on CPU 0, \
                     which is not available to this process (allowed CPUs: {}); set `cores`",
                    allowed_text()
                ),
            );
        } else {
            cores = Some(vec![0]);
        }
    }
    cores
}

fn check_quic(p: &mut Problems, quic: &RawQuic) -> QuicSettings {
    // Defaults live in the plan so that the data plane and the config agree on one set of values;
    // a rejected value keeps its default only so the remaining checks can run.
    let d = QuicSettings::default();
    let mut q = d.clone();
    if let Some(Int(v)) = quic.idle_timeout_ms {
        if let Some(v) = p.in_range("quic.idle_timeout_ms", v, 1, VARINT_MAX, " ms") {
            q.idle_timeout = Duration::from_millis(v as u64);
        }
    }
    if let Some(Int(v)) = quic.max_concurrent_streams {
        if let Some(v) = p.in_range("quic.max_concurrent_streams", v, 1, MAX_STREAMS, "") {
            q.max_concurrent_streams = v as u64;
        }
    }
    let window_unit = " bytes";
    if let Some(Int(v)) = quic.stream_window {
        if let Some(v) = p.in_range("quic.stream_window", v, MIN_WINDOW, VARINT_MAX, window_unit) {
            q.stream_window = v as u64;
        }
    }
    if let Some(Int(v)) = quic.connection_window {
        let key = "quic.connection_window";
        if let Some(v) = p.in_range(key, v, MIN_WINDOW, VARINT_MAX, window_unit) {
            q.connection_window = v as u64;
        }
    }
    if let Some(Int(v)) = quic.max_udp_payload_size {
        let key = "quic.max_udp_payload_size";
        if let Some(v) = p.in_range(key, v, MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD, " bytes") {
            q.max_udp_payload = v as usize;
        }
    }
    if let Some(v) = quic.path_mtu_discovery {
        q.path_mtu_discovery = v;
    }
    match quic.steering.as_deref() {
        None | Some("auto") => {}
        Some("bpf") => q.steering = SteeringMode::Bpf,
        Some("off") => q.steering = SteeringMode::Off,
        Some(other) => p.push(
            "quic.steering",
            format!("unknown steering `{other}`; expected \"auto\", \"bpf\" or \"off\""),
        ),
    }
    match quic.retry.as_deref() {
        None | Some("auto") => {}
        Some("always") => q.retry = RetryMode::Always,
        Some("off") => q.retry = RetryMode::Off,
        Some(other) => p.push(
            "quic.retry",
            format!("unknown retry mode `{other}`; expected \"auto\", \"always\" or \"off\""),
        ),
    }
    let count = |p: &mut Problems, key: &str, value: Option<Int>, lo: i64, target: &mut usize| {
        if let Some(Int(v)) = value {
            if let Some(v) = p.in_range(key, v, lo, MAX_CONNECTIONS, "") {
                *target = v as usize;
            }
        }
    };
    count(
        p,
        "quic.retry_above",
        quic.retry_above,
        0,
        &mut q.retry_above,
    );
    count(
        p,
        "quic.max_connections",
        quic.max_connections,
        1,
        &mut q.max_connections,
    );
    count(
        p,
        "quic.max_handshakes",
        quic.max_handshakes,
        1,
        &mut q.max_handshakes,
    );
    if let Some(Int(v)) = quic.handshake_timeout_ms {
        if let Some(v) = p.in_range("quic.handshake_timeout_ms", v, 100, 600_000, " ms") {
            q.handshake_timeout = Duration::from_millis(v as u64);
        }
    }
    if let Some(Int(v)) = quic.new_connection_rate {
        if let Some(v) = p.in_range(
            "quic.new_connection_rate",
            v,
            0,
            MAX_SOURCE_RATE,
            " per second",
        ) {
            q.new_connection_rate = v as u32;
        }
    }
    if let Some(Int(v)) = quic.new_connection_burst {
        if let Some(v) = p.in_range("quic.new_connection_burst", v, 1, MAX_SOURCE_RATE, "") {
            q.new_connection_burst = v as u32;
        }
    }
    if quic.handshake_timeout_ms.is_none() {
        // The default yields to a shorter idle timeout rather than make that setting an error.
        q.handshake_timeout = q.handshake_timeout.min(q.idle_timeout);
    } else if q.handshake_timeout > q.idle_timeout {
        p.push(
            "quic.handshake_timeout_ms",
            format!(
                "must not exceed quic.idle_timeout_ms ({} ms), got {} ms: the idle timeout would end the handshake first",
                q.idle_timeout.as_millis(),
                q.handshake_timeout.as_millis()
            ),
        );
    }
    if let Some(dir) = &quic.bpf_pin_dir {
        if Path::new(dir).is_absolute() {
            q.bpf_pin_dir = PathBuf::from(dir);
        } else {
            p.push(
                "quic.bpf_pin_dir",
                format!("must be an absolute path, got \"{dir}\""),
            );
        }
    }
    q
}
