//! WebSocket through Spooky's TCP listener: a real WebSocket client (the Python `websockets`
//! library, wss:// with HTTP/1.1 Upgrade over TLS) and a real WebSocket server behind Spooky on
//! an HTTP/1.1 upstream. 1 MB each way, a refused upgrade passed on, the tunnel counted in
//! metrics and closed after the idle timeout.

mod common;

use std::process::Command;
use std::time::Duration;

use common::python::{python, PythonServer};
use common::tcp::{connect_tls, runtime};
use common::{eventually, http_get, parse_prometheus, Proxy};
use serde_json::Value;

fn ws_proxy(label: &str, backend: std::net::SocketAddr, settings: &str) -> Proxy {
    Proxy::start(
        label,
        &format!(
            "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\nprotocol = \"http/1.1\"\n{settings}\n\
             [[upstream.main.backends]]\nid = \"ws\"\naddress = \"{backend}\"\n"
        ),
    )
}

fn ws_client(proxy: &Proxy, path: &str, messages: u32, size: u64) -> Value {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/python/ws_client.py");
    let url = format!(
        "wss://127.0.0.1:{}{path}",
        proxy.running.local_addr().port()
    );
    let output = Command::new(python())
        .arg(script)
        .arg(url)
        .arg(&proxy.certs.ca)
        .arg(messages.to_string())
        .arg(size.to_string())
        .output()
        .expect("run the WebSocket client");
    assert!(
        output.status.success(),
        "WebSocket client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn metric(proxy: &Proxy, name: &str) -> f64 {
    let admin = proxy
        .running
        .start_admin("127.0.0.1:0".parse().unwrap())
        .expect("admin");
    let (_, text) = http_get(admin, "/metrics").unwrap();
    parse_prometheus(&text)
        .unwrap()
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[test]
fn a_websocket_client_echoes_a_megabyte_each_way_through_an_http1_upgrade() {
    let server = PythonServer::start("ws_backend.py");
    let proxy = ws_proxy("ws-echo", server.addr, "");
    let result = ws_client(&proxy, "/echo", 4, 1024 * 1024);
    assert_eq!(result["status"], 101, "{result}");
    assert_eq!(result["echoed"], 4);
    assert_eq!(result["intact"], true);
    assert_eq!(result["text"], "hello through spooky");
    assert_eq!(metric(&proxy, "spooky_websocket_tunnels_total"), 1.0);
    assert!(
        eventually(Duration::from_secs(5), || {
            metric(&proxy, "spooky_websocket_tunnels_active") == 0.0
        }),
        "the tunnel outlived its client"
    );
}

#[test]
fn a_refused_upgrade_reaches_the_client_as_the_backend_answered() {
    let server = PythonServer::start("ws_backend.py");
    let proxy = ws_proxy("ws-refuse", server.addr, "");
    let result = ws_client(&proxy, "/refuse", 1, 10);
    assert_eq!(result["status"], 403, "{result}");
    assert_eq!(result["body"], "not here");
    assert_eq!(metric(&proxy, "spooky_websocket_tunnels_total"), 0.0);
}

#[test]
fn an_idle_tunnel_is_closed_after_the_body_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = PythonServer::start("ws_backend.py");
    let proxy = ws_proxy("ws-idle", server.addr, "timeouts = { body_idle_ms = 300 }");
    runtime().block_on(async {
        let mut tls =
            connect_tls(proxy.running.local_addr(), &proxy.certs.ca, &[b"http/1.1"]).await;
        // RFC 6455 §1.3's sample key; the server's answer must be the matching accept value.
        tls.write_all(
            b"GET /echo HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\n\
              upgrade: websocket\r\nsec-websocket-version: 13\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            assert_eq!(
                tls.read(&mut byte).await.unwrap(),
                1,
                "closed during the 101"
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        assert!(head.contains("upgrade: websocket"), "{head}");
        let idle_from = std::time::Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the idle tunnel was not closed");
        assert!(idle_from.elapsed() >= Duration::from_millis(250));
    });
    assert!(eventually(Duration::from_secs(5), || {
        metric(&proxy, "spooky_websocket_tunnels_active") == 0.0
    }));
}

/// A client-to-server WebSocket frame (RFC 6455 §5.2): FIN set, masked.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Server-to-client frames (unmasked), as (opcode, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        assert_eq!(bytes[1] & 0x80, 0, "a server frame must not be masked");
        let (len, header) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        out.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    assert!(bytes.is_empty(), "{} stray bytes", bytes.len());
    out
}

#[test]
fn websocket_over_http3_extended_connect_echoes_a_megabyte_each_way() {
    use spooky_bench::client::{Body, Request};
    let server = PythonServer::start("ws_backend.py");
    let proxy = ws_proxy("ws-h3", server.addr, "");
    let payload: Vec<u8> = (0..1024 * 1024)
        .map(spooky_bench::backend::pattern_byte)
        .collect();
    let mut body = masked_frame(0x2, &payload);
    body.extend(masked_frame(0x1, b"hello over h3"));
    let mut client = proxy.client();
    let response = client
        .request(
            // The server closes after two echoes: the client's request body cannot wait for
            // them before a Close frame of its own, which would make the server drop them.
            Request::new("CONNECT", "/echo?close_after=2")
                .protocol("websocket")
                .header("sec-websocket-version", "13")
                .body(Body::Bytes(body)),
        )
        .unwrap();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.header("sec-websocket-accept"), None);
    let echoed = frames(&response.body);
    assert_eq!(
        echoed.len(),
        3,
        "{:?}",
        echoed
            .iter()
            .map(|f| (
                f.0,
                f.1.len().min(40),
                String::from_utf8_lossy(&f.1[..f.1.len().min(40)]).into_owned()
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(echoed[0].0, 0x2);
    assert!(
        echoed[0].1 == payload,
        "the binary message came back changed"
    );
    assert_eq!(echoed[1], (0x1, b"hello over h3".to_vec()));
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"enough");
    assert_eq!(echoed[2], (0x8, close));
    assert_eq!(metric(&proxy, "spooky_websocket_tunnels_total"), 1.0);
    assert!(eventually(Duration::from_secs(5), || {
        metric(&proxy, "spooky_websocket_tunnels_active") == 0.0
    }));
}

#[test]
fn websocket_over_http2_extended_connect_echoes_a_megabyte_each_way() {
    use bytes::Bytes;
    use common::tcp::connect_h2;
    let server = PythonServer::start("ws_backend.py");
    let proxy = ws_proxy("ws-h2", server.addr, "");
    let payload: Vec<u8> = (0..1024 * 1024)
        .map(spooky_bench::backend::pattern_byte)
        .collect();
    let echoed = runtime().block_on(async {
        let mut sender = connect_h2(proxy.running.local_addr(), &proxy.certs.ca).await;
        // The server's SETTINGS_ENABLE_CONNECT_PROTOCOL arrives with its first SETTINGS.
        sender = sender.ready().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !sender.is_extended_connect_protocol_enabled() {
            assert!(
                std::time::Instant::now() < deadline,
                "no SETTINGS_ENABLE_CONNECT_PROTOCOL"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut request = http::Request::builder()
            .method("CONNECT")
            .uri("https://localhost/echo")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
        let (response, mut upload) = sender.send_request(request, false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        // Interleaved, as a real client: each message, then its echo.
        let mut received = Vec::new();
        let messages = [
            masked_frame(0x2, &payload),
            masked_frame(0x1, b"hello over h2"),
        ];
        for (sent, message) in messages.into_iter().enumerate() {
            upload.send_data(Bytes::from(message), false).unwrap();
            // A frame may arrive in pieces: count only whole ones.
            while !(whole_frames(&received) && frames(&received).len() > sent) {
                let chunk = body.data().await.expect("echo").unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                received.extend_from_slice(&chunk);
            }
        }
        upload
            .send_data(Bytes::from(masked_frame(0x8, &1000u16.to_be_bytes())), true)
            .unwrap();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            received.extend_from_slice(&chunk);
        }
        frames(&received)
    });
    assert_eq!(echoed.len(), 3);
    assert_eq!(echoed[0].0, 0x2);
    assert!(
        echoed[0].1 == payload,
        "the binary message came back changed"
    );
    assert_eq!(echoed[1], (0x1, b"hello over h2".to_vec()));
    assert_eq!(echoed[2], (0x8, 1000u16.to_be_bytes().to_vec()));
    assert_eq!(metric(&proxy, "spooky_websocket_tunnels_total"), 1.0);
}

/// Whether `bytes` ends on a frame boundary.
fn whole_frames(mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        if bytes.len() < 2 {
            return false;
        }
        let (len, header) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return false,
            n => (n as usize, 2),
        };
        if bytes.len() < header + len {
            return false;
        }
        bytes = &bytes[header + len..];
    }
    true
}
