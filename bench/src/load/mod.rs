//! `spooky-bench load`: the load generator.
//!
//! One loader thread per CPU (or `--threads`), each driving its share of the connections in its
//! own event loop, with no shared state until the results are merged at the end. HTTP/3 goes
//! over quiche with one UDP socket per connection (so a proxy's reuseport group spreads them);
//! `http://` URLs use HTTP/2 cleartext for the direct-to-backend baseline. Closed loop keeps
//! every stream busy; open loop (`--rate`) sends at a constant rate and measures latency from
//! each request's due time.

mod h2c;
mod h3;
mod poller;
pub mod schedule;
pub mod stats;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::Verify;
use stats::{Percentiles, Recorder};

/// Everything a load run is asked to do. Echoed whole into the JSON report.
#[derive(Clone, Debug, Serialize)]
pub struct LoadOptions {
    pub url: String,
    pub connections: usize,
    /// Requests in flight per connection.
    pub streams: usize,
    pub duration: Option<Duration>,
    /// Stop after this many requests (finished well or badly).
    pub requests: Option<u64>,
    /// Open loop: requests per second across all threads.
    pub rate: Option<f64>,
    pub method: String,
    pub body_size: u64,
    /// Paths requested in turn; the URL's own path when empty.
    pub paths: Vec<String>,
    pub headers: Vec<(String, String)>,
    /// Open a connection, complete the handshake, close; repeat.
    pub handshake_only: bool,
    /// Open every connection, then hold them idle this long.
    pub idle_hold: Option<Duration>,
    pub threads: usize,
    /// Load that runs before recording starts.
    pub warmup: Option<Duration>,
    #[serde(skip)]
    pub verify: Verify,
    /// Give up on one request (or handshake) after this long.
    pub request_timeout: Duration,
}

impl LoadOptions {
    pub fn new(url: &str) -> LoadOptions {
        LoadOptions {
            url: url.to_string(),
            connections: 1,
            streams: 1,
            duration: None,
            requests: None,
            rate: None,
            method: "GET".into(),
            body_size: 0,
            paths: Vec::new(),
            headers: Vec::new(),
            handshake_only: false,
            idle_hold: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            warmup: None,
            verify: Verify::Insecure,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A run's results.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub options: LoadOptions,
    pub elapsed_seconds: f64,
    pub requests_completed: u64,
    pub requests_per_second: f64,
    /// Open loop only: the rate the generator actually offered.
    pub offered_rate: Option<f64>,
    pub errors: BTreeMap<String, u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub latency_us: Percentiles,
    pub handshakes: u64,
    pub handshakes_per_second: f64,
    pub handshake_latency_us: Percentiles,
    pub connections_established: u64,
}

/// The parts of a URL a run needs.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub http3: bool,
    pub server: SocketAddr,
    pub host: String,
    pub authority: String,
    pub paths: Vec<String>,
}

fn parse_target(options: &LoadOptions) -> Result<Target, String> {
    let (http3, rest) = if let Some(rest) = options.url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = options.url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!(
            "{:?}: use https:// (HTTP/3) or http:// (HTTP/2 cleartext)",
            options.url
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let server = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let host = match authority.rsplit_once(':') {
        Some((host, _)) => host.trim_matches(|c| c == '[' || c == ']').to_string(),
        None => authority.to_string(),
    };
    let paths = if options.paths.is_empty() {
        vec![path.to_string()]
    } else {
        options.paths.clone()
    };
    Ok(Target {
        http3,
        server,
        host,
        authority: authority.to_string(),
        paths,
    })
}

/// What one loader thread is asked to do.
#[derive(Clone)]
pub(crate) struct ThreadPlan {
    pub options: LoadOptions,
    pub target: Target,
    pub connections: usize,
    pub rate: Option<f64>,
    pub requests: Option<u64>,
    pub start: Instant,
    /// When recording starts (after warm-up).
    pub record_from: Instant,
    /// When the run stops, if timed.
    pub stop_at: Option<Instant>,
}

impl ThreadPlan {
    /// Moves the start of the run (and with it the warm-up end and the stop time) to `now`:
    /// called once the thread's connections are up, so that no request is due before it could
    /// be sent and handshakes never count as request latency.
    pub fn restart_clock(&mut self, now: Instant) {
        let shift = now.saturating_duration_since(self.start);
        self.start += shift;
        self.record_from += shift;
        self.stop_at = self.stop_at.map(|t| t + shift);
    }

    /// Whether the thread's work is done.
    pub fn done(&self, now: Instant, recorder: &Recorder) -> bool {
        self.stop_at.is_some_and(|t| now >= t)
            || self.requests.is_some_and(|n| recorder.finished() >= n)
    }
}

/// Runs the load and returns the merged results.
pub fn run(options: &LoadOptions) -> Result<LoadReport, String> {
    validate(options)?;
    let target = parse_target(options)?;
    let threads = options.threads.clamp(1, options.connections.max(1));
    let start = Instant::now();
    let warmup = options.warmup.unwrap_or_default();
    let record_from = start + warmup;
    let stop_at = options.duration.map(|d| record_from + d);
    let mut plans = Vec::new();
    for i in 0..threads {
        let share =
            |total: u64| total / threads as u64 + u64::from((i as u64) < total % threads as u64);
        plans.push(ThreadPlan {
            options: options.clone(),
            target: target.clone(),
            connections: share(options.connections as u64) as usize,
            rate: options.rate.map(|r| r / threads as f64),
            requests: options.requests.map(share),
            start,
            record_from,
            stop_at,
        });
    }
    let handles: Vec<_> = plans
        .into_iter()
        .map(|plan| {
            std::thread::Builder::new()
                .name("spooky-load".into())
                .spawn(move || {
                    if plan.target.http3 {
                        h3::run_thread(plan)
                    } else {
                        h2c::run_thread(plan)
                    }
                })
                .map_err(|e| format!("cannot start a loader thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut total = Recorder::default();
    for handle in handles {
        let recorder = handle
            .join()
            .map_err(|_| "a loader thread panicked".to_string())??;
        total.merge(&recorder);
    }
    let measured_from = if options.warmup.is_some() {
        record_from
    } else {
        start
    };
    let elapsed = Instant::now().saturating_duration_since(measured_from);
    let elapsed_seconds = match (options.duration, stop_at) {
        (Some(d), Some(_)) => d.as_secs_f64().min(elapsed.as_secs_f64()),
        _ => elapsed.as_secs_f64(),
    }
    .max(1e-9);
    Ok(LoadReport {
        options: options.clone(),
        elapsed_seconds,
        requests_completed: total.completed,
        requests_per_second: total.completed as f64 / elapsed_seconds,
        offered_rate: options
            .rate
            .map(|_| total.finished() as f64 / elapsed_seconds),
        errors: total
            .errors
            .iter()
            .map(|(k, n)| (k.name().to_string(), *n))
            .collect(),
        bytes_sent: total.bytes_sent,
        bytes_received: total.bytes_received,
        latency_us: Percentiles::of(&total.latency),
        handshakes: total.handshakes,
        handshakes_per_second: total.handshakes as f64 / elapsed_seconds,
        handshake_latency_us: Percentiles::of(&total.handshake_latency),
        connections_established: total.connections_established,
    })
}

fn validate(options: &LoadOptions) -> Result<(), String> {
    if options.connections == 0 || options.streams == 0 {
        return Err("--connections and --streams must be at least 1".into());
    }
    let modes = [
        options.duration.is_some(),
        options.requests.is_some(),
        options.idle_hold.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        return Err("give exactly one of --duration, --requests or --idle-hold".into());
    }
    if options.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
        return Err("--rate must be a positive number of requests per second".into());
    }
    if options.handshake_only && options.rate.is_some() {
        return Err("--handshake-only runs closed loop; drop --rate".into());
    }
    if options.idle_hold.is_some() && (options.rate.is_some() || options.handshake_only) {
        return Err(
            "--idle-hold opens connections and holds them; drop --rate/--handshake-only".into(),
        );
    }
    if (options.handshake_only || options.idle_hold.is_some())
        && !options.url.starts_with("https://")
    {
        return Err("--handshake-only and --idle-hold need an https:// (HTTP/3) URL".into());
    }
    Ok(())
}

/// The human-readable summary printed by `spooky-bench load`.
pub fn table(report: &LoadReport) -> String {
    let mut out = String::new();
    let o = &report.options;
    let _ = writeln!(
        out,
        "target        {} ({} connections x {} streams, {} threads{})",
        o.url,
        o.connections,
        o.streams,
        o.threads,
        o.rate.map_or(", closed loop".to_string(), |r| format!(
            ", open loop at {r:.0}/s"
        ))
    );
    let _ = writeln!(out, "elapsed       {:.2} s", report.elapsed_seconds);
    if o.handshake_only {
        let h = &report.handshake_latency_us;
        let _ = writeln!(
            out,
            "handshakes    {} ({:.0}/s)\nlatency (us)  p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
            report.handshakes, report.handshakes_per_second, h.p50, h.p90, h.p99, h.p999, h.max
        );
    } else if o.idle_hold.is_some() {
        let _ = writeln!(out, "established   {}", report.connections_established);
    } else {
        let l = &report.latency_us;
        let _ = writeln!(
            out,
            "requests      {} ({:.0}/s{})\nlatency (us)  p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  mean {:.0}",
            report.requests_completed,
            report.requests_per_second,
            report
                .offered_rate
                .map_or(String::new(), |r| format!(", offered {r:.0}/s")),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.mean
        );
        let _ = writeln!(
            out,
            "bytes         {} received, {} sent ({:.2} Gbit/s received)",
            report.bytes_received,
            report.bytes_sent,
            report.bytes_received as f64 * 8.0 / report.elapsed_seconds / 1e9
        );
    }
    if report.errors.is_empty() {
        let _ = writeln!(out, "errors        none");
    } else {
        let list: Vec<String> = report
            .errors
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(out, "errors        {}", list.join(", "));
    }
    out
}
