//! `spooky-bench load`: the load generator.
//!
//! One loader thread per CPU (or `--threads`), each driving its share of the connections in its
//! own event loop, with no shared state until the results are merged at the end. HTTP/3 goes
//! over quiche with one UDP socket per connection (so a proxy's reuseport group spreads them);
//! `http://` URLs use HTTP/2 cleartext for the direct-to-backend baseline. Closed loop keeps
//! every stream busy; open loop (`--rate`) sends at a constant rate and measures latency from
//! each request's due time.

mod error;
mod h2c;
mod h3;
mod poller;
pub mod schedule;
pub mod stats;
mod tls;

pub use tls::client_config as tls_client_config;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::Verify;
pub use error::LoadError;
use stats::{Percentiles, Recorder};

/// Everything a load run is asked to do. Echoed whole into the JSON report, and the command line
/// of `spooky-bench load` (clap reads it directly; the defaults are [`LoadOptions::new`]'s).
#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct LoadOptions {
    /// https:// (HTTP/3) or http:// (h2c) URL.
    pub url: String,
    #[arg(short, long, default_value_t = 1)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(short, long, default_value_t = 1)]
    pub streams: usize,
    /// Seconds to run.
    #[arg(short, long, value_name = "S", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Stop after this many requests (finished well or badly).
    #[arg(short = 'n', long, value_name = "N")]
    pub requests: Option<u64>,
    /// Open loop: requests per second across all threads.
    #[arg(short, long, value_name = "R")]
    pub rate: Option<f64>,
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// Request body bytes per request.
    #[arg(long, default_value_t = 0)]
    pub body_size: u64,
    /// Paths requested in turn (repeatable); the URL's own path when none is given.
    #[arg(long = "path", value_name = "P")]
    pub paths: Vec<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Open a connection, complete the handshake, close; repeat.
    #[arg(long)]
    pub handshake_only: bool,
    /// With an https:// URL: HTTP/2 over TLS on TCP (what a browser uses first) instead of HTTP/3.
    #[arg(long)]
    pub tcp: bool,
    /// Open every connection, then hold them idle this long (seconds).
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub idle_hold: Option<Duration>,
    #[arg(short, long, default_value_t = default_threads())]
    pub threads: usize,
    /// Seconds of load that run before recording starts.
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub warmup: Option<Duration>,
    /// Set from `--ca`/`--insecure` by the command line.
    #[serde(skip)]
    #[arg(skip = Verify::Insecure)]
    pub verify: Verify,
    /// Give up on one request (or handshake) after this long (seconds).
    #[arg(long = "timeout", value_name = "S", default_value = "30", value_parser = parse_seconds)]
    pub request_timeout: Duration,
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A `name: value` header argument, the name lowercased.
pub fn parse_header(raw: &str) -> Result<(String, String), String> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| format!("header {raw:?} needs 'name: value'"))?;
    Ok((name.trim().to_ascii_lowercase(), value.trim().to_string()))
}

/// A non-negative number of seconds, fractions allowed.
pub fn parse_seconds(raw: &str) -> Result<Duration, String> {
    let seconds: f64 = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a number of seconds"))?;
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(format!("{raw:?} is not a number of seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
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
            tcp: false,
            idle_hold: None,
            threads: default_threads(),
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
    /// HTTP/2 over TLS (`--tcp`) rather than cleartext.
    pub tls: bool,
    pub server: SocketAddr,
    pub host: String,
    pub authority: String,
    pub paths: Vec<String>,
}

fn parse_target(options: &LoadOptions) -> Result<Target, LoadError> {
    let (https, rest) = if let Some(rest) = options.url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = options.url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(LoadError::options(format!(
            "{:?}: use https:// (HTTP/3) or http:// (HTTP/2 cleartext)",
            options.url
        )));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let server = authority
        .to_socket_addrs()
        .map_err(LoadError::io(format!("resolving {authority}")))?
        .next()
        .ok_or_else(|| LoadError::options(format!("{authority}: no address")))?;
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
        http3: https && !options.tcp,
        tls: https && options.tcp,
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
pub fn run(options: &LoadOptions) -> Result<LoadReport, LoadError> {
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
                .map_err(LoadError::io("starting a loader thread"))
        })
        .collect::<Result<_, _>>()?;
    let mut total = Recorder::default();
    for handle in handles {
        let recorder = handle.join().map_err(|_| LoadError::ThreadPanicked)??;
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

fn validate(options: &LoadOptions) -> Result<(), LoadError> {
    if options.connections == 0 || options.streams == 0 {
        return Err(LoadError::options(
            "--connections and --streams must be at least 1",
        ));
    }
    let modes = [
        options.duration.is_some(),
        options.requests.is_some(),
        options.idle_hold.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        return Err(LoadError::options(
            "give exactly one of --duration, --requests or --idle-hold",
        ));
    }
    if options.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
        return Err(LoadError::options(
            "--rate must be a positive number of requests per second",
        ));
    }
    if options.handshake_only && options.rate.is_some() {
        return Err(LoadError::options(
            "--handshake-only runs closed loop; drop --rate",
        ));
    }
    if options.idle_hold.is_some() && (options.rate.is_some() || options.handshake_only) {
        return Err(LoadError::options(
            "--idle-hold opens connections and holds them; drop --rate/--handshake-only",
        ));
    }
    if options.tcp && !options.url.starts_with("https://") {
        return Err(LoadError::options(
            "--tcp needs an https:// URL (HTTP/2 over TLS); http:// is already TCP",
        ));
    }
    if (options.handshake_only || options.idle_hold.is_some())
        && (!options.url.starts_with("https://") || options.tcp)
    {
        return Err(LoadError::options(
            "--handshake-only and --idle-hold need an https:// (HTTP/3) URL",
        ));
    }
    Ok(())
}

fn latency_line(l: &Percentiles) -> String {
    format!(
        "latency (us)  p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
        l.p50, l.p90, l.p99, l.p999, l.max
    )
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
        let _ = writeln!(
            out,
            "handshakes    {} ({:.0}/s)\n{}",
            report.handshakes,
            report.handshakes_per_second,
            latency_line(&report.handshake_latency_us)
        );
    } else if o.idle_hold.is_some() {
        let _ = writeln!(out, "established   {}", report.connections_established);
    } else {
        let _ = writeln!(
            out,
            "requests      {} ({:.0}/s{})\n{}  mean {:.0}",
            report.requests_completed,
            report.requests_per_second,
            report
                .offered_rate
                .map_or(String::new(), |r| format!(", offered {r:.0}/s")),
            latency_line(&report.latency_us),
            report.latency_us.mean
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
