//! End-to-end behaviour of the data plane: a real HTTP/3 client over UDP, the real proxy, real
//! HTTP/2 backends over TCP, all on 127.0.0.1 with ephemeral ports.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, pool, sha256, start_backend, start_backend_with, Proxy};
use spooky_bench::backend::{pattern_byte, pattern_sha256};
use spooky_bench::client::{Body, ClientError, Request, Response};

const H3_MESSAGE_ERROR: u64 = 0x10e;
const H3_INTERNAL_ERROR: u64 = spooky_bench::client::WireErrorCode::InternalError as u64;

fn get(path: &str) -> Request {
    Request::get(path)
}

fn ok(result: Result<Response, ClientError>) -> Response {
    result.unwrap_or_else(|e| panic!("request failed: {e:?}"))
}

fn body_text(response: &Response) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

#[test]
fn small_get_is_forwarded_with_exact_body_and_headers() {
    let backend = start_backend("b1");
    let proxy = Proxy::single_pool("small-get", &[&backend], "");
    let mut client = proxy.client();
    let response = ok(client.request(get("/bytes/1000")));
    assert_eq!(response.status, 200);
    assert_eq!(response.body_len, 1000);
    assert_eq!(response.body_sha256, pattern_sha256(1000));
    assert_eq!(response.header("x-backend"), Some("b1"));
    assert_eq!(response.header("content-length"), Some("1000"));
}

#[test]
fn large_download_streams_100_mb_intact() {
    let backend = start_backend("big");
    let proxy = Proxy::single_pool("big-get", &[&backend], "");
    let mut client = proxy.client();
    let size: u64 = 100 * 1024 * 1024;
    let response = ok(client.request(get(&format!("/bytes/{size}")).keep_body(false)));
    assert_eq!(response.status, 200);
    assert_eq!(response.body_len, size);
    assert_eq!(response.body_sha256, pattern_sha256(size));
}

/// Bytes per datagram the shard sent for an 8 MiB download through a proxy with `quic` settings.
fn bytes_per_datagram_of_a_download(name: &str, quic: &str) -> u64 {
    let backend = start_backend(name);
    let proxy = Proxy::single_pool(name, &[&backend], quic);
    let stats = proxy.running.shard_stats()[0].clone();
    let mut client = proxy.client();
    let size: u64 = 8 * 1024 * 1024;
    let response = ok(client.request(get(&format!("/bytes/{size}")).keep_body(false)));
    assert_eq!(response.status, 200);
    assert_eq!(response.body_sha256, pattern_sha256(size));
    stats.bytes_sent.get() / stats.datagrams_sent.get()
}

#[test]
fn path_mtu_discovery_fills_loopback_datagrams_with_no_setting() {
    // Loopback's MTU is 64 KiB: discovery reaches quiche's largest packet (16,383 bytes) after
    // the first probe, where a fixed size would stay at the default 1,350.
    let per_datagram = bytes_per_datagram_of_a_download("pmtud", "");
    assert!(per_datagram > 10_000, "{per_datagram} bytes per datagram");
}

#[test]
fn without_discovery_datagrams_keep_to_max_udp_payload_size() {
    let per_datagram =
        bytes_per_datagram_of_a_download("pmtud-off", "[quic]\npath_mtu_discovery = false\n");
    assert!(per_datagram <= 1350, "{per_datagram} bytes per datagram");
    // Loopback carries 64 KiB datagrams: the largest size allowed, the edge of one send's buffer,
    // works too (quiche builds at most 16,383 bytes of it).
    let per_datagram = bytes_per_datagram_of_a_download(
        "jumbo",
        "[quic]\npath_mtu_discovery = false\nmax_udp_payload_size = 65000\n",
    );
    assert!(per_datagram > 10_000, "{per_datagram} bytes per datagram");
}

#[test]
fn large_upload_is_echoed_intact() {
    let backend = start_backend("echo");
    let proxy = Proxy::single_pool("big-post", &[&backend], "");
    let mut client = proxy.client();
    let size: u64 = 50 * 1024 * 1024;
    let request = Request::new("POST", "/echo")
        .body(Body::Pattern(size))
        .keep_body(false);
    let response = ok(client.request(request));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-echo-method"), Some("POST"));
    assert_eq!(response.body_len, size);
    assert_eq!(response.body_sha256, pattern_sha256(size));
}

#[test]
fn two_hundred_concurrent_streams_on_one_connection() {
    let backend = start_backend("many");
    let proxy = Proxy::single_pool("streams", &[&backend], "");
    let mut client = proxy.client();
    let requests: Vec<Request> = (0..200)
        .map(|i| get(&format!("/bytes/{}", 1000 + i * 97)))
        .collect();
    let responses = client.request_many(requests);
    assert_eq!(responses.len(), 200);
    for (i, response) in responses.into_iter().enumerate() {
        let response = ok(response);
        assert_eq!(response.status, 200);
        assert_eq!(
            response.body_sha256,
            pattern_sha256(1000 + i as u64 * 97),
            "stream {i}"
        );
    }
    assert_eq!(backend.stats().requests_completed, 200);
}

#[test]
fn pool_opens_more_connections_when_the_backend_stream_limit_is_reached() {
    // 120 requests held open for a second each, against a backend that allows 50 streams per
    // connection: the shard's pool needs at least three connections and must not overfill any.
    let backend = start_backend_with("limited", Some(50));
    let proxy = Proxy::single_pool("stream-limit", &[&backend], "");
    let mut client = proxy.client();
    let requests: Vec<Request> = (0..120).map(|_| get("/delay/1000")).collect();
    for response in client.request_many(requests) {
        let response = ok(response);
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"ok");
    }
    let stats = backend.stats();
    assert!(stats.connections_accepted >= 3, "{stats:?}");
    // A refused stream would be retried and seen twice.
    assert_eq!(
        stats.requests, 120,
        "no request refused and retried: {stats:?}"
    );
    // The backend counts a request complete just after its last frame left: the client can
    // be faster.
    assert!(
        eventually(Duration::from_secs(5), || backend
            .stats()
            .requests_completed
            == 120),
        "{:?}",
        backend.stats()
    );
}

#[test]
fn fifty_concurrent_connections() {
    let backend = start_backend("conns");
    let proxy = Proxy::single_pool("conns", &[&backend], "");
    let options = proxy.client_options();
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let options = options.clone();
            std::thread::spawn(move || {
                let mut client = spooky_bench::client::H3Client::connect(options)?;
                let size = 10_000 + i as u64;
                let response = client.request(Request::get(&format!("/bytes/{size}")))?;
                Ok::<_, ClientError>((size, response))
            })
        })
        .collect();
    for thread in threads {
        let (size, response) = thread
            .join()
            .unwrap()
            .expect("request on its own connection");
        assert_eq!(response.status, 200);
        assert_eq!(response.body_sha256, pattern_sha256(size));
    }
}

#[test]
fn two_shards_share_the_port_are_pinned_and_both_serve() {
    let backend = start_backend("shards");
    let proxy = Proxy::start(
        "two-shards",
        &format!(
            "[runtime]\ncores = [0, 1]\n\n{}",
            pool("main", "/", &[&backend], "")
        ),
    );
    // Each shard thread is pinned to its own CPU: read the affinity back from the kernel.
    for (stats, cpu) in proxy
        .running
        .shard_stats()
        .iter()
        .zip(proxy.running.shard_cpus())
    {
        let tid = stats.thread_id.get();
        assert_ne!(tid, 0);
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(allowed, cpu.to_string());
    }
    // The kernel spreads connections over the group by 4-tuple hash; 40 client ports make it
    // vanishingly unlikely (2^-39) that one shard gets none.
    for _ in 0..40 {
        let mut client = proxy.client();
        let response = ok(client.request(get("/bytes/100")));
        assert_eq!(response.body_sha256, pattern_sha256(100));
    }
    let per_shard: Vec<u64> = proxy
        .running
        .shard_stats()
        .iter()
        .map(|s| s.requests.total())
        .collect();
    assert_eq!(per_shard.iter().sum::<u64>(), 40);
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "per-shard requests {per_shard:?}"
    );
}

#[test]
fn error_statuses_map_as_users_expect() {
    let backend = start_backend("errors");
    let dead = {
        // A port that was just free: connecting to it is refused.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = Proxy::start(
        "errors",
        &format!(
            "{}\n{}\n[[upstream.dead.backends]]\nid = \"dead-1\"\naddress = \"{dead}\"\n",
            pool(
                "web",
                "/",
                &[&backend],
                "timeouts = { response_headers_ms = 300 }"
            ),
            "[upstream.dead]\nroute = { path_prefix = \"/dead\" }"
        ),
    );
    let mut client = proxy.client();
    let unreachable = ok(client.request(get("/dead/x")));
    assert_eq!(unreachable.status, 502);
    let started = Instant::now();
    let slow = ok(client.request(get("/delay/5000")));
    assert_eq!(slow.status, 504, "{}", body_text(&slow));
    assert!(started.elapsed() < Duration::from_secs(4));
    // The backend's own statuses pass through untouched.
    let teapot = ok(client.request(get("/status/418")));
    assert_eq!(teapot.status, 418);
}

#[test]
fn unmatched_path_gets_404() {
    let backend = start_backend("routes");
    let proxy = Proxy::start("no-route", &pool("api", "/api", &[&backend], ""));
    let mut client = proxy.client();
    let response = ok(client.request(get("/static/app.css")));
    assert_eq!(response.status, 404);
    assert_eq!(backend.stats().requests, 0);
}

#[test]
fn malformed_requests_get_an_error_and_nothing_reaches_the_backend() {
    let backend = start_backend("malformed");
    let proxy = Proxy::single_pool("malformed", &[&backend], "");
    let base = |path: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"GET".to_vec()),
            (b":scheme".to_vec(), b"https".to_vec()),
            (b":authority".to_vec(), b"localhost".to_vec()),
            (b":path".to_vec(), path.as_bytes().to_vec()),
        ]
    };
    let mut uppercase = base("/bytes/10");
    uppercase.push((b"X-Upper".to_vec(), b"1".to_vec()));
    let mut connection_header = base("/bytes/10");
    connection_header.push((b"connection".to_vec(), b"keep-alive".to_vec()));
    let missing_path: Vec<_> = base("/bytes/10")
        .into_iter()
        .filter(|(n, _)| n != b":path")
        .collect();
    let mut pseudo_after_regular = base("/bytes/10");
    pseudo_after_regular.insert(1, (b"accept".to_vec(), b"*/*".to_vec()));
    for (case, fields) in [
        ("uppercase name", uppercase),
        ("connection header", connection_header),
        ("missing :path", missing_path),
        ("pseudo-header after regular", pseudo_after_regular),
    ] {
        // Raw field sections keep their exact bytes; each goes on a fresh connection.
        let mut client = proxy.client();
        match client.request_raw(fields) {
            Ok(response) => assert_eq!(response.status, 400, "{case}"),
            Err(ClientError::StreamReset { code }) => assert_eq!(code, H3_MESSAGE_ERROR, "{case}"),
            Err(e) => panic!("{case}: unexpected {e:?}"),
        }
    }
    assert_eq!(
        backend.stats().requests,
        0,
        "malformed requests must not reach the backend"
    );
    assert_eq!(
        proxy.running.shard_stats()[0].malformed_requests.get(),
        4,
        "each malformed request is counted"
    );
}

#[test]
fn malformed_request_among_concurrent_streams_leaves_the_others_intact() {
    let backend = start_backend("mixed");
    let proxy = Proxy::single_pool("mixed", &[&backend], "");
    let mut client = proxy.client();
    let mut requests: Vec<Request> = (0..20)
        .map(|i| get(&format!("/bytes/{}", 5000 + i)))
        .collect();
    requests.insert(10, get("/bytes/1").header("connection", "close"));
    let responses = client.request_many(requests);
    for (i, response) in responses.into_iter().enumerate() {
        match i {
            10 => match response {
                Ok(r) => assert_eq!(r.status, 400),
                Err(ClientError::StreamReset { code }) => assert_eq!(code, H3_MESSAGE_ERROR),
                Err(e) => panic!("malformed stream: {e:?}"),
            },
            _ => {
                let n = if i < 10 { i } else { i - 1 };
                assert_eq!(ok(response).body_sha256, pattern_sha256(5000 + n as u64));
            }
        }
    }
}

#[test]
fn headers_are_translated_for_the_backend() {
    let backend = start_backend("headers");
    let proxy = Proxy::single_pool("headers", &[&backend], "");
    let mut client = proxy.client();
    let request = get("/headers")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x-custom", "value");
    let response = ok(client.request(request));
    let text = body_text(&response);
    assert!(text.contains(":method: GET\n"), "{text}");
    assert!(text.contains(":authority: localhost\n"), "{text}");
    assert!(text.contains("cookie: a=1; b=2\n"), "{text}");
    assert_eq!(text.matches("cookie:").count(), 1, "{text}");
    assert!(text.contains("x-custom: value\n"), "{text}");
    assert!(text.contains("x-forwarded-for: 127.0.0.1\n"), "{text}");
    assert!(text.contains("x-forwarded-proto: https\n"), "{text}");
}

#[test]
fn trailers_pass_both_ways() {
    let backend = start_backend("trailers");
    let proxy = Proxy::single_pool("trailers", &[&backend], "");
    let mut client = proxy.client();
    let response = ok(client.request(get("/trailers")));
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"hello");
    let trailer = |name: &str| {
        response
            .trailers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(trailer("x-trailer-one").as_deref(), Some("1"));
    assert_eq!(trailer("x-checksum").as_deref(), Some("abc"));

    // Request trailers reach the backend; /echo sends them back as response trailers.
    let body = b"some request body".to_vec();
    let echoed = ok(client.request(
        Request::new("POST", "/echo")
            .body(Body::Bytes(body.clone()))
            .trailers(vec![("x-request-trailer".into(), "yes".into())]),
    ));
    assert_eq!(echoed.body, body);
    assert!(
        echoed
            .trailers
            .iter()
            .any(|(n, v)| n == "x-request-trailer" && v == "yes"),
        "{:?}",
        echoed.trailers
    );
}

#[test]
fn client_cancel_mid_download_cancels_the_backend_stream() {
    let backend = start_backend("cancel");
    let proxy = Proxy::single_pool("cancel", &[&backend], "");
    let mut client = proxy.client();
    let received = client
        .download_then_cancel(get("/slow-bytes/100000000"), 64 * 1024)
        .expect("download started");
    assert!(received >= 64 * 1024);
    assert!(
        common::eventually(Duration::from_secs(5), || backend
            .stats()
            .streams_reset_by_peer
            >= 1),
        "backend never saw the cancel: {:?}",
        backend.stats()
    );
    // The connection carries on.
    let response = ok(client.request(get("/bytes/10")));
    assert_eq!(response.body_sha256, pattern_sha256(10));
}

#[test]
fn backend_reset_mid_body_resets_the_client_stream() {
    let backend = start_backend("reset");
    let proxy = Proxy::single_pool("reset", &[&backend], "");
    let mut client = proxy.client();
    match client.request(get("/reset-after/300000")) {
        Err(ClientError::StreamReset { code }) => assert_eq!(code, H3_INTERNAL_ERROR),
        other => panic!("a truncated body must not look like success: {other:?}"),
    }
    let response = ok(client.request(get("/bytes/10")));
    assert_eq!(response.body_sha256, pattern_sha256(10));
}

#[test]
fn upload_body_matches_pattern_checksum() {
    // Guards the test helpers themselves: the pattern is what the backend and client agree on.
    let data: Vec<u8> = (0..1000u64).map(pattern_byte).collect();
    assert_eq!(sha256(&data), pattern_sha256(1000));
}

#[test]
fn routes_match_host_then_prefix_then_method() {
    let api = start_backend("api");
    let posts = start_backend("posts");
    let web = start_backend("web");
    let proxy = Proxy::start(
        "host-routes",
        &format!(
            "{}\n{}\n{}",
            pool("web", "/", &[&web], ""),
            pool("api", "/", &[&api], "").replace(
                "path_prefix = \"/\" }",
                "path_prefix = \"/\", host = \"*.example.test\" }"
            ),
            pool("posts", "/", &[&posts], "").replace(
                "path_prefix = \"/\" }",
                "path_prefix = \"/\", host = \"*.example.test\", method = \"POST\" }"
            ),
        ),
    );
    let mut client = proxy.client();
    let mut send = |method: &str, authority: &str| {
        let mut request = Request::new(method, "/status/200");
        request.authority = Some(authority.to_string());
        ok(client.request(request))
            .header("x-backend")
            .map(str::to_string)
    };
    assert_eq!(send("GET", "localhost").as_deref(), Some("web"));
    assert_eq!(send("GET", "api.example.test").as_deref(), Some("api"));
    assert_eq!(
        send("POST", "api.example.test:8443").as_deref(),
        Some("posts")
    );
}

#[test]
fn total_and_body_idle_timeouts_end_requests_that_overrun() {
    let backend = start_backend("timeouts");
    let proxy = Proxy::start(
        "timeouts",
        &format!(
            "{}\n{}",
            pool(
                "total",
                "/delay",
                &[&backend],
                "timeouts = { total_ms = 300 }"
            ),
            pool("idle", "/", &[&backend], "timeouts = { body_idle_ms = 5 }"),
        ),
    );
    let mut client = proxy.client();
    let started = Instant::now();
    let response = ok(client.request(get("/delay/3000")));
    assert_eq!(response.status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    // /slow-bytes pauses 20 ms between chunks: longer than the 5 ms body idle limit.
    match client.request(get("/slow-bytes/1000000")) {
        Err(ClientError::StreamReset { code }) => assert_eq!(code, H3_INTERNAL_ERROR),
        other => panic!("an idle body must end in a reset: {other:?}"),
    }
    assert_eq!(
        ok(client.request(get("/bytes/100"))).body_sha256,
        pattern_sha256(100)
    );
}
