//! The HTTP/2 test backend, checked with a plain h2 client over real TCP.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use spooky_bench::backend::{self, pattern_sha256, BackendHandle, BackendOptions};

fn start() -> BackendHandle {
    backend::start(BackendOptions::new("127.0.0.1:0".parse().unwrap(), "t")).unwrap()
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
    trailers: Option<http::HeaderMap>,
    error: Option<h2::Error>,
}

fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: Option<Vec<u8>>) -> Reply {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, body.is_none()).unwrap();
        if let Some(body) = body {
            send.send_data(Bytes::from(body), true).unwrap();
        }
        let response = response.await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut stream = response.into_body();
        let mut body = Vec::new();
        let mut error = None;
        while let Some(chunk) = stream.data().await {
            match chunk {
                Ok(chunk) => {
                    let _ = stream.flow_control().release_capacity(chunk.len());
                    body.extend_from_slice(&chunk);
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let trailers = if error.is_none() {
            stream.trailers().await.ok().flatten()
        } else {
            None
        };
        Reply {
            status,
            headers,
            body,
            trailers,
            error,
        }
    })
}

#[test]
fn bytes_endpoint_sends_exact_pattern() {
    let backend = start();
    for n in [0u64, 10, 70_000, 3_000_000] {
        let reply = call(backend.addr(), "GET", &format!("/bytes/{n}"), None);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["content-length"], n.to_string().as_str());
        assert_eq!(reply.body.len() as u64, n);
        let digest: [u8; 32] = Sha256::digest(&reply.body).into();
        assert_eq!(digest, pattern_sha256(n));
    }
}

#[test]
fn echo_returns_the_body() {
    let backend = start();
    let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 7) as u8).collect();
    let reply = call(backend.addr(), "POST", "/echo", Some(body.clone()));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-echo-method"], "POST");
    assert_eq!(reply.body, body);
}

#[test]
fn reset_after_really_resets() {
    let backend = start();
    let reply = call(backend.addr(), "GET", "/reset-after/1000", None);
    assert_eq!(reply.body.len(), 1000);
    assert_eq!(
        reply.error.and_then(|e| e.reason()),
        Some(h2::Reason::INTERNAL_ERROR)
    );
}

#[test]
fn trailers_and_statuses() {
    let backend = start();
    let reply = call(backend.addr(), "GET", "/trailers", None);
    assert_eq!(reply.body, b"hello");
    let trailers = reply.trailers.expect("trailers");
    assert_eq!(trailers["x-trailer-one"], "1");
    assert_eq!(trailers["x-checksum"], "abc");
    assert_eq!(call(backend.addr(), "GET", "/status/503", None).status, 503);
    assert_eq!(call(backend.addr(), "GET", "/nope", None).status, 404);
    assert_eq!(backend.stats().requests, 3);
}
