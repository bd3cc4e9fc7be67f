//! What the proxy needs from a client's request stream, whatever protocol carries it.
//!
//! HTTP/3 ([`crate::h3::stream`]) and HTTP/2 on the TCP listener ([`crate::h2::stream`]) implement
//! it; another protocol plugs in the same way without touching [`crate::proxy`]. Methods take
//! `&self` because a request's upload and download run concurrently against the same stream.

use std::cell::RefCell;
use std::net::SocketAddr;

use bytes::{Buf, Bytes};
use http::HeaderMap;

use super::request::Malformed;

/// The client stream no longer exists: the client reset it, or its connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamGone;

/// The outcome of a write to the client stream.
pub type Sent = Result<(), StreamGone>;

/// Response chunks shorter than this are copied before a client's stream keeps them (until the
/// client has them); longer ones are kept as they are. A chunk from a backend is
/// a slice of that connection's read buffer, which holds many small responses: kept as a slice,
/// one small response that a client leaves unacknowledged would hold the whole buffer, and
/// stalled clients could pin many times the memory they asked for. A chunk this long pins at
/// most a few times its own size (bulk responses come in DATA frames of 16 KiB and more, up to
/// the 256 KiB the backend pools allow), so keeping it saves the copy at little risk.
const KEEP_CHUNKS_FROM: usize = 8 * 1024;

/// Whether a client's stream may keep `chunk` as it is rather than a copy of it (see
/// [`KEEP_CHUNKS_FROM`]); an empty chunk holds nothing.
pub fn keep_as_is(chunk: &Bytes) -> bool {
    chunk.is_empty() || chunk.len() >= KEEP_CHUNKS_FROM
}

/// `chunk` as a client's stream should keep it: itself, or a copy when it is short.
pub fn to_keep(chunk: Bytes) -> Bytes {
    if keep_as_is(&chunk) {
        chunk
    } else {
        Bytes::copy_from_slice(&chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_chunks_are_copied_and_long_ones_kept_as_they_are() {
        let read_buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let short = read_buffer.slice(..KEEP_CHUNKS_FROM - 1);
        let copied = to_keep(short.clone());
        assert_eq!(copied, short);
        assert_ne!(copied.as_ptr(), short.as_ptr());
        let long = read_buffer.slice(..KEEP_CHUNKS_FROM);
        assert_eq!(to_keep(long.clone()).as_ptr(), long.as_ptr());
    }
}

/// One read from a request body.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyRead {
    Data(usize),
    /// The request is complete; trailers if the client sent any.
    End(Option<HeaderMap>),
}

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    Gone,
    /// The client's trailers are malformed (RFC 9114 §4.1.2).
    Malformed(Malformed),
    /// The body crossed the request's `max_request_body_bytes`.
    TooLarge,
}

impl From<StreamGone> for ReadError {
    fn from(_: StreamGone) -> Self {
        ReadError::Gone
    }
}

/// Why the proxy aborts a client stream, mapped by each protocol to its own error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// Our side (or the backend) failed.
    Internal,
    /// The backend cancelled, or the client's upload stalled.
    Cancelled,
    /// The client's message is malformed (body length mismatch, bad trailers).
    Malformed,
}

/// What is left of a received body chunk that did not fit the reader's buffer; the next read
/// takes it first. Protocols whose libraries hand out whole chunks (`h2`, hyper) need it.
#[derive(Default)]
pub struct Leftover(RefCell<Bytes>);

impl Leftover {
    /// Copies leftover bytes into `buf`, if there are any.
    pub fn take(&self, buf: &mut [u8]) -> Option<usize> {
        let mut unread = self.0.borrow_mut();
        if unread.is_empty() {
            return None;
        }
        let n = unread.len().min(buf.len());
        buf[..n].copy_from_slice(&unread[..n]);
        unread.advance(n);
        Some(n)
    }

    /// Copies what fits of `chunk` into `buf` and keeps the rest.
    pub fn fill(&self, chunk: Bytes, buf: &mut [u8]) -> usize {
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        *self.0.borrow_mut() = chunk.slice(n..);
        n
    }
}

/// The protocol a request arrived in, as metrics and the access log name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    H3,
    H2,
    Http1,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::H3, Protocol::H2, Protocol::Http1];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::H3 => "h3",
            Protocol::H2 => "h2",
            Protocol::Http1 => "http/1.1",
        }
    }
}

#[allow(async_fn_in_trait)] // used generically inside the shard, never as `dyn` or across threads
pub trait Downstream {
    /// The protocol the request arrived in.
    fn protocol(&self) -> Protocol;
    /// The client's address.
    fn peer(&self) -> SocketAddr;
    /// Names the request on its connection, for the access log: the stream ID in HTTP/3.
    fn request_id(&self) -> u64;
    /// Sends the response head; `end` means there is no body.
    async fn send_head(
        &self,
        status: u16,
        headers: &HeaderMap,
        end: bool,
    ) -> Result<(), StreamGone>;
    /// Writes all of `data` to the response body, waiting for flow-control credit as needed.
    /// A long chunk joins the client's stream as it is, a short one as a copy ([`keep_as_is`]).
    async fn write_body(&self, data: Bytes, end: bool) -> Sent;
    /// Sends response trailers, which end the stream.
    async fn send_trailers(&self, trailers: &HeaderMap) -> Sent;
    /// Reads request body bytes into `buf`, waiting for the client when none are buffered.
    async fn read_body(&self, buf: &mut [u8]) -> Result<BodyRead, ReadError>;
    /// Resolves when the client stream is gone.
    async fn gone(&self);
    /// Aborts the stream in both directions.
    fn abort(&self, why: Abort);
}
