//! One test per rejection class, each pinning the exact key path an operator would be sent to,
//! plus acceptance of a full file, of the defaults, and of the shipped example.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use log::LevelFilter;
use shards::plan::{Balancing, QuicSettings, UpstreamTimeouts};

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

// ---------------------------------------------------------------------------------------------
// Acceptance

#[test]
fn accepts_full_example() {
    let s = Scratch::new();
    let config = s.parse(&s.full()).expect("full example is valid");

    assert_eq!(config.listen_addr(), "127.0.0.1:8443".parse().unwrap());
    assert_eq!(config.cores(), vec![2, 1]);
    assert_eq!(config.log_level(), LevelFilter::Debug);
    assert_eq!(config.origin(), s.config_path());

    let plan = config.plan();
    assert_eq!(plan.tls.cert_chain, s.certs.cert_chain);
    assert_eq!(plan.tls.private_key, s.certs.private_key);
    assert_eq!(plan.quic.idle_timeout, Duration::from_secs(10));
    assert_eq!(plan.quic.max_concurrent_streams, 100);
    assert_eq!(plan.quic.stream_window, 65536);
    assert_eq!(plan.quic.connection_window, 1048576);
    assert_eq!(plan.quic.max_udp_payload, 1452);

    // File order, not alphabetical: the index is the upstream id.
    let names: Vec<&str> = plan.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["api_pool", "default_pool"]);
    let api = &plan.upstreams[0];
    assert_eq!(api.route.path_prefix, "/api");
    assert_eq!(api.balancing, Balancing::Random);
    assert_eq!(api.timeouts.connect, Duration::from_millis(500));
    assert_eq!(api.timeouts.response_headers, Duration::from_secs(5));
    assert_eq!(api.backends.len(), 2);
    assert_eq!(api.backends[0].id, "api-01");
    assert_eq!(api.backends[0].address, "10.0.10.10:8080".parse().unwrap());
    assert_eq!(
        api.backends[1].address,
        "[2001:db8::11]:8080".parse().unwrap()
    );
    assert_eq!(api.backends[1].weight, 50);
    assert_eq!(plan.upstreams[1].balancing, Balancing::RoundRobin);
}

#[test]
fn accepts_defaults() {
    let s = Scratch::new();
    let config = s.parse(&s.minimal()).expect("minimal example is valid");

    assert_eq!(config.listen_addr(), "[::]:443".parse().unwrap());
    assert_eq!(config.cores(), vec![0]);
    assert_eq!(config.log_level(), LevelFilter::Info);

    let plan = config.plan();
    let d = QuicSettings::default();
    assert_eq!(plan.quic.idle_timeout, d.idle_timeout);
    assert_eq!(plan.quic.max_concurrent_streams, d.max_concurrent_streams);
    assert_eq!(plan.quic.stream_window, d.stream_window);
    assert_eq!(plan.quic.connection_window, d.connection_window);
    assert_eq!(plan.quic.max_udp_payload, d.max_udp_payload);

    let app = &plan.upstreams[0];
    assert_eq!(app.balancing, Balancing::RoundRobin);
    let t = UpstreamTimeouts::default();
    assert_eq!(app.timeouts.connect, t.connect);
    assert_eq!(app.timeouts.response_headers, t.response_headers);
    assert_eq!(app.backends[0].weight, 100);
}

#[test]
fn shards_means_the_first_n_cpus() {
    let s = Scratch::new();
    let text = edit(
        &s.minimal(),
        "[upstream.app]",
        "[runtime]\nshards = 3\n\n[upstream.app]",
    );
    assert_eq!(s.parse(&text).expect("valid").cores(), vec![0, 1, 2]);
}

#[test]
fn port_zero_is_accepted_for_the_listener() {
    let s = Scratch::new();
    let text = edit(&s.minimal(), "port = 443", "port = 0");
    assert_eq!(s.parse(&text).expect("valid").listen_addr().port(), 0);
}

#[test]
fn relative_tls_paths_resolve_against_the_config_directory() {
    let s = Scratch::new();
    let text = edit(
        &s.minimal(),
        &s.tls_line(),
        r#"tls = { cert = "cert.pem", key = "./key.pem" }"#,
    );
    let plan = s
        .parse(&text)
        .expect("relative paths next to the config are found")
        .plan();
    assert_eq!(plan.tls.cert_chain, s.dir.join("cert.pem"));
    assert!(plan.tls.private_key.is_absolute());
    assert!(plan.tls.private_key.ends_with("key.pem"));
}

#[test]
fn load_reads_the_file() {
    let s = Scratch::new();
    fs::write(s.config_path(), s.minimal()).expect("write config");
    let config = load(&s.config_path()).expect("valid file");
    assert_eq!(config.origin(), s.config_path());
}

#[test]
fn real_affinity_is_consulted() {
    let host = Host::current();
    let allowed = host
        .allowed_cpus
        .clone()
        .expect("sched_getaffinity works on Linux");
    assert!(!allowed.is_empty());
    // The first CPU this process may not use: always exists, as CPU_SETSIZE bounds the mask.
    let forbidden = (0..)
        .find(|c| !allowed.contains(c))
        .expect("some CPU is not allowed");
    let usable = *allowed.iter().next().expect("non-empty");

    let s = Scratch::new();
    let with_cores = |cores: &str| {
        edit(
            &s.minimal(),
            "[upstream.app]",
            &format!("[runtime]\ncores = {cores}\n\n[upstream.app]"),
        )
    };
    let ok = parse(&with_cores(&format!("[{usable}]")), &s.config_path()).expect("usable CPU");
    assert_eq!(ok.cores(), vec![usable]);

    let err =
        parse(&with_cores(&format!("[{forbidden}]")), &s.config_path()).expect_err("forbidden CPU");
    assert_problem(
        err.problems(),
        "runtime.cores[0]",
        &format!("allowed CPUs: {}", format_cpu_list(&allowed)),
    );
}

// ---------------------------------------------------------------------------------------------
// Parse errors: one problem, full key path, line number, file name

#[test]
fn unknown_key_names_full_path_and_line() {
    let s = Scratch::new();
    let text = edit(&s.full(), "weight = 50", "wieght = 50");
    let err = s.parse(&text).expect_err("misspelt key");
    assert_eq!(err.kind(), ErrorKind::Parse);
    let p = &err.problems()[0];
    assert_eq!(p.key, "upstream.api_pool.backends[1].wieght");
    assert!(p.message.contains("unknown field `wieght`"), "{p:?}");
    let expected_line = text.lines().position(|l| l.contains("wieght")).unwrap() + 1;
    assert_eq!(p.line, Some(expected_line));

    let shown = err.to_string();
    let prefix = format!(
        "{}:{expected_line}: upstream.api_pool.backends[1].wieght: unknown field",
        s.config_path().display()
    );
    assert!(shown.starts_with(&prefix), "{shown}");
}

#[test]
fn unknown_section_is_rejected() {
    let s = Scratch::new();
    let text = format!("{}\n[metrics]\nport = 9090\n", s.minimal());
    assert_problem(&s.problems(&text), "metrics", "unknown field `metrics`");
}

#[test]
fn wrong_type_names_the_key() {
    let s = Scratch::new();
    let text = edit(&s.minimal(), "port = 443", "port = \"443\"");
    assert_problem(
        &s.problems(&text),
        "listen.port",
        "invalid type: string \"443\", expected an integer",
    );
}

#[test]
fn missing_required_key_names_its_table() {
    let s = Scratch::new();
    let text = edit(&s.minimal(), "address = \"127.0.0.1:9000\"\n", "");
    assert_problem(
        &s.problems(&text),
        "upstream.app.backends[0]",
        "missing field `address`",
    );
}

#[test]
fn unknown_balancing_type_lists_the_supported_ones() {
    let s = Scratch::new();
    let text = edit(&s.full(), "type = \"random\"", "type = \"maglev\"");
    assert_problem(
        &s.problems(&text),
        "upstream.api_pool.load_balancing.type",
        "expected one of `round-robin`, `random`, `least-request`, `consistent-hash`, `latency-aware`",
    );
}

#[test]
fn consistent_hash_needs_a_valid_key_and_others_take_none() {
    let s = Scratch::new();
    let missing = edit(&s.full(), "type = \"random\"", "type = \"consistent-hash\"");
    assert_problem(
        &s.problems(&missing),
        "upstream.api_pool.load_balancing.key",
        "needs a key",
    );
    let bad = edit(
        &s.full(),
        "type = \"random\"",
        "type = \"consistent-hash\", key = \"ip\"",
    );
    assert_problem(
        &s.problems(&bad),
        "upstream.api_pool.load_balancing.key",
        "is not a hash key",
    );
    let stray = edit(
        &s.full(),
        "type = \"random\"",
        "type = \"random\", key = \"path\"",
    );
    assert_problem(
        &s.problems(&stray),
        "upstream.api_pool.load_balancing.key",
        "only `consistent-hash` uses a key",
    );
    let good = edit(
        &s.full(),
        "type = \"random\"",
        "type = \"consistent-hash\", key = \"header:x-user\"",
    );
    assert!(s.parse(&good).is_ok());
}

#[test]
fn toml_syntax_error_has_a_line_and_no_key() {
    let s = Scratch::new();
    let text = edit(&s.minimal(), "port = 443", "port = = 443");
    let err = s.parse(&text).expect_err("not TOML");
    let p = &err.problems()[0];
    assert_eq!(p.key, "");
    let expected_line = text.lines().position(|l| l.contains("port = =")).unwrap() + 1;
    assert_eq!(p.line, Some(expected_line));
    assert!(
        !err.to_string().contains('\n'),
        "one line per problem: {err}"
    );
}

#[test]
fn missing_config_file_names_the_path() {
    let s = Scratch::new();
    let path = s.dir.join("nope.toml");
    let err = load(&path).expect_err("missing file");
    assert_eq!(err.kind(), ErrorKind::Read);
    let shown = err.to_string();
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
    assert!(shown.contains("cannot read configuration file"), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// Semantic errors: every problem, each with its key path

#[test]
fn reports_all_problems_at_once() {
    let s = Scratch::new();
    let text = edit(&s.full(), "weight = 50", "weight = 0");
    let text = edit(&text, "path_prefix = \"/api\"", "path_prefix = \"api\"");
    let text = edit(&text, "level = \"debug\"", "level = \"loud\"");
    let err = s.parse(&text).expect_err("three problems");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "upstream.api_pool.route.path_prefix",
            "upstream.api_pool.backends[1].weight",
            "log.level"
        ]
    );
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 3, "{shown}");
    let origin = s.config_path().display().to_string();
    assert!(shown.lines().all(|l| l.starts_with(&origin)), "{shown}");
}

#[test]
fn missing_cert_file() {
    let s = Scratch::new();
    fs::remove_file(&s.certs.cert_chain).expect("remove cert");
    let problems = s.problems(&s.minimal());
    assert_problem(&problems, "listen.tls.cert", "cannot read");
    assert_problem(&problems, "listen.tls.cert", "cert.pem");
}

#[test]
fn missing_key_file_is_resolved_next_to_the_config() {
    let s = Scratch::new();
    let text = edit(
        &s.minimal(),
        &s.tls_line(),
        &format!(
            "tls = {{ cert = \"{}\", key = \"secret/key.pem\" }}",
            s.certs.cert_chain.display()
        ),
    );
    let expected = s.dir.join("secret/key.pem").display().to_string();
    assert_problem(
        &s.problems(&text),
        "listen.tls.key",
        &format!("cannot read {expected}"),
    );
}

#[test]
fn unreadable_key_file() {
    let s = Scratch::new();
    // A directory exists but cannot be read as a file; unlike chmod 000 this also fails as root.
    let text = edit(
        &s.minimal(),
        &s.tls_line(),
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            s.certs.cert_chain.display(),
            s.dir.display()
        ),
    );
    assert_problem(&s.problems(&text), "listen.tls.key", "cannot read");
}

#[test]
fn cert_file_without_certificate() {
    let s = Scratch::new();
    fs::write(&s.certs.cert_chain, "not a certificate\n").expect("write");
    assert_problem(
        &s.problems(&s.minimal()),
        "listen.tls.cert",
        "contains no PEM certificate",
    );
}

#[test]
fn key_file_without_private_key() {
    let s = Scratch::new();
    fs::write(&s.certs.private_key, "").expect("write");
    assert_problem(
        &s.problems(&s.minimal()),
        "listen.tls.key",
        "contains no PEM private key",
    );
}

#[test]
fn swapped_cert_and_key_are_named_as_such() {
    let s = Scratch::new();
    let text = edit(
        &s.minimal(),
        &s.tls_line(),
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            s.certs.private_key.display(),
            s.certs.cert_chain.display()
        ),
    );
    let problems = s.problems(&text);
    assert_problem(&problems, "listen.tls.cert", "swapped");
    assert_problem(&problems, "listen.tls.key", "swapped");
}

#[test]
fn encrypted_key_is_rejected() {
    let s = Scratch::new();
    fs::write(
        &s.certs.private_key,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .expect("write");
    assert_problem(&s.problems(&s.minimal()), "listen.tls.key", "encrypted");
}

#[test]
fn bad_listen_address() {
    let s = Scratch::new();
    let text = edit(
        &s.minimal(),
        "address = \"::\"",
        "address = \"example.com\"",
    );
    assert_problem(&s.problems(&text), "listen.address", "is not an IP address");
}

#[test]
fn listen_port_out_of_range() {
    let s = Scratch::new();
    let text = edit(&s.minimal(), "port = 443", "port = 70000");
    assert_problem(&s.problems(&text), "listen.port", "must be at most 65535");
}

#[test]
fn no_upstreams_when_absent() {
    let s = Scratch::new();
    let text = format!("[listen]\naddress = \"::\"\nport = 443\n{}\n", s.tls_line());
    assert_problem(&s.problems(&text), "upstream", "no upstreams configured");
}

#[test]
fn no_upstreams_when_empty() {
    let s = Scratch::new();
    let text = format!(
        "[listen]\naddress = \"::\"\nport = 443\n{}\n[upstream]\n",
        s.tls_line()
    );
    assert_problem(&s.problems(&text), "upstream", "no upstreams configured");
}

#[test]
fn empty_pool() {
    let s = Scratch::new();
    let text = format!(
        "{}\n[upstream.spare]\nroute = {{ path_prefix = \"/spare\" }}\n",
        s.minimal()
    );
    assert_problem(
        &s.problems(&text),
        "upstream.spare.backends",
        "pool is empty",
    );
}

#[test]
fn duplicate_backend_id_across_upstreams_names_both() {
    let s = Scratch::new();
    let text = edit(&s.full(), "id = \"web-01\"", "id = \"api-02\"");
    assert_problem(
        &s.problems(&text),
        "upstream.default_pool.backends[0].id",
        "duplicate backend id `api-02`, already used at upstream.api_pool.backends[1].id",
    );
}

#[test]
fn duplicate_backend_id_within_a_pool() {
    let s = Scratch::new();
    let text = edit(&s.full(), "id = \"api-02\"", "id = \"api-01\"");
    assert_problem(
        &s.problems(&text),
        "upstream.api_pool.backends[1].id",
        "already used at upstream.api_pool.backends[0].id",
    );
}

#[test]
fn empty_backend_id() {
    let s = Scratch::new();
    let text = edit(&s.full(), "id = \"web-01\"", "id = \"\"");
    assert_problem(
        &s.problems(&text),
        "upstream.default_pool.backends[0].id",
        "must not be empty",
    );
}

#[test]
fn unparsable_backend_address() {
    let s = Scratch::new();
    let text = edit(&s.full(), "\"10.0.30.10:8080\"", "\"web-01.internal:8080\"");
    assert_problem(
        &s.problems(&text),
        "upstream.default_pool.backends[0].address",
        "is not an IP:port socket address",
    );
}

#[test]
fn backend_address_without_port() {
    let s = Scratch::new();
    let text = edit(&s.full(), "\"10.0.30.10:8080\"", "\"10.0.30.10\"");
    assert_problem(
        &s.problems(&text),
        "upstream.default_pool.backends[0].address",
        "is not an IP:port socket address",
    );
}

#[test]
fn backend_port_zero() {
    let s = Scratch::new();
    let text = edit(&s.full(), "\"10.0.30.10:8080\"", "\"10.0.30.10:0\"");
    assert_problem(
        &s.problems(&text),
        "upstream.default_pool.backends[0].address",
        "port 0",
    );
}

#[test]
fn weight_zero() {
    let s = Scratch::new();
    let text = edit(&s.full(), "weight = 50", "weight = 0");
    assert_problem(
        &s.problems(&text),
        "upstream.api_pool.backends[1].weight",
        "must be at least 1, got 0",
    );
}

#[test]
fn weight_too_large() {
    let s = Scratch::new();
    let text = edit(&s.full(), "weight = 50", "weight = 10001");
    assert_problem(
        &s.problems(&text),
        "upstream.api_pool.backends[1].weight",
        "must be at most 10000",
    );
}

#[test]
fn path_prefix_without_leading_slash() {
    let s = Scratch::new();
    let text = edit(&s.full(), "path_prefix = \"/api\"", "path_prefix = \"api\"");
    assert_problem(
        &s.problems(&text),
        "upstream.api_pool.route.path_prefix",
        "must start with '/'",
    );
}

#[test]
fn duplicate_path_prefix_names_both_upstreams() {
    let s = Scratch::new();
    let text = edit(&s.full(), "path_prefix = \"/\"", "path_prefix = \"/api\"");
    let problems = s.problems(&text);
    assert_problem(
        &problems,
        "upstream.default_pool.route.path_prefix",
        "upstream.api_pool and upstream.default_pool have the same route",
    );
    assert_eq!(problems.len(), 1, "{problems:#?}");
}

#[test]
fn both_cores_and_shards() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "cores = [2, 1]\nshards = 2");
    assert_problem(&s.problems(&text), "runtime", "not both");
}

#[test]
fn zero_shards() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "shards = 0");
    assert_problem(&s.problems(&text), "runtime.shards", "must be at least 1");
}

#[test]
fn more_shards_than_allowed_cpus() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "shards = 6");
    assert_problem(
        &s.problems(&text),
        "runtime.shards",
        "may only run on CPUs 0-3",
    );
}

#[test]
fn empty_cores() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "cores = []");
    assert_problem(
        &s.problems(&text),
        "runtime.cores",
        "must list at least one CPU",
    );
}

#[test]
fn duplicate_cores() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "cores = [2, 1, 2]");
    assert_problem(
        &s.problems(&text),
        "runtime.cores[2]",
        "CPU 2 is listed twice (also at runtime.cores[0])",
    );
}

#[test]
fn negative_core() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "cores = [-1]");
    assert_problem(
        &s.problems(&text),
        "runtime.cores[0]",
        "must not be negative",
    );
}

#[test]
fn unavailable_core_names_allowed_cpus() {
    let s = Scratch::new();
    let text = edit(&s.full(), "cores = [2, 1]", "cores = [1, 7]");
    assert_problem(
        &s.problems(&text),
        "runtime.cores[1]",
        "CPU 7 is not available to this process (allowed CPUs: 0-3)",
    );
}

#[test]
fn default_core_unavailable() {
    let s = Scratch::new();
    let host = Host {
        allowed_cpus: Some([2, 3].into_iter().collect()),
    };
    let err =
        parse_with_host(&s.minimal(), &s.config_path(), &host).expect_err("CPU 0 not allowed");
    assert_problem(err.problems(), "runtime", "CPU 0, which is not available");
}

#[test]
fn zero_idle_timeout() {
    let s = Scratch::new();
    let text = edit(&s.full(), "idle_timeout_ms = 10000", "idle_timeout_ms = 0");
    assert_problem(
        &s.problems(&text),
        "quic.idle_timeout_ms",
        "must be at least 1 ms, got 0",
    );
}

#[test]
fn zero_max_concurrent_streams() {
    let s = Scratch::new();
    let text = edit(
        &s.full(),
        "max_concurrent_streams = 100",
        "max_concurrent_streams = 0",
    );
    assert_problem(
        &s.problems(&text),
        "quic.max_concurrent_streams",
        "must be at least 1, got 0",
    );
}

#[test]
fn windows_below_16_kib() {
    let s = Scratch::new();
    let text = edit(&s.full(), "stream_window = 65536", "stream_window = 16383");
    let text = edit(
        &text,
        "connection_window = 1048576",
        "connection_window = 1000",
    );
    let problems = s.problems(&text);
    assert_problem(
        &problems,
        "quic.stream_window",
        "must be at least 16384 bytes, got 16383",
    );
    assert_problem(
        &problems,
        "quic.connection_window",
        "must be at least 16384 bytes, got 1000",
    );
}

#[test]
fn udp_payload_out_of_range() {
    let s = Scratch::new();
    let low = edit(
        &s.full(),
        "max_udp_payload_size = 1452",
        "max_udp_payload_size = 1199",
    );
    assert_problem(
        &s.problems(&low),
        "quic.max_udp_payload_size",
        "must be at least 1200 bytes",
    );
    let high = edit(
        &s.full(),
        "max_udp_payload_size = 1452",
        "max_udp_payload_size = 65528",
    );
    assert_problem(
        &s.problems(&high),
        "quic.max_udp_payload_size",
        "must be at most 65527 bytes",
    );
}

#[test]
fn steering_settings_are_checked() {
    let s = Scratch::new();
    let unknown = edit(
        &s.full(),
        "max_udp_payload_size = 1452",
        "max_udp_payload_size = 1452\nsteering = \"cbpf\"",
    );
    assert_problem(
        &s.problems(&unknown),
        "quic.steering",
        "unknown steering `cbpf`; expected \"auto\", \"bpf\" or \"off\"",
    );
    let relative = edit(
        &s.full(),
        "max_udp_payload_size = 1452",
        "max_udp_payload_size = 1452\nbpf_pin_dir = \"bpf/spooky\"",
    );
    assert_problem(
        &s.problems(&relative),
        "quic.bpf_pin_dir",
        "must be an absolute path",
    );
}

#[test]
fn invalid_log_level() {
    let s = Scratch::new();
    let text = edit(&s.full(), "level = \"debug\"", "level = \"verbose\"");
    assert_problem(
        &s.problems(&text),
        "log.level",
        "unknown log level `verbose`",
    );
}

#[test]
fn zero_timeouts() {
    let s = Scratch::new();
    let text = edit(
        &s.full(),
        "connect_ms = 500, response_headers_ms = 5000",
        "connect_ms = 0, response_headers_ms = 0",
    );
    let problems = s.problems(&text);
    assert_problem(
        &problems,
        "upstream.api_pool.timeouts.connect_ms",
        "must be at least 1 ms, got 0",
    );
    assert_problem(
        &problems,
        "upstream.api_pool.timeouts.response_headers_ms",
        "must be at least 1 ms, got 0",
    );
}

// ---------------------------------------------------------------------------------------------
// The shipped example

#[test]
fn deploy_example_is_valid() {
    let example_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.toml");
    let example = fs::read_to_string(&example_path).expect("read deploy/config.example.toml");
    let s = Scratch::new();
    let text = edit(
        &example,
        "/etc/spooky/certs/fullchain.pem",
        &s.certs.cert_chain.display().to_string(),
    );
    let text = edit(
        &text,
        "/etc/spooky/certs/privkey.pem",
        &s.certs.private_key.display().to_string(),
    );
    let config = s
        .parse(&text)
        .unwrap_or_else(|e| panic!("example rejected:\n{e}"));

    let plan = config.plan();
    let prefixes: Vec<&str> = plan
        .upstreams
        .iter()
        .map(|u| u.route.path_prefix.as_str())
        .collect();
    assert_eq!(prefixes, ["/api", "/"]);
    assert!(plan.upstreams.iter().all(|u| u.backends.len() == 2));
}

#[test]
fn cpu_list_format_matches_the_kernel() {
    let set: BTreeSet<usize> = [0, 1, 2, 3, 8, 10, 11].into_iter().collect();
    assert_eq!(format_cpu_list(&set), "0-3,8,10-11");
    assert_eq!(format_cpu_list(&BTreeSet::new()), "none");
}

#[test]
fn route_host_and_method_are_checked_and_make_routes_distinct() {
    let s = Scratch::new();
    // Same prefix, different host or method: not ambiguous.
    let by_host = edit(
        &s.full(),
        "path_prefix = \"/\"",
        "path_prefix = \"/api\", host = \"*.example.com\"",
    );
    assert!(s.parse(&by_host).is_ok());
    let by_method = edit(
        &s.full(),
        "path_prefix = \"/\"",
        "path_prefix = \"/api\", method = \"POST\"",
    );
    assert!(s.parse(&by_method).is_ok());
    let bad_host = edit(
        &s.full(),
        "path_prefix = \"/\"",
        "path_prefix = \"/\", host = \"a.*.com\"",
    );
    assert_problem(
        &s.problems(&bad_host),
        "upstream.default_pool.route.host",
        "is not a host name",
    );
    let bad_method = edit(
        &s.full(),
        "path_prefix = \"/\"",
        "path_prefix = \"/\", method = \"get\"",
    );
    assert_problem(
        &s.problems(&bad_method),
        "upstream.default_pool.route.method",
        "upper case",
    );
}
