//! One shard's keep-alive HTTP/1.1 connections to one backend (the exchanges on them are in
//! [`super`]).
//!
//! HTTP/1.1 carries one request at a time per connection, and this pool never pipelines: a
//! request takes an idle connection, or opens one, and hands it back only once its exchange
//! ended cleanly. The most recently used idle connection is taken first, so a quiet period lets
//! the others reach their idle timeout and close. At most `max_idle` connections wait per
//! backend; one more coming free is closed. Each connection's driver task closes it once it has
//! been idle for `idle_timeout`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::upload::UploadBody;
use crate::plan::KeepAlive;
use crate::rt;
use crate::stats::ShardStats;
use crate::upstream::dial::{DialError, Dialer};

/// Longest wait for a returned connection to be ready for its next request. hyper makes it
/// ready as soon as its task has seen the last response end, within a turn of the event loop;
/// the bound only stops a connection in an unexpected state from holding a request up.
const READY_WAIT: Duration = Duration::from_millis(100);

/// Why no connection could be opened to the backend.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    #[error("HTTP/1.1 handshake: {0}")]
    Handshake(#[source] hyper::Error),
}

/// What a connection's driver task and the pool both know about it.
#[derive(Default)]
struct ConnectionState {
    /// When the connection last came back to the pool; `None` while a request uses it.
    idle_since: Cell<Option<Instant>>,
    /// The driver task ended: the socket is closed.
    closed: Cell<bool>,
}

/// A connection a request holds for its one exchange.
pub struct Http1Connection {
    pub sender: SendRequest<UploadBody>,
    state: Rc<ConnectionState>,
}

pub struct Http1Pool {
    dialer: Dialer,
    /// The backend's counter slot.
    stats_slot: usize,
    connect_timeout: Duration,
    keepalive: KeepAlive,
    /// Idle connections, the most recently used last.
    idle: RefCell<Vec<Http1Connection>>,
    stats: Arc<ShardStats>,
}

impl Http1Pool {
    pub fn new(
        dialer: Dialer,
        stats_slot: usize,
        connect_timeout: Duration,
        keepalive: KeepAlive,
        stats: Arc<ShardStats>,
    ) -> Rc<Self> {
        Rc::new(Http1Pool {
            dialer,
            stats_slot,
            connect_timeout,
            keepalive,
            idle: RefCell::new(Vec::new()),
            stats,
        })
    }

    /// How this pool's connections are opened (an upgrade opens one of its own with it).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Idle connections waiting for a request (including ones that have not noticed they died).
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().len()
    }

    /// A connection ready for one request: an idle one if any is still open, else a new one.
    pub async fn acquire(self: &Rc<Self>) -> Result<Http1Connection, ConnectError> {
        loop {
            let Some(mut connection) = self.idle.borrow_mut().pop() else {
                break;
            };
            let expired = connection
                .state
                .idle_since
                .get()
                .is_some_and(|since| since.elapsed() >= self.keepalive.idle_timeout);
            if connection.state.closed.get() || connection.sender.is_closed() || expired {
                continue;
            }
            connection.state.idle_since.set(None);
            // An error here is a backend that closed the connection while it was idle (its own
            // keep-alive timeout, or `Connection: close`): the next idle one may still be open.
            if let Some(Ok(())) = rt::within(READY_WAIT, connection.sender.ready()).await {
                return Ok(connection);
            }
        }
        let outcome = rt::within(self.connect_timeout, self.connect())
            .await
            .unwrap_or(Err(ConnectError::TimedOut(self.connect_timeout)));
        match &outcome {
            Ok(_) => self.stats.backend_connects.incr(),
            Err(e) => {
                self.stats.backend_connect_failures.incr();
                log::debug!("backend {}: {e}", self.dialer.address());
            }
        }
        outcome
    }

    /// Takes back a connection whose exchange ended cleanly, or closes it when enough wait.
    pub fn release(&self, connection: Http1Connection) {
        let mut idle = self.idle.borrow_mut();
        if connection.state.closed.get() || idle.len() >= self.keepalive.max_idle {
            return;
        }
        connection.state.idle_since.set(Some(Instant::now()));
        idle.push(connection);
    }

    async fn connect(&self) -> Result<Http1Connection, ConnectError> {
        let stream = self.dialer.dial().await?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, UploadBody>(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        let state = Rc::new(ConnectionState::default());
        let driver_state = state.clone();
        let idle_timeout = self.keepalive.idle_timeout;
        let address = self.dialer.address();
        let stats = self.stats.clone();
        let slot = self.stats_slot;
        if let Some(counters) = stats.backend(slot) {
            counters.http1_connections.incr();
        }
        rt::spawn(async move {
            let served = async {
                if let Err(e) = connection.await {
                    log::debug!("http/1.1 connection to {address} ended: {e}");
                }
            };
            // Dropping the connection future closes the socket.
            future::or(served, close_when_idle(&driver_state, idle_timeout)).await;
            driver_state.closed.set(true);
            if let Some(counters) = stats.backend(slot) {
                counters.http1_connections.sub(1);
            }
        });
        Ok(Http1Connection { sender, state })
    }
}

/// Returns once the connection has sat in the pool for `idle_timeout`.
async fn close_when_idle(state: &ConnectionState, idle_timeout: Duration) {
    loop {
        let wait = match state.idle_since.get() {
            Some(since) => {
                let left = idle_timeout.saturating_sub(since.elapsed());
                if left.is_zero() {
                    return;
                }
                left
            }
            None => idle_timeout,
        };
        rt::sleep(wait).await;
    }
}
