//! gRPC through Spooky: a real gRPC server (grpcio) behind it over h2c, called by a real gRPC
//! client (grpcio) over HTTP/2+TLS on the TCP listener, and by the HTTP/3 test client speaking
//! gRPC's framing by hand. Unary and server-streaming calls with their trailers, an error status
//! from the server, and a backend failure turned into a `grpc-status` the client understands.

mod common;

use std::process::Command;
use std::time::Duration;

use common::python::{python, PythonServer};
use common::{eventually, Proxy};
use serde_json::Value;
use spooky_bench::client::{Body, Request};

fn grpc_proxy(label: &str, backend: std::net::SocketAddr) -> Proxy {
    Proxy::start(
        label,
        &format!(
            "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\nretries = 0\n\
             [[upstream.main.backends]]\nid = \"grpc\"\naddress = \"{backend}\"\n"
        ),
    )
}

/// Runs grpc_client.py against the proxy's TCP listener; one JSON object per call.
fn grpc_calls(proxy: &Proxy, calls: &[&str]) -> Vec<Value> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/python/grpc_client.py");
    let output = Command::new(python())
        .arg(script)
        .arg(proxy.running.local_addr().to_string())
        .arg(&proxy.certs.ca)
        .args(calls)
        .output()
        .expect("run the gRPC client");
    assert!(
        output.status.success(),
        "gRPC client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), calls.len(), "{lines:?}");
    lines
}

fn sha256_hex_of_pattern(n: u64) -> String {
    common::hex(&spooky_bench::backend::pattern_sha256(n))
}

#[test]
fn a_grpc_client_makes_unary_and_streaming_calls_with_trailers_intact() {
    let server = PythonServer::start("grpc_backend.py");
    let proxy = grpc_proxy("grpc-calls", server.addr);
    let results = grpc_calls(&proxy, &["echo:10", "echo:3000000", "count:1000", "fail"]);
    assert_eq!(results[0]["code"], "OK");
    assert_eq!(results[0]["len"], 10);
    assert_eq!(results[0]["sha256"], sha256_hex_of_pattern(10));
    assert_eq!(results[0]["trailers"]["x-echo-len"], "10");
    assert_eq!(results[1]["code"], "OK");
    assert_eq!(results[1]["sha256"], sha256_hex_of_pattern(3_000_000));
    assert_eq!(results[1]["trailers"]["x-echo-len"], "3000000");
    assert_eq!(results[2]["code"], "OK");
    assert_eq!(results[2]["messages"], 1000);
    assert_eq!(results[2]["in_order"], true);
    assert_eq!(results[3]["code"], "NOT_FOUND");
    assert_eq!(results[3]["details"], "no such thing");
}

#[test]
fn a_backend_failure_reaches_a_grpc_client_as_unavailable_not_as_a_502_page() {
    let server = PythonServer::start("grpc_backend.py");
    let address = server.addr;
    let proxy = grpc_proxy("grpc-down", address);
    assert_eq!(grpc_calls(&proxy, &["echo:5"])[0]["code"], "OK");
    drop(server);
    let failed = &grpc_calls(&proxy, &["echo:5"])[0];
    assert_eq!(failed["code"], "UNAVAILABLE", "{failed}");
    assert_eq!(failed["details"], "backend unreachable", "{failed}");
}

/// gRPC's length-prefixed message framing (gRPC over HTTP/2, "Length-Prefixed-Message").
fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn grpc_request(path: &str, message: &[u8]) -> Request {
    Request::new("POST", path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::Bytes(framed(message)))
}

#[test]
fn grpc_over_http3_keeps_trailers_and_gets_grpc_status_for_local_failures() {
    let server = PythonServer::start("grpc_backend.py");
    let proxy = grpc_proxy("grpc-h3", server.addr);
    let mut client = proxy.client();
    let response = client
        .request(grpc_request("/spooky.Test/Echo", b"hello"))
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/grpc"));
    assert_eq!(response.body, framed(b"hello"));
    assert_eq!(response.trailer("grpc-status"), Some("0"));
    assert_eq!(response.trailer("x-echo-len"), Some("5"));
    let response = client
        .request(grpc_request("/spooky.Test/Fail", b""))
        .unwrap();
    // grpcio answers an error as Trailers-Only: the status is in the header section.
    assert_eq!(response.status, 200);
    assert_eq!(response.header("grpc-status"), Some("5"));
    assert_eq!(response.header("grpc-message"), Some("no such thing"));
    assert!(response.body.is_empty());

    // Spooky's own replies, as gRPC "trailers-only" responses: no route, and backend down.
    // Down means refused connections: wait until the shard has seen its pooled connection to
    // the stopped server close, or the request could go out on it first and fail mid-exchange
    // (a different reply, "backend failed").
    let stats = proxy.running.shard_stats()[0].clone();
    let pooled = || stats.backend(0).map_or(0, |b| b.h2_connections.get());
    assert_eq!(
        pooled(),
        1,
        "the calls above went over one pooled connection"
    );
    drop(server);
    assert!(
        eventually(Duration::from_secs(10), || pooled() == 0),
        "the connection to the stopped backend is still open"
    );
    let response = client
        .request(grpc_request("/spooky.Test/Echo", b"hello"))
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/grpc"));
    assert_eq!(response.header("grpc-status"), Some("14"));
    assert_eq!(response.header("grpc-message"), Some("backend unreachable"));
    assert!(response.body.is_empty());
    // A plain request still gets the plain page.
    let plain = client.request(Request::get("/anything")).unwrap();
    assert_eq!(plain.status, 502);
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
}
