//! A shard: one pinned glommio executor serving its own UDP socket.
//!
//! The shard owns its QUIC connection table, its upstream pools and its counters. Four kinds of
//! tasks share that state on one thread (so a `RefCell` is enough and never held across an await):
//! the receive loop, which drains the socket, feeds quiche and starts request tasks; the request
//! tasks themselves (see [`crate::forward`]); the flusher, which sends what request tasks queued;
//! the inbox loop, which takes packets other shards handed off (see [`crate::handoff`]); and the
//! timer and control loop, which runs quiche timeouts and applies the coordinator's messages once
//! per tick.

use std::cell::RefCell;
use std::io;
use std::net::UdpSocket;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};

use crate::cid::{CidMinter, ServerCid};
use crate::connections::{
    Connection, Connections, Destination, StreamKey, StreamSlot, MAX_DATAGRAM,
};
use crate::control::ControlMsg;
use crate::forward::{self, Job};
use crate::handoff::{self, Inboxes};
use crate::headers::{translate_request, ClientInfo};
use crate::notify::Notify;
use crate::plan::{ProxyPlan, QuicSettings};
use crate::stats::ShardStats;
use crate::udp;
use crate::upstreams::Upstreams;

/// How often a shard looks at its control channel.
pub const CONTROL_TICK: Duration = Duration::from_millis(10);
/// Receive calls per wake-up before sending (each may carry many coalesced datagrams), so replies
/// are not delayed behind a long burst.
const RECEIVE_BATCH: usize = 64;
/// Memory glommio registers for io_uring buffers per shard. Kept small: the default asks for more
/// than an unprivileged memlock limit allows, and our large buffers are our own.
const IO_MEMORY: usize = 1 << 20;

/// Everything a shard needs to start.
pub struct ShardSpec {
    pub index: usize,
    pub cpu: usize,
    pub socket: UdpSocket,
    pub plan: ProxyPlan,
    pub control: Receiver<ControlMsg>,
    pub stats: Arc<ShardStats>,
    /// Secret for connection ID derivation, shared by the shards of a process.
    pub cid_secret: [u8; 32],
    /// This shard's hand-off inbox, and every shard's inbox address by steering key.
    pub inbox: UdpSocket,
    pub inboxes: Inboxes,
}

/// Why a shard could not start or stopped abnormally.
#[derive(Debug)]
pub enum ShardError {
    Executor(String),
    Tls(String),
    Socket(io::Error),
}

impl std::fmt::Display for ShardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardError::Executor(e) => write!(f, "executor: {e}"),
            ShardError::Tls(e) => write!(f, "TLS setup: {e}"),
            ShardError::Socket(e) => write!(f, "socket: {e}"),
        }
    }
}

impl std::error::Error for ShardError {}

/// A running shard's thread.
pub struct ShardThread {
    join: glommio::ExecutorJoinHandle<Result<(), ShardError>>,
}

impl ShardThread {
    /// Waits for the shard to stop.
    pub fn join(self) -> Result<(), ShardError> {
        self.join
            .join()
            .map_err(|e| ShardError::Executor(e.to_string()))?
    }
}

/// Starts a shard on its own thread, pinned to `spec.cpu`.
pub fn spawn(spec: ShardSpec) -> Result<ShardThread, ShardError> {
    let name = format!("spooky-shard-{}", spec.index);
    let join = LocalExecutorBuilder::new(Placement::Fixed(spec.cpu))
        .name(&name)
        .io_memory(IO_MEMORY)
        .spawn(move || run(spec))
        .map_err(|e| ShardError::Executor(e.to_string()))?;
    Ok(ShardThread { join })
}

/// Builds the QUIC configuration every connection of the shard shares.
pub fn quic_config(plan: &ProxyPlan) -> Result<quiche::Config, ShardError> {
    let tls = |e: quiche::Error, what: &str| ShardError::Tls(format!("{what}: {e}"));
    let mut config =
        quiche::Config::new(quiche::PROTOCOL_VERSION).map_err(|e| tls(e, "quiche config"))?;
    let cert = plan.tls.cert_chain.to_string_lossy();
    let key = plan.tls.private_key.to_string_lossy();
    config
        .load_cert_chain_from_pem_file(&cert)
        .map_err(|e| tls(e, &format!("certificate chain {cert}")))?;
    config
        .load_priv_key_from_pem_file(&key)
        .map_err(|e| tls(e, &format!("private key {key}")))?;
    config
        .set_application_protos(quiche::h3::APPLICATION_PROTOCOL)
        .map_err(|e| tls(e, "ALPN"))?;
    apply_quic_settings(&mut config, &plan.quic);
    Ok(config)
}

fn apply_quic_settings(config: &mut quiche::Config, quic: &QuicSettings) {
    config.set_max_idle_timeout(quic.idle_timeout.as_millis() as u64);
    config.set_max_recv_udp_payload_size(MAX_DATAGRAM);
    config.set_max_send_udp_payload_size(quic.max_udp_payload);
    config.set_initial_max_data(quic.connection_window);
    config.set_initial_max_stream_data_bidi_remote(quic.stream_window);
    config.set_initial_max_stream_data_bidi_local(quic.stream_window);
    // Unidirectional streams carry only HTTP/3 control and QPACK traffic.
    config.set_initial_max_stream_data_uni(64 * 1024);
    config.set_initial_max_streams_bidi(quic.max_concurrent_streams);
    config.set_initial_max_streams_uni(16);
    config.set_max_connection_window(quic.connection_window.max(16 * 1024 * 1024));
    config.set_max_stream_window(quic.stream_window.max(4 * 1024 * 1024));
    // Connection IDs name their shard, so a client whose address changes is still served: the
    // kernel steers by ID, or another shard hands its packets over.
    config.set_disable_active_migration(false);
    // quiche keeps one path slot per client address seen and frees none when a client's NAT
    // rebinds (it reuses the connection ID), and it sizes the slots by this limit: 8 lets a
    // connection survive 7 address changes.
    config.set_active_connection_id_limit(MAX_PATHS);
}

/// Path slots per connection; see [`apply_quic_settings`].
const MAX_PATHS: u64 = 8;

/// The shard's state, shared by its tasks on one thread.
pub struct Shard {
    pub conns: RefCell<Connections>,
    /// Swapped whole on reload; a request keeps the `Rc` it started with, so in-flight requests
    /// finish on the configuration they began under.
    pub upstreams: RefCell<Rc<Upstreams>>,
    pub index: usize,
    pub stats: Arc<ShardStats>,
    pub flush_needed: Notify,
    timer_changed: Rc<Notify>,
    /// Where body bytes of streams nobody reads any more are read into and dropped.
    discard: RefCell<Box<[u8]>>,
    /// Request tasks waiting to be spawned. glommio polls a task as soon as it is spawned, and
    /// requests are discovered while the connection table is borrowed, so spawning waits until
    /// that borrow ends (see [`Shard::spawn_pending`]).
    pending: RefCell<Vec<(StreamKey, Job)>>,
    /// Whether to write an access log line per request (`log.access_log`; changes on reload).
    pub access_log: std::cell::Cell<bool>,
    /// Where packets of other shards' connections go, and the socket they are sent from.
    inboxes: Inboxes,
    inbox: UdpSocket,
    handoff_buf: RefCell<Box<[u8]>>,
}

async fn run(spec: ShardSpec) -> Result<(), ShardError> {
    let ShardSpec {
        index,
        cpu,
        socket,
        plan,
        control,
        stats,
        cid_secret,
        inbox,
        inboxes,
    } = spec;
    let config = quic_config(&plan)?;
    let h3_config = quiche::h3::Config::new().map_err(|e| ShardError::Tls(e.to_string()))?;
    // Sending and draining use a second descriptor of the same socket, synchronously; glommio's
    // socket is used to sleep until datagrams arrive.
    let sync_socket = socket.try_clone().map_err(ShardError::Socket)?;
    let gro = udp::enable_gro(&sync_socket);
    let gso = udp::gso_supported(&sync_socket);
    // SAFETY: `into_raw_fd` gives up ownership of a valid, open UDP socket descriptor, which the
    // glommio socket now owns and closes.
    let wait_socket = unsafe { glommio::net::UdpSocket::from_raw_fd(socket.into_raw_fd()) };
    let sync_inbox = inbox.try_clone().map_err(ShardError::Socket)?;
    // SAFETY: as above, for the inbox socket.
    let wait_inbox = unsafe { glommio::net::UdpSocket::from_raw_fd(inbox.into_raw_fd()) };
    let timer_changed = Rc::new(Notify::default());
    let steering_key = cpu as u16;
    let conns = Connections::new(
        config,
        h3_config,
        CidMinter::new(&cid_secret, steering_key),
        steering_key,
        sync_socket,
        gso,
        plan.quic.max_udp_payload,
        stats.clone(),
        timer_changed.clone(),
    )
    .map_err(ShardError::Socket)?;
    let shard = Rc::new(Shard {
        conns: RefCell::new(conns),
        upstreams: RefCell::new(Rc::new(Upstreams::new(&plan, index, &stats, None))),
        index,
        stats: stats.clone(),
        flush_needed: Notify::default(),
        timer_changed,
        discard: RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice()),
        pending: RefCell::new(Vec::new()),
        access_log: std::cell::Cell::new(plan.access_log),
        inboxes,
        inbox: sync_inbox,
        handoff_buf: RefCell::new(vec![0; udp::MAX_BATCH_BYTES].into_boxed_slice()),
    });
    stats.thread_id.set(current_thread_id());
    stats.running.set(1);
    log::info!(
        "shard {index} serving {} on cpu {cpu} (GRO {}, GSO {})",
        shard.conns.borrow().local_addr(),
        if gro { "on" } else { "off" },
        if gso { "on" } else { "off" },
    );

    glommio::spawn_local(flusher(shard.clone())).detach();
    glommio::spawn_local(inbox_loop(shard.clone(), wait_inbox)).detach();
    glommio::spawn_local(timers(shard.clone())).detach();
    // The receive loop must be a task of its own. glommio 0.9 keeps one more waker reference
    // every time a pending datagram operation is polled again (`Source::collect_rw`), until the
    // operation completes; when this loop shared a task with the 10 ms control tick, every tick
    // re-polled the pending read, and on an idle socket the task's 16-bit reference count
    // overflowed after 32,767 ticks (5.5 minutes): the next wake-up panicked inside glommio and
    // the shard never ran again. Alone in its task, the read is only polled when it completes.
    let receiver = glommio::spawn_local(receive_loop(shard.clone(), wait_socket));
    let outcome = future::or(receiver, control_loop(shard.clone(), control)).await;
    stats.running.set(0);
    log::info!("shard {index} stopped");
    outcome
}

fn current_thread_id() -> u64 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as u64 }
}

async fn receive_loop(shard: Rc<Shard>, socket: glommio::net::UdpSocket) -> Result<(), ShardError> {
    // Big enough for a whole GRO batch; datagrams are read with recvmsg to learn the segment
    // size, so glommio only tells us when the socket is readable (a one-byte peek).
    let mut buf = vec![0u8; udp::MAX_BATCH_BYTES];
    let mut peek = [0u8; 1];
    loop {
        if let Err(e) = socket.peek_from(&mut peek).await {
            log::warn!("udp receive: {e}");
            continue;
        }
        let mut conns = shard.conns.borrow_mut();
        for _ in 0..RECEIVE_BATCH {
            let received = match udp::receive(conns.socket(), &mut buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("udp receive: {e}");
                    break;
                }
            };
            for datagram in udp::segments(&mut buf[..received.len], received.segment_size) {
                shard.on_datagram(&mut conns, datagram, received.from);
            }
        }
        conns.flush();
        drop(conns);
        shard.spawn_pending();
    }
}

/// Takes packets other shards of this process received for our connections.
async fn inbox_loop(shard: Rc<Shard>, inbox: glommio::net::UdpSocket) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, sender) = match inbox.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                log::warn!("hand-off receive: {e}");
                continue;
            }
        };
        if !shard.inboxes.is_ours(sender) {
            log::debug!("hand-off from {sender}, which is not one of our shards: dropped");
            continue;
        }
        let Some((client, packet)) = handoff::decode(&mut buf[..len]) else {
            continue;
        };
        let mut conns = shard.conns.borrow_mut();
        if let Destination::Connection(cid) = conns.receive(packet, client, true) {
            shard.process_events(&mut conns, cid);
        } else {
            shard.stats.datagrams_dropped_foreign.incr();
        }
        conns.flush();
        drop(conns);
        shard.spawn_pending();
    }
}

async fn flusher(shard: Rc<Shard>) {
    loop {
        shard.flush_needed.wait().await;
        // Let every other runnable task queue its writes first, so one flush sends them together.
        glommio::executor().yield_now().await;
        shard.conns.borrow_mut().flush();
    }
}

async fn timers(shard: Rc<Shard>) {
    loop {
        let next = shard.conns.borrow().next_deadline();
        match next {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                future::or(glommio::timer::sleep(wait), shard.timer_changed.wait()).await;
            }
            None => shard.timer_changed.wait().await,
        }
        let mut conns = shard.conns.borrow_mut();
        conns.fire_timers(Instant::now());
        if conns.has_dirty() {
            conns.flush();
        }
    }
}

async fn control_loop(shard: Rc<Shard>, control: Receiver<ControlMsg>) -> Result<(), ShardError> {
    let mut drain_deadline: Option<Instant> = None;
    loop {
        glommio::timer::sleep(CONTROL_TICK).await;
        shard.stats.heartbeat.incr();
        loop {
            match control.try_recv() {
                Ok(ControlMsg::BackendHealth(snapshot)) => {
                    shard.upstreams.borrow().apply_health(&snapshot);
                }
                Ok(ControlMsg::Reload(plan)) => {
                    shard.reload(&plan);
                }
                Ok(ControlMsg::Drain { deadline }) => {
                    log::info!("draining: no new connections, GOAWAY sent");
                    drain_deadline = Some(deadline);
                    shard.conns.borrow_mut().start_drain();
                }
                Ok(ControlMsg::Shutdown) | Err(TryRecvError::Disconnected) => {
                    shard.conns.borrow_mut().close_all();
                    return Ok(());
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if let Some(deadline) = drain_deadline {
            let mut conns = shard.conns.borrow_mut();
            conns.close_idle();
            if conns.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "drain timeout: closing {} connection(s) with requests in flight",
                    conns.len()
                );
                conns.close_all();
                return Ok(());
            }
        }
    }
}

impl Shard {
    fn on_datagram(
        self: &Rc<Self>,
        conns: &mut Connections,
        datagram: &mut [u8],
        from: std::net::SocketAddr,
    ) {
        match conns.receive(datagram, from, false) {
            Destination::Connection(cid) => self.process_events(conns, cid),
            Destination::Elsewhere(key) => self.hand_off(key, datagram, from),
            Destination::Dropped => {}
        }
    }

    /// Passes a packet to the shard of this process that owns its connection, if there is one.
    fn hand_off(&self, key: u16, datagram: &[u8], from: std::net::SocketAddr) {
        let Some(owner) = self.inboxes.owner(key) else {
            self.stats.datagrams_dropped_foreign.incr();
            return;
        };
        let mut buf = self.handoff_buf.borrow_mut();
        let Some(len) = handoff::encode(from, datagram, &mut buf) else {
            return;
        };
        match self.inbox.send_to(&buf[..len], owner) {
            Ok(_) => self.stats.datagrams_handed_off.incr(),
            Err(e) => {
                log::debug!("hand-off to shard with key {key} failed: {e}");
                self.stats.datagrams_dropped_foreign.incr();
            }
        }
    }

    /// Handles every HTTP/3 event the connection has pending.
    pub fn process_events(self: &Rc<Self>, conns: &mut Connections, cid: ServerCid) {
        loop {
            let Some(conn) = conns.table.get_mut(&cid) else {
                return;
            };
            let Some(h3) = conn.h3.as_mut() else {
                return;
            };
            match h3.poll(&mut conn.quic) {
                Ok((stream_id, quiche::h3::Event::Headers { list, more_frames })) => {
                    match conn.streams.get_mut(&stream_id) {
                        Some(slot) => {
                            // A second field section on a request stream is its trailers.
                            slot.trailers = Some(list);
                            slot.request_fin |= !more_frames;
                            slot.wake();
                        }
                        None => self.start_request(conn, cid, stream_id, list, more_frames),
                    }
                }
                Ok((stream_id, quiche::h3::Event::Data)) => {
                    match conn.streams.get_mut(&stream_id) {
                        Some(slot) => slot.wake(),
                        None => self.discard_body(conn, stream_id),
                    }
                }
                Ok((stream_id, quiche::h3::Event::Finished)) => {
                    if let Some(slot) = conn.streams.get_mut(&stream_id) {
                        slot.request_fin = true;
                        slot.wake();
                    }
                }
                Ok((stream_id, quiche::h3::Event::Reset(code))) => {
                    log::debug!("client reset stream {stream_id} with {code:#x}");
                    if let Some(mut slot) = conn.streams.remove(&stream_id) {
                        slot.wake();
                    }
                }
                Ok((_, quiche::h3::Event::PriorityUpdate | quiche::h3::Event::GoAway)) => {}
                Err(quiche::h3::Error::Done) => return,
                Err(e) => {
                    log::debug!("h3 connection error from {}: {e}", conn.peer);
                    // quiche has usually closed the connection with the precise code already;
                    // this only covers errors it leaves to the application.
                    if !conn.quic.is_closed() && !conn.quic.is_draining() {
                        let _ = conn
                            .quic
                            .close(true, crate::connections::H3_INTERNAL_ERROR, b"");
                    }
                    conns.mark_dirty(cid);
                    return;
                }
            }
        }
    }

    fn start_request(
        self: &Rc<Self>,
        conn: &mut Connection,
        cid: ServerCid,
        stream_id: u64,
        fields: Vec<quiche::h3::Header>,
        more_frames: bool,
    ) {
        use quiche::h3::NameValue;
        conn.next_request_stream = conn.next_request_stream.max(stream_id + 4);
        if conn
            .goaway_from
            .is_some_and(|first_refused| stream_id >= first_refused)
        {
            // Sent after our GOAWAY: never processed, so the client may safely retry it elsewhere.
            let code = crate::connections::H3_REQUEST_REJECTED;
            let _ = conn
                .quic
                .stream_shutdown(stream_id, quiche::Shutdown::Read, code);
            let _ = conn
                .quic
                .stream_shutdown(stream_id, quiche::Shutdown::Write, code);
            return;
        }
        self.stats.requests.incr();
        self.stats.streams_active.incr();
        let key = StreamKey {
            cid,
            serial: conn.serial,
            stream_id,
        };
        conn.streams.insert(
            stream_id,
            StreamSlot {
                request_fin: !more_frames,
                ..StreamSlot::default()
            },
        );
        let client = ClientInfo { ip: conn.peer.ip() };
        let job = match translate_request(fields.iter().map(|h| (h.name(), h.value())), client) {
            Err(malformed) => {
                self.stats.malformed_requests.incr();
                log::debug!("malformed request from {}: {malformed}", conn.peer);
                Job::Reply {
                    status: 400,
                    message: format!("malformed request: {malformed}"),
                }
            }
            Ok(head) => {
                let upstreams = self.upstreams.borrow().clone();
                let host = head.uri.authority().map_or("", |a| a.as_str());
                match upstreams
                    .router
                    .route(host, head.uri.path().as_bytes(), head.method.as_str())
                {
                    None => Job::Reply {
                        status: 404,
                        message: "no route for this path".into(),
                    },
                    Some(upstream) => Job::Proxy {
                        head: Box::new(head),
                        upstreams,
                        upstream,
                        has_body: more_frames,
                    },
                }
            }
        };
        self.pending.borrow_mut().push((key, job));
    }

    /// Starts the request tasks found since the last call. Must be called with the connection
    /// table not borrowed.
    pub fn spawn_pending(self: &Rc<Self>) {
        loop {
            let jobs = std::mem::take(&mut *self.pending.borrow_mut());
            if jobs.is_empty() {
                return;
            }
            for (key, job) in jobs {
                glommio::spawn_local(forward::serve(self.clone(), key, job)).detach();
            }
        }
    }

    /// Applies a new plan: routes, pools and balancing for new requests, and the TLS
    /// certificate and transport settings for new connections. Open connections and requests in
    /// flight are untouched.
    fn reload(&self, plan: &ProxyPlan) {
        match quic_config(plan) {
            Ok(config) => {
                let mut conns = self.conns.borrow_mut();
                conns.config = config;
                conns.max_packet = plan.quic.max_udp_payload;
            }
            Err(e) => {
                // The coordinator validated the files a moment ago; keep serving with the old
                // certificate rather than fail new handshakes.
                log::error!(
                    "shard {}: reload kept the old TLS settings: {e}",
                    self.index
                );
            }
        }
        self.access_log.set(plan.access_log);
        let previous = self.upstreams.borrow().clone();
        let next = Upstreams::new(plan, self.index, &self.stats, Some(&previous));
        *self.upstreams.borrow_mut() = Rc::new(next);
        log::info!("shard {}: configuration reloaded", self.index);
    }

    fn discard_body(&self, conn: &mut Connection, stream_id: u64) {
        let Some(h3) = conn.h3.as_mut() else {
            return;
        };
        let mut buf = self.discard.borrow_mut();
        while let Ok(n) = h3.recv_body(&mut conn.quic, stream_id, &mut buf) {
            if n == 0 {
                break;
            }
        }
    }
}
