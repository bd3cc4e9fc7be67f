//! The load generator against the real HTTP/2 backend over TCP: exact counts in closed and open
//! loop, uploads, and errors counted by kind.

use std::time::Duration;

use spooky_bench::backend::{self, BackendOptions};
use spooky_bench::load::{self, LoadOptions};

fn backend_url(path: &str) -> (backend::BackendHandle, String) {
    let handle =
        backend::start(BackendOptions::new("127.0.0.1:0".parse().unwrap(), "load")).unwrap();
    let url = format!("http://{}{path}", handle.addr());
    (handle, url)
}

#[test]
fn closed_loop_completes_exactly_the_requests_asked_for() {
    let (backend, url) = backend_url("/bytes/1000");
    let mut options = LoadOptions::new(&url);
    options.connections = 2;
    options.streams = 4;
    options.threads = 2;
    options.requests = Some(200);
    let report = load::run(&options).unwrap();
    assert_eq!(report.requests_completed, 200);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.bytes_received, 200 * 1000);
    assert_eq!(backend.stats().requests, 200);
    assert!(report.latency_us.p50 > 0.0 && report.latency_us.max >= report.latency_us.p99);
}

#[test]
fn open_loop_sends_every_scheduled_request() {
    let (_backend, url) = backend_url("/bytes/10");
    let mut options = LoadOptions::new(&url);
    options.connections = 2;
    options.streams = 2;
    options.threads = 1;
    options.rate = Some(500.0);
    options.requests = Some(50);
    let report = load::run(&options).unwrap();
    assert_eq!(report.requests_completed, 50);
    assert!(report.offered_rate.is_some());
}

#[test]
fn uploads_are_counted_and_errors_sorted_by_kind() {
    let (_backend, url) = backend_url("/bytes/0");
    let mut options = LoadOptions::new(&url);
    options.method = "POST".into();
    options.body_size = 3 * 1024 * 1024 + 7;
    options.requests = Some(3);
    let report = load::run(&options).unwrap();
    assert_eq!(report.requests_completed, 3);
    assert_eq!(report.bytes_sent, 3 * (3 * 1024 * 1024 + 7));

    let (_backend, url) = backend_url("/status/503");
    let mut options = LoadOptions::new(&url);
    options.requests = Some(5);
    options.request_timeout = Duration::from_secs(10);
    let report = load::run(&options).unwrap();
    assert_eq!(report.requests_completed, 0);
    assert_eq!(report.errors.get("status_5xx"), Some(&5));
}

#[test]
fn contradictory_options_are_refused() {
    let mut options = LoadOptions::new("http://127.0.0.1:9/");
    assert!(load::run(&options)
        .unwrap_err()
        .to_string()
        .contains("exactly one of"));
    options.requests = Some(1);
    options.handshake_only = true;
    assert!(load::run(&options)
        .unwrap_err()
        .to_string()
        .contains("https://"));
}
