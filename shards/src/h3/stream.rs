//! One request's access to its HTTP/3 stream: the [`Downstream`] implementation for HTTP/3.
//!
//! Request tasks move bytes between quiche and their backend themselves, under a short borrow of
//! the shard's connection table: no intermediate queue, and a long body chunk joins quiche's
//! send queue as the `Bytes` it is ([`crate::quic::buffers`]). When quiche cannot take or give
//! more, the task parks its waker in the stream's slot and the session wakes it when a packet
//! changes that (data arrived, flow-control credit arrived, the client reset the stream or the
//! connection closed).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;
use http::HeaderMap;
use quiche::h3::{HeaderRef, NameValue, WireErrorCode};

use super::session::StreamSlot;
use super::Connections;
use crate::http::response::{forwardable_fields, response_fields, status_digits};
use crate::http::{
    keep_as_is, translate_request_trailers, Abort, BodyRead, Downstream, ReadError, Sent,
    StreamGone,
};
use crate::quic::buffers::StreamBuf;
use crate::quic::cid::ServerCid;
use crate::quic::QuicConnection;

/// Identifies one request stream across the shard. The serial guards against a connection ID that
/// is reused by a later connection after the first one closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamKey {
    pub cid: ServerCid,
    pub serial: u64,
    pub stream_id: u64,
}

/// A request task's handle on its client stream. Dropping it forgets the stream; if the client is
/// still sending a request body nobody will read, it is told to stop (RFC 9114 §4.1:
/// STOP_SENDING with H3_NO_ERROR after a complete response).
pub struct H3Stream {
    conns: Rc<Connections>,
    key: StreamKey,
    peer: SocketAddr,
}

fn header_refs<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<HeaderRef<'a>> {
    fields
        .map(|(name, value)| HeaderRef::new(name, value))
        .collect()
}

/// The stream cannot go on: quiche refused an operation for a reason other than flow control.
fn failed<T>(what: &str, stream_id: u64, e: quiche::h3::Error) -> Poll<Result<T, StreamGone>> {
    log::debug!("{what} on stream {stream_id}: {e}");
    Poll::Ready(Err(StreamGone))
}

/// Waits for the session's next news about the stream.
fn park<T>(slot: &mut StreamSlot, cx: &std::task::Context<'_>) -> Poll<T> {
    slot.park(cx.waker());
    Poll::Pending
}

fn abort_code(why: Abort) -> u64 {
    let code = match why {
        Abort::Internal => WireErrorCode::InternalError,
        Abort::Cancelled => WireErrorCode::RequestCancelled,
        Abort::Malformed => WireErrorCode::MessageError,
    };
    code as u64
}

impl H3Stream {
    pub fn new(conns: Rc<Connections>, key: StreamKey, peer: SocketAddr) -> Self {
        H3Stream { conns, key, peer }
    }

    /// Runs `f` on the stream's connection and slot, then queues the connection for sending.
    fn with_stream<R>(
        &self,
        f: impl FnOnce(&mut QuicConnection, &mut quiche::h3::Connection, &mut StreamSlot) -> R,
    ) -> Result<R, StreamGone> {
        let key = self.key;
        let mut endpoint = self.conns.endpoint.borrow_mut();
        let result = {
            let conn = endpoint.connection(key.cid, key.serial).ok_or(StreamGone)?;
            let session = conn.session.as_mut().ok_or(StreamGone)?;
            let slot = session.streams.get_mut(&key.stream_id).ok_or(StreamGone)?;
            f(&mut conn.quic, &mut session.h3, slot)
        };
        endpoint.mark_dirty(key.cid);
        drop(endpoint);
        self.conns.flush_needed.notify();
        Ok(result)
    }

    /// Sends a header section, waiting while the stream is blocked. `trailers` sends it as the
    /// stream's last section.
    async fn send_fields(
        &self,
        fields: &[HeaderRef<'_>],
        end: bool,
        trailers: bool,
    ) -> Result<(), StreamGone> {
        let stream_id = self.key.stream_id;
        poll_fn(|cx| {
            let attempt = self.with_stream(|quic, h3, slot| {
                let sent = if trailers {
                    h3.send_additional_headers(quic, stream_id, fields, true, true)
                } else {
                    h3.send_response(quic, stream_id, fields, end)
                };
                match sent {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(quiche::h3::Error::StreamBlocked) => park(slot, cx),
                    Err(e) => failed("sending fields", stream_id, e),
                }
            });
            attempt.unwrap_or(Poll::Ready(Err(StreamGone)))
        })
        .await
    }
}

impl Downstream for H3Stream {
    fn protocol(&self) -> crate::http::Protocol {
        crate::http::Protocol::H3
    }

    fn peer(&self) -> SocketAddr {
        self.peer
    }

    fn request_id(&self) -> u64 {
        self.key.stream_id
    }

    async fn send_head(&self, status: u16, headers: &HeaderMap, end: bool) -> Sent {
        let status = status_digits(status);
        let fields = header_refs(response_fields(&status, headers));
        self.send_fields(&fields, end, false).await
    }

    async fn send_trailers(&self, trailers: &HeaderMap) -> Sent {
        let fields = header_refs(forwardable_fields(trailers));
        self.send_fields(&fields, true, true).await
    }

    async fn write_body(&self, data: Bytes, end: bool) -> Sent {
        // Writing nothing without `end` is a no-op (quiche would refuse it).
        if data.is_empty() && !end {
            return Ok(());
        }
        let stream_id = self.key.stream_id;
        // What is not written yet. quiche queues the part it takes as it is (see
        // `quic::buffers`) and leaves the rest here; after a complete write it leaves the
        // written bytes in place, so only the count tells that nothing is left.
        let mut rest = if keep_as_is(&data) {
            StreamBuf::Kept(data)
        } else {
            StreamBuf::copied(&data)
        };
        poll_fn(|cx| {
            let attempt = self.with_stream(|quic, h3, slot| loop {
                let len = rest.as_ref().len();
                match h3.send_body_zc(quic, stream_id, &mut rest, end) {
                    Ok(n) if n == len => return Poll::Ready(Ok(())),
                    Ok(0) => return park(slot, cx),
                    Ok(_) => {}
                    Err(quiche::h3::Error::Done) => return park(slot, cx),
                    Err(e) => return failed("send_body", stream_id, e),
                }
            });
            attempt.unwrap_or(Poll::Ready(Err(StreamGone)))
        })
        .await
    }

    async fn read_body(&self, buf: &mut [u8]) -> Result<BodyRead, ReadError> {
        let stream_id = self.key.stream_id;
        let trailers = poll_fn(|cx| {
            let attempt =
                self.with_stream(|quic, h3, slot| match h3.recv_body(quic, stream_id, buf) {
                    Ok(n) => Poll::Ready(Ok(Ok(n))),
                    Err(quiche::h3::Error::Done) if slot.request_fin => {
                        Poll::Ready(Ok(Err(slot.trailers.take())))
                    }
                    Err(quiche::h3::Error::Done) => {
                        slot.park(cx.waker());
                        Poll::Pending
                    }
                    Err(e) => {
                        log::debug!("recv_body on stream {stream_id}: {e}");
                        Poll::Ready(Err(StreamGone))
                    }
                });
            // Reading may free flow-control credit or leave the stream's end (or its trailers)
            // for the HTTP/3 layer to report: the shard's driver polls the connection's events
            // and sends the credit update, outside this task.
            self.conns.repoll(self.key.cid);
            attempt.unwrap_or(Poll::Ready(Err(StreamGone)))
        })
        .await?;
        let trailers = match trailers {
            Ok(n) => return Ok(BodyRead::Data(n)),
            Err(trailers) => trailers,
        };
        let Some(fields) = trailers else {
            return Ok(BodyRead::End(None));
        };
        translate_request_trailers(fields.iter().map(|h| (h.name(), h.value())))
            .map(|map| BodyRead::End(Some(map)))
            .map_err(ReadError::Malformed)
    }

    async fn gone(&self) {
        poll_fn(|cx| {
            let key = self.key;
            let mut endpoint = self.conns.endpoint.borrow_mut();
            let slot = endpoint
                .connection(key.cid, key.serial)
                .and_then(|conn| conn.session.as_mut())
                .and_then(|session| session.streams.get_mut(&key.stream_id));
            match slot {
                Some(slot) => {
                    slot.park(cx.waker());
                    Poll::Pending
                }
                None => Poll::Ready(()),
            }
        })
        .await
    }

    fn abort(&self, why: Abort) {
        let code = abort_code(why);
        let stream_id = self.key.stream_id;
        let _ = self.with_stream(|quic, _, slot| {
            let _ = quic.stream_shutdown(stream_id, quiche::Shutdown::Write, code);
            if !slot.request_fin {
                let _ = quic.stream_shutdown(stream_id, quiche::Shutdown::Read, code);
            }
        });
    }
}

impl Drop for H3Stream {
    fn drop(&mut self) {
        let key = self.key;
        let mut endpoint = self.conns.endpoint.borrow_mut();
        let Some(conn) = endpoint.connection(key.cid, key.serial) else {
            return;
        };
        let removed = conn
            .session
            .as_mut()
            .and_then(|session| session.streams.remove(&key.stream_id));
        if removed.is_some_and(|slot| !slot.request_fin) {
            let _ = conn.quic.stream_shutdown(
                key.stream_id,
                quiche::Shutdown::Read,
                WireErrorCode::NoError as u64,
            );
        }
        endpoint.mark_dirty(key.cid);
        drop(endpoint);
        self.conns.flush_needed.notify();
    }
}
