//! The processes a benchmark run measures: the HTTP/2 backend, Spooky, HAProxy and nginx when
//! `bench/peers.sh` has built them, and Caddy when it is installed, each pinned with `taskset`
//! so that runs are comparable.
//!
//! Every proxy gets the same CPU, the same certificate and the same backend program; the backend
//! and the load generator share the other CPUs. Each is held to one core as a one-shard Spooky
//! is: HAProxy with `nbthread 1`, nginx as one process, Caddy with `GOMAXPROCS=1`.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{ClientOptions, H3Client, Request, Verify};

/// A server process started for the run; killed on drop.
pub struct Server {
    pub name: &'static str,
    pub child: Child,
    /// `https://localhost:PORT` for the proxies, `http://127.0.0.1:PORT` for the backend.
    pub url: String,
    pub log: PathBuf,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A certificate and key for `localhost`, written to `dir`.
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn write_certificate(dir: &Path) -> Result<Certificate, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key generation: {e}"))?;
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .map_err(|e| format!("certificate parameters: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("self-signing: {e}"))?;
    let paths = Certificate {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    fs::write(&paths.cert, cert.pem()).map_err(|e| format!("writing certificate: {e}"))?;
    fs::write(&paths.key, key.serialize_pem()).map_err(|e| format!("writing key: {e}"))?;
    Ok(paths)
}

/// A free port on 127.0.0.1 for both UDP and TCP (Caddy binds both).
pub fn free_port() -> Result<u16, String> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = udp.local_addr().map_err(|e| e.to_string())?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port".into())
}

fn pinned(cpus: &str, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpus).arg(program);
    command
}

fn spawn(
    name: &'static str,
    mut command: Command,
    log: PathBuf,
    url: String,
) -> Result<Server, String> {
    let log_file = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = command
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("starting {name}: {e}"))?;
    Ok(Server {
        name,
        child,
        url,
        log,
    })
}

/// What a backend, and the Spooky in front of it, speak between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendProtocol {
    H2c,
    Http1,
}

impl BackendProtocol {
    /// The value of Spooky's `upstream.NAME.protocol`.
    fn config_value(self) -> &'static str {
        match self {
            BackendProtocol::H2c => "h2c",
            BackendProtocol::Http1 => "http/1.1",
        }
    }
}

/// Starts `spooky-bench backend` (the executable at `bench`) on `port`, logging to
/// `dir/NAME.log` and answering with `x-backend: NAME`.
pub fn start_backend(
    name: &'static str,
    bench: &Path,
    dir: &Path,
    port: u16,
    cpus: &str,
    threads: usize,
    protocol: BackendProtocol,
) -> Result<Server, String> {
    let mut command = pinned(cpus, bench);
    command
        .args(["backend", "--name", name, "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--threads", &threads.to_string()]);
    if protocol == BackendProtocol::Http1 {
        command.arg("--http1");
    }
    let server = spawn(
        name,
        command,
        dir.join(format!("{name}.log")),
        format!("http://127.0.0.1:{port}"),
    )?;
    wait_until(Duration::from_secs(15), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .map_err(|_| format!("backend did not listen on {port}"))?;
    Ok(server)
}

/// Starts Spooky with one shard on `cpu`, forwarding everything to the backend over `protocol`.
/// The per-address new-connection limit is off: every benchmark client comes from 127.0.0.1, and
/// the peers have no such limit by default.
pub fn start_spooky(
    binary: &Path,
    dir: &Path,
    certificate: &Certificate,
    port: u16,
    backend: (u16, BackendProtocol),
    cpu: usize,
) -> Result<Server, String> {
    let (backend_port, protocol) = backend;
    let name = match protocol {
        BackendProtocol::H2c => "spooky",
        BackendProtocol::Http1 => "spooky-http1",
    };
    let config = dir.join(format!("{name}.toml"));
    fs::write(
        &config,
        format!(
            "[listen]\naddress = \"127.0.0.1\"\nport = {port}\n\
             tls = {{ cert = {:?}, key = {:?} }}\n\n\
             [runtime]\ncores = [{cpu}]\n\n\
             [quic]\nmax_concurrent_streams = 1000\nnew_connection_rate = 0\n\n\
             [upstream.main]\nroute = {{ path_prefix = \"/\" }}\nprotocol = \"{}\"\n\n\
             [[upstream.main.backends]]\nid = \"backend\"\naddress = \"127.0.0.1:{backend_port}\"\n",
            certificate.cert.display().to_string(),
            certificate.key.display().to_string(),
            protocol.config_value(),
        ),
    )
    .map_err(|e| e.to_string())?;
    launch_spooky(name, binary, &config, dir, port, cpu)
}

/// Starts Spooky on `cpu` with the configuration file `config` (which listens on `port`),
/// logging to `dir/NAME.log`, and waits until it answers over HTTP/3.
pub fn launch_spooky(
    name: &'static str,
    binary: &Path,
    config: &Path,
    dir: &Path,
    port: u16,
    cpu: usize,
) -> Result<Server, String> {
    let mut command = pinned(&cpu.to_string(), binary);
    command.arg("--config").arg(config);
    let server = spawn(
        name,
        command,
        dir.join(format!("{name}.log")),
        format!("https://localhost:{port}"),
    )?;
    wait_for_http3(port).map_err(|e| format!("{name} did not serve HTTP/3: {e}"))?;
    Ok(server)
}

/// Starts Caddy as an HTTP/3 reverse proxy to the backend over h2c, if `caddy` is installed.
pub fn start_caddy(
    dir: &Path,
    certificate: &Certificate,
    port: u16,
    backend_port: u16,
    cpu: usize,
) -> Result<Option<Server>, String> {
    let Some(caddy) = find_on_path("caddy") else {
        return Ok(None);
    };
    let caddyfile = dir.join("Caddyfile");
    fs::write(
        &caddyfile,
        format!(
            "{{\n\tadmin off\n\tauto_https off\n\tlog {{\n\t\tlevel ERROR\n\t}}\n\
             \tservers {{\n\t\tprotocols h1 h2 h3\n\t}}\n}}\n\n\
             https://localhost:{port} {{\n\tbind 127.0.0.1\n\ttls {} {}\n\
             \treverse_proxy 127.0.0.1:{backend_port} {{\n\t\ttransport http {{\n\t\t\tversions h2c\n\t\t}}\n\t}}\n}}\n",
            certificate.cert.display(),
            certificate.key.display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut command = pinned(&cpu.to_string(), &caddy);
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&caddyfile)
        .env("GOMAXPROCS", "1")
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir)
        .env("XDG_CONFIG_HOME", dir);
    let server = spawn(
        "caddy",
        command,
        dir.join("caddy.log"),
        format!("https://localhost:{port}"),
    )?;
    wait_for_http3(port).map_err(|e| format!("caddy did not serve HTTP/3: {e}"))?;
    Ok(Some(server))
}

/// Starts HAProxy (built by `bench/peers.sh`) as an HTTP/3 proxy to the h2c backend: one
/// thread on `cpu`, QUIC through its OpenSSL compatibility layer (`limited-quic`).
pub fn start_haproxy(
    binary: &Path,
    dir: &Path,
    certificate: &Certificate,
    port: u16,
    backend_port: u16,
    cpu: usize,
) -> Result<Server, String> {
    // HAProxy takes the certificate and its key from one file.
    let pem = dir.join("haproxy.pem");
    let mut both = fs::read(&certificate.cert).map_err(|e| e.to_string())?;
    both.extend(fs::read(&certificate.key).map_err(|e| e.to_string())?);
    fs::write(&pem, both).map_err(|e| e.to_string())?;
    let config = dir.join("haproxy.cfg");
    // No `maxconn`: HAProxy then sizes it to the file descriptor limit (QUIC connections each
    // own a socket by default), where a fixed figure above that limit stops it at start.
    let text = [
        "global".to_string(),
        "    nbthread 1".into(),
        "    limited-quic".into(),
        "defaults".into(),
        "    mode http".into(),
        "    timeout connect 5s".into(),
        "    timeout client 60s".into(),
        "    timeout server 60s".into(),
        "frontend h3".into(),
        format!(
            "    bind quic4@127.0.0.1:{port} ssl crt {} alpn h3",
            pem.display()
        ),
        "    default_backend h2c".into(),
        "backend h2c".into(),
        format!("    server backend 127.0.0.1:{backend_port} proto h2"),
    ];
    fs::write(&config, text.join("\n") + "\n").map_err(|e| e.to_string())?;
    let mut command = pinned(&cpu.to_string(), binary);
    command.arg("-db").arg("-f").arg(&config);
    let server = spawn(
        "haproxy",
        command,
        dir.join("haproxy.log"),
        format!("https://localhost:{port}"),
    )?;
    wait_for_http3(port).map_err(|e| format!("haproxy did not serve HTTP/3: {e}"))?;
    Ok(server)
}

/// Starts nginx (built by `bench/peers.sh`) as an HTTP/3 proxy to the HTTP/1.1 backend over
/// keep-alive connections (nginx proxies to HTTP/1.x only): one process (`master_process off`)
/// on `cpu`.
pub fn start_nginx(
    binary: &Path,
    dir: &Path,
    certificate: &Certificate,
    port: u16,
    http1_backend_port: u16,
    cpu: usize,
) -> Result<Server, String> {
    let prefix = dir.join("nginx");
    fs::create_dir_all(prefix.join("logs")).map_err(|e| e.to_string())?;
    let config = prefix.join("nginx.conf");
    let prefix_text = prefix.display();
    let text = [
        "daemon off;".to_string(),
        "master_process off;".into(),
        "worker_processes 1;".into(),
        format!("error_log {prefix_text}/logs/error.log warn;"),
        format!("pid {prefix_text}/nginx.pid;"),
        "events { worker_connections 65536; }".into(),
        "http {".into(),
        "    access_log off;".into(),
        // nginx closes a connection (HTTP/3 included) after 1,000 requests by default, and the
        // requests in flight on it fail; the other proxies keep connections for their life.
        "    keepalive_requests 1000000000;".into(),
        // Stream uploads to the backend as the other proxies do, rather than spooling each body
        // to a temporary file first.
        "    proxy_request_buffering off;".into(),
        "    client_max_body_size 0;".into(),
        format!("    client_body_temp_path {prefix_text}/body;"),
        format!("    proxy_temp_path {prefix_text}/proxy;"),
        "    upstream backend {".into(),
        format!("        server 127.0.0.1:{http1_backend_port};"),
        "        keepalive 64;".into(),
        "    }".into(),
        "    server {".into(),
        format!("        listen 127.0.0.1:{port} quic reuseport;"),
        "        http3 on;".into(),
        "        http3_max_concurrent_streams 1000;".into(),
        format!("        ssl_certificate {};", certificate.cert.display()),
        format!("        ssl_certificate_key {};", certificate.key.display()),
        "        ssl_protocols TLSv1.3;".into(),
        "        location / {".into(),
        "            proxy_pass http://backend;".into(),
        "            proxy_http_version 1.1;".into(),
        "            proxy_set_header Connection \"\";".into(),
        "        }".into(),
        "    }".into(),
        "}".into(),
    ];
    fs::write(&config, text.join("\n") + "\n").map_err(|e| e.to_string())?;
    let mut command = pinned(&cpu.to_string(), binary);
    command
        .arg("-p")
        .arg(&prefix)
        .arg("-e")
        .arg(prefix.join("logs").join("error.log"))
        .arg("-c")
        .arg(&config);
    let server = spawn(
        "nginx",
        command,
        dir.join("nginx.log"),
        format!("https://localhost:{port}"),
    )?;
    wait_for_http3(port).map_err(|e| format!("nginx did not serve HTTP/3: {e}"))?;
    Ok(server)
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

fn wait_for_http3(port: u16) -> Result<(), String> {
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut last_error = String::new();
    let ready = wait_until(Duration::from_secs(20), || {
        let options = ClientOptions {
            server,
            server_name: "localhost".into(),
            verify: Verify::Insecure,
            timeout: Duration::from_millis(500),
        };
        match H3Client::connect(options).and_then(|mut c| c.request(Request::get("/bytes/1"))) {
            Ok(response) if response.status == 200 => true,
            Ok(response) => {
                last_error = format!("status {}", response.status);
                false
            }
            Err(e) => {
                last_error = e.to_string();
                false
            }
        }
    });
    ready.map_err(|_| last_error)
}

fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(())
}

/// Pins the calling process's threads (the load generator) to `cpus`.
pub fn pin_self(cpus: &[usize]) -> io::Result<()> {
    shards::sys::pin_to(cpus)
}
