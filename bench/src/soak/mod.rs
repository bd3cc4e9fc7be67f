//! `spooky-bench soak`: Spooky under hours of ordinary trouble, recording whether it keeps its
//! shape. Two backends behind one upstream; HTTP/3 clients ask for a mix of small and large
//! responses and upload bodies, and replace all their connections every few seconds; one
//! backend is killed and brought back once a period; the configuration is changed and
//! reloaded (SIGHUP) once a period. Every few seconds the run samples Spooky's RSS, its open
//! QUIC connections (from the admin endpoint) and the clients' requests and errors, and at the
//! end writes `soak.csv`, `soak.png` (the chart) and `soak.md` (the summary) to the output
//! directory.
//!
//! A slow leak shows as RSS still rising after warm-up, which is the figure the summary gives:
//! the median RSS over the last period against the median over the period after warm-up.

mod record;
mod scrape;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shards::procfs;

use crate::load::{self, LoadOptions};
use crate::matrix::targets::{self, BackendProtocol, Certificate};
use record::{Run, Sample};

/// How a soak run is set up.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub spooky: PathBuf,
    /// The `spooky-bench` executable, which also serves as the backends.
    pub bench: PathBuf,
    pub out_dir: PathBuf,
    pub duration: Duration,
    /// How often a backend is killed (half-way through the period, for a sixth of it) and a
    /// changed configuration is reloaded (at the start of each period after the first).
    pub period: Duration,
    /// Requests per second the clients offer, across all of them.
    pub rate: f64,
    pub proxy_cpu: usize,
    pub load_cpus: Vec<usize>,
    pub command: String,
}

/// How long each client connection set lives before all are replaced.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(10);
/// Response sizes the GET clients ask for, in turn: mostly small, some large.
const GET_PATHS: [&str; 10] = [
    "/bytes/512",
    "/bytes/1024",
    "/bytes/1024",
    "/bytes/2048",
    "/bytes/4096",
    "/bytes/1024",
    "/bytes/16384",
    "/bytes/65536",
    "/bytes/262144",
    "/bytes/1048576",
];
/// Body size of the uploads (POST to the backend's `/sink`).
const UPLOAD_BYTES: u64 = 256 * 1024;
/// Share of the offered rate that is uploads.
const UPLOAD_SHARE: f64 = 0.05;

/// What the client threads have counted so far.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    errors: AtomicU64,
    connections: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    /// Error kinds; touched once per connection set, never per request.
    kinds: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn add(&self, report: &load::LoadReport) {
        let errors: u64 = report.errors.values().sum();
        self.requests
            .fetch_add(report.requests_completed, Ordering::Relaxed);
        self.errors.fetch_add(errors, Ordering::Relaxed);
        self.connections
            .fetch_add(report.connections_established, Ordering::Relaxed);
        self.bytes_received
            .fetch_add(report.bytes_received, Ordering::Relaxed);
        self.bytes_sent
            .fetch_add(report.bytes_sent, Ordering::Relaxed);
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, n) in &report.errors {
            *kinds.entry(kind.clone()).or_default() += n;
        }
    }

    fn failed_run(&self, error: &load::LoadError) {
        log::warn!("soak: a client run failed: {error}");
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        *kinds.entry("client_run_failed".into()).or_default() += 1;
    }
}

/// The ports and files of one run.
struct Layout {
    dir: PathBuf,
    certificate: Certificate,
    port: u16,
    admin: SocketAddr,
    backends: [u16; 2],
}

/// Spooky's configuration at reload `generation`: backend `b`'s weight alternates between 100
/// and 200, so that every reload changes the plan the shards swap to.
fn config_text(layout: &Layout, cpu: usize, generation: u64) -> String {
    let weight_b = if generation % 2 == 0 { 100 } else { 200 };
    let health = "health_check = { path = \"/health\", interval = 500, timeout_ms = 250, \
                  failure_threshold = 2, success_threshold = 1 }";
    format!(
        "[listen]\naddress = \"127.0.0.1\"\nport = {port}\n\
         tls = {{ cert = {cert:?}, key = {key:?} }}\n\n\
         [runtime]\ncores = [{cpu}]\n\n\
         [admin]\naddress = \"{admin}\"\n\n\
         [upstream.main]\nroute = {{ path_prefix = \"/\" }}\nprotocol = \"h2c\"\n\n\
         [[upstream.main.backends]]\nid = \"a\"\naddress = \"127.0.0.1:{a}\"\n{health}\n\n\
         [[upstream.main.backends]]\nid = \"b\"\naddress = \"127.0.0.1:{b}\"\nweight = {weight_b}\n\
         {health}\n",
        port = layout.port,
        cert = layout.certificate.cert.display().to_string(),
        key = layout.certificate.key.display().to_string(),
        admin = layout.admin,
        a = layout.backends[0],
        b = layout.backends[1],
    )
}

/// Runs the soak and returns the summary in markdown.
pub fn run(options: &SoakOptions) -> Result<String, String> {
    std::fs::create_dir_all(&options.out_dir).map_err(|e| e.to_string())?;
    let dir = options
        .out_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", options.out_dir.display()))?;
    targets::pin_self(&options.load_cpus)
        .map_err(|e| format!("pinning the load generator: {e}"))?;
    let layout = Layout {
        certificate: targets::write_certificate(&dir)?,
        port: targets::free_port()?,
        admin: ([127, 0, 0, 1], targets::free_port()?).into(),
        backends: [targets::free_port()?, targets::free_port()?],
        dir,
    };
    let load_cpus = options
        .load_cpus
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let start_backend = |name: &'static str, port: u16| {
        targets::start_backend(
            name,
            &options.bench,
            &layout.dir,
            port,
            &load_cpus,
            1,
            BackendProtocol::H2c,
        )
    };
    let _backend_a = start_backend("backend-a", layout.backends[0])?;
    let mut backend_b = Some(start_backend("backend-b", layout.backends[1])?);
    let config = layout.dir.join("soak.toml");
    let mut generation = 0;
    std::fs::write(&config, config_text(&layout, options.proxy_cpu, generation))
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let spooky = targets::launch_spooky(
        "spooky",
        &options.spooky,
        &config,
        &layout.dir,
        layout.port,
        options.proxy_cpu,
    )?;
    let pid = spooky.pid().to_string();

    let start = Instant::now();
    let deadline = start + options.duration;
    let tally = Arc::new(Tally::default());
    let url = format!("https://localhost:{}", layout.port);
    let clients = [
        get_clients(&url, options.rate),
        upload_clients(&url, options.rate),
    ]
    .into_iter()
    .map(|client| {
        let tally = Arc::clone(&tally);
        std::thread::Builder::new()
            .name("soak-clients".into())
            .spawn(move || churn(client, deadline, &tally))
            .map_err(|e| format!("starting a client thread: {e}"))
    })
    .collect::<Result<Vec<_>, _>>()?;

    let sample_every = (options.period / 12).clamp(Duration::from_secs(1), Duration::from_secs(5));
    let period = options.period.as_secs_f64();
    let mut samples = Vec::new();
    let mut outages: Vec<(f64, f64)> = Vec::new();
    let mut reloads_sent = 0;
    let mut next_sample = start;
    let mut next_reload = start + options.period;
    let mut next_kill = start + options.period / 2;
    let mut revive_at = None;
    let mut last_progress = start;
    loop {
        let now = Instant::now();
        let seconds = now.duration_since(start).as_secs_f64();
        if now >= next_kill && now < deadline {
            // SIGKILL, as a crash would: no goodbye, connections reset under their requests.
            backend_b = None;
            outages.push((seconds, seconds));
            revive_at = Some(now + options.period / 6);
            next_kill += options.period;
        }
        if revive_at.is_some_and(|t| now >= t) {
            backend_b = Some(start_backend("backend-b", layout.backends[1])?);
            if let Some(outage) = outages.last_mut() {
                outage.1 = seconds;
            }
            revive_at = None;
        }
        if now >= next_reload && now < deadline {
            generation += 1;
            std::fs::write(&config, config_text(&layout, options.proxy_cpu, generation))
                .map_err(|e| format!("{}: {e}", config.display()))?;
            crate::sys::signal(spooky.pid(), libc::SIGHUP)
                .map_err(|e| format!("sending SIGHUP to spooky: {e}"))?;
            reloads_sent += 1;
            next_reload += options.period;
        }
        if now >= next_sample {
            samples.push(sample(
                &pid,
                layout.admin,
                seconds,
                &tally,
                backend_b.is_some(),
            )?);
            next_sample += sample_every;
        }
        if now.duration_since(last_progress) >= options.period {
            last_progress = now;
            if let Some(s) = samples.last() {
                eprintln!(
                    "soak: {:.0} s, RSS {:.1} MB, {} connections, {} requests, {} errors",
                    s.seconds,
                    s.rss_bytes as f64 / 1e6,
                    s.quic_connections,
                    s.requests,
                    s.errors
                );
            }
        }
        if now >= deadline {
            break;
        }
        let next = [
            Some(next_sample),
            Some(next_kill),
            Some(next_reload),
            revive_at,
            Some(deadline),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(deadline);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for client in clients {
        client
            .join()
            .map_err(|_| "a client thread panicked".to_string())?;
    }
    let seconds = start.elapsed().as_secs_f64();
    samples.push(sample(
        &pid,
        layout.admin,
        seconds,
        &tally,
        backend_b.is_some(),
    )?);
    if let Some(outage) = outages.last_mut().filter(|o| o.1 < o.0 + 1e-9) {
        outage.1 = seconds;
    }
    drop(spooky);

    let kinds = tally
        .kinds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let run = Run {
        samples: &samples,
        warm_up_seconds: (seconds / 6.0).min(300.0),
        // Long enough that RSS spikes (a burst of 1 MiB responses in flight) do not decide
        // the median: five minutes in an hour's run, never less than a period.
        window_seconds: (seconds / 12.0).clamp(period, 300.0),
        outages: &outages,
        reloads_sent,
        errors_by_kind: &kinds,
        connections_opened: tally.connections.load(Ordering::Relaxed),
        bytes_received: tally.bytes_received.load(Ordering::Relaxed),
        bytes_sent: tally.bytes_sent.load(Ordering::Relaxed),
        description: format!(
            "One Spooky shard on CPU {cpu}, two h2c backends (`a`, `b`) with health checks every \
             500 ms. Clients offer {rate:.0} requests/s over HTTP/3: GETs of 512 B to 1 MiB \
             responses on 16 connections × 4 streams, and {upload_rate:.0}/s uploads of 256 KiB \
             on 2 connections; every client connection is replaced every {lifetime} s. Every \
             {period:.0} s: backend `b` is killed (SIGKILL) half-way through the period and \
             restarted {down:.0} s later, and at the period's start the configuration is \
             rewritten (`b`'s weight 100 <-> 200) and reloaded with SIGHUP. Samples every {every} \
             s; warm-up is the first {warm:.0} s.",
            cpu = options.proxy_cpu,
            rate = options.rate,
            upload_rate = options.rate * UPLOAD_SHARE,
            lifetime = CONNECTION_LIFETIME.as_secs(),
            down = period / 6.0,
            every = sample_every.as_secs(),
            warm = (seconds / 6.0).min(300.0),
        ),
    };
    let write = |name: &str, bytes: &[u8]| {
        let path = layout.dir.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("soak.csv", run.csv().as_bytes())?;
    write("soak.png", &run.chart())?;
    let markdown = run.markdown(&options.command);
    write("soak.md", markdown.as_bytes())?;
    Ok(markdown)
}

/// The GET clients: the response-size mix, open loop.
fn get_clients(url: &str, rate: f64) -> LoadOptions {
    let mut o = LoadOptions::new(&format!("{url}/"));
    o.paths = GET_PATHS.iter().map(|p| p.to_string()).collect();
    o.connections = 16;
    o.streams = 4;
    o.threads = 1;
    o.rate = Some(rate * (1.0 - UPLOAD_SHARE));
    o.request_timeout = Duration::from_secs(10);
    o
}

/// The upload clients: 256 KiB bodies to the backend's sink.
fn upload_clients(url: &str, rate: f64) -> LoadOptions {
    let mut o = LoadOptions::new(&format!("{url}/sink"));
    o.method = "POST".into();
    o.body_size = UPLOAD_BYTES;
    o.connections = 2;
    o.streams = 1;
    o.threads = 1;
    o.rate = Some((rate * UPLOAD_SHARE).max(0.5));
    o.request_timeout = Duration::from_secs(10);
    o
}

/// Runs `options` in back-to-back sets of fresh connections until `deadline`.
fn churn(mut options: LoadOptions, deadline: Instant, tally: &Tally) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(500) {
            return;
        }
        options.duration = Some(left.min(CONNECTION_LIFETIME));
        match load::run(&options) {
            Ok(report) => tally.add(&report),
            Err(e) => {
                tally.failed_run(&e);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

fn sample(
    pid: &str,
    admin: SocketAddr,
    seconds: f64,
    tally: &Tally,
    backend_up: bool,
) -> Result<Sample, String> {
    let rss_bytes = procfs::rss_bytes(pid).map_err(|e| format!("spooky's RSS: {e}"))?;
    let metrics = scrape::metrics(admin)?;
    let value = |name| scrape::sum(&metrics, name, &[]).unwrap_or(0.0);
    Ok(Sample {
        seconds,
        rss_bytes,
        quic_connections: value("spooky_quic_connections_active"),
        requests: tally.requests.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        served: value("spooky_requests_total") as u64,
        served_5xx: scrape::sum(&metrics, "spooky_responses_total", &["class=\"5xx\""])
            .unwrap_or(0.0) as u64,
        config_generation: value("spooky_config_generation"),
        backend_up,
    })
}

/// Where a soak run's files go by default.
pub fn default_out_dir() -> PathBuf {
    Path::new("target").join("soak")
}
