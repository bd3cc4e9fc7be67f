//! The UDP listening sockets, one per shard, all bound to the same address with `SO_REUSEPORT`.
//!
//! Sockets are created (with socket2) and bound by the process before any shard starts, so a bind
//! failure stops startup with a clear error and a listen port of 0 resolves to one port that every
//! shard then shares. Each shard later adopts its socket's file descriptor inside its own executor.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::net::path_mtu;

/// Kernel buffer size asked for on every socket; bursts of a few thousand datagrams fit. The kernel
/// caps it at `net.core.{r,w}mem_max` (see `deploy/sysctl.d/99-spooky.conf`).
const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Binds `count` UDP sockets to `addr` with `SO_REUSEPORT`. When `addr` has port 0 the first socket
/// picks a free port and the others bind that same port.
pub fn bind_reuseport_group(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    let mut sockets: Vec<UdpSocket> = Vec::with_capacity(count);
    let mut bind_to = addr;
    for _ in 0..count {
        let socket = bind_one(bind_to)?;
        bind_to = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Holds `addr`'s TCP port for this process: a bound, not listening, `SO_REUSEPORT` socket, so the
/// shards' TCP listeners can bind beside it while no other program takes the port. A port of 0
/// chosen by the kernel for UDP may already be in use on TCP; the caller then picks another.
pub fn reserve_tcp(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// How many kernel-chosen ports to try before giving up on one free for both UDP and TCP.
const PORT_ATTEMPTS: usize = 32;

/// [`bind_reuseport_group`], plus the TCP reservation of the same port ([`reserve_tcp`]).
pub fn bind_udp_and_tcp(addr: SocketAddr, count: usize) -> io::Result<(Vec<UdpSocket>, Socket)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let sockets = bind_reuseport_group(addr, count)?;
        let resolved = sockets[0].local_addr()?;
        match reserve_tcp(resolved) {
            Ok(tcp) => return Ok((sockets, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && attempt < PORT_ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}

fn bind_one(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    if addr.is_ipv6() {
        // One family per listener keeps address handling predictable: "::" means IPv6 only.
        socket.set_only_v6(true)?;
    }
    // A smaller buffer than asked for still works, only with more drops under bursts.
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        log::warn!("could not set SO_RCVBUF on {addr}: {e}");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        log::warn!("could not set SO_SNDBUF on {addr}: {e}");
    }
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    // Without it the kernel may fragment a datagram that exceeds a path MTU it learned from ICMP,
    // which QUIC forbids (see `path_mtu`).
    if let Err(e) = path_mtu::set_dont_fragment(&socket) {
        log::warn!("could not set IP_MTU_DISCOVER on {addr}: {e}");
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_shares_one_resolved_port() {
        let sockets = bind_reuseport_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = sockets[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for socket in &sockets {
            assert_eq!(socket.local_addr().unwrap().port(), port);
        }
    }
}
