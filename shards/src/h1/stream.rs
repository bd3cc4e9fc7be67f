//! One HTTP/1.1 request from a client, as the proxy's [`Downstream`].
//!
//! hyper asks a service for each request's response and pulls the response body from it; the
//! proxy pushes both. The two meet in a one-frame [`Channel`]: the request task places the head,
//! then one body frame at a time, and waits until hyper took it, so a slow client slows the
//! backend read down instead of filling memory. Everything runs on the shard's thread, so the
//! channel is a `RefCell` and two wakers.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Version};
use http_body::{Body, Frame};
use hyper::body::Incoming;

use crate::http::response::tcp_client_fields;
use crate::http::{to_keep, Abort, BodyRead, Downstream, Leftover, ReadError, Sent, StreamGone};

/// The response ended before it was complete; hyper then closes the connection, the only way
/// HTTP/1.1 has to tell a client that a response is cut short.
#[derive(Debug, thiserror::Error)]
#[error("the proxied response was aborted")]
pub struct ResponseAborted;

enum Head {
    Waiting,
    Ready(http::response::Parts),
    Taken,
}

/// The response as it passes from the request task to hyper.
struct Channel {
    head: Head,
    /// The next body frame (data or trailers), until hyper takes it.
    frame: Option<Frame<Bytes>>,
    /// No frame follows the one queued.
    finished: bool,
    /// The request task gave up on the response (or dropped it unfinished).
    aborted: bool,
    /// hyper no longer wants the response: the client went away, or the connection failed.
    client_gone: bool,
    /// hyper, waiting for the head or the next frame.
    consumer: Option<Waker>,
    /// The request task, waiting for room for a frame or for the client to go.
    producer: Option<Waker>,
    gone_waiter: Option<Waker>,
}

impl Channel {
    fn wake_consumer(&mut self) {
        if let Some(waker) = self.consumer.take() {
            waker.wake();
        }
    }

    fn mark_client_gone(&mut self) {
        self.client_gone = true;
        for waker in [self.producer.take(), self.gone_waiter.take()]
            .into_iter()
            .flatten()
        {
            waker.wake();
        }
    }
}

type Shared = Rc<RefCell<Channel>>;

pub struct H1Stream {
    peer: SocketAddr,
    id: u64,
    /// `Alt-Svc` for every response: where this origin also speaks HTTP/3 (RFC 7838).
    alt_svc: Option<HeaderValue>,
    channel: Shared,
    body: RefCell<Incoming>,
    /// What is left of the last body chunk after a short read.
    unread: Leftover,
}

/// hyper's side: resolves to the response once the proxy sent its head.
pub struct PendingResponse {
    channel: Shared,
}

/// The response body hyper writes out, frame by frame as the proxy queues them.
pub struct ResponseBody {
    channel: Shared,
}

impl H1Stream {
    /// Answers `101 Switching Protocols` to `protocol` (RFC 9110 §15.2.2) with the backend's
    /// other fields (`Sec-WebSocket-Accept` and the like). hyper writes it and ends the
    /// connection's HTTP/1.1 part, and its owner takes the connection for the tunnel.
    pub fn switch_protocols(&self, headers: &HeaderMap, protocol: HeaderValue) -> Sent {
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = StatusCode::SWITCHING_PROTOCOLS;
        parts.version = Version::HTTP_11;
        parts.headers = tcp_client_fields(headers, None);
        parts.headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        parts.headers.insert(http::header::UPGRADE, protocol);
        let mut channel = self.channel.borrow_mut();
        if channel.client_gone || !matches!(channel.head, Head::Waiting) {
            return Err(StreamGone);
        }
        channel.head = Head::Ready(parts);
        channel.finished = true;
        channel.wake_consumer();
        Ok(())
    }

    /// A request stream for the request with body `body`, the `id`th on its connection, and
    /// the future hyper awaits for its response.
    pub fn new(
        peer: SocketAddr,
        id: u64,
        body: Incoming,
        alt_svc: Option<HeaderValue>,
    ) -> (H1Stream, PendingResponse) {
        let channel = Rc::new(RefCell::new(Channel {
            head: Head::Waiting,
            frame: None,
            finished: false,
            aborted: false,
            client_gone: false,
            consumer: None,
            producer: None,
            gone_waiter: None,
        }));
        let stream = H1Stream {
            peer,
            id,
            alt_svc,
            channel: channel.clone(),
            body: RefCell::new(body),
            unread: Leftover::default(),
        };
        (stream, PendingResponse { channel })
    }

    /// Queues `frame` once hyper took the previous one; `end` closes the body after it.
    async fn queue(&self, frame: Frame<Bytes>, end: bool) -> Sent {
        let mut frame = Some(frame);
        poll_fn(|cx| {
            let mut channel = self.channel.borrow_mut();
            if channel.client_gone
                || channel.finished
                || !matches!(channel.head, Head::Taken | Head::Ready(_))
            {
                return Poll::Ready(Err(StreamGone));
            }
            if channel.frame.is_some() {
                channel.producer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            channel.frame = frame.take();
            channel.finished = end;
            channel.wake_consumer();
            Poll::Ready(Ok(()))
        })
        .await
    }
}

impl Downstream for H1Stream {
    fn protocol(&self) -> crate::http::Protocol {
        crate::http::Protocol::Http1
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn request_id(&self) -> u64 {
        self.id
    }

    async fn send_head(&self, status: u16, headers: &HeaderMap, end: bool) -> Sent {
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        parts.version = Version::HTTP_11;
        parts.headers = tcp_client_fields(headers, self.alt_svc.as_ref());
        let mut channel = self.channel.borrow_mut();
        if channel.client_gone || !matches!(channel.head, Head::Waiting) {
            return Err(StreamGone);
        }
        channel.head = Head::Ready(parts);
        channel.finished = end;
        channel.wake_consumer();
        Ok(())
    }

    async fn write_body(&self, data: Bytes, end: bool) -> Sent {
        if data.is_empty() {
            if !end {
                return Ok(());
            }
            let mut channel = self.channel.borrow_mut();
            if channel.client_gone {
                return Err(StreamGone);
            }
            channel.finished = true;
            channel.wake_consumer();
            return Ok(());
        }
        self.queue(Frame::data(to_keep(data)), end).await
    }

    async fn send_trailers(&self, trailers: &HeaderMap) -> Sent {
        let forwarded = tcp_client_fields(trailers, None);
        // hyper writes only the trailer fields the response head announced in `Trailer`, and
        // only in a chunked body (RFC 9112 §7.1.2); the rest are dropped, as RFC 9110 §6.5.1
        // allows.
        self.queue(Frame::trailers(forwarded), true).await
    }

    async fn read_body(&self, buf: &mut [u8]) -> Result<BodyRead, ReadError> {
        if let Some(n) = self.unread.take(buf) {
            return Ok(BodyRead::Data(n));
        }
        loop {
            let frame = poll_fn(|cx| Pin::new(&mut *self.body.borrow_mut()).poll_frame(cx)).await;
            let frame = match frame {
                None => return Ok(BodyRead::End(None)),
                Some(Err(_)) => return Err(ReadError::Gone),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => return Ok(BodyRead::Data(self.unread.fill(data, buf))),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Ok(BodyRead::End(Some(trailers)));
                    }
                }
            }
        }
    }

    async fn gone(&self) {
        poll_fn(|cx| {
            let mut channel = self.channel.borrow_mut();
            if channel.client_gone {
                return Poll::Ready(());
            }
            channel.gone_waiter = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn abort(&self, _why: Abort) {
        let mut channel = self.channel.borrow_mut();
        channel.aborted = true;
        channel.wake_consumer();
    }
}

impl Drop for H1Stream {
    fn drop(&mut self) {
        let mut channel = self.channel.borrow_mut();
        if !channel.finished {
            channel.aborted = true;
            channel.wake_consumer();
        }
    }
}

impl Future for PendingResponse {
    type Output = Result<Response<ResponseBody>, ResponseAborted>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut channel = self.channel.borrow_mut();
        if let Head::Ready(_) = channel.head {
            let Head::Ready(parts) = std::mem::replace(&mut channel.head, Head::Taken) else {
                unreachable!("matched just above");
            };
            let body = ResponseBody {
                channel: self.channel.clone(),
            };
            return Poll::Ready(Ok(Response::from_parts(parts, body)));
        }
        if channel.aborted {
            return Poll::Ready(Err(ResponseAborted));
        }
        channel.consumer = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for PendingResponse {
    fn drop(&mut self) {
        let mut channel = self.channel.borrow_mut();
        // Dropped before the head was taken: hyper gave up on this request.
        if !matches!(channel.head, Head::Taken) {
            channel.mark_client_gone();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseAborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseAborted>>> {
        let mut channel = self.channel.borrow_mut();
        if let Some(frame) = channel.frame.take() {
            if let Some(waker) = channel.producer.take() {
                waker.wake();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if channel.finished {
            return Poll::Ready(None);
        }
        if channel.aborted {
            return Poll::Ready(Some(Err(ResponseAborted)));
        }
        channel.consumer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let channel = self.channel.borrow();
        channel.finished && channel.frame.is_none()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.channel.borrow_mut().mark_client_gone();
    }
}
