//! The shard's driver tasks: they own the IO and move the sans-IO layers along.
//!
//! Every path follows one order: feed the endpoint, poll the HTTP/3 events of the connection that
//! changed (collecting its new requests), release the endpoint, start the new requests' tasks,
//! then send. Request tasks are only started with the endpoint released, because the runtime may
//! poll a task as soon as it is spawned.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use futures_lite::future;
use quiche::h3::NameValue;

use super::{Shard, ShardError};
use crate::h3::{H3Stream, Polled, StreamKey};
use crate::http::ClientInfo;
use crate::net::{handoff, udp};
use crate::proxy;
use crate::quic::cid::ServerCid;
use crate::quic::endpoint::MAX_DATAGRAM;
use crate::quic::Destination;
use crate::rt;

/// Receive calls per wake-up before sending (each may carry many coalesced datagrams), so replies
/// are not delayed behind a long burst.
const RECEIVE_BATCH: usize = 64;

pub async fn receive_loop(shard: Rc<Shard>, socket: rt::UdpSocket) -> Result<(), ShardError> {
    // Big enough for a whole GRO batch; datagrams are read with recvmsg to learn the segment
    // size, so the runtime only tells us when the socket is readable (a one-byte peek).
    let mut buf = vec![0u8; udp::MAX_BATCH_BYTES];
    let mut peek = [0u8; 1];
    loop {
        if let Err(e) = socket.peek_from(&mut peek).await {
            log::warn!("udp receive: {e}");
            continue;
        }
        for _ in 0..RECEIVE_BATCH {
            let received = match udp::receive(&shard.socket, &mut buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::debug!("udp receive: {e}");
                    break;
                }
            };
            for datagram in udp::segments(&mut buf[..received.len], received.segment_size) {
                shard.on_datagram(datagram, received.from);
            }
        }
        shard.flush();
    }
}

/// Takes packets other shards of this process received for our connections.
pub async fn inbox_loop(shard: Rc<Shard>, inbox: rt::UdpSocket) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, sender) = match inbox.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                log::warn!("hand-off receive: {e}");
                continue;
            }
        };
        if !shard.inboxes.is_ours(sender) {
            log::debug!("hand-off from {sender}, which is not one of our shards: dropped");
            continue;
        }
        let Some((client, packet)) = handoff::decode(&mut buf[..len]) else {
            continue;
        };
        let destination = shard.conns.endpoint.borrow_mut().recv(packet, client, true);
        // The endpoint counted a drop under its reason; a hand-off is never passed on again.
        match destination {
            Destination::Connection(cid) => shard.drive(cid),
            Destination::Stateless => shard.send_stateless_reply(),
            Destination::Elsewhere(_) | Destination::Dropped => {}
        }
        shard.flush();
    }
}

/// Sends what request tasks wrote, after polling the events of connections whose bodies they
/// read.
pub async fn flusher(shard: Rc<Shard>) {
    loop {
        shard.conns.flush_needed.wait().await;
        // Let every other runnable task queue its writes first, so one flush sends them together.
        rt::yield_now().await;
        let mut repoll = shard.repoll.take();
        shard.conns.take_repoll(&mut repoll);
        for cid in repoll.drain(..) {
            shard.drive(cid);
        }
        shard.repoll.set(repoll);
        shard.flush();
    }
}

pub async fn timers(shard: Rc<Shard>) {
    loop {
        let next = shard.conns.endpoint.borrow_mut().next_timeout();
        match next {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                future::or(rt::sleep(wait), shard.timer_changed.wait()).await;
            }
            None => shard.timer_changed.wait().await,
        }
        let dirty = {
            let mut endpoint = shard.conns.endpoint.borrow_mut();
            endpoint.on_timeout(Instant::now());
            endpoint.has_dirty()
        };
        if dirty {
            shard.flush();
        }
    }
}

impl Shard {
    fn on_datagram(&self, datagram: &mut [u8], from: SocketAddr) {
        let destination = self.conns.endpoint.borrow_mut().recv(datagram, from, false);
        match destination {
            Destination::Connection(cid) => self.drive(cid),
            Destination::Elsewhere(key) => self.hand_off(key, datagram, from),
            Destination::Stateless => self.send_stateless_reply(),
            Destination::Dropped => {}
        }
    }

    /// Sends the endpoint's Version Negotiation or Retry packet.
    fn send_stateless_reply(&self) {
        let mut endpoint = self.conns.endpoint.borrow_mut();
        if let Some((packet, to)) = endpoint.stateless_reply() {
            match self.socket.send_to(packet, to) {
                Ok(n) => {
                    self.stats.datagrams_sent.incr();
                    self.stats.bytes_sent.add(n as u64);
                }
                Err(_) => self.stats.datagrams_send_failed.incr(),
            }
        }
    }

    /// Passes a packet to the shard of this process that owns its connection, if there is one.
    fn hand_off(&self, key: u16, datagram: &[u8], from: SocketAddr) {
        let Some(owner) = self.inboxes.owner(key) else {
            // An ID of this process naming a shard it no longer runs (the cores changed on a
            // restart with the same secret is the only way): nobody can take it.
            self.stats.datagrams_dropped_handoff.incr();
            return;
        };
        let mut buf = self.handoff_buf.borrow_mut();
        let Some(len) = handoff::encode(from, datagram, &mut buf) else {
            return;
        };
        match self.inbox.send_to(&buf[..len], owner) {
            Ok(_) => self.stats.datagrams_handed_off.incr(),
            Err(e) => {
                log::debug!("hand-off to shard with key {key} failed: {e}");
                self.stats.datagrams_dropped_handoff.incr();
            }
        }
    }

    /// Polls the connection's HTTP/3 events, then starts a task for each new request.
    fn drive(&self, cid: ServerCid) {
        let mut requests = self.new_requests.take();
        let (peer, serial) = {
            let mut endpoint = self.conns.endpoint.borrow_mut();
            let Some(conn) = endpoint.get_mut(cid) else {
                self.new_requests.set(requests);
                return;
            };
            let (peer, serial) = (conn.peer, conn.serial);
            if let Some(session) = conn.session.as_mut() {
                let mut discard = self.discard.borrow_mut();
                if let Polled::Failed = session.poll(&mut conn.quic, &mut requests, &mut discard) {
                    requests.clear();
                }
            }
            // A datagram that only brought whole requests owes the client nothing but their
            // ACK, which can travel with the first response instead of in a packet of its own.
            let replies_follow = !requests.is_empty() && requests.iter().all(|r| !r.more_frames);
            if !(replies_follow && endpoint.defer_send(cid, Instant::now())) {
                endpoint.mark_dirty(cid);
            }
            (peer, serial)
        };
        if !requests.is_empty() {
            let upstreams = self.upstreams.borrow().clone();
            let client = ClientInfo { ip: peer.ip() };
            for request in requests.drain(..) {
                let fields = request.fields.iter().map(|h| (h.name(), h.value()));
                let job = proxy::admit(
                    fields,
                    client,
                    request.more_frames,
                    &upstreams,
                    self.shedding_requests(),
                    &self.stats,
                );
                let key = StreamKey {
                    cid,
                    serial,
                    stream_id: request.stream_id,
                };
                let stream = H3Stream::new(self.conns.clone(), key, peer);
                let context = self.proxy.clone();
                rt::spawn_boxed(async move { proxy::serve(&context, stream, job).await });
            }
        }
        self.new_requests.set(requests);
    }

    /// Sends everything the endpoint has to send, in as few system calls as the batch allows.
    pub(super) fn flush(&self) {
        let mut endpoint = self.conns.endpoint.borrow_mut();
        let mut batch = self.batch.borrow_mut();
        while endpoint.poll_transmit(&mut batch) {
            self.send_batch(&mut batch);
        }
        self.send_batch(&mut batch);
        if endpoint.timer_moved() {
            self.timer_changed.notify();
        }
    }

    /// Refused packets are counted and left to QUIC's loss recovery.
    fn send_batch(&self, batch: &mut udp::SendBatch) {
        let packets = batch.packets();
        let bytes = batch.bytes();
        if packets == 0 {
            return;
        }
        match batch.send(&self.socket) {
            Ok(()) => {
                self.stats.datagrams_sent.add(packets as u64);
                self.stats.bytes_sent.add(bytes as u64);
                if packets > 1 {
                    self.stats.gso_sends.incr();
                }
            }
            Err(e) => {
                self.stats.datagrams_send_failed.add(packets as u64);
                log::trace!("send failed: {}", e.0);
            }
        }
    }
}
