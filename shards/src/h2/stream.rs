//! One HTTP/2 request stream from a client, as the proxy's [`Downstream`].
//!
//! Before the response head the stream is a `SendResponse`; after it, a `SendStream`. Both, and
//! the request body, are only borrowed inside a poll, never across an await, because a request's
//! upload and download run concurrently against the same stream.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::task::Poll;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Response};

use crate::http::response::tcp_client_fields;
use crate::http::{to_keep, Abort, BodyRead, Downstream, Leftover, ReadError, Sent, StreamGone};

enum Sender {
    Head(SendResponse<Bytes>),
    Body(SendStream<Bytes>),
    Done,
}

pub struct H2Stream {
    peer: SocketAddr,
    id: u64,
    /// `Alt-Svc` for every response: where this origin also speaks HTTP/3 (RFC 7838).
    alt_svc: Option<HeaderValue>,
    sender: RefCell<Sender>,
    body: RefCell<RecvStream>,
    /// What is left of the last DATA frame after a short read.
    unread: Leftover,
}

impl H2Stream {
    pub fn new(
        peer: SocketAddr,
        respond: SendResponse<Bytes>,
        body: RecvStream,
        alt_svc: Option<HeaderValue>,
    ) -> Self {
        H2Stream {
            peer,
            id: u64::from(respond.stream_id().as_u32()),
            alt_svc,
            sender: RefCell::new(Sender::Head(respond)),
            body: RefCell::new(body),
            unread: Leftover::default(),
        }
    }

    /// Queues `chunk` once the client's flow control has room for all of it.
    async fn send_chunk(&self, mut chunk: Bytes, end: bool) -> Sent {
        loop {
            let granted = poll_fn(|cx| {
                let mut sender = self.sender.borrow_mut();
                let Sender::Body(send) = &mut *sender else {
                    return Poll::Ready(Err(StreamGone));
                };
                if chunk.is_empty() {
                    return Poll::Ready(Ok(0));
                }
                send.reserve_capacity(chunk.len());
                match send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(granted))) if granted > 0 => Poll::Ready(Ok(granted)),
                    Poll::Ready(Some(Ok(_))) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                    Poll::Ready(Some(Err(_))) | Poll::Ready(None) => Poll::Ready(Err(StreamGone)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await?;
            let piece = chunk.split_to(granted.min(chunk.len()));
            let last = chunk.is_empty();
            let mut sender = self.sender.borrow_mut();
            let Sender::Body(send) = &mut *sender else {
                return Err(StreamGone);
            };
            send.send_data(piece, end && last).map_err(|_| StreamGone)?;
            if last {
                if end {
                    *sender = Sender::Done;
                }
                return Ok(());
            }
        }
    }
}

fn reason_for(why: Abort) -> Reason {
    match why {
        Abort::Internal => Reason::INTERNAL_ERROR,
        Abort::Cancelled => Reason::CANCEL,
        Abort::Malformed => Reason::PROTOCOL_ERROR,
    }
}

impl Downstream for H2Stream {
    fn protocol(&self) -> crate::http::Protocol {
        crate::http::Protocol::H2
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn request_id(&self) -> u64 {
        self.id
    }

    async fn send_head(&self, status: u16, headers: &HeaderMap, end: bool) -> Sent {
        // Connection-specific fields are forbidden in HTTP/2 (RFC 9113 §8.2.2); `h2` refuses
        // to send them.
        let mut response = Response::new(());
        *response.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        *response.headers_mut() = tcp_client_fields(headers, self.alt_svc.as_ref());
        let mut sender = self.sender.borrow_mut();
        let Sender::Head(respond) = &mut *sender else {
            return Err(StreamGone);
        };
        let send = respond
            .send_response(response, end)
            .map_err(|_| StreamGone)?;
        *sender = if end {
            Sender::Done
        } else {
            Sender::Body(send)
        };
        Ok(())
    }

    async fn write_body(&self, data: Bytes, end: bool) -> Sent {
        if data.is_empty() {
            if !end {
                return Ok(());
            }
            let mut sender = self.sender.borrow_mut();
            let Sender::Body(send) = &mut *sender else {
                return Err(StreamGone);
            };
            send.send_data(Bytes::new(), true).map_err(|_| StreamGone)?;
            *sender = Sender::Done;
            return Ok(());
        }
        self.send_chunk(to_keep(data), end).await
    }

    async fn send_trailers(&self, trailers: &HeaderMap) -> Sent {
        let forwarded = tcp_client_fields(trailers, None);
        let mut sender = self.sender.borrow_mut();
        let Sender::Body(send) = &mut *sender else {
            return Err(StreamGone);
        };
        send.send_trailers(forwarded).map_err(|_| StreamGone)?;
        *sender = Sender::Done;
        Ok(())
    }

    async fn read_body(&self, buf: &mut [u8]) -> Result<BodyRead, ReadError> {
        if let Some(n) = self.unread.take(buf) {
            return Ok(BodyRead::Data(n));
        }
        let frame = poll_fn(|cx| self.body.borrow_mut().poll_data(cx)).await;
        match frame {
            Some(Ok(data)) => {
                // The proxy reads only what the backend has room for, so the credit can go
                // back to the client at once.
                let _ = self
                    .body
                    .borrow_mut()
                    .flow_control()
                    .release_capacity(data.len());
                Ok(BodyRead::Data(self.unread.fill(data, buf)))
            }
            Some(Err(_)) => Err(ReadError::Gone),
            None => {
                let trailers = poll_fn(|cx| self.body.borrow_mut().poll_trailers(cx)).await;
                match trailers {
                    Ok(trailers) => Ok(BodyRead::End(trailers)),
                    Err(_) => Err(ReadError::Gone),
                }
            }
        }
    }

    async fn gone(&self) {
        poll_fn(|cx| {
            let mut sender = self.sender.borrow_mut();
            let reset = match &mut *sender {
                Sender::Head(respond) => respond.poll_reset(cx),
                Sender::Body(send) => send.poll_reset(cx),
                Sender::Done => return Poll::Pending,
            };
            reset.map(|_| ())
        })
        .await
    }

    fn abort(&self, why: Abort) {
        let mut sender = self.sender.borrow_mut();
        match &mut *sender {
            Sender::Head(respond) => respond.send_reset(reason_for(why)),
            Sender::Body(send) => send.send_reset(reason_for(why)),
            Sender::Done => {}
        }
        *sender = Sender::Done;
    }
}
