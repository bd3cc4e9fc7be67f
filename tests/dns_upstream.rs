//! Backends given by DNS name (`address = "host:port"`): the system resolver on `localhost`, and
//! a resolver the test controls, to see traffic follow a changed answer set within the
//! re-resolution interval, a failing name keep its last answer, and a request in flight on a
//! vanished endpoint finish. Real HTTP/3 client, real proxy, real backends on 127.0.0.1 and
//! 127.0.0.2 (both loopback on Linux), kernel-chosen ports.

mod common;

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, http_get, parse_prometheus, Proxy};
use shards::plan::BackendName;
use spooky::dns::{Resolved, Resolver};
use spooky_bench::backend::{self, pattern_sha256, BackendHandle, BackendOptions};
use spooky_bench::client::{H3Client, Request};

/// Answers what the test last set, for every name, with the TTL it set.
#[derive(Default)]
struct TestResolver {
    answer: Mutex<Option<Resolved>>,
}

impl TestResolver {
    fn set(&self, answer: Option<&[&str]>) {
        self.set_with_ttl(answer, None);
    }

    fn set_with_ttl(&self, answer: Option<&[&str]>, ttl: Option<Duration>) {
        *self.answer.lock().unwrap() = answer.map(|ips| Resolved {
            addresses: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            ttl,
        });
    }
}

impl Resolver for TestResolver {
    fn resolve(&self, _name: &BackendName) -> io::Result<Resolved> {
        self.answer
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such name (test)"))
    }
}

fn backend_at(address: SocketAddr, name: &str) -> BackendHandle {
    backend::start(BackendOptions::new(address, name)).expect("start backend")
}

fn named_upstream(address: &str, interval_ms: u64) -> String {
    named_upstream_with(address, interval_ms, "")
}

fn named_upstream_with(address: &str, interval_ms: u64, settings: &str) -> String {
    format!(
        "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\nresolve_interval_ms = {interval_ms}\n\
         {settings}\n[[upstream.main.backends]]\nid = \"named\"\naddress = \"{address}\"\n"
    )
}

/// Which backend answered a small request.
fn served_by(client: &mut H3Client) -> String {
    let response = client.request(Request::get("/bytes/100")).expect("request");
    assert_eq!(response.status, 200);
    assert_eq!(response.body_sha256, pattern_sha256(100));
    response.header("x-backend").unwrap_or("none").to_string()
}

fn endpoints_gauge(proxy: &Proxy) -> f64 {
    let admin = proxy
        .running
        .start_admin("127.0.0.1:0".parse().unwrap())
        .expect("admin");
    let (status, text) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    parse_prometheus(&text)
        .unwrap()
        .into_iter()
        .find(|s| s.name == "spooky_backend_endpoints" && s.label("backend") == Some("named"))
        .map(|s| s.value)
        .expect("spooky_backend_endpoints for the named backend")
}

#[test]
fn localhost_is_resolved_by_the_system_resolver() {
    let backend = backend_at("127.0.0.1:0".parse().unwrap(), "local");
    let port = backend.addr().port();
    let proxy = Proxy::start(
        "dns-localhost",
        &named_upstream(&format!("localhost:{port}"), 5000),
    );
    let mut client = proxy.client();
    // Where localhost also means ::1, that endpoint refuses the connection and the request is
    // retried on 127.0.0.1.
    for _ in 0..10 {
        assert_eq!(served_by(&mut client), "local");
    }
    let mut expected: Vec<IpAddr> = ("localhost", port)
        .to_socket_addrs()
        .unwrap()
        .map(|a| a.ip())
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(endpoints_gauge(&proxy), expected.len() as f64);
}

#[test]
fn traffic_follows_the_answer_set_and_a_failing_name_keeps_its_last_answer() {
    let first = backend_at("127.0.0.1:0".parse().unwrap(), "first");
    let port = first.addr().port();
    let second = backend_at(SocketAddr::from(([127, 0, 0, 2], port)), "second");
    let resolver = Arc::new(TestResolver::default());
    resolver.set(Some(&["127.0.0.1"]));
    let proxy = Proxy::start_with_resolver(
        "dns-follow",
        &named_upstream(&format!("backends.test:{port}"), 100),
        resolver.clone(),
    );
    let mut client = proxy.client();
    for _ in 0..5 {
        assert_eq!(served_by(&mut client), "first");
    }

    // A slow request on the endpoint about to vanish must still finish there.
    let options = proxy.client_options();
    let in_flight = std::thread::spawn(move || {
        let mut slow = H3Client::connect(options).unwrap();
        let response = slow.request(Request::get("/delay/1500")).unwrap();
        (
            response.status,
            response.header("x-backend").map(str::to_string),
        )
    });
    assert!(eventually(Duration::from_secs(5), || first
        .stats()
        .in_flight
        == 1));
    resolver.set(Some(&["127.0.0.2"]));
    assert!(
        eventually(Duration::from_secs(3), || served_by(&mut client)
            == "second"),
        "traffic did not move to the new answer"
    );
    let first_served = first.stats().requests;
    for _ in 0..5 {
        assert_eq!(served_by(&mut client), "second");
    }
    assert_eq!(
        first.stats().requests,
        first_served,
        "the vanished endpoint got new requests"
    );
    assert_eq!(in_flight.join().unwrap(), (200, Some("first".into())));

    // The name stops resolving: the last good answer stays in use.
    resolver.set(None);
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        assert_eq!(served_by(&mut client), "second");
    }
    assert_eq!(endpoints_gauge(&proxy), 1.0);

    // Both addresses: both endpoints take requests (round robin, equal split weights).
    resolver.set(Some(&["127.0.0.1", "127.0.0.2"]));
    assert!(eventually(Duration::from_secs(3), || {
        endpoints_gauge(&proxy) == 2.0
    }));
    // The gauge shows what the coordinator published; the shard applies it at its next tick.
    assert!(eventually(Duration::from_secs(3), || {
        served_by(&mut client) == "first"
    }));
    let seen: Vec<String> = (0..10).map(|_| served_by(&mut client)).collect();
    assert_eq!(seen.iter().filter(|b| *b == "first").count(), 5, "{seen:?}");
    assert_eq!(
        seen.iter().filter(|b| *b == "second").count(),
        5,
        "{seen:?}"
    );
    assert!(second.stats().requests >= 16);
}

#[test]
fn a_name_that_does_not_resolve_at_start_answers_503_until_it_does() {
    let backend = backend_at("127.0.0.1:0".parse().unwrap(), "late");
    let resolver = Arc::new(TestResolver::default());
    let proxy = Proxy::start_with_resolver(
        "dns-late",
        &named_upstream(&format!("late.test:{}", backend.addr().port()), 100),
        resolver.clone(),
    );
    let mut client = proxy.client();
    let response = client.request(Request::get("/bytes/100")).unwrap();
    assert_eq!(response.status, 503);
    resolver.set(Some(&["127.0.0.1"]));
    assert!(
        eventually(Duration::from_secs(3), || {
            client.request(Request::get("/bytes/100")).unwrap().status == 200
        }),
        "the name resolved but no traffic reached it"
    );
    assert_eq!(served_by(&mut client), "late");
}

#[test]
fn a_named_tls_backend_is_verified_and_greeted_by_its_host_name() {
    let dir = common::scratch_dir("dns-tls");
    let certs = spooky::selfsigned::generate_for(&dir, &["backend.test"]).unwrap();
    let backend = backend::start(BackendOptions {
        tls: Some(backend::BackendTlsOptions {
            cert: certs.cert_chain.clone(),
            key: certs.private_key.clone(),
            client_ca: None,
        }),
        ..BackendOptions::new("127.0.0.1:0".parse().unwrap(), "named-tls")
    })
    .unwrap();
    let resolver = Arc::new(TestResolver::default());
    resolver.set(Some(&["127.0.0.1"]));
    let config = named_upstream_with(
        &format!("backend.test:{}", backend.addr().port()),
        1000,
        &format!(
            "protocol = \"h2\"\ntls = {{ ca = \"{}\" }}",
            certs.ca.display()
        ),
    );
    let proxy = Proxy::start_with_resolver("dns-tls", &config, resolver);
    assert_eq!(served_by(&mut proxy.client()), "named-tls");
    assert_eq!(
        backend.tls_handshakes(),
        [backend::TlsHandshake {
            server_name: Some("backend.test".into()),
            client_certificate: false,
        }]
    );
}

#[test]
fn a_short_ttl_brings_the_next_lookup_forward_and_without_one_the_interval_holds() {
    let first = backend_at("127.0.0.1:0".parse().unwrap(), "first");
    let port = first.addr().port();
    let _second = backend_at(SocketAddr::from(([127, 0, 0, 2], port)), "second");
    let resolver = Arc::new(TestResolver::default());
    resolver.set(Some(&["127.0.0.1"]));
    // A minute between lookups: only a TTL can make the change show sooner.
    let proxy = Proxy::start_with_resolver(
        "dns-ttl",
        &named_upstream(&format!("ttl.test:{port}"), 60_000),
        resolver.clone(),
    );
    let mut client = proxy.client();
    assert_eq!(served_by(&mut client), "first");
    resolver.set(Some(&["127.0.0.2"]));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        served_by(&mut client),
        "first",
        "looked up again before the interval"
    );

    // Start again with an answer that lives 100 ms: the next lookup comes after a second (the
    // floor), not after the minute.
    resolver.set_with_ttl(Some(&["127.0.0.1"]), Some(Duration::from_millis(100)));
    let proxy = Proxy::start_with_resolver(
        "dns-ttl-short",
        &named_upstream(&format!("ttl.test:{port}"), 60_000),
        resolver.clone(),
    );
    let mut client = proxy.client();
    assert_eq!(served_by(&mut client), "first");
    resolver.set_with_ttl(Some(&["127.0.0.2"]), Some(Duration::from_millis(100)));
    assert!(
        eventually(Duration::from_secs(4), || served_by(&mut client)
            == "second"),
        "the TTL did not bring the lookup forward"
    );
}

#[test]
fn the_dns_resolver_answers_localhost_from_the_system_configuration_with_a_ttl() {
    let resolver = spooky::dns::DnsResolver::from_system().expect("system DNS configuration");
    let name = BackendName {
        host: "localhost".into(),
        port: 80,
    };
    let resolved = resolver.resolve(&name).expect("localhost resolves");
    assert!(
        resolved.addresses.contains(&"127.0.0.1".parse().unwrap()),
        "{resolved:?}"
    );
    assert!(resolved.ttl.is_some(), "{resolved:?}");
}
