//! Every open TCP connection of a shard, so that drain, the idle sweep and shutdown reach them.
//!
//! QUIC connections live in the endpoint's table, which the control loop walks; a TCP connection
//! is a task of its own, driven by hyper or h2. Each registers here and polls its entry for a
//! signal alongside its protocol work: `Drain` starts the protocol's graceful shutdown (HTTP/2
//! GOAWAY, HTTP/1.1 `Connection: close` after the response in flight), `Close` ends it at once.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use crate::rt::Latch;
use crate::stats::ShardStats;

/// What the shard asks of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Serve,
    /// Finish the requests in flight, take no more, then close.
    Drain,
    /// Close now.
    Close,
}

/// One connection's entry.
pub struct TcpConnection {
    signal: Cell<Signal>,
    waker: RefCell<Option<Waker>>,
    /// Requests started on the connection and not yet finished.
    in_flight: Cell<u32>,
    /// When the connection last had no request in flight (or opened).
    idle_since: Cell<Instant>,
}

impl TcpConnection {
    /// The shard's current signal; the connection's task is woken when it changes.
    pub fn poll_signal(&self, cx: &mut Context<'_>) -> Signal {
        let mut waker = self.waker.borrow_mut();
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        self.signal.get()
    }

    fn send(&self, signal: Signal) {
        // A connection told to close is not told to drain afterwards.
        if self.signal.get() == Signal::Close || self.signal.get() == signal {
            return;
        }
        self.signal.set(signal);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Counts a request until the returned guard drops.
    pub fn request(self: &Rc<Self>) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(self.clone())
    }
}

/// A request in flight on a connection; dropping it marks the request finished.
pub struct InFlight(Rc<TcpConnection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = self.0.in_flight.get() - 1;
        self.0.in_flight.set(left);
        if left == 0 {
            self.0.idle_since.set(Instant::now());
        }
    }
}

/// The shard's open TCP connections.
pub struct TcpConnections {
    stats: Arc<ShardStats>,
    next_id: Cell<u64>,
    open: RefCell<AHashMap<u64, Rc<TcpConnection>>>,
    /// Set when draining starts: the accept loops close their listeners, and the kernel sends
    /// new connections to the port's other listeners.
    draining: Latch,
}

impl TcpConnections {
    pub fn new(stats: Arc<ShardStats>) -> Self {
        TcpConnections {
            stats,
            next_id: Cell::new(0),
            open: RefCell::new(AHashMap::new()),
            draining: Latch::default(),
        }
    }

    /// Adds a connection; it leaves the registry when the returned registration drops.
    pub fn register(self: &Rc<Self>) -> Registration {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let signal = if self.draining.is_set() {
            Signal::Drain
        } else {
            Signal::Serve
        };
        let connection = Rc::new(TcpConnection {
            signal: Cell::new(signal),
            waker: RefCell::new(None),
            in_flight: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
        });
        self.open.borrow_mut().insert(id, connection.clone());
        self.stats.tcp_connections_accepted.incr();
        self.stats.tcp_connections_active.incr();
        Registration {
            registry: self.clone(),
            id,
            connection,
        }
    }

    pub fn len(&self) -> usize {
        self.open.borrow().len()
    }

    /// Stops accepting and asks every connection to finish what it has in flight.
    pub fn start_drain(&self) {
        self.draining.set();
        self.signal_all(Signal::Drain);
    }

    /// Closes every connection at once.
    pub fn close_all(&self) {
        self.signal_all(Signal::Close);
    }

    /// Asks connections idle for `timeout` or longer to close gracefully.
    pub fn close_idle(&self, now: Instant, timeout: Duration) {
        for connection in self.open.borrow().values() {
            if connection.in_flight.get() == 0
                && now.saturating_duration_since(connection.idle_since.get()) >= timeout
            {
                connection.send(Signal::Drain);
            }
        }
    }

    /// Resolves once draining has started.
    pub async fn accepting_stopped(&self) {
        self.draining.wait().await
    }

    fn signal_all(&self, signal: Signal) {
        // Waking only schedules the tasks; none runs while the registry is borrowed.
        for connection in self.open.borrow().values() {
            connection.send(signal);
        }
    }
}

/// A connection's place in the registry, held by its task.
pub struct Registration {
    registry: Rc<TcpConnections>,
    id: u64,
    connection: Rc<TcpConnection>,
}

impl std::ops::Deref for Registration {
    type Target = Rc<TcpConnection>;

    fn deref(&self) -> &Rc<TcpConnection> {
        &self.connection
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.open.borrow_mut().remove(&self.id);
        self.registry.stats.tcp_connections_active.sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn registry() -> Rc<TcpConnections> {
        Rc::new(TcpConnections::new(Arc::new(ShardStats::new())))
    }

    fn waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn drain_reaches_open_connections_and_new_ones_start_draining() {
        let registry = registry();
        let first = registry.register();
        let (wakes, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(first.poll_signal(&mut cx), Signal::Serve);
        registry.start_drain();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(first.poll_signal(&mut cx), Signal::Drain);
        let second = registry.register();
        assert_eq!(second.poll_signal(&mut cx), Signal::Drain);
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.stats.tcp_connections_active.get(), 2);
        drop(first);
        drop(second);
        assert_eq!(registry.len(), 0);
        assert_eq!(registry.stats.tcp_connections_accepted.get(), 2);
        assert_eq!(registry.stats.tcp_connections_active.get(), 0);
    }

    #[test]
    fn close_is_final() {
        let registry = registry();
        let connection = registry.register();
        registry.close_all();
        registry.start_drain();
        let (_, waker) = waker();
        assert_eq!(
            connection.poll_signal(&mut Context::from_waker(&waker)),
            Signal::Close
        );
    }

    #[test]
    fn only_connections_idle_long_enough_are_closed() {
        let registry = registry();
        let idle = registry.register();
        let busy = registry.register();
        let request = busy.request();
        let (_, waker) = waker();
        let mut cx = Context::from_waker(&waker);
        let timeout = Duration::from_secs(30);
        let opened = idle.idle_since.get();
        registry.close_idle(opened + Duration::from_secs(29), timeout);
        assert_eq!(idle.poll_signal(&mut cx), Signal::Serve);
        registry.close_idle(opened + Duration::from_secs(31), timeout);
        assert_eq!(idle.poll_signal(&mut cx), Signal::Drain);
        assert_eq!(busy.poll_signal(&mut cx), Signal::Serve);
        drop(request);
        assert!(busy.idle_since.get() >= opened);
        registry.close_idle(Instant::now() + Duration::from_secs(31), timeout);
        assert_eq!(busy.poll_signal(&mut cx), Signal::Drain);
    }
}
