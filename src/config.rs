//! Spooky's configuration: reading the operator's TOML file, checking it, and turning it into the
//! data plane's [`ProxyPlan`].
//!
//! This module owns every decision about what a valid configuration is, so that the rest of the
//! process only ever sees checked values: the runtime asks a [`Config`] where to listen, which CPUs
//! to pin shards to and how loud to log, and hands each shard the [`ProxyPlan`] from
//! [`Config::plan`]. Nothing downstream re-validates.
//!
//! Loading happens in two stages with different error behaviour:
//! 1. [`model`] deserializes the TOML into plain structs that reject unknown keys. Serde stops at
//!    the first mismatch, so this stage reports one problem, with its full key path (thanks to
//!    `serde_path_to_error`) and line.
//! 2. [`validate`] checks values, the certificate files and the CPUs, and reports every problem it
//!    finds, so an operator can fix a file in one pass.
//!
//! The schema is documented for operators in `docs/configuration.md`; keep the two in step.

mod error;
mod model;
mod validate;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;
use shards::plan::ProxyPlan;

pub use error::{ConfigError, ErrorKind, Problem};

use model::RawConfig;
use validate::Host;

/// A configuration that passed every check.
#[derive(Clone, Debug)]
pub struct Config {
    origin: PathBuf,
    listen: SocketAddr,
    cores: Vec<usize>,
    drain_timeout: Duration,
    admin: Option<SocketAddr>,
    log_level: LevelFilter,
    log_format: LogFormat,
    plan: ProxyPlan,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// env_logger's human-readable lines.
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `msg`.
    Json,
}

impl Config {
    /// The UDP address to bind the QUIC listener to. Port 0 means the kernel picks a free port.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// One entry per shard: the CPU that shard's thread is pinned to, in configuration order.
    /// Never empty, never contains duplicates, and every CPU was in this process's affinity mask
    /// when the configuration was loaded.
    pub fn cores(&self) -> Vec<usize> {
        self.cores.clone()
    }

    /// How long a graceful stop (SIGTERM, SIGINT) waits for requests in flight.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// Where the admin endpoint listens (TCP), if it is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    pub fn log_level(&self) -> LevelFilter {
        self.log_level
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format
    }

    /// The plan every shard receives. Certificate paths in it are absolute.
    pub fn plan(&self) -> ProxyPlan {
        self.plan.clone()
    }

    /// Replaces the file's `[runtime]` CPUs with `cores` (from `spooky --cores`, which a systemd
    /// template instance passes), checked against this process's affinity mask like the file's.
    pub fn override_cores(&mut self, cores: Vec<usize>) -> Result<(), ConfigError> {
        if cores.is_empty() {
            return Err(self.cores_error("the CPU list is empty".into()));
        }
        if let Some(allowed) = Host::current().allowed_cpus {
            let unavailable: Vec<usize> = cores
                .iter()
                .copied()
                .filter(|c| !allowed.contains(c))
                .collect();
            if !unavailable.is_empty() {
                return Err(self.cores_error(format!(
                    "CPU(s) {unavailable:?} are not available to this process (allowed: {})",
                    validate::format_cpu_list(&allowed)
                )));
            }
        }
        self.cores = cores;
        Ok(())
    }

    fn cores_error(&self, message: String) -> ConfigError {
        ConfigError::new(
            &self.origin,
            ErrorKind::Invalid,
            vec![Problem::new("--cores", message)],
        )
    }

    /// The file this configuration was read from (or the origin passed to [`parse`]).
    pub fn origin(&self) -> &Path {
        &self.origin
    }
}

/// Reads and checks the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    parse(&read(path)?, path)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path,
            ErrorKind::Read,
            vec![Problem::new(
                "",
                format!("cannot read configuration file: {e}"),
            )],
        )
    })
}

/// Reads the file at `path` for a process whose CPUs come from `spooky --cores` instead of the
/// file's `[runtime]`: the file's CPU choice is then not checked against this process's affinity
/// mask (a systemd instance is pinned to its own CPUs), and `cores` is checked instead.
pub fn load_with_cores(path: &Path, cores: Option<Vec<usize>>) -> Result<Config, ConfigError> {
    let Some(cores) = cores else {
        return load(path);
    };
    let text = read(path)?;
    let unchecked = Host { allowed_cpus: None };
    let mut config = parse_with_host(&text, path, &unchecked)?;
    config.override_cores(cores)?;
    Ok(config)
}

/// Checks configuration `text` as if it had been read from `origin`.
///
/// `origin` names the file in error messages, and relative certificate paths are resolved against
/// its directory. CPU indices are checked against the calling thread's affinity mask, so call this
/// before pinning any thread.
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    parse_with_host(text, origin, &Host::current())
}

fn parse_with_host(text: &str, origin: &Path, host: &Host) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| ConfigError::new(origin, ErrorKind::Parse, vec![parse_problem(text, &e)]))?;
    validate::validate(raw, origin, host)
        .map_err(|problems| ConfigError::new(origin, ErrorKind::Invalid, problems))
}

fn parse_problem(text: &str, e: &serde_path_to_error::Error<toml::de::Error>) -> Problem {
    let path = e.path().to_string();
    // serde_path_to_error renders the document root as "."; syntax errors happen there, before
    // any key is known, and are better shown with no key at all.
    let key = if path == "." { String::new() } else { path };
    let inner = e.inner();
    Problem {
        key,
        // toml's syntax messages can span lines; keep the one-problem-per-line contract.
        message: inner.message().trim().replace('\n', "; "),
        line: inner.span().map(|span| line_of(text, span.start)),
    }
}

/// 1-based line number of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
