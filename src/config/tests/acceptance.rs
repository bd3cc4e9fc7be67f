//! Files that are accepted, and what they turn into.

use super::*;

#[test]
fn accepts_full_example() {
    let s = Scratch::new();
    let config = s.parse(&s.full()).expect("full example is valid");

    assert_eq!(config.listen_addr(), "127.0.0.1:8443".parse().unwrap());
    assert_eq!(config.cores(), vec![2, 1]);
    assert_eq!(config.log_level(), LevelFilter::Debug);
    assert_eq!(config.origin(), s.config_path());

    let plan = config.plan();
    assert_eq!(plan.tls.cert_path(), s.certs.cert_chain);
    assert_eq!(plan.tls.key_path(), s.certs.private_key);
    assert_eq!(plan.quic.idle_timeout, Duration::from_secs(10));
    assert_eq!(plan.quic.max_concurrent_streams, 100);
    assert_eq!(plan.quic.stream_window, 65536);
    assert_eq!(plan.quic.connection_window, 1048576);
    assert_eq!(plan.quic.max_udp_payload, 1452);
    assert!(!plan.quic.path_mtu_discovery);

    // File order, not alphabetical: the index is the upstream id.
    let names: Vec<&str> = plan.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["api_pool", "default_pool"]);
    let api = &plan.upstreams[0];
    assert_eq!(api.route.path_prefix, "/api");
    assert_eq!(api.balancing, Balancing::Random);
    assert_eq!(api.timeouts.connect, Duration::from_millis(500));
    assert_eq!(api.timeouts.response_headers, Duration::from_secs(5));
    assert_eq!(api.backends.len(), 2);
    assert_eq!(api.backends[0].id, "api-01");
    assert_eq!(api.backends[0].address, "10.0.10.10:8080".parse().unwrap());
    assert_eq!(
        api.backends[1].address,
        "[2001:db8::11]:8080".parse().unwrap()
    );
    assert_eq!(api.backends[1].weight, 50);
    assert_eq!(plan.upstreams[1].balancing, Balancing::RoundRobin);
}

#[test]
fn accepts_defaults() {
    let s = Scratch::new();
    let config = s.parse(&s.minimal()).expect("minimal example is valid");

    assert_eq!(config.listen_addr(), "[::]:443".parse().unwrap());
    assert_eq!(config.cores(), vec![0]);
    assert_eq!(config.log_level(), LevelFilter::Info);

    let plan = config.plan();
    let d = QuicSettings::default();
    assert_eq!(plan.quic.idle_timeout, d.idle_timeout);
    assert_eq!(plan.quic.max_concurrent_streams, d.max_concurrent_streams);
    assert_eq!(plan.quic.stream_window, d.stream_window);
    assert_eq!(plan.quic.connection_window, d.connection_window);
    assert_eq!(plan.quic.max_udp_payload, d.max_udp_payload);
    assert!(plan.quic.path_mtu_discovery);

    let app = &plan.upstreams[0];
    assert_eq!(app.balancing, Balancing::RoundRobin);
    let t = UpstreamTimeouts::default();
    assert_eq!(app.timeouts.connect, t.connect);
    assert_eq!(app.timeouts.response_headers, t.response_headers);
    assert_eq!(app.backends[0].weight, 100);
}

#[test]
fn shards_means_the_first_n_cpus() {
    let s = Scratch::new();
    let text = edit(
        &s.minimal(),
        "[upstream.app]",
        "[runtime]\nshards = 3\n\n[upstream.app]",
    );
    assert_eq!(s.parse(&text).expect("valid").cores(), vec![0, 1, 2]);
}

#[test]
fn port_zero_is_accepted_for_the_listener() {
    let s = Scratch::new();
    let text = edit(&s.minimal(), "port = 443", "port = 0");
    assert_eq!(s.parse(&text).expect("valid").listen_addr().port(), 0);
}

#[test]
fn relative_tls_paths_resolve_against_the_config_directory() {
    let s = Scratch::new();
    let text = edit(
        &s.minimal(),
        &s.tls_line(),
        r#"tls = { cert = "cert.pem", key = "./key.pem" }"#,
    );
    let plan = s
        .parse(&text)
        .expect("relative paths next to the config are found")
        .plan();
    assert_eq!(plan.tls.cert_path(), s.dir.join("cert.pem"));
    assert!(plan.tls.key_path().is_absolute());
    assert!(plan.tls.key_path().ends_with("key.pem"));
}

#[test]
fn load_reads_the_file() {
    let s = Scratch::new();
    fs::write(s.config_path(), s.minimal()).expect("write config");
    let config = load(&s.config_path()).expect("valid file");
    assert_eq!(config.origin(), s.config_path());
}

#[test]
fn real_affinity_is_consulted() {
    let host = Host::current();
    let allowed = host
        .allowed_cpus
        .clone()
        .expect("sched_getaffinity works on Linux");
    assert!(!allowed.is_empty());
    // The first CPU this process may not use: always exists, as CPU_SETSIZE bounds the mask.
    let forbidden = (0..)
        .find(|c| !allowed.contains(c))
        .expect("some CPU is not allowed");
    let usable = *allowed.iter().next().expect("non-empty");

    let s = Scratch::new();
    let with_cores = |cores: &str| {
        edit(
            &s.minimal(),
            "[upstream.app]",
            &format!("[runtime]\ncores = {cores}\n\n[upstream.app]"),
        )
    };
    let ok = parse(&with_cores(&format!("[{usable}]")), &s.config_path()).expect("usable CPU");
    assert_eq!(ok.cores(), vec![usable]);

    let err =
        parse(&with_cores(&format!("[{forbidden}]")), &s.config_path()).expect_err("forbidden CPU");
    assert_problem(
        err.problems(),
        "runtime.cores[0]",
        &format!("allowed CPUs: {}", format_cpu_list(&allowed)),
    );
}

#[test]
fn alt_svc_defaults_to_a_day_and_can_be_tuned_or_switched_off() {
    let s = Scratch::new();
    let tls = s.tls_line();
    assert_eq!(
        s.parse(&s.minimal()).unwrap().plan().alt_svc_max_age,
        Some(86_400)
    );
    let tuned = edit(
        &s.minimal(),
        &tls,
        &format!("{tls}\nalt_svc_max_age = 3600"),
    );
    assert_eq!(s.parse(&tuned).unwrap().plan().alt_svc_max_age, Some(3600));
    let off = edit(&s.minimal(), &tls, &format!("{tls}\nalt_svc = false"));
    assert_eq!(s.parse(&off).unwrap().plan().alt_svc_max_age, None);
}

#[test]
fn redirect_listens_on_the_listen_address_unless_told_otherwise() {
    let s = Scratch::new();
    let tls = s.tls_line();
    assert_eq!(s.parse(&s.minimal()).unwrap().plan().redirect, None);
    let text = edit(
        &s.minimal(),
        &tls,
        &format!("{tls}\nredirect = {{ port = 80 }}"),
    );
    let listen = s.parse(&text).unwrap().listen_addr();
    assert_eq!(
        s.parse(&text).unwrap().plan().redirect,
        Some(std::net::SocketAddr::new(listen.ip(), 80))
    );
    let text = edit(
        &s.minimal(),
        &tls,
        &format!("{tls}\nredirect = {{ port = 8080, address = \"::1\" }}"),
    );
    assert_eq!(
        s.parse(&text).unwrap().plan().redirect,
        Some("[::1]:8080".parse().unwrap())
    );
}

#[test]
fn sni_certificates_serve_the_names_in_them_unless_hosts_are_given() {
    let s = Scratch::new();
    let other =
        crate::selfsigned::generate_for(&s.dir.join("other"), &["a.test", "b.test"]).unwrap();
    let tls = s.tls_line();
    let text = edit(
        &s.minimal(),
        &tls,
        &format!(
            "{tls}\ncertificates = [{{ cert = \"{c}\", key = \"{k}\" }}]",
            c = other.cert_chain.display(),
            k = other.private_key.display()
        ),
    );
    let plan = s.parse(&text).unwrap().plan();
    for name in ["a.test", "B.test"] {
        let served = plan.sni.lookup(name).expect(name);
        assert_eq!(served.cert_path(), other.cert_chain);
    }
    assert!(plan.sni.lookup("c.test").is_none());
    let text = edit(
        &s.minimal(),
        &tls,
        &format!(
            "{tls}\ncertificates = [{{ cert = \"{c}\", key = \"{k}\", hosts = [\"*.c.test\"] }}]",
            c = other.cert_chain.display(),
            k = other.private_key.display()
        ),
    );
    let plan = s.parse(&text).unwrap().plan();
    assert!(plan.sni.lookup("a.test").is_none());
    assert!(plan.sni.lookup("www.c.test").is_some());
    assert!(s.parse(&s.minimal()).unwrap().plan().sni.is_empty());
}

#[test]
fn backend_protocol_defaults_to_h2c_and_http1_takes_keepalive_settings() {
    let s = Scratch::new();
    let plan = s.parse(&s.full()).unwrap().plan();
    assert_eq!(plan.upstreams[0].protocol, BackendProtocol::Http2);
    let text = edit(
        &s.full(),
        "load_balancing = { type = \"random\" }",
        "load_balancing = { type = \"random\" }\nprotocol = \"http/1.1\"\n\
         keepalive = { max_idle = 4, idle_timeout_ms = 1500 }",
    );
    let plan = s.parse(&text).unwrap().plan();
    assert_eq!(
        plan.upstreams[0].protocol,
        BackendProtocol::Http1(KeepAlive {
            max_idle: 4,
            idle_timeout: Duration::from_millis(1500),
        })
    );
    assert_eq!(
        plan.upstreams[1].protocol,
        BackendProtocol::Http2,
        "the protocol is per upstream"
    );
    let text = edit(
        &s.full(),
        "load_balancing = { type = \"random\" }",
        "load_balancing = { type = \"random\" }\nprotocol = \"http/1.1\"",
    );
    let plan = s.parse(&text).unwrap().plan();
    assert_eq!(
        plan.upstreams[0].protocol,
        BackendProtocol::Http1(DEFAULT_KEEPALIVE)
    );
}

#[test]
fn h2_implies_tls_and_http1_uses_it_when_the_table_is_present() {
    let s = Scratch::new();
    let with = |settings: &str| {
        edit(
            &s.full(),
            "load_balancing = { type = \"random\" }",
            &format!("load_balancing = {{ type = \"random\" }}\n{settings}"),
        )
    };
    let ca = s.certs.ca.display().to_string();
    let plan = s
        .parse(&with(&format!(
            "protocol = \"h2\"\ntls = {{ ca = \"{ca}\" }}"
        )))
        .unwrap()
        .plan();
    let tls = plan.upstreams[0].tls.as_ref().expect("h2 is TLS");
    assert_eq!(tls.alpn(), shards::tls::backend::ALPN_H2);
    assert!(!tls.skips_verification());
    assert!(
        plan.upstreams[1].tls.is_none(),
        "the other upstream stays cleartext"
    );
    let plan = s
        .parse(&with(
            "protocol = \"http/1.1\"\ntls = { insecure_skip_verify = true }",
        ))
        .unwrap()
        .plan();
    let tls = plan.upstreams[0]
        .tls
        .as_ref()
        .expect("http/1.1 with a tls table");
    assert_eq!(tls.alpn(), shards::tls::backend::ALPN_HTTP1);
    assert!(tls.skips_verification());
    let plan = s.parse(&with("protocol = \"http/1.1\"")).unwrap().plan();
    assert!(plan.upstreams[0].tls.is_none());
    let auto = with(
        "protocol = \"auto\"\nkeepalive = { max_idle = 7 }\ntls = { insecure_skip_verify = true }",
    );
    let plan = s.parse(&auto).unwrap().plan();
    assert_eq!(
        plan.upstreams[0].protocol,
        BackendProtocol::Auto(KeepAlive {
            max_idle: 7,
            idle_timeout: DEFAULT_KEEPALIVE.idle_timeout,
        })
    );
    assert_eq!(
        plan.upstreams[0].tls.as_ref().unwrap().alpn(),
        shards::tls::backend::ALPN_AUTO
    );
}

#[test]
fn a_backend_may_be_a_dns_name_resolved_later() {
    let s = Scratch::new();
    let text = edit(
        &s.full(),
        "\"10.0.30.10:8080\"",
        "\"Web-01.Internal.:8080\"",
    );
    let text = edit(
        &text,
        "load_balancing = { type = \"round-robin\" }",
        "load_balancing = { type = \"round-robin\" }\nresolve_interval_ms = 2500",
    );
    let plan = s.parse(&text).unwrap().plan();
    let web = &plan.upstreams[1];
    assert_eq!(web.resolve_interval, Duration::from_millis(2500));
    let name = web.backends[0].name.as_ref().expect("a named backend");
    assert_eq!((name.host.as_str(), name.port), ("web-01.internal", 8080));
    assert_eq!(web.backends[0].address.port(), 8080);
    assert!(web.backends[0].address.ip().is_unspecified());
    assert_eq!(
        plan.upstreams[0].resolve_interval,
        shards::plan::DEFAULT_RESOLVE_INTERVAL
    );
    assert!(plan.upstreams[0].backends[0].name.is_none());
}

#[test]
fn admission_keys_default_and_can_be_tuned() {
    let s = Scratch::new();
    let plan = s.parse(&s.minimal()).unwrap().plan().clone();
    let d = QuicSettings::default();
    assert_eq!(plan.quic.retry, RetryMode::Auto);
    assert_eq!(plan.quic.retry_above, 100);
    assert_eq!(plan.quic.handshake_timeout, Duration::from_secs(10));
    assert_eq!(plan.quic.max_connections, d.max_connections);
    assert_eq!(plan.quic.max_handshakes, d.max_handshakes);
    assert_eq!(plan.quic.new_connection_rate, d.new_connection_rate);

    let tuned = edit(
        &s.full(),
        "max_udp_payload_size = 1452",
        "max_udp_payload_size = 1452\nretry = \"always\"\nretry_above = 7\nhandshake_timeout_ms = 2500\n\
         max_connections = 5000\nmax_handshakes = 300\nnew_connection_rate = 0\nnew_connection_burst = 9",
    );
    let plan = s.parse(&tuned).unwrap().plan().clone();
    assert_eq!(plan.quic.retry, RetryMode::Always);
    assert_eq!(plan.quic.retry_above, 7);
    assert_eq!(plan.quic.handshake_timeout, Duration::from_millis(2500));
    assert_eq!(plan.quic.max_connections, 5000);
    assert_eq!(plan.quic.max_handshakes, 300);
    assert_eq!(plan.quic.new_connection_rate, 0);
    assert_eq!(plan.quic.new_connection_burst, 9);

    // A short idle timeout shortens the default handshake timeout with it.
    let short_idle = edit(
        &s.minimal(),
        "[listen]",
        "[quic]\nidle_timeout_ms = 3000\n\n[listen]",
    );
    let plan = s.parse(&short_idle).unwrap().plan().clone();
    assert_eq!(plan.quic.handshake_timeout, Duration::from_secs(3));
}

#[test]
fn limits_apply_to_every_upstream_and_an_upstream_may_override_them() {
    let s = Scratch::new();
    let plan = s.parse(&s.minimal()).unwrap().plan().clone();
    assert_eq!(
        plan.upstreams[0].limits,
        shards::plan::RequestLimits::default()
    );

    let text = edit(
        &s.full(),
        "[upstream.api_pool]",
        "[limits]\nmax_request_body_bytes = 5000\nmax_headers = 50\nrequests_per_second = 10\n\n\
         [upstream.api_pool]\nlimits = { max_request_body_bytes = 9000, requests_burst = 40 }",
    );
    let plan = s.parse(&text).unwrap().plan().clone();
    let api = &plan.upstreams[0].limits;
    assert_eq!(api.max_body_bytes, Some(9000));
    assert_eq!(api.max_headers, 50, "inherited from [limits]");
    assert_eq!(
        api.rate,
        Some(shards::plan::RequestRate {
            per_second: 10,
            burst: 40
        })
    );
    let default_pool = &plan.upstreams[1].limits;
    assert_eq!(default_pool.max_body_bytes, Some(5000));
    assert_eq!(
        default_pool.rate.map(|r| r.burst),
        Some(10),
        "a second's worth"
    );
}

#[test]
fn overload_marks_are_off_unless_set() {
    let s = Scratch::new();
    let plan = s.parse(&s.minimal()).unwrap().plan().clone();
    assert_eq!(plan.overload, shards::plan::OverloadMarks::default());
    let text = edit(
        &s.full(),
        "[upstream.api_pool]",
        "[overload]\nconnections = 50000\nmemory_bytes = 4294967296\n\n[upstream.api_pool]",
    );
    let plan = s.parse(&text).unwrap().plan().clone();
    assert_eq!(plan.overload.connections, Some(50_000));
    assert_eq!(plan.overload.requests, None);
    assert_eq!(plan.overload.memory_bytes, Some(4 << 30));
}
