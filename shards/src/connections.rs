//! The shard's QUIC connection table, its timers and its packet output.
//!
//! Owned by exactly one shard and touched only by that shard's tasks. Connections are keyed by the
//! server connection ID, which is derived from the client's original destination ID (see
//! [`crate::cid`]), so both Initial packets of a split ClientHello find the same entry and packets
//! for unknown connections cost a hash lookup and nothing else: no state is created for anything
//! that is not a well-formed Initial of a supported version.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use ahash::AHashMap;

use crate::cid::{as_server_cid, CidMinter, ServerCid, SERVER_CID_LEN};
use crate::notify::Notify;
use crate::stats::ShardStats;

/// Largest datagram we accept or build.
pub const MAX_DATAGRAM: usize = 65_535;
/// RFC 9000 §14.1: a client Initial smaller than this must be dropped.
const MIN_INITIAL_LEN: usize = 1200;

/// Identifies one request stream across the shard. The serial guards against a connection ID that
/// is reused by a later connection after the first one closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamKey {
    pub cid: ServerCid,
    pub serial: u64,
    pub stream_id: u64,
}

/// What the connection driver tells a stream's request task.
#[derive(Default)]
pub struct StreamSlot {
    /// The task to wake when anything about the stream changes: data or trailers arrived, the
    /// stream became writable, or the client went away.
    pub waker: Option<Waker>,
    /// The client has sent its whole request (FIN seen by the HTTP/3 layer).
    pub request_fin: bool,
    /// Request trailers, once received.
    pub trailers: Option<Vec<quiche::h3::Header>>,
    /// For the access log: body bytes received from and sent to the client, the response
    /// status, and the upstream and backend that served the request.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub status: u16,
    pub served_by: Option<(String, String)>,
}

impl StreamSlot {
    pub fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

pub struct Connection {
    pub quic: quiche::Connection,
    pub h3: Option<quiche::h3::Connection>,
    pub serial: u64,
    pub peer: SocketAddr,
    pub streams: AHashMap<u64, StreamSlot>,
    /// One past the highest request stream the client has opened: what a GOAWAY promises to serve.
    pub next_request_stream: u64,
    /// Set once we sent GOAWAY: request streams from this id on are refused.
    pub goaway_from: Option<u64>,
    /// Earliest deadline this connection has in the timer heap, if any.
    armed: Option<Instant>,
    dirty: bool,
    handshake_counted: bool,
}

pub struct Connections {
    pub config: quiche::Config,
    pub h3_config: quiche::h3::Config,
    minter: CidMinter,
    pub table: AHashMap<ServerCid, Connection>,
    timers: BinaryHeap<Reverse<(Instant, ServerCid)>>,
    dirty: Vec<ServerCid>,
    socket: UdpSocket,
    local_addr: SocketAddr,
    next_serial: u64,
    out: Box<[u8]>,
    /// Cleared on shutdown: Initials for new connections are then dropped.
    pub accepting: bool,
    stats: Arc<ShardStats>,
    /// Wakes the timer task when a deadline earlier than every armed one appears.
    pub timer_changed: std::rc::Rc<Notify>,
}

/// Where a received datagram goes.
pub enum Destination {
    Connection(ServerCid),
    Dropped,
}

impl Connections {
    pub fn new(
        config: quiche::Config,
        h3_config: quiche::h3::Config,
        minter: CidMinter,
        socket: UdpSocket,
        stats: Arc<ShardStats>,
        timer_changed: std::rc::Rc<Notify>,
    ) -> io::Result<Self> {
        let local_addr = socket.local_addr()?;
        Ok(Connections {
            config,
            h3_config,
            minter,
            table: AHashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            socket,
            local_addr,
            next_serial: 0,
            out: vec![0; MAX_DATAGRAM].into_boxed_slice(),
            accepting: true,
            stats,
            timer_changed,
        })
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Finds (or, for a valid Initial, creates) the connection a datagram belongs to, and feeds
    /// the datagram to it.
    pub fn receive(&mut self, datagram: &mut [u8], from: SocketAddr) -> Destination {
        self.stats.datagrams_received.incr();
        self.stats.bytes_received.add(datagram.len() as u64);
        let cid = match self.classify(datagram, from) {
            Some(cid) => cid,
            None => return Destination::Dropped,
        };
        let Some(conn) = self.table.get_mut(&cid) else {
            return Destination::Dropped;
        };
        let info = quiche::RecvInfo {
            from,
            to: self.local_addr,
        };
        if let Err(e) = conn.quic.recv(datagram, info) {
            // quiche has already acted on the error (e.g. closed the connection); we only record it.
            log::debug!("quic recv from {from}: {e}");
        }
        if !conn.handshake_counted && conn.quic.is_established() {
            conn.handshake_counted = true;
            self.stats.handshakes_completed.incr();
        }
        if conn.h3.is_none() && (conn.quic.is_established() || conn.quic.is_in_early_data()) {
            match quiche::h3::Connection::with_transport(&mut conn.quic, &self.h3_config) {
                Ok(h3) => conn.h3 = Some(h3),
                Err(e) => {
                    log::debug!("h3 setup with {from} failed: {e}");
                    let _ = conn.quic.close(true, H3_INTERNAL_ERROR, b"h3 setup failed");
                }
            }
        }
        while let Some(stream_id) = conn.quic.stream_writable_next() {
            if let Some(slot) = conn.streams.get_mut(&stream_id) {
                slot.wake();
            }
        }
        self.mark_dirty(cid);
        Destination::Connection(cid)
    }

    fn classify(&mut self, datagram: &mut [u8], from: SocketAddr) -> Option<ServerCid> {
        let len = datagram.len();
        let header = match quiche::Header::from_slice(datagram, SERVER_CID_LEN) {
            Ok(h) => h,
            Err(_) => {
                self.stats.datagrams_dropped_malformed.incr();
                return None;
            }
        };
        if let Some(cid) = as_server_cid(&header.dcid) {
            if self.table.contains_key(&cid) {
                return Some(cid);
            }
        }
        if header.ty != quiche::Type::Initial {
            // Short-header and other packets for connections we do not have: nothing to do.
            self.stats.datagrams_dropped_unknown.incr();
            return None;
        }
        if !quiche::version_is_supported(header.version) {
            self.negotiate_version(&header, from);
            return None;
        }
        let cid = self.minter.derive(&header.dcid);
        if self.table.contains_key(&cid) {
            // A later Initial of a handshake we already started (split ClientHello).
            return Some(cid);
        }
        if len < MIN_INITIAL_LEN || !self.accepting {
            self.stats.datagrams_dropped_unknown.incr();
            return None;
        }
        let scid = quiche::ConnectionId::from_ref(&cid);
        match quiche::accept(&scid, None, self.local_addr, from, &mut self.config) {
            Ok(quic) => {
                self.stats.connections_accepted.incr();
                self.stats.connections_active.incr();
                self.next_serial += 1;
                self.table.insert(
                    cid,
                    Connection {
                        quic,
                        h3: None,
                        serial: self.next_serial,
                        peer: from,
                        streams: AHashMap::new(),
                        next_request_stream: 0,
                        goaway_from: None,
                        armed: None,
                        dirty: false,
                        handshake_counted: false,
                    },
                );
                Some(cid)
            }
            Err(e) => {
                log::debug!("accept from {from} failed: {e}");
                self.stats.datagrams_dropped_malformed.incr();
                None
            }
        }
    }

    fn negotiate_version(&mut self, header: &quiche::Header<'_>, to: SocketAddr) {
        match quiche::negotiate_version(&header.scid, &header.dcid, &mut self.out) {
            Ok(n) => {
                self.stats.version_negotiations.incr();
                let _ = self.socket.send_to(&self.out[..n], to);
            }
            Err(e) => log::debug!("version negotiation for {to} failed: {e}"),
        }
    }

    /// Queues a connection for [`Connections::flush`].
    pub fn mark_dirty(&mut self, cid: ServerCid) {
        if let Some(conn) = self.table.get_mut(&cid) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(cid);
            }
        }
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Sends everything every dirty connection has to send, re-arms its timer, and removes
    /// connections that have closed (waking their streams' tasks so they cancel upstream).
    pub fn flush(&mut self) {
        while let Some(cid) = self.dirty.pop() {
            let Some(conn) = self.table.get_mut(&cid) else {
                continue;
            };
            conn.dirty = false;
            let mut send_errors = 0;
            loop {
                match conn.quic.send(&mut self.out) {
                    Ok((n, info)) => match self.socket.send_to(&self.out[..n], info.to) {
                        Ok(_) => {
                            self.stats.datagrams_sent.incr();
                            self.stats.bytes_sent.add(n as u64);
                        }
                        Err(e) => {
                            // The packet is lost; QUIC loss recovery resends its frames.
                            self.stats.datagrams_send_failed.incr();
                            log::trace!("send to {} failed: {e}", info.to);
                            if e.kind() == io::ErrorKind::WouldBlock {
                                break;
                            }
                        }
                    },
                    Err(quiche::Error::Done) => break,
                    Err(e) => {
                        log::debug!("quic send: {e}");
                        send_errors += 1;
                        if send_errors > 1 {
                            break;
                        }
                        // INTERNAL_ERROR (RFC 9000 §20.1); the next send emits CONNECTION_CLOSE.
                        let _ = conn.quic.close(false, 0x1, b"internal error");
                    }
                }
            }
            if conn.quic.is_closed() {
                self.remove(cid);
            } else {
                self.arm(cid);
            }
        }
    }

    fn arm(&mut self, cid: ServerCid) {
        let Some(conn) = self.table.get_mut(&cid) else {
            return;
        };
        let Some(deadline) = conn.quic.timeout_instant() else {
            return;
        };
        // Only an earlier deadline needs a new heap entry: a later one is found when the armed
        // entry fires, which keeps the heap at about one entry per connection.
        if conn.armed.is_some_and(|armed| armed <= deadline) {
            return;
        }
        conn.armed = Some(deadline);
        let earliest = self.timers.peek().map(|Reverse((t, _))| *t);
        self.timers.push(Reverse((deadline, cid)));
        if earliest.is_none_or(|t| deadline < t) {
            self.timer_changed.notify();
        }
    }

    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Runs quiche's timeout handling for every connection whose deadline has passed.
    pub fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((deadline, cid))) = self.timers.peek().copied() {
            if deadline > now {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.table.get_mut(&cid) else {
                continue;
            };
            if conn.armed != Some(deadline) {
                continue;
            }
            conn.armed = None;
            match conn.quic.timeout_instant() {
                Some(actual) if actual <= now => {
                    conn.quic.on_timeout();
                    self.mark_dirty(cid);
                }
                Some(_) => self.arm(cid),
                None => {}
            }
        }
    }

    fn remove(&mut self, cid: ServerCid) {
        if let Some(mut conn) = self.table.remove(&cid) {
            self.stats.connections_active.sub(1);
            if !conn.handshake_counted {
                self.stats.handshake_failures.incr();
            }
            log::debug!(
                "connection from {} closed (peer error {:?}, local error {:?}, timed out {})",
                conn.peer,
                conn.quic.peer_error(),
                conn.quic.local_error(),
                conn.quic.is_timed_out()
            );
            for slot in conn.streams.values_mut() {
                slot.wake();
            }
        }
    }

    /// Starts a graceful stop: no new connections, and every connection is told (HTTP/3 GOAWAY)
    /// that no request after the ones it already sent will be served.
    pub fn start_drain(&mut self) {
        self.accepting = false;
        let cids: Vec<ServerCid> = self.table.keys().copied().collect();
        for cid in cids {
            if let Some(conn) = self.table.get_mut(&cid) {
                if let Some(h3) = conn.h3.as_mut() {
                    // The server's GOAWAY names the first request stream it will not process
                    // (RFC 9114 §5.2): every request already opened is still served.
                    let first_refused = conn.next_request_stream;
                    conn.goaway_from = Some(first_refused);
                    if let Err(e) = h3.send_goaway(&mut conn.quic, first_refused) {
                        log::debug!("goaway to {}: {e}", conn.peer);
                    }
                }
            }
            self.mark_dirty(cid);
        }
        self.close_idle();
    }

    /// Closes (H3_NO_ERROR) every connection with no request in flight. Used while draining.
    pub fn close_idle(&mut self) {
        let idle: Vec<ServerCid> = self
            .table
            .iter()
            .filter(|(_, conn)| conn.streams.is_empty() && !conn.quic.is_draining())
            .map(|(cid, _)| *cid)
            .collect();
        for cid in idle {
            if let Some(conn) = self.table.get_mut(&cid) {
                let _ = conn.quic.close(true, H3_NO_ERROR, b"shutting down");
            }
            self.mark_dirty(cid);
        }
        self.flush();
    }

    /// Connections still open (including ones finishing their close).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Closes every connection (application close with H3_NO_ERROR) and stops accepting.
    pub fn close_all(&mut self) {
        self.accepting = false;
        let cids: Vec<ServerCid> = self.table.keys().copied().collect();
        for cid in cids {
            if let Some(conn) = self.table.get_mut(&cid) {
                let _ = conn.quic.close(true, H3_NO_ERROR, b"shutting down");
            }
            self.mark_dirty(cid);
        }
        self.flush();
    }
}

/// HTTP/3 error codes used by the proxy (RFC 9114 §8.1).
pub const H3_NO_ERROR: u64 = 0x100;
pub const H3_INTERNAL_ERROR: u64 = 0x102;
pub const H3_REQUEST_REJECTED: u64 = 0x10b;
pub const H3_REQUEST_CANCELLED: u64 = 0x10c;
pub const H3_MESSAGE_ERROR: u64 = 0x10e;
