//! How large a QUIC datagram may be on the way to one client: the ceiling that path MTU discovery
//! probes up to (DPLPMTUD, RFC 8899, which quiche runs per connection; RFC 9000 §14.3).
//!
//! The ceiling is the MTU of the kernel's route to the client (its interface's MTU, or the route's
//! own `mtu`) less the IP and UDP headers: the most that can leave this host in one unfragmented
//! datagram. A fixed ceiling above it would cost every client on a 1,500-byte path its first
//! probes; one below it would hold loopback and jumbo-frame networks to a fraction of what they
//! carry. Reading it costs a socket, a `connect` and a `getsockopt`, so [`PathCeilings`] keeps the
//! answer per client address for a while.
//!
//! The listening sockets send with "don't fragment" and without the kernel's own path MTU cache
//! ([`set_dont_fragment`]): RFC 9000 §14 forbids IP fragmentation of QUIC datagrams, and a probe the
//! kernel had fragmented would seem to prove a size the path cannot carry.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use socket2::{Domain, Protocol, Socket, Type};

use crate::sys;

/// RFC 9000 §14: the smallest datagram QUIC may assume a path carries.
pub const MIN_CEILING: usize = 1200;
/// quiche builds no ordinary packet above 16,383 bytes (its length must fit a two-byte varint): a
/// larger probe would prove nothing it could use.
pub const MAX_CEILING: usize = 16_383;
/// IPv4 (without options) and UDP headers.
const IPV4_UDP_HEADERS: usize = 20 + 8;
/// IPv6 and UDP headers.
const IPV6_UDP_HEADERS: usize = 40 + 8;
/// Routes rarely change, but an interface's MTU can: a changed one is seen within this long.
const CACHE_LIFETIME: Duration = Duration::from_secs(60);
/// Client addresses remembered at most; the cache is emptied when it fills (it is only a
/// shortcut: a miss costs three system calls).
const CACHE_ENTRIES: usize = 4096;

/// Sets "don't fragment" on `socket` and tells the kernel to ignore its path MTU cache for it
/// (`IP_PMTUDISC_PROBE`): datagrams up to the interface's MTU leave whole, larger ones fail with
/// `EMSGSIZE` instead of being fragmented.
pub fn set_dont_fragment(socket: &UdpSocket) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    if socket.local_addr()?.is_ipv6() {
        sys::set_int_option(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
    } else {
        sys::set_int_option(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    }
}

/// The MTU of the kernel's route to `peer`, read from a UDP socket connected to it (no packet is
/// sent).
pub fn route_mtu(peer: SocketAddr) -> io::Result<usize> {
    let socket = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(Protocol::UDP))?;
    socket.connect(&peer.into())?;
    let (level, name) = match peer {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mtu = sys::get_int_option(socket.as_raw_fd(), level, name)?;
    Ok(usize::try_from(mtu).unwrap_or(0))
}

/// The largest UDP payload a route of `mtu` bytes carries to `peer`, within what QUIC and quiche
/// use.
pub fn payload_ceiling(mtu: usize, peer: SocketAddr) -> usize {
    let headers = if peer.is_ipv6() {
        IPV6_UDP_HEADERS
    } else {
        IPV4_UDP_HEADERS
    };
    mtu.saturating_sub(headers).clamp(MIN_CEILING, MAX_CEILING)
}

/// How a route's MTU is read: [`route_mtu`] in a shard, something fixed in tests.
pub type RouteLookup = fn(SocketAddr) -> io::Result<usize>;

/// Each client address's ceiling, read from its route once a [`CACHE_LIFETIME`].
pub struct PathCeilings {
    lookup: RouteLookup,
    /// `None` for an address whose route could not be read.
    known: AHashMap<IpAddr, Option<usize>>,
    filled_since: Instant,
}

impl PathCeilings {
    pub fn new(lookup: RouteLookup, now: Instant) -> Self {
        PathCeilings {
            lookup,
            known: AHashMap::new(),
            filled_since: now,
        }
    }

    /// The ceiling for `peer`, or `None` when its route cannot be read.
    pub fn ceiling(&mut self, peer: SocketAddr, now: Instant) -> Option<usize> {
        if now.duration_since(self.filled_since) >= CACHE_LIFETIME
            || self.known.len() >= CACHE_ENTRIES
        {
            self.known.clear();
            self.filled_since = now;
        }
        let lookup = self.lookup;
        *self
            .known
            .entry(peer.ip())
            .or_insert_with(|| match lookup(peer) {
                Ok(mtu) => Some(payload_ceiling(mtu, peer)),
                Err(e) => {
                    log::debug!("the route MTU to {peer} cannot be read: {e}");
                    None
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn ceilings_leave_room_for_the_headers_within_quic_and_quiche_limits() {
        let v4: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(payload_ceiling(1500, v4), 1472);
        assert_eq!(payload_ceiling(1500, v6), 1452);
        assert_eq!(payload_ceiling(9000, v4), 8972);
        assert_eq!(payload_ceiling(65_536, v4), MAX_CEILING);
        // A path below QUIC's minimum is not ours to shrink: 1,200 is what QUIC assumes.
        assert_eq!(payload_ceiling(1280, v6), 1232);
        assert_eq!(payload_ceiling(1240, v6), MIN_CEILING);
        assert_eq!(payload_ceiling(0, v4), MIN_CEILING);
    }

    #[test]
    fn loopback_routes_are_read_from_the_kernel() {
        // Loopback's MTU is 65,536 on Linux, so its ceiling is quiche's largest packet.
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mtu = route_mtu(peer).unwrap();
        assert!(mtu >= 1500, "loopback MTU {mtu}");
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_dont_fragment(&socket).unwrap();
        let set = sys::get_int_option(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER);
        assert_eq!(set.unwrap(), libc::IP_PMTUDISC_PROBE);
    }

    thread_local! {
        static LOOKUPS: Cell<usize> = const { Cell::new(0) };
    }

    fn jumbo(_: SocketAddr) -> io::Result<usize> {
        LOOKUPS.with(|n| n.set(n.get() + 1));
        Ok(9000)
    }

    fn unroutable(_: SocketAddr) -> io::Result<usize> {
        LOOKUPS.with(|n| n.set(n.get() + 1));
        Err(io::ErrorKind::NetworkUnreachable.into())
    }

    #[test]
    fn a_route_is_read_once_per_address_until_the_cache_ages() {
        LOOKUPS.with(|n| n.set(0));
        let start = Instant::now();
        let mut ceilings = PathCeilings::new(jumbo, start);
        let a: SocketAddr = "198.51.100.7:50000".parse().unwrap();
        let a_again: SocketAddr = "198.51.100.7:50001".parse().unwrap();
        let b: SocketAddr = "198.51.100.8:50000".parse().unwrap();
        assert_eq!(ceilings.ceiling(a, start), Some(8972));
        assert_eq!(ceilings.ceiling(a_again, start), Some(8972));
        assert_eq!(ceilings.ceiling(b, start), Some(8972));
        assert_eq!(LOOKUPS.with(Cell::get), 2);
        let later = start + CACHE_LIFETIME;
        assert_eq!(ceilings.ceiling(a, later), Some(8972));
        assert_eq!(LOOKUPS.with(Cell::get), 3);

        LOOKUPS.with(|n| n.set(0));
        let mut ceilings = PathCeilings::new(unroutable, start);
        assert_eq!(ceilings.ceiling(a, start), None);
        assert_eq!(ceilings.ceiling(a, start), None);
        assert_eq!(
            LOOKUPS.with(Cell::get),
            1,
            "a failed lookup is remembered too"
        );
    }
}
