//! Hand-off of packets that reached the wrong shard of this process.
//!
//! With kernel steering ([`super::steering`]) packets land on their connection's shard. Without
//! it (no `CAP_BPF`, no bpffs, or steering turned off) the kernel hashes the 4-tuple, which sends
//! a client whose address changed (migration, NAT rebinding) to an arbitrary shard. The receiving
//! shard reads the owner from the connection ID's steering key and passes the datagram on.
//!
//! Each shard has an inbox: a UDP socket on loopback. A hand-off is one datagram to the owner's
//! inbox, sent from the forwarder's own inbox, carrying the client's address and the packet. The
//! kernel queues it and wakes the owner; no memory is shared and no lock is taken. The owner only
//! accepts hand-offs whose source is one of the process's inboxes (spoofing a loopback source
//! address needs raw-socket privileges). Hand-offs are never handed on again.
//!
//! A packet for a connection of another process (the port is shared by several) cannot be
//! handed off; it is dropped and counted.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;

/// Encoded size of the client address ahead of the packet: family, 16 address bytes, port.
const HEADER_LEN: usize = 1 + 16 + 2;

/// The inbox addresses of every shard of the process, by steering key.
#[derive(Clone, Debug, Default)]
pub struct Inboxes {
    by_key: Arc<[(u16, SocketAddr)]>,
}

impl Inboxes {
    pub fn new(entries: Vec<(u16, SocketAddr)>) -> Self {
        Inboxes {
            by_key: entries.into(),
        }
    }

    /// The inbox of the shard with steering key `key`, if it is one of ours.
    pub fn owner(&self, key: u16) -> Option<SocketAddr> {
        self.by_key.iter().find(|(k, _)| *k == key).map(|(_, a)| *a)
    }

    /// Whether `addr` is one of our inboxes (the only accepted senders of hand-offs).
    pub fn is_ours(&self, addr: SocketAddr) -> bool {
        self.by_key.iter().any(|(_, a)| *a == addr)
    }
}

/// Binds one inbox per shard on loopback.
pub fn bind_inboxes(count: usize) -> io::Result<Vec<UdpSocket>> {
    (0..count)
        .map(|_| {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .collect()
}

/// Writes a hand-off of `packet` from `client` into `out`; returns its length.
pub fn encode(client: SocketAddr, packet: &[u8], out: &mut [u8]) -> Option<usize> {
    let total = HEADER_LEN + packet.len();
    if out.len() < total {
        return None;
    }
    match client.ip() {
        IpAddr::V4(ip) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&ip.octets());
            out[5..17].fill(0);
        }
        IpAddr::V6(ip) => {
            out[0] = 6;
            out[1..17].copy_from_slice(&ip.octets());
        }
    }
    out[17..19].copy_from_slice(&client.port().to_be_bytes());
    out[HEADER_LEN..total].copy_from_slice(packet);
    Some(total)
}

/// Reads a hand-off: the client's address and the packet.
pub fn decode(message: &mut [u8]) -> Option<(SocketAddr, &mut [u8])> {
    if message.len() <= HEADER_LEN {
        return None;
    }
    let ip = match message[0] {
        4 => IpAddr::V4(Ipv4Addr::new(
            message[1], message[2], message[3], message[4],
        )),
        6 => {
            let octets: [u8; 16] = message[1..17].try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    let port = u16::from_be_bytes([message[17], message[18]]);
    Some((SocketAddr::new(ip, port), &mut message[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_address_and_packet() {
        for client in ["192.0.2.7:4433", "[2001:db8::5]:65000"] {
            let client: SocketAddr = client.parse().unwrap();
            let mut out = [0u8; 64];
            let n = encode(client, b"quic packet", &mut out).unwrap();
            let (from, packet) = decode(&mut out[..n]).unwrap();
            assert_eq!(from, client);
            assert_eq!(packet, b"quic packet");
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode(&mut [9u8; 40]).is_none(), "unknown family");
        assert!(decode(&mut [4u8; 10]).is_none(), "too short");
        let mut small = [0u8; 8];
        assert!(encode("192.0.2.7:1".parse().unwrap(), b"x", &mut small).is_none());
    }

    #[test]
    fn owners_by_key() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let inboxes = Inboxes::new(vec![(3, a), (5, b)]);
        assert_eq!(inboxes.owner(5), Some(b));
        assert_eq!(inboxes.owner(4), None);
        assert!(inboxes.is_ours(a));
        assert!(!inboxes.is_ours("127.0.0.1:1002".parse().unwrap()));
    }
}

/// Generated inputs for hand-off decoding: `scripts/fuzz.sh` runs every `fuzz_` test for longer.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fuzz_decode_never_panics_and_round_trips(
            mut message in proptest::collection::vec(any::<u8>(), 0..200),
            packet in proptest::collection::vec(any::<u8>(), 1..200),
            port in any::<u16>(),
            v6 in any::<[u8; 16]>(),
        ) {
            let _ = decode(&mut message);
            let from = SocketAddr::new(IpAddr::from(v6), port);
            let mut buf = vec![0u8; 1024];
            let n = encode(from, &packet, &mut buf).unwrap();
            let (client, decoded) = decode(&mut buf[..n]).unwrap();
            prop_assert_eq!(client, from);
            prop_assert_eq!(&decoded[..], &packet[..]);
        }
    }
}
