//! Spooky in front of backends it shares no code with: Hypercorn (Python, h11) for HTTP/1.1.
//! Spooky's own test backend speaks HTTP/1.1 through hyper, as Spooky's client does; a second,
//! unrelated implementation catches what two copies of one library would agree on wrongly.
//! Real HTTP/3 client over UDP, real proxy, real server, all on 127.0.0.1 with kernel-chosen ports.

mod common;

use common::python::PythonServer;
use common::{http_get, scratch_dir, Proxy};
use spooky_bench::backend::{self, pattern_sha256};
use spooky_bench::client::{Body, ClientError, Request, Response};

fn ok(result: Result<Response, ClientError>) -> Response {
    result.unwrap_or_else(|e| panic!("request failed: {e:?}"))
}

fn hypercorn_proxy(label: &str, server: &PythonServer) -> Proxy {
    Proxy::start(
        label,
        &format!(
            "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\nprotocol = \"http/1.1\"\n\
             [[upstream.main.backends]]\nid = \"hypercorn\"\naddress = \"{}\"\n",
            server.addr
        ),
    )
}

/// (connections, requests) the server has seen, not counting this question.
fn served(server: &PythonServer) -> (u64, u64) {
    let (status, text) = http_get(server.addr, "/stats").expect("hypercorn /stats");
    assert_eq!(status, 200, "{text}");
    let words: Vec<&str> = text.split_whitespace().collect();
    match words[..] {
        ["connections", c, "requests", r] => (c.parse().unwrap(), r.parse().unwrap()),
        _ => panic!("unexpected /stats answer: {text}"),
    }
}

#[test]
fn hypercorn_serves_small_and_100_mb_downloads_on_one_kept_alive_connection() {
    let server = PythonServer::start("h1_backend.py");
    let proxy = hypercorn_proxy("hc-get", &server);
    let mut client = proxy.client();
    for _ in 0..10 {
        let response = ok(client.request(Request::get("/bytes/1000")));
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-backend"), Some("hypercorn"));
        assert_eq!(response.header("content-length"), Some("1000"));
        assert_eq!(response.body_sha256, pattern_sha256(1000));
    }
    let chunked = ok(client.request(Request::get("/chunked/300001")));
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.header("transfer-encoding"), None);
    assert_eq!(chunked.body_sha256, pattern_sha256(300_001));
    let size: u64 = 100 * 1024 * 1024;
    let big = ok(client.request(Request::get(&format!("/bytes/{size}")).keep_body(false)));
    assert_eq!(big.status, 200);
    assert_eq!(
        (big.body_len, big.body_sha256),
        (size, pattern_sha256(size))
    );
    assert_eq!(
        served(&server),
        (1, 12),
        "every request on one keep-alive connection"
    );
}

#[test]
fn hypercorn_echoes_a_50_mb_upload_and_a_chunked_one() {
    let server = PythonServer::start("h1_backend.py");
    let proxy = hypercorn_proxy("hc-echo", &server);
    let mut client = proxy.client();
    let size: u64 = 50 * 1024 * 1024;
    let sized = ok(client.request(
        Request::new("POST", "/echo")
            .body(Body::Pattern(size))
            .keep_body(false),
    ));
    assert_eq!(sized.status, 200);
    assert_eq!(sized.header("x-echo-framing"), Some("content-length"));
    assert_eq!(
        (sized.body_len, sized.body_sha256),
        (size, pattern_sha256(size))
    );
    // A file body goes without content-length, so Spooky sends it chunked.
    let dir = scratch_dir("hc-echo");
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 7)
        .map(backend::pattern_byte)
        .collect();
    let path = dir.join("upload.bin");
    std::fs::write(&path, &data).unwrap();
    let chunked = ok(client.request(
        Request::new("PUT", "/echo")
            .body(Body::File(path))
            .keep_body(false),
    ));
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.header("x-echo-framing"), Some("chunked"));
    assert_eq!(chunked.body_len, data.len() as u64);
    assert_eq!(chunked.body_sha256, common::sha256(&data));
    assert_eq!(
        served(&server),
        (1, 2),
        "both echoes on one keep-alive connection"
    );
}

#[test]
fn hypercorn_closing_its_connection_mid_sequence_is_honoured() {
    let server = PythonServer::start("h1_backend.py");
    let proxy = hypercorn_proxy("hc-close", &server);
    let mut client = proxy.client();
    for path in ["/bytes/10", "/close/20", "/bytes/30", "/bytes/40"] {
        let response = ok(client.request(Request::get(path)));
        assert_eq!(response.status, 200, "{path}");
        let size: u64 = path.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(response.body_sha256, pattern_sha256(size), "{path}");
        assert_eq!(response.header("connection"), None);
    }
    assert_eq!(
        served(&server),
        (2, 4),
        "one connection up to the close, one after"
    );
}
