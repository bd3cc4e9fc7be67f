//! HTTP/1.1 backends (`protocol = "http/1.1"`), end to end: a real HTTP/3 client over UDP and an
//! HTTP/2-over-TLS client over TCP, the real proxy, and the test backend's HTTP/1.1 mode (hyper's
//! server) on 127.0.0.1 with ephemeral ports. Keep-alive reuse is counted by the connections the
//! backend accepted.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, http_get, parse_prometheus, pool, scratch_dir, Proxy};
use spooky_bench::backend::{self, pattern_sha256, BackendHandle, BackendOptions};
use spooky_bench::client::{Body, ClientError, H3Client, Request, Response};

fn start_http1_backend(name: &str) -> BackendHandle {
    backend::start(BackendOptions {
        http1: true,
        ..BackendOptions::new("127.0.0.1:0".parse().unwrap(), name)
    })
    .expect("start HTTP/1.1 backend")
}

const HTTP1: &str = "protocol = \"http/1.1\"";

fn http1_proxy(label: &str, backend: &BackendHandle, settings: &str) -> Proxy {
    Proxy::start(
        label,
        &pool("main", "/", &[backend], &format!("{HTTP1}\n{settings}")),
    )
}

fn ok(result: Result<Response, ClientError>) -> Response {
    result.unwrap_or_else(|e| panic!("request failed: {e:?}"))
}

/// No field of the backend's connection reaches an HTTP/3 client (RFC 9114 §4.2).
fn assert_no_hop_fields(response: &Response) {
    for name in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
        assert_eq!(response.header(name), None, "{name} was forwarded");
    }
}

#[test]
fn small_get_is_forwarded_and_the_connection_is_reused() {
    let backend = start_http1_backend("h1-small");
    let proxy = http1_proxy("h1-small", &backend, "");
    let mut client = proxy.client();
    for _ in 0..20 {
        let response = ok(client.request(Request::get("/bytes/1000")));
        assert_eq!(response.status, 200);
        assert_eq!(response.body_len, 1000);
        assert_eq!(response.body_sha256, pattern_sha256(1000));
        assert_eq!(response.header("x-backend"), Some("h1-small"));
        assert_eq!(response.header("content-length"), Some("1000"));
        assert_no_hop_fields(&response);
    }
    let stats = backend.stats();
    assert_eq!(stats.requests, 20);
    assert_eq!(
        stats.connections_accepted, 1,
        "20 requests one after another must share one keep-alive connection"
    );
}

#[test]
fn the_backend_sees_origin_form_and_host_from_the_authority() {
    let backend = start_http1_backend("h1-head");
    let proxy = http1_proxy("h1-head", &backend, "");
    let mut client = proxy.client();
    let response = ok(client.request(
        Request::get("/headers?x=1")
            .header("te", "trailers")
            .header("x-custom", "kept"),
    ));
    assert_eq!(response.status, 200);
    let shown = String::from_utf8_lossy(&response.body).into_owned();
    let lines: Vec<&str> = shown.lines().collect();
    assert!(lines.contains(&":path: /headers?x=1"), "{shown}");
    assert!(lines.contains(&"host: localhost"), "{shown}");
    assert!(lines.contains(&"x-custom: kept"), "{shown}");
    assert!(lines.contains(&"te: trailers"), "{shown}");
    assert!(lines.contains(&"connection: te"), "{shown}");
    assert!(lines.contains(&"x-forwarded-proto: https"), "{shown}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("host:")).count(), 1);
}

#[test]
fn a_100_mb_download_streams_intact() {
    let backend = start_http1_backend("h1-big");
    let proxy = http1_proxy("h1-big", &backend, "");
    let mut client = proxy.client();
    let size: u64 = 100 * 1024 * 1024;
    let response = ok(client.request(Request::get(&format!("/bytes/{size}")).keep_body(false)));
    assert_eq!(response.status, 200);
    assert_eq!(response.body_len, size);
    assert_eq!(response.body_sha256, pattern_sha256(size));
}

#[test]
fn a_50_mb_upload_is_echoed_intact_with_its_declared_length() {
    let backend = start_http1_backend("h1-echo");
    let proxy = http1_proxy("h1-echo", &backend, "");
    let mut client = proxy.client();
    let size: u64 = 50 * 1024 * 1024;
    let request = Request::new("POST", "/echo")
        .body(Body::Pattern(size))
        .keep_body(false);
    let response = ok(client.request(request));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-echo-method"), Some("POST"));
    assert_eq!(response.header("x-echo-framing"), Some("content-length"));
    assert_eq!(response.body_len, size);
    assert_eq!(response.body_sha256, pattern_sha256(size));
    assert_no_hop_fields(&response);
    // The echo ended cleanly, so the connection carries the next request.
    assert_eq!(ok(client.request(Request::get("/bytes/10"))).status, 200);
    assert_eq!(backend.stats().connections_accepted, 1);
}

#[test]
fn an_upload_of_unknown_length_goes_chunked_both_ways() {
    let backend = start_http1_backend("h1-chunked");
    let proxy = http1_proxy("h1-chunked", &backend, "");
    // A file body is sent without content-length: the proxy learns its end from the stream.
    let dir = scratch_dir("h1-chunked");
    let size = 5 * 1024 * 1024 + 123;
    let data: Vec<u8> = (0..size as u64).map(backend::pattern_byte).collect();
    let path = dir.join("upload.bin");
    std::fs::write(&path, &data).unwrap();
    let mut client = proxy.client();
    let response = ok(client.request(
        Request::new("PUT", "/echo")
            .body(Body::File(path))
            .keep_body(false),
    ));
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-echo-method"), Some("PUT"));
    assert_eq!(response.header("x-echo-framing"), Some("chunked"));
    assert_eq!(response.body_len, size as u64);
    assert_eq!(response.body_sha256, common::sha256(&data));
    assert_no_hop_fields(&response);
}

#[test]
fn connection_close_from_the_backend_is_honoured_mid_sequence() {
    let backend = start_http1_backend("h1-close");
    let proxy = http1_proxy("h1-close", &backend, "");
    let mut client = proxy.client();
    let paths = [
        "/bytes/10",
        "/bytes/20",
        "/close/30",
        "/bytes/40",
        "/bytes/50",
    ];
    for path in paths {
        let response = ok(client.request(Request::get(path)));
        assert_eq!(response.status, 200, "{path}");
        let size: u64 = path.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(response.body_sha256, pattern_sha256(size), "{path}");
        assert_no_hop_fields(&response);
    }
    // Two before the close share one connection, the two after share the next.
    assert_eq!(backend.stats().connections_accepted, 2);
}

#[test]
fn a_backend_that_answers_before_reading_the_body_is_not_reused() {
    let backend = start_http1_backend("h1-early");
    let proxy = http1_proxy("h1-early", &backend, "");
    let mut client = proxy.client();
    let response =
        ok(client.request(Request::new("POST", "/early/413").body(Body::Pattern(4 * 1024 * 1024))));
    assert_eq!(response.status, 413);
    assert_eq!(response.body, b"status 413");
    let next = ok(client.request(Request::get("/bytes/100")));
    assert_eq!(next.status, 200);
    assert_eq!(next.body_sha256, pattern_sha256(100));
    assert_eq!(
        backend.stats().connections_accepted,
        2,
        "the connection that skipped a request body must not carry the next request"
    );
}

#[test]
fn keepalive_bounds_idle_connections_and_closes_them_after_the_idle_timeout() {
    let backend = start_http1_backend("h1-idle");
    let proxy = http1_proxy(
        "h1-idle",
        &backend,
        "keepalive = { max_idle = 2, idle_timeout_ms = 300 }",
    );
    let admin = proxy
        .running
        .start_admin("127.0.0.1:0".parse().unwrap())
        .expect("admin");
    let connections = || {
        let (status, text) = http_get(admin, "/metrics").unwrap();
        assert_eq!(status, 200);
        parse_prometheus(&text)
            .unwrap()
            .into_iter()
            .find(|s| s.name == "spooky_backend_http1_connections")
            .map(|s| s.value)
            .expect("spooky_backend_http1_connections")
    };
    // Five requests at once need five connections; only two may stay once they are done.
    let mut client = proxy.client();
    let responses = client.request_many((0..5).map(|_| Request::get("/delay/200")).collect());
    for response in responses {
        assert_eq!(ok(response).status, 200);
    }
    assert_eq!(backend.stats().connections_accepted, 5);
    assert!(
        eventually(Duration::from_secs(5), || connections() == 2.0),
        "idle connections beyond max_idle were not closed: {}",
        connections()
    );
    let idle_from = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || connections() == 0.0),
        "idle connections outlived idle_timeout_ms"
    );
    assert!(idle_from.elapsed() >= Duration::from_millis(200));
    // And the pool opens a fresh one for the next request.
    assert_eq!(ok(client.request(Request::get("/bytes/10"))).status, 200);
    assert_eq!(backend.stats().connections_accepted, 6);
}

#[test]
fn tcp_clients_reach_an_http1_backend_with_bodies_streamed_both_ways() {
    use common::tcp::{connect_h2, connect_http1, h2_exchange, http1_exchange, runtime, Upload};
    let backend = start_http1_backend("h1-from-tcp");
    let proxy = http1_proxy("h1-from-tcp", &backend, "");
    let addr = proxy.running.local_addr();
    runtime().block_on(async {
        let sender = connect_h2(addr, &proxy.certs.ca).await;
        let small = h2_exchange(&sender, "GET", "/bytes/70000", None).await;
        assert_eq!(small.status, 200);
        assert_eq!(small.body_sha256, pattern_sha256(70000));
        assert_eq!(small.headers["x-backend"], "h1-from-tcp");
        // HTTP/2 has no chunked coding: an upload without content-length reaches the backend
        // chunked, and its chunked echo comes back as DATA frames.
        let size = 3 * 1024 * 1024 + 17;
        let echoed = h2_exchange(&sender, "POST", "/echo", Some(size)).await;
        assert_eq!(echoed.status, 200);
        assert_eq!(echoed.headers["x-echo-framing"], "chunked");
        assert_eq!(
            (echoed.body_len, echoed.body_sha256),
            (size, pattern_sha256(size))
        );
        for name in ["connection", "keep-alive", "transfer-encoding"] {
            assert!(
                echoed.headers.get(name).is_none(),
                "{name} was forwarded over h2"
            );
        }

        let mut http1 = connect_http1(addr, &proxy.certs.ca).await;
        let request = || {
            http::Request::builder()
                .method("POST")
                .uri("/echo")
                .header("host", "localhost")
        };
        let chunked = http1_exchange(&mut http1, request(), Upload::Chunked(size)).await;
        assert_eq!(chunked.status, 200);
        assert_eq!(chunked.headers["x-echo-framing"], "chunked");
        assert_eq!(
            (chunked.body_len, chunked.body_sha256),
            (size, pattern_sha256(size))
        );
        let sized = http1_exchange(&mut http1, request(), Upload::Sized(size)).await;
        assert_eq!(sized.headers["x-echo-framing"], "content-length");
        assert_eq!(
            (sized.body_len, sized.body_sha256),
            (size, pattern_sha256(size))
        );
    });
    assert_eq!(backend.stats().connections_accepted, 1);
}

#[test]
fn health_checks_speak_http1() {
    let backend = start_http1_backend("h1-health");
    let check = "health_check = { path = \"/health\", interval = 50, timeout_ms = 40, failure_threshold = 1, success_threshold = 1 }";
    let text = format!(
        "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\n{HTTP1}\n\
         [[upstream.main.backends]]\nid = \"h1-health\"\naddress = \"{}\"\n{check}\n",
        backend.addr()
    );
    let proxy = Proxy::start("h1-health", &text);
    let mut client: H3Client = proxy.client();
    assert_eq!(ok(client.request(Request::get("/bytes/10"))).status, 200);
    backend.set_healthy(false);
    assert!(
        eventually(Duration::from_secs(5), || {
            ok(client.request(Request::get("/bytes/10"))).status == 503
        }),
        "an unhealthy HTTP/1.1 backend kept receiving traffic"
    );
    backend.set_healthy(true);
    assert!(
        eventually(Duration::from_secs(5), || {
            ok(client.request(Request::get("/bytes/10"))).status == 200
        }),
        "a recovered HTTP/1.1 backend never came back"
    );
    assert!(backend.requests_for("/health") >= 2);
}
