//! Batched UDP input and output for a shard's socket: generic receive offload (GRO) on the way
//! in and generic segmentation offload (GSO, `UDP_SEGMENT`) on the way out.
//!
//! One system call then moves up to 64 KB of QUIC packets instead of one 1.3 KB packet, which is
//! where most of a QUIC server's CPU goes. Both are optional: a kernel or device that refuses
//! them is detected (setsockopt failure, or `EIO` on the first segmented send) and the shard
//! carries on one datagram per call. All buffers are owned by the shard and reused; nothing here
//! allocates per packet.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use crate::sys;

/// The kernel's limit on segments per GSO send (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Largest UDP payload one send may carry (65535 minus IPv6 and UDP headers, rounded down).
pub const MAX_BATCH_BYTES: usize = 65_000;

/// Asks the kernel to coalesce received datagrams of one flow. Returns whether it agreed.
pub fn enable_gro(socket: &UdpSocket) -> bool {
    sys::set_int_option(socket.as_raw_fd(), sys::SOL_UDP, sys::UDP_GRO, 1).is_ok()
}

/// Whether the kernel accepts `UDP_SEGMENT` on this socket at all (a first check; the device may
/// still refuse at send time).
pub fn gso_supported(socket: &UdpSocket) -> bool {
    sys::set_int_option(socket.as_raw_fd(), sys::SOL_UDP, sys::UDP_SEGMENT, 0).is_ok()
}

/// What one receive call returned.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// Size of each coalesced datagram; equal to `len` when nothing was coalesced. The last
    /// datagram may be shorter.
    pub segment_size: usize,
}

/// The datagrams inside one received buffer, in order.
pub fn segments(buf: &mut [u8], segment_size: usize) -> impl Iterator<Item = &mut [u8]> {
    buf.chunks_mut(segment_size.max(1))
}

/// Receives one (possibly coalesced) datagram without blocking.
pub fn receive(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let (len, from, segment) = sys::recv_gro(socket.as_raw_fd(), buf)?;
    Ok(Received {
        len,
        from,
        segment_size: segment.unwrap_or(len),
    })
}

/// Packets waiting to leave as one segmented send: same destination, same size except the last.
///
/// Filled without IO ([`SendBatch::space`], then [`SendBatch::push`]) by the QUIC endpoint, and
/// emptied by [`SendBatch::send`] (the shard's socket) or [`SendBatch::drain`] (unit tests).
pub struct SendBatch {
    buf: Box<[u8]>,
    len: usize,
    segment_size: usize,
    count: usize,
    to: Option<SocketAddr>,
    /// A packet written after the batch that could not join it: it starts the next batch.
    held: Option<(usize, SocketAddr)>,
    /// Cleared when the kernel or device refuses a segmented send.
    pub gso: bool,
}

impl SendBatch {
    pub fn new(gso: bool) -> Self {
        SendBatch {
            buf: vec![0; MAX_BATCH_BYTES].into_boxed_slice(),
            len: 0,
            segment_size: 0,
            count: 0,
            to: None,
            held: None,
            gso,
        }
    }

    /// Space for the next packet; quiche writes into it, then [`SendBatch::push`] places it.
    /// Only valid while [`SendBatch::must_send`] is false.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Places the `n`-byte packet for `to` just written at [`SendBatch::space`]: it joins the
    /// batch, or is held to start the next one (then the batch must be sent first).
    pub fn push(&mut self, n: usize, to: SocketAddr) {
        if self.joins(n, to) {
            self.commit(n, to);
        } else {
            self.held = Some((n, to));
        }
    }

    /// Whether the batch must be sent before another packet of up to `max_packet` bytes can be
    /// written: a packet is held, or no further packet could join.
    pub fn must_send(&self, max_packet: usize) -> bool {
        self.held.is_some() || !self.has_room(max_packet)
    }

    /// Only the last segment of a segmented send may be shorter than the others, and all go to
    /// one destination.
    fn joins(&self, n: usize, to: SocketAddr) -> bool {
        self.count == 0
            || (self.gso
                && self.to == Some(to)
                && self.count < MAX_SEGMENTS
                && n <= self.segment_size
                && !self.is_closed())
    }

    fn commit(&mut self, n: usize, to: SocketAddr) {
        if self.count == 0 {
            self.segment_size = n;
            self.to = Some(to);
        }
        self.len += n;
        self.count += 1;
    }

    fn has_room(&self, max_packet: usize) -> bool {
        self.count == 0
            || (self.gso
                && !self.is_closed()
                && self.count < MAX_SEGMENTS
                && self.buf.len() - self.len >= max_packet)
    }

    /// Whether the last packet added was shorter than the others (the batch is then closed).
    fn is_closed(&self) -> bool {
        self.count > 0 && self.len != self.count * self.segment_size
    }

    /// Packets in the batch (not counting a held one).
    pub fn packets(&self) -> usize {
        self.count
    }

    pub fn bytes(&self) -> usize {
        self.len
    }

    /// Sends the batch and empties it; a held packet starts the next one. On error the batch's
    /// packets are lost; QUIC's loss recovery resends their frames.
    pub fn send(&mut self, socket: &UdpSocket) -> Result<(), SendError> {
        let result = match self.to {
            None => Ok(()),
            Some(to) if self.count > 1 => {
                match sys::send_segmented(
                    socket.as_raw_fd(),
                    &self.buf[..self.len],
                    self.segment_size,
                    to,
                ) {
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) => {
                        // The device cannot segment: send these one by one, and never batch
                        // again.
                        log::warn!("UDP GSO refused ({e}); sending one datagram per call");
                        self.gso = false;
                        self.send_each(socket, to)
                    }
                    other => other.map_err(SendError::from),
                }
            }
            Some(to) => socket
                .send_to(&self.buf[..self.len], to)
                .map(|_| ())
                .map_err(SendError::from),
        };
        self.restart();
        result
    }

    /// Hands every packet of the batch to `deliver` and empties it, as [`SendBatch::send`] would
    /// put them on the wire. For driving an endpoint without a socket.
    pub fn drain(&mut self, mut deliver: impl FnMut(&[u8], SocketAddr)) {
        if let Some(to) = self.to {
            for packet in self.buf[..self.len].chunks(self.segment_size) {
                deliver(packet, to);
            }
        }
        self.restart();
    }

    fn restart(&mut self) {
        let held = self.held.take();
        let len = self.len;
        self.len = 0;
        self.count = 0;
        self.to = None;
        if let Some((n, to)) = held {
            self.buf.copy_within(len..len + n, 0);
            self.commit(n, to);
        }
    }

    fn send_each(&self, socket: &UdpSocket, to: SocketAddr) -> Result<(), SendError> {
        for packet in self.buf[..self.len].chunks(self.segment_size) {
            socket.send_to(packet, to)?;
        }
        Ok(())
    }
}

/// A send that did not reach the kernel.
#[derive(Debug)]
pub struct SendError(pub io::Error);

impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        SendError(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        (a, b)
    }

    fn fill(batch: &mut SendBatch, sizes: &[usize], to: SocketAddr) {
        for (i, &n) in sizes.iter().enumerate() {
            assert!(!batch.must_send(n));
            batch.space()[..n].fill(i as u8);
            batch.push(n, to);
            assert_eq!(batch.packets(), i + 1, "packet {i} did not join");
        }
    }

    #[test]
    fn a_short_packet_closes_the_batch() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut batch = SendBatch::new(true);
        fill(&mut batch, &[1200, 1200, 500], to);
        assert!(batch.must_send(100));
        let other: SocketAddr = "127.0.0.1:10".parse().unwrap();
        let mut batch = SendBatch::new(true);
        fill(&mut batch, &[1200], to);
        batch.push(1200, other);
        assert!(batch.must_send(1200), "one destination per batch");
        let mut batch = SendBatch::new(true);
        fill(&mut batch, &[1200], to);
        batch.push(1300, to);
        assert!(batch.must_send(1200), "no segment larger than the first");
        let mut plain = SendBatch::new(false);
        fill(&mut plain, &[1200], to);
        assert!(
            plain.must_send(1200),
            "without GSO every packet leaves alone"
        );
    }

    #[test]
    fn a_packet_that_cannot_join_starts_the_next_batch() {
        let (a, b) = pair();
        let to = b.local_addr().unwrap();
        let elsewhere = a.local_addr().unwrap();
        let mut batch = SendBatch::new(true);
        fill(&mut batch, &[100, 100], to);
        batch.space()[..50].fill(7);
        batch.push(50, elsewhere);
        assert!(batch.must_send(50));
        batch.send(&a).unwrap();
        assert_eq!((batch.packets(), batch.bytes()), (1, 50));
        let mut drained = Vec::new();
        batch.drain(|packet, to| drained.push((packet.to_vec(), to)));
        assert_eq!(drained, vec![(vec![7u8; 50], elsewhere)]);
        assert_eq!(batch.packets(), 0);
        let mut buf = [0u8; 200];
        assert_eq!(b.recv(&mut buf).unwrap(), 100);
    }

    #[test]
    fn segmented_send_arrives_as_separate_datagrams() {
        let (a, b) = pair();
        let to = b.local_addr().unwrap();
        let mut batch = SendBatch::new(gso_supported(&a));
        fill(&mut batch, &[1000, 1000, 1000, 300], to);
        batch.send(&a).unwrap();
        // Without GRO on `b`, the kernel delivers each segment as its own datagram.
        let mut buf = [0u8; 2000];
        for (i, expected) in [1000, 1000, 1000, 300].into_iter().enumerate() {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(n, expected);
            assert!(buf[..n].iter().all(|&x| x == i as u8));
        }
    }

    #[test]
    fn gro_receive_reports_segments() {
        let (a, b) = pair();
        let gro = enable_gro(&b);
        let to = b.local_addr().unwrap();
        let mut batch = SendBatch::new(gso_supported(&a));
        fill(&mut batch, &[1000, 1000, 400], to);
        batch.send(&a).unwrap();
        let mut buf = vec![0u8; MAX_BATCH_BYTES];
        let mut seen = Vec::new();
        while seen.len() < 3 {
            b.set_nonblocking(false).unwrap();
            // Block for the first arrival, then read what is queued.
            let mut peek = [0u8; 1];
            let _ = b.peek(&mut peek);
            let got = receive(&b, &mut buf).unwrap();
            assert_eq!(got.from, a.local_addr().unwrap());
            for segment in segments(&mut buf[..got.len], got.segment_size) {
                seen.push((segment.len(), segment[0]));
            }
        }
        assert_eq!(
            seen,
            vec![(1000, 0), (1000, 1), (400, 2)],
            "gro enabled: {gro}"
        );
    }
}
