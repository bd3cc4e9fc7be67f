//! The admin endpoint: `/metrics`, `/health/live`, `/health/ready` over HTTP/1.1 on TCP.
//!
//! Served by hyper on a thread of its own (a current-thread tokio runtime), never by a shard, so a
//! slow scraper or a flood of admin requests cannot delay traffic. Connections are served
//! concurrently, so an idle or slow client never holds up a readiness probe; request heads are
//! bounded ([`MAX_HEAD_BYTES`], larger ones get `431`), and a connection that sends no complete
//! request head for [`HEAD_TIMEOUT`] (including an idle keep-alive connection) is closed. It is
//! meant for a loopback or management address and answers GET (and HEAD) only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use shards::plan::ProxyPlan;
use shards::ShardStats;

use crate::metrics::{self, MetricsSource};

/// Largest request head accepted: the admin endpoint takes no request headers it needs, so this
/// is hyper's smallest read buffer.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a connection may take to send a request head, idle keep-alive time included.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

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
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("spooky-admin".into())
        .spawn(move || runtime.block_on(serve(listener, view)))?;
    Ok(bound)
}

async fn serve(listener: std::net::TcpListener, view: SharedView) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            log::error!("admin listener: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("admin accept: {e}");
                continue;
            }
        };
        let view = view.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &view);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                log::debug!("admin connection: {e}");
            }
        });
    }
}

fn respond(request: &Request<Incoming>, view: &SharedView) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let view = match view.lock() {
        Ok(view) => view,
        Err(poisoned) => poisoned.into_inner(),
    };
    match request.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(&MetricsSource {
                shards: &view.shards,
                plan: &view.plan,
                healthy: &view.healthy,
                config_generation: view.config_generation,
            }),
        ),
        "/health/live" => json(StatusCode::OK, &serde_json::json!({ "live": true })),
        "/health/ready" => {
            let readiness = Readiness::of(&view);
            let status = if readiness.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &readiness)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Ready when every shard runs and every upstream has at least one healthy backend.
#[derive(Serialize)]
struct Readiness<'a> {
    ready: bool,
    shards_not_running: Vec<usize>,
    upstreams_without_healthy_backend: Vec<&'a str>,
}

impl<'a> Readiness<'a> {
    fn of(view: &'a AdminView) -> Self {
        let shards_not_running: Vec<usize> = view
            .shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.running.get() != 1)
            .map(|(i, _)| i)
            .collect();
        let upstreams_without_healthy_backend: Vec<&str> = view
            .plan
            .upstreams
            .iter()
            .enumerate()
            .filter(|(u, _)| !view.healthy.get(*u).is_some_and(|h| h.iter().any(|&ok| ok)))
            .map(|(_, upstream)| upstream.name.as_str())
            .collect();
        Readiness {
            ready: shards_not_running.is_empty() && upstreams_without_healthy_backend.is_empty(),
            shards_not_running,
            upstreams_without_healthy_backend,
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, "text/plain", body.into())
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    body.push('\n');
    reply(status, "application/json", body)
}
