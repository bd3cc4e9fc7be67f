//! A shard: one pinned executor serving its own UDP socket and TCP listener, driving every layer
//! below it.
//!
//! The shard owns its QUIC endpoint, its TCP connections, its upstreams and its counters. Its tasks share that state
//! on one thread ([`tasks`]): the receive loop, which drains the socket into the endpoint and
//! starts request tasks; the request tasks themselves ([`crate::proxy::serve`]); the flusher,
//! which polls the events request tasks asked for and sends what they wrote; the inbox loop, which
//! takes packets other shards handed off ([`crate::net::handoff`]); the timer loop; the TCP
//! accept loop and a task per TCP connection ([`tcp`]); and the control loop ([`control`]), which applies the coordinator's messages once per tick.

mod control;
mod overload;
mod tasks;
mod tcp;

use overload::{OverloadManager, Stage};
use std::cell::{Cell, RefCell};
use std::io;
use std::net::UdpSocket;
use std::rc::Rc;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use futures_lite::future;

use crate::control::ControlMsg;
use crate::h3::{Connections, NewRequest};
use crate::net::handoff::Inboxes;
use crate::net::udp::{self, SendBatch};
use crate::plan::ProxyPlan;
use crate::proxy::ProxyContext;
use crate::quic::cid::ServerCid;
use crate::quic::config::{quic_config, ConfigError};
use crate::quic::endpoint::MAX_DATAGRAM;
use crate::quic::Endpoint;
use crate::rt::{self, Notify};
use crate::stats::ShardStats;
use crate::upstream::Upstreams;

pub use control::CONTROL_TICK;

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
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("executor: {0}")]
    Executor(#[source] rt::ExecutorError),
    #[error("TLS setup: {0}")]
    Tls(#[from] ConfigError),
    #[error("TLS setup for TCP: {0}")]
    TcpTls(#[from] rustls::Error),
    #[error("socket: {0}")]
    Socket(#[from] io::Error),
}

/// A running shard's thread.
pub struct ShardThread {
    join: rt::ExecutorThread<Result<(), ShardError>>,
}

impl ShardThread {
    /// Waits for the shard to stop.
    pub fn join(self) -> Result<(), ShardError> {
        self.join.join().map_err(ShardError::Executor)?
    }
}

/// Starts a shard on its own thread, pinned to `spec.cpu`.
pub fn spawn(spec: ShardSpec) -> Result<ShardThread, ShardError> {
    let name = format!("spooky-shard-{}", spec.index);
    let join =
        rt::start_pinned(&name, spec.cpu, move || run(spec)).map_err(ShardError::Executor)?;
    Ok(ShardThread { join })
}

/// The shard's state, shared by its tasks on one thread. Borrows of its cells never cross an
/// await; the endpoint's borrow rules are in [`crate::h3`].
struct Shard {
    index: usize,
    stats: Arc<ShardStats>,
    conns: Rc<Connections>,
    proxy: Rc<ProxyContext>,
    /// Swapped whole on reload; a request keeps the `Rc` it started with, so in-flight requests
    /// finish on the configuration they began under.
    upstreams: RefCell<Rc<Upstreams>>,
    /// The socket packets are sent from (a second descriptor of the one the receive task waits
    /// on), and the batch they are built in.
    socket: UdpSocket,
    batch: RefCell<SendBatch>,
    /// Wakes the timer task when the endpoint's earliest deadline moved earlier.
    timer_changed: Notify,
    /// Reused buffers: new requests found by one poll, connections to poll again, and where body
    /// bytes of streams nobody reads any more are dropped.
    new_requests: Cell<Vec<NewRequest>>,
    repoll: Cell<Vec<ServerCid>>,
    discard: RefCell<Box<[u8]>>,
    /// Where packets of other shards' connections go, and the socket they are sent from.
    inboxes: Inboxes,
    inbox: UdpSocket,
    handoff_buf: RefCell<Box<[u8]>>,
    /// The TCP listener's TLS settings, replaced on reload for new handshakes.
    tcp_tls: RefCell<Arc<rustls::ServerConfig>>,
    /// `Alt-Svc` on every TCP response, pointing at our HTTP/3 port; replaced on reload.
    alt_svc: RefCell<Option<http::HeaderValue>>,
    /// Flow-control windows and stream limits, which HTTP/2 clients get as well.
    quic_settings: crate::plan::QuicSettings,
    /// Open TCP connections, for drain and the idle sweep.
    tcp: Rc<tcp::TcpConnections>,
    /// Where shedding starts, and the stage it is at (read on every new request and TCP
    /// connection, so kept in a `Cell` apart from the manager).
    overload: RefCell<OverloadManager>,
    overload_stage: Cell<Stage>,
}

impl Shard {
    /// Whether new requests get `503` (overload stage 3).
    fn shedding_requests(&self) -> bool {
        self.overload_stage.get() >= Stage::ShedRequests
    }
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
    // Sending and draining use a second descriptor of the same socket, synchronously; the
    // runtime's socket is used to sleep until datagrams arrive.
    let sync_socket = socket.try_clone()?;
    let gro = udp::enable_gro(&sync_socket);
    let gso = udp::gso_supported(&sync_socket);
    let wait_socket = rt::udp_socket(socket);
    let sync_inbox = inbox.try_clone()?;
    let wait_inbox = rt::udp_socket(inbox);
    let local_addr = sync_socket.local_addr()?;
    // glommio binds with SO_REUSEPORT: every shard's listener shares the port, and the kernel
    // spreads new connections between them.
    let tcp_listener = rt::tcp_listener(local_addr)?;
    let redirect_listener = plan.redirect.map(rt::tcp_listener).transpose()?;
    let tcp_tls = crate::tls::tcp_server_config(&plan.tls, &plan.sni)?;
    let alt_svc = alt_svc(local_addr.port(), &plan);
    let steering_key = cpu as u16;
    let endpoint = Endpoint::new(
        config,
        &cid_secret,
        steering_key,
        sync_socket.local_addr()?,
        &plan.quic,
        stats.clone(),
    );
    let shard = Rc::new(Shard {
        index,
        stats: stats.clone(),
        conns: Rc::new(Connections::new(endpoint)),
        proxy: Rc::new(ProxyContext {
            stats: stats.clone(),
            shard_index: index,
            access_log: Cell::new(plan.access_log),
        }),
        upstreams: RefCell::new(Rc::new(Upstreams::new(&plan, index, &stats, None))),
        socket: sync_socket,
        batch: RefCell::new(SendBatch::new(gso)),
        timer_changed: Notify::default(),
        new_requests: Cell::new(Vec::new()),
        repoll: Cell::new(Vec::new()),
        discard: RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice()),
        inboxes,
        inbox: sync_inbox,
        handoff_buf: RefCell::new(vec![0; udp::MAX_BATCH_BYTES].into_boxed_slice()),
        tcp_tls: RefCell::new(tcp_tls),
        alt_svc: RefCell::new(alt_svc),
        quic_settings: plan.quic.clone(),
        tcp: Rc::new(tcp::TcpConnections::new(stats.clone())),
        overload: RefCell::new(OverloadManager::new(plan.overload)),
        overload_stage: Cell::new(Stage::Normal),
    });
    stats.thread_id.set(crate::sys::thread_id());
    stats.running.set(1);
    log::info!(
        "shard {index} serving {} on cpu {cpu} (GRO {}, GSO {})",
        shard.conns.endpoint.borrow().local_addr(),
        if gro { "on" } else { "off" },
        if gso { "on" } else { "off" },
    );

    rt::spawn(tasks::flusher(shard.clone()));
    rt::spawn(tasks::inbox_loop(shard.clone(), wait_inbox));
    rt::spawn(tasks::timers(shard.clone()));
    rt::spawn(tcp::accept_loop(shard.clone(), tcp_listener));
    if let Some(listener) = redirect_listener {
        let https_port = local_addr.port();
        rt::spawn(tcp::redirect::accept_loop(
            shard.clone(),
            listener,
            https_port,
        ));
    }
    // The receive loop must be a task of its own (see `crate::rt`): when it shared a task with
    // the 10 ms control tick, every tick re-polled the pending read, and on an idle socket the
    // task's 16-bit waker reference count overflowed after 32,767 ticks (5.5 minutes).
    let receiver = rt::spawn_joined(tasks::receive_loop(shard.clone(), wait_socket));
    let outcome = future::or(receiver, control::control_loop(shard.clone(), control)).await;
    stats.running.set(0);
    log::info!("shard {index} stopped");
    outcome
}

/// The `Alt-Svc` field value that sends TCP clients to HTTP/3 on `port` (RFC 7838 §3, RFC 9114
/// §3.1.1), if the plan advertises it.
fn alt_svc(port: u16, plan: &ProxyPlan) -> Option<http::HeaderValue> {
    let max_age = plan.alt_svc_max_age?;
    http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma={max_age}")).ok()
}
