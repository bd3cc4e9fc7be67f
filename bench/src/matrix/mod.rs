//! `spooky-bench matrix`: the benchmark scenario matrix, run against Spooky, HAProxy and nginx
//! (when given), Caddy (when installed) and the backend directly, in one run on one machine, written up as a markdown
//! report plus the raw results as JSON. Spooky is measured twice where requests reach the
//! backend: with the h2c backend every target uses, and (`spooky-http1`) with the same backend
//! program speaking HTTP/1.1, so the report gives the cost of each backend protocol.
//!
//! Every target gets the same backend, certificate, CPU and load. The proxy under test is pinned
//! to one CPU; the load generator and the backend share the others. Costs are the proxy's own CPU
//! seconds from `/proc`, so the generator's work is never counted against the proxy.

pub mod report;
pub mod targets;

use std::path::{Path, PathBuf};
use std::time::Duration;

use shards::procfs;

use crate::load::{self, LoadOptions};
use report::{Row, RunInfo, Section};
use targets::{BackendProtocol, Server};

/// How a matrix run is set up.
#[derive(Clone, Debug)]
pub struct MatrixOptions {
    pub spooky: PathBuf,
    /// The `spooky-bench` executable, which also serves as the backend.
    pub bench: PathBuf,
    pub out_dir: PathBuf,
    /// Length of each timed scenario.
    pub duration: Duration,
    /// CPU for the proxy under test.
    pub proxy_cpu: usize,
    /// CPUs for the load generator and the backend.
    pub load_cpus: Vec<usize>,
    pub idle_connections: usize,
    pub skip_caddy: bool,
    /// HAProxy and nginx executables (`bench/peers.sh` builds them); no rows without.
    pub haproxy: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
    pub command: String,
}

/// A scenario: what load to put on a target.
struct Scenario {
    name: &'static str,
    description: String,
    /// Whether the direct-to-backend row applies (it cannot do QUIC handshakes or hold QUIC
    /// connections).
    direct: bool,
    /// Whether Spooky is also measured over HTTP/2 on its TCP+TLS listener (`spooky-h2`) and
    /// with an HTTP/1.1 backend (`spooky-http1`): the scenarios whose requests reach the backend.
    tcp: bool,
    options: Box<dyn Fn(&str) -> LoadOptions>,
}

pub fn run(options: &MatrixOptions) -> Result<String, String> {
    std::fs::create_dir_all(&options.out_dir).map_err(|e| e.to_string())?;
    // Absolute, because the generated configurations name files in it and Spooky resolves
    // relative paths against the configuration file's own directory.
    let out_dir = options
        .out_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", options.out_dir.display()))?;
    let options = &MatrixOptions {
        out_dir,
        ..options.clone()
    };
    targets::pin_self(&options.load_cpus)
        .map_err(|e| format!("pinning the load generator: {e}"))?;
    let certificate = targets::write_certificate(&options.out_dir)?;
    let load_cpus = cpu_list(&options.load_cpus);
    let backend_port = targets::free_port()?;
    let backend = targets::start_backend(
        "backend",
        &options.bench,
        &options.out_dir,
        backend_port,
        &load_cpus,
        1,
        BackendProtocol::H2c,
    )?;
    let spooky = targets::start_spooky(
        &options.spooky,
        &options.out_dir,
        &certificate,
        targets::free_port()?,
        (backend_port, BackendProtocol::H2c),
        options.proxy_cpu,
    )?;
    let http1_backend_port = targets::free_port()?;
    let http1_backend = targets::start_backend(
        "backend-http1",
        &options.bench,
        &options.out_dir,
        http1_backend_port,
        &load_cpus,
        1,
        BackendProtocol::Http1,
    )?;
    let spooky_http1 = targets::start_spooky(
        &options.spooky,
        &options.out_dir,
        &certificate,
        targets::free_port()?,
        (http1_backend_port, BackendProtocol::Http1),
        options.proxy_cpu,
    )?;
    let caddy = if options.skip_caddy {
        None
    } else {
        targets::start_caddy(
            &options.out_dir,
            &certificate,
            targets::free_port()?,
            backend_port,
            options.proxy_cpu,
        )?
    };
    let haproxy = match &options.haproxy {
        Some(binary) => Some(targets::start_haproxy(
            binary,
            &options.out_dir,
            &certificate,
            targets::free_port()?,
            backend_port,
            options.proxy_cpu,
        )?),
        None => None,
    };
    let nginx = match &options.nginx {
        Some(binary) => Some(targets::start_nginx(
            binary,
            &options.out_dir,
            &certificate,
            targets::free_port()?,
            http1_backend_port,
            options.proxy_cpu,
        )?),
        None => None,
    };
    let mut notes = vec![format!(
        "Proxy pinned to CPU {}; load generator and backend on CPUs {load_cpus}. Caddy: {}.",
        options.proxy_cpu,
        match &caddy {
            Some(_) => "2.6 (Debian), GOMAXPROCS=1, reverse_proxy over h2c".to_string(),
            None => "not installed or skipped, no Caddy rows".to_string(),
        }
    )];
    notes.push(format!(
        "HAProxy: {}. nginx: {}.",
        match &haproxy {
            Some(_) =>
                "3.0 built by bench/peers.sh, `nbthread 1`, QUIC over its OpenSSL \
                        compatibility layer, `proto h2` to the h2c backend",
            None => "not given (--haproxy), no HAProxy rows",
        },
        match &nginx {
            Some(_) =>
                "1.26 built by bench/peers.sh, one process, HTTP/3, HTTP/1.1 keep-alive \
                        (64 idle connections) to the HTTP/1.1 backend, as nginx proxies only \
                        over HTTP/1.x; `keepalive_requests` raised so that client connections \
                        are not closed after 1,000 requests, uploads streamed \
                        (`proxy_request_buffering off`)",
            None => "not given (--nginx), no nginx rows",
        }
    ));
    notes.push(
        "Spooky: one shard, `max_concurrent_streams = 1000`, and `new_connection_rate = 0`: \
         every benchmark client comes from 127.0.0.1, which the default per-address limit of \
         200 new connections a second would throttle."
            .into(),
    );
    notes.push(
        "spooky-http1 is the same Spooky build with `protocol = \"http/1.1\"`, in front of the \
         same backend program in its HTTP/1.1 mode (`spooky-bench backend --http1`); the other \
         targets use the h2c backend."
            .into(),
    );
    notes.push(
        "CPU figures are the proxy process's user+system seconds from /proc/PID/stat over the \
         scenario; latency is measured by the load generator from each request's scheduled send \
         time."
            .into(),
    );

    let threads = options.load_cpus.len().max(1);
    let duration = options.duration;
    let mut proxies = vec![
        Endpoint {
            name: spooky.name,
            server: &spooky,
            tcp: false,
            only_backend_bound: false,
        },
        Endpoint {
            name: "spooky-h2",
            server: &spooky,
            tcp: true,
            only_backend_bound: true,
        },
        Endpoint {
            name: spooky_http1.name,
            server: &spooky_http1,
            tcp: false,
            only_backend_bound: true,
        },
    ];
    for peer in [&haproxy, &nginx].into_iter().flatten() {
        proxies.push(Endpoint {
            name: peer.name,
            server: peer,
            tcp: false,
            only_backend_bound: false,
        });
    }
    if let Some(caddy) = &caddy {
        proxies.push(Endpoint {
            name: caddy.name,
            server: caddy,
            tcp: false,
            only_backend_bound: false,
        });
    }

    let mut sections = Vec::new();
    // Max rate first: it sets the fixed rate of the latency scenario.
    let small_max = Scenario {
        name: "small-max",
        description: "1 KiB GET responses, closed loop: 32 connections × 8 streams, as fast as \
                      the target answers."
            .into(),
        direct: true,
        tcp: true,
        options: Box::new(move |url| {
            load_options(url, "/bytes/1024", threads, 32, 8, Some(duration), None)
        }),
    };
    let section = measure(&small_max, &proxies, &backend)?;
    let spooky_max = section
        .rows
        .iter()
        .find(|r| r.target == "spooky")
        .map_or(1000.0, |r| r.requests_per_second);
    sections.push(section);
    let half_rate = (spooky_max / 2.0).max(100.0);
    let scenarios = vec![
        Scenario {
            name: "small-2000",
            description: "1 KiB GET responses, open loop at a constant 2,000 requests/s over 32 \
                          connections: the cost of a request at a moderate rate, where event \
                          loops sleep and wake between requests."
                .into(),
            direct: true,
            tcp: true,
            options: Box::new(move |url| {
                load_options(
                    url,
                    "/bytes/1024",
                    threads,
                    32,
                    8,
                    Some(duration),
                    Some(2000.0),
                )
            }),
        },
        Scenario {
            name: "small-half-rate",
            description: format!(
                "1 KiB GET responses, open loop at a constant {half_rate:.0} requests/s (half \
                 of Spooky's max rate above) over 32 connections: latency without coordinated \
                 omission."
            ),
            direct: true,
            tcp: true,
            options: Box::new(move |url| {
                load_options(
                    url,
                    "/bytes/1024",
                    threads,
                    32,
                    8,
                    Some(duration),
                    Some(half_rate),
                )
            }),
        },
        Scenario {
            name: "download-100MB",
            description: "100 MB GET responses, one at a time on one connection, 3 requests."
                .into(),
            direct: true,
            tcp: true,
            options: Box::new(|url| {
                let mut o = load_options(url, "/bytes/104857600", 1, 1, 1, None, None);
                o.requests = Some(3);
                o
            }),
        },
        Scenario {
            name: "upload-10MB",
            description: "10 MB POST bodies to a sink, one at a time on one connection, 10 \
                          requests."
                .into(),
            direct: true,
            tcp: true,
            options: Box::new(|url| {
                let mut o = load_options(url, "/bytes/0", 1, 1, 1, None, None);
                o.requests = Some(10);
                o.method = "POST".into();
                o.body_size = 10 * 1024 * 1024;
                o
            }),
        },
        Scenario {
            name: "handshakes",
            description: "New QUIC connections as fast as possible: handshake, then close, on 16 \
                          connection slots. The request columns count handshakes."
                .into(),
            direct: false,
            tcp: false,
            options: Box::new(move |url| {
                let mut o = load_options(url, "/", threads, 16, 1, Some(duration), None);
                o.handshake_only = true;
                o
            }),
        },
    ];
    for scenario in &scenarios {
        sections.push(measure(scenario, &proxies, &backend)?);
    }
    let idle_count = options.idle_connections;
    let idle = Scenario {
        name: "idle-connections",
        description: format!(
            "{idle_count} QUIC connections opened and held idle; RSS growth per connection."
        ),
        direct: false,
        tcp: false,
        options: Box::new(move |url| {
            let mut o = load_options(url, "/", threads, idle_count, 1, None, None);
            o.idle_hold = Some(Duration::from_secs(3));
            o
        }),
    };
    sections.push(measure(&idle, &proxies, &backend)?);

    let info = RunInfo {
        date: today(),
        machine: machine_description(),
        command: options.command.clone(),
        notes,
    };
    let markdown = report::markdown(&info, &sections);
    std::fs::write(options.out_dir.join("report.md"), &markdown).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "info": info,
        "sections": sections,
    }))
    .map_err(|e| e.to_string())?;
    std::fs::write(options.out_dir.join("results.json"), json).map_err(|e| e.to_string())?;
    drop(caddy);
    drop(nginx);
    drop(haproxy);
    drop(spooky_http1);
    drop(spooky);
    drop(http1_backend);
    drop(backend);
    Ok(markdown)
}

fn load_options(
    url: &str,
    path: &str,
    threads: usize,
    connections: usize,
    streams: usize,
    duration: Option<Duration>,
    rate: Option<f64>,
) -> LoadOptions {
    let mut o = LoadOptions::new(&format!("{url}{path}"));
    o.threads = threads.min(connections).max(1);
    o.connections = connections;
    o.streams = streams;
    o.duration = duration;
    o.rate = rate;
    o
}

/// A report row's target: a proxy, reached over HTTP/3 or over its TCP+TLS listener.
struct Endpoint<'a> {
    name: &'static str,
    server: &'a Server,
    tcp: bool,
    /// Measured only in the scenarios whose requests reach the backend (`Scenario::tcp`).
    only_backend_bound: bool,
}

impl Endpoint<'_> {
    fn options(&self, scenario: &Scenario) -> LoadOptions {
        let mut options = (scenario.options)(&self.server.url);
        options.tcp = self.tcp;
        options
    }
}

/// Runs one scenario against each proxy and, where it applies, the backend directly.
fn measure(
    scenario: &Scenario,
    proxies: &[Endpoint<'_>],
    backend: &Server,
) -> Result<Section, String> {
    let mut rows = Vec::new();
    for proxy in proxies {
        if proxy.only_backend_bound && !scenario.tcp {
            continue;
        }
        eprintln!("{}: {}", scenario.name, proxy.name);
        let pid = proxy.server.pid();
        warm_up(proxy.options(scenario))?;
        let cpu_before = procfs::cpu_seconds(&pid.to_string()).map_err(|e| e.to_string())?;
        let rss_before = procfs::rss_bytes(&pid.to_string()).ok();
        let result = load::run(&proxy.options(scenario)).map_err(|e| e.to_string())?;
        let cpu_after = procfs::cpu_seconds(&pid.to_string()).map_err(|e| e.to_string())?;
        let rss_after = procfs::rss_bytes(&pid.to_string()).ok();
        let mut row = row_from(proxy.name, &result);
        row.proxy_cpu_seconds = Some(cpu_after - cpu_before);
        row.proxy_rss_before_bytes = rss_before;
        row.proxy_rss_bytes = rss_after;
        rows.push(row);
    }
    if scenario.direct {
        eprintln!("{}: direct", scenario.name);
        warm_up((scenario.options)(&backend.url))?;
        let result = load::run(&(scenario.options)(&backend.url)).map_err(|e| e.to_string())?;
        rows.push(row_from("direct", &result));
    }
    Ok(Section {
        name: scenario.name.into(),
        description: scenario.description.clone(),
        rows,
    })
}

/// One unmeasured second of the scenario's load, so that connection pools, caches and the
/// congestion window are warm when measuring starts (timed scenarios only).
fn warm_up(mut options: LoadOptions) -> Result<(), String> {
    if options.duration.is_none() || options.handshake_only {
        return Ok(());
    }
    options.duration = Some(Duration::from_secs(1));
    load::run(&options).map(|_| ()).map_err(|e| e.to_string())
}

fn row_from(target: &str, result: &load::LoadReport) -> Row {
    // A handshake-only run reports handshakes in the request columns.
    let handshakes = result.options.handshake_only;
    let latency = if handshakes {
        &result.handshake_latency_us
    } else {
        &result.latency_us
    };
    Row {
        target: target.into(),
        requests: if handshakes {
            result.handshakes
        } else {
            result.requests_completed
        },
        errors: result.errors.values().sum(),
        seconds: result.elapsed_seconds,
        requests_per_second: if handshakes {
            result.handshakes_per_second
        } else {
            result.requests_per_second
        },
        handshakes_per_second: result.handshakes_per_second,
        p50_us: latency.p50,
        p90_us: latency.p90,
        p99_us: latency.p99,
        p999_us: latency.p999,
        max_us: latency.max,
        body_bytes: result.bytes_received + result.bytes_sent,
        proxy_cpu_seconds: None,
        proxy_rss_bytes: None,
        proxy_rss_before_bytes: None,
        connections: result.connections_established,
    }
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // Not available_parallelism: that counts only the CPUs this pinned process may use.
    let cores = shards::sys::online_cpus();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} CPUs online, Linux {kernel}")
}

/// Where the report of a run goes by default.
pub fn default_out_dir() -> PathBuf {
    Path::new("target").join("bench-report")
}
