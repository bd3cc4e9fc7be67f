//! The `spooky` command line.
//!
//! `spooky --config FILE` runs the proxy; `--check` only validates the file; `--demo` runs a
//! self-contained default (generated certificates, built-in backend) for a first look.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use spooky::config::LogFormat;
use spooky::signals::{Signal, SignalSet};
use spooky::{config, demo, ProxySettings, RunningProxy};

/// Thread-per-core HTTP/3 load balancer.
///
/// SIGHUP reloads the configuration file, SIGTERM and SIGINT drain and stop.
#[derive(clap::Parser)]
#[command(name = "spooky", version)]
struct Cli {
    /// Run the proxy with this configuration file (TOML).
    #[arg(short, long, value_name = "FILE", required_unless_present = "demo")]
    config: Option<PathBuf>,
    /// Only validate the configuration file, then exit: 0 when valid, 1 when not.
    #[arg(long, requires = "config")]
    check: bool,
    /// Run one shard per CPU in LIST (e.g. 0-3 or 0,2), overriding [runtime] in the file; how
    /// the spooky@ systemd template gives each instance its cores.
    #[arg(long, value_name = "LIST", requires = "config", value_parser = parse_cores)]
    cores: Option<CpuList>,
    /// Serve the admin endpoint on ADDR (IP:port), overriding [admin] in the file.
    #[arg(long, value_name = "ADDR", requires = "config")]
    admin: Option<std::net::SocketAddr>,
    /// Run a demo: generated certificates, a built-in HTTP/2 backend, HTTP/3 on 127.0.0.1:PORT.
    #[arg(long, conflicts_with = "config")]
    demo: bool,
    /// The demo's UDP port.
    #[arg(long, value_name = "PORT", default_value_t = 8443, requires = "demo")]
    port: u16,
}

/// A `--cores` list, parsed.
#[derive(Clone, Debug)]
struct CpuList(Vec<usize>);

fn parse_cores(text: &str) -> Result<CpuList, String> {
    spooky::cpulist::parse(text).map(CpuList)
}

/// jemalloc, whose background thread gives memory back to the system about a second after it is
/// freed, so the resident size falls after a burst of connections instead of staying at its peak
/// (docs/operations.md, "Memory growth"; options in .cargo/config.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Usage errors print clap's message and exit with status 2.
    let cli = <Cli as clap::Parser>::parse();
    match cli.config {
        Some(config) => run_config(config, cli.check, cli.cores.map(|c| c.0), cli.admin),
        None => run_demo(cli.port),
    }
}

fn init_logging(level: log::LevelFilter, format: LogFormat) {
    // RUST_LOG, when set, overrides the configured level.
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level).parse_default_env();
    if format == LogFormat::Json {
        builder.format(|out, record| {
            use std::io::Write;
            /// One log line; fields in this order, `ts` first.
            #[derive(serde::Serialize)]
            struct Line<'a> {
                ts: String,
                level: &'a str,
                target: &'a str,
                msg: String,
            }
            let line = Line {
                ts: out.timestamp_micros().to_string(),
                level: record.level().as_str(),
                target: record.target(),
                msg: record.args().to_string(),
            };
            let text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
            writeln!(out, "{text}")
        });
    }
    builder.init();
}

fn run_config(
    path: PathBuf,
    check_only: bool,
    cores: Option<Vec<usize>>,
    admin: Option<std::net::SocketAddr>,
) -> ExitCode {
    let cores_override = cores.clone();
    let loaded = config::load_with_cores(&path, cores);
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if check_only {
        println!("{}: configuration is valid", path.display());
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_level(), config.log_format());
    let drain_timeout = config.drain_timeout();
    serve_with(
        ProxySettings {
            listen: config.listen_addr(),
            cores: config.cores(),
            plan: config.plan(),
        },
        drain_timeout,
        admin.or(config.admin_addr()),
        Some(Reloader {
            path,
            cores_override,
        }),
        None,
    )
}

/// Where a SIGHUP re-reads the configuration from.
struct Reloader {
    path: PathBuf,
    cores_override: Option<Vec<usize>>,
}

impl Reloader {
    fn reload(&self, proxy: &mut RunningProxy) {
        let loaded = config::load_with_cores(&self.path, self.cores_override.clone());
        let config = match loaded {
            Ok(config) => config,
            Err(e) => {
                log::error!("reload rejected, still serving the previous configuration:\n{e}");
                return;
            }
        };
        let settings = ProxySettings {
            listen: config.listen_addr(),
            cores: config.cores(),
            plan: config.plan(),
        };
        match proxy.reload(settings) {
            Ok(needs_restart) if needs_restart.is_empty() => {
                log::info!("reloaded {}", self.path.display())
            }
            Ok(needs_restart) => log::warn!(
                "reloaded {}; changes to {} need a restart and were not applied",
                self.path.display(),
                needs_restart.join(", ")
            ),
            Err(e) => log::error!("reload rejected, still serving the previous configuration: {e}"),
        }
    }
}

fn run_demo(port: u16) -> ExitCode {
    init_logging(log::LevelFilter::Info, LogFormat::Text);
    match demo::prepare(port) {
        Ok((settings, guide)) => serve_with(settings, DEMO_DRAIN_TIMEOUT, None, None, Some(guide)),
        Err(e) => {
            eprintln!("spooky: demo setup failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The demo has no configuration file; a short drain keeps Ctrl-C snappy.
const DEMO_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a shard may stay stalled before the process exits.
const STALL_EXIT_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

fn serve_with(
    settings: ProxySettings,
    drain_timeout: Duration,
    admin: Option<std::net::SocketAddr>,
    reloader: Option<Reloader>,
    banner: Option<String>,
) -> ExitCode {
    let signals = match SignalSet::block() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("spooky: cannot block signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut proxy = match RunningProxy::start(settings) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("spooky: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A stalled shard drops its share of the traffic; a restart by the service manager is the
    // better outcome (see spooky::watchdog).
    proxy.exit_on_stall(STALL_EXIT_AFTER);
    log::info!(
        "spooky listening on udp {} with {} shard(s) on cpus {:?}",
        proxy.local_addr(),
        proxy.shard_cpus().len(),
        proxy.shard_cpus()
    );
    if let Some(address) = admin {
        match proxy.start_admin(address) {
            Ok(bound) => log::info!(
                "admin endpoint on http://{bound} (/metrics, /health/live, /health/ready)"
            ),
            Err(e) => {
                log::error!("cannot serve admin endpoint on {address}: {e}");
                let _ = proxy.shutdown();
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(banner) = banner {
        println!("{banner}");
    }
    loop {
        match signals.wait() {
            Ok(Signal::Terminate | Signal::Interrupt) => break,
            Ok(Signal::ShardStalled) => {
                // The stalled shard would never finish a drain: end now, and let the service
                // manager restart the process (docs/operations.md, 'A shard stops answering').
                #[allow(clippy::disallowed_methods)] // main is where the process ends
                std::process::exit(spooky::watchdog::STALL_EXIT_CODE);
            }
            Ok(Signal::Hangup) => match &reloader {
                Some(reloader) => reloader.reload(&mut proxy),
                None => log::warn!("SIGHUP ignored: the demo has no configuration file to reload"),
            },
            Err(e) => {
                log::error!("waiting for signals failed: {e}");
                break;
            }
        }
    }
    log::info!("stopping: draining connections for up to {drain_timeout:?}");
    match proxy.drain(drain_timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("shard failed: {e}");
            ExitCode::FAILURE
        }
    }
}
