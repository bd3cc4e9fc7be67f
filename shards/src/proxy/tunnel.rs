//! WebSocket over HTTP/1.1 (RFC 6455 §4) from TCP clients: the upgrade request goes to an
//! HTTP/1.1 backend on a connection of its own ([`crate::upstream::http1::upgrade`]); when the
//! backend answers `101`, the client gets that `101` and the two connections become a tunnel.
//!
//! HTTP/2 and HTTP/3 clients ask with an extended CONNECT instead (RFC 8441, RFC 9220:
//! `:method CONNECT`, `:protocol websocket`), which carries no `Sec-WebSocket-Key`: Spooky makes
//! one for the backend's HTTP/1.1 handshake, checks the backend's `Sec-WebSocket-Accept`
//! against it, answers the client `200`, and relays between the request stream's bodies and the
//! backend connection ([`serve_extended`]).
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

use bytes::{Bytes, BytesMut};
use futures_lite::future;
use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Method};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::decision::Outcome;
use super::reply;
use crate::h1::H1Stream;
use crate::http::{lists, Abort, BodyRead, Downstream, RequestHead};
use crate::rt;
use crate::stats::ShardStats;
use crate::upstream::dial::BackendStream;
use crate::upstream::http1::pool::Http1Pool;
use crate::upstream::http1::upgrade::{self, Upgrade};
use crate::upstream::router::UpstreamIndex;
use crate::upstream::{BackendPool, Upstream, Upstreams};

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
    let Some(pool) = http1_pool(&upstream.pools[backend]).await else {
        let message = "WebSocket needs an HTTP/1.1 backend (protocol = \"http/1.1\" or \"auto\")";
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
                let _ = stream.write_body(body, true).await;
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

/// The HTTP/1.1 pool a WebSocket handshake goes through: the backend's own, or the one an
/// `auto` backend chose (`None` for HTTP/2 backends, and an `auto` one not reachable).
async fn http1_pool(pool: &BackendPool) -> Option<Rc<Http1Pool>> {
    let pool = match pool {
        BackendPool::Auto(auto) => auto.pool().await?,
        pool => pool.clone(),
    };
    match pool {
        BackendPool::Http1(pool) => Some(pool),
        BackendPool::Http2(_) | BackendPool::Auto(_) => None,
    }
}

/// RFC 6455 §1.3: the accept value is the base64 SHA-1 of the key and this GUID.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Serves an extended CONNECT for `websocket` on an HTTP/2 or HTTP/3 stream: the backend's
/// HTTP/1.1 handshake, then the stream's request body to the backend and the backend's bytes
/// as the response body.
pub async fn serve_extended<D: Downstream>(
    downstream: &D,
    head: &RequestHead,
    upstream: &Upstream,
    stats: &ShardStats,
) -> Outcome {
    let Some(backend) = upstream.balancer.borrow_mut().pick() else {
        return reply(downstream, 503, "no healthy backend", Some("1"), false).await;
    };
    let Some(pool) = http1_pool(&upstream.pools[backend]).await else {
        let message = "WebSocket needs an HTTP/1.1 backend (protocol = \"http/1.1\" or \"auto\")";
        return reply(downstream, 501, message, None, false).await;
    };
    let key = websocket_key();
    let mut headers = head.headers.clone();
    // The stream's body is the tunnel, not a body of the handshake.
    headers.remove(http::header::CONTENT_LENGTH);
    headers.insert(SEC_WEBSOCKET_KEY, key.clone());
    let handshake = RequestHead {
        method: Method::GET,
        uri: head.uri.clone(),
        headers,
        content_length: None,
        client_ip: head.client_ip,
        protocol: None,
    };
    let timeouts = &upstream.plan.timeouts;
    let limit = timeouts.connect + timeouts.response_headers;
    let websocket = HeaderValue::from_static("websocket");
    let id = &upstream.plan.backends[backend].id;
    match upgrade::upgrade(pool.dialer(), &handshake, &websocket, limit).await {
        Ok(Upgrade::Switched {
            mut headers,
            io,
            early,
            ..
        }) => {
            let accepted = headers.remove(SEC_WEBSOCKET_ACCEPT);
            if accepted.as_ref().map(HeaderValue::as_bytes) != Some(accept_for(&key).as_bytes()) {
                log::debug!("websocket handshake with {id}: wrong or missing Sec-WebSocket-Accept");
                return reply(downstream, 502, "backend failed", None, false).await;
            }
            if downstream.send_head(200, &headers, false).await.is_err() {
                return Outcome::ClientGone;
            }
            stats.websocket_tunnels.incr();
            stats.websocket_tunnels_active.incr();
            let outcome = relay_stream(downstream, io, early, timeouts.body_idle).await;
            stats.websocket_tunnels_active.sub(1);
            outcome
        }
        Ok(Upgrade::Refused {
            status,
            headers,
            body,
        }) => {
            if downstream
                .send_head(status, &headers, body.is_empty())
                .await
                .is_err()
            {
                return Outcome::ClientGone;
            }
            if !body.is_empty() && downstream.write_body(body, true).await.is_err() {
                return Outcome::ClientGone;
            }
            Outcome::Responded(status)
        }
        Err(e) => {
            log::debug!("websocket handshake with {id}: {e}");
            reply(downstream, 502, "backend unreachable", None, false).await
        }
    }
}

/// Relays a request stream and a backend connection: the client's body to the backend, the
/// backend's bytes (`early` first) as the response body. It ends when the backend closes (the
/// response then ends), the client goes away, or neither sends for `idle`. The client ending
/// its body does not end the tunnel: WebSocket closes in-band, and the backend closes after it
/// answered the client's Close frame.
async fn relay_stream<D: Downstream>(
    downstream: &D,
    backend: BackendStream,
    early: Bytes,
    idle: Duration,
) -> Outcome {
    let backend = RefCell::new(backend);
    let last_read = Cell::new(Instant::now());
    let up = async {
        let mut buf = vec![0u8; BUFFER];
        loop {
            match downstream.read_body(&mut buf).await {
                Ok(BodyRead::Data(n)) => {
                    last_read.set(Instant::now());
                    let written = poll_write_all(&backend, &buf[..n]).await;
                    if written.is_err() {
                        downstream.abort(Abort::Internal);
                        return Outcome::Reset;
                    }
                }
                Ok(BodyRead::End(_)) => return future::pending().await,
                Err(_) => return Outcome::ClientGone,
            }
        }
    };
    let down = async {
        if !early.is_empty() && downstream.write_body(early, false).await.is_err() {
            return Outcome::ClientGone;
        }
        // Read into spare capacity and handed over as slices of it: the client's stream keeps
        // or copies each chunk, with no copy of ours before that.
        let mut buf = BytesMut::with_capacity(BUFFER);
        loop {
            buf.reserve(BUFFER);
            let read = std::future::poll_fn(|cx| {
                let mut stream = backend.borrow_mut();
                tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, &mut buf)
            })
            .await;
            match read {
                Ok(0) => {
                    return match downstream.write_body(Bytes::new(), true).await {
                        Ok(()) => Outcome::Responded(200),
                        Err(_) => Outcome::ClientGone,
                    };
                }
                Ok(_) => {
                    last_read.set(Instant::now());
                    if downstream
                        .write_body(buf.split().freeze(), false)
                        .await
                        .is_err()
                    {
                        return Outcome::ClientGone;
                    }
                }
                Err(e) => {
                    log::debug!("websocket backend connection failed: {e}");
                    downstream.abort(Abort::Internal);
                    return Outcome::Reset;
                }
            }
        }
    };
    let idle = async {
        loop {
            let left = idle.saturating_sub(last_read.get().elapsed());
            if left.is_zero() {
                log::debug!("websocket tunnel idle for {idle:?}");
                downstream.abort(Abort::Cancelled);
                return Outcome::Reset;
            }
            rt::sleep(left).await;
        }
    };
    future::or(down, future::or(up, idle)).await
}

/// Writes all of `data` to the backend. The read side holds the stream only inside its own
/// polls, never across one, so the two directions share it without a lock.
async fn poll_write_all(backend: &RefCell<BackendStream>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n =
            std::future::poll_fn(|cx| Pin::new(&mut *backend.borrow_mut()).poll_write(cx, data))
                .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    std::future::poll_fn(|cx| Pin::new(&mut *backend.borrow_mut()).poll_flush(cx)).await
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
fn websocket_key() -> HeaderValue {
    use ring::rand::SecureRandom;
    let mut nonce = [0u8; 16];
    // The system generator failing leaves zeros: still a valid key, and the key guards only
    // against caches replaying handshakes, not against attackers.
    let _ = ring::rand::SystemRandom::new().fill(&mut nonce);
    HeaderValue::from_str(&base64(&nonce)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with (RFC 6455 §4.2.2).
fn accept_for(key: &HeaderValue) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key.as_bytes());
    context.update(WEBSOCKET_GUID);
    base64(context.finish().as_ref())
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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

    #[test]
    fn the_accept_value_is_rfc_6455s_and_base64_pads() {
        // RFC 6455 §1.3's example handshake.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept_for(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(websocket_key().len(), 24);
        assert_ne!(websocket_key(), websocket_key());
    }
}
