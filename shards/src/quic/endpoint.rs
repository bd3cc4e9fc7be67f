//! The shard's QUIC endpoint: its connection table, timers and packet output, without IO.
//!
//! Sans-IO in the way `quiche::Connection` is: datagrams go in through [`Endpoint::recv`], packets
//! come out through [`Endpoint::poll_transmit`] into a [`SendBatch`], and time moves through
//! [`Endpoint::next_timeout`] and [`Endpoint::on_timeout`]. The socket stays with the shard's
//! tasks, so everything here (classification, admission, timers, spare IDs, closing) is
//! unit-tested against an in-memory quiche client.
//!
//! Connections are keyed by the server connection ID, which is derived from the client's original
//! destination ID (see [`crate::quic::cid`]), so both Initial packets of a split ClientHello find
//! the same entry, and packets for unknown connections cost a hash lookup and nothing else: no
//! state is created for anything that is not a well-formed Initial of a supported version.
//!
//! New connections pass [`crate::quic::admission`] first: caps on connections and handshakes, a
//! per-source rate, and address validation with Retry ([`crate::quic::token`]), all decided
//! before quiche (and TLS) sees the packet. A handshake has its own deadline, shorter than the
//! idle timeout, after which it is dropped without a reply.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ahash::AHashMap;

use crate::net::path_mtu::{self, PathCeilings};
use crate::net::source_limit::SourceLimiter;
use crate::net::udp::{SendBatch, MAX_BATCH_BYTES};
use crate::plan::{QuicSettings, RetryMode};
use crate::quic::admission::Refusal;
use crate::quic::buffers::QuicConnection;
use crate::quic::cid::{as_server_cid, steering_key, CidMinter, ServerCid, SERVER_CID_LEN};
use crate::quic::token::{TokenCheck, TokenMint, MAX_TOKEN_LEN};
use crate::stats::ShardStats;

/// Largest datagram we accept or build.
pub const MAX_DATAGRAM: usize = 65_535;
// A probe at a route's ceiling must fit one send's buffer, as `max_packet` does.
const _: () = assert!(path_mtu::MAX_CEILING <= MAX_BATCH_BYTES);

/// How long the ACK of a request may wait to travel with the response (see
/// [`Endpoint::defer_send`]). Well under the 25 ms `max_ack_delay` we advertise (quiche's
/// default), which the client's probe timeout allows for (RFC 9000 §13.2.1, RFC 9002 §6.2.1),
/// and longer than a backend on the same network takes to answer.
pub const ACK_COALESCE: Duration = Duration::from_millis(5);
/// Spare connection IDs offered per connection (clients usually accept 1 to 7).
const MAX_SPARE_IDS: usize = 3;
/// RFC 9000 §14.1: a client Initial smaller than this must be dropped.
const MIN_INITIAL_LEN: usize = 1200;
/// QUIC transport error INTERNAL_ERROR (RFC 9000 §20.1).
const INTERNAL_ERROR: u64 = 0x1;

/// The application protocol a connection carries once its handshake allows it (HTTP/3 in the
/// shard; something smaller in tests). The endpoint calls it at the points where transport events
/// matter to the application.
pub trait Session: Sized {
    /// Opens the application on an established (or 0-RTT) connection. `Err` closes it.
    fn open(quic: &mut QuicConnection) -> Result<Self, String>;
    /// Flow-control credit arrived for `stream_id`.
    fn stream_writable(&mut self, stream_id: u64);
    /// The connection is gone: whoever waits on its streams must learn it.
    fn closed(&mut self);
    /// No request is in flight, so a draining endpoint may close the connection.
    fn is_idle(&self) -> bool;
    /// The endpoint stops taking requests: tell the peer (HTTP/3 GOAWAY).
    fn start_drain(&mut self, quic: &mut QuicConnection);
}

/// One QUIC connection and the application session on it.
pub struct Connection<S> {
    pub quic: QuicConnection,
    /// Present once the handshake allows application data.
    pub session: Option<S>,
    /// Distinguishes this connection from a later one that reuses its ID.
    pub serial: u64,
    pub peer: SocketAddr,
    /// Spare IDs offered to the client for migration (keys of `Endpoint::aliases`).
    aliases: Vec<ServerCid>,
    /// Spares issued so far: the sequence for the next one.
    spares_issued: u64,
    /// Earliest deadline this connection has in the timer heap, if any.
    armed: Option<Instant>,
    dirty: bool,
    /// Set by [`Endpoint::recv`] when the datagram found the connection established and with
    /// nothing queued to send: what it calls for may wait for the response (see
    /// [`Endpoint::defer_send`]).
    may_defer: bool,
    /// The connection's reply (an ACK) waits for the response until then, at the latest.
    send_deferred: Option<Instant>,
    handshake_counted: bool,
    /// The client came back with a valid Retry token: its address is proven.
    validated: bool,
    /// When the connection is dropped if its handshake has not completed.
    handshake_deadline: Instant,
    /// The largest datagram quiche may build for this connection: its path MTU discovery probes
    /// up to it, or, without discovery, every packet is at most this.
    ceiling: usize,
    discovering: bool,
}

impl<S> Connection<S> {
    /// Room the next packet may need. Until discovery has settled the path's MTU, quiche may
    /// build a probe as large as the ceiling, and only does when it is given that much room.
    fn send_room(&self) -> usize {
        if self.discovering && self.quic.pmtu().is_none() {
            self.ceiling
        } else {
            self.quic.max_send_udp_payload_size().min(self.ceiling)
        }
    }
}

/// Where a received datagram went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Fed to this connection: its session may have events to poll.
    Connection(ServerCid),
    /// A packet of a connection owned by the shard with this steering key.
    Elsewhere(u16),
    /// Answered statelessly (version negotiation): send [`Endpoint::stateless_reply`].
    Stateless,
    Dropped,
}

pub struct Endpoint<S> {
    config: quiche::Config,
    settings: QuicSettings,
    minter: CidMinter,
    tokens: TokenMint,
    sources: SourceLimiter,
    /// Connections still in their handshake, and those of them with an unvalidated address.
    handshaking: usize,
    unvalidated: usize,
    /// Boxed: a `quiche::Connection` is large, and a table of them inline would keep a flood's
    /// peak allocated (a hash table does not shrink by itself); see [`Endpoint::remove_counted`].
    table: AHashMap<ServerCid, Box<Connection<S>>>,
    /// Spare connection IDs, each to the ID the connection is keyed by.
    aliases: AHashMap<ServerCid, ServerCid>,
    timers: BinaryHeap<Reverse<(Instant, ServerCid)>>,
    /// Set when a deadline earlier than every armed one appears; see [`Endpoint::timer_moved`].
    timer_moved: bool,
    dirty: Vec<ServerCid>,
    local_addr: SocketAddr,
    next_serial: u64,
    /// The steering key this shard's connection IDs carry.
    own_key: u16,
    /// Largest UDP payload quiche may build without path MTU discovery
    /// (`quic.max_udp_payload_size`).
    max_packet: usize,
    /// With discovery, each client's ceiling, from its route.
    ceilings: PathCeilings,
    /// The last stateless reply and its destination.
    stateless: Box<[u8]>,
    stateless_reply: Option<(usize, SocketAddr)>,
    /// Cleared on drain and shutdown: Initials for new connections are then dropped.
    accepting: bool,
    /// Set by the shard's overload manager: Retry every new client, or refuse new connections.
    retry_all: bool,
    refuse_new: bool,
    stats: Arc<ShardStats>,
}

impl<S: Session> Endpoint<S> {
    /// `secret` is the process's: every shard must derive the same connection IDs and accept the
    /// same Retry tokens.
    pub fn new(
        config: quiche::Config,
        secret: &[u8; 32],
        steering_key: u16,
        local_addr: SocketAddr,
        settings: &QuicSettings,
        stats: Arc<ShardStats>,
    ) -> Self {
        let now = Instant::now();
        Endpoint {
            config,
            own_key: steering_key,
            minter: CidMinter::new(secret, steering_key),
            tokens: TokenMint::new(secret, unix_now()),
            sources: SourceLimiter::new(
                settings.new_connection_rate,
                settings.new_connection_burst,
                now,
            ),
            handshaking: 0,
            unvalidated: 0,
            max_packet: settings.max_udp_payload.min(MAX_BATCH_BYTES),
            ceilings: PathCeilings::new(path_mtu::route_mtu, now),
            settings: settings.clone(),
            table: AHashMap::new(),
            aliases: AHashMap::new(),
            timers: BinaryHeap::new(),
            timer_moved: false,
            dirty: Vec::new(),
            local_addr,
            next_serial: 0,
            stateless: vec![0; 2048].into_boxed_slice(),
            stateless_reply: None,
            accepting: true,
            retry_all: false,
            refuse_new: false,
            stats,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Reads routes' MTUs with `lookup` from now on (tests give a fixed one).
    #[cfg(test)]
    pub fn set_route_lookup(&mut self, lookup: path_mtu::RouteLookup) {
        self.ceilings = PathCeilings::new(lookup, Instant::now());
    }

    /// The ceiling for a new connection from `peer`; see [`Connection::ceiling`].
    fn packet_ceiling(&mut self, peer: SocketAddr, now: Instant) -> usize {
        if !self.settings.path_mtu_discovery {
            return self.max_packet;
        }
        self.ceilings.ceiling(peer, now).unwrap_or(self.max_packet)
    }

    /// Replaces the QUIC configuration (certificate, transport settings, admission limits) for
    /// new connections.
    pub fn reconfigure(&mut self, config: quiche::Config, settings: &QuicSettings) {
        self.config = config;
        // One packet must fit one send's buffer (the configuration refuses more).
        self.max_packet = settings.max_udp_payload.min(MAX_BATCH_BYTES);
        if (settings.new_connection_rate, settings.new_connection_burst)
            != (
                self.settings.new_connection_rate,
                self.settings.new_connection_burst,
            )
        {
            self.sources = SourceLimiter::new(
                settings.new_connection_rate,
                settings.new_connection_burst,
                Instant::now(),
            );
        }
        self.settings = settings.clone();
    }

    pub fn get_mut(&mut self, cid: ServerCid) -> Option<&mut Connection<S>> {
        self.table.get_mut(&cid).map(|c| &mut **c)
    }

    /// The connection `cid`, if it is still the one with `serial`.
    pub fn connection(&mut self, cid: ServerCid, serial: u64) -> Option<&mut Connection<S>> {
        self.table
            .get_mut(&cid)
            .map(|c| &mut **c)
            .filter(|c| c.serial == serial)
    }

    /// Finds (or, for a valid Initial, creates) the connection a datagram belongs to, and feeds
    /// the datagram to it. `handed_off` marks a packet another shard passed on, which is never
    /// passed on again.
    pub fn recv(&mut self, datagram: &mut [u8], from: SocketAddr, handed_off: bool) -> Destination {
        if !handed_off {
            self.stats.datagrams_received.incr();
            self.stats.bytes_received.add(datagram.len() as u64);
        }
        let (cid, created) = match self.classify(datagram, from, handed_off) {
            Ok(found) => found,
            Err(destination) => return destination,
        };
        let Some(conn) = self.table.get_mut(&cid) else {
            return Destination::Dropped;
        };
        // Initial and Handshake packets are acknowledged at once (RFC 9000 §13.2.1), and so is
        // anything when a reply is already queued: only a datagram of an established connection
        // with nothing to send yet may wait.
        conn.may_defer = conn.handshake_counted && !conn.dirty;
        if !conn.handshake_counted && !conn.validated {
            self.stats
                .unvalidated_bytes_received
                .add(datagram.len() as u64);
        }
        let info = quiche::RecvInfo {
            from,
            to: self.local_addr,
        };
        if let Err(e) = conn.quic.recv(datagram, info) {
            // quiche has already acted on the error (e.g. closed the connection); we only record it.
            log::debug!("quic recv from {from}: {e}");
        }
        if created && conn.quic.stats().recv == 0 {
            // The Initial that opened the connection did not decrypt: noise shaped like an
            // Initial. Forget it now rather than hold its TLS state until the handshake deadline.
            self.stats.datagrams_dropped_malformed.incr();
            self.forget(cid);
            return Destination::Dropped;
        }
        if created {
            self.stats.connections_accepted.incr();
        }
        if !conn.handshake_counted && conn.quic.is_established() {
            conn.handshake_counted = true;
            self.stats.handshakes_completed.incr();
            self.handshaking -= 1;
            if !conn.validated {
                self.unvalidated -= 1;
            }
            self.stats.handshakes_active.set(self.handshaking as u64);
            self.stats.unvalidated_active.set(self.unvalidated as u64);
        }
        if conn.handshake_counted {
            self.manage_spare_ids(cid);
        }
        let Some(conn) = self.table.get_mut(&cid) else {
            return Destination::Dropped;
        };
        if conn.session.is_none() && (conn.quic.is_established() || conn.quic.is_in_early_data()) {
            match S::open(&mut conn.quic) {
                Ok(session) => conn.session = Some(session),
                Err(e) => {
                    log::debug!("session setup with {from} failed: {e}");
                    let _ = conn
                        .quic
                        .close(false, INTERNAL_ERROR, b"session setup failed");
                }
            }
        }
        while let Some(stream_id) = conn.quic.stream_writable_next() {
            if let Some(session) = conn.session.as_mut() {
                session.stream_writable(stream_id);
            }
        }
        self.mark_dirty(cid);
        Destination::Connection(cid)
    }

    /// The version negotiation packet of the last [`Destination::Stateless`], and where it goes.
    pub fn stateless_reply(&mut self) -> Option<(&[u8], SocketAddr)> {
        let (len, to) = self.stateless_reply.take()?;
        Some((&self.stateless[..len], to))
    }

    fn classify(
        &mut self,
        datagram: &mut [u8],
        from: SocketAddr,
        handed_off: bool,
    ) -> Result<(ServerCid, bool), Destination> {
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
                return Ok((cid, false));
            }
            // Short-header and Handshake packets must carry one of our IDs, and so must an
            // Initial that answers a Retry (its token proves it). Any other Initial or 0-RTT
            // packet may carry the client's own random ID, whose first bytes mean nothing.
            let answers_retry = header.ty == quiche::Type::Initial
                && header.token.as_ref().is_some_and(|t| !t.is_empty());
            let carries_our_id = matches!(header.ty, quiche::Type::Short | quiche::Type::Handshake);
            if carries_our_id && !self.minter.is_ours(&cid) {
                self.stats.datagrams_dropped_foreign_id.incr();
                return Err(Destination::Dropped);
            }
            if carries_our_id || (answers_retry && self.minter.is_ours(&cid)) {
                let key = steering_key(&cid);
                if key != self.own_key && !handed_off {
                    return Err(Destination::Elsewhere(key));
                }
            }
        }
        if header.ty != quiche::Type::Initial {
            // Packets of connections that closed, or 0-RTT for one we never saw.
            self.stats.datagrams_dropped_unknown.incr();
            return Err(Destination::Dropped);
        }
        if !quiche::version_is_supported(header.version) {
            // RFC 9000 §6.1: no Version Negotiation in answer to a datagram under 1,200 bytes,
            // so that it cannot amplify a spoofed sender's traffic.
            if len < MIN_INITIAL_LEN {
                return Err(self.refuse(Refusal::TooSmall));
            }
            return Err(self.negotiate_version(&header, from));
        }
        let derived = self.minter.derive(&header.dcid);
        if self.table.contains_key(&derived) {
            // A later Initial of a handshake we already started (split ClientHello).
            return Ok((derived, false));
        }
        self.admit(&header, len, from).map(|cid| (cid, true))
    }

    /// Decides whether an Initial for no known connection starts one, cheapest check first, and
    /// creates it if so. Nothing before `quiche::accept` touches TLS.
    fn admit(
        &mut self,
        header: &quiche::Header<'_>,
        len: usize,
        from: SocketAddr,
    ) -> Result<ServerCid, Destination> {
        if len < MIN_INITIAL_LEN {
            return Err(self.refuse(Refusal::TooSmall));
        }
        if !self.accepting {
            return Err(self.refuse(Refusal::Draining));
        }
        if self.refuse_new {
            return Err(self.refuse(Refusal::Overload));
        }
        if self.table.len() >= self.settings.max_connections {
            return Err(self.refuse(Refusal::ConnectionLimit));
        }
        let now_unix = unix_now();
        let token = header.token.as_deref().unwrap_or_default();
        let (cid, original_dcid) = match self.tokens.check(token, from.ip(), now_unix) {
            TokenCheck::Valid { original_dcid } => {
                // The Initial must use the ID our Retry gave (whichever shard sent it): the
                // token binds the client's first ID, and that ID determines ours.
                let retry_cid = as_server_cid(&header.dcid)
                    .filter(|cid| *cid == self.minter.derive_as(steering_key(cid), original_dcid));
                let Some(cid) = retry_cid else {
                    return Err(self.refuse(Refusal::InvalidToken));
                };
                (cid, Some(original_dcid.to_vec()))
            }
            TokenCheck::Invalid(e) => {
                log::debug!("Retry token from {from} refused: {e}");
                return Err(self.refuse(Refusal::InvalidToken));
            }
            TokenCheck::Absent => {
                if self.must_retry() {
                    self.stats.unvalidated_bytes_received.add(len as u64);
                    return Err(self.retry(header, from, now_unix));
                }
                (self.minter.derive(&header.dcid), None)
            }
        };
        if self.handshaking >= self.settings.max_handshakes {
            return Err(self.refuse(Refusal::HandshakeLimit));
        }
        // After the token check on purpose: with Retry on, a spoofer cannot spend the bucket of
        // the address it pretends to be.
        let now = Instant::now();
        if !self.sources.allow(from.ip(), now) {
            return Err(self.refuse(Refusal::SourceRate));
        }
        let scid = quiche::ConnectionId::from_ref(&cid);
        let odcid = original_dcid.map(quiche::ConnectionId::from_vec);
        // quiche sizes the connection's path MTU discovery from the configuration when it is
        // created: the ceiling is this connection's alone. (The ClientHello callback then puts
        // the packet size of paths the client may move to back to `max_udp_payload_size`; see
        // `quic::config`.)
        let ceiling = self.packet_ceiling(from, now);
        self.config.set_max_send_udp_payload_size(ceiling);
        match quiche::accept_with_buf_factory(
            &scid,
            odcid.as_ref(),
            self.local_addr,
            from,
            &mut self.config,
        ) {
            Ok(quic) => {
                let validated = odcid.is_some();
                self.stats.connections_active.incr();
                self.handshaking += 1;
                if !validated {
                    self.unvalidated += 1;
                }
                self.publish_handshake_gauges();
                self.next_serial += 1;
                self.table.insert(
                    cid,
                    Box::new(Connection {
                        quic,
                        session: None,
                        serial: self.next_serial,
                        peer: from,
                        aliases: Vec::new(),
                        spares_issued: 0,
                        armed: None,
                        dirty: false,
                        may_defer: false,
                        send_deferred: None,
                        handshake_counted: false,
                        validated,
                        handshake_deadline: now + self.settings.handshake_timeout,
                        ceiling,
                        discovering: self.settings.path_mtu_discovery,
                    }),
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

    /// Applies the overload manager's stage to new connections: `retry_all` asks every new
    /// client for a Retry whatever `quic.retry` says; `refuse_new` drops their Initials.
    pub fn set_shedding(&mut self, retry_all: bool, refuse_new: bool) {
        self.retry_all = retry_all;
        self.refuse_new = refuse_new;
    }

    /// Whether a client without a token must prove its address first.
    fn must_retry(&self) -> bool {
        if self.retry_all {
            return true;
        }
        match self.settings.retry {
            RetryMode::Always => true,
            RetryMode::Auto => self.unvalidated >= self.settings.retry_above,
            RetryMode::Off => false,
        }
    }

    /// Answers an Initial with a Retry carrying a token (RFC 9000 §17.2.5): no state is kept.
    fn retry(&mut self, header: &quiche::Header<'_>, to: SocketAddr, now_unix: u64) -> Destination {
        let mut token = [0u8; MAX_TOKEN_LEN];
        let Some(token_len) = self
            .tokens
            .mint(to.ip(), &header.dcid, now_unix, &mut token)
        else {
            self.stats.datagrams_dropped_malformed.incr();
            return Destination::Dropped;
        };
        let new_scid = self.minter.derive(&header.dcid);
        match quiche::retry(
            &header.scid,
            &header.dcid,
            &quiche::ConnectionId::from_ref(&new_scid),
            &token[..token_len],
            header.version,
            &mut self.stateless,
        ) {
            Ok(n) => {
                self.stats.retries_sent.incr();
                self.stats.unvalidated_bytes_sent.add(n as u64);
                self.stateless_reply = Some((n, to));
                Destination::Stateless
            }
            Err(e) => {
                log::debug!("Retry to {to} failed: {e}");
                self.stats.datagrams_dropped_malformed.incr();
                Destination::Dropped
            }
        }
    }

    fn refuse(&self, refusal: Refusal) -> Destination {
        self.stats.refusals.counter(refusal).incr();
        Destination::Dropped
    }

    fn publish_handshake_gauges(&self) {
        self.stats.handshakes_active.set(self.handshaking as u64);
        self.stats.unvalidated_active.set(self.unvalidated as u64);
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

    fn negotiate_version(&mut self, header: &quiche::Header<'_>, to: SocketAddr) -> Destination {
        match quiche::negotiate_version(&header.scid, &header.dcid, &mut self.stateless) {
            Ok(n) => {
                self.stats.version_negotiations.incr();
                self.stateless_reply = Some((n, to));
                Destination::Stateless
            }
            Err(e) => {
                log::debug!("version negotiation for {to} failed: {e}");
                self.stats.datagrams_dropped_malformed.incr();
                Destination::Dropped
            }
        }
    }

    /// Queues a connection for [`Endpoint::poll_transmit`].
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

    /// Holds back what the last [`Endpoint::recv`] made the connection owe (in practice, the
    /// ACK of a request) until its response is written or [`ACK_COALESCE`] after `now`, so that
    /// one packet carries both: a request then costs one datagram out instead of two. Declined
    /// (returns `false`, the connection stays queued to send) unless that datagram was the only
    /// reason to send, and for a second one while a reply already waits: RFC 9000 §13.2.2 asks
    /// for an ACK at least every second ack-eliciting packet.
    pub fn defer_send(&mut self, cid: ServerCid, now: Instant) -> bool {
        let Some(conn) = self.table.get_mut(&cid) else {
            return false;
        };
        if !conn.may_defer || conn.send_deferred.is_some() || self.dirty.last() != Some(&cid) {
            return false;
        }
        conn.may_defer = false;
        conn.dirty = false;
        self.dirty.pop();
        conn.send_deferred = Some(now + ACK_COALESCE);
        self.arm(cid);
        true
    }

    /// Writes what dirty connections have to send into `batch`, re-arms their timers, and removes
    /// connections that have closed (their sessions learn it). Returns `true` when it stopped
    /// because `batch` must be sent before more fits; call again after sending. Returns `false`
    /// once every dirty connection is drained (the batch may still hold packets to send).
    pub fn poll_transmit(&mut self, batch: &mut SendBatch) -> bool {
        while let Some(&cid) = self.dirty.last() {
            let Some(conn) = self.table.get_mut(&cid) else {
                self.dirty.pop();
                continue;
            };
            let mut send_errors = 0;
            loop {
                let room = conn.send_room();
                if batch.must_send(room) {
                    return true;
                }
                let space = &mut batch.space()[..room];
                match conn.quic.send(space) {
                    Ok((n, info)) => {
                        if !conn.handshake_counted && !conn.validated {
                            self.stats.unvalidated_bytes_sent.add(n as u64);
                        }
                        batch.push(n, info.to)
                    }
                    Err(quiche::Error::Done) => break,
                    Err(e) => {
                        log::debug!("quic send: {e}");
                        send_errors += 1;
                        if send_errors > 1 {
                            break;
                        }
                        // The next send emits CONNECTION_CLOSE.
                        let _ = conn.quic.close(false, INTERNAL_ERROR, b"internal error");
                    }
                }
            }
            self.dirty.pop();
            conn.dirty = false;
            conn.may_defer = false;
            if let Some(deferred) = conn.send_deferred.take() {
                // The reply went out with the response: its timer entry is stale. Forget it so
                // that the connection's next deadline is armed, and if it was the earliest, let
                // the timer task sleep for the next one rather than wake for nothing.
                if conn.armed == Some(deferred) {
                    conn.armed = None;
                    if self.timers.peek() == Some(&Reverse((deferred, cid))) {
                        self.timers.pop();
                        self.timer_moved = true;
                    }
                }
            }
            if conn.quic.is_closed() {
                self.remove(cid);
            } else {
                self.arm(cid);
            }
        }
        false
    }

    fn arm(&mut self, cid: ServerCid) {
        let Some(conn) = self.table.get_mut(&cid) else {
            return;
        };
        let quic_deadline = conn.quic.timeout_instant();
        let deadline = if conn.handshake_counted {
            quic_deadline
        } else {
            Some(quic_deadline.map_or(conn.handshake_deadline, |d| d.min(conn.handshake_deadline)))
        };
        let deadline = match (deadline, conn.send_deferred) {
            (Some(d), Some(deferred)) => Some(d.min(deferred)),
            (d, deferred) => d.or(deferred),
        };
        let Some(deadline) = deadline else {
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
            self.timer_moved = true;
        }
    }

    /// Whether [`Endpoint::next_timeout`] became earlier since the last call: a sleeping timer
    /// task must wake up and sleep again for less.
    pub fn timer_moved(&mut self) -> bool {
        std::mem::take(&mut self.timer_moved)
    }

    /// The earliest armed deadline. Entries left behind by a deferred reply that went out
    /// early are dropped here, so that nobody wakes for them.
    pub fn next_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, cid))) = self.timers.peek() {
            if self.table.get(&cid).is_some_and(|c| c.armed == Some(t)) {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    /// Runs quiche's timeout handling for every connection whose deadline has passed by `now`.
    pub fn on_timeout(&mut self, now: Instant) {
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
            if !conn.handshake_counted && conn.handshake_deadline <= now {
                // Dropped without CONNECTION_CLOSE: the peer may not even own its address.
                log::debug!("handshake with {} timed out", conn.peer);
                self.stats.handshake_timeouts.incr();
                self.remove(cid);
                continue;
            }
            if conn.quic.timeout_instant().is_some_and(|t| t <= now) {
                conn.quic.on_timeout();
                self.mark_dirty(cid);
            } else if conn.send_deferred.is_some_and(|t| t <= now) {
                self.mark_dirty(cid);
            } else {
                self.arm(cid);
            }
        }
    }

    fn remove(&mut self, cid: ServerCid) {
        self.remove_counted(cid, true);
    }

    /// Removes a connection that never got anywhere: it was not counted as accepted, so its end
    /// is not counted as a failed handshake.
    fn forget(&mut self, cid: ServerCid) {
        self.remove_counted(cid, false);
    }

    fn remove_counted(&mut self, cid: ServerCid, counted: bool) {
        let Some(mut conn) = self.table.remove(&cid) else {
            return;
        };
        // After a flood the table would keep its peak capacity: shrink it once it is mostly
        // empty. Halving at a quarter keeps the cost amortised constant per removal.
        if self.table.capacity() > 1024 && self.table.len() < self.table.capacity() / 4 {
            let keep = self.table.len() * 2;
            self.table.shrink_to(keep);
        }
        for alias in &conn.aliases {
            self.aliases.remove(alias);
        }
        self.stats.connections_active.sub(1);
        if !conn.handshake_counted {
            if counted {
                self.stats.handshake_failures.incr();
            }
            self.handshaking -= 1;
            if !conn.validated {
                self.unvalidated -= 1;
            }
            self.publish_handshake_gauges();
        }
        log::debug!(
            "connection from {} closed (peer error {:?}, local error {:?}, timed out {})",
            conn.peer,
            conn.quic.peer_error(),
            conn.quic.local_error(),
            conn.quic.is_timed_out()
        );
        if let Some(session) = conn.session.as_mut() {
            session.closed();
        }
    }

    /// Starts a graceful stop: no new connections, and every session is told to stop taking
    /// requests; connections with none in flight are closed with `code`.
    pub fn start_drain(&mut self, code: u64) {
        self.accepting = false;
        for (cid, conn) in self.table.iter_mut() {
            if let Some(session) = conn.session.as_mut() {
                session.start_drain(&mut conn.quic);
            }
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(*cid);
            }
        }
        self.close_idle(code);
    }

    /// Closes (application close with `code`) every connection with no request in flight.
    pub fn close_idle(&mut self, code: u64) {
        self.close_where(code, |conn| {
            conn.session.as_ref().is_none_or(Session::is_idle) && !conn.quic.is_draining()
        });
    }

    /// Closes every connection (application close with `code`) and stops accepting.
    pub fn close_all(&mut self, code: u64) {
        self.accepting = false;
        self.close_where(code, |_| true);
    }

    fn close_where(&mut self, code: u64, select: impl Fn(&Connection<S>) -> bool) {
        for (cid, conn) in self.table.iter_mut() {
            if !select(conn) {
                continue;
            }
            let _ = conn.quic.close(true, code, b"shutting down");
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(*cid);
            }
        }
    }

    /// Connections still open (including ones finishing their close).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Seconds since the Unix epoch: Retry tokens carry wall-clock expiry, since every shard (and a
/// restarted process with the same secret) must read them alike.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
