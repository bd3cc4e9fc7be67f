//! The TCP+TLS listener beside QUIC: a real HTTP/2 client over TLS (rustls, ALPN `h2`) through
//! the real proxy to a real HTTP/2 backend, on 127.0.0.1 with ephemeral ports.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::{sha256, start_backend, Proxy};
use http::{HeaderMap, Request};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use spooky_bench::backend::{pattern_byte, pattern_sha256};
use spooky_bench::client::Request as H3Request;

/// One response as the client saw it.
struct Received {
    status: u16,
    headers: HeaderMap,
    body_len: u64,
    body_sha256: [u8; 32],
    trailers: Option<HeaderMap>,
}

type H2Sender = h2::client::SendRequest<Bytes>;

/// Connects over TCP+TLS to `addr`, trusting only `ca`, and completes the HTTP/2 handshake.
async fn connect(addr: SocketAddr, ca: &Path) -> H2Sender {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .handshake(tls)
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends `method path` with `upload` bytes of the test pattern (if any) and reads the response.
async fn exchange(sender: &H2Sender, method: &str, path: &str, upload: Option<u64>) -> Received {
    let mut sender = sender.clone().ready().await.unwrap();
    let request = Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let (response, mut send) = sender.send_request(request, upload.is_none()).unwrap();
    // The upload runs beside the response: /echo streams the body back as it arrives, so a
    // client that read only after sending everything would stall on its own receive window.
    let uploader = upload.map(|size| {
        tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < size {
                let n = (size - sent).min(64 * 1024);
                let chunk: Vec<u8> = (sent..sent + n).map(pattern_byte).collect();
                send.reserve_capacity(n as usize);
                let mut granted = 0;
                while granted < n as usize {
                    granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .unwrap()
                        .unwrap();
                }
                send.send_data(Bytes::from(chunk), sent + n == size)
                    .unwrap();
                sent += n;
            }
        })
    });
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let (parts, mut body) = response.into_parts();
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut body_len = 0u64;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body_len += chunk.len() as u64;
        sha2::Digest::update(&mut hasher, &chunk);
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    let trailers = body.trailers().await.unwrap();
    if let Some(uploader) = uploader {
        uploader.await.unwrap();
    }
    Received {
        status,
        headers: parts.headers,
        body_len,
        body_sha256: sha2::Digest::finalize(hasher).into(),
        trailers,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn http2_over_tls_is_proxied_with_alt_svc_pointing_at_http3() {
    let backend = start_backend("tcp1");
    let proxy = Proxy::single_pool("tcp-h2", &[&backend], "");
    let addr = proxy.running.local_addr();
    let expected_alt_svc = format!("h3=\":{}\"; ma=86400", addr.port());
    runtime().block_on(async {
        let sender = connect(addr, &proxy.certs.ca).await;

        let small = exchange(&sender, "GET", "/bytes/1000", None).await;
        assert_eq!(small.status, 200);
        assert_eq!(small.body_len, 1000);
        assert_eq!(small.body_sha256, pattern_sha256(1000));
        assert_eq!(small.headers["x-backend"], "tcp1");
        assert_eq!(small.headers["alt-svc"], expected_alt_svc.as_str());

        let size: u64 = 100 * 1024 * 1024;
        let large = exchange(&sender, "GET", &format!("/bytes/{size}"), None).await;
        assert_eq!((large.status, large.body_len), (200, size));
        assert_eq!(large.body_sha256, pattern_sha256(size));

        let size: u64 = 50 * 1024 * 1024;
        let echoed = exchange(&sender, "POST", "/echo", Some(size)).await;
        assert_eq!(echoed.status, 200);
        assert_eq!(echoed.headers["x-echo-method"], "POST");
        assert_eq!(
            (echoed.body_len, echoed.body_sha256),
            (size, pattern_sha256(size))
        );

        let trailers = exchange(&sender, "GET", "/trailers", None).await;
        assert_eq!(trailers.body_sha256, sha256(b"hello"));
        let trailers = trailers.trailers.expect("response trailers");
        assert_eq!(trailers["x-trailer-one"], "1");
        assert_eq!(trailers["x-checksum"], "abc");

        let missing = exchange(&sender, "GET", "/nowhere-routed-differently", None).await;
        assert_eq!(missing.headers["alt-svc"], expected_alt_svc.as_str());

        // 100 streams at once on the one connection, each with its own body size.
        let streams = (0..100u64).map(|i| {
            let sender = sender.clone();
            async move {
                let size = 2000 + i * 31;
                let got = exchange(&sender, "GET", &format!("/bytes/{size}"), None).await;
                (
                    got.status,
                    got.body_len,
                    got.body_sha256 == pattern_sha256(size),
                )
            }
        });
        let handles: Vec<_> = streams.map(tokio::spawn).collect();
        for (i, handle) in handles.into_iter().enumerate() {
            let size = 2000 + i as u64 * 31;
            assert_eq!(handle.await.unwrap(), (200, size, true), "stream {i}");
        }
    });

    // HTTP/3 responses do not advertise HTTP/3 again.
    let response = proxy
        .client()
        .request(H3Request::get("/bytes/10"))
        .expect("HTTP/3 request");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("alt-svc"), None);
}
