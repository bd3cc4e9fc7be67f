//! The request task's side of a client stream.
//!
//! Request tasks move bytes between quiche and h2 themselves, directly, under a short borrow of the
//! shard's connection table: no intermediate queue, no copy beyond the one into quiche's send
//! buffer. When quiche cannot take or give more, the task parks its waker in the stream's slot and
//! the connection driver wakes it when a packet changes that (data arrived, flow-control credit
//! arrived, the client reset the stream or the connection closed).

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

use quiche::h3::{Header, HeaderRef};

use crate::connections::{Connection, StreamKey, StreamSlot, H3_NO_ERROR};
use crate::shard::Shard;

/// The client stream no longer exists: the client reset it, or its connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamGone;

/// One read from a request body.
pub enum BodyRead {
    Data(usize),
    /// The request is complete; trailers if the client sent any.
    End(Option<Vec<Header>>),
}

type Fields = [(Vec<u8>, Vec<u8>)];

fn header_refs(fields: &Fields) -> Vec<HeaderRef<'_>> {
    fields
        .iter()
        .map(|(name, value)| HeaderRef::new(name, value))
        .collect()
}

impl Shard {
    /// Runs `f` on the stream's connection and slot, then queues the connection for sending.
    fn with_stream<R>(
        &self,
        key: StreamKey,
        f: impl FnOnce(&mut quiche::Connection, &mut quiche::h3::Connection, &mut StreamSlot) -> R,
    ) -> Result<R, StreamGone> {
        let mut conns = self.conns.borrow_mut();
        let result = {
            let conn = find(&mut conns.table, key)?;
            let Connection {
                quic, h3, streams, ..
            } = conn;
            let h3 = h3.as_mut().ok_or(StreamGone)?;
            let slot = streams.get_mut(&key.stream_id).ok_or(StreamGone)?;
            f(quic, h3, slot)
        };
        conns.mark_dirty(key.cid);
        drop(conns);
        self.flush_needed.notify();
        Ok(result)
    }

    /// Sends the response head. `fin` ends the stream (no body).
    pub async fn send_response_head(
        &self,
        key: StreamKey,
        fields: &Fields,
        fin: bool,
    ) -> Result<(), StreamGone> {
        let headers = header_refs(fields);
        poll_fn(|cx| {
            let attempt = self.with_stream(key, |quic, h3, slot| {
                match h3.send_response(quic, key.stream_id, &headers, fin) {
                    Ok(()) => {
                        slot.status = status_of(fields);
                        Poll::Ready(Ok(()))
                    }
                    Err(quiche::h3::Error::StreamBlocked) => {
                        slot.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    Err(e) => {
                        log::debug!("send_response on stream {}: {e}", key.stream_id);
                        Poll::Ready(Err(StreamGone))
                    }
                }
            });
            attempt.unwrap_or(Poll::Ready(Err(StreamGone)))
        })
        .await
    }

    /// Sends response trailers and ends the stream.
    pub async fn send_trailers(&self, key: StreamKey, fields: &Fields) -> Result<(), StreamGone> {
        let headers = header_refs(fields);
        poll_fn(|cx| {
            let attempt = self.with_stream(key, |quic, h3, slot| {
                match h3.send_additional_headers(quic, key.stream_id, &headers, true, true) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(quiche::h3::Error::StreamBlocked) => {
                        slot.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    Err(_) => Poll::Ready(Err(StreamGone)),
                }
            });
            attempt.unwrap_or(Poll::Ready(Err(StreamGone)))
        })
        .await
    }

    /// Writes all of `data` to the response body, waiting for flow-control credit as needed.
    /// Writing nothing without `fin` is a no-op (quiche would refuse it).
    pub async fn write_body(
        &self,
        key: StreamKey,
        data: &[u8],
        fin: bool,
    ) -> Result<(), StreamGone> {
        if data.is_empty() && !fin {
            return Ok(());
        }
        let mut written = 0;
        poll_fn(|cx| {
            let attempt = self.with_stream(key, |quic, h3, slot| loop {
                match h3.send_body(quic, key.stream_id, &data[written..], fin) {
                    Ok(n) => {
                        written += n;
                        slot.bytes_out += n as u64;
                        if written == data.len() {
                            return Poll::Ready(Ok(()));
                        }
                        if n == 0 {
                            slot.waker = Some(cx.waker().clone());
                            return Poll::Pending;
                        }
                    }
                    Err(quiche::h3::Error::Done) => {
                        slot.waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    Err(e) => {
                        log::debug!("send_body on stream {}: {e}", key.stream_id);
                        return Poll::Ready(Err(StreamGone));
                    }
                }
            });
            attempt.unwrap_or(Poll::Ready(Err(StreamGone)))
        })
        .await
    }

    /// Reads request body bytes into `buf`, waiting for the client when none are buffered.
    pub async fn read_body(
        self: &Rc<Self>,
        key: StreamKey,
        buf: &mut [u8],
    ) -> Result<BodyRead, StreamGone> {
        poll_fn(|cx| {
            let mut conns = self.conns.borrow_mut();
            let read = {
                let Ok(conn) = find(&mut conns.table, key) else {
                    return Poll::Ready(Err(StreamGone));
                };
                let Connection { quic, h3, .. } = conn;
                let Some(h3) = h3.as_mut() else {
                    return Poll::Ready(Err(StreamGone));
                };
                h3.recv_body(quic, key.stream_id, buf)
            };
            // Reading may complete the stream or free flow-control credit: let the HTTP/3 layer
            // report that now rather than on the next packet, and send the credit update.
            self.process_events(&mut conns, key.cid);
            conns.mark_dirty(key.cid);
            let slot = find(&mut conns.table, key)
                .ok()
                .and_then(|c| c.streams.get_mut(&key.stream_id));
            let outcome = match (read, slot) {
                (_, None) => Poll::Ready(Err(StreamGone)),
                (Ok(n), Some(slot)) => {
                    slot.bytes_in += n as u64;
                    Poll::Ready(Ok(BodyRead::Data(n)))
                }
                (Err(quiche::h3::Error::Done), Some(slot)) => {
                    if slot.request_fin {
                        Poll::Ready(Ok(BodyRead::End(slot.trailers.take())))
                    } else {
                        slot.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
                (Err(e), Some(_)) => {
                    log::debug!("recv_body on stream {}: {e}", key.stream_id);
                    Poll::Ready(Err(StreamGone))
                }
            };
            drop(conns);
            self.spawn_pending();
            self.flush_needed.notify();
            outcome
        })
        .await
    }

    /// Resolves when the client stream is gone; lets a task stop waiting on its backend.
    pub async fn stream_gone(&self, key: StreamKey) {
        poll_fn(|cx| {
            let mut conns = self.conns.borrow_mut();
            match find(&mut conns.table, key)
                .ok()
                .and_then(|c| c.streams.get_mut(&key.stream_id))
            {
                Some(slot) => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                None => Poll::Ready(()),
            }
        })
        .await
    }

    /// Aborts the client stream in both directions with `code`.
    pub fn reset_stream(&self, key: StreamKey, code: u64) {
        let _ = self.with_stream(key, |quic, _, slot| {
            let _ = quic.stream_shutdown(key.stream_id, quiche::Shutdown::Write, code);
            if !slot.request_fin {
                let _ = quic.stream_shutdown(key.stream_id, quiche::Shutdown::Read, code);
            }
        });
    }

    /// Whether response headers went out on the stream (then only a reset can end it early).
    pub fn response_started(&self, key: StreamKey) -> bool {
        let mut conns = self.conns.borrow_mut();
        find(&mut conns.table, key)
            .ok()
            .and_then(|c| c.streams.get(&key.stream_id))
            .is_some_and(|slot| slot.status != 0)
    }

    /// Records which upstream and backend serve the request, for the access log.
    pub fn note_backend(&self, key: StreamKey, upstream: &str, backend: &str) {
        if !self.access_log.get() {
            return;
        }
        let mut conns = self.conns.borrow_mut();
        if let Some(slot) = find(&mut conns.table, key)
            .ok()
            .and_then(|c| c.streams.get_mut(&key.stream_id))
        {
            slot.served_by = Some((upstream.to_string(), backend.to_string()));
        }
    }

    /// Writes the access log line of a finished request (when `log.access_log` is on).
    pub fn log_access(&self, key: StreamKey, outcome: &str, started: std::time::Instant) {
        if !self.access_log.get() {
            return;
        }
        let mut conns = self.conns.borrow_mut();
        let Ok(conn) = find(&mut conns.table, key) else {
            return;
        };
        let peer = conn.peer;
        let slot = conn.streams.get(&key.stream_id);
        let (upstream, backend) = slot
            .and_then(|s| s.served_by.clone())
            .unwrap_or_else(|| ("-".into(), "-".into()));
        log::info!(
            target: "spooky::access",
            "client={peer} stream={} upstream={upstream} backend={backend} status={} bytes_in={} bytes_out={} duration_us={} outcome={outcome} shard={}",
            key.stream_id,
            slot.map_or(0, |s| s.status),
            slot.map_or(0, |s| s.bytes_in),
            slot.map_or(0, |s| s.bytes_out),
            started.elapsed().as_micros(),
            self.index,
        );
    }

    /// Forgets the stream once its task is done. If the client is still sending a request body
    /// nobody will read, it is told to stop (RFC 9114 §4.1: STOP_SENDING with H3_NO_ERROR after a
    /// complete response).
    pub fn release_stream(&self, key: StreamKey) {
        let mut conns = self.conns.borrow_mut();
        if let Ok(conn) = find(&mut conns.table, key) {
            if let Some(slot) = conn.streams.remove(&key.stream_id) {
                if !slot.request_fin {
                    let _ = conn.quic.stream_shutdown(
                        key.stream_id,
                        quiche::Shutdown::Read,
                        H3_NO_ERROR,
                    );
                }
            }
            conns.mark_dirty(key.cid);
        }
        drop(conns);
        self.stats.streams_active.sub(1);
        self.flush_needed.notify();
    }
}

/// The numeric `:status` of a response field list (0 if absent).
fn status_of(fields: &Fields) -> u16 {
    fields
        .iter()
        .find(|(name, _)| name == b":status")
        .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok())
        .unwrap_or(0)
}

fn find(
    table: &mut ahash::AHashMap<crate::cid::ServerCid, Connection>,
    key: StreamKey,
) -> Result<&mut Connection, StreamGone> {
    table
        .get_mut(&key.cid)
        .filter(|c| c.serial == key.serial)
        .ok_or(StreamGone)
}
