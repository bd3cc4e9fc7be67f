//! Server connection IDs.
//!
//! A shard never stores per-handshake state keyed by the client's random destination ID. Instead the
//! server's own connection ID is an HMAC of the client's original destination connection ID: every
//! Initial packet of one handshake maps to the same ID, even when a large (post-quantum) ClientHello
//! spans several Initial packets that arrive before our first reply.

use ring::hmac;

/// Length of every connection ID this server issues.
pub const SERVER_CID_LEN: usize = 16;

/// A server-issued connection ID, fixed size so the connection table key never allocates.
pub type ServerCid = [u8; SERVER_CID_LEN];

/// Derives server connection IDs from client original destination IDs.
pub struct CidMinter {
    key: hmac::Key,
}

impl CidMinter {
    /// `secret` is shared by every shard of the process so that a handshake is recognised whichever
    /// shard sees its packets.
    pub fn new(secret: &[u8; 32]) -> Self {
        CidMinter {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The server connection ID for a connection the client opened with `original_dcid`.
    pub fn derive(&self, original_dcid: &[u8]) -> ServerCid {
        let tag = hmac::sign(&self.key, original_dcid);
        let mut cid = [0u8; SERVER_CID_LEN];
        cid.copy_from_slice(&tag.as_ref()[..SERVER_CID_LEN]);
        cid
    }
}

/// Reads a received connection ID as one of ours, if it has our length.
pub fn as_server_cid(bytes: &[u8]) -> Option<ServerCid> {
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_original_dcid_gives_same_cid() {
        let minter = CidMinter::new(&[7; 32]);
        assert_eq!(minter.derive(b"abcdefgh"), minter.derive(b"abcdefgh"));
        assert_ne!(minter.derive(b"abcdefgh"), minter.derive(b"abcdefgi"));
    }

    #[test]
    fn different_secrets_give_different_cids() {
        let a = CidMinter::new(&[1; 32]).derive(b"abcdefgh");
        let b = CidMinter::new(&[2; 32]).derive(b"abcdefgh");
        assert_ne!(a, b);
    }

    #[test]
    fn only_our_length_is_a_server_cid() {
        assert!(as_server_cid(&[0; 16]).is_some());
        assert!(as_server_cid(&[0; 8]).is_none());
    }
}
