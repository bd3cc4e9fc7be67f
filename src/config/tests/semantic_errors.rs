//! Semantic errors: every problem, each with its key path.

use super::*;

#[test]
fn reports_all_problems_at_once() {
    let s = Scratch::new();
    let text = edit(&s.full(), "weight = 50", "weight = 0");
    let text = edit(&text, "path_prefix = \"/api\"", "path_prefix = \"api\"");
    let text = edit(&text, "level = \"debug\"", "level = \"loud\"");
    let err = s.parse(&text).expect_err("three problems");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "upstream.api_pool.route.path_prefix",
            "upstream.api_pool.backends[1].weight",
            "log.level"
        ]
    );
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 3, "{shown}");
    let origin = s.config_path().display().to_string();
    assert!(shown.lines().all(|l| l.starts_with(&origin)), "{shown}");
}

#[test]
fn missing_cert_file() {
    let s = Scratch::new();
    fs::remove_file(&s.certs.cert_chain).expect("remove cert");
    let problems = s.problems(&s.minimal());
    assert_problem(&problems, "listen.tls.cert", "cannot read");
    assert_problem(&problems, "listen.tls.cert", "cert.pem");
}

#[test]
fn missing_key_file_is_resolved_next_to_the_config() {
    let s = Scratch::new();
    let text = edit(
        &s.minimal(),
        &s.tls_line(),
        &format!(
            "tls = {{ cert = \"{}\", key = \"secret/key.pem\" }}",
            s.certs.cert_chain.display()
        ),
    );
    let expected = s.dir.join("secret/key.pem").display().to_string();
    assert_problem(
        &s.problems(&text),
        "listen.tls.key",
        &format!("cannot read {expected}"),
    );
}

#[test]
fn unreadable_key_file() {
    let s = Scratch::new();
    // A directory exists but cannot be read as a file; unlike chmod 000 this also fails as root.
    let text = edit(
        &s.minimal(),
        &s.tls_line(),
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            s.certs.cert_chain.display(),
            s.dir.display()
        ),
    );
    assert_problem(&s.problems(&text), "listen.tls.key", "cannot read");
}

#[test]
fn cert_file_without_certificate() {
    let s = Scratch::new();
    fs::write(&s.certs.cert_chain, "not a certificate\n").expect("write");
    assert_problem(
        &s.problems(&s.minimal()),
        "listen.tls.cert",
        "contains no PEM certificate",
    );
}

#[test]
fn key_file_without_private_key() {
    let s = Scratch::new();
    fs::write(&s.certs.private_key, "").expect("write");
    assert_problem(
        &s.problems(&s.minimal()),
        "listen.tls.key",
        "contains no PEM private key",
    );
}

#[test]
fn swapped_cert_and_key_are_named_as_such() {
    let s = Scratch::new();
    let text = edit(
        &s.minimal(),
        &s.tls_line(),
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            s.certs.private_key.display(),
            s.certs.cert_chain.display()
        ),
    );
    let problems = s.problems(&text);
    assert_problem(&problems, "listen.tls.cert", "swapped");
    assert_problem(&problems, "listen.tls.key", "swapped");
}

#[test]
fn encrypted_key_is_rejected() {
    let s = Scratch::new();
    fs::write(
        &s.certs.private_key,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .expect("write");
    assert_problem(&s.problems(&s.minimal()), "listen.tls.key", "encrypted");
}

#[test]
fn bad_listen_address() {
    let s = Scratch::new();
    let text = edit(
        &s.minimal(),
        "address = \"::\"",
        "address = \"example.com\"",
    );
    assert_problem(&s.problems(&text), "listen.address", "is not an IP address");
}

#[test]
fn listen_port_out_of_range() {
    let s = Scratch::new();
    let text = edit(&s.minimal(), "port = 443", "port = 70000");
    assert_problem(&s.problems(&text), "listen.port", "must be at most 65535");
}

#[test]
fn no_upstreams_when_absent() {
    let s = Scratch::new();
    let text = format!("[listen]\naddress = \"::\"\nport = 443\n{}\n", s.tls_line());
    assert_problem(&s.problems(&text), "upstream", "no upstreams configured");
}

#[test]
fn no_upstreams_when_empty() {
    let s = Scratch::new();
    let text = format!(
        "[listen]\naddress = \"::\"\nport = 443\n{}\n[upstream]\n",
        s.tls_line()
    );
    assert_problem(&s.problems(&text), "upstream", "no upstreams configured");
}

#[test]
fn empty_pool() {
    let s = Scratch::new();
    let text = format!(
        "{}\n[upstream.spare]\nroute = {{ path_prefix = \"/spare\" }}\n",
        s.minimal()
    );
    assert_problem(
        &s.problems(&text),
        "upstream.spare.backends",
        "pool is empty",
    );
}

#[test]
fn duplicate_backend_id_across_upstreams_names_both() {
    let s = Scratch::new();
    let text = edit(&s.full(), "id = \"web-01\"", "id = \"api-02\"");
    assert_problem(
        &s.problems(&text),
        "upstream.default_pool.backends[0].id",
        "duplicate backend id `api-02`, already used at upstream.api_pool.backends[1].id",
    );
}

#[test]
fn duplicate_backend_id_within_a_pool() {
    let s = Scratch::new();
    let text = edit(&s.full(), "id = \"api-02\"", "id = \"api-01\"");
    assert_problem(
        &s.problems(&text),
        "upstream.api_pool.backends[1].id",
        "already used at upstream.api_pool.backends[0].id",
    );
}

#[test]
fn empty_backend_id() {
    let s = Scratch::new();
    let text = edit(&s.full(), "id = \"web-01\"", "id = \"\"");
    assert_problem(
        &s.problems(&text),
        "upstream.default_pool.backends[0].id",
        "must not be empty",
    );
}

#[test]
fn unparsable_backend_address() {
    let s = Scratch::new();
    for address in ["web 01.internal:8080", "web-01.internal:http", "-:8080"] {
        let text = edit(&s.full(), "\"10.0.30.10:8080\"", &format!("\"{address}\""));
        assert_problem(
            &s.problems(&text),
            "upstream.default_pool.backends[0].address",
            &format!(
                "`{address}` is neither IP:port (10.0.10.10:8080, [2001:db8::10]:8080) nor \
                 host:port (api.internal:8080)"
            ),
        );
    }
    let text = edit(&s.full(), "\"10.0.30.10:8080\"", "\"web-01.internal:0\"");
    assert_problem(
        &s.problems(&text),
        "upstream.default_pool.backends[0].address",
        "has port 0",
    );
    assert_problem(
        &s.problems(&api_pool_with(&s, "resolve_interval_ms = 50")),
        "upstream.api_pool.resolve_interval_ms",
        "must be at least 100 ms, got 50",
    );
}

#[test]
fn backend_address_without_port() {
    let s = Scratch::new();
    let text = edit(&s.full(), "\"10.0.30.10:8080\"", "\"10.0.30.10\"");
    assert_problem(
        &s.problems(&text),
        "upstream.default_pool.backends[0].address",
        "the port is missing",
    );
}

#[test]
fn backend_port_zero() {
    let s = Scratch::new();
    let text = edit(&s.full(), "\"10.0.30.10:8080\"", "\"10.0.30.10:0\"");
    assert_problem(
        &s.problems(&text),
        "upstream.default_pool.backends[0].address",
        "port 0",
    );
}

#[test]
fn weight_zero() {
    let s = Scratch::new();
    let text = edit(&s.full(), "weight = 50", "weight = 0");
    assert_problem(
        &s.problems(&text),
        "upstream.api_pool.backends[1].weight",
        "must be at least 1, got 0",
    );
}

#[test]
fn weight_too_large() {
    let s = Scratch::new();
    let text = edit(&s.full(), "weight = 50", "weight = 10001");
    assert_problem(
        &s.problems(&text),
        "upstream.api_pool.backends[1].weight",
        "must be at most 10000",
    );
}

#[test]
fn path_prefix_without_leading_slash() {
    let s = Scratch::new();
    let text = edit(&s.full(), "path_prefix = \"/api\"", "path_prefix = \"api\"");
    assert_problem(
        &s.problems(&text),
        "upstream.api_pool.route.path_prefix",
        "must start with '/'",
    );
}

#[test]
fn duplicate_path_prefix_names_both_upstreams() {
    let s = Scratch::new();
    let text = edit(&s.full(), "path_prefix = \"/\"", "path_prefix = \"/api\"");
    let problems = s.problems(&text);
    assert_problem(
        &problems,
        "upstream.default_pool.route.path_prefix",
        "upstream.api_pool and upstream.default_pool have the same route",
    );
    assert_eq!(problems.len(), 1, "{problems:#?}");
}

#[test]
fn both_cores_and_shards() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "cores = [2, 1]\nshards = 2");
    assert_problem(&s.problems(&text), "runtime", "not both");
}

#[test]
fn zero_shards() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "shards = 0");
    assert_problem(&s.problems(&text), "runtime.shards", "must be at least 1");
}

#[test]
fn more_shards_than_allowed_cpus() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "shards = 6");
    assert_problem(
        &s.problems(&text),
        "runtime.shards",
        "may only run on CPUs 0-3",
    );
}

#[test]
fn empty_cores() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "cores = []");
    assert_problem(
        &s.problems(&text),
        "runtime.cores",
        "must list at least one CPU",
    );
}

#[test]
fn duplicate_cores() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "cores = [2, 1, 2]");
    assert_problem(
        &s.problems(&text),
        "runtime.cores[2]",
        "CPU 2 is listed twice (also at runtime.cores[0])",
    );
}

#[test]
fn negative_core() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "cores = [-1]");
    assert_problem(
        &s.problems(&text),
        "runtime.cores[0]",
        "must not be negative",
    );
}

#[test]
fn unavailable_core_names_allowed_cpus() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "cores = [1, 7]");
    assert_problem(
        &s.problems(&text),
        "runtime.cores[1]",
        "CPU 7 is not available to this process (allowed CPUs: 0-3)",
    );
}

#[test]
fn default_core_unavailable() {
    let s = Scratch::new();
    let host = Host {
        allowed_cpus: Some([2, 3].into_iter().collect()),
    };
    let err =
        parse_with_host(&s.minimal(), &s.config_path(), &host).expect_err("CPU 0 not allowed");
    assert_problem(err.problems(), "runtime", "CPU 0, which is not available");
}

#[test]
fn zero_idle_timeout() {
    let s = Scratch::new();
    let text = edit(&s.full(), "idle_timeout_ms = 10000", "idle_timeout_ms = 0");
    assert_problem(
        &s.problems(&text),
        "quic.idle_timeout_ms",
        "must be at least 1 ms, got 0",
    );
}

#[test]
fn zero_max_concurrent_streams() {
    let s = Scratch::new();
    let text = edit(
        &s.full(),
        "max_concurrent_streams = 100",
        "max_concurrent_streams = 0",
    );
    assert_problem(
        &s.problems(&text),
        "quic.max_concurrent_streams",
        "must be at least 1, got 0",
    );
}

#[test]
fn windows_below_16_kib() {
    let s = Scratch::new();
    let text = edit(&s.full(), "stream_window = 65536", "stream_window = 16383");
    let text = edit(
        &text,
        "connection_window = 1048576",
        "connection_window = 1000",
    );
    let problems = s.problems(&text);
    assert_problem(
        &problems,
        "quic.stream_window",
        "must be at least 16384 bytes, got 16383",
    );
    assert_problem(
        &problems,
        "quic.connection_window",
        "must be at least 16384 bytes, got 1000",
    );
}

#[test]
fn udp_payload_out_of_range() {
    let s = Scratch::new();
    let low = edit(
        &s.full(),
        "max_udp_payload_size = 1452",
        "max_udp_payload_size = 1199",
    );
    assert_problem(
        &s.problems(&low),
        "quic.max_udp_payload_size",
        "must be at least 1200 bytes",
    );
    let high = edit(
        &s.full(),
        "max_udp_payload_size = 1452",
        "max_udp_payload_size = 65001",
    );
    assert_problem(
        &s.problems(&high),
        "quic.max_udp_payload_size",
        "must be at most 65000 bytes",
    );
}

#[test]
fn steering_settings_are_checked() {
    let s = Scratch::new();
    let unknown = edit(
        &s.full(),
        "max_udp_payload_size = 1452",
        "max_udp_payload_size = 1452\nsteering = \"cbpf\"",
    );
    assert_problem(
        &s.problems(&unknown),
        "quic.steering",
        "unknown steering `cbpf`; expected \"auto\", \"bpf\" or \"off\"",
    );
    let relative = edit(
        &s.full(),
        "max_udp_payload_size = 1452",
        "max_udp_payload_size = 1452\nbpf_pin_dir = \"bpf/spooky\"",
    );
    assert_problem(
        &s.problems(&relative),
        "quic.bpf_pin_dir",
        "must be an absolute path",
    );
}

#[test]
fn invalid_log_level() {
    let s = Scratch::new();
    let text = edit(&s.full(), "level = \"debug\"", "level = \"verbose\"");
    assert_problem(
        &s.problems(&text),
        "log.level",
        "unknown log level `verbose`",
    );
}

#[test]
fn zero_timeouts() {
    let s = Scratch::new();
    let text = edit(
        &s.full(),
        "connect_ms = 500, response_headers_ms = 5000",
        "connect_ms = 0, response_headers_ms = 0",
    );
    let problems = s.problems(&text);
    assert_problem(
        &problems,
        "upstream.api_pool.timeouts.connect_ms",
        "must be at least 1 ms, got 0",
    );
    assert_problem(
        &problems,
        "upstream.api_pool.timeouts.response_headers_ms",
        "must be at least 1 ms, got 0",
    );
}

#[test]
fn unknown_backend_protocol() {
    let s = Scratch::new();
    let text = edit(
        &s.full(),
        "load_balancing = { type = \"random\" }",
        "load_balancing = { type = \"random\" }\nprotocol = \"spdy\"",
    );
    assert_problem(
        &s.problems(&text),
        "upstream.api_pool.protocol",
        "`spdy` is not a backend protocol; use \"h2c\" (cleartext HTTP/2, the default), \"h2\" (HTTP/2 over TLS), \"http/1.1\" or \"auto\" (HTTP/2 or HTTP/1.1 over TLS, as the backend chooses by ALPN)",
    );
}

#[test]
fn keepalive_belongs_to_http1_and_is_bounded() {
    let s = Scratch::new();
    let h2c = edit(
        &s.full(),
        "load_balancing = { type = \"random\" }",
        "load_balancing = { type = \"random\" }\nkeepalive = { max_idle = 4 }",
    );
    assert_problem(
        &s.problems(&h2c),
        "upstream.api_pool.keepalive",
        "applies to protocol = \"http/1.1\" or \"auto\" only",
    );
    let http1 = edit(
        &s.full(),
        "load_balancing = { type = \"random\" }",
        "load_balancing = { type = \"random\" }\nprotocol = \"http/1.1\"\n\
         keepalive = { max_idle = 10001, idle_timeout_ms = 0 }",
    );
    let problems = s.problems(&http1);
    assert_problem(
        &problems,
        "upstream.api_pool.keepalive.max_idle",
        "must be at most 10000, got 10001",
    );
    assert_problem(
        &problems,
        "upstream.api_pool.keepalive.idle_timeout_ms",
        "must be at least 1 ms, got 0",
    );
}

/// The api_pool upstream with `settings` added after its balancing line.
fn api_pool_with(s: &Scratch, settings: &str) -> String {
    edit(
        &s.full(),
        "load_balancing = { type = \"random\" }",
        &format!("load_balancing = {{ type = \"random\" }}\n{settings}"),
    )
}

#[test]
fn backend_tls_problems_name_their_key() {
    let s = Scratch::new();
    let ca = s.certs.ca.display().to_string();
    assert_problem(
        &s.problems(&api_pool_with(&s, &format!("tls = {{ ca = \"{ca}\" }}"))),
        "upstream.api_pool.tls",
        "h2c is cleartext HTTP/2; use protocol = \"h2\" for HTTP/2 over TLS",
    );
    let both = format!("protocol = \"h2\"\ntls = {{ ca = \"{ca}\", insecure_skip_verify = true }}");
    assert_problem(
        &s.problems(&api_pool_with(&s, &both)),
        "upstream.api_pool.tls.ca",
        "has no use with insecure_skip_verify = true",
    );
    let name = "protocol = \"h2\"\ntls = { server_name = \"not a name\" }";
    assert_problem(
        &s.problems(&api_pool_with(&s, name)),
        "upstream.api_pool.tls.server_name",
        "`not a name` is not a DNS name or IP address",
    );
    let half = format!("protocol = \"http/1.1\"\ntls = {{ cert = \"{ca}\" }}");
    assert_problem(
        &s.problems(&api_pool_with(&s, &half)),
        "upstream.api_pool.tls.key",
        "is required with tls.cert (mutual TLS)",
    );
    let missing = "protocol = \"h2\"\ntls = { ca = \"nowhere/ca.pem\" }";
    assert_problem(
        &s.problems(&api_pool_with(&s, missing)),
        "upstream.api_pool.tls.ca",
        "cannot read",
    );
    let key = s.certs.private_key.display().to_string();
    let not_a_ca = format!("protocol = \"h2\"\ntls = {{ ca = \"{key}\" }}");
    assert_problem(
        &s.problems(&api_pool_with(&s, &not_a_ca)),
        "upstream.api_pool.tls.ca",
        "contains a private key but no certificate",
    );
}

#[test]
fn a_key_of_another_certificate_is_refused_at_the_key() {
    let s = Scratch::new();
    let foreign = selfsigned::generate(&s.dir.join("other")).unwrap();
    let text = edit(
        &s.minimal(),
        &s.tls_line(),
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            s.certs.cert_chain.display(),
            foreign.private_key.display()
        ),
    );
    let problems = s.problems(&text);
    assert_problem(
        &problems,
        "listen.tls.key",
        "does not belong to the certificate",
    );
}

#[test]
fn alt_svc_max_age_out_of_range_or_beside_the_off_switch() {
    let s = Scratch::new();
    let tls = s.tls_line();
    let zero = edit(&s.minimal(), &tls, &format!("{tls}\nalt_svc_max_age = 0"));
    assert_problem(
        &s.problems(&zero),
        "listen.alt_svc_max_age",
        "must be at least 1 s, got 0",
    );
    let both = edit(
        &s.minimal(),
        &tls,
        &format!("{tls}\nalt_svc = false\nalt_svc_max_age = 60"),
    );
    assert_problem(
        &s.problems(&both),
        "listen.alt_svc_max_age",
        "set while listen.alt_svc = false",
    );
}

#[test]
fn redirect_port_must_not_be_the_tls_port_and_address_must_be_an_ip() {
    let s = Scratch::new();
    let minimal = s.minimal();
    let port_line = minimal
        .lines()
        .find(|l| l.starts_with("port = "))
        .expect("port line")
        .to_string();
    let port = port_line.trim_start_matches("port = ");
    let tls = s.tls_line();
    let same = edit(
        &minimal,
        &tls,
        &format!("{tls}\nredirect = {{ port = {port} }}"),
    );
    assert_problem(
        &s.problems(&same),
        "listen.redirect.port",
        "must differ from listen.port",
    );
    let named = edit(
        &minimal,
        &tls,
        &format!("{tls}\nredirect = {{ port = 80, address = \"web.example\" }}"),
    );
    assert_problem(
        &s.problems(&named),
        "listen.redirect.address",
        "`web.example` is not an IP address",
    );
}

/// `[[listen.certificates]]` entries appended to the minimal file's `[listen]` table.
fn with_certificates(s: &Scratch, entries: &str) -> String {
    let tls = s.tls_line();
    edit(&s.minimal(), &tls, &format!("{tls}\n{entries}"))
}

fn entry(cert: &std::path::Path, key: &std::path::Path, hosts: Option<&str>) -> String {
    let hosts = hosts.map(|h| format!(", hosts = {h}")).unwrap_or_default();
    format!(
        "certificates = [{{ cert = \"{}\", key = \"{}\"{hosts} }}]",
        cert.display(),
        key.display()
    )
}

#[test]
fn sni_certificate_problems_name_their_entry() {
    let s = Scratch::new();
    let other = crate::selfsigned::generate_for(&s.dir.join("other"), &["other.test"]).unwrap();
    let ip_only = crate::selfsigned::generate_for(&s.dir.join("ip"), &["192.0.2.1"]).unwrap();

    let mismatch = with_certificates(&s, &entry(&other.cert_chain, &s.certs.private_key, None));
    assert_problem(
        &s.problems(&mismatch),
        "listen.certificates[0].key",
        "does not belong to the certificate",
    );
    let missing = with_certificates(
        &s,
        &entry(&s.dir.join("nope.pem"), &other.private_key, None),
    );
    assert_problem(
        &s.problems(&missing),
        "listen.certificates[0].cert",
        "cannot read",
    );
    let nameless = with_certificates(&s, &entry(&ip_only.cert_chain, &ip_only.private_key, None));
    assert_problem(
        &s.problems(&nameless),
        "listen.certificates[0].hosts",
        "the certificate names no DNS host",
    );
    let bad_host = with_certificates(
        &s,
        &entry(
            &other.cert_chain,
            &other.private_key,
            Some("[\"ok.test\", \"no spaces\"]"),
        ),
    );
    assert_problem(
        &s.problems(&bad_host),
        "listen.certificates[0].hosts",
        "`no spaces` is not a host name",
    );
    let twice = with_certificates(
        &s,
        &format!(
            "certificates = [{{ cert = \"{c}\", key = \"{k}\" }}, {{ cert = \"{c}\", key = \"{k}\", hosts = [\"OTHER.test\"] }}]",
            c = other.cert_chain.display(),
            k = other.private_key.display()
        ),
    );
    assert_problem(
        &s.problems(&twice),
        "listen.certificates[1].hosts",
        "`other.test` is already served by listen.certificates[0]",
    );
}

#[test]
fn admission_settings_are_checked() {
    let s = Scratch::new();
    let with = |extra: &str| {
        edit(
            &s.full(),
            "max_udp_payload_size = 1452",
            &format!("max_udp_payload_size = 1452\n{extra}"),
        )
    };
    assert_problem(
        &s.problems(&with("retry = \"sometimes\"")),
        "quic.retry",
        "unknown retry mode `sometimes`; expected \"auto\", \"always\" or \"off\"",
    );
    assert_problem(
        &s.problems(&with("max_connections = 0")),
        "quic.max_connections",
        "must be at least 1, got 0",
    );
    assert_problem(
        &s.problems(&with("max_handshakes = 0")),
        "quic.max_handshakes",
        "must be at least 1, got 0",
    );
    assert_problem(
        &s.problems(&with("retry_above = -1")),
        "quic.retry_above",
        "must be at least 0, got -1",
    );
    assert_problem(
        &s.problems(&with("new_connection_burst = 0")),
        "quic.new_connection_burst",
        "must be at least 1, got 0",
    );
    // The full example's idle timeout is 10 s.
    assert_problem(
        &s.problems(&with("handshake_timeout_ms = 20000")),
        "quic.handshake_timeout_ms",
        "must not exceed quic.idle_timeout_ms (10000 ms), got 20000 ms",
    );
}

#[test]
fn limits_are_checked_where_they_are_written() {
    let s = Scratch::new();
    let listener = edit(
        &s.full(),
        "[upstream.api_pool]",
        "[limits]\nmax_header_bytes = 300000\n\n[upstream.api_pool]",
    );
    assert_problem(
        &s.problems(&listener),
        "limits.max_header_bytes",
        "must be at most 262144, got 300000",
    );
    let pool = edit(
        &s.full(),
        "[upstream.api_pool]",
        "[upstream.api_pool]\nlimits = { requests_burst = 5 }",
    );
    assert_problem(
        &s.problems(&pool),
        "upstream.api_pool.limits.requests_burst",
        "has no effect without requests_per_second",
    );
    let unknown = edit(
        &s.full(),
        "[upstream.api_pool]",
        "[upstream.api_pool]\nlimits = { max_body = 5 }",
    );
    assert!(!s.problems(&unknown).is_empty());
}

#[test]
fn overload_marks_are_checked() {
    let s = Scratch::new();
    let text = edit(
        &s.full(),
        "[upstream.api_pool]",
        "[overload]\nrequests = 5\nmemory_bytes = 1000\n\n[upstream.api_pool]",
    );
    let problems = s.problems(&text);
    assert_problem(&problems, "overload.requests", "must be at least 10, got 5");
    assert_problem(
        &problems,
        "overload.memory_bytes",
        "must be at least 67108864 bytes, got 1000",
    );
}
