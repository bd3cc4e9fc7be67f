//! Real clients for the TCP+TLS listener: rustls for TLS, `h2` for HTTP/2 and hyper's client for
//! HTTP/1.1, on a current-thread tokio runtime, each reporting a response by status, headers,
//! body checksum and trailers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, StreamBody};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use spooky_bench::backend::pattern_byte;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// One response as the client saw it.
pub struct Received {
    pub status: u16,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub body_sha256: [u8; 32],
    /// The body's first [`BODY_START`] bytes, for checks on its text.
    pub body_start: Vec<u8>,
    pub trailers: Option<HeaderMap>,
}

pub const BODY_START: usize = 64 * 1024;

/// A response body as it arrives: its length, checksum and first bytes.
#[derive(Default)]
struct BodyTally {
    len: u64,
    hasher: sha2::Sha256,
    start: Vec<u8>,
}

impl BodyTally {
    fn add(&mut self, chunk: &[u8]) {
        let room = BODY_START - self.start.len().min(BODY_START);
        self.start
            .extend_from_slice(&chunk[..room.min(chunk.len())]);
        self.len += chunk.len() as u64;
        sha2::Digest::update(&mut self.hasher, chunk);
    }

    fn received(self, status: u16, headers: HeaderMap, trailers: Option<HeaderMap>) -> Received {
        Received {
            status,
            headers,
            body_len: self.len,
            body_sha256: sha2::Digest::finalize(self.hasher).into(),
            body_start: self.start,
            trailers,
        }
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A TLS client that trusts only `ca` and offers `alpn`.
pub fn tls_client(ca: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects over TCP and completes TLS for `localhost`, offering `alpn`.
pub async fn connect_tls(addr: SocketAddr, ca: &Path, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    connect_tls_to(addr, ca, "localhost", alpn)
        .await
        .expect("TLS handshake with the proxy")
}

/// Connects over TCP and tries TLS for `name` (sent as SNI unless it is an IP literal).
pub async fn connect_tls_to(
    addr: SocketAddr,
    ca: &Path,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
    tls_client(ca, alpn).connect(name, tcp).await
}

pub type H2Sender = h2::client::SendRequest<Bytes>;

/// Connects with ALPN `h2` and completes the HTTP/2 handshake.
pub async fn connect_h2(addr: SocketAddr, ca: &Path) -> H2Sender {
    let tls = connect_tls(addr, ca, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .handshake(tls)
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends `method path` over HTTP/2 with `upload` bytes of the test pattern (if any).
pub async fn h2_exchange(
    sender: &H2Sender,
    method: &str,
    path: &str,
    upload: Option<u64>,
) -> Received {
    let mut sender = sender.clone().ready().await.unwrap();
    let request = Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .body(())
        .unwrap();
    let (response, mut send) = sender.send_request(request, upload.is_none()).unwrap();
    // The upload runs beside the response: /echo streams the body back as it arrives, so a
    // client that read only after sending everything would stall on its own receive window.
    let uploader = upload.map(|size| {
        tokio::spawn(async move {
            let mut sent = 0u64;
            while sent < size {
                let n = (size - sent).min(64 * 1024);
                let chunk: Vec<u8> = (sent..sent + n).map(pattern_byte).collect();
                send.reserve_capacity(n as usize);
                let mut granted = 0;
                while granted < n as usize {
                    granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .unwrap()
                        .unwrap();
                }
                send.send_data(Bytes::from(chunk), sent + n == size)
                    .unwrap();
                sent += n;
            }
        })
    });
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let (parts, mut body) = response.into_parts();
    let mut tally = BodyTally::default();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        tally.add(&chunk);
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    let trailers = body.trailers().await.unwrap();
    if let Some(uploader) = uploader {
        uploader.await.unwrap();
    }
    tally.received(status, parts.headers, trailers)
}

/// A request body for HTTP/1.1: the test pattern, declared by length or sent chunked.
#[derive(Clone, Copy)]
pub enum Upload {
    None,
    Sized(u64),
    Chunked(u64),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type H1Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
pub type H1Sender = hyper::client::conn::http1::SendRequest<H1Body>;

/// Connects with ALPN `http/1.1` and starts hyper's HTTP/1.1 client on the connection.
pub async fn connect_http1(addr: SocketAddr, ca: &Path) -> H1Sender {
    let tls = connect_tls(addr, ca, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// The test pattern's bytes `0..size` as a body of 64 KiB frames, produced as they are sent.
fn pattern_body(size: u64) -> H1Body {
    let chunks = (0..size.div_ceil(64 * 1024)).map(move |i| {
        let start = i * 64 * 1024;
        let end = (start + 64 * 1024).min(size);
        let chunk: Vec<u8> = (start..end).map(pattern_byte).collect();
        Ok::<_, BoxError>(hyper::body::Frame::data(Bytes::from(chunk)))
    });
    StreamBody::new(futures_lite::stream::iter(chunks)).boxed()
}

/// Sends `request` (its body replaced by `upload`) over HTTP/1.1 and reads the whole response.
pub async fn http1_exchange(
    sender: &mut H1Sender,
    request: http::request::Builder,
    upload: Upload,
) -> Received {
    let request = match upload {
        Upload::None => request.body(http_body_util::Empty::new().map_err(Into::into).boxed()),
        Upload::Sized(size) => request
            .header("content-length", size)
            .body(pattern_body(size)),
        Upload::Chunked(size) => request.body(pattern_body(size)),
    }
    .unwrap();
    sender.ready().await.expect("connection still open");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let (parts, mut body) = response.into_parts();
    let mut tally = BodyTally::default();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame.expect("response body").into_data() {
            Ok(chunk) => tally.add(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    tally.received(status, parts.headers, trailers)
}
