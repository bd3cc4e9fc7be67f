//! Request limits (`[limits]`, `[upstream.NAME.limits]`): each broken limit gets its status on
//! that request's stream, and the connection goes on serving the next request.

mod common;

use common::{pool, start_backend, Proxy};
use spooky_bench::backend::pattern_sha256;
use spooky_bench::client::{Body, H3Client, Request, Response};

fn status(client: &mut H3Client, request: Request) -> Response {
    client.request(request).expect("a response on the stream")
}

/// The same connection still serves: the limit did not close it.
fn still_serves(client: &mut H3Client) {
    let response = status(client, Request::get("/bytes/1000"));
    assert_eq!(response.status, 200);
    assert_eq!(response.body_sha256, pattern_sha256(1000));
}

#[test]
fn header_uri_and_body_limits_answer_on_the_stream() {
    let backend = start_backend("limits");
    let proxy = Proxy::start(
        "limits",
        &format!(
            "[limits]\nmax_request_body_bytes = 100000\n\n{}\n{}",
            pool("main", "/", &[&backend], ""),
            pool(
                "roomy",
                "/roomy",
                &[&backend],
                "limits = { max_header_bytes = 200000, max_request_body_bytes = 1000000 }"
            ),
        ),
    );
    let mut client = proxy.client();
    still_serves(&mut client);
    // quiche sends a header section only when all of it fits the congestion window: an upload
    // first grows the client's window past 64 KiB.
    for _ in 0..3 {
        let warm = Request::new("POST", "/sink").body(Body::Pattern(99_000));
        assert_eq!(status(&mut client, warm).status, 200);
    }

    // 64 KiB of one header: over the 64 KiB default once the other fields count. Before these
    // limits, quiche closed the whole connection with H3_EXCESSIVE_LOAD.
    let big = "x".repeat(64 * 1024);
    let response = status(&mut client, Request::get("/bytes/10").header("x-big", &big));
    assert_eq!(response.status, 431);
    still_serves(&mut client);

    let mut many = Request::get("/bytes/10");
    for i in 0..100 {
        many = many.header(&format!("x-field-{i}"), "1");
    }
    assert_eq!(status(&mut client, many).status, 431, "over 100 fields");
    still_serves(&mut client);

    let long_path = format!("/bytes/10?{}", "q".repeat(8200));
    assert_eq!(status(&mut client, Request::get(&long_path)).status, 414);
    still_serves(&mut client);

    // A declared length over the limit: refused before any byte goes to a backend.
    let before = backend.stats().requests;
    let declared = Request::new("POST", "/sink").body(Body::Pattern(100_001));
    let response = status(&mut client, declared);
    assert_eq!(response.status, 413);
    assert_eq!(
        backend.stats().requests,
        before,
        "nothing reached the backend"
    );
    still_serves(&mut client);
    let fits = Request::new("POST", "/sink").body(Body::Pattern(100_000));
    let response = status(&mut client, fits);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-sink-bytes"), Some("100000"));

    // A streamed body (no content-length) is cut off when it crosses the limit.
    let file = proxy.dir.join("upload.bin");
    std::fs::write(&file, vec![7u8; 300_000]).unwrap();
    let streamed = Request::new("POST", "/sink").body(Body::File(file.clone()));
    assert_eq!(status(&mut client, streamed).status, 413);
    still_serves(&mut client);

    // The roomy pool overrides the listener's limits.
    let response = status(&mut client, Request::get("/roomy/x").header("x-big", &big));
    assert_ne!(response.status, 431);
    let streamed = Request::new("POST", "/roomy/sink").body(Body::File(file));
    let response = status(&mut client, streamed);
    assert_ne!(response.status, 413);

    let stats = &proxy.running.shard_stats()[0];
    use shards::proxy::limits::Exceeded;
    assert_eq!(stats.limited.get(Exceeded::Header).get(), 2);
    assert_eq!(stats.limited.get(Exceeded::Uri).get(), 1);
    assert_eq!(stats.limited.get(Exceeded::Body).get(), 2);
}

#[test]
fn a_client_over_its_request_rate_gets_429_with_retry_after() {
    let backend = start_backend("rate");
    let proxy = Proxy::single_pool(
        "rate",
        &[&backend],
        "[limits]\nrequests_per_second = 1\nrequests_burst = 3\n",
    );
    let mut client = proxy.client();
    for _ in 0..3 {
        still_serves(&mut client);
    }
    let limited = status(&mut client, Request::get("/bytes/10"));
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("1"));
    // One token a second: within two seconds the client is served again, on the same connection.
    let served = common::eventually(std::time::Duration::from_secs(3), || {
        status(&mut client, Request::get("/bytes/10")).status == 200
    });
    assert!(served);
}
