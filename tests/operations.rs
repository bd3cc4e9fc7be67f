//! Operating Spooky: metrics, health endpoints, reload, graceful stop, and several processes on
//! one port. Process-level tests run the real `spooky` binary and signal it.

mod common;

use std::time::{Duration, Instant};

use common::process::SpookyProcess;
use common::{eventually, free_port, http_get, parse_prometheus, pool, start_backend, Proxy};
use spooky::ProxySettings;
use spooky_bench::client::{H3Client, Request};

#[test]
fn metrics_parse_and_move_with_traffic_and_readiness_follows_health() {
    let backend = start_backend("metrics");
    let proxy = Proxy::single_pool("metrics", &[&backend], "");
    let admin = proxy
        .running
        .start_admin("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let scrape = || {
        let (status, body) = http_get(admin, "/metrics").unwrap();
        assert_eq!(status, 200);
        parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
    };
    let value = |samples: &[common::Sample], name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
            .map(|s| s.value)
            .sum()
    };
    let before = scrape();
    let mut client = proxy.client();
    for response in client.request_many((0..10).map(|_| Request::get("/bytes/1000")).collect()) {
        assert_eq!(response.unwrap().status, 200);
    }
    let after = scrape();
    assert_eq!(
        value(&after, "spooky_requests_total", &[]) - value(&before, "spooky_requests_total", &[]),
        10.0
    );
    assert_eq!(
        value(&after, "spooky_requests_total", &[("protocol", "h3")]),
        10.0
    );
    // Over TCP: three HTTP/2 requests and two HTTP/1.1 ones, each counted under its protocol.
    let (addr, ca) = (proxy.running.local_addr(), proxy.certs.ca.clone());
    let during = common::tcp::runtime().block_on(async {
        use common::tcp::{connect_h2, connect_http1, h2_exchange, http1_exchange, Upload};
        let h2 = connect_h2(addr, &ca).await;
        for _ in 0..3 {
            assert_eq!(h2_exchange(&h2, "GET", "/bytes/10", None).await.status, 200);
        }
        let mut h1 = connect_http1(addr, &ca).await;
        for _ in 0..2 {
            let request = http::Request::get("/bytes/10").header("host", "localhost");
            let response = http1_exchange(&mut h1, request, Upload::None).await;
            assert_eq!(response.status, 200);
        }
        scrape()
    });
    assert_eq!(value(&during, "spooky_tcp_connections_active", &[]), 2.0);
    assert_eq!(
        value(&during, "spooky_tcp_connections_accepted_total", &[]),
        2.0
    );
    for (protocol, count) in [("h3", 10.0), ("h2", 3.0), ("http/1.1", 2.0)] {
        assert_eq!(
            value(&during, "spooky_requests_total", &[("protocol", protocol)]),
            count,
            "{protocol}"
        );
    }
    assert!(
        eventually(Duration::from_secs(5), || value(
            &scrape(),
            "spooky_tcp_connections_active",
            &[]
        ) == 0.0),
        "closed TCP connections still counted"
    );
    let id = format!("main-{}", backend.addr().port());
    assert_eq!(
        value(
            &after,
            "spooky_backend_responses_total",
            &[("backend", &id), ("class", "2xx")]
        ),
        10.0
    );
    assert_eq!(
        value(&after, "spooky_request_duration_seconds_count", &[]),
        10.0
    );
    assert!(
        value(&after, "spooky_datagrams_received_total", &[])
            > value(&before, "spooky_datagrams_received_total", &[])
    );
    assert_eq!(value(&after, "spooky_quic_connections_active", &[]), 1.0);
    assert_eq!(
        value(&after, "spooky_backend_h2_connections", &[("backend", &id)]),
        1.0
    );
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(value(&after, "spooky_config_generation", &[]), 1.0);

    let (status, body) = http_get(admin, "/health/ready").unwrap();
    assert_eq!(status, 200, "{body}");
    proxy
        .running
        .coordinator()
        .set_backend_health(1, 0, 0, false);
    let (status, body) = http_get(admin, "/health/ready").unwrap();
    assert_eq!(status, 503);
    assert!(
        body.contains("\"upstreams_without_healthy_backend\":[\"main\"]"),
        "{body}"
    );
    assert_eq!(http_get(admin, "/health/live").unwrap().0, 200);
}

#[test]
fn reload_under_load_adds_a_backend_and_a_route_without_failing_or_closing_anything() {
    let old_backend = start_backend("old");
    let new_backend = start_backend("new");
    let api_backend = start_backend("api");
    let dir = common::scratch_dir("reload-config");
    let mut proxy = Proxy::single_pool("reload", &[&old_backend], "");
    let options = proxy.client_options();
    // Load: one connection, continuous batches, counting any failure.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut client = H3Client::connect(options).expect("connect");
            let mut failures = Vec::new();
            let mut served = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for response in
                    client.request_many((0..10).map(|_| Request::get("/bytes/2000")).collect())
                {
                    match response {
                        Ok(r) if r.status == 200 => served += 1,
                        other => failures.push(format!("{other:?}")),
                    }
                }
            }
            (served, failures)
        })
    };
    assert!(eventually(Duration::from_secs(10), || old_backend
        .stats()
        .requests
        > 50));
    let config_text = format!(
        "[listen]\naddress = \"127.0.0.1\"\nport = 0\ntls = {{ cert = {:?}, key = {:?} }}\n\n{}\n{}",
        proxy.certs.cert_chain.display().to_string(),
        proxy.certs.private_key.display().to_string(),
        pool("main", "/", &[&old_backend, &new_backend], ""),
        pool("api", "/api", &[&api_backend], "")
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config_text).unwrap();
    let config = spooky::config::load(&path).unwrap();
    let accepted_before: u64 = proxy
        .running
        .shard_stats()
        .iter()
        .map(|s| s.connections_accepted.get())
        .sum();
    let needs_restart = proxy
        .running
        .reload(ProxySettings {
            listen: config.listen_addr(),
            cores: config.cores(),
            plan: config.plan(),
        })
        .unwrap();
    assert!(needs_restart.is_empty(), "{needs_restart:?}");
    assert!(
        eventually(Duration::from_secs(10), || new_backend.stats().requests
            > 50),
        "new backend never got traffic"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (served, failures) = load.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} failures over {served}: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    let stats = proxy.running.shard_stats();
    assert_eq!(
        stats
            .iter()
            .map(|s| s.connections_accepted.get())
            .sum::<u64>(),
        accepted_before
    );
    assert_eq!(
        stats
            .iter()
            .map(|s| s.connections_active.get())
            .sum::<u64>(),
        1,
        "the load's connection stayed open"
    );
    // The new route serves new requests.
    let mut client = proxy.client();
    let response = client.request(Request::get("/api/x")).unwrap();
    assert_eq!(response.header("x-backend"), Some("api"));
}

#[test]
fn sighup_with_a_broken_config_keeps_serving_the_old_one() {
    let backend = start_backend("sighup");
    let mut process = SpookyProcess::start(
        "sighup-bad",
        free_port(),
        &pool("main", "/", &[&backend], ""),
    );
    std::fs::write(&process.config, "this is = not [valid toml").unwrap();
    process.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || process
            .log_text()
            .contains("reload rejected")),
        "{}",
        process.log_text()
    );
    assert_eq!(
        process.wait_exit(Duration::from_millis(100)),
        None,
        "process died"
    );
    let mut client = H3Client::connect(process.client_options(Duration::from_secs(10))).unwrap();
    assert_eq!(
        client.request(Request::get("/status/200")).unwrap().status,
        200
    );
}

#[test]
fn sigterm_drains_requests_in_flight_and_exits_zero() {
    let backend = start_backend("drain");
    let mut process = SpookyProcess::start(
        "drain",
        free_port(),
        &format!(
            "[runtime]\ndrain_timeout_ms = 20000\n\n{}",
            pool("main", "/", &[&backend], "")
        ),
    );
    let options = process.client_options(Duration::from_secs(30));
    let requests = std::thread::spawn(move || {
        let mut client = H3Client::connect(options).expect("connect");
        client.request_many((0..100).map(|_| Request::get("/delay/1500")).collect())
    });
    assert!(
        eventually(Duration::from_secs(10), || backend.stats().in_flight == 100),
        "{:?}",
        backend.stats()
    );
    let signalled = Instant::now();
    process.signal(libc::SIGTERM);
    // New connections are refused while draining.
    std::thread::sleep(Duration::from_millis(100));
    assert!(H3Client::connect(process.client_options(Duration::from_millis(500))).is_err());
    for response in requests.join().unwrap() {
        let response = response.expect("in-flight request completes");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"ok");
    }
    assert_eq!(
        process.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        process.log_text()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "exit waited for the drain timeout"
    );
}

#[test]
fn two_processes_share_one_udp_port_and_both_serve() {
    let port = free_port();
    let a = start_backend("process-a");
    let b = start_backend("process-b");
    let certs_dir = common::scratch_dir("share-certs");
    let certs = spooky::selfsigned::generate(&certs_dir).unwrap();
    let config = |cpu: usize, backend| {
        format!(
            "[runtime]\ncores = [{cpu}]\n\n{}",
            pool("main", "/", &[backend], "")
        )
    };
    let first = SpookyProcess::start_with(
        common::scratch_dir("share-a"),
        certs.clone(),
        port,
        &config(0, &a),
    );
    let second =
        SpookyProcess::start_with(common::scratch_dir("share-b"), certs, port, &config(1, &b));
    // New connections spread over the reuseport group; 40 client ports leave both idle with
    // probability 2^-39.
    for _ in 0..40 {
        let mut client = H3Client::connect(first.client_options(Duration::from_secs(10))).unwrap();
        assert_eq!(
            client.request(Request::get("/status/200")).unwrap().status,
            200
        );
        client.close();
    }
    assert!(
        a.stats().requests > 0 && b.stats().requests > 0,
        "a={:?} b={:?}",
        a.stats(),
        b.stats()
    );
    assert_eq!(a.stats().requests + b.stats().requests, 40);
    drop(second);
}

/// The admin endpoint serves connections concurrently: clients that connect and send nothing, or
/// half a request, do not hold up a readiness probe (a one-at-a-time server made it wait for the
/// idle client's timeout). A request head over the size limit gets 431.
#[test]
fn admin_answers_probes_while_other_clients_idle_and_refuses_oversized_heads() {
    use std::io::{Read, Write};
    let backend = start_backend("admin-idle");
    let proxy = Proxy::single_pool("admin-idle", &[&backend], "");
    let admin = proxy
        .running
        .start_admin("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let _silent = std::net::TcpStream::connect(admin).unwrap();
    let mut partial = std::net::TcpStream::connect(admin).unwrap();
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: a")
        .unwrap();
    let fastest = (0..3)
        .map(|_| {
            let started = std::time::Instant::now();
            let (status, body) = http_get(admin, "/health/ready").unwrap();
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                body,
                "{\"ready\":true,\"shards_not_running\":[],\"upstreams_without_healthy_backend\":[]}\n"
            );
            started.elapsed()
        })
        .min()
        .unwrap();
    assert!(
        fastest < Duration::from_millis(100),
        "readiness took {fastest:?} with idle clients connected"
    );

    let mut oversized = std::net::TcpStream::connect(admin).unwrap();
    oversized
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let padding = "x".repeat(16 * 1024);
    // The server may answer and close before it read all of this, so the write may fail; what
    // counts is the answer, which arrives before the connection's end.
    let _ = write!(
        oversized,
        "GET /metrics HTTP/1.1\r\nhost: admin\r\nx-padding: {padding}\r\n\r\n"
    );
    let mut response = Vec::new();
    let _ = oversized.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "oversized head answered with {:?}",
        response.lines().next()
    );
}

#[test]
fn json_logs_carry_one_access_line_per_request() {
    let backend = start_backend("logs");
    let process = SpookyProcess::start(
        "json-logs",
        free_port(),
        &format!(
            "[log]\nformat = \"json\"\naccess_log = true\n\n{}",
            pool("main", "/", &[&backend], "")
        ),
    );
    let mut client = H3Client::connect(process.client_options(Duration::from_secs(10))).unwrap();
    assert_eq!(
        client.request(Request::get("/bytes/1234")).unwrap().status,
        200
    );
    let id = format!("main-{}", backend.addr().port());
    assert!(
        eventually(Duration::from_secs(5), || process.log_text().lines().any(
            |l| l.contains("\"target\":\"spooky::access\"")
                && l.contains(&format!("backend={id}"))
                && l.contains("status=200")
                && l.contains("bytes_out=1234")
        )),
        "{}",
        process.log_text()
    );
    for line in process.log_text().lines() {
        assert!(
            line.starts_with("{\"ts\":") && line.ends_with('}'),
            "not a JSON line: {line}"
        );
    }
}

#[test]
fn sigterm_drains_tcp_clients_with_goaway_and_connection_close() {
    use common::tcp::{connect_h2, connect_http1, h2_exchange, http1_exchange, runtime, Upload};
    let backend = start_backend("drain-tcp");
    let mut process = SpookyProcess::start(
        "drain-tcp",
        free_port(),
        &format!(
            "[runtime]\ndrain_timeout_ms = 20000\n\n{}",
            pool("main", "/", &[&backend], "")
        ),
    );
    // Live comes before the shards have bound their listeners; ready after.
    assert!(eventually(Duration::from_secs(10), || http_get(
        process.admin,
        "/health/ready"
    )
    .is_ok_and(|(status, _)| status == 200)));
    let (addr, ca) = (process.listen, process.ca.clone());
    let rt = runtime();
    let (h2_requests, h1_request, idle) = rt.block_on(async {
        let h2 = connect_h2(addr, &ca).await;
        let mut h1 = connect_http1(addr, &ca).await;
        let idle = connect_http1(addr, &ca).await;
        let h2_requests: Vec<_> = (0..20)
            .map(|_| {
                let h2 = h2.clone();
                tokio::spawn(async move { h2_exchange(&h2, "GET", "/delay/1500", None).await })
            })
            .collect();
        let h1_request = tokio::spawn(async move {
            let request = http::Request::get("/delay/1500").header("host", "localhost");
            http1_exchange(&mut h1, request, Upload::None).await
        });
        (h2_requests, h1_request, idle)
    });
    let in_flight = || {
        // Lets the client tasks run while the test thread polls the backend.
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        backend.stats().in_flight == 21
    };
    assert!(
        eventually(Duration::from_secs(10), in_flight),
        "{:?}",
        backend.stats()
    );
    let signalled = Instant::now();
    process.signal(libc::SIGTERM);
    rt.block_on(async {
        // The listener closes: new TCP connections are refused.
        let refused = async {
            while tokio::net::TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), refused)
            .await
            .expect("new TCP connections refused while draining");
        // The idle HTTP/1.1 connection is closed at once.
        let closed = async {
            while !idle.is_closed() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .expect("idle HTTP/1.1 connection closed while draining");
        for request in h2_requests {
            let response = request.await.unwrap();
            assert_eq!(response.status, 200);
            assert_eq!(response.body_start, b"ok");
        }
        let response = h1_request.await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body_start, b"ok");
        assert_eq!(response.headers["connection"], "close");
    });
    assert_eq!(
        process.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        process.log_text()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "exit waited for the drain timeout: {}",
        process.log_text()
    );
}
