//! A real browser against the real proxy: Debian's Chromium, headless, driven through
//! ChromeDriver, trusting the test CA's leaf by its SPKI pin. Spooky's own per-protocol metrics
//! and Chromium's net log both say which protocol carried what.
//!
//! Without any QUIC-forcing flag, the first visit goes over TCP+TLS and the `Alt-Svc` header of
//! its response makes a later visit open QUIC to the advertised port. Chromium then completes
//! that QUIC handshake only for certificates from a publicly trusted root
//! (`ERR_QUIC_CERT_ROOT_NOT_KNOWN` in `proof_verifier_chromium.cc`, bypassed only for origins
//! named by `--origin-to-force-quic-on`), which no test CA is; so discovery is checked up to
//! that handshake, and HTTP/3 itself with the forcing flag in a second test.
//!
//! `scripts/setup.sh --with-test-tools` installs `chromium` and `chromium-driver`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, free_port, http_get, parse_prometheus, pool, start_backend, Proxy};
use serde_json::{json, Value};

/// A ChromeDriver process on a local port, killed when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("chromedriver")
            .arg(format!("--port={}", addr.port()))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/setup.sh --with-test-tools installs it)");
        let driver = Driver { child, addr };
        assert!(
            eventually(Duration::from_secs(20), || driver
                .call("GET", "/status", None)
                .is_ok_and(|v| v["value"]["ready"] == true)),
            "chromedriver did not become ready"
        );
        driver
    }

    /// One WebDriver command (W3C WebDriver, JSON over HTTP/1.1).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> std::io::Result<Value> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        // ChromeDriver keeps the connection open whatever the request says: read by length.
        let mut response = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::Error::other("chromedriver closed mid-response"));
            }
            response.extend_from_slice(&buf[..n]);
            let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&response[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("no content-length: {head}")))?;
            if response.len() >= end + 4 + length {
                let body = &response[end + 4..end + 4 + length];
                return serde_json::from_slice(body).map_err(std::io::Error::other);
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Base64 (RFC 4648 §4, padded), for Chromium's SPKI pin list.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let bytes = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc_4648_vectors() {
    for (input, expected) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), expected);
    }
}

/// Spooky's counter `name` summed over shards, filtered by `protocol` when given.
fn metric(admin: SocketAddr, name: &str, protocol: Option<&str>) -> f64 {
    let (status, body) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    parse_prometheus(&body)
        .unwrap()
        .iter()
        .filter(|s| s.name == name && protocol.is_none_or(|p| s.label("protocol") == Some(p)))
        .map(|s| s.value)
        .sum()
}

fn requests(admin: SocketAddr, protocol: &str) -> f64 {
    metric(admin, "spooky_requests_total", Some(protocol))
}

/// A headless Chromium session with its own profile and net log, against one proxy.
struct Browser {
    driver: Driver,
    session: String,
    net_log: std::path::PathBuf,
    port: u16,
}

impl Browser {
    fn start(proxy: &Proxy, extra_args: &[String]) -> Browser {
        let port = proxy.running.local_addr().port();
        let key = std::fs::read_to_string(&proxy.certs.private_key).unwrap();
        let spki = rcgen::KeyPair::from_pem(&key).unwrap().public_key_der();
        let pin = base64(&common::sha256(&spki));
        let net_log = proxy.dir.join("netlog.json");
        let driver = Driver::start(&proxy.dir.join("chromedriver.log"));
        let mut args = vec![
            "--headless=new".to_string(),
            // The sandbox needs user namespaces, which a root CI container does not give.
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--no-first-run".into(),
            format!("--user-data-dir={}", proxy.dir.join("profile").display()),
            format!("--ignore-certificate-errors-spki-list={pin}"),
            // localhost resolves to ::1 first, where nothing listens.
            "--host-resolver-rules=MAP localhost 127.0.0.1".into(),
            format!("--log-net-log={}", net_log.display()),
        ];
        args.extend_from_slice(extra_args);
        let session = driver
            .call(
                "POST",
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
                }}})),
            )
            .unwrap();
        let session = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_string();
        Browser {
            driver,
            session,
            net_log,
            port,
        }
    }

    /// Navigates to `path` and returns the page's text.
    fn visit(&self, path: &str) -> String {
        let url = format!("https://localhost:{}{path}", self.port);
        let done = self
            .driver
            .call(
                "POST",
                &format!("/session/{}/url", self.session),
                Some(json!({ "url": url })),
            )
            .unwrap();
        assert!(
            done["value"].is_null(),
            "navigation to {url} failed: {done}"
        );
        let text = self
            .driver
            .call(
                "POST",
                &format!("/session/{}/execute/sync", self.session),
                Some(json!({"script": "return document.body.innerText", "args": []})),
            )
            .unwrap();
        text["value"].as_str().unwrap_or_default().to_string()
    }

    /// Ends the session (Chromium exits and completes its net log) and returns the log's
    /// events with their type names.
    fn finish(self) -> Vec<(String, Value)> {
        let _ = self
            .driver
            .call("DELETE", &format!("/session/{}", self.session), None);
        drop(self.driver);
        assert!(
            eventually(Duration::from_secs(10), || std::fs::read_to_string(
                &self.net_log
            )
            .is_ok_and(|t| serde_json::from_str::<Value>(&t).is_ok())),
            "net log incomplete"
        );
        let log: Value =
            serde_json::from_str(&std::fs::read_to_string(&self.net_log).unwrap()).unwrap();
        let names: std::collections::HashMap<u64, String> = log["constants"]["logEventTypes"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, id)| (id.as_u64().unwrap(), name.clone()))
            .collect();
        log["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let name = e["type"].as_u64().and_then(|t| names.get(&t)).cloned();
                (name.unwrap_or_default(), e.clone())
            })
            .collect()
    }
}

/// The net log's QUIC sessions to `localhost:port`.
fn quic_sessions_to(events: &[(String, Value)], port: u16) -> usize {
    events
        .iter()
        .filter(|(name, e)| {
            name == "QUIC_SESSION"
                && e["phase"] == 1
                && e["params"]["host"] == "localhost"
                && e["params"]["port"] == port
        })
        .count()
}

/// A proxy with its backend and admin endpoint; the backend lives as long as the returned handle.
fn proxy_for_browser(label: &str) -> (spooky_bench::backend::BackendHandle, Proxy, SocketAddr) {
    let backend = start_backend(label);
    // A short idle timeout closes the browser's TCP connection soon after a visit, so that a
    // later visit opens a new connection and can take the advertised route.
    let proxy = Proxy::start(
        label,
        &format!(
            "[quic]\nidle_timeout_ms = 1000\n\n{}",
            pool("main", "/", &[&backend], "")
        ),
    );
    let admin = proxy
        .running
        .start_admin("127.0.0.1:0".parse().unwrap())
        .unwrap();
    (backend, proxy, admin)
}

#[test]
fn chromium_arrives_over_tcp_and_follows_alt_svc_to_the_quic_port() {
    let (_backend, proxy, admin) = proxy_for_browser("browser-altsvc");
    let browser = Browser::start(&proxy, &[]);
    let port = browser.port;

    let page = browser.visit("/headers?visit=0");
    assert!(page.contains(":path: /headers?visit=0"), "{page}");
    assert!(page.contains("x-forwarded-proto: https"), "{page}");
    assert_eq!(requests(admin, "h3"), 0.0, "the first visit knew of HTTP/3");
    assert!(
        requests(admin, "h2") >= 1.0,
        "the first visit did not use HTTP/2"
    );

    // The next visit, on a new connection, tries the advertised QUIC port.
    assert!(
        eventually(Duration::from_secs(10), || metric(
            admin,
            "spooky_tcp_connections_active",
            None
        ) == 0.0),
        "the browser's TCP connection stayed open"
    );
    let page = browser.visit("/headers?visit=1");
    assert!(page.contains(":path: /headers?visit=1"), "{page}");
    assert!(
        metric(admin, "spooky_quic_connections_accepted_total", None) >= 1.0,
        "the browser never opened QUIC to the advertised port"
    );
    let h3 = requests(admin, "h3");
    let events = browser.finish();
    assert!(
        events.iter().any(
            |(name, e)| name == "HTTP_STREAM_JOB_CONTROLLER_ALT_SVC_FOUND"
                && e["params"]["alt_svc"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&format!("quic localhost:{port},")))
        ),
        "Chromium did not record our Alt-Svc"
    );
    assert!(
        quic_sessions_to(&events, port) >= 1,
        "no QUIC session in the net log"
    );
    if h3 == 0.0 {
        // The visit fell back to TCP: the only acceptable reason is Chromium's refusal of a
        // test root for QUIC, which it reports as an unknown certificate.
        let refused = events.iter().any(|(name, e)| {
            name == "QUIC_SESSION_CLOSED"
                && e["params"]["details"]
                    .as_str()
                    .is_some_and(|d| d.contains("certificate unknown"))
        });
        assert!(refused, "QUIC failed for another reason than the test root");
    }
}

#[test]
fn chromium_speaks_http3_to_spooky() {
    let (_backend, proxy, admin) = proxy_for_browser("browser-h3");
    let port = proxy.running.local_addr().port();
    // The one flag that lets Chromium accept a test root over QUIC (see the module comment).
    let browser = Browser::start(
        &proxy,
        &[format!("--origin-to-force-quic-on=localhost:{port}")],
    );
    let page = browser.visit("/headers?over=h3");
    assert!(page.contains(":path: /headers?over=h3"), "{page}");
    assert!(page.contains("x-forwarded-proto: https"), "{page}");
    assert!(requests(admin, "h3") >= 1.0, "no request over HTTP/3");
    assert_eq!(requests(admin, "h2") + requests(admin, "http/1.1"), 0.0);
    let events = browser.finish();
    assert!(
        quic_sessions_to(&events, port) >= 1,
        "no QUIC session in the net log"
    );
}
