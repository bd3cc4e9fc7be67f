//! The load generator's HTTP/3 side against the real proxy and backend: exact request and byte
//! counts, handshake-only runs, and idle connections held open.

mod common;

use std::time::Duration;

use common::{pool, start_backend, Proxy};
use spooky_bench::client::{H3Client, Request, Verify};
use spooky_bench::load::{self, LoadOptions};

fn options(proxy: &Proxy, path: &str) -> LoadOptions {
    let mut options = LoadOptions::new(&format!(
        "https://localhost:{}{path}",
        proxy.running.local_addr().port()
    ));
    options.verify = Verify::Ca(proxy.certs.ca.clone());
    options.threads = 2;
    options
}

#[test]
fn http3_load_through_the_proxy_counts_exactly() {
    let backend = start_backend("load");
    let proxy = Proxy::start(
        "load",
        &format!(
            "[runtime]\ncores = [0, 1]\n\n{}",
            pool("main", "/", &[&backend], "")
        ),
    );
    let mut run = options(&proxy, "/bytes/1024");
    run.connections = 4;
    run.streams = 8;
    run.requests = Some(300);
    let report = load::run(&run).unwrap();
    assert_eq!(report.requests_completed, 300);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.bytes_received, 300 * 1024);
    assert_eq!(backend.stats().requests, 300);

    let mut handshakes = options(&proxy, "/");
    handshakes.handshake_only = true;
    handshakes.connections = 4;
    handshakes.requests = Some(20);
    let report = load::run(&handshakes).unwrap();
    assert!(report.handshakes >= 20, "{report:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    let mut idle = options(&proxy, "/");
    idle.connections = 50;
    idle.idle_hold = Some(Duration::from_millis(200));
    let report = load::run(&idle).unwrap();
    assert_eq!(report.connections_established, 50);
}

/// An IP-literal URL is verified against the certificate's IP addresses (and sent without SNI,
/// RFC 6066 §3): the generated leaf names 127.0.0.1, so `get` and `load` complete; a name the
/// certificate does not hold is refused after the handshake.
#[test]
fn ip_literal_urls_verify_against_the_certificates_ip_addresses() {
    let backend = start_backend("load-ip");
    let proxy = Proxy::start("load-ip", &pool("main", "/", &[&backend], ""));
    let port = proxy.running.local_addr().port();

    let mut run = LoadOptions::new(&format!("https://127.0.0.1:{port}/bytes/1024"));
    run.verify = Verify::Ca(proxy.certs.ca.clone());
    run.connections = 2;
    run.streams = 4;
    run.requests = Some(40);
    let report = load::run(&run).unwrap();
    assert_eq!(report.requests_completed, 40);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.bytes_received, 40 * 1024);

    let mut options = proxy.client_options();
    options.server_name = "127.0.0.1".into();
    let mut client = H3Client::connect(options.clone()).expect("IP-literal handshake");
    let response = client
        .request(Request::new("GET", "/bytes/10"))
        .expect("request over an IP-literal connection");
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 10);

    options.server_name = "127.0.0.2".into();
    let refused = H3Client::connect(options)
        .err()
        .expect("a name the certificate lacks");
    assert!(
        refused.to_string().contains("not valid for 127.0.0.2"),
        "{refused}"
    );
}
