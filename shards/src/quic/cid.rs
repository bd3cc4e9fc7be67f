//! Server connection IDs.
//!
//! A shard never stores per-handshake state keyed by the client's random destination ID. Instead the
//! server's own connection ID is an HMAC of the client's original destination connection ID: every
//! Initial packet of one handshake maps to the same ID, even when a large (post-quantum) ClientHello
//! spans several Initial packets that arrive before our first reply.
//!
//! The first two bytes of every ID are the owning shard's steering key (its CPU number, big
//! endian), readable by the kernel's reuseport program and by any shard that receives a packet
//! meant for another (see [`crate::net::steering`] and [`crate::net::handoff`]). The next 10
//! bytes are the HMAC, so IDs stay unlinkable and unguessable. The last 4 are a check: an HMAC of
//! the first 12, so a packet whose ID this process never issued (noise, a flood of random
//! short-header packets, another process's connection) is told apart with one HMAC, without a
//! hand-off to another shard and without being mistaken for a connection that closed.

use ring::hmac;

/// Length of every connection ID this server issues.
pub const SERVER_CID_LEN: usize = 16;

/// A server-issued connection ID, fixed size so the connection table key never allocates.
pub type ServerCid = [u8; SERVER_CID_LEN];

/// Bytes at the start of each ID that name the owning shard.
pub const STEERING_KEY_LEN: usize = 2;
/// Bytes at the end of each ID that authenticate the rest.
const CHECK_LEN: usize = 4;
const BODY_LEN: usize = SERVER_CID_LEN - CHECK_LEN;

/// Derives server connection IDs from client original destination IDs.
pub struct CidMinter {
    key: hmac::Key,
    steering_key: u16,
}

impl CidMinter {
    /// `secret` is shared by every shard of the process so that a handshake is recognised whichever
    /// shard sees its packets; `steering_key` names the shard that mints.
    pub fn new(secret: &[u8; 32], steering_key: u16) -> Self {
        CidMinter {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            steering_key,
        }
    }

    /// The steering key the IDs it mints carry.
    pub fn steering_key(&self) -> u16 {
        self.steering_key
    }

    /// The server connection ID for a connection the client opened with `original_dcid`.
    pub fn derive(&self, original_dcid: &[u8]) -> ServerCid {
        self.derive_as(self.steering_key, original_dcid)
    }

    /// The ID the shard with `steering_key` derives for `original_dcid`: lets a shard check the
    /// ID another shard chose in a Retry.
    pub fn derive_as(&self, steering_key: u16, original_dcid: &[u8]) -> ServerCid {
        let tag = hmac::sign(&self.key, original_dcid);
        let mut cid = [0u8; SERVER_CID_LEN];
        cid[..STEERING_KEY_LEN].copy_from_slice(&steering_key.to_be_bytes());
        cid[STEERING_KEY_LEN..BODY_LEN]
            .copy_from_slice(&tag.as_ref()[..BODY_LEN - STEERING_KEY_LEN]);
        let check = self.check(&cid);
        cid[BODY_LEN..].copy_from_slice(&check);
        cid
    }

    fn check(&self, cid: &ServerCid) -> [u8; CHECK_LEN] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(b"check");
        context.update(&cid[..BODY_LEN]);
        let tag = context.sign();
        let mut check = [0u8; CHECK_LEN];
        check.copy_from_slice(&tag.as_ref()[..CHECK_LEN]);
        check
    }

    /// Whether `cid` is an ID some shard of this process issued (whichever shard's key it
    /// carries). A random ID passes with probability 2^-32.
    pub fn is_ours(&self, cid: &ServerCid) -> bool {
        let expected = self.check(cid);
        // Not secret-dependent timing worth hiding: the check only filters noise, and a
        // connection is still found by the full ID in the table.
        expected == cid[BODY_LEN..]
    }
}

impl CidMinter {
    /// A further ID for the connection whose first ID is `primary` (its `seq`-th spare, offered
    /// to the client for migration). It names the same shard.
    pub fn spare(&self, primary: &ServerCid, seq: u64) -> ServerCid {
        let mut input = [0u8; SERVER_CID_LEN + 8];
        input[..SERVER_CID_LEN].copy_from_slice(primary);
        input[SERVER_CID_LEN..].copy_from_slice(&seq.to_be_bytes());
        self.derive(&input)
    }

    /// The stateless reset token that goes with `cid` (RFC 9000 §10.3): derived, so it needs no
    /// storage and cannot be guessed without the secret.
    pub fn reset_token(&self, cid: &ServerCid) -> u128 {
        let tag = hmac::sign(&self.key, &[b"reset".as_slice(), cid].concat());
        let mut token = [0u8; 16];
        token.copy_from_slice(&tag.as_ref()[..16]);
        u128::from_be_bytes(token)
    }
}

/// The steering key carried by a connection ID of ours.
pub fn steering_key(cid: &ServerCid) -> u16 {
    u16::from_be_bytes([cid[0], cid[1]])
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
        let minter = CidMinter::new(&[7; 32], 3);
        assert_eq!(minter.derive(b"abcdefgh"), minter.derive(b"abcdefgh"));
        assert_ne!(minter.derive(b"abcdefgh"), minter.derive(b"abcdefgi"));
    }

    #[test]
    fn ids_carry_the_minting_shards_key() {
        let cid = CidMinter::new(&[7; 32], 0x0102).derive(b"abcdefgh");
        assert_eq!(&cid[..2], &[1, 2]);
        assert_eq!(steering_key(&cid), 0x0102);
        let other = CidMinter::new(&[7; 32], 9).derive(b"abcdefgh");
        assert_eq!(
            cid[2..12],
            other[2..12],
            "the key does not change the MAC part"
        );
    }

    #[test]
    fn different_secrets_give_different_cids() {
        let a = CidMinter::new(&[1; 32], 0).derive(b"abcdefgh");
        let b = CidMinter::new(&[2; 32], 0).derive(b"abcdefgh");
        assert_ne!(a, b);
    }

    #[test]
    fn spares_name_the_same_shard_and_differ() {
        let minter = CidMinter::new(&[7; 32], 5);
        let primary = minter.derive(b"abcdefgh");
        let one = minter.spare(&primary, 1);
        let two = minter.spare(&primary, 2);
        assert_ne!(one, two);
        assert_ne!(one, primary);
        assert_eq!(steering_key(&one), 5);
        assert_ne!(minter.reset_token(&one), minter.reset_token(&two));
    }

    #[test]
    fn our_ids_pass_the_check_and_random_or_altered_ones_do_not() {
        let minter = CidMinter::new(&[7; 32], 5);
        let cid = minter.derive(b"abcdefgh");
        assert!(minter.is_ours(&cid));
        assert!(minter.is_ours(&minter.spare(&cid, 1)));
        assert!(
            CidMinter::new(&[7; 32], 9).is_ours(&cid),
            "every shard of the process recognises the others' IDs"
        );
        assert!(
            !CidMinter::new(&[8; 32], 5).is_ours(&cid),
            "another process"
        );
        for i in 0..SERVER_CID_LEN {
            let mut altered = cid;
            altered[i] ^= 0x40;
            assert!(!minter.is_ours(&altered), "byte {i} altered");
        }
        assert!(!minter.is_ours(&[0x5a; SERVER_CID_LEN]));
    }

    #[test]
    fn only_our_length_is_a_server_cid() {
        assert!(as_server_cid(&[0; 16]).is_some());
        assert!(as_server_cid(&[0; 8]).is_none());
    }
}
