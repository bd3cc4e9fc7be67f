//! An HTTP/2 test backend (cleartext, prior knowledge) with endpoints for every behaviour the
//! proxy must get right: exact bodies of any size, echo, a sink that reads the whole upload before
//! answering, delays, chosen statuses, trailers and a
//! reset in the middle of a body. With [`BackendOptions::http1`] it speaks HTTP/1.1 instead
//! ([`http1`]). Runs on its own tokio runtime thread, in-process for tests or
//! from `spooky-bench backend`, and counts what it saw so tests can assert on the backend side.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

mod http1;

const CHUNK: u64 = 64 * 1024;

/// Byte `i` of every generated body: tests compare checksums without storing bodies.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// SHA-256 of the first `n` pattern bytes.
pub fn pattern_sha256(n: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    let mut offset = 0;
    let mut chunk = Vec::with_capacity(CHUNK as usize);
    while offset < n {
        let end = (offset + CHUNK).min(n);
        chunk.clear();
        chunk.extend((offset..end).map(pattern_byte));
        hasher.update(&chunk);
        offset = end;
    }
    hasher.finalize().into()
}

#[derive(Clone, Debug)]
pub struct BackendOptions {
    pub listen: SocketAddr,
    /// Sent in the `x-backend` response header.
    pub name: String,
    /// SETTINGS_MAX_CONCURRENT_STREAMS to advertise (h2's default when `None`).
    pub max_concurrent_streams: Option<u32>,
    /// Tokio worker threads.
    pub threads: usize,
    /// Keep every request path for [`BackendHandle::requests_for`]; off for benchmarks, where
    /// the list would grow without bound.
    pub record_paths: bool,
    /// Speak HTTP/1.1 (keep-alive, chunked) instead of h2c.
    pub http1: bool,
    /// Serve over TLS (ALPN `h2`, or `http/1.1` with [`Self::http1`]).
    pub tls: Option<BackendTlsOptions>,
}

/// The test backend's TLS: its certificate, and the CA client certificates must come from when
/// it asks for them (mutual TLS).
#[derive(Clone, Debug)]
pub struct BackendTlsOptions {
    /// PEM chain, leaf first.
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Require a client certificate issued by this CA (PEM).
    pub client_ca: Option<std::path::PathBuf>,
}

/// What one TLS handshake with the backend showed: the name the client asked for (SNI) and
/// whether it presented a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsHandshake {
    pub server_name: Option<String>,
    pub client_certificate: bool,
}

impl BackendOptions {
    /// A backend for tests: two worker threads, paths recorded.
    pub fn new(listen: SocketAddr, name: &str) -> BackendOptions {
        BackendOptions {
            listen,
            name: name.to_string(),
            max_concurrent_streams: None,
            threads: 2,
            record_paths: true,
            http1: false,
            tls: None,
        }
    }
}

#[derive(Default, Debug)]
struct Counters {
    /// 1 while `/health` answers 200; tests flip it to fail health checks.
    unhealthy: AtomicU64,
    connections_accepted: AtomicU64,
    requests: AtomicU64,
    requests_completed: AtomicU64,
    streams_reset_by_peer: AtomicU64,
    in_flight: AtomicU64,
}

/// A snapshot of what the backend has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub connections_accepted: u64,
    pub requests: u64,
    pub requests_completed: u64,
    /// Request streams the peer reset (e.g. the proxy cancelling on behalf of its client).
    pub streams_reset_by_peer: u64,
    pub in_flight: u64,
}

pub struct BackendHandle {
    addr: SocketAddr,
    counters: Arc<Counters>,
    paths: Arc<Mutex<Vec<String>>>,
    handshakes: Arc<Mutex<Vec<TlsHandshake>>>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackendHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> BackendStats {
        let c = &self.counters;
        BackendStats {
            connections_accepted: c.connections_accepted.load(Ordering::SeqCst),
            requests: c.requests.load(Ordering::SeqCst),
            requests_completed: c.requests_completed.load(Ordering::SeqCst),
            streams_reset_by_peer: c.streams_reset_by_peer.load(Ordering::SeqCst),
            in_flight: c.in_flight.load(Ordering::SeqCst),
        }
    }

    /// Makes `/health` answer 200 (healthy) or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.counters
            .unhealthy
            .store(u64::from(!healthy), Ordering::SeqCst);
    }

    /// Every completed TLS handshake, in order.
    pub fn tls_handshakes(&self) -> Vec<TlsHandshake> {
        self.handshakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests received whose path starts with `prefix`.
    pub fn requests_for(&self, prefix: &str) -> usize {
        let paths = self.paths.lock().unwrap_or_else(|p| p.into_inner());
        paths.iter().filter(|p| p.starts_with(prefix)).count()
    }

    /// Stops accepting and drops every open connection at once, as a crashed process would.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for BackendHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a backend; returns once it is listening.
pub fn start(options: BackendOptions) -> io::Result<BackendHandle> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads.max(1))
        .enable_all()
        .build()?;
    let listener = runtime.block_on(TcpListener::bind(options.listen))?;
    let addr = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    let paths = Arc::new(Mutex::new(Vec::new()));
    let handshakes = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = watch::channel(false);
    let tls = match &options.tls {
        Some(tls) => Some(tls_acceptor(tls, options.http1)?),
        None => None,
    };
    let context = Arc::new(Context {
        name: options.name.clone(),
        counters: counters.clone(),
        paths: paths.clone(),
        handshakes: handshakes.clone(),
        record_paths: options.record_paths,
        http1: options.http1,
        tls,
    });
    let max_streams = options.max_concurrent_streams;
    let thread = std::thread::Builder::new()
        .name(format!("backend-{}", options.name))
        .spawn(move || {
            runtime.block_on(accept_loop(listener, context, max_streams, stopped));
            // Dropping the runtime cancels every connection task: sockets close abruptly.
            runtime.shutdown_timeout(Duration::from_millis(100));
        })?;
    Ok(BackendHandle {
        addr,
        counters,
        paths,
        handshakes,
        stop,
        thread: Some(thread),
    })
}

struct Context {
    name: String,
    counters: Arc<Counters>,
    paths: Arc<Mutex<Vec<String>>>,
    handshakes: Arc<Mutex<Vec<TlsHandshake>>>,
    record_paths: bool,
    http1: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

fn tls_acceptor(options: &BackendTlsOptions, http1: bool) -> io::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let invalid =
        |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let chain = CertificateDer::pem_file_iter(&options.cert)
        .map_err(|e| invalid(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&e))?;
    let key = PrivateKeyDer::from_pem_file(&options.key).map_err(|e| invalid(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?;
    let builder = match &options.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| invalid(&e))? {
                roots
                    .add(cert.map_err(|e| invalid(&e))?)
                    .map_err(|e| invalid(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| invalid(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&e))?;
    config.alpn_protocols = vec![if http1 {
        b"http/1.1".to_vec()
    } else {
        b"h2".to_vec()
    }];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Runs the TLS handshake when the backend has TLS, recording what the client showed.
async fn accept_tls(
    stream: tokio::net::TcpStream,
    context: &Context,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let acceptor = context.tls.as_ref()?;
    let stream = match acceptor.accept(stream).await {
        Ok(stream) => stream,
        Err(e) => {
            log::debug!("backend TLS handshake failed: {e}");
            return None;
        }
    };
    let (_, session) = stream.get_ref();
    let seen = TlsHandshake {
        server_name: session.server_name().map(str::to_string),
        client_certificate: session.peer_certificates().is_some_and(|c| !c.is_empty()),
    };
    if let Ok(mut handshakes) = context.handshakes.lock() {
        handshakes.push(seen);
    }
    Some(stream)
}

async fn accept_loop(
    listener: TcpListener,
    context: Arc<Context>,
    max_streams: Option<u32>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                context.counters.connections_accepted.fetch_add(1, Ordering::SeqCst);
                let context = context.clone();
                tokio::spawn(async move {
                    if context.tls.is_some() {
                        let Some(stream) = accept_tls(stream, &context).await else { return };
                        serve(stream, context, max_streams).await;
                    } else {
                        serve(stream, context, max_streams).await;
                    }
                });
            }
        }
    }
}

async fn serve<S>(stream: S, context: Arc<Context>, max_streams: Option<u32>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if context.http1 {
        http1::serve_connection(stream, context).await;
    } else {
        serve_connection(stream, context, max_streams).await;
    }
}

async fn serve_connection<S>(stream: S, context: Arc<Context>, max_streams: Option<u32>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(1024 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024);
    if let Some(max) = max_streams {
        builder.max_concurrent_streams(max);
    }
    let Ok(mut connection) = builder.handshake::<_, Bytes>(stream).await else {
        return;
    };
    while let Some(accepted) = connection.accept().await {
        let Ok((request, respond)) = accepted else {
            return;
        };
        let context = context.clone();
        tokio::spawn(async move {
            context.counters.requests.fetch_add(1, Ordering::SeqCst);
            context.counters.in_flight.fetch_add(1, Ordering::SeqCst);
            if context.record_paths {
                if let Ok(mut paths) = context.paths.lock() {
                    paths.push(request.uri().path().to_string());
                }
            }
            let result = handle(request, respond, &context).await;
            context.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
            match result {
                Ok(()) => {
                    context
                        .counters
                        .requests_completed
                        .fetch_add(1, Ordering::SeqCst);
                }
                // A peer's RST_STREAM surfaces either as a remote reset error or, when noticed
                // through poll_reset, as its bare reason.
                Err(e) if (e.is_reset() && e.is_remote()) || e.reason() == Some(Reason::CANCEL) => {
                    context
                        .counters
                        .streams_reset_by_peer
                        .fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => log::debug!("backend stream ended: {e}"),
            }
        });
    }
}

fn response(status: u16, context: &Context) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(name) = HeaderValue::from_str(&context.name) {
        response.headers_mut().insert("x-backend", name);
    }
    response
}

async fn handle(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    context: &Context,
) -> Result<(), h2::Error> {
    let path = request.uri().path().to_string();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let (first, rest) = (segments.next().unwrap_or(""), segments.next().unwrap_or(""));
    let number = rest.parse::<u64>().ok();
    match (first, number) {
        ("bytes", Some(n)) => {
            let (_, body) = request.into_parts();
            drain(body).await?;
            let mut head = response(200, context);
            head.headers_mut()
                .insert("content-length", HeaderValue::from(n));
            let mut send = respond.send_response(head, n == 0)?;
            send_pattern(&mut send, n, None).await?;
            Ok(())
        }
        ("slow-bytes", Some(n)) => {
            let mut head = response(200, context);
            head.headers_mut()
                .insert("content-length", HeaderValue::from(n));
            let mut send = respond.send_response(head, n == 0)?;
            send_pattern(&mut send, n, Some(Duration::from_millis(20))).await
        }
        ("reset-after", Some(n)) => {
            let mut send = respond.send_response(response(200, context), false)?;
            send_pattern_open(&mut send, n, None).await?;
            // Let the data reach the peer before the reset overtakes it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            send.send_reset(Reason::INTERNAL_ERROR);
            Ok(())
        }
        ("delay", Some(ms)) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                reason = futures_reset(&mut respond) => return Err(reason),
            }
            let mut send = respond.send_response(response(200, context), false)?;
            send.send_data(Bytes::from_static(b"ok"), true)
        }
        ("status", Some(code)) => {
            let body = format!("status {code}");
            let mut send = respond.send_response(response(code as u16, context), false)?;
            send.send_data(Bytes::from(body), true)
        }
        ("trailers", None) => {
            let mut head = response(200, context);
            // Announced, as RFC 9110 §6.6.2 asks: an HTTP/1.1 hop forwards only announced
            // trailer fields.
            head.headers_mut().insert(
                "trailer",
                HeaderValue::from_static("x-trailer-one, x-checksum"),
            );
            let mut send = respond.send_response(head, false)?;
            send.send_data(Bytes::from_static(b"hello"), false)?;
            let mut trailers = HeaderMap::new();
            trailers.insert("x-trailer-one", HeaderValue::from_static("1"));
            trailers.insert("x-checksum", HeaderValue::from_static("abc"));
            send.send_trailers(trailers)
        }
        ("echo", None) => echo(request, respond, context).await,
        ("sink", None) => sink(request, respond, context).await,
        ("_stats", None) => {
            // Lets a benchmark read the backend's own cost without access to its process.
            let cpu = shards::procfs::cpu_seconds("self").unwrap_or(-1.0);
            let body = format!(
                "{{\"cpu_seconds\": {cpu:.3}, \"requests\": {}}}",
                context.counters.requests.load(Ordering::SeqCst)
            );
            let mut head = response(200, context);
            head.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            let mut send = respond.send_response(head, false)?;
            send.send_data(Bytes::from(body), true)
        }
        ("headers", None) => {
            let (parts, body) = request.into_parts();
            drain(body).await?;
            let mut text = format!(
                ":method: {}\n:path: {}\n:authority: {}\n:scheme: {}\n",
                parts.method,
                parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
                parts.uri.authority().map(|a| a.as_str()).unwrap_or(""),
                parts.uri.scheme_str().unwrap_or("")
            );
            for (name, value) in &parts.headers {
                text.push_str(&format!(
                    "{}: {}\n",
                    name,
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            let mut send = respond.send_response(response(200, context), false)?;
            send.send_data(Bytes::from(text), true)
        }
        ("health", None) => {
            let status = if context.counters.unhealthy.load(Ordering::SeqCst) == 1 {
                503
            } else {
                200
            };
            let mut send = respond.send_response(response(status, context), false)?;
            send.send_data(Bytes::from_static(b"ok"), true)
        }
        _ => {
            let mut send = respond.send_response(response(404, context), false)?;
            send.send_data(Bytes::from_static(b"not found"), true)
        }
    }
}

/// Resolves when the peer resets the stream while we wait to respond.
async fn futures_reset(respond: &mut SendResponse<Bytes>) -> h2::Error {
    match std::future::poll_fn(|cx| respond.poll_reset(cx)).await {
        Ok(reason) => h2::Error::from(reason),
        Err(e) => e,
    }
}

async fn drain(mut body: RecvStream) -> Result<(), h2::Error> {
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(())
}

/// Sends `n` pattern bytes and ends the stream.
async fn send_pattern(
    send: &mut SendStream<Bytes>,
    n: u64,
    pause: Option<Duration>,
) -> Result<(), h2::Error> {
    if n == 0 {
        return Ok(());
    }
    send_pattern_open(send, n, pause).await?;
    send.send_data(Bytes::new(), true)
}

/// Sends `n` pattern bytes, respecting flow control, leaving the stream open.
async fn send_pattern_open(
    send: &mut SendStream<Bytes>,
    n: u64,
    pause: Option<Duration>,
) -> Result<(), h2::Error> {
    let chunk_size = if pause.is_some() { 16 * 1024 } else { CHUNK };
    let mut offset = 0u64;
    while offset < n {
        let want = chunk_size.min(n - offset) as usize;
        send.reserve_capacity(want);
        let available = wait_capacity(send).await?;
        let len = available.min(want) as u64;
        let chunk: Vec<u8> = (offset..offset + len).map(pattern_byte).collect();
        send.send_data(Bytes::from(chunk), false)?;
        offset += len;
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(())
}

async fn wait_capacity(send: &mut SendStream<Bytes>) -> Result<usize, h2::Error> {
    loop {
        if send.capacity() > 0 {
            return Ok(send.capacity());
        }
        match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) if n > 0 => return Ok(n),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e),
            // The stream is gone: report how, so a reset by the peer is counted as one.
            None => {
                return Err(match std::future::poll_fn(|cx| send.poll_reset(cx)).await {
                    Ok(reason) => h2::Error::from(reason),
                    Err(e) => e,
                })
            }
        }
    }
}

/// Streams the request body back as the response body, and request trailers as response
/// trailers, moving data only as flow control allows in both directions.
/// Reads the whole request body before answering, with its length in `x-sink-bytes`: what a
/// proxy does with an upload is then visible before any response byte.
async fn sink(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    context: &Context,
) -> Result<(), h2::Error> {
    let mut body = request.into_body();
    let mut total: u64 = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let mut head = response(200, context);
    head.headers_mut()
        .insert("x-sink-bytes", HeaderValue::from(total));
    respond.send_response(head, true)?;
    Ok(())
}

async fn echo(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    context: &Context,
) -> Result<(), h2::Error> {
    let (parts, mut body) = request.into_parts();
    let mut head = response(200, context);
    if let Ok(method) = HeaderValue::from_str(parts.method.as_str()) {
        head.headers_mut().insert("x-echo-method", method);
    }
    let mut send = respond.send_response(head, false)?;
    while let Some(chunk) = body.data().await {
        let mut chunk = chunk?;
        let len = chunk.len();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let available = wait_capacity(&mut send).await?;
            let part = chunk.split_to(available.min(chunk.len()));
            send.send_data(part, false)?;
        }
        let _ = body.flow_control().release_capacity(len);
    }
    match body.trailers().await? {
        Some(trailers) => send.send_trailers(trailers),
        None => send.send_data(Bytes::new(), true),
    }
}
