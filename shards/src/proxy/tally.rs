//! A [`Downstream`] wrapper that records what the access log and the counters report about a
//! request: its status, body bytes each way, and whether its response started.
//!
//! Counting at the seam keeps the protocol implementations free of proxy bookkeeping, and keeps
//! the proxy's own code free of counting at every write.

use std::cell::Cell;
use std::net::SocketAddr;

use bytes::Bytes;
use http::HeaderMap;

use crate::http::{Abort, BodyRead, Downstream, ReadError, Sent};
use crate::stats::ShardStats;

pub struct Tallied<'a, D> {
    inner: &'a D,
    stats: &'a ShardStats,
    /// The status sent to the client (0: no response head yet).
    pub status: Cell<u16>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Request body bytes allowed (`max_request_body_bytes`): a read past it fails with
    /// [`ReadError::TooLarge`].
    pub max_body: Cell<Option<u64>>,
}

impl<'a, D: Downstream> Tallied<'a, D> {
    pub fn new(inner: &'a D, stats: &'a ShardStats) -> Self {
        Tallied {
            inner,
            stats,
            status: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            max_body: Cell::new(None),
        }
    }

    /// Whether response headers went out (then only a reset can end the stream early).
    pub fn response_started(&self) -> bool {
        self.status.get() != 0
    }
}

impl<D: Downstream> Downstream for Tallied<'_, D> {
    fn protocol(&self) -> crate::http::Protocol {
        self.inner.protocol()
    }

    fn peer(&self) -> SocketAddr {
        self.inner.peer()
    }

    fn request_id(&self) -> u64 {
        self.inner.request_id()
    }

    async fn send_head(&self, status: u16, headers: &HeaderMap, end: bool) -> Sent {
        self.stats.count_status(status);
        self.inner.send_head(status, headers, end).await?;
        self.status.set(status);
        Ok(())
    }

    async fn write_body(&self, data: Bytes, end: bool) -> Sent {
        let len = data.len() as u64;
        self.inner.write_body(data, end).await?;
        self.bytes_out.set(self.bytes_out.get() + len);
        Ok(())
    }

    async fn send_trailers(&self, trailers: &HeaderMap) -> Sent {
        self.inner.send_trailers(trailers).await
    }

    async fn read_body(&self, buf: &mut [u8]) -> Result<BodyRead, ReadError> {
        let read = self.inner.read_body(buf).await?;
        if let BodyRead::Data(n) = read {
            let total = self.bytes_in.get() + n as u64;
            self.bytes_in.set(total);
            if self.max_body.get().is_some_and(|max| total > max) {
                return Err(ReadError::TooLarge);
            }
        }
        Ok(read)
    }

    async fn gone(&self) {
        self.inner.gone().await
    }

    fn abort(&self, why: Abort) {
        self.inner.abort(why)
    }
}
