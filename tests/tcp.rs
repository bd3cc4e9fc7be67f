//! The TCP+TLS listener beside QUIC: real HTTP/2 and HTTP/1.1 clients over TLS (rustls, by
//! ALPN) through the real proxy to a real HTTP/2 backend, on 127.0.0.1 with ephemeral ports.

mod common;

use std::time::Duration;

use common::tcp::{
    connect_h2, connect_http1, connect_tls, connect_tls_to, h2_exchange, http1_exchange, runtime,
    Upload,
};
use common::{sha256, start_backend, Proxy};
use spooky_bench::backend::pattern_sha256;
use spooky_bench::client::Request as H3Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn http2_over_tls_is_proxied_with_alt_svc_pointing_at_http3() {
    let backend = start_backend("tcp1");
    let proxy = Proxy::single_pool("tcp-h2", &[&backend], "");
    let addr = proxy.running.local_addr();
    let expected_alt_svc = format!("h3=\":{}\"; ma=86400", addr.port());
    runtime().block_on(async {
        let sender = connect_h2(addr, &proxy.certs.ca).await;

        let small = h2_exchange(&sender, "GET", "/bytes/1000", None).await;
        assert_eq!(small.status, 200);
        assert_eq!(small.body_len, 1000);
        assert_eq!(small.body_sha256, pattern_sha256(1000));
        assert_eq!(small.headers["x-backend"], "tcp1");
        assert_eq!(small.headers["alt-svc"], expected_alt_svc.as_str());

        let size: u64 = 100 * 1024 * 1024;
        let large = h2_exchange(&sender, "GET", &format!("/bytes/{size}"), None).await;
        assert_eq!((large.status, large.body_len), (200, size));
        assert_eq!(large.body_sha256, pattern_sha256(size));

        let size: u64 = 50 * 1024 * 1024;
        let echoed = h2_exchange(&sender, "POST", "/echo", Some(size)).await;
        assert_eq!(echoed.status, 200);
        assert_eq!(echoed.headers["x-echo-method"], "POST");
        assert_eq!(
            (echoed.body_len, echoed.body_sha256),
            (size, pattern_sha256(size))
        );

        let trailers = h2_exchange(&sender, "GET", "/trailers", None).await;
        assert_eq!(trailers.body_sha256, sha256(b"hello"));
        let trailers = trailers.trailers.expect("response trailers");
        assert_eq!(trailers["x-trailer-one"], "1");
        assert_eq!(trailers["x-checksum"], "abc");

        let missing = h2_exchange(&sender, "GET", "/nowhere-routed-differently", None).await;
        assert_eq!(missing.headers["alt-svc"], expected_alt_svc.as_str());

        // 100 streams at once on the one connection, each with its own body size.
        let streams = (0..100u64).map(|i| {
            let sender = sender.clone();
            async move {
                let size = 2000 + i * 31;
                let got = h2_exchange(&sender, "GET", &format!("/bytes/{size}"), None).await;
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

/// A backend's last DATA frame that carries END_STREAM reaches the client as one frame with
/// END_STREAM too, not as the data followed by an empty frame to end the stream: the stream has
/// ended as soon as the body is read (a separate empty frame would still be queued, or not yet
/// arrived, at that point). The test backend's `/headers` answers in one such frame.
#[test]
fn a_response_ends_with_its_last_data_frame() {
    let backend = start_backend("last-frame");
    let proxy = Proxy::single_pool("tcp-last-frame", &[&backend], "");
    let addr = proxy.running.local_addr();
    runtime().block_on(async {
        let sender = connect_h2(addr, &proxy.certs.ca).await;
        let mut sender = sender.ready().await.unwrap();
        let request = http::Request::get("https://localhost/headers")
            .body(())
            .unwrap();
        let (response, _) = sender.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let mut received = Vec::new();
        let mut frames_after_body = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            if chunk.is_empty() {
                frames_after_body += 1;
            } else {
                assert_eq!(frames_after_body, 0, "data after an empty frame");
                received.extend_from_slice(&chunk);
            }
        }
        let text = String::from_utf8(received).unwrap();
        assert!(text.contains(":path: /headers\n"), "{text}");
        assert_eq!(
            frames_after_body, 0,
            "END_STREAM came in an empty frame of its own"
        );
    });
}

#[test]
fn http1_over_tls_keeps_alive_streams_both_ways_and_strips_hop_by_hop_fields() {
    let backend = start_backend("tcp-h1");
    let proxy = Proxy::single_pool("tcp-h1", &[&backend], "");
    let addr = proxy.running.local_addr();
    let expected_alt_svc = format!("h3=\":{}\"; ma=86400", addr.port());
    runtime().block_on(async {
        // Every exchange below runs on this one connection: hyper's sender is bound to it, and
        // fails if the proxy closed it.
        let mut sender = connect_http1(addr, &proxy.certs.ca).await;
        let get = |path: &str| http::Request::get(path.to_string()).header("host", "localhost");

        let small = http1_exchange(&mut sender, get("/bytes/1000"), Upload::None).await;
        assert_eq!(small.status, 200);
        assert_eq!(small.body_len, 1000);
        assert_eq!(small.body_sha256, pattern_sha256(1000));
        assert_eq!(small.headers["x-backend"], "tcp-h1");
        assert_eq!(small.headers["content-length"], "1000");
        assert_eq!(small.headers["alt-svc"], expected_alt_svc.as_str());

        let size: u64 = 100 * 1024 * 1024;
        let large = http1_exchange(&mut sender, get(&format!("/bytes/{size}")), Upload::None).await;
        assert_eq!((large.status, large.body_len), (200, size));
        assert_eq!(large.body_sha256, pattern_sha256(size));

        let post = || http::Request::post("/echo").header("host", "localhost");
        let size: u64 = 50 * 1024 * 1024;
        let echoed = http1_exchange(&mut sender, post(), Upload::Sized(size)).await;
        assert_eq!(echoed.status, 200);
        assert_eq!(echoed.headers["x-echo-method"], "POST");
        assert_eq!(
            (echoed.body_len, echoed.body_sha256),
            (size, pattern_sha256(size))
        );
        // The backend's response has no length, so it reaches the client chunked.
        assert_eq!(echoed.headers["transfer-encoding"], "chunked");

        let size: u64 = 5 * 1024 * 1024 + 123;
        let chunked = http1_exchange(&mut sender, post(), Upload::Chunked(size)).await;
        assert_eq!(chunked.status, 200);
        assert_eq!(
            (chunked.body_len, chunked.body_sha256),
            (size, pattern_sha256(size))
        );

        let trailers = http1_exchange(
            &mut sender,
            get("/trailers").header("te", "trailers"),
            Upload::None,
        )
        .await;
        assert_eq!(trailers.body_sha256, sha256(b"hello"));
        let trailers = trailers.trailers.expect("chunked trailers");
        assert_eq!(trailers["x-trailer-one"], "1");
        assert_eq!(trailers["x-checksum"], "abc");

        let headers = http1_exchange(
            &mut sender,
            get("/headers")
                .header("connection", "keep-alive, x-hop")
                .header("keep-alive", "timeout=5")
                .header("x-hop", "1")
                .header("x-kept", "2"),
            Upload::None,
        )
        .await;
        assert_eq!(headers.status, 200);
        let seen = String::from_utf8(headers.body_start.clone()).unwrap();
        assert!(seen.contains(":authority: localhost\n"), "{seen}");
        assert!(seen.contains(":scheme: https\n"), "{seen}");
        assert!(seen.contains("x-kept: 2\n"), "{seen}");
        assert!(seen.contains("x-forwarded-proto: https\n"), "{seen}");
        assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
        for hop in ["x-hop", "keep-alive", "connection"] {
            assert!(!seen.contains(&format!("\n{hop}:")), "{hop} passed: {seen}");
        }

        let two_hosts = http1_exchange(
            &mut sender,
            get("/bytes/10").header("host", "other.example"),
            Upload::None,
        )
        .await;
        assert_eq!(two_hosts.status, 400);
        assert_eq!(two_hosts.headers["alt-svc"], expected_alt_svc.as_str());

        let after = http1_exchange(&mut sender, get("/bytes/10"), Upload::None).await;
        assert_eq!((after.status, after.body_len), (200, 10));
    });
}

/// Everything the peer sends until it closes the connection, within 30 s.
async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut wire = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut wire))
        .await
        .expect("the proxy answered and closed within 30 s")
        .unwrap();
    wire
}

/// One HTTP/1.1 response read off the wire by [`read_responses`].
struct WireResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Splits `wire` into the HTTP/1.1 responses it holds (bodies by content-length or chunked),
/// so that a test sees exactly what the proxy wrote, in order.
fn read_responses(mut wire: &[u8]) -> Vec<WireResponse> {
    fn line(wire: &mut &[u8]) -> String {
        let end = wire.windows(2).position(|w| w == b"\r\n").expect("CRLF");
        let text = String::from_utf8(wire[..end].to_vec()).unwrap();
        *wire = &wire[end + 2..];
        text
    }
    let mut responses = Vec::new();
    while !wire.is_empty() {
        let end = wire
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of head");
        let head = String::from_utf8(wire[..end].to_vec())
            .unwrap()
            .to_lowercase();
        wire = &wire[end + 4..];
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
        };
        let mut body = Vec::new();
        if status == 100 {
        } else if let Some(length) = field("content-length") {
            let length: usize = length.parse().unwrap();
            body.extend_from_slice(&wire[..length]);
            wire = &wire[length..];
        } else if field("transfer-encoding").as_deref() == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&line(&mut wire), 16).unwrap();
                if size == 0 {
                    while !line(&mut wire).is_empty() {}
                    break;
                }
                body.extend_from_slice(&wire[..size]);
                wire = &wire[size + 2..];
            }
        }
        responses.push(WireResponse { status, head, body });
    }
    responses
}

#[test]
fn http1_pipelined_requests_are_answered_in_order_and_expect_100_continue_is_honoured() {
    let backend = start_backend("tcp-pipe");
    let proxy = Proxy::single_pool("tcp-pipe", &[&backend], "");
    let addr = proxy.running.local_addr();
    runtime().block_on(async {
        // Three requests in one write; the slowest body is asked for first.
        let sizes = [300_000usize, 10, 2000];
        let mut tls = connect_tls(addr, &proxy.certs.ca, &[b"http/1.1"]).await;
        let mut pipelined = String::new();
        for (i, size) in sizes.iter().enumerate() {
            let close = if i == sizes.len() - 1 {
                "connection: close\r\n"
            } else {
                ""
            };
            pipelined.push_str(&format!(
                "GET /bytes/{size} HTTP/1.1\r\nhost: localhost\r\n{close}\r\n"
            ));
        }
        tls.write_all(pipelined.as_bytes()).await.unwrap();
        let wire = read_until_closed(&mut tls).await;
        let responses = read_responses(&wire);
        assert_eq!(responses.len(), 3);
        for (response, size) in responses.iter().zip(sizes) {
            assert_eq!(response.status, 200, "{}", response.head);
            assert_eq!(
                sha256(&response.body),
                pattern_sha256(size as u64),
                "{}",
                response.head
            );
        }
        assert!(
            responses[2].head.contains("\r\nconnection: close"),
            "{}",
            responses[2].head
        );

        // The client waits for `100 Continue` before sending its body.
        let mut tls = connect_tls(addr, &proxy.certs.ca, &[b"http/1.1"]).await;
        tls.write_all(
            b"POST /echo HTTP/1.1\r\nhost: localhost\r\nexpect: 100-continue\r\n\
              content-length: 11\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut interim = Vec::new();
        while !interim.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte))
                .await
                .expect("100 Continue within 10 s")
                .unwrap();
            assert_eq!(n, 1, "closed before 100 Continue: {interim:?}");
            interim.push(byte[0]);
        }
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        tls.write_all(b"hello world").await.unwrap();
        let wire = read_until_closed(&mut tls).await;
        let responses = read_responses(&wire);
        assert_eq!(responses.len(), 1);
        assert_eq!(responses[0].status, 200);
        assert_eq!(responses[0].body, b"hello world");
    });
}

#[test]
fn a_client_without_alpn_is_served_http1() {
    let backend = start_backend("tcp-noalpn");
    let proxy = Proxy::single_pool("tcp-noalpn", &[&backend], "");
    runtime().block_on(async {
        let mut tls = connect_tls(proxy.running.local_addr(), &proxy.certs.ca, &[]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
        tls.write_all(b"GET /bytes/5 HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let wire = read_until_closed(&mut tls).await;
        let responses = read_responses(&wire);
        assert_eq!(responses.len(), 1);
        assert_eq!(responses[0].status, 200);
        assert_eq!(sha256(&responses[0].body), pattern_sha256(5));
    });
}

#[test]
fn reload_keeps_tcp_connections_serving_under_the_new_routes() {
    let main_backend = start_backend("tcp-reload-main");
    let api_backend = start_backend("tcp-reload-api");
    let mut proxy = Proxy::single_pool("tcp-reload", &[&main_backend], "");
    let addr = proxy.running.local_addr();
    let rt = runtime();
    let (h2, mut h1) = rt.block_on(async {
        let h2 = connect_h2(addr, &proxy.certs.ca).await;
        let mut h1 = connect_http1(addr, &proxy.certs.ca).await;
        let before = h2_exchange(&h2, "GET", "/api/x", None).await;
        assert_eq!(before.headers["x-backend"], "tcp-reload-main");
        let request = http::Request::get("/api/x").header("host", "localhost");
        let before = http1_exchange(&mut h1, request, Upload::None).await;
        assert_eq!(before.headers["x-backend"], "tcp-reload-main");
        (h2, h1)
    });
    let text = format!(
        "[listen]\naddress = \"127.0.0.1\"\nport = 0\ntls = {{ cert = {:?}, key = {:?} }}\n\n{}\n{}",
        proxy.certs.cert_chain.display().to_string(),
        proxy.certs.private_key.display().to_string(),
        common::pool("main", "/", &[&main_backend], ""),
        common::pool("api", "/api", &[&api_backend], "")
    );
    let path = proxy.dir.join("reloaded.toml");
    std::fs::write(&path, text).unwrap();
    let config = spooky::config::load(&path).unwrap();
    let needs_restart = proxy
        .running
        .reload(spooky::ProxySettings {
            listen: config.listen_addr(),
            cores: config.cores(),
            plan: config.plan(),
        })
        .unwrap();
    assert!(needs_restart.is_empty(), "{needs_restart:?}");
    rt.block_on(async {
        // The same connections, now routed by the new configuration.
        let routed = async {
            loop {
                let after = h2_exchange(&h2, "GET", "/api/x", None).await;
                if after.headers["x-backend"] == "tcp-reload-api" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), routed)
            .await
            .expect("reload reached the HTTP/2 connection");
        let request = http::Request::get("/api/x").header("host", "localhost");
        let after = http1_exchange(&mut h1, request, Upload::None).await;
        assert_eq!(after.headers["x-backend"], "tcp-reload-api");
        let request = http::Request::get("/bytes/10").header("host", "localhost");
        let after = http1_exchange(&mut h1, request, Upload::None).await;
        assert_eq!(after.headers["x-backend"], "tcp-reload-main");
    });
}

#[test]
fn alt_svc_max_age_is_configurable_and_can_be_switched_off() {
    let backend = start_backend("tcp-altsvc");
    let tuned = Proxy::start(
        "tcp-altsvc-tuned",
        &format!(
            "alt_svc_max_age = 3600\n\n{}",
            common::pool("main", "/", &[&backend], "")
        ),
    );
    let off = Proxy::start(
        "tcp-altsvc-off",
        &format!(
            "alt_svc = false\n\n{}",
            common::pool("main", "/", &[&backend], "")
        ),
    );
    runtime().block_on(async {
        let addr = tuned.running.local_addr();
        let sender = connect_h2(addr, &tuned.certs.ca).await;
        let response = h2_exchange(&sender, "GET", "/bytes/1", None).await;
        let expected = format!("h3=\":{}\"; ma=3600", addr.port());
        assert_eq!(response.headers["alt-svc"], expected.as_str());

        let sender = connect_h2(off.running.local_addr(), &off.certs.ca).await;
        let response = h2_exchange(&sender, "GET", "/bytes/1", None).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.headers.get("alt-svc"), None);
    });
}

#[test]
fn the_redirect_listener_answers_308_to_the_https_url() {
    let backend = start_backend("tcp-redirect");
    let proxy = Proxy::start(
        "tcp-redirect",
        &format!(
            "[listen.redirect]\nport = 0\n\n{}",
            common::pool("main", "/", &[&backend], "")
        ),
    );
    let redirect = proxy.running.redirect_addr().expect("redirect listener");
    let https_port = proxy.running.local_addr().port();
    assert_ne!(redirect.port(), 0);
    runtime().block_on(async {
        let mut plain = tokio::net::TcpStream::connect(redirect).await.unwrap();
        // Keep-alive: two requests on one connection, the second one closing it.
        plain
            .write_all(
                b"GET /a/b?c=d HTTP/1.1\r\nhost: localhost:80\r\n\r\n\
                  POST /form HTTP/1.1\r\nhost: localhost\r\ncontent-length: 3\r\n\
                  connection: close\r\n\r\nx=1",
            )
            .await
            .unwrap();
        let wire = read_until_closed(&mut plain).await;
        let responses = read_responses(&wire);
        assert_eq!(responses.len(), 2);
        let targets = [
            format!("https://localhost:{https_port}/a/b?c=d"),
            format!("https://localhost:{https_port}/form"),
        ];
        for (response, target) in responses.iter().zip(targets) {
            assert_eq!(response.status, 308, "{}", response.head);
            assert!(
                response
                    .head
                    .contains(&format!("\r\nlocation: {target}\r\n")),
                "{}",
                response.head
            );
        }

        let mut plain = tokio::net::TcpStream::connect(redirect).await.unwrap();
        plain.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let wire = read_until_closed(&mut plain).await;
        assert_eq!(read_responses(&wire)[0].status, 400);
    });
    assert_eq!(proxy.running.shard_stats()[0].redirects.get(), 3);
    assert_eq!(backend.stats().requests, 0);
}

#[test]
fn sni_picks_each_names_certificate_on_tcp_and_on_quic() {
    let backend = start_backend("tcp-sni");
    let dir = common::scratch_dir("tcp-sni-certs");
    let alpha = spooky::selfsigned::generate_for(&dir.join("alpha"), &["alpha.example"]).unwrap();
    let beta = spooky::selfsigned::generate_for(&dir.join("beta"), &["beta.example"]).unwrap();
    let proxy = Proxy::start(
        "tcp-sni",
        &format!(
            "[[listen.certificates]]\ncert = {:?}\nkey = {:?}\n\n\
             [[listen.certificates]]\ncert = {:?}\nkey = {:?}\nhosts = [\"beta.example\", \"*.beta.example\"]\n\n{}",
            alpha.cert_chain.display().to_string(),
            alpha.private_key.display().to_string(),
            beta.cert_chain.display().to_string(),
            beta.private_key.display().to_string(),
            common::pool("main", "/", &[&backend], "")
        ),
    );
    let addr = proxy.running.local_addr();
    // Each client trusts only its name's CA: a handshake completes only with that certificate.
    runtime().block_on(async {
        for (name, ca, trusted) in [
            ("alpha.example", &alpha.ca, true),
            ("beta.example", &beta.ca, true),
            ("alpha.example", &beta.ca, false),
            // No SNI entry for localhost: the default certificate (listen.tls).
            ("localhost", &proxy.certs.ca, true),
            ("localhost", &alpha.ca, false),
            // An IP literal sends no SNI at all: the default again.
            ("127.0.0.1", &proxy.certs.ca, true),
        ] {
            let outcome = connect_tls_to(addr, ca, name, &[b"h2"]).await;
            assert_eq!(outcome.is_ok(), trusted, "TCP {name}: {:?}", outcome.err());
        }
    });
    for (name, ca, trusted) in [
        ("alpha.example", &alpha.ca, true),
        ("beta.example", &beta.ca, true),
        ("beta.example", &alpha.ca, false),
        ("localhost", &proxy.certs.ca, true),
    ] {
        let mut options = proxy.client_options();
        options.server_name = name.into();
        options.verify = spooky_bench::client::Verify::Ca(ca.clone());
        options.timeout = Duration::from_secs(5);
        let connected = spooky_bench::client::H3Client::connect(options);
        assert_eq!(
            connected.is_ok(),
            trusted,
            "QUIC {name}: {:?}",
            connected.err()
        );
        if let Ok(mut client) = connected {
            let response = client.request(H3Request::get("/bytes/3")).unwrap();
            assert_eq!(response.status, 200, "QUIC {name}");
        }
    }
}

#[test]
fn reload_swaps_sni_certificates_for_new_handshakes_only() {
    let backend = start_backend("tcp-sni-reload");
    let dir = common::scratch_dir("tcp-sni-reload-certs");
    let old = spooky::selfsigned::generate_for(&dir.join("old"), &["site.example"]).unwrap();
    let new = spooky::selfsigned::generate_for(&dir.join("new"), &["site.example"]).unwrap();
    let entry = |certs: &spooky::selfsigned::GeneratedCerts| {
        format!(
            "[[listen.certificates]]\ncert = {:?}\nkey = {:?}\n\n{}",
            certs.cert_chain.display().to_string(),
            certs.private_key.display().to_string(),
            common::pool("main", "/", &[&backend], "")
        )
    };
    let mut proxy = Proxy::start("tcp-sni-reload", &entry(&old));
    let addr = proxy.running.local_addr();
    let rt = runtime();
    let open = rt.block_on(async {
        let tls = connect_tls_to(addr, &old.ca, "site.example", &[b"h2"])
            .await
            .expect("old certificate before the reload");
        let (sender, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        sender
    });
    let text = format!(
        "[listen]\naddress = \"127.0.0.1\"\nport = 0\ntls = {{ cert = {:?}, key = {:?} }}\n{}",
        proxy.certs.cert_chain.display().to_string(),
        proxy.certs.private_key.display().to_string(),
        entry(&new)
    );
    let path = proxy.dir.join("reloaded.toml");
    std::fs::write(&path, text).unwrap();
    let config = spooky::config::load(&path).unwrap();
    proxy
        .running
        .reload(spooky::ProxySettings {
            listen: config.listen_addr(),
            cores: config.cores(),
            plan: config.plan(),
        })
        .unwrap();
    rt.block_on(async {
        let swapped = async {
            while connect_tls_to(addr, &new.ca, "site.example", &[b"h2"])
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), swapped)
            .await
            .expect("new handshakes get the new certificate");
        assert!(connect_tls_to(addr, &old.ca, "site.example", &[b"h2"])
            .await
            .is_err());
        // The connection opened before the reload still serves.
        let response = h2_exchange(&open, "GET", "/bytes/7", None).await;
        assert_eq!((response.status, response.body_len), (200, 7));
    });
    let mut options = proxy.client_options();
    options.server_name = "site.example".into();
    options.verify = spooky_bench::client::Verify::Ca(new.ca.clone());
    let mut client =
        spooky_bench::client::H3Client::connect(options).expect("QUIC, new certificate");
    assert_eq!(
        client.request(H3Request::get("/bytes/1")).unwrap().status,
        200
    );
}
