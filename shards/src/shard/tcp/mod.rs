//! The shard's TCP listener: accepts connections on the same port as QUIC, completes TLS, then
//! drives each connection as HTTP/2 (`h2`) or HTTP/1.1 (hyper), as ALPN chose, and starts a
//! request task per request, through the same proxy path as HTTP/3 requests.
//!
//! Browsers open a site over TCP first and move to HTTP/3 only once a response's `Alt-Svc` told
//! them where it is (RFC 9114 §3.1.1); clients on networks that block UDP stay on TCP.

pub mod redirect;
mod registry;

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::future;
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_rustls::server::TlsStream;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

pub use registry::TcpConnections;
use registry::{Registration, Signal};

use super::overload::Stage;
use super::Shard;
use crate::h1::{self, H1Stream};
use crate::h2::{request_fields, H2Stream};
use crate::http::ClientInfo;
use crate::proxy::{self, tunnel, tunnel::TunnelSlot};
use crate::rt;

/// How long a client may take from connecting to finishing its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

type Tls = TlsStream<Compat<rt::TcpStream>>;

pub async fn accept_loop(shard: Rc<Shard>, listener: rt::TcpListener) {
    accept_until_drain(&shard, listener, "TLS", |stream, registration| {
        let shard = shard.clone();
        async move { shard.serve_tcp(stream, registration).await }
    })
    .await
}

/// Accepts connections until the shard drains, registering each and serving it in a task of
/// its own; then drops the listener.
async fn accept_until_drain<F, Served>(
    shard: &Shard,
    listener: rt::TcpListener,
    listener_name: &str,
    serve: F,
) where
    F: Fn(rt::TcpStream, Registration) -> Served,
    Served: Future<Output = ()> + 'static,
{
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            shard.tcp.accepting_stopped().await;
            None
        })
        .await;
        match accepted {
            Some(Ok(stream)) if shard.overload_stage.get() >= Stage::RefuseConnections => {
                // Closed before any TLS work: the cheapest refusal TCP allows.
                shard.stats.tcp_connections_refused.incr();
                drop(stream);
            }
            Some(Ok(stream)) => rt::spawn(serve(stream, shard.tcp.register())),
            Some(Err(e)) => {
                log::warn!("{listener_name} listener accept: {e}");
                rt::sleep(ACCEPT_BACKOFF).await;
            }
            None => {
                log::debug!(
                    "shard {}: {listener_name} listener closed for drain",
                    shard.index
                );
                return;
            }
        }
    }
}

/// Drives a hyper HTTP/1.1 connection until it ends or the shard closes it, then closes it (TLS
/// close_notify, TCP FIN). On drain, keep-alive goes off: the response in flight carries
/// `Connection: close`, and an idle connection closes at once.
async fn drive_http1<I, S, B>(
    mut connection: hyper::server::conn::http1::Connection<I, S>,
    registration: &Registration,
) -> hyper::Result<()>
where
    S: hyper::service::HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    drive_http1_keeping_io(&mut connection, registration).await?;
    close_http1(connection.into_parts().io).await;
    Ok(())
}

/// Shuts a finished connection's IO down, as hyper does when it owns the end.
async fn close_http1(mut io: impl hyper::rt::Write + Unpin) {
    let shutdown = poll_fn(|cx| std::pin::Pin::new(&mut io).poll_shutdown(cx));
    let _ = rt::within(HANDSHAKE_TIMEOUT, shutdown).await;
}

/// Like [`drive_http1`], but leaves the connection open and its IO in place when hyper is done,
/// for a WebSocket tunnel to take over after a `101` (hyper's `without_shutdown`).
async fn drive_http1_keeping_io<I, S, B>(
    connection: &mut hyper::server::conn::http1::Connection<I, S>,
    registration: &Registration,
) -> hyper::Result<()>
where
    S: hyper::service::HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut draining = false;
    poll_fn(|cx| {
        match registration.poll_signal(cx) {
            Signal::Close => return Poll::Ready(Ok(())),
            Signal::Drain if !draining => {
                draining = true;
                std::pin::Pin::new(&mut *connection).graceful_shutdown();
            }
            Signal::Drain | Signal::Serve => {}
        }
        connection.poll_without_shutdown(cx)
    })
    .await
}

impl Shard {
    async fn serve_tcp(self: Rc<Self>, stream: rt::TcpStream, registration: Registration) {
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        // Responses are written whole by h2 and hyper; waiting for more to coalesce only adds
        // latency.
        let _ = stream.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tcp_tls.borrow().clone());
        let tls = match rt::within(HANDSHAKE_TIMEOUT, acceptor.accept(stream.compat())).await {
            Some(Ok(tls)) => tls,
            Some(Err(e)) => {
                log::debug!("tls handshake from {peer}: {e}");
                return;
            }
            None => {
                log::debug!("tls handshake from {peer}: timed out");
                return;
            }
        };
        // A client that offered no ALPN speaks HTTP/1.1 (RFC 7301 §3.2 leaves it to the server).
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_h2(tls, peer, &registration).await;
        } else {
            self.serve_http1(tls, peer, &registration).await;
        }
    }

    async fn serve_h2(&self, tls: Tls, peer: SocketAddr, registration: &Registration) {
        let quic = &self.quic_settings;
        let handshake = h2::server::Builder::new()
            .initial_window_size(quic.stream_window.min(i32::MAX as u64) as u32)
            .initial_connection_window_size(quic.connection_window.min(i32::MAX as u64) as u32)
            .max_concurrent_streams(quic.max_concurrent_streams.min(u32::MAX as u64) as u32)
            // SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441 §3): WebSocket over HTTP/2.
            .enable_connect_protocol()
            .handshake::<_, Bytes>(tls);
        let mut connection = match rt::within(HANDSHAKE_TIMEOUT, handshake).await {
            Some(Ok(connection)) => connection,
            Some(Err(e)) => {
                log::debug!("http/2 handshake from {peer}: {e}");
                return;
            }
            None => return,
        };
        let client = ClientInfo { ip: peer.ip() };
        let mut draining = false;
        // Accepting also drives the connection: it reads frames and writes what request tasks
        // queued, so this loop runs for as long as the connection lives.
        loop {
            let accepted = poll_fn(|cx| {
                match registration.poll_signal(cx) {
                    Signal::Close => return Poll::Ready(None),
                    // GOAWAY (RFC 9113 §6.8): streams already open finish, and the connection
                    // closes once they have.
                    Signal::Drain if !draining => {
                        draining = true;
                        connection.graceful_shutdown();
                    }
                    Signal::Drain | Signal::Serve => {}
                }
                connection.poll_accept(cx).map(Some)
            })
            .await;
            let (request, respond) = match accepted {
                Some(Some(Ok(stream))) => stream,
                Some(Some(Err(e))) => {
                    log::debug!("http/2 connection from {peer}: {e}");
                    return;
                }
                Some(None) | None => return,
            };
            let (parts, body) = request.into_parts();
            let has_body = !body.is_end_stream();
            let upstreams = self.upstreams.borrow().clone();
            let job = proxy::admit(
                request_fields(&parts),
                client,
                has_body,
                &upstreams,
                self.shedding_requests(),
                &self.stats,
            );
            let stream = H2Stream::new(peer, respond, body, self.alt_svc.borrow().clone());
            let context = self.proxy.clone();
            let in_flight = registration.request();
            rt::spawn_boxed(async move {
                proxy::serve(&context, stream, job).await;
                drop(in_flight);
            });
        }
    }

    async fn serve_http1(self: &Rc<Self>, tls: Tls, peer: SocketAddr, registration: &Registration) {
        let client = ClientInfo { ip: peer.ip() };
        let requests = Cell::new(0u64);
        let shard = self.clone();
        let tunnel: TunnelSlot = Rc::default();
        let service = hyper::service::service_fn(|request: hyper::Request<Incoming>| {
            let id = requests.replace(requests.get() + 1);
            let (parts, body) = request.into_parts();
            let has_body = !body.is_end_stream();
            let upstreams = shard.upstreams.borrow().clone();
            let websocket = tunnel::websocket_upgrade(&parts);
            let job = match h1::request_fields(&parts) {
                Ok(fields) => proxy::admit(
                    fields,
                    client,
                    has_body,
                    &upstreams,
                    shard.shedding_requests(),
                    &shard.stats,
                ),
                Err(malformed) => proxy::admit::refuse(malformed, client, &shard.stats),
            };
            let (stream, response) = H1Stream::new(peer, id, body, shard.alt_svc.borrow().clone());
            let context = shard.proxy.clone();
            let in_flight = registration.request();
            match (websocket, job) {
                (
                    Some(protocol),
                    proxy::Job::Proxy {
                        head,
                        upstreams,
                        upstream,
                        ..
                    },
                ) => {
                    let slot = tunnel.clone();
                    let stats = shard.stats.clone();
                    rt::spawn(async move {
                        tunnel::open(stream, *head, upstreams, upstream, protocol, slot, stats)
                            .await;
                        drop(in_flight);
                    });
                }
                (_, job) => rt::spawn_boxed(async move {
                    proxy::serve(&context, stream, job).await;
                    drop(in_flight);
                }),
            }
            response
        });
        // No header-read timeout inside hyper: its timers must be `Send`, glommio's are not.
        // The registry's idle sweep closes a connection that sends no complete request.
        let mut connection = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .pipeline_flush(true)
            .serve_connection(TokioIo::new(tls), service);
        if let Err(e) = drive_http1_keeping_io(&mut connection, registration).await {
            log::debug!("http/1.1 connection from {peer}: {e}");
            return;
        }
        let parts = connection.into_parts();
        let Some(backend) = tunnel.borrow_mut().take() else {
            close_http1(parts.io).await;
            return;
        };
        let client = parts.io.into_inner();
        // The tunnel is busy for as long as it lasts: the idle sweep must not close it.
        let _busy = registration.request();
        let closed = poll_fn(|cx| match registration.poll_signal(cx) {
            Signal::Close => Poll::Ready(()),
            Signal::Drain | Signal::Serve => Poll::Pending,
        });
        tunnel::relay(client, parts.read_buf, backend, closed, &self.stats).await;
    }
}
