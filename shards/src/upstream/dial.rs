//! Opening a connection to one backend: TCP, then TLS when the upstream has it. Both the h2c
//! and the HTTP/1.1 pools, and the coordinator's health checks, reach backends through a
//! [`Dialer`], so a backend is verified the same way whoever connects.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use crate::rt::{TcpStream, TokioTcp};
use crate::tls::backend::BackendTls;

/// A failing TLS handshake is logged as a warning at most this often per backend and shard;
/// the others go to debug. The reason (unknown issuer, wrong name, expired) is what an operator
/// needs, not one line per request.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a backend connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connect: {0}")]
    Tcp(#[source] io::Error),
    #[error("TLS handshake: {0}")]
    Tls(#[source] io::Error),
    #[error("the backend chose {chose} by ALPN instead of {offered}")]
    Alpn { offered: String, chose: String },
}

/// An open backend connection, in the form hyper and h2 read and write.
pub enum BackendStream {
    Plain(TokioTcp),
    Tls(Box<TlsStream<Compat<TcpStream>>>),
}

/// How to reach one backend.
pub struct Dialer {
    address: SocketAddr,
    tls: Option<DialerTls>,
    last_warning: Cell<Option<Instant>>,
}

struct DialerTls {
    plan: BackendTls,
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl Dialer {
    /// A dialer for `address`; `host` is the name the backend was given by, if any (the default
    /// TLS server name).
    pub fn new(address: SocketAddr, host: Option<&str>, tls: Option<&BackendTls>) -> Dialer {
        Dialer {
            address,
            tls: tls.map(|plan| DialerTls {
                connector: TlsConnector::from(plan.client_config()),
                server_name: plan.server_name_for(address, host),
                plan: plan.clone(),
            }),
            last_warning: Cell::new(None),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub async fn dial(&self) -> Result<BackendStream, DialError> {
        let stream = TcpStream::connect(self.address)
            .await
            .map_err(|e| DialError::Tcp(e.into()))?;
        // Without it Nagle holds a small request head or frame back until the previous
        // segment's ACK, up to 40 ms.
        stream
            .set_nodelay(true)
            .map_err(|e| DialError::Tcp(e.into()))?;
        let Some(tls) = &self.tls else {
            return Ok(BackendStream::Plain(TokioTcp::new(stream)));
        };
        let outcome = match tls
            .connector
            .connect(tls.server_name.clone(), stream.compat())
            .await
        {
            Err(e) => Err(DialError::Tls(e)),
            Ok(stream) => match check_alpn(tls.plan.alpn(), stream.get_ref().1.alpn_protocol()) {
                Ok(()) => Ok(BackendStream::Tls(Box::new(stream))),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = &outcome {
            self.report(e);
        }
        outcome
    }

    fn report(&self, error: &DialError) {
        let now = Instant::now();
        let due = self
            .last_warning
            .get()
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
        if due {
            self.last_warning.set(Some(now));
            log::warn!("backend {}: {error}", self.address);
        } else {
            log::debug!("backend {}: {error}", self.address);
        }
    }
}

/// HTTP/2 over TLS must be negotiated (RFC 9113 §3.2); an HTTP/1.1 server may ignore ALPN
/// altogether, which leaves it speaking HTTP/1.1.
fn check_alpn(offered: &[&[u8]], chose: Option<&[u8]>) -> Result<(), DialError> {
    match chose {
        Some(chose) if offered.contains(&chose) => Ok(()),
        None if offered.contains(&&b"http/1.1"[..]) => Ok(()),
        other => Err(DialError::Alpn {
            offered: offered
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join(", "),
            chose: other.map_or_else(
                || "nothing".to_string(),
                |p| String::from_utf8_lossy(p).into_owned(),
            ),
        }),
    }
}

impl BackendStream {
    /// Whether TLS negotiated HTTP/2; cleartext and HTTP/1.1 (or no ALPN) are not.
    pub fn negotiated_h2(&self) -> bool {
        match self {
            BackendStream::Plain(_) => false,
            BackendStream::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_must_be_negotiated_and_http1_may_go_without_alpn() {
        use crate::tls::backend::{ALPN_AUTO, ALPN_H2, ALPN_HTTP1};
        assert!(check_alpn(ALPN_H2, Some(b"h2")).is_ok());
        let refused = check_alpn(ALPN_H2, None).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the backend chose nothing by ALPN instead of h2"
        );
        assert!(check_alpn(ALPN_H2, Some(b"http/1.1")).is_err());
        assert!(check_alpn(ALPN_HTTP1, None).is_ok());
        assert!(check_alpn(ALPN_HTTP1, Some(b"http/1.1")).is_ok());
        assert!(check_alpn(ALPN_HTTP1, Some(b"h2")).is_err());
        for chose in [Some(&b"h2"[..]), Some(b"http/1.1"), None] {
            assert!(check_alpn(ALPN_AUTO, chose).is_ok());
        }
        assert!(check_alpn(ALPN_AUTO, Some(b"spdy/3")).is_err());
    }
}
