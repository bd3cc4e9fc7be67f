//! The HTTP/3 loader thread: many quiche connections, one UDP socket each, driven by one event
//! loop. Each turn it issues due requests, sends what every busy connection has, waits for
//! sockets or the next deadline, reads everything readable and handles the HTTP/3 events.
//! Buffers (datagrams, request bodies, headers) are allocated once per thread.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use quiche::h3::{NameValue, WireErrorCode};

use super::poller::{precise_timers, Poller};
use super::schedule::Pacer;
use super::stats::{ErrorKind, Recorder};
use super::{LoadError, ThreadPlan};
use crate::backend::pattern_byte;

mod conn;

use conn::{flush, parse, push_body, Conn, Request};

const H3_NO_ERROR: u64 = WireErrorCode::NoError as u64;
const H3_REQUEST_CANCELLED: u64 = WireErrorCode::RequestCancelled as u64;
/// Request body bytes offered to quiche per call.
const BODY_CHUNK: usize = 64 * 1024;
/// Handshakes one thread keeps in flight at once. Opening thousands of connections at the same
/// instant measures this client's single thread, not the server: handshakes queue behind each
/// other here until they time out.
const HANDSHAKES_IN_FLIGHT: usize = 128;
/// Idle connections are pinged this often so the server's idle timeout does not close them.
const KEEPALIVE: Duration = Duration::from_secs(5);

struct Loader {
    plan: ThreadPlan,
    config: quiche::Config,
    h3_config: quiche::h3::Config,
    poller: Poller,
    conns: Vec<Option<Conn>>,
    recorder: Recorder,
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
    body: Vec<u8>,
    /// Prebuilt request headers, one list per path.
    headers: Vec<Vec<quiche::h3::Header>>,
    next_path: usize,
    issued: u64,
    /// Open loop: due times of requests not yet on a stream.
    queue: VecDeque<Instant>,
    pacer: Option<Pacer>,
}

pub(crate) fn run_thread(plan: ThreadPlan) -> Result<Recorder, LoadError> {
    precise_timers();
    let mut loader = Loader::new(plan)?;
    loader.run()?;
    Ok(loader.recorder)
}

impl Loader {
    fn new(plan: ThreadPlan) -> Result<Loader, LoadError> {
        let config = client_config(&plan)?;
        let h3_config = quiche::h3::Config::new().map_err(LoadError::Http3)?;
        let target = &plan.target;
        let method = plan.options.method.as_bytes();
        let headers = target
            .paths
            .iter()
            .map(|path| {
                let mut list = vec![
                    quiche::h3::Header::new(b":method", method),
                    quiche::h3::Header::new(b":scheme", b"https"),
                    quiche::h3::Header::new(b":authority", target.authority.as_bytes()),
                    quiche::h3::Header::new(b":path", path.as_bytes()),
                    quiche::h3::Header::new(b"user-agent", b"spooky-bench"),
                ];
                if plan.options.body_size > 0 {
                    list.push(quiche::h3::Header::new(
                        b"content-length",
                        plan.options.body_size.to_string().as_bytes(),
                    ));
                }
                for (name, value) in &plan.options.headers {
                    list.push(quiche::h3::Header::new(
                        name.to_ascii_lowercase().as_bytes(),
                        value.as_bytes(),
                    ));
                }
                list
            })
            .collect();
        let recording = plan.record_from <= plan.start;
        let pacer = plan
            .rate
            .map(|rate| Pacer::new(plan.record_from.min(plan.start), rate));
        Ok(Loader {
            conns: (0..plan.connections).map(|_| None).collect(),
            config,
            h3_config,
            poller: Poller::new().map_err(LoadError::io("epoll"))?,
            recorder: Recorder {
                recording,
                ..Recorder::default()
            },
            recv_buf: vec![0; 65_535],
            send_buf: vec![0; 65_535],
            body: (0..BODY_CHUNK as u64).map(pattern_byte).collect(),
            headers,
            next_path: 0,
            issued: 0,
            queue: VecDeque::new(),
            pacer,
            plan,
        })
    }

    /// Opens every connection and waits (up to the request timeout) until each can carry
    /// requests, then starts the run's clock.
    fn connect_all(&mut self) -> Result<(), LoadError> {
        let mut ready = Vec::new();
        let limit = Instant::now() + self.plan.options.request_timeout;
        loop {
            let now = Instant::now();
            self.open_missing(now)?;
            let all_up = self
                .conns
                .iter()
                .all(|c| c.as_ref().is_some_and(|c| c.h3.is_some()));
            if all_up || now >= limit {
                break;
            }
            self.flush_all();
            let timeout = self
                .conns
                .iter()
                .flatten()
                .filter_map(|c| c.quic.timeout_instant())
                .min()
                .map_or(limit, |t| t.min(limit))
                .saturating_duration_since(Instant::now());
            self.wait_and_service(Some(timeout), &mut ready)?;
        }
        self.plan.restart_clock(Instant::now());
        if let Some(rate) = self.plan.rate {
            self.pacer = Some(Pacer::new(self.plan.start, rate));
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), LoadError> {
        if !self.plan.options.handshake_only && self.plan.options.idle_hold.is_none() {
            self.connect_all()?;
        }
        let mut ready = Vec::new();
        let mut idle_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if !self.recorder.recording && now >= self.plan.record_from {
                self.recorder.recording = true;
            }
            if let Some(hold) = self.plan.options.idle_hold {
                let all_open = self
                    .conns
                    .iter()
                    .all(|c| c.as_ref().is_some_and(|c| c.established));
                if all_open && idle_since.is_none() {
                    self.recorder.connections_established = self.conns.len() as u64;
                    idle_since = Some(now);
                }
                if idle_since.is_some_and(|t| now >= t + hold)
                    || now >= self.plan.start + hold + self.plan.options.request_timeout
                {
                    if idle_since.is_none() {
                        self.recorder.connections_established =
                            self.conns
                                .iter()
                                .flatten()
                                .filter(|c| c.established)
                                .count() as u64;
                    }
                    break;
                }
            } else if self.plan.done(now, &self.recorder) {
                break;
            }
            self.open_missing(now)?;
            if let Some(pacer) = &mut self.pacer {
                if self.plan.stop_at.is_none_or(|t| now < t) {
                    pacer.take_due(now, &mut self.queue);
                }
            }
            self.issue(now);
            self.flush_all();
            let timeout = self
                .next_deadline()
                .map(|t| t.saturating_duration_since(Instant::now()));
            self.wait_and_service(timeout, &mut ready)?;
        }
        self.close_all();
        Ok(())
    }

    /// One turn of the event loop after sending: waits for sockets or `timeout`, reads what
    /// arrived, then runs timeouts and HTTP/3 events for every slot.
    fn wait_and_service(
        &mut self,
        timeout: Option<std::time::Duration>,
        ready: &mut Vec<u64>,
    ) -> Result<(), LoadError> {
        ready.clear();
        self.poller
            .wait(timeout, ready)
            .map_err(LoadError::io("epoll"))?;
        for &token in ready.iter() {
            self.receive(token as usize);
        }
        let now = Instant::now();
        for slot in 0..self.conns.len() {
            self.service(slot, now);
        }
        Ok(())
    }

    /// Opens a connection in every empty slot (at start, and after one closed).
    fn open_missing(&mut self, now: Instant) -> Result<(), LoadError> {
        let mut opening = self
            .conns
            .iter()
            .flatten()
            .filter(|c| !c.established)
            .count();
        for slot in 0..self.conns.len() {
            if opening >= HANDSHAKES_IN_FLIGHT {
                break;
            }
            if self.conns[slot].is_none() {
                opening += 1;
                let conn = self.connect(now)?;
                self.poller
                    .add(conn.socket.as_raw_fd(), slot as u64)
                    .map_err(LoadError::io("epoll"))?;
                self.conns[slot] = Some(conn);
            }
        }
        Ok(())
    }

    fn connect(&mut self, now: Instant) -> Result<Conn, LoadError> {
        let target = &self.plan.target;
        let socket = crate::client::bind_connected(target.server)
            .map_err(LoadError::io(format!("udp socket to {}", target.server)))?;
        socket
            .set_nonblocking(true)
            .map_err(LoadError::io("non-blocking socket"))?;
        let local = socket
            .local_addr()
            .map_err(LoadError::io("socket address"))?;
        let mut scid = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut scid)
            .map_err(|_| LoadError::Random)?;
        let quic = quiche::connect(
            crate::client::sni_for(&target.host),
            &quiche::ConnectionId::from_ref(&scid),
            local,
            target.server,
            &mut self.config,
        )
        .map_err(|source| LoadError::Quic {
            what: "quic connect",
            source,
        })?;
        Ok(Conn {
            socket,
            local,
            quic,
            h3: None,
            requests: HashMap::new(),
            opened: now,
            established: false,
            last_ping: now,
        })
    }

    /// Starts requests on connections with free streams.
    fn issue(&mut self, now: Instant) {
        if self.plan.options.handshake_only || self.plan.options.idle_hold.is_some() {
            return;
        }
        let streams = self.plan.options.streams;
        let open_loop = self.pacer.is_some();
        let stopping = self.plan.stop_at.is_some_and(|t| now >= t);
        for slot in 0..self.conns.len() {
            loop {
                if stopping || self.plan.requests.is_some_and(|n| self.issued >= n) {
                    return;
                }
                let Some(conn) = self.conns[slot].as_mut() else {
                    break;
                };
                if conn.h3.is_none() || conn.requests.len() >= streams {
                    break;
                }
                let due = if open_loop {
                    match self.queue.front() {
                        Some(&due) => due,
                        None => return,
                    }
                } else {
                    now
                };
                let path = self.next_path;
                let has_body = self.plan.options.body_size > 0;
                let h3 = conn.h3.as_mut().expect("checked above");
                match h3.send_request(&mut conn.quic, &self.headers[path], !has_body) {
                    Ok(stream_id) => {
                        if open_loop {
                            self.queue.pop_front();
                        }
                        self.next_path = (path + 1) % self.headers.len();
                        self.issued += 1;
                        conn.requests.insert(
                            stream_id,
                            Request {
                                due,
                                body_left: self.plan.options.body_size,
                                body_offset: 0,
                                received: 0,
                                expected: None,
                                status: 0,
                            },
                        );
                        if has_body {
                            push_body(conn, stream_id, &self.body, &mut self.recorder);
                        }
                    }
                    // Stream limit or flow control: try again once the server lets us.
                    Err(_) => break,
                }
            }
        }
    }

    fn flush_all(&mut self) {
        for conn in self.conns.iter_mut().flatten() {
            flush(conn, &mut self.send_buf);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.plan.stop_at;
        let mut earliest = |t: Instant| {
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        };
        for conn in self.conns.iter().flatten() {
            if let Some(t) = conn.quic.timeout_instant() {
                earliest(t);
            }
            if self.plan.options.idle_hold.is_some() && conn.established {
                earliest(conn.last_ping + KEEPALIVE);
            }
            for request in conn.requests.values() {
                earliest(request.due + self.plan.options.request_timeout);
            }
        }
        if let Some(pacer) = &self.pacer {
            earliest(pacer.next_due());
        }
        if let Some(hold) = self.plan.options.idle_hold {
            earliest(self.plan.start + hold + self.plan.options.request_timeout);
        }
        if self.plan.record_from > Instant::now() {
            earliest(self.plan.record_from);
        }
        next
    }

    fn receive(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
            return;
        };
        while let Ok((n, from)) = conn.socket.recv_from(&mut self.recv_buf) {
            let info = quiche::RecvInfo {
                from,
                to: conn.local,
            };
            let _ = conn.quic.recv(&mut self.recv_buf[..n], info);
        }
    }

    /// Timeouts, handshake completion, HTTP/3 events and closed connections for one slot.
    fn service(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        if conn.quic.timeout_instant().is_some_and(|t| t <= now) {
            conn.quic.on_timeout();
        }
        if !conn.established && conn.quic.is_established() {
            conn.established = true;
            let host = &self.plan.target.host;
            if let Err(e) =
                crate::client::check_ip_literal(&conn.quic, host, &self.plan.options.verify)
            {
                log::warn!("{e}");
                self.recorder.error(ErrorKind::HandshakeFailed);
                // TLS alert 42, bad_certificate (RFC 8446 §6.2), as a crypto error (RFC 9001 §4.8).
                let _ = conn.quic.close(false, 0x100 + 42, b"");
                return;
            }
            self.recorder.connections_established += 1;
            match quiche::h3::Connection::with_transport(&mut conn.quic, &self.h3_config) {
                Ok(h3) => conn.h3 = Some(h3),
                Err(_) => {
                    let _ = conn.quic.close(true, H3_NO_ERROR, b"");
                }
            }
        }
        // A handshake counts once the server's HTTP/3 SETTINGS arrived: the server has then
        // finished its side too and the connection is usable. (The client's own "established"
        // comes one flight earlier; closing there would leave the server's side unfinished.)
        if self.plan.options.handshake_only {
            let ready = conn.h3.as_mut().is_some_and(|h3| {
                // Polling reads the server's control stream. Bounded: an event we do not
                // consume (a body, say) could otherwise be reported again and again.
                for _ in 0..16 {
                    if h3.poll(&mut conn.quic).is_err() {
                        break;
                    }
                }
                h3.peer_settings_raw().is_some()
            });
            if ready {
                self.recorder
                    .handshake_done(now.saturating_duration_since(conn.opened));
                let _ = conn.quic.close(true, H3_NO_ERROR, b"");
                flush(conn, &mut self.send_buf);
                self.conns[slot] = None;
                return;
            }
        }
        if conn.established
            && self.plan.options.idle_hold.is_some()
            && now >= conn.last_ping + KEEPALIVE
        {
            let _ = conn.quic.send_ack_eliciting();
            conn.last_ping = now;
        }
        self.events(slot, now);
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        // Requests that took too long are given up (and cancelled, so the stream is freed).
        let timeout = self.plan.options.request_timeout;
        let expired: Vec<u64> = conn
            .requests
            .iter()
            .filter(|(_, r)| now >= r.due + timeout)
            .map(|(id, _)| *id)
            .collect();
        for stream_id in expired {
            conn.requests.remove(&stream_id);
            let _ =
                conn.quic
                    .stream_shutdown(stream_id, quiche::Shutdown::Read, H3_REQUEST_CANCELLED);
            let _ =
                conn.quic
                    .stream_shutdown(stream_id, quiche::Shutdown::Write, H3_REQUEST_CANCELLED);
            self.recorder.error(ErrorKind::Timeout);
        }
        if !conn.established && now >= conn.opened + timeout && !conn.quic.is_closed() {
            let _ = conn.quic.close(false, 0, b"handshake timeout");
        }
        if conn.quic.is_closed() {
            let kind = if conn.quic.is_timed_out() {
                ErrorKind::Timeout
            } else {
                ErrorKind::ConnectionClosed
            };
            if !conn.established {
                self.recorder.error(ErrorKind::HandshakeFailed);
            }
            for _ in 0..conn.requests.len() {
                self.recorder.error(kind);
            }
            self.conns[slot] = None;
        }
    }

    fn events(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let Some(h3) = conn.h3.as_mut() else {
            return;
        };
        loop {
            match h3.poll(&mut conn.quic) {
                Ok((stream_id, quiche::h3::Event::Headers { list, .. })) => {
                    if let Some(request) = conn.requests.get_mut(&stream_id) {
                        for header in &list {
                            match header.name() {
                                b":status" => {
                                    request.status = parse(header.value()).unwrap_or(0) as u16
                                }
                                b"content-length" => request.expected = parse(header.value()),
                                _ => {}
                            }
                        }
                    }
                }
                Ok((stream_id, quiche::h3::Event::Data)) => {
                    while let Ok(n) = h3.recv_body(&mut conn.quic, stream_id, &mut self.recv_buf) {
                        if n == 0 {
                            break;
                        }
                        self.recorder.received(n);
                        if let Some(request) = conn.requests.get_mut(&stream_id) {
                            request.received += n as u64;
                        }
                    }
                }
                Ok((stream_id, quiche::h3::Event::Finished)) => {
                    if let Some(request) = conn.requests.remove(&stream_id) {
                        if let Some(kind) = ErrorKind::from_status(request.status) {
                            self.recorder.error(kind);
                        } else if request.status == 0
                            || request.expected.is_some_and(|n| n != request.received)
                        {
                            self.recorder.error(ErrorKind::LengthMismatch);
                        } else {
                            self.recorder
                                .request_done(now.saturating_duration_since(request.due));
                        }
                    }
                }
                Ok((stream_id, quiche::h3::Event::Reset(_))) => {
                    if conn.requests.remove(&stream_id).is_some() {
                        self.recorder.error(ErrorKind::StreamReset);
                    }
                }
                Ok(_) => {}
                Err(quiche::h3::Error::Done) => break,
                Err(_) => {
                    let _ = conn.quic.close(true, H3_NO_ERROR, b"");
                    break;
                }
            }
        }
        // Request bodies continue as flow control opens.
        let pending: Vec<u64> = conn
            .requests
            .iter()
            .filter(|(_, r)| r.body_left > 0)
            .map(|(id, _)| *id)
            .collect();
        for stream_id in pending {
            push_body(conn, stream_id, &self.body, &mut self.recorder);
        }
    }

    fn close_all(&mut self) {
        for conn in self.conns.iter_mut().flatten() {
            let _ = conn.quic.close(true, H3_NO_ERROR, b"");
            flush(conn, &mut self.send_buf);
        }
    }
}

fn client_config(plan: &ThreadPlan) -> Result<quiche::Config, LoadError> {
    let idle = plan
        .options
        .idle_hold
        .map_or(plan.options.request_timeout, |hold| {
            hold + plan.options.request_timeout
        });
    crate::client::client_config(&plan.options.verify, idle).map_err(|source| LoadError::Quic {
        what: "quic config",
        source,
    })
}
