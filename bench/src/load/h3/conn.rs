//! One load-generator connection and its requests: body pushing and packet output.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use super::Recorder;

/// Packets one connection may send per loop turn.
const MAX_PACKETS_PER_FLUSH: usize = 256;

pub(super) struct Request {
    pub(super) due: Instant,
    pub(super) body_left: u64,
    pub(super) body_offset: u64,
    pub(super) received: u64,
    pub(super) expected: Option<u64>,
    pub(super) status: u16,
}

pub(super) struct Conn {
    pub(super) socket: UdpSocket,
    pub(super) local: SocketAddr,
    pub(super) quic: quiche::Connection,
    pub(super) h3: Option<quiche::h3::Connection>,
    pub(super) requests: HashMap<u64, Request>,
    pub(super) opened: Instant,
    pub(super) established: bool,
    pub(super) last_ping: Instant,
}

/// Offers the next part of a request body to quiche, as much as flow control takes.
pub(super) fn push_body(conn: &mut Conn, stream_id: u64, body: &[u8], recorder: &mut Recorder) {
    let Some(h3) = conn.h3.as_mut() else {
        return;
    };
    let Some(request) = conn.requests.get_mut(&stream_id) else {
        return;
    };
    while request.body_left > 0 {
        // Pattern bytes repeat every 251; start the chunk where the body's pattern is.
        let start = (request.body_offset % 251) as usize;
        let len = (request.body_left as usize).min(body.len() - start);
        let fin = len as u64 == request.body_left;
        match h3.send_body(&mut conn.quic, stream_id, &body[start..start + len], fin) {
            Ok(n) if n > 0 => {
                request.body_left -= n as u64;
                request.body_offset += n as u64;
                recorder.sent(n);
            }
            _ => break,
        }
    }
}

pub(super) fn flush(conn: &mut Conn, out: &mut [u8]) {
    // Bounded: a connection that keeps producing (or produces empty) packets must not hold the
    // loop; whatever is left goes out on the next turn.
    for _ in 0..MAX_PACKETS_PER_FLUSH {
        match conn.quic.send(out) {
            Ok((n, info)) if n > 0 => {
                if conn.socket.send_to(&out[..n], info.to).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
}

pub(super) fn parse(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}
