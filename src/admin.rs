//! The admin endpoint: `/metrics`, `/health/live`, `/health/ready` over plain HTTP/1.1 on TCP.
//!
//! Served by its own coordinator-side thread, never by a shard, so a slow scraper or a flood of
//! admin requests cannot delay traffic. It is meant for a loopback or management address; it
//! answers GET only and closes each connection after one response.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shards::plan::ProxyPlan;
use shards::ShardStats;

use crate::metrics::{self, MetricsSource};

/// What the admin thread reports on; updated by the coordinator when health or config changes.
pub struct AdminView {
    pub shards: Vec<Arc<ShardStats>>,
    pub plan: ProxyPlan,
    pub healthy: Vec<Vec<bool>>,
    pub config_generation: u64,
}

pub type SharedView = Arc<Mutex<AdminView>>;

/// Binds the admin listener and serves it on a new thread. Returns the bound address.
pub fn start(address: SocketAddr, view: SharedView) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("spooky-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = serve(stream, &view) {
                            log::debug!("admin request: {e}");
                        }
                    }
                    Err(e) => log::warn!("admin accept: {e}"),
                }
            }
        })?;
    Ok(bound)
}

fn serve(stream: TcpStream, view: &SharedView) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read and ignore the rest of the head; the admin endpoint takes no request headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if method != "GET" {
        (405, "text/plain", "only GET is supported\n".to_string())
    } else {
        route(path, view)
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn route(path: &str, view: &SharedView) -> (u16, &'static str, String) {
    let view = match view.lock() {
        Ok(view) => view,
        Err(poisoned) => poisoned.into_inner(),
    };
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            metrics::render(&MetricsSource {
                shards: &view.shards,
                plan: &view.plan,
                healthy: &view.healthy,
                config_generation: view.config_generation,
            }),
        ),
        "/health/live" => (200, "application/json", "{\"live\":true}\n".into()),
        "/health/ready" => readiness(&view),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

/// Ready when every shard runs and every upstream has at least one healthy backend.
fn readiness(view: &AdminView) -> (u16, &'static str, String) {
    let shards_down: Vec<String> = view
        .shards
        .iter()
        .enumerate()
        .filter(|(_, s)| s.running.get() != 1)
        .map(|(i, _)| i.to_string())
        .collect();
    let upstreams_down: Vec<String> = view
        .plan
        .upstreams
        .iter()
        .enumerate()
        .filter(|(u, _)| !view.healthy.get(*u).is_some_and(|h| h.iter().any(|&ok| ok)))
        .map(|(_, upstream)| format!("\"{}\"", upstream.name))
        .collect();
    let ready = shards_down.is_empty() && upstreams_down.is_empty();
    let body = format!(
        "{{\"ready\":{ready},\"shards_not_running\":[{}],\"upstreams_without_healthy_backend\":[{}]}}\n",
        shards_down.join(","),
        upstreams_down.join(",")
    );
    (if ready { 200 } else { 503 }, "application/json", body)
}
