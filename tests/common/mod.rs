//! Shared harness for the end-to-end tests: real HTTP/2 backends on 127.0.0.1, a real proxy built
//! from a TOML configuration, and a real HTTP/3 client, all on ephemeral ports.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use spooky::selfsigned::GeneratedCerts;
use spooky::{config, ProxySettings, RunningProxy};
use spooky_bench::backend::{self, BackendHandle, BackendOptions};
use spooky_bench::client::{ClientOptions, H3Client, Verify};

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
        listen: "127.0.0.1:0".parse().unwrap(),
        name: name.to_string(),
        max_concurrent_streams,
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
        let running = RunningProxy::start(ProxySettings {
            listen: config.listen_addr(),
            cores: config.cores(),
            plan: config.plan(),
        })
        .expect("start proxy");
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
