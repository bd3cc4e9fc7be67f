//! Active health checks, run by the coordinator side of the process.
//!
//! One thread with its own glommio executor probes every backend that has a `health_check`: a GET
//! of the configured path in the upstream's protocol (HTTP/2, or HTTP/1.1 with
//! `Connection: close`) on a fresh connection, over TLS when the upstream has it and verified as
//! the shards verify it, within `timeout`, every `interval`
//! (first probe at a random offset, then with ±10% jitter, so checks of many backends and many
//! processes do not fall in step). A backend turns unhealthy after `failure_threshold` failed
//! probes in a row and healthy again after `success_threshold` passes. Only changes are reported,
//! to the coordinator, which publishes a versioned snapshot to every shard.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shards::balance::rng::XorShift64;
use shards::plan::{BackendProtocol, HealthCheckPlan, ProxyPlan};
use shards::rt;
use shards::tls::backend::BackendTls;
use shards::upstream::dial::{BackendStream, Dialer};

use crate::coordinator::Coordinator;

/// A running set of checks for one configuration generation. Dropping it stops them.
pub struct HealthChecker {
    stop: Arc<AtomicBool>,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Target {
    upstream: usize,
    backend: usize,
    address: SocketAddr,
    host: Option<String>,
    protocol: BackendProtocol,
    tls: Option<BackendTls>,
    check: HealthCheckPlan,
}

impl HealthChecker {
    /// Starts checking every backend of `plan` that has a health check. `generation` tags the
    /// reports so the coordinator ignores a checker that a reload replaced.
    pub fn start(
        plan: &ProxyPlan,
        generation: u64,
        coordinator: Arc<Mutex<Coordinator>>,
    ) -> std::io::Result<HealthChecker> {
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Vec<Target> = plan
            .upstreams
            .iter()
            .enumerate()
            .flat_map(|(u, upstream)| {
                upstream
                    .backends
                    .iter()
                    .enumerate()
                    .filter_map(move |(b, backend)| {
                        backend.health_check.clone().map(|check| Target {
                            upstream: u,
                            backend: b,
                            address: backend.address,
                            host: backend.name.as_ref().map(|n| n.host.clone()),
                            protocol: upstream.protocol,
                            tls: upstream.tls.clone(),
                            check,
                        })
                    })
            })
            .collect();
        if targets.is_empty() {
            return Ok(HealthChecker { stop });
        }
        let task_stop = stop.clone();
        rt::start_unbound("spooky-health", move || async move {
            let tasks: Vec<_> = targets
                .into_iter()
                .enumerate()
                .map(|(i, target)| {
                    rt::spawn_joined(check_loop(
                        target,
                        i as u64,
                        generation,
                        coordinator.clone(),
                        task_stop.clone(),
                    ))
                })
                .collect();
            for task in tasks {
                task.await;
            }
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(HealthChecker { stop })
    }
}

async fn check_loop(
    target: Target,
    seed: u64,
    generation: u64,
    coordinator: Arc<Mutex<Coordinator>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Jitter::new(seed);
    // Built here, on the checker's thread: a dialer holds per-thread state (its session cache).
    let dialer = Dialer::new(target.address, target.host.as_deref(), target.tls.as_ref());
    let interval = target.check.interval;
    let mut healthy = true;
    let (mut failures, mut successes) = (0u32, 0u32);
    let mut wait = rng.fraction_of(interval, 0.0, 1.0);
    loop {
        // Sleep in short steps so a stop (reload, shutdown) is noticed promptly.
        let mut remaining = wait;
        while !remaining.is_zero() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let step = remaining.min(Duration::from_millis(50));
            rt::sleep(step).await;
            remaining -= step;
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let passed = rt::within(target.check.timeout, probe(&target, &dialer))
            .await
            .flatten()
            .unwrap_or(false);
        if passed {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
        }
        let flip = if healthy && failures >= target.check.failure_threshold {
            Some(false)
        } else if !healthy && successes >= target.check.success_threshold {
            Some(true)
        } else {
            None
        };
        if let Some(now_healthy) = flip {
            healthy = now_healthy;
            let mut coordinator = match coordinator.lock() {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
            coordinator.set_backend_health(generation, target.upstream, target.backend, healthy);
        }
        wait = rng.fraction_of(interval, 0.9, 1.1);
    }
}

/// One probe: connect, then `GET path` in the backend's protocol; `Some(true)` for a 2xx status.
async fn probe(target: &Target, dialer: &Dialer) -> Option<bool> {
    let stream = dialer.dial().await.ok()?;
    let path = &target.check.path;
    match target.protocol {
        BackendProtocol::Http2 => {
            let scheme = if target.tls.is_some() {
                "https"
            } else {
                "http"
            };
            probe_h2(stream, scheme, target.address, path).await
        }
        BackendProtocol::Auto(_) if stream.negotiated_h2() => {
            probe_h2(stream, "https", target.address, path).await
        }
        BackendProtocol::Http1(_) | BackendProtocol::Auto(_) => {
            let authority = match &target.host {
                Some(host) => format!("{host}:{}", target.address.port()),
                None => target.address.to_string(),
            };
            probe_http1(stream, &authority, path).await
        }
    }
}

async fn probe_h2(
    stream: BackendStream,
    scheme: &str,
    address: SocketAddr,
    path: &str,
) -> Option<bool> {
    let (mut sender, connection) = h2::client::handshake(stream).await.ok()?;
    let driver = rt::spawn_joined(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(format!("{scheme}://{address}{path}"))
        .header("user-agent", USER_AGENT)
        .body(())
        .ok()?;
    let (response, _) = sender.send_request(request, true).ok()?;
    let response = response.await.ok()?;
    drop(driver);
    Some(response.status().is_success())
}

async fn probe_http1(stream: BackendStream, authority: &str, path: &str) -> Option<bool> {
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.ok()?;
    let driver = rt::spawn_joined(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::CONNECTION, "close")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    drop(driver);
    Some(response.status().is_success())
}

const USER_AGENT: &str = "spooky-health-check";

/// Spreads check times; not cryptographic.
struct Jitter(XorShift64);

impl Jitter {
    fn new(seed: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Jitter(XorShift64::new(
            nanos ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        ))
    }

    /// A duration uniformly between `low` and `high` times `base`.
    fn fraction_of(&mut self, base: Duration, low: f64, high: f64) -> Duration {
        let unit = (self.0.next() >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(low + (high - low) * unit)
    }
}
