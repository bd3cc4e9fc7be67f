//! Address-validation tokens for QUIC Retry (RFC 9000 §8.1.2).
//!
//! A Retry costs the server one small packet and no state: the client must come back with the
//! token it carried, which proves it receives packets at the address it claims. The token is
//! stateless and authenticated: an HMAC-SHA256 tag over the client's IP address, the original
//! destination connection ID and an expiry, under a key only this process knows. Nothing is
//! stored per token, so a flood of spoofed Initials costs one HMAC and one 100-byte reply each.
//!
//! Keys rotate every [`KEY_PERIOD_SECS`]: each is derived from the process secret and the period
//! number, so every shard computes the same key without talking to the others, and a token minted
//! just before a rotation still validates after it (the previous period's key is accepted).
//! Tokens live [`RETRY_TOKEN_LIFETIME_SECS`]: a Retry is answered within one round trip, and a
//! short life bounds how long a captured token can be replayed (and a replay from another address
//! fails the address check anyway).
//!
//! Layout (all integers big endian):
//! `format (1) | period (1) | expiry (8) | odcid length (1) | odcid (0-20) | tag (16)`.

use std::net::IpAddr;

use ring::hmac;

/// The first byte of every Retry token we mint: a token with another first byte is not ours
/// (a NEW_TOKEN token from some other server, say) and is treated as no token at all.
const FORMAT_RETRY: u8 = 0x52;
/// How long a Retry token is accepted after it was minted.
pub const RETRY_TOKEN_LIFETIME_SECS: u64 = 10;
/// How often the token key changes.
pub const KEY_PERIOD_SECS: u64 = 3_600;
/// Longest connection ID QUIC v1 allows (RFC 9000 §17.2).
const MAX_CID_LEN: usize = 20;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 1 + 8 + 1;
/// Longest token we mint: room for it is reserved in the Retry packet buffer.
pub const MAX_TOKEN_LEN: usize = HEADER_LEN + MAX_CID_LEN + TAG_LEN;

/// Why a token that claims to be ours was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is truncated or malformed")]
    Malformed,
    #[error("token has expired")]
    Expired,
    #[error("token was minted under a key that is no longer accepted")]
    UnknownKey,
    #[error("token does not authenticate (forged, or issued to another address)")]
    BadTag,
}

/// What checking an Initial's token found.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenCheck<'t> {
    /// No token, or one we did not mint: the address is not validated.
    Absent,
    /// Our token, valid for this address: the connection ID the client first sent.
    Valid { original_dcid: &'t [u8] },
    /// Our token, refused.
    Invalid(TokenError),
}

/// Mints and checks Retry tokens; one per shard, all built from the same process secret.
pub struct TokenMint {
    master: hmac::Key,
    /// Keys of the current and the previous period, recomputed when the period changes.
    current: (u64, hmac::Key),
    previous: (u64, hmac::Key),
}

impl TokenMint {
    pub fn new(secret: &[u8; 32], now_unix: u64) -> Self {
        let master = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let period = now_unix / KEY_PERIOD_SECS;
        let current = (period, period_key(&master, period));
        let previous_period = period.wrapping_sub(1);
        let previous = (previous_period, period_key(&master, previous_period));
        TokenMint {
            master,
            current,
            previous,
        }
    }

    fn rotate_to(&mut self, now_unix: u64) {
        let period = now_unix / KEY_PERIOD_SECS;
        if period == self.current.0 {
            return;
        }
        let previous_period = period.wrapping_sub(1);
        let previous = if previous_period == self.current.0 {
            std::mem::replace(
                &mut self.current,
                (period, period_key(&self.master, period)),
            )
        } else {
            self.current = (period, period_key(&self.master, period));
            (previous_period, period_key(&self.master, previous_period))
        };
        self.previous = previous;
    }

    /// Writes a token for a client at `client` whose first Initial carried `original_dcid` into
    /// `out`, returning its length (`None` when the ID is longer than QUIC allows).
    pub fn mint(
        &mut self,
        client: IpAddr,
        original_dcid: &[u8],
        now_unix: u64,
        out: &mut [u8; MAX_TOKEN_LEN],
    ) -> Option<usize> {
        if original_dcid.len() > MAX_CID_LEN {
            return None;
        }
        self.rotate_to(now_unix);
        let expiry = now_unix + RETRY_TOKEN_LIFETIME_SECS;
        out[0] = FORMAT_RETRY;
        out[1] = self.current.0 as u8;
        out[2..10].copy_from_slice(&expiry.to_be_bytes());
        out[10] = original_dcid.len() as u8;
        let body_len = HEADER_LEN + original_dcid.len();
        out[HEADER_LEN..body_len].copy_from_slice(original_dcid);
        let tag = sign(&self.current.1, &out[..body_len], client);
        out[body_len..body_len + TAG_LEN].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        Some(body_len + TAG_LEN)
    }

    /// Checks the token an Initial from `client` carried.
    pub fn check<'t>(&mut self, token: &'t [u8], client: IpAddr, now_unix: u64) -> TokenCheck<'t> {
        if token.first() != Some(&FORMAT_RETRY) {
            return TokenCheck::Absent;
        }
        match self.verify(token, client, now_unix) {
            Ok(original_dcid) => TokenCheck::Valid { original_dcid },
            Err(e) => TokenCheck::Invalid(e),
        }
    }

    fn verify<'t>(
        &mut self,
        token: &'t [u8],
        client: IpAddr,
        now_unix: u64,
    ) -> Result<&'t [u8], TokenError> {
        if token.len() < HEADER_LEN + TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let cid_len = token[10] as usize;
        if cid_len > MAX_CID_LEN || token.len() != HEADER_LEN + cid_len + TAG_LEN {
            return Err(TokenError::Malformed);
        }
        self.rotate_to(now_unix);
        let key = if token[1] == self.current.0 as u8 {
            &self.current.1
        } else if token[1] == self.previous.0 as u8 {
            &self.previous.1
        } else {
            return Err(TokenError::UnknownKey);
        };
        let body_len = HEADER_LEN + cid_len;
        let (body, tag) = token.split_at(body_len);
        let expected = sign(key, body, client);
        // ring's `verify` compares in constant time, but needs the full tag; ours is truncated,
        // so compare the prefix without early exit.
        let difference = expected.as_ref()[..TAG_LEN]
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference != 0 {
            return Err(TokenError::BadTag);
        }
        // Checked after the tag, so that a forged expiry is reported as a forgery.
        let expiry = u64::from_be_bytes(body[2..10].try_into().expect("8 bytes"));
        if now_unix > expiry {
            return Err(TokenError::Expired);
        }
        Ok(&body[HEADER_LEN..])
    }
}

fn period_key(master: &hmac::Key, period: u64) -> hmac::Key {
    let mut label = [0u8; 19];
    label[..11].copy_from_slice(b"retry-token");
    label[11..].copy_from_slice(&period.to_be_bytes());
    let derived = hmac::sign(master, &label);
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

/// The tag over a token body and the client address. IPv4 addresses are signed in their
/// IPv6-mapped form, so a dual-stack socket that reports either form validates the same token.
fn sign(key: &hmac::Key, body: &[u8], client: IpAddr) -> hmac::Tag {
    let address = match client {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut context = hmac::Context::with_key(key);
    context.update(body);
    context.update(&address);
    context.sign()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [9; 32];
    const NOW: u64 = 1_800_000_000;

    fn client() -> IpAddr {
        "198.51.100.7".parse().unwrap()
    }

    fn minted(mint: &mut TokenMint, dcid: &[u8], now: u64) -> Vec<u8> {
        let mut out = [0u8; MAX_TOKEN_LEN];
        let n = mint.mint(client(), dcid, now, &mut out).unwrap();
        out[..n].to_vec()
    }

    #[test]
    fn a_fresh_token_validates_for_its_address_and_returns_the_original_id() {
        let mut mint = TokenMint::new(&SECRET, NOW);
        let token = minted(&mut mint, b"original-dcid", NOW);
        assert_eq!(
            mint.check(&token, client(), NOW + 1),
            TokenCheck::Valid {
                original_dcid: b"original-dcid"
            }
        );
    }

    #[test]
    fn another_address_is_refused() {
        let mut mint = TokenMint::new(&SECRET, NOW);
        let token = minted(&mut mint, b"odcid", NOW);
        let other: IpAddr = "198.51.100.8".parse().unwrap();
        assert_eq!(
            mint.check(&token, other, NOW),
            TokenCheck::Invalid(TokenError::BadTag)
        );
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert!(matches!(
            mint.check(&token, mapped, NOW),
            TokenCheck::Valid { .. }
        ));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let mut mint = TokenMint::new(&SECRET, NOW);
        let token = minted(&mut mint, b"odcid", NOW);
        let late = NOW + RETRY_TOKEN_LIFETIME_SECS + 1;
        assert_eq!(
            mint.check(&token, client(), late),
            TokenCheck::Invalid(TokenError::Expired)
        );
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let mut mint = TokenMint::new(&SECRET, NOW);
        let token = minted(&mut mint, b"odcid", NOW);
        for i in 1..token.len() {
            let mut forged = token.clone();
            forged[i] ^= 0x01;
            assert!(
                matches!(mint.check(&forged, client(), NOW), TokenCheck::Invalid(_)),
                "byte {i} changed and the token still validated"
            );
        }
    }

    #[test]
    fn another_processes_secret_is_refused() {
        let mut ours = TokenMint::new(&SECRET, NOW);
        let mut theirs = TokenMint::new(&[1; 32], NOW);
        let token = minted(&mut theirs, b"odcid", NOW);
        assert_eq!(
            ours.check(&token, client(), NOW),
            TokenCheck::Invalid(TokenError::BadTag)
        );
    }

    #[test]
    fn a_rotation_keeps_the_previous_key_and_drops_older_ones() {
        let edge = (NOW / KEY_PERIOD_SECS + 1) * KEY_PERIOD_SECS;
        let mut mint = TokenMint::new(&SECRET, edge - 2);
        let token = minted(&mut mint, b"odcid", edge - 2);
        // Rotated by the check itself: the token from the previous period still validates.
        assert!(matches!(
            mint.check(&token, client(), edge + 1),
            TokenCheck::Valid { .. }
        ));
        // Two periods on, its key is gone (and it expired long ago).
        assert_eq!(
            mint.check(&token, client(), edge + 2 * KEY_PERIOD_SECS),
            TokenCheck::Invalid(TokenError::UnknownKey)
        );
    }

    #[test]
    fn shards_with_the_same_secret_accept_each_others_tokens() {
        let mut one = TokenMint::new(&SECRET, NOW);
        let mut two = TokenMint::new(&SECRET, NOW);
        let token = minted(&mut one, b"odcid", NOW);
        assert!(matches!(
            two.check(&token, client(), NOW),
            TokenCheck::Valid { .. }
        ));
    }

    #[test]
    fn foreign_and_malformed_tokens() {
        let mut mint = TokenMint::new(&SECRET, NOW);
        assert_eq!(mint.check(b"", client(), NOW), TokenCheck::Absent);
        assert_eq!(
            mint.check(b"\x01some other server", client(), NOW),
            TokenCheck::Absent
        );
        assert_eq!(
            mint.check(&[FORMAT_RETRY, 0, 1], client(), NOW),
            TokenCheck::Invalid(TokenError::Malformed)
        );
        let mut long = minted(&mut mint, b"odcid", NOW);
        long.push(0);
        assert_eq!(
            mint.check(&long, client(), NOW),
            TokenCheck::Invalid(TokenError::Malformed)
        );
        let mut out = [0u8; MAX_TOKEN_LEN];
        assert_eq!(mint.mint(client(), &[0; 21], NOW, &mut out), None);
    }
}

/// Generated inputs for the token check: `scripts/fuzz.sh` runs every `fuzz_` test for longer.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fuzz_token_check_refuses_what_it_did_not_mint(
            token in proptest::collection::vec(any::<u8>(), 0..80),
            v4 in any::<[u8; 4]>(),
            now in 0u64..u64::MAX / 2,
        ) {
            let mut mint = TokenMint::new(&[3; 32], now);
            let client = IpAddr::from(v4);
            // Arbitrary bytes never validate (a 2^-128 forgery aside) and never panic.
            let checked = mint.check(&token, client, now);
            let valid = matches!(checked, TokenCheck::Valid { .. });
            prop_assert!(!valid);
        }

        #[test]
        fn fuzz_token_round_trip_and_any_flip_is_refused(
            odcid in proptest::collection::vec(any::<u8>(), 0..=20),
            v4 in any::<[u8; 4]>(),
            now in 0u64..u64::MAX / 2,
            flip in any::<prop::sample::Index>(),
        ) {
            let mut mint = TokenMint::new(&[3; 32], now);
            let client = IpAddr::from(v4);
            let mut out = [0u8; MAX_TOKEN_LEN];
            let n = mint.mint(client, &odcid, now, &mut out).unwrap();
            prop_assert_eq!(
                mint.check(&out[..n], client, now),
                TokenCheck::Valid { original_dcid: &odcid[..] }
            );
            let mut forged = out[..n].to_vec();
            let at = 1 + flip.index(n - 1);
            forged[at] ^= 0x01;
            let refused = matches!(mint.check(&forged, client, now), TokenCheck::Invalid(_));
            prop_assert!(refused);
        }
    }
}
