//! Shared harness for the end-to-end tests: real HTTP/2 backends on 127.0.0.1, a real proxy built
//! from a TOML configuration, and a real HTTP/3 client, all on ephemeral ports.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spooky::selfsigned::GeneratedCerts;
use spooky::{config, ProxySettings, RunningProxy};
use spooky_bench::backend::{self, BackendHandle, BackendOptions};
use spooky_bench::client::{ClientOptions, H3Client, Verify};

pub mod process;
pub mod python;
pub mod tcp;

/// A fresh directory under the system temp dir, unique per test.
pub fn scratch_dir(label: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "spooky-test-{}-{}-{label}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub fn start_backend(name: &str) -> BackendHandle {
    start_backend_with(name, None)
}

pub fn start_backend_with(name: &str, max_concurrent_streams: Option<u32>) -> BackendHandle {
    backend::start(BackendOptions {
        max_concurrent_streams,
        ..BackendOptions::new("127.0.0.1:0".parse().unwrap(), name)
    })
    .expect("start backend")
}

/// A proxy under test, with the certificates its clients must trust.
pub struct Proxy {
    pub running: RunningProxy,
    pub certs: GeneratedCerts,
    pub dir: PathBuf,
}

impl Proxy {
    /// Starts a proxy from `body`: TOML that holds everything but `[listen]`, which the harness
    /// supplies (127.0.0.1, port 0, generated certificates).
    pub fn start(label: &str, body: &str) -> Proxy {
        Self::start_with_resolver(
            label,
            body,
            spooky::dns::DnsResolver::system_or_getaddrinfo(),
        )
    }

    /// Like `start`, with backend names resolved by `resolver`.
    pub fn start_with_resolver(
        label: &str,
        body: &str,
        resolver: Arc<dyn spooky::dns::Resolver>,
    ) -> Proxy {
        let dir = scratch_dir(label);
        let certs = spooky::selfsigned::generate(&dir).expect("generate certificates");
        let text = format!(
            "[listen]\naddress = \"127.0.0.1\"\nport = 0\ntls = {{ cert = {:?}, key = {:?} }}\n\n{body}",
            certs.cert_chain.display().to_string(),
            certs.private_key.display().to_string(),
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, &text).unwrap();
        let config = config::load(&path).unwrap_or_else(|e| panic!("config rejected: {e}\n{text}"));
        let settings = ProxySettings {
            listen: config.listen_addr(),
            cores: config.cores(),
            plan: config.plan(),
        };
        let running = RunningProxy::start_with_resolver(settings, resolver).expect("start proxy");
        assert!(
            running.wait_ready(Duration::from_secs(10)),
            "shards did not start"
        );
        Proxy {
            running,
            certs,
            dir,
        }
    }

    /// One upstream at `/` with the given backends, one shard.
    pub fn single_pool(label: &str, backends: &[&BackendHandle], extra: &str) -> Proxy {
        Proxy::start(
            label,
            &format!("{}\n{extra}", pool("main", "/", backends, "")),
        )
    }

    pub fn client(&self) -> H3Client {
        H3Client::connect(self.client_options()).expect("connect to proxy")
    }

    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            server: self.running.local_addr(),
            server_name: "localhost".into(),
            verify: Verify::Ca(self.certs.ca.clone()),
            timeout: Duration::from_secs(60),
        }
    }
}

/// TOML for one upstream pool.
pub fn pool(name: &str, prefix: &str, backends: &[&BackendHandle], settings: &str) -> String {
    let mut text =
        format!("[upstream.{name}]\nroute = {{ path_prefix = \"{prefix}\" }}\n{settings}\n");
    for backend in backends {
        text.push_str(&format!(
            "[[upstream.{name}.backends]]\nid = \"{name}-{}\"\naddress = \"{}\"\n",
            backend.addr().port(),
            backend.addr()
        ));
    }
    text
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Polls `check` until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn path_exists(path: &Path) -> bool {
    path.exists()
}

/// One sample of Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus text format 0.0.4 strictly: HELP/TYPE comments, metric and label name
/// syntax, quoted label values with escapes, numeric values, and every family's samples
/// contiguous and after its TYPE line.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut samples = Vec::new();
    let mut types: std::collections::HashMap<String, String> = Default::default();
    let mut finished_families: std::collections::HashSet<String> = Default::default();
    let mut current: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        let at = |m: &str| format!("line {}: {m}: {line:?}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            let name = parts.next().ok_or_else(|| at("comment without name"))?;
            if !valid_name(name) {
                return Err(at("bad metric name"));
            }
            if keyword == "TYPE" {
                let kind = parts.next().ok_or_else(|| at("TYPE without type"))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(at("unknown type"));
                }
                if types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(at("second TYPE for a family"));
                }
                if let Some(previous) = current.replace(name.to_string()) {
                    finished_families.insert(previous);
                }
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| at("bad value"))?,
        };
        let (name, labels) = match series.find('{') {
            None => (series.to_string(), Vec::new()),
            Some(open) => {
                let body = series[open + 1..]
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels"))?;
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (label, after) = rest.split_once("=\"").ok_or_else(|| at("bad label"))?;
                    if !valid_name(label) {
                        return Err(at("bad label name"));
                    }
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let mut end = None;
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next() {
                                Some((_, 'n')) => value.push('\n'),
                                Some((_, c @ ('\\' | '"'))) => value.push(c),
                                _ => return Err(at("bad escape")),
                            },
                            '"' => {
                                end = Some(i);
                                break;
                            }
                            c => value.push(c),
                        }
                    }
                    let end = end.ok_or_else(|| at("unterminated label value"))?;
                    labels.push((label.to_string(), value));
                    rest = after[end + 1..]
                        .strip_prefix(',')
                        .unwrap_or(&after[end + 1..]);
                }
                (series[..open].to_string(), labels)
            }
        };
        if !valid_name(&name) {
            return Err(at("bad metric name"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(&name)
            .to_string();
        if current.as_deref() != Some(family.as_str()) || finished_families.contains(&family) {
            return Err(at("sample outside its family's block"));
        }
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(samples)
}

/// A minimal HTTP/1.1 GET for the admin endpoint: returns status and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A port free on 127.0.0.1 for both UDP and TCP a moment ago, for a process the test starts
/// (which binds both). It is picked below the kernel's ephemeral range: the other tests of the
/// binary keep opening TCP client connections, and any of them could take a port from that range
/// before the process binds it.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(ephemeral_low / 2);
    let span = usize::from(ephemeral_low - low);
    // Spread processes apart so that parallel test binaries rarely try the same ports.
    let seed = std::process::id() as usize * 7919;
    for _ in 0..span {
        let port = low + ((seed + NEXT.fetch_add(1, Ordering::Relaxed) * 131) % span) as u16;
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no port free for UDP and TCP below {ephemeral_low}");
}

/// The sum of every sample of metric `name` whose labels include `labels`, scraped from the
/// admin endpoint at `admin`.
pub fn metric_sum(admin: std::net::SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (status, body) = http_get(admin, "/metrics").expect("scrape /metrics");
    assert_eq!(status, 200);
    parse_prometheus(&body)
        .unwrap_or_else(|e| panic!("{e}\n{body}"))
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}

/// Resident memory of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    shards::procfs::rss_bytes(&pid.to_string()).expect("VmRSS in /proc/PID/status")
}
