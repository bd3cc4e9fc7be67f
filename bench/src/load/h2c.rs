//! The HTTP/2 loader thread: cleartext (h2c) for the direct-to-backend baseline, so a report can
//! show what a proxy adds, or over TLS (`--tcp`) for a proxy's TCP listener; the same load as the
//! HTTP/3 loader either way.
//!
//! Each thread runs a current-thread tokio runtime with its share of connections. Closed loop:
//! one task per stream slot sends a request as soon as its last one finished. Open loop: a
//! pacing thread (nanosecond sleeps; tokio's timers round to milliseconds) hands due times to a
//! dispatcher, which starts each request on the next connection.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::net::TcpStream;

use super::poller::precise_timers;
use super::schedule::Pacer;
use super::stats::{ErrorKind, Recorder};
use super::{LoadError, ThreadPlan};
use crate::backend::pattern_byte;

const BODY_CHUNK: usize = 64 * 1024;

pub(crate) fn run_thread(plan: ThreadPlan) -> Result<Recorder, LoadError> {
    precise_timers();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LoadError::io("tokio runtime"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, drive(plan))
}

struct Shared {
    plan: ThreadPlan,
    recorder: RefCell<Recorder>,
    issued: Cell<u64>,
    body: Bytes,
}

impl Shared {
    /// Claims the next request, unless the run is over.
    fn claim(&self) -> bool {
        let now = Instant::now();
        if self.plan.stop_at.is_some_and(|t| now >= t)
            || self.plan.requests.is_some_and(|n| self.issued.get() >= n)
        {
            return false;
        }
        self.issued.set(self.issued.get() + 1);
        true
    }

    fn start_recording_if_due(&self) {
        let mut recorder = self.recorder.borrow_mut();
        if !recorder.recording && Instant::now() >= self.plan.record_from {
            recorder.recording = true;
        }
    }
}

async fn drive(mut plan: ThreadPlan) -> Result<Recorder, LoadError> {
    let mut senders = Vec::new();
    for _ in 0..plan.connections {
        senders.push(connect(&plan).await?);
    }
    // The run starts once the connections are up: no request is due before it could be sent.
    plan.restart_clock(Instant::now());
    let recording = plan.record_from <= plan.start;
    let shared = Rc::new(Shared {
        body: (0..BODY_CHUNK as u64 + 251)
            .map(pattern_byte)
            .collect::<Vec<u8>>()
            .into(),
        recorder: RefCell::new(Recorder {
            recording,
            ..Recorder::default()
        }),
        issued: Cell::new(0),
        plan,
    });
    let mut tasks = Vec::new();
    if let Some(rate) = shared.plan.rate {
        let mut timer = PreciseTimer::new().map_err(LoadError::io("timerfd"))?;
        let mut pacer = Pacer::new(shared.plan.start, rate);
        let mut due = std::collections::VecDeque::new();
        let mut next = 0;
        let mut path = 0;
        'pacing: loop {
            timer
                .sleep_until(pacer.next_due())
                .await
                .map_err(LoadError::io("timerfd"))?;
            pacer.take_due(Instant::now(), &mut due);
            while let Some(at) = due.pop_front() {
                if !shared.claim() {
                    break 'pacing;
                }
                let sender = senders[next].clone();
                next = (next + 1) % senders.len();
                let request_path = shared.plan.target.paths[path].clone();
                path = (path + 1) % shared.plan.target.paths.len();
                tasks.push(tokio::task::spawn_local(timed_request(
                    shared.clone(),
                    sender,
                    request_path,
                    at,
                )));
            }
        }
    } else {
        for sender in &senders {
            for slot in 0..shared.plan.options.streams {
                let shared = shared.clone();
                let sender = sender.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    let paths = &shared.plan.target.paths;
                    let mut path = slot % paths.len();
                    while shared.claim() {
                        let request_path = paths[path].clone();
                        path = (path + 1) % paths.len();
                        timed_request(shared.clone(), sender.clone(), request_path, Instant::now())
                            .await;
                    }
                }));
            }
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    drop(senders);
    let recorder = std::mem::take(&mut *shared.recorder.borrow_mut());
    Ok(recorder)
}

/// A timer with nanosecond resolution inside tokio (whose own timers round to milliseconds,
/// which would send open-loop requests late): a timerfd awaited through the runtime's reactor.
struct PreciseTimer {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl PreciseTimer {
    fn new() -> std::io::Result<PreciseTimer> {
        Ok(PreciseTimer {
            fd: crate::sys::async_fd(crate::sys::timerfd()?)?,
        })
    }

    async fn sleep_until(&mut self, deadline: Instant) -> std::io::Result<()> {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        use std::os::fd::AsRawFd;
        let raw = self.fd.get_ref().as_raw_fd();
        crate::sys::timerfd_arm(raw, wait)?;
        loop {
            let mut guard = self.fd.readable().await?;
            if crate::sys::timerfd_expired(raw) {
                return Ok(());
            }
            guard.clear_ready();
        }
    }
}

async fn connect(plan: &ThreadPlan) -> Result<SendRequest<Bytes>, LoadError> {
    let server = plan.target.server;
    let tcp = TcpStream::connect(server)
        .await
        .map_err(LoadError::io(format!("connect {server}")))?;
    tcp.set_nodelay(true)
        .map_err(LoadError::io("TCP_NODELAY"))?;
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(16 * 1024 * 1024)
        .initial_connection_window_size(64 * 1024 * 1024);
    if !plan.target.tls {
        let (sender, connection) = builder
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|source| LoadError::Http2 { server, source })?;
        tokio::task::spawn_local(async move {
            let _ = connection.await;
        });
        return Ok(sender);
    }
    let config = super::tls::client_config(&plan.options.verify).map_err(LoadError::options)?;
    let name = rustls_pki_types::ServerName::try_from(plan.target.host.clone())
        .map_err(|e| LoadError::options(format!("{}: {e}", plan.target.host)))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(LoadError::io(format!("TLS handshake with {server}")))?;
    let (sender, connection) = builder
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|source| LoadError::Http2 { server, source })?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One request, recorded against its due time.
async fn timed_request(shared: Rc<Shared>, sender: SendRequest<Bytes>, path: String, due: Instant) {
    shared.start_recording_if_due();
    let timeout = shared.plan.options.request_timeout;
    let outcome = match tokio::time::timeout(timeout, request(&shared, sender, &path)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ErrorKind::Timeout),
    };
    let mut recorder = shared.recorder.borrow_mut();
    match outcome {
        Ok(()) => recorder.request_done(Instant::now().saturating_duration_since(due)),
        Err(kind) => recorder.error(kind),
    }
}

async fn request(shared: &Shared, sender: SendRequest<Bytes>, path: &str) -> Result<(), ErrorKind> {
    let options = &shared.plan.options;
    let mut builder = http::Request::builder()
        .method(options.method.as_str())
        .uri(format!(
            "{}://{}{}",
            if shared.plan.target.tls {
                "https"
            } else {
                "http"
            },
            shared.plan.target.authority,
            path
        ));
    for (name, value) in &options.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if options.body_size > 0 {
        builder = builder.header("content-length", options.body_size);
    }
    let head = builder.body(()).map_err(|_| ErrorKind::Io)?;
    let mut sender = sender
        .ready()
        .await
        .map_err(|_| ErrorKind::ConnectionClosed)?;
    let (response, mut stream) = sender
        .send_request(head, options.body_size == 0)
        .map_err(|_| ErrorKind::ConnectionClosed)?;
    let mut left = options.body_size;
    let mut offset = 0u64;
    while left > 0 {
        stream.reserve_capacity((left as usize).min(BODY_CHUNK));
        let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            _ => return Err(ErrorKind::StreamReset),
        };
        let n = granted.min(left as usize).min(BODY_CHUNK);
        let start = (offset % 251) as usize;
        let chunk = shared.body.slice(start..start + n);
        left -= n as u64;
        offset += n as u64;
        stream
            .send_data(chunk, left == 0)
            .map_err(|_| ErrorKind::StreamReset)?;
        shared.recorder.borrow_mut().sent(n);
    }
    let response = response.await.map_err(|_| ErrorKind::StreamReset)?;
    let status = response.status().as_u16();
    let expected: Option<u64> = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| ErrorKind::StreamReset)?;
        received += chunk.len() as u64;
        shared.recorder.borrow_mut().received(chunk.len());
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if let Some(kind) = ErrorKind::from_status(status) {
        return Err(kind);
    }
    if expected.is_some_and(|n| n != received) {
        return Err(ErrorKind::LengthMismatch);
    }
    Ok(())
}
