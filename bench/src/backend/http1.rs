//! The test backend's HTTP/1.1 mode (`BackendOptions::http1`), on hyper's server: the routes
//! an HTTP/1.1 upstream must be checked against, with keep-alive counted by the backend's
//! connection counter. `/bytes/N` has a `content-length`; `/echo` streams the request body back
//! chunked, request trailers included, and names the request's framing in `x-echo-framing`;
//! `/close/N` answers like `/bytes/N` with `Connection: close`, so that a pool sees a backend end
//! a connection between requests; `/early/N` answers status N before reading the request body,
//! as a server refusing an upload does (then discards the body, closing gracefully).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{pattern_byte, Context, CHUNK};

type ReplyBody = BoxBody<Bytes, hyper::Error>;

pub(super) async fn serve_connection<S>(stream: S, context: Arc<Context>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let context = context.clone();
        async move { Ok::<_, Infallible>(handle(request, &context).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(request: Request<Incoming>, context: &Context) -> Response<ReplyBody> {
    let counters = &context.counters;
    counters.requests.fetch_add(1, Ordering::SeqCst);
    counters.in_flight.fetch_add(1, Ordering::SeqCst);
    if context.record_paths {
        if let Ok(mut paths) = context.paths.lock() {
            paths.push(request.uri().path().to_string());
        }
    }
    let response = route(request, context).await;
    counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    counters.requests_completed.fetch_add(1, Ordering::SeqCst);
    response
}

async fn route(request: Request<Incoming>, context: &Context) -> Response<ReplyBody> {
    let path = request.uri().path().to_string();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let (first, rest) = (segments.next().unwrap_or(""), segments.next().unwrap_or(""));
    let number = rest.parse::<u64>().ok();
    match (first, number) {
        ("bytes", Some(n)) | ("close", Some(n)) => {
            // Read the request to its end first, so that keep-alive can continue.
            let _ = request.into_body().collect().await;
            let mut reply = reply(200, context, Pattern { sent: 0, len: n }.boxed());
            reply
                .headers_mut()
                .insert("content-length", HeaderValue::from(n));
            if first == "close" {
                reply
                    .headers_mut()
                    .insert("connection", HeaderValue::from_static("close"));
            }
            reply
        }
        ("echo", None) => {
            let method = HeaderValue::from_str(request.method().as_str())
                .unwrap_or(HeaderValue::from_static("?"));
            let headers = request.headers();
            let framing = if headers.contains_key("transfer-encoding") {
                "chunked"
            } else if headers.contains_key("content-length") {
                "content-length"
            } else {
                "none"
            };
            let mut reply = reply(200, context, request.into_body().boxed());
            reply.headers_mut().insert("x-echo-method", method);
            reply
                .headers_mut()
                .insert("x-echo-framing", HeaderValue::from_static(framing));
            reply
        }
        ("early", Some(code)) => {
            // The body is read only after the answer is on its way, and then discarded, as
            // nginx's lingering close does: closing with unread data would send a TCP reset,
            // which can destroy the answer in the client's receive queue before it is read.
            let mut body = request.into_body();
            tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
            reply(code as u16, context, text(format!("status {code}")))
        }
        ("status", Some(code)) => {
            let _ = request.into_body().collect().await;
            reply(code as u16, context, text(format!("status {code}")))
        }
        ("delay", Some(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(200, context, text("ok".into()))
        }
        ("headers", None) => {
            let mut shown = format!(
                ":method: {}\n:path: {}\n",
                request.method(),
                request.uri().path_and_query().map_or("", |p| p.as_str())
            );
            for (name, value) in request.headers() {
                shown.push_str(&format!(
                    "{name}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            reply(200, context, text(shown))
        }
        ("health", None) => {
            let unhealthy = context.counters.unhealthy.load(Ordering::SeqCst) == 1;
            reply(
                if unhealthy { 503 } else { 200 },
                context,
                text("health".into()),
            )
        }
        _ => reply(404, context, text("not found".into())),
    }
}

fn reply(status: u16, context: &Context, body: ReplyBody) -> Response<ReplyBody> {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(name) = HeaderValue::from_str(&context.name) {
        response.headers_mut().insert("x-backend", name);
    }
    response
}

fn text(body: String) -> ReplyBody {
    Full::new(Bytes::from(body))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// The first `len` pattern bytes, made a chunk at a time as hyper asks for them.
struct Pattern {
    sent: u64,
    len: u64,
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.sent >= self.len {
            return Poll::Ready(None);
        }
        let end = (self.sent + CHUNK).min(self.len);
        let chunk: Vec<u8> = (self.sent..end).map(pattern_byte).collect();
        self.sent = end;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{pattern_sha256, start, BackendOptions};
    use super::*;
    use sha2::{Digest, Sha256};

    type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

    async fn connect(addr: std::net::SocketAddr) -> Sender {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    }

    /// Status, headers, sha256 and length of the body, trailers.
    async fn call(
        sender: &mut Sender,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, http::HeaderMap, [u8; 32], u64) {
        sender.ready().await.expect("connection still open");
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "backend")
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            headers,
            Sha256::digest(&body).into(),
            body.len() as u64,
        )
    }

    #[test]
    fn serves_bodies_echo_and_close_over_keep_alive() {
        let backend = start(BackendOptions {
            http1: true,
            ..BackendOptions::new("127.0.0.1:0".parse().unwrap(), "h1")
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut sender = connect(backend.addr()).await;
            let size = 3 * CHUNK + 17;
            let (status, headers, sha, len) =
                call(&mut sender, "GET", &format!("/bytes/{size}"), b"").await;
            assert_eq!((status, len, sha), (200, size, pattern_sha256(size)));
            assert_eq!(headers["content-length"], size.to_string().as_str());
            assert_eq!(headers["x-backend"], "h1");
            let (status, headers, sha, _) = call(&mut sender, "POST", "/echo", b"hello").await;
            assert_eq!((status, sha), (200, Sha256::digest(b"hello").into()));
            assert_eq!(headers["x-echo-method"], "POST");
            assert_eq!(call(&mut sender, "GET", "/status/503", b"").await.0, 503);
            assert_eq!(backend.stats().connections_accepted, 1, "keep-alive");
            let (status, headers, _, len) = call(&mut sender, "GET", "/close/5", b"").await;
            assert_eq!((status, len), (200, 5));
            assert_eq!(headers["connection"], "close");
            // The backend ended the connection: the client's sender closes with it.
            let closed = async {
                while !sender.is_closed() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(5), closed)
                .await
                .expect("connection closed after Connection: close");
        });
        assert_eq!(backend.stats().requests, 4);
    }
}
