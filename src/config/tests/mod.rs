//! One test per rejection class, each pinning the exact key path an operator would be sent to,
//! plus acceptance of a full file, of the defaults, and of the shipped example.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use log::LevelFilter;
use shards::plan::{
    BackendProtocol, Balancing, KeepAlive, QuicSettings, RetryMode, UpstreamTimeouts,
    DEFAULT_KEEPALIVE,
};

use super::validate::{format_cpu_list, Host};
use super::*;
use crate::selfsigned::{self, GeneratedCerts};

/// A private directory holding generated certificates and the config file under test.
struct Scratch {
    dir: PathBuf,
    certs: GeneratedCerts,
}

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "spooky-config-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        let certs = selfsigned::generate(&dir).expect("generate test certificates");
        Scratch { dir, certs }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("spooky.toml")
    }

    /// Parses against a fixed set of CPUs so results do not depend on the machine running them.
    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        parse_with_host(text, &self.config_path(), &four_cpus())
    }

    fn problems(&self, text: &str) -> Vec<Problem> {
        match self.parse(text) {
            Ok(_) => panic!("configuration was accepted:\n{text}"),
            Err(e) => e.problems().to_vec(),
        }
    }

    fn tls_line(&self) -> String {
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            self.certs.cert_chain.display(),
            self.certs.private_key.display()
        )
    }

    /// Every key set, none at its default.
    fn full(&self) -> String {
        format!(
            r#"
[listen]
address = "127.0.0.1"
port = 8443
{tls}

[runtime]
cores = [2, 1]

[quic]
idle_timeout_ms = 10000
max_concurrent_streams = 100
stream_window = 65536
connection_window = 1048576
max_udp_payload_size = 1452
path_mtu_discovery = false

[upstream.api_pool]
route = {{ path_prefix = "/api" }}
load_balancing = {{ type = "random" }}
timeouts = {{ connect_ms = 500, response_headers_ms = 5000 }}

[[upstream.api_pool.backends]]
id = "api-01"
address = "10.0.10.10:8080"
weight = 100

[[upstream.api_pool.backends]]
id = "api-02"
address = "[2001:db8::11]:8080"
weight = 50

[upstream.default_pool]
route = {{ path_prefix = "/" }}
load_balancing = {{ type = "round-robin" }}

[[upstream.default_pool.backends]]
id = "web-01"
address = "10.0.30.10:8080"

[log]
level = "debug"
"#,
            tls = self.tls_line()
        )
    }

    /// Only the required keys.
    fn minimal(&self) -> String {
        format!(
            r#"
[listen]
address = "::"
port = 443
{tls}

[upstream.app]
route = {{ path_prefix = "/" }}

[[upstream.app.backends]]
id = "app-1"
address = "127.0.0.1:9000"
"#,
            tls = self.tls_line()
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn four_cpus() -> Host {
    Host {
        allowed_cpus: Some((0..4).collect()),
    }
}

/// `text` with `from` replaced by `to`; panics if `from` is absent so a test cannot silently
/// stop testing anything when the fixture changes.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture does not contain {from:?}");
    text.replacen(from, to, 1)
}

/// Asserts that some problem has exactly `key` and a message containing `fragment`.
#[track_caller]
fn assert_problem(problems: &[Problem], key: &str, fragment: &str) {
    let found = problems
        .iter()
        .any(|p| p.key == key && p.message.contains(fragment));
    assert!(
        found,
        "expected a problem at `{key}` mentioning {fragment:?}, got:\n{problems:#?}"
    );
}

mod acceptance;
mod example;
mod fuzz;
mod parse_errors;
mod semantic_errors;
