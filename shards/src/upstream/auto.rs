//! `protocol = "auto"`: each backend chooses HTTP/2 or HTTP/1.1 by ALPN over TLS. The first
//! connection a shard opens to a backend learns which (and is then closed); from then on the
//! backend has the matching pool, whose connections offer the same two protocols. A backend
//! whose answer changes later (a redeploy that drops HTTP/2) fails that pool's handshakes until
//! the next reload makes the shard learn again.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::dial::Dialer;
use super::http1::pool::Http1Pool;
use super::http2::pool::Http2Pool;
use super::BackendPool;
use crate::plan::KeepAlive;
use crate::rt;
use crate::stats::ShardStats;
use crate::tls::backend::BackendTls;

pub struct AutoPool {
    address: SocketAddr,
    host: Option<String>,
    tls: BackendTls,
    stats_slot: usize,
    connect_timeout: Duration,
    keepalive: KeepAlive,
    stats: Arc<ShardStats>,
    /// The pool for the protocol the backend chose, once known.
    learned: RefCell<Option<BackendPool>>,
    /// Opens the connection that learns the protocol.
    probe: Dialer,
}

impl AutoPool {
    pub fn new(
        address: SocketAddr,
        host: Option<&str>,
        tls: &BackendTls,
        stats_slot: usize,
        connect_timeout: Duration,
        keepalive: KeepAlive,
        stats: Arc<ShardStats>,
    ) -> Rc<AutoPool> {
        Rc::new(AutoPool {
            address,
            host: host.map(str::to_string),
            tls: tls.clone(),
            stats_slot,
            connect_timeout,
            keepalive,
            stats,
            learned: RefCell::new(None),
            probe: Dialer::new(address, host, Some(tls)),
        })
    }

    /// The pool for the backend's protocol, learning it first if need be; `None` when the
    /// backend could not be reached to ask (the dialer logged why).
    pub async fn pool(&self) -> Option<BackendPool> {
        if let Some(pool) = self.learned.borrow().clone() {
            return Some(pool);
        }
        let probed = rt::within(self.connect_timeout, self.probe.dial()).await;
        let Some(Ok(stream)) = probed else {
            self.stats.backend_connect_failures.incr();
            return None;
        };
        let dialer = Dialer::new(self.address, self.host.as_deref(), Some(&self.tls));
        let pool = if stream.negotiated_h2() {
            BackendPool::Http2(Http2Pool::new(
                dialer,
                self.stats_slot,
                self.connect_timeout,
                self.stats.clone(),
            ))
        } else {
            BackendPool::Http1(Http1Pool::new(
                dialer,
                self.stats_slot,
                self.connect_timeout,
                self.keepalive,
                self.stats.clone(),
            ))
        };
        // Requests that raced to learn keep the pool learned first.
        Some(self.learned.borrow_mut().get_or_insert(pool).clone())
    }
}
