//! The `spooky` command line.
//!
//! `spooky --config FILE` runs the proxy; `--check` only validates the file; `--demo` runs a
//! self-contained default (generated certificates, built-in backend) for a first look.

use std::path::PathBuf;
use std::process::ExitCode;

use spooky::signals::{Signal, SignalSet};
use spooky::{config, demo, ProxySettings, RunningProxy};

const USAGE: &str = "\
usage:
  spooky --config FILE          run the proxy with FILE (TOML)
  spooky --config FILE --check  validate FILE and exit: 0 when valid, 1 when not
  spooky --demo [--port PORT]   run a demo: self-signed certificates, a built-in backend,
                                listening on 127.0.0.1:PORT (default 8443)
  spooky --version | --help";

enum Command {
    Run { config: PathBuf, check_only: bool },
    Demo { port: u16 },
    Help,
    Version,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut config = None;
    let mut check_only = false;
    let mut demo = false;
    let mut port = 8443u16;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                let value = iter.next().ok_or("--config needs a file path")?;
                config = Some(PathBuf::from(value));
            }
            "--check" => check_only = true,
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
        (Some(config), false) => Ok(Command::Run { config, check_only }),
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
        Command::Run { config, check_only } => run_config(config, check_only),
        Command::Demo { port } => run_demo(port),
    }
}

fn init_logging(level: log::LevelFilter) {
    // RUST_LOG, when set, overrides the configured level.
    env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .init();
}

fn run_config(path: PathBuf, check_only: bool) -> ExitCode {
    let config = match config::load(&path) {
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
    init_logging(config.log_level());
    serve(ProxySettings {
        listen: config.listen_addr(),
        cores: config.cores(),
        plan: config.plan(),
    })
}

fn run_demo(port: u16) -> ExitCode {
    init_logging(log::LevelFilter::Info);
    match demo::prepare(port) {
        Ok((settings, guide)) => {
            let code = serve_with(settings, Some(guide));
            code
        }
        Err(e) => {
            eprintln!("spooky: demo setup failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: ProxySettings) -> ExitCode {
    serve_with(settings, None)
}

fn serve_with(settings: ProxySettings, banner: Option<String>) -> ExitCode {
    let signals = match SignalSet::block() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("spooky: cannot block signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let proxy = match RunningProxy::start(settings) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("spooky: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "spooky listening on udp {} with {} shard(s) on cpus {:?}",
        proxy.local_addr(),
        proxy.shard_cpus().len(),
        proxy.shard_cpus()
    );
    if let Some(banner) = banner {
        println!("{banner}");
    }
    loop {
        match signals.wait() {
            Ok(Signal::Terminate | Signal::Interrupt) => break,
            Ok(Signal::Hangup) => {
                log::warn!("SIGHUP received: live reload is not available yet; restart to apply changes");
            }
            Err(e) => {
                log::error!("waiting for signals failed: {e}");
                break;
            }
        }
    }
    log::info!("stopping");
    match proxy.shutdown() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("shard failed: {e}");
            ExitCode::FAILURE
        }
    }
}
