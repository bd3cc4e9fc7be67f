//! `spooky --demo`: a working proxy with nothing to configure.
//!
//! Generates a throwaway CA and a certificate for localhost, starts the built-in backend, and
//! routes every path to it. Meant for a first look and for checking a machine can run Spooky; it
//! is not a production mode.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use shards::plan::{
    BackendPlan, Balancing, ProxyPlan, QuicSettings, RoutePlan, SteeringMode, UpstreamPlan,
    UpstreamTimeouts,
};

use shards::tls::TlsIdentity;

use crate::{demo_backend, selfsigned, ProxySettings};

/// How to run `spooky-bench` from here: the binary built beside this one (as `cargo build`
/// leaves it, `target/release/spooky-bench` from the clone), else through cargo.
fn bench_command() -> String {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("spooky-bench"))
        .filter(|bench| bench.is_file());
    match beside {
        Some(bench) => {
            let cwd = std::env::current_dir().unwrap_or_default();
            bench
                .strip_prefix(&cwd)
                .unwrap_or(&bench)
                .display()
                .to_string()
        }
        None => "cargo run --release -p spooky-bench --".into(),
    }
}

/// Builds the demo's settings and the text that tells the user what to do next.
pub fn prepare(port: u16) -> io::Result<(ProxySettings, String)> {
    let dir = demo_dir();
    std::fs::create_dir_all(&dir)?;
    let certs = selfsigned::generate(&dir)?;
    let backend = demo_backend::start("127.0.0.1:0".parse().expect("literal address"))?;
    let cpu = first_allowed_cpu();
    let plan = ProxyPlan {
        access_log: true,
        alt_svc_max_age: Some(shards::plan::DEFAULT_ALT_SVC_MAX_AGE),
        redirect: None,
        tls: TlsIdentity::load(&certs.cert_chain, &certs.private_key).map_err(io::Error::other)?,
        sni: Default::default(),
        overload: Default::default(),
        // One process with one shard: there is no other socket to steer packets to, so the
        // kernel's address hash is exact and loading the steering program would only warn.
        quic: QuicSettings {
            steering: SteeringMode::Off,
            ..QuicSettings::default()
        },
        upstreams: vec![UpstreamPlan {
            name: "demo".into(),
            route: RoutePlan {
                path_prefix: "/".into(),
                host: None,
                method: None,
            },
            balancing: Balancing::RoundRobin,
            timeouts: UpstreamTimeouts::default(),
            retries: shards::plan::DEFAULT_RETRIES,
            retry_budget: shards::plan::DEFAULT_RETRY_BUDGET,
            protocol: shards::plan::BackendProtocol::Http2,
            tls: None,
            resolve_interval: shards::plan::DEFAULT_RESOLVE_INTERVAL,
            limits: Default::default(),
            backends: vec![BackendPlan {
                id: "built-in".into(),
                address: backend,
                weight: 100,
                stats_slot: 0,
                health_check: None,
                name: None,
            }],
        }],
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let guide = format!(
        "Spooky demo is running.\n\
         \x20 HTTP/3 listener: https://localhost:{port}/ (UDP 127.0.0.1:{port})\n\
         \x20 HTTP/2 and HTTP/1.1 over TLS: the same URL (TCP 127.0.0.1:{port})\n\
         \x20 built-in HTTP/2 backend: {backend}\n\
         \x20 CA certificate to trust: {}\n\
         Try: {} get --ca {} https://localhost:{port}/hello\n\
         Over TCP: {} get --tcp --include --ca {} https://localhost:{port}/hello\n\
         Stop with Ctrl-C.",
        certs.ca.display(),
        bench_command(),
        certs.ca.display(),
        bench_command(),
        certs.ca.display(),
    );
    Ok((
        ProxySettings {
            listen,
            cores: vec![cpu],
            plan,
        },
        guide,
    ))
}

fn demo_dir() -> PathBuf {
    std::env::temp_dir().join(format!("spooky-demo-{}", std::process::id()))
}

fn first_allowed_cpu() -> usize {
    shards::sys::allowed_cpus()
        .and_then(|cpus| cpus.first().copied())
        .unwrap_or(0)
}
