//! The load generator's HTTP/3 side against the real proxy and backend: exact request and byte
//! counts, handshake-only runs, and idle connections held open.

mod common;

use std::time::Duration;

use common::{pool, start_backend, Proxy};
use spooky_bench::client::Verify;
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
