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

use crate::cid::{as_server_cid, steering_key, CidMinter, ServerCid, SERVER_CID_LEN};
use crate::notify::Notify;
use crate::stats::ShardStats;
use crate::udp::SendBatch;

/// Largest datagram we accept or build.
pub const MAX_DATAGRAM: usize = 65_535;
/// Spare connection IDs offered per connection (clients usually accept 1 to 7).
const MAX_SPARE_IDS: usize = 3;
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
    /// Spare IDs offered to the client for migration (keys of `Connections::aliases`).
    aliases: Vec<ServerCid>,
    /// Spares issued so far: the sequence for the next one.
    spares_issued: u64,
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
    /// Spare connection IDs, each to the ID the connection is keyed by.
    aliases: AHashMap<ServerCid, ServerCid>,
    timers: BinaryHeap<Reverse<(Instant, ServerCid)>>,
    dirty: Vec<ServerCid>,
    socket: UdpSocket,
    local_addr: SocketAddr,
    next_serial: u64,
    /// The steering key this shard's connection IDs carry.
    own_key: u16,
    /// Largest UDP payload quiche may build (`quic.max_udp_payload_size`).
    pub max_packet: usize,
    /// Outgoing packets, coalesced per destination for one segmented send.
    batch: SendBatch,
    /// Scratch space for version negotiation packets.
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
    /// A packet of a connection owned by the shard with this steering key.
    Elsewhere(u16),
    Dropped,
}

impl Connections {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: quiche::Config,
        h3_config: quiche::h3::Config,
        minter: CidMinter,
        own_key: u16,
        socket: UdpSocket,
        gso: bool,
        max_packet: usize,
        stats: Arc<ShardStats>,
        timer_changed: std::rc::Rc<Notify>,
    ) -> io::Result<Self> {
        let local_addr = socket.local_addr()?;
        Ok(Connections {
            config,
            h3_config,
            minter,
            table: AHashMap::new(),
            aliases: AHashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            socket,
            local_addr,
            next_serial: 0,
            own_key,
            max_packet,
            batch: SendBatch::new(gso),
            out: vec![0; 2048].into_boxed_slice(),
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
    /// the datagram to it. `handed_off` marks a packet another shard passed on, which is never
    /// passed on again.
    pub fn receive(
        &mut self,
        datagram: &mut [u8],
        from: SocketAddr,
        handed_off: bool,
    ) -> Destination {
        if !handed_off {
            self.stats.datagrams_received.incr();
            self.stats.bytes_received.add(datagram.len() as u64);
        }
        let cid = match self.classify(datagram, from, handed_off) {
            Ok(cid) => cid,
            Err(destination) => return destination,
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
        if conn.handshake_counted {
            self.manage_spare_ids(cid);
        }
        let Some(conn) = self.table.get_mut(&cid) else {
            return Destination::Dropped;
        };
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

    fn classify(
        &mut self,
        datagram: &mut [u8],
        from: SocketAddr,
        handed_off: bool,
    ) -> Result<ServerCid, Destination> {
        let len = datagram.len();
        let header = match quiche::Header::from_slice(datagram, SERVER_CID_LEN) {
            Ok(h) => h,
            Err(_) => {
                self.stats.datagrams_dropped_malformed.incr();
                return Err(Destination::Dropped);
            }
        };
        if let Some(cid) = as_server_cid(&header.dcid) {
            let cid = self.aliases.get(&cid).copied().unwrap_or(cid);
            if self.table.contains_key(&cid) {
                return Ok(cid);
            }
            // Only packets that must carry one of our IDs name their owner: an Initial or 0-RTT
            // packet may carry the client's own random ID, whose first bytes mean nothing.
            let carries_our_id = matches!(header.ty, quiche::Type::Short | quiche::Type::Handshake);
            let key = steering_key(&cid);
            if carries_our_id && key != self.own_key && !handed_off {
                return Err(Destination::Elsewhere(key));
            }
        }
        if header.ty != quiche::Type::Initial {
            // Short-header and other packets for connections we do not have: nothing to do.
            self.stats.datagrams_dropped_unknown.incr();
            return Err(Destination::Dropped);
        }
        if !quiche::version_is_supported(header.version) {
            self.negotiate_version(&header, from);
            return Err(Destination::Dropped);
        }
        let cid = self.minter.derive(&header.dcid);
        if self.table.contains_key(&cid) {
            // A later Initial of a handshake we already started (split ClientHello).
            return Ok(cid);
        }
        if len < MIN_INITIAL_LEN || !self.accepting {
            self.stats.datagrams_dropped_unknown.incr();
            return Err(Destination::Dropped);
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
                        aliases: Vec::new(),
                        spares_issued: 0,
                        armed: None,
                        dirty: false,
                        handshake_counted: false,
                    },
                );
                Ok(cid)
            }
            Err(e) => {
                log::debug!("accept from {from} failed: {e}");
                self.stats.datagrams_dropped_malformed.incr();
                Err(Destination::Dropped)
            }
        }
    }

    /// Forgets the spare IDs the client retired and offers new ones up to its limit, so a
    /// client can always move to a new address with a fresh ID (RFC 9000 §9.5).
    fn manage_spare_ids(&mut self, cid: ServerCid) {
        let Some(conn) = self.table.get_mut(&cid) else {
            return;
        };
        while let Some(retired) = conn.quic.retired_scid_next() {
            if let Some(alias) = as_server_cid(&retired) {
                self.aliases.remove(&alias);
                conn.aliases.retain(|a| *a != alias);
            }
        }
        while conn.quic.scids_left() > 0 && conn.aliases.len() < MAX_SPARE_IDS {
            conn.spares_issued += 1;
            let spare = self.minter.spare(&cid, conn.spares_issued);
            let token = self.minter.reset_token(&spare);
            match conn
                .quic
                .new_scid(&quiche::ConnectionId::from_ref(&spare), token, false)
            {
                Ok(_) => {
                    conn.aliases.push(spare);
                    self.aliases.insert(spare, cid);
                }
                Err(e) => {
                    log::debug!("offering a spare connection ID failed: {e}");
                    break;
                }
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
    /// Consecutive packets to one destination leave in one segmented send.
    pub fn flush(&mut self) {
        while let Some(cid) = self.dirty.pop() {
            let Some(conn) = self.table.get_mut(&cid) else {
                continue;
            };
            conn.dirty = false;
            let mut send_errors = 0;
            loop {
                let space = &mut self.batch.space()[..self.max_packet];
                match conn.quic.send(space) {
                    Ok((n, info)) => {
                        if !self.batch.joins(n, info.to) {
                            send_batch(&mut self.batch, &self.socket, &self.stats, n);
                        }
                        self.batch.commit(n, info.to);
                        if !self.batch.has_room(self.max_packet) {
                            send_batch(&mut self.batch, &self.socket, &self.stats, 0);
                        }
                    }
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
        send_batch(&mut self.batch, &self.socket, &self.stats, 0);
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
            for alias in &conn.aliases {
                self.aliases.remove(alias);
            }
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

/// Sends what the batch holds. `pending` bytes just written after it (a packet that could not
/// join) start the next batch. Refused packets are counted and left to QUIC's loss recovery.
fn send_batch(batch: &mut SendBatch, socket: &UdpSocket, stats: &ShardStats, pending: usize) {
    let packets = batch.packets();
    let bytes = batch.bytes();
    if packets == 0 {
        return;
    }
    match batch.send(socket, pending) {
        Ok(()) => {
            stats.datagrams_sent.add(packets as u64);
            stats.bytes_sent.add(bytes as u64);
            if packets > 1 {
                stats.gso_sends.incr();
            }
        }
        Err(e) => {
            stats.datagrams_send_failed.add(packets as u64);
            log::trace!("send failed: {}", e.0);
        }
    }
}

/// HTTP/3 error codes used by the proxy (RFC 9114 §8.1).
pub const H3_NO_ERROR: u64 = 0x100;
pub const H3_INTERNAL_ERROR: u64 = 0x102;
pub const H3_REQUEST_REJECTED: u64 = 0x10b;
pub const H3_REQUEST_CANCELLED: u64 = 0x10c;
pub const H3_MESSAGE_ERROR: u64 = 0x10e;
