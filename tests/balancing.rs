//! Load balancing, health and retries, end to end: real HTTP/3 client, real proxy, real HTTP/2
//! backends on 127.0.0.1.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, start_backend, Proxy};
use spooky_bench::backend::BackendHandle;
use spooky_bench::client::{Body, ClientError, Request};

fn weighted_pool(kind: &str, backends: &[(&BackendHandle, u32)], extra: &str) -> String {
    let mut text = format!(
        "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\nload_balancing = {{ type = \"{kind}\" }}\n{extra}\n"
    );
    for (i, (backend, weight)) in backends.iter().enumerate() {
        text.push_str(&format!(
            "[[upstream.main.backends]]\nid = \"b{i}\"\naddress = \"{}\"\nweight = {weight}\n",
            backend.addr()
        ));
    }
    text
}

fn shares_follow_weights(kind: &str) {
    let backends: Vec<BackendHandle> = (0..3).map(|i| start_backend(&format!("w{i}"))).collect();
    let pool: Vec<(&BackendHandle, u32)> = backends.iter().zip([1, 2, 3]).collect();
    let proxy = Proxy::start(&format!("weights-{kind}"), &weighted_pool(kind, &pool, ""));
    let mut client = proxy.client();
    for _ in 0..30 {
        let batch: Vec<Request> = (0..200).map(|_| Request::get("/status/204")).collect();
        for response in client.request_many(batch) {
            assert_eq!(response.expect("request").status, 204);
        }
    }
    let total = 6000.0;
    for (backend, weight) in backends.iter().zip([1.0, 2.0, 3.0]) {
        let share = backend.stats().requests as f64 / total;
        let expected = weight / 6.0;
        assert!(
            (share - expected).abs() <= 0.05,
            "{kind}: backend with weight {weight} got {share:.3}, expected {expected:.3}"
        );
    }
}

#[test]
fn round_robin_shares_follow_weights() {
    shares_follow_weights("round-robin");
}

#[test]
fn random_shares_follow_weights() {
    shares_follow_weights("random");
}

#[test]
fn failing_health_check_removes_and_restores_a_backend() {
    let healthy = start_backend("steady");
    let flaky = start_backend("flaky");
    let check = "health_check = { path = \"/health\", interval = 100, timeout_ms = 50, failure_threshold = 2, success_threshold = 2 }";
    let text = format!(
        "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\n\
         [[upstream.main.backends]]\nid = \"steady\"\naddress = \"{}\"\n{check}\n\
         [[upstream.main.backends]]\nid = \"flaky\"\naddress = \"{}\"\n{check}\n",
        healthy.addr(),
        flaky.addr()
    );
    let proxy = Proxy::start("health", &text);
    let mut client = proxy.client();
    let flaky_share = |client: &mut spooky_bench::client::H3Client| {
        let before = flaky.requests_for("/status");
        for response in client.request_many((0..20).map(|_| Request::get("/status/200")).collect())
        {
            assert_eq!(response.expect("request").status, 200);
        }
        flaky.requests_for("/status") - before
    };
    assert!(flaky_share(&mut client) > 0);

    flaky.set_healthy(false);
    let failed_at = Instant::now();
    // interval x failure_threshold, +10% jitter per probe, one probe timeout and one shard tick;
    // the rest is margin for this polling loop on a busy machine.
    let bound = Duration::from_millis(110 * 2 + 50 + 10 + 300);
    assert!(
        eventually(Duration::from_secs(5), || flaky_share(&mut client) == 0),
        "flaky backend kept receiving traffic"
    );
    assert!(
        failed_at.elapsed() < bound,
        "took {:?}",
        failed_at.elapsed()
    );
    // Once out, it stays out.
    assert_eq!(flaky_share(&mut client), 0);

    flaky.set_healthy(true);
    assert!(
        eventually(Duration::from_secs(5), || flaky_share(&mut client) > 0),
        "flaky backend never came back"
    );
}

#[test]
fn killing_a_backend_under_load_fails_no_idempotent_request() {
    let survivor = start_backend("survivor");
    let doomed = start_backend("doomed");
    let proxy = Proxy::start(
        "kill",
        &weighted_pool("round-robin", &[(&survivor, 1), (&doomed, 1)], ""),
    );
    let options = proxy.client_options();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut client = spooky_bench::client::H3Client::connect(options).expect("connect");
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                for response in
                    client.request_many((0..20).map(|_| Request::get("/status/200")).collect())
                {
                    match response {
                        Ok(r) if r.status == 200 => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
            }
            (ok, failed)
        })
    };
    assert!(eventually(Duration::from_secs(10), || doomed
        .stats()
        .requests
        > 100));
    doomed.stop();
    let after_kill = survivor.stats().requests;
    assert!(eventually(Duration::from_secs(10), || survivor
        .stats()
        .requests
        > after_kill + 300));
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
}

#[test]
fn a_partly_sent_post_is_never_replayed() {
    let first = start_backend("first");
    let second = start_backend("second");
    let proxy = Proxy::start(
        "no-replay",
        &weighted_pool("round-robin", &[(&first, 1), (&second, 1)], ""),
    );
    let options = proxy.client_options();
    let upload = std::thread::spawn(move || {
        let mut client = spooky_bench::client::H3Client::connect(options).expect("connect");
        // Far more than can pass before the backend is killed.
        client.request(
            Request::new("POST", "/echo")
                .body(Body::Pattern(4 << 30))
                .keep_body(false),
        )
    });
    // Smooth round-robin sends the first request to the first backend.
    assert!(eventually(Duration::from_secs(10), || first
        .stats()
        .in_flight
        == 1));
    first.stop();
    let result = upload.join().unwrap();
    match result {
        Ok(response) => assert!(
            response.status >= 500,
            "a failed upload must not look like success: {}",
            response.status
        ),
        Err(ClientError::StreamReset { .. }) => {}
        Err(e) => panic!("unexpected error {e:?}"),
    }
    assert_eq!(
        second.stats().requests,
        0,
        "the POST was replayed on another backend"
    );
}

#[test]
fn no_healthy_backend_answers_503_fast() {
    let backend = start_backend("down");
    let text = format!(
        "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\n\
         [[upstream.main.backends]]\nid = \"only\"\naddress = \"{}\"\n\
         health_check = {{ path = \"/health\", interval = 50, timeout_ms = 40, failure_threshold = 1, success_threshold = 1 }}\n",
        backend.addr()
    );
    let proxy = Proxy::start("all-down", &text);
    let mut client = proxy.client();
    backend.set_healthy(false);
    assert!(eventually(Duration::from_secs(5), || {
        client
            .request(Request::get("/status/200"))
            .ok()
            .map(|r| r.status)
            == Some(503)
    }));
    let started = Instant::now();
    let response = client
        .request(Request::get("/status/200"))
        .expect("request");
    let elapsed = started.elapsed();
    assert_eq!(response.status, 503);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(elapsed < Duration::from_millis(50), "503 took {elapsed:?}");
}

#[test]
fn consistent_hash_sends_a_key_to_one_backend_from_every_shard() {
    let backends: Vec<BackendHandle> = (0..4).map(|i| start_backend(&format!("h{i}"))).collect();
    let mut text =
        "[runtime]\ncores = [0, 1]\n\n[upstream.main]\nroute = { path_prefix = \"/\" }\n\
        load_balancing = { type = \"consistent-hash\", key = \"header:x-user\" }\n"
            .to_string();
    for (i, b) in backends.iter().enumerate() {
        text.push_str(&format!(
            "[[upstream.main.backends]]\nid = \"h{i}\"\naddress = \"{}\"\n",
            b.addr()
        ));
    }
    let proxy = Proxy::start("hash", &text);
    let mut owner: std::collections::HashMap<u32, String> = Default::default();
    // Many connections land on both shards; each asks for the same 50 keys.
    for _ in 0..16 {
        let mut client = proxy.client();
        let requests = (0..50)
            .map(|k| Request::get("/status/200").header("x-user", &format!("user-{k}")))
            .collect();
        for (k, response) in client.request_many(requests).into_iter().enumerate() {
            let response = response.expect("request");
            let backend = response.header("x-backend").unwrap().to_string();
            let first = owner.entry(k as u32).or_insert_with(|| backend.clone());
            assert_eq!(*first, backend, "key user-{k} moved");
        }
    }
    let per_shard: Vec<u64> = proxy
        .running
        .shard_stats()
        .iter()
        .map(|s| s.requests.total())
        .collect();
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "both shards must serve: {per_shard:?}"
    );
    let distinct: std::collections::HashSet<&String> = owner.values().collect();
    assert!(
        distinct.len() >= 3,
        "50 keys should spread over the pool: {distinct:?}"
    );
}

#[test]
fn least_request_steers_new_requests_away_from_a_busy_backend() {
    let busy = start_backend("busy");
    let idle = start_backend("idle");
    let check = "health_check = { path = \"/health\", interval = 50, timeout_ms = 40, failure_threshold = 1, success_threshold = 1 }";
    let text = format!(
        "[upstream.main]\nroute = {{ path_prefix = \"/\" }}\nload_balancing = {{ type = \"least-request\" }}\n\
         [[upstream.main.backends]]\nid = \"busy\"\naddress = \"{}\"\n\
         [[upstream.main.backends]]\nid = \"idle\"\naddress = \"{}\"\n{check}\n",
        busy.addr(),
        idle.addr()
    );
    idle.set_healthy(false);
    let proxy = Proxy::start("least", &text);
    let mut client = proxy.client();
    // While "idle" is out (backends start healthy; wait for the failing check to take it out),
    // ten slow requests pile up on "busy".
    assert!(eventually(Duration::from_secs(5), || {
        (0..20).all(|_| {
            let response = client.request(Request::get("/status/200")).unwrap();
            response.header("x-backend") == Some("busy")
        })
    }));
    let options = proxy.client_options();
    let slow = std::thread::spawn(move || {
        let mut client = spooky_bench::client::H3Client::connect(options).expect("connect");
        client.request_many((0..10).map(|_| Request::get("/delay/3000")).collect())
    });
    assert!(eventually(Duration::from_secs(5), || busy
        .stats()
        .in_flight
        == 10));
    idle.set_healthy(true);
    assert!(eventually(Duration::from_secs(5), || {
        client
            .request(Request::get("/status/200"))
            .unwrap()
            .header("x-backend")
            == Some("idle")
    }));
    // With ten requests held by "busy", every new request goes to "idle".
    for _ in 0..20 {
        let response = client.request(Request::get("/status/200")).unwrap();
        assert_eq!(response.header("x-backend"), Some("idle"));
    }
    assert_eq!(busy.stats().in_flight, 10);
    for response in slow.join().unwrap() {
        assert_eq!(response.unwrap().status, 200);
    }
}
