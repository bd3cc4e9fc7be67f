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
