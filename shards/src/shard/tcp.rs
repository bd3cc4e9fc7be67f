//! The shard's TCP listener: accepts connections on the same port as QUIC, completes TLS, then
//! drives each HTTP/2 connection and starts a request task per stream, through the same proxy
//! path as HTTP/3 requests.
//!
//! Browsers open a site over TCP first and move to HTTP/3 only once a response's `Alt-Svc` told
//! them where it is (RFC 9114 §3.1.1); clients on networks that block UDP stay on TCP.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::Shard;
use crate::h2::{request_fields, H2Stream};
use crate::http::ClientInfo;
use crate::proxy;
use crate::rt;

/// How long a client may take from connecting to finishing its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after a failed accept (out of descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub async fn accept_loop(shard: Rc<Shard>, listener: rt::TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let shard = shard.clone();
                rt::spawn(async move { shard.serve_tcp(stream).await });
            }
            Err(e) => {
                log::warn!("tcp accept: {e}");
                rt::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

impl Shard {
    async fn serve_tcp(self: Rc<Self>, stream: rt::TcpStream) {
        let Ok(peer) = stream.peer_addr() else {
            return;
        };
        // Responses are written whole by h2; waiting for more to coalesce only adds latency.
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
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            log::debug!("tcp client {peer} did not negotiate h2 by ALPN: closed");
            return;
        }
        let quic = &self.quic_settings;
        let handshake = h2::server::Builder::new()
            .initial_window_size(quic.stream_window.min(i32::MAX as u64) as u32)
            .initial_connection_window_size(quic.connection_window.min(i32::MAX as u64) as u32)
            .max_concurrent_streams(quic.max_concurrent_streams.min(u32::MAX as u64) as u32)
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
        // Accepting also drives the connection: it reads frames and writes what request tasks
        // queued, so this loop runs for as long as the connection lives.
        while let Some(accepted) = connection.accept().await {
            let (request, respond) = match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    log::debug!("http/2 connection from {peer}: {e}");
                    break;
                }
            };
            let (parts, body) = request.into_parts();
            let has_body = !body.is_end_stream();
            let upstreams = self.upstreams.borrow().clone();
            let job = proxy::admit(
                request_fields(&parts),
                client,
                has_body,
                &upstreams,
                &self.stats,
            );
            let stream = H2Stream::new(peer, respond, body, self.alt_svc.clone());
            let context = self.proxy.clone();
            rt::spawn(async move { proxy::serve(&context, stream, job).await });
        }
    }
}
