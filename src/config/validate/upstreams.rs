//! Checks of `[upstream.NAME]` tables: routes, balancing, timeouts, retries, backends and their
//! health checks.

use super::*;

pub(super) fn check_upstreams(
    p: &mut Problems,
    upstreams: &[(String, RawUpstream)],
    base_dir: &Path,
    listener_limits: shards::plan::RequestLimits,
) -> Vec<UpstreamPlan> {
    if upstreams.is_empty() {
        p.push(
            "upstream",
            "no upstreams configured; add at least one [upstream.NAME] table with a route and \
             backends",
        );
    }
    // Backend ids label metrics, so they must be unique across pools, not just within one.
    let mut ids: HashMap<&str, String> = HashMap::new();
    // A route is (host, path_prefix, method); two upstreams with the same one are ambiguous.
    let mut routes: HashMap<(Option<String>, &str, Option<String>), &str> = HashMap::new();
    let mut plans = Vec::with_capacity(upstreams.len());

    for (name, up) in upstreams {
        let base = format!("upstream.{name}");

        let prefix = &up.route.path_prefix;
        let prefix_key = format!("{base}.route.path_prefix");
        if !prefix.starts_with('/') {
            p.push(
                &prefix_key,
                format!("must start with '/', got \"{prefix}\""),
            );
        }
        let host = up.route.host.as_ref().map(|h| h.to_ascii_lowercase());
        if let Some(h) = &host {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            let valid = !bare.is_empty()
                && !bare.contains('*')
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !valid {
                p.push(
                    format!("{base}.route.host"),
                    format!(
                        "`{h}` is not a host name; give an exact name (api.example.com) or a \
                         wildcard for subdomains (*.example.com)"
                    ),
                );
            }
        }
        let method = up.route.method.clone();
        if let Some(m) = &method {
            if m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase()) {
                p.push(
                    format!("{base}.route.method"),
                    format!("`{m}` is not an HTTP method in upper case, such as GET or POST"),
                );
            }
        }
        if prefix.starts_with('/') {
            let route = (host.clone(), prefix.as_str(), method.clone());
            if let Some(other) = routes.get(&route) {
                p.push(
                    &prefix_key,
                    format!(
                        "upstream.{other} and upstream.{name} have the same route (host {}, \
                         path_prefix \"{prefix}\", method {}); requests could go to either, so \
                         each route may belong to one upstream only",
                        host.as_deref().unwrap_or("any"),
                        method.as_deref().unwrap_or("any"),
                    ),
                );
            } else {
                routes.insert(route, name);
            }
        }

        let lb_key = up.load_balancing.as_ref().and_then(|lb| lb.key.as_deref());
        let kind = up.load_balancing.as_ref().map(|lb| lb.kind);
        let key_path = format!("{base}.load_balancing.key");
        if lb_key.is_some() && kind != Some(BalancingKind::ConsistentHash) {
            p.push(&key_path, "only `consistent-hash` uses a key");
        }
        let balancing = match kind {
            None | Some(BalancingKind::RoundRobin) => Balancing::RoundRobin,
            Some(BalancingKind::Random) => Balancing::Random,
            Some(BalancingKind::LeastRequest) => Balancing::LeastRequest,
            Some(BalancingKind::LatencyAware) => Balancing::LatencyAware,
            Some(BalancingKind::ConsistentHash) => match lb_key.map(|k| (k, HashKey::parse(k))) {
                Some((_, Some(key))) => Balancing::ConsistentHash(key),
                Some((text, None)) => {
                    p.push(
                        &key_path,
                        format!(
                            "`{text}` is not a hash key; use header:NAME, cookie:NAME, \
                             query:NAME, path, authority or client-ip"
                        ),
                    );
                    Balancing::RoundRobin
                }
                None => {
                    p.push(
                        &key_path,
                        "`consistent-hash` needs a key: header:NAME, cookie:NAME, query:NAME, \
                         path, authority or client-ip",
                    );
                    Balancing::RoundRobin
                }
            },
        };

        let mut timeouts = UpstreamTimeouts::default();
        if let Some(t) = &up.timeouts {
            // Each limit in milliseconds, at least `min`; `None` when absent or rejected.
            let mut millis = |name: &str, value: Option<Int>, min: i64| {
                let Int(ms) = value?;
                let key = format!("{base}.timeouts.{name}");
                p.in_range(&key, ms, min, i64::MAX, " ms")
                    .map(|ms| Duration::from_millis(ms as u64))
            };
            if let Some(limit) = millis("connect_ms", t.connect_ms, 1) {
                timeouts.connect = limit;
            }
            if let Some(limit) = millis("response_headers_ms", t.response_headers_ms, 1) {
                timeouts.response_headers = limit;
            }
            if let Some(limit) = millis("body_idle_ms", t.body_idle_ms, 1) {
                timeouts.body_idle = limit;
            }
            // 0 spells "no limit", as in Envoy's route timeout.
            if let Some(limit) = millis("total_ms", t.total_ms, 0) {
                timeouts.total = (!limit.is_zero()).then_some(limit);
            }
        }

        if up.backends.is_empty() {
            p.push(
                format!("{base}.backends"),
                format!("pool is empty; add at least one [[{base}.backends]] entry"),
            );
        }
        let mut backends = Vec::with_capacity(up.backends.len());
        for (i, b) in up.backends.iter().enumerate() {
            let bkey = format!("{base}.backends[{i}]");
            let id_key = format!("{bkey}.id");
            if b.id.trim().is_empty() {
                p.push(&id_key, "must not be empty");
            } else if let Some(first) = ids.get(b.id.as_str()) {
                p.push(
                    &id_key,
                    format!(
                        "duplicate backend id `{}`, already used at {first}; ids must be unique \
                         across all upstreams because metrics are labelled by id",
                        b.id
                    ),
                );
            } else {
                ids.insert(&b.id, id_key.clone());
            }

            let address = check_backend_address(p, &format!("{bkey}.address"), &b.address);

            let weight = match b.weight {
                None => Some(DEFAULT_WEIGHT),
                Some(Int(w)) => p
                    .in_range(&format!("{bkey}.weight"), w, 1, MAX_WEIGHT, "")
                    .map(|w| w as u32),
            };

            let health_check = match &b.health_check {
                None => Some(None),
                Some(raw) => check_health_check(p, &format!("{bkey}.health_check"), raw).map(Some),
            };

            if let (Some((address, name)), Some(weight), Some(health_check)) =
                (address, weight, health_check)
            {
                backends.push(BackendPlan {
                    id: b.id.clone(),
                    address,
                    name,
                    weight,
                    health_check,
                    // Assigned for the whole plan once every backend is known.
                    stats_slot: 0,
                });
            }
        }

        let retries = p
            .in_range(
                &format!("{base}.retries"),
                up.retries.map_or(i64::from(DEFAULT_RETRIES), |r| r.0),
                0,
                10,
                "",
            )
            .unwrap_or(DEFAULT_RETRIES as i64) as u32;
        let retry_budget = p
            .in_range(
                &format!("{base}.retry_budget_percent"),
                up.retry_budget_percent
                    .map_or((DEFAULT_RETRY_BUDGET * 100.0) as i64, |r| r.0),
                0,
                100,
                " %",
            )
            .unwrap_or(20) as f64
            / 100.0;

        let resolve_interval = p
            .in_range(
                &format!("{base}.resolve_interval_ms"),
                up.resolve_interval_ms
                    .map_or(DEFAULT_RESOLVE_INTERVAL.as_millis() as i64, |v| v.0),
                100,
                3_600_000,
                " ms",
            )
            .map_or(DEFAULT_RESOLVE_INTERVAL, |ms| {
                Duration::from_millis(ms as u64)
            });
        let (protocol, transport) = check_protocol(p, &base, up);
        let tls = check_backend_tls(p, &base, up, protocol, transport, base_dir);
        let limits = super::check_limits(
            p,
            &format!("{base}.limits"),
            up.limits.as_ref(),
            listener_limits,
        );

        plans.push(UpstreamPlan {
            name: name.clone(),
            route: RoutePlan {
                path_prefix: prefix.clone(),
                host: up.route.host.as_ref().map(|h| h.to_ascii_lowercase()),
                method: up.route.method.clone(),
            },
            balancing,
            timeouts,
            retries,
            retry_budget,
            protocol,
            tls,
            resolve_interval,
            limits,
            backends,
        });
    }
    plans
}

/// `IP:port`, or `host:port` for the coordinator to resolve: (where shards connect, the name).
/// A named backend's address is a placeholder (the unspecified address with its port) until
/// its name resolves.
fn check_backend_address(
    p: &mut Problems,
    key: &str,
    text: &str,
) -> Option<(SocketAddr, Option<BackendName>)> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        if address.port() == 0 {
            p.push(
                key,
                format!("`{text}` has port 0; a backend needs a real port"),
            );
            return None;
        }
        return Some((address, None));
    }
    let malformed = || {
        format!(
            "`{text}` is neither IP:port (10.0.10.10:8080, [2001:db8::10]:8080) nor \
             host:port (api.internal:8080)"
        )
    };
    let Some((host, port)) = text.rsplit_once(':') else {
        p.push(key, format!("{}: the port is missing", malformed()));
        return None;
    };
    let port = match port.parse::<u16>() {
        Ok(0) => {
            p.push(
                key,
                format!("`{text}` has port 0; a backend needs a real port"),
            );
            return None;
        }
        Ok(port) => port,
        Err(_) => {
            p.push(key, malformed());
            return None;
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let is_dns_name = matches!(
        ServerName::try_from(host.as_str()),
        Ok(ServerName::DnsName(_))
    );
    if !is_dns_name || host.parse::<std::net::IpAddr>().is_ok() {
        p.push(key, malformed());
        return None;
    }
    let placeholder = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port);
    Some((placeholder, Some(BackendName { host, port })))
}

/// Whether a protocol runs over TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `h2c`: never.
    Cleartext,
    /// `h2`: always.
    Tls,
    /// `http/1.1`: when the `tls` table is present.
    TlsIfConfigured,
}

/// `protocol` and the `keepalive` table that only HTTP/1.1 uses.
fn check_protocol(p: &mut Problems, base: &str, up: &RawUpstream) -> (BackendProtocol, Transport) {
    let key = format!("{base}.protocol");
    let (http1, transport) = match up.protocol.as_deref() {
        None | Some("h2c") => (false, Transport::Cleartext),
        Some("h2") => (false, Transport::Tls),
        Some("http/1.1") => (true, Transport::TlsIfConfigured),
        Some("auto") => (true, Transport::Tls),
        Some(other) => {
            p.push(
                &key,
                format!(
                    "`{other}` is not a backend protocol; use \"h2c\" (cleartext HTTP/2, the \
                     default), \"h2\" (HTTP/2 over TLS), \"http/1.1\" or \"auto\" (HTTP/2 or \
                     HTTP/1.1 over TLS, as the backend chooses by ALPN)"
                ),
            );
            (false, Transport::TlsIfConfigured)
        }
    };
    let keepalive = match (&up.keepalive, http1) {
        (None, _) => DEFAULT_KEEPALIVE,
        (Some(raw), true) => check_keepalive(p, &format!("{base}.keepalive"), raw),
        (Some(_), false) => {
            p.push(
                format!("{base}.keepalive"),
                "applies to protocol = \"http/1.1\" or \"auto\" only; HTTP/2 multiplexes \
                 requests on connections it keeps open",
            );
            DEFAULT_KEEPALIVE
        }
    };
    let protocol = match (http1, transport) {
        (true, Transport::Tls) => BackendProtocol::Auto(keepalive),
        (true, _) => BackendProtocol::Http1(keepalive),
        (false, _) => BackendProtocol::Http2,
    };
    (protocol, transport)
}

/// `[upstream.NAME.tls]`, and the TLS that `protocol = "h2"` implies without it.
fn check_backend_tls(
    p: &mut Problems,
    base: &str,
    up: &RawUpstream,
    protocol: BackendProtocol,
    transport: Transport,
    base_dir: &Path,
) -> Option<BackendTls> {
    let key = format!("{base}.tls");
    let empty = RawBackendTls {
        ca: None,
        server_name: None,
        cert: None,
        key: None,
        insecure_skip_verify: None,
    };
    let raw = match (transport, up.tls.as_ref()) {
        (Transport::Cleartext, None) | (Transport::TlsIfConfigured, None) => return None,
        (Transport::Cleartext, Some(_)) => {
            p.push(
                &key,
                "h2c is cleartext HTTP/2; use protocol = \"h2\" for HTTP/2 over TLS (or \
                 \"http/1.1\" for HTTP/1.1 over TLS)",
            );
            return None;
        }
        (Transport::Tls, raw) => raw.unwrap_or(&empty),
        (Transport::TlsIfConfigured, Some(raw)) => raw,
    };
    let problems_before = p.count();
    let insecure = raw.insecure_skip_verify.unwrap_or(false);
    let ca = raw.ca.as_ref().and_then(|ca| {
        if insecure {
            p.push(
                format!("{key}.ca"),
                "has no use with insecure_skip_verify = true, which accepts any certificate; \
                 remove one of them",
            );
            return None;
        }
        check_pem_file(p, &format!("{key}.ca"), ca, base_dir, PemKind::Certificate)
    });
    let server_name =
        raw.server_name
            .as_ref()
            .and_then(|name| match ServerName::try_from(name.clone()) {
                Ok(name) => Some(name),
                Err(_) => {
                    p.push(
                        format!("{key}.server_name"),
                        format!("`{name}` is not a DNS name or IP address"),
                    );
                    None
                }
            });
    let identity = match (&raw.cert, &raw.key) {
        (None, None) => None,
        (Some(_), None) => {
            p.push(
                format!("{key}.key"),
                "is required with tls.cert (mutual TLS)",
            );
            None
        }
        (None, Some(_)) => {
            p.push(
                format!("{key}.cert"),
                "is required with tls.key (mutual TLS)",
            );
            None
        }
        (Some(cert), Some(private)) => {
            let cert = check_pem_file(
                p,
                &format!("{key}.cert"),
                cert,
                base_dir,
                PemKind::Certificate,
            );
            let private = check_pem_file(
                p,
                &format!("{key}.key"),
                private,
                base_dir,
                PemKind::PrivateKey,
            );
            match (cert, private) {
                (Some(cert), Some(private)) => load_identity(p, &key, &cert, &private),
                _ => None,
            }
        }
    };
    if p.count() > problems_before {
        return None;
    }
    let alpn = match protocol {
        BackendProtocol::Http2 => ALPN_H2,
        BackendProtocol::Http1(_) => ALPN_HTTP1,
        BackendProtocol::Auto(_) => ALPN_AUTO,
    };
    let settings = BackendTlsSettings {
        ca: ca.as_deref(),
        client_identity: identity.as_ref(),
        server_name,
        insecure_skip_verify: insecure,
        alpn,
    };
    match BackendTls::build(&settings) {
        // Logged by the runtime each time the plan takes effect: the logger is not set up yet.
        Ok(tls) => Some(tls),
        Err(e) => {
            let at = match e {
                BackendTlsError::Config(_) => key,
                _ => format!("{key}.ca"),
            };
            p.push(at, e.to_string());
            None
        }
    }
}

/// Up to 10,000 idle connections per backend per shard; an hour of idleness at most.
fn check_keepalive(p: &mut Problems, key: &str, raw: &RawKeepAlive) -> KeepAlive {
    let max_idle = raw
        .max_idle
        .map_or(DEFAULT_KEEPALIVE.max_idle as i64, |v| v.0);
    let max_idle = p
        .in_range(&format!("{key}.max_idle"), max_idle, 0, 10_000, "")
        .map_or(DEFAULT_KEEPALIVE.max_idle, |n| n as usize);
    let default_ms = DEFAULT_KEEPALIVE.idle_timeout.as_millis() as i64;
    let idle_ms = raw.idle_timeout_ms.map_or(default_ms, |v| v.0);
    let idle_timeout = p
        .in_range(
            &format!("{key}.idle_timeout_ms"),
            idle_ms,
            1,
            3_600_000,
            " ms",
        )
        .map_or(DEFAULT_KEEPALIVE.idle_timeout, |ms| {
            Duration::from_millis(ms as u64)
        });
    KeepAlive {
        max_idle,
        idle_timeout,
    }
}

/// Defaults follow the upstream Spooky guide's examples.
const DEFAULT_HEALTH_INTERVAL_MS: i64 = 5_000;
const DEFAULT_HEALTH_TIMEOUT_MS: i64 = 2_000;
const DEFAULT_FAILURE_THRESHOLD: i64 = 3;
const DEFAULT_SUCCESS_THRESHOLD: i64 = 2;

fn check_health_check(
    p: &mut Problems,
    key: &str,
    raw: &RawHealthCheck,
) -> Option<HealthCheckPlan> {
    if !raw.path.starts_with('/') {
        p.push(
            format!("{key}.path"),
            format!("`{}` must start with '/'", raw.path),
        );
    }
    let mut field = |name: &str, value: Option<Int>, default: i64, lo: i64, hi: i64, unit: &str| {
        p.in_range(
            &format!("{key}.{name}"),
            value.map_or(default, |v| v.0),
            lo,
            hi,
            unit,
        )
    };
    let interval = field(
        "interval",
        raw.interval,
        DEFAULT_HEALTH_INTERVAL_MS,
        10,
        3_600_000,
        " ms",
    );
    let timeout = field(
        "timeout_ms",
        raw.timeout_ms,
        DEFAULT_HEALTH_TIMEOUT_MS,
        1,
        600_000,
        " ms",
    );
    let failures = field(
        "failure_threshold",
        raw.failure_threshold,
        DEFAULT_FAILURE_THRESHOLD,
        1,
        1000,
        "",
    );
    let successes = field(
        "success_threshold",
        raw.success_threshold,
        DEFAULT_SUCCESS_THRESHOLD,
        1,
        1000,
        "",
    );
    if let (Some(interval), Some(timeout)) = (interval, timeout) {
        if timeout > interval {
            p.push(
                format!("{key}.timeout_ms"),
                format!("{timeout} ms is longer than the interval ({interval} ms); checks would overlap"),
            );
            return None;
        }
    }
    if !raw.path.starts_with('/') {
        return None;
    }
    Some(HealthCheckPlan {
        path: raw.path.clone(),
        interval: Duration::from_millis(interval? as u64),
        timeout: Duration::from_millis(timeout? as u64),
        failure_threshold: failures? as u32,
        success_threshold: successes? as u32,
    })
}
