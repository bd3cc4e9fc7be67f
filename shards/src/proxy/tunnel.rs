//! WebSocket over HTTP/1.1 (RFC 6455 §4) from TCP clients: the upgrade request goes to an
//! HTTP/1.1 backend on a connection of its own ([`crate::upstream::http1::upgrade`]); when the
//! backend answers `101`, the client gets that `101` and the two connections become a tunnel.
//!
//! The tunnel relays bytes both ways without looking at WebSocket frames. Each direction reads
//! only after its previous write completed, so TCP's flow control on either side is the
//! backpressure and at most one buffer per direction is held. It ends when either side closes
//! (the close is passed on), when neither side sends for the upstream's `timeouts.body_idle_ms`,
//! or when the shard closes its connections.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Method};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::reply;
use crate::h1::H1Stream;
use crate::http::{lists, Downstream, RequestHead};
use crate::rt;
use crate::stats::ShardStats;
use crate::upstream::dial::BackendStream;
use crate::upstream::http1::upgrade::{self, Upgrade};
use crate::upstream::router::UpstreamIndex;
use crate::upstream::{BackendPool, Upstreams};

/// Each direction's buffer.
const BUFFER: usize = 16 * 1024;

/// The backend side of a tunnel, waiting for the client connection to be handed over.
pub struct Tunnel {
    backend: BackendStream,
    /// What the backend sent right after its `101`.
    early: Bytes,
    idle: Duration,
}

/// Where the request task leaves the backend side for the connection's owner.
pub type TunnelSlot = Rc<RefCell<Option<Tunnel>>>;

/// The protocol a request asks to switch to, if it is a WebSocket upgrade: a `GET` with
/// `Upgrade: websocket` and `Connection: upgrade` (RFC 6455 §4.1). Other upgrades (h2c, TLS)
/// are not offered; their `Upgrade` field is dropped as this hop's own.
pub fn websocket_upgrade(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.method != Method::GET {
        return None;
    }
    let protocol = parts.headers.get(UPGRADE)?;
    let asks_upgrade = parts
        .headers
        .get_all(CONNECTION)
        .iter()
        .any(|value| lists(value, "upgrade"));
    (asks_upgrade && lists(protocol, "websocket")).then(|| protocol.clone())
}

/// Sends the upgrade request to a backend of `upstream` and answers the client: the backend's
/// `101` (leaving the tunnel in `slot`), its refusal as it is, or a `502`/`501` of Spooky's own.
pub async fn open(
    stream: H1Stream,
    head: RequestHead,
    upstreams: Rc<Upstreams>,
    upstream: UpstreamIndex,
    protocol: HeaderValue,
    slot: TunnelSlot,
    stats: Arc<ShardStats>,
) {
    let upstream = upstreams.get(upstream);
    let Some(backend) = upstream.balancer.borrow_mut().pick() else {
        let _ = reply(&stream, 503, "no healthy backend", Some("1"), false).await;
        return;
    };
    let BackendPool::Http1(pool) = &upstream.pools[backend] else {
        let message = "WebSocket needs an HTTP/1.1 upstream (protocol = \"http/1.1\")";
        let _ = reply(&stream, 501, message, None, false).await;
        return;
    };
    let timeouts = &upstream.plan.timeouts;
    let limit = timeouts.connect + timeouts.response_headers;
    match upgrade::upgrade(pool.dialer(), &head, &protocol, limit).await {
        Ok(Upgrade::Switched {
            headers,
            protocol,
            io,
            early,
        }) => {
            if stream.switch_protocols(&headers, protocol).is_ok() {
                stats.websocket_tunnels.incr();
                *slot.borrow_mut() = Some(Tunnel {
                    backend: io,
                    early,
                    idle: timeouts.body_idle,
                });
            }
        }
        Ok(Upgrade::Refused {
            status,
            headers,
            body,
        }) => {
            if stream
                .send_head(status, &headers, body.is_empty())
                .await
                .is_ok()
                && !body.is_empty()
            {
                let _ = stream.write_body(&body, true).await;
            }
        }
        Err(e) => {
            log::debug!(
                "websocket upgrade to {}: {e}",
                upstream.plan.backends[backend].id
            );
            let _ = reply(&stream, 502, "backend unreachable", None, false).await;
        }
    }
}

/// Relays between the client connection (with `client_early`, what it sent after its upgrade
/// request) and the tunnel's backend until one ends, both go idle, or `closed` completes.
pub async fn relay<C>(
    client: C,
    client_early: Bytes,
    tunnel: Tunnel,
    closed: impl Future<Output = ()>,
    stats: &ShardStats,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    stats.websocket_tunnels_active.incr();
    let last_read = Cell::new(Instant::now());
    let mut client = Watched {
        inner: client,
        last_read: &last_read,
    };
    let mut backend = Watched {
        inner: tunnel.backend,
        last_read: &last_read,
    };
    let idle = tunnel.idle;
    let relayed = async {
        backend.write_all(&client_early).await?;
        client.write_all(&tunnel.early).await?;
        tokio::io::copy_bidirectional_with_sizes(&mut client, &mut backend, BUFFER, BUFFER)
            .await
            .map(|_| ())
    };
    let relayed = async {
        if let Err(e) = relayed.await {
            log::debug!("websocket tunnel ended: {e}");
        }
    };
    let idle = async {
        loop {
            let left = idle.saturating_sub(last_read.get().elapsed());
            if left.is_zero() {
                log::debug!("websocket tunnel idle for {idle:?}");
                return;
            }
            rt::sleep(left).await;
        }
    };
    future::or(relayed, future::or(idle, closed)).await;
    stats.websocket_tunnels_active.sub(1);
}

/// A stream that notes when it last read something, for the tunnel's idle timeout.
struct Watched<'a, S> {
    inner: S,
    last_read: &'a Cell<Instant>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last_read.set(Instant::now());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, fields: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = http::Request::builder().method(method).uri("/ws");
        for (name, value) in fields {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_a_get_with_upgrade_websocket_and_connection_upgrade_is_a_websocket_upgrade() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(
            websocket_upgrade(&parts("GET", &ws)),
            Some(HeaderValue::from_static("WebSocket"))
        );
        assert_eq!(websocket_upgrade(&parts("POST", &ws)), None);
        assert_eq!(
            websocket_upgrade(&parts("GET", &[("upgrade", "websocket")])),
            None
        );
        let h2c = [("connection", "upgrade"), ("upgrade", "h2c")];
        assert_eq!(websocket_upgrade(&parts("GET", &h2c)), None);
    }
}
