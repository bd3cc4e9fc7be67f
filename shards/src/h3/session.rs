//! One connection's HTTP/3 session: its events, which request streams it admits, and GOAWAY.
//!
//! [`H3Session::poll`] turns quiche's HTTP/3 events into what the shard acts on: a new request
//! (reported to the caller, which routes it and starts its task), or news for a running request
//! (data, trailers, end, reset: stored in the stream's [`StreamSlot`] and its task woken). It
//! never starts tasks itself and never calls into the proxy, so a request task reading its body
//! cannot re-enter event processing.

use std::collections::hash_map::Entry;
use std::task::Waker;

use ahash::AHashMap;
use quiche::h3::{Header, WireErrorCode};

use crate::quic::endpoint::Session;
use crate::quic::QuicConnection;

/// What the session tells a stream's request task.
#[derive(Default)]
pub struct StreamSlot {
    /// The task to wake when anything about the stream changes: data or trailers arrived, the
    /// stream became writable, or the client went away.
    pub waker: Option<Waker>,
    /// The client has sent its whole request (FIN seen by the HTTP/3 layer).
    pub request_fin: bool,
    /// Request trailers, once received.
    pub trailers: Option<Vec<Header>>,
}

impl StreamSlot {
    pub fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Parks `waker` until the session has news for this stream.
    pub fn park(&mut self, waker: &Waker) {
        match &mut self.waker {
            Some(parked) if parked.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }
}

/// A request stream the client opened, for the shard to route and start.
pub struct NewRequest {
    pub stream_id: u64,
    pub fields: Vec<Header>,
    /// Body or trailers follow the header section.
    pub more_frames: bool,
}

pub struct H3Session {
    pub h3: quiche::h3::Connection,
    pub streams: AHashMap<u64, StreamSlot>,
    /// One past the highest request stream the client has opened: what a GOAWAY promises to serve.
    next_request_stream: u64,
    /// Set once we sent GOAWAY: request streams from this id on are refused.
    goaway_from: Option<u64>,
}

/// What the shard does with one connection's pending events.
pub enum Polled {
    /// Everything pending was handled.
    Done,
    /// The HTTP/3 layer failed; the connection is closing.
    Failed,
}

impl H3Session {
    /// Handles every HTTP/3 event the connection has pending: new request streams go to
    /// `requests`, news for running ones to their slots. `discard` is scratch space for body
    /// bytes of streams nobody reads any more.
    pub fn poll(
        &mut self,
        quic: &mut QuicConnection,
        requests: &mut Vec<NewRequest>,
        discard: &mut [u8],
    ) -> Polled {
        loop {
            match self.h3.poll(quic) {
                Ok((stream_id, quiche::h3::Event::Headers { list, more_frames })) => {
                    match self.streams.entry(stream_id) {
                        Entry::Occupied(mut slot) => {
                            // A second field section on a request stream is its trailers.
                            let slot = slot.get_mut();
                            slot.trailers = Some(list);
                            slot.request_fin |= !more_frames;
                            slot.wake();
                        }
                        Entry::Vacant(_) => {
                            if self.admit(quic, stream_id) {
                                self.streams.insert(
                                    stream_id,
                                    StreamSlot {
                                        request_fin: !more_frames,
                                        ..StreamSlot::default()
                                    },
                                );
                                requests.push(NewRequest {
                                    stream_id,
                                    fields: list,
                                    more_frames,
                                });
                            }
                        }
                    }
                }
                Ok((stream_id, quiche::h3::Event::Data)) => {
                    match self.streams.get_mut(&stream_id) {
                        Some(slot) => slot.wake(),
                        None => self.discard_body(quic, stream_id, discard),
                    }
                }
                Ok((stream_id, quiche::h3::Event::Finished)) => {
                    if let Some(slot) = self.streams.get_mut(&stream_id) {
                        slot.request_fin = true;
                        slot.wake();
                    }
                }
                Ok((stream_id, quiche::h3::Event::Reset(code))) => {
                    log::debug!("client reset stream {stream_id} with {code:#x}");
                    if let Some(mut slot) = self.streams.remove(&stream_id) {
                        slot.wake();
                    }
                }
                Ok((_, quiche::h3::Event::PriorityUpdate | quiche::h3::Event::GoAway)) => {}
                Err(quiche::h3::Error::Done) => return Polled::Done,
                Err(e) => {
                    log::debug!("h3 connection error: {e}");
                    // quiche has usually closed the connection with the precise code already;
                    // this only covers errors it leaves to the application.
                    if !quic.is_closed() && !quic.is_draining() {
                        let _ = quic.close(true, WireErrorCode::InternalError as u64, b"");
                    }
                    return Polled::Failed;
                }
            }
        }
    }

    /// Whether a new request stream is served. After our GOAWAY, streams from its id on are
    /// refused with H3_REQUEST_REJECTED: never processed, so the client may retry them elsewhere
    /// (RFC 9114 §5.2).
    fn admit(&mut self, quic: &mut QuicConnection, stream_id: u64) -> bool {
        self.next_request_stream = self.next_request_stream.max(stream_id + 4);
        if self
            .goaway_from
            .is_some_and(|first_refused| stream_id >= first_refused)
        {
            let code = WireErrorCode::RequestRejected as u64;
            let _ = quic.stream_shutdown(stream_id, quiche::Shutdown::Read, code);
            let _ = quic.stream_shutdown(stream_id, quiche::Shutdown::Write, code);
            return false;
        }
        true
    }

    fn discard_body(&mut self, quic: &mut QuicConnection, stream_id: u64, buf: &mut [u8]) {
        while let Ok(n) = self.h3.recv_body(quic, stream_id, buf) {
            if n == 0 {
                break;
            }
        }
    }
}

impl Session for H3Session {
    fn open(quic: &mut QuicConnection) -> Result<Self, String> {
        let mut config = quiche::h3::Config::new().map_err(|e| e.to_string())?;
        // quiche closes the whole connection (H3_EXCESSIVE_LOAD) for a field section over this,
        // before Spooky sees it; set well above `limits.max_header_bytes` so that a request
        // between the two gets its `431` on its own stream.
        config.set_max_field_section_size(crate::plan::FIELD_SECTION_CEILING);
        // SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 9220 §3): WebSocket over HTTP/3.
        config.enable_extended_connect(true);
        let h3 =
            quiche::h3::Connection::with_transport(quic, &config).map_err(|e| e.to_string())?;
        Ok(H3Session {
            h3,
            streams: AHashMap::new(),
            next_request_stream: 0,
            goaway_from: None,
        })
    }

    fn stream_writable(&mut self, stream_id: u64) {
        if let Some(slot) = self.streams.get_mut(&stream_id) {
            slot.wake();
        }
    }

    fn closed(&mut self) {
        for slot in self.streams.values_mut() {
            slot.wake();
        }
    }

    fn is_idle(&self) -> bool {
        self.streams.is_empty()
    }

    fn start_drain(&mut self, quic: &mut QuicConnection) {
        // The server's GOAWAY names the first request stream it will not process (RFC 9114
        // §5.2): every request already opened is still served.
        let first_refused = self.next_request_stream;
        self.goaway_from = Some(first_refused);
        if let Err(e) = self.h3.send_goaway(quic, first_refused) {
            log::debug!("goaway: {e}");
        }
    }
}
