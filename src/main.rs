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

const USAGE: &str = "\
usage:
  spooky --config FILE          run the proxy with FILE (TOML)
  spooky --cores LIST --config FILE
                                run with one shard per CPU in LIST (e.g. 0-3 or 0,2),
                                overriding [runtime] in FILE
  spooky --admin ADDR --config FILE
                                serve the admin endpoint on ADDR (IP:port), overriding [admin]
  spooky --config FILE --check  validate FILE and exit: 0 when valid, 1 when not
  spooky --demo [--port PORT]   run a demo: self-signed certificates, a built-in backend,
                                listening on 127.0.0.1:PORT (default 8443)
  spooky --version | --help";

enum Command {
    Run {
        config: PathBuf,
        check_only: bool,
        cores: Option<Vec<usize>>,
        admin: Option<std::net::SocketAddr>,
    },
    Demo {
        port: u16,
    },
    Help,
    Version,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut config = None;
    let mut check_only = false;
    let mut demo = false;
    let mut port = 8443u16;
    let mut cores = None;
    let mut admin = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                let value = iter.next().ok_or("--config needs a file path")?;
                config = Some(PathBuf::from(value));
            }
            "--check" => check_only = true,
            "--admin" => {
                let value = iter.next().ok_or("--admin needs an IP:port address")?;
                admin = Some(
                    value
                        .parse()
                        .map_err(|_| format!("--admin: {value:?} is not an IP:port address"))?,
                );
            }
            "--cores" => {
                let value = iter.next().ok_or("--cores needs a CPU list such as 0-3")?;
                cores = Some(spooky::cpulist::parse(value).map_err(|e| format!("--cores: {e}"))?);
            }
            "--demo" => demo = true,
            "--port" => {
                let value = iter.next().ok_or("--port needs a number")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port: {value:?} is not a port number"))?;
            }
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match (config, demo) {
        (Some(_), true) => Err("--demo and --config cannot be combined".into()),
        (Some(config), false) => Ok(Command::Run {
            config,
            check_only,
            cores,
            admin,
        }),
        (None, true) if check_only => Err("--check needs --config".into()),
        (None, true) => Ok(Command::Demo { port }),
        (None, false) => Err("missing --config FILE (or --demo)".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("spooky: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("spooky {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run {
            config,
            check_only,
            cores,
            admin,
        } => run_config(config, check_only, cores, admin),
        Command::Demo { port } => run_demo(port),
    }
}

fn init_logging(level: log::LevelFilter, format: LogFormat) {
    // RUST_LOG, when set, overrides the configured level.
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level).parse_default_env();
    if format == LogFormat::Json {
        builder.format(|out, record| {
            use std::io::Write;
            writeln!(
                out,
                "{{\"ts\":\"{}\",\"level\":\"{}\",\"target\":{},\"msg\":{}}}",
                out.timestamp_micros(),
                record.level(),
                spooky::jsonstr::quote(record.target()),
                spooky::jsonstr::quote(&record.args().to_string())
            )
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
