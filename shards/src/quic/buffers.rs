//! The buffers quiche keeps stream data in. quiche's default copies every stream write into an
//! `Arc<[u8]>` of its own. [`StreamBuf`] can also hold a `Bytes` as it is: a response chunk from
//! a backend (already a `Bytes`, a slice of that connection's read buffer) then joins the
//! stream's send queue through `send_body_zc` with no copy and no allocation. What quiche copies
//! itself (frame headers, control data, small writes) stays an `Arc<[u8]>`: one allocation with
//! its count inside, where a copied `Bytes` would allocate again when quiche first clones it.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

/// quiche's [`quiche::BufFactory`] for [`StreamBuf`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamBuffers;

impl quiche::BufFactory for StreamBuffers {
    type Buf = StreamBuf;
    type DgramBuf = Vec<u8>;

    fn buf_from_slice(buf: &[u8]) -> StreamBuf {
        StreamBuf::copied(buf)
    }

    fn dgram_buf_from_slice(buf: &[u8]) -> Vec<u8> {
        buf.to_vec()
    }
}

/// Stream data in quiche's queues: a copy of its own, or a `Bytes` handed over.
#[derive(Clone, Debug)]
pub enum StreamBuf {
    /// The part `range` of a copy.
    Copied(Arc<[u8]>, Range<usize>),
    /// A chunk taken as it is.
    Kept(Bytes),
}

impl StreamBuf {
    /// A copy of `data` of its own, as quiche makes one.
    pub fn copied(data: &[u8]) -> Self {
        StreamBuf::Copied(Arc::from(data), 0..data.len())
    }
}

impl AsRef<[u8]> for StreamBuf {
    fn as_ref(&self) -> &[u8] {
        match self {
            StreamBuf::Copied(data, range) => &data[range.clone()],
            StreamBuf::Kept(bytes) => bytes,
        }
    }
}

impl quiche::BufSplit for StreamBuf {
    /// Keeps the first `at` bytes and returns the rest; `at` is at most the length (quiche
    /// splits a write where the stream's capacity ends).
    fn split_at(&mut self, at: usize) -> Self {
        match self {
            StreamBuf::Copied(data, range) => {
                let middle = (range.start + at).min(range.end);
                let rest = StreamBuf::Copied(data.clone(), middle..range.end);
                range.end = middle;
                rest
            }
            StreamBuf::Kept(bytes) => StreamBuf::Kept(bytes.split_off(at.min(bytes.len()))),
        }
    }
}

/// A client's QUIC connection, its stream data in [`StreamBuf`]s.
pub type QuicConnection = quiche::Connection<StreamBuffers>;

#[cfg(test)]
mod tests {
    use quiche::BufSplit;

    use super::*;

    #[test]
    fn both_kinds_split_into_the_parts_of_their_bytes() {
        let text = b"stream data in two parts";
        for mut buf in [
            StreamBuf::copied(text),
            StreamBuf::Kept(Bytes::from_static(text)),
        ] {
            let mut rest = buf.split_at(7);
            assert_eq!(buf.as_ref(), b"stream ");
            let last = rest.split_at(8);
            assert_eq!(rest.as_ref(), b"data in ");
            assert_eq!(last.as_ref(), b"two parts");
            let mut whole = last.clone();
            assert!(whole.split_at(9).as_ref().is_empty());
            assert_eq!(whole.as_ref(), b"two parts");
        }
    }

    #[test]
    fn a_kept_chunk_is_not_copied() {
        let chunk = Bytes::from(vec![1u8; 4096]);
        let buf = StreamBuf::Kept(chunk.clone());
        assert_eq!(buf.as_ref().as_ptr(), chunk.as_ptr());
    }
}
