//! One shard's HTTP/2 connections to one backend (the exchanges on them are in [`super`]).
//!
//! Requests share multiplexed connections. A connection takes new streams until it holds as many
//! as the backend's SETTINGS_MAX_CONCURRENT_STREAMS allows; then the pool opens another. A
//! connection that fails is dropped from the pool and the next request opens a fresh one. Opening
//! is done by a detached task, so a client that cancels its request cannot leave the pool stuck in
//! "connecting"; requests that arrive meanwhile wait for that attempt instead of each opening
//! their own.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::rt;
use crate::stats::ShardStats;
use crate::upstream::dial::{DialError, Dialer};
use bytes::Bytes;
use h2::client::SendRequest;

/// The connection attempt a request waited for failed (the pool logged why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectFailed;

/// Receive windows we grant backends: large enough for full speed over a LAN, small enough that a
/// slow client bounds what one stream can hold here.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest DATA frame backends may send us. Above h2's 16 KiB default so that a bulk response
/// costs fewer frames, buffers and wake-ups per byte.
const MAX_FRAME_SIZE: u32 = 256 * 1024;

/// Why no connection could be opened to the backend.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    #[error("HTTP/2 handshake: {0}")]
    Handshake(#[source] h2::Error),
}

struct PooledConnection {
    sender: SendRequest<Bytes>,
    in_flight: Cell<usize>,
    closed: Rc<Cell<bool>>,
}

impl PooledConnection {
    fn has_room(&self) -> bool {
        !self.closed.get() && self.in_flight.get() < self.sender.current_max_send_streams()
    }
}

/// A stream slot held on one pooled connection; giving it back is dropping it.
pub struct Lease {
    connection: Rc<PooledConnection>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let n = self.connection.in_flight.get();
        self.connection.in_flight.set(n.saturating_sub(1));
    }
}

impl Lease {
    /// Marks the connection unusable, so no new stream is placed on it.
    pub fn mark_broken(&self) {
        self.connection.closed.set(true);
    }
}

pub struct Http2Pool {
    dialer: Dialer,
    /// The backend's counter slot.
    stats_slot: usize,
    connect_timeout: Duration,
    connections: RefCell<Vec<Rc<PooledConnection>>>,
    connecting: Cell<bool>,
    /// Bumped when a connection attempt ends; waiters compare it with the value they saw.
    attempts_finished: Cell<u64>,
    /// Whether the last attempt succeeded (its error was logged when it failed).
    last_attempt_ok: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
    stats: Arc<ShardStats>,
}

impl Http2Pool {
    pub fn new(
        dialer: Dialer,
        stats_slot: usize,
        connect_timeout: Duration,
        stats: Arc<ShardStats>,
    ) -> Rc<Self> {
        Rc::new(Http2Pool {
            dialer,
            stats_slot,
            connect_timeout,
            connections: RefCell::new(Vec::new()),
            connecting: Cell::new(false),
            attempts_finished: Cell::new(0),
            last_attempt_ok: Cell::new(true),
            waiters: RefCell::new(Vec::new()),
            stats,
        })
    }

    /// Open connections (including ones that have not noticed they died yet).
    pub fn connection_count(&self) -> usize {
        self.connections.borrow().len()
    }

    /// Returns a sender ready to open one stream, and the lease that accounts for it; `Err` when
    /// the connection attempt this call waited for failed.
    pub async fn acquire(self: &Rc<Self>) -> Result<(SendRequest<Bytes>, Lease), ConnectFailed> {
        loop {
            if let Some(connection) = self.connection_with_room() {
                connection.in_flight.set(connection.in_flight.get() + 1);
                let lease = Lease {
                    connection: connection.clone(),
                };
                match connection.sender.clone().ready().await {
                    Ok(sender) => return Ok((sender, lease)),
                    Err(e) => {
                        log::debug!("h2 connection to {} unusable: {e}", self.dialer.address());
                        lease.mark_broken();
                        continue;
                    }
                }
            }
            let seen = self.attempts_finished.get();
            if !self.connecting.get() {
                self.connecting.set(true);
                rt::spawn(Self::open_connection(self.clone()));
            }
            self.attempt_after(seen).await?;
        }
    }

    fn connection_with_room(&self) -> Option<Rc<PooledConnection>> {
        let mut connections = self.connections.borrow_mut();
        connections.retain(|c| !c.closed.get());
        connections.iter().find(|c| c.has_room()).cloned()
    }

    /// Waits until the attempt running after `seen` finishes, and returns its outcome.
    async fn attempt_after(&self, seen: u64) -> Result<(), ConnectFailed> {
        poll_fn(|cx| {
            if self.attempts_finished.get() != seen {
                return Poll::Ready(if self.last_attempt_ok.get() {
                    Ok(())
                } else {
                    Err(ConnectFailed)
                });
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    async fn open_connection(self: Rc<Self>) {
        let outcome = rt::within(self.connect_timeout, self.connect())
            .await
            .unwrap_or(Err(ConnectError::TimedOut(self.connect_timeout)));
        match outcome {
            Ok(connection) => {
                self.stats.backend_connects.incr();
                self.connections.borrow_mut().push(connection);
                self.last_attempt_ok.set(true);
            }
            Err(e) => {
                self.stats.backend_connect_failures.incr();
                log::debug!("backend {}: {e}", self.dialer.address());
                self.last_attempt_ok.set(false);
            }
        }
        self.connecting.set(false);
        self.attempts_finished
            .set(self.attempts_finished.get().wrapping_add(1));
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    async fn connect(&self) -> Result<Rc<PooledConnection>, ConnectError> {
        let stream = self.dialer.dial().await?;
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_concurrent_reset_streams(1024)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(ConnectError::Handshake)?;
        let ping_pong = connection.ping_pong();
        let closed = Rc::new(Cell::new(false));
        let closed_by_driver = closed.clone();
        let address = self.dialer.address();
        let stats = self.stats.clone();
        let slot = self.stats_slot;
        if let Some(counters) = stats.backend(slot) {
            counters.h2_connections.incr();
        }
        rt::spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("h2 connection to {address} ended: {e}");
            }
            closed_by_driver.set(true);
            if let Some(counters) = stats.backend(slot) {
                counters.h2_connections.sub(1);
            }
        });
        // One PING round trip: the backend sends its SETTINGS before answering, so afterwards
        // its SETTINGS_MAX_CONCURRENT_STREAMS is known and the pool never overfills the
        // connection (which the backend would answer with REFUSED_STREAM).
        if let Some(mut ping_pong) = ping_pong {
            ping_pong
                .ping(h2::Ping::opaque())
                .await
                .map_err(ConnectError::Handshake)?;
        }
        Ok(Rc::new(PooledConnection {
            sender,
            in_flight: Cell::new(0),
            closed,
        }))
    }
}
