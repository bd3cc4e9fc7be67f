//! Spooky facing strangers: address validation with Retry, handshake floods, and garbage. Every
//! attack here is real traffic on loopback: ClientHello Initials from fresh source ports, random
//! datagrams of each QUIC header shape, and real clients beside them.

mod common;

use std::time::{Duration, Instant};

use common::process::SpookyProcess;
use common::{eventually, free_port, metric_sum, rss_bytes, sha256, start_backend, Proxy};
use spooky_bench::client::{H3Client, Request};
use spooky_bench::flood;

const MB: f64 = 1024.0 * 1024.0;

#[test]
fn a_real_client_completes_through_retry_always() {
    let backend = start_backend("retry-always");
    let proxy = Proxy::single_pool("retry-always", &[&backend], "[quic]\nretry = \"always\"\n");
    let mut client = proxy.client();
    let response = client.request(Request::get("/bytes/1000")).unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 1000);
    let direct = sha256(&response.body);
    assert_eq!(
        sha256(&client.request(Request::get("/bytes/1000")).unwrap().body),
        direct
    );
    let stats = &proxy.running.shard_stats()[0];
    assert!(stats.retries_sent.get() >= 1, "the client was sent a Retry");
    assert_eq!(stats.handshakes_completed.get(), 1);
    assert_eq!(stats.refusals.invalid_token.get(), 0);
}

#[test]
fn a_handshake_flood_stays_bounded_and_a_real_client_gets_through() {
    let backend = start_backend("flood");
    let port = free_port();
    let body = format!(
        "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\n\n[[upstream.main.backends]]\n\
         id = \"b\"\naddress = \"{}\"\n",
        backend.addr()
    );
    let spooky = SpookyProcess::start("flood", port, &body);
    let pid = spooky.child.id();
    // A first request warms the process (pools, TLS tables) so that growth is the flood's.
    let mut warm = H3Client::connect(spooky.client_options(Duration::from_secs(10))).unwrap();
    assert_eq!(warm.request(Request::get("/bytes/10")).unwrap().status, 200);
    drop(warm);
    let start_rss = rss_bytes(pid);

    let server = spooky.listen;
    let flooder = std::thread::spawn(move || flood::initials(server, 20_000).unwrap());
    // Once the flood is under way, a real client connects and asks.
    assert!(eventually(Duration::from_secs(20), || metric_sum(
        spooky.admin,
        "spooky_quic_retries_sent_total",
        &[]
    ) >= 1000.0));
    let began = Instant::now();
    let mut client = H3Client::connect(spooky.client_options(Duration::from_secs(5))).unwrap();
    let response = client.request(Request::get("/bytes/1000")).unwrap();
    let legitimate = began.elapsed();
    assert_eq!(response.status, 200);
    assert_eq!(response.body.len(), 1000);

    let mut peak_rss = start_rss;
    while !flooder.is_finished() {
        peak_rss = peak_rss.max(rss_bytes(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = flooder.join().unwrap();
    peak_rss = peak_rss.max(rss_bytes(pid));
    assert!(sent.datagrams >= 20_000);
    let received = metric_sum(
        spooky.admin,
        "spooky_quic_unvalidated_bytes_total",
        &[("direction", "received")],
    );
    let sent_back = metric_sum(
        spooky.admin,
        "spooky_quic_unvalidated_bytes_total",
        &[("direction", "sent")],
    );
    let retries = metric_sum(spooky.admin, "spooky_quic_retries_sent_total", &[]);
    eprintln!(
        "flood: {} datagrams; legitimate request in {legitimate:?}; RSS {:.1} MB -> peak {:.1} MB; \
         {retries} Retries; unvalidated bytes in {received}, out {sent_back}",
        sent.datagrams,
        start_rss as f64 / MB,
        peak_rss as f64 / MB,
    );
    assert!(
        legitimate < Duration::from_millis(100),
        "took {legitimate:?}"
    );
    assert!(
        peak_rss < start_rss + 20 * 1024 * 1024,
        "RSS grew from {:.1} MB to {:.1} MB",
        start_rss as f64 / MB,
        peak_rss as f64 / MB
    );
    assert!(received > 0.0);
    assert!(
        sent_back <= 3.0 * received,
        "amplification: {sent_back} out for {received} in"
    );
    assert!(
        retries > 10_000.0,
        "beyond retry_above, new clients get a Retry"
    );

    // The half-open connections end at the handshake deadline; memory goes back with them.
    assert!(eventually(Duration::from_secs(20), || metric_sum(
        spooky.admin,
        "spooky_quic_handshakes_active",
        &[]
    ) == 0.0));
    let settled = eventually(Duration::from_secs(30), || {
        rss_bytes(pid) < start_rss + 10 * 1024 * 1024
    });
    assert!(
        settled,
        "RSS {:.1} MB, started at {:.1} MB",
        rss_bytes(pid) as f64 / MB,
        start_rss as f64 / MB
    );
    assert!(metric_sum(spooky.admin, "spooky_quic_handshake_timeouts_total", &[]) >= 1.0);
}
