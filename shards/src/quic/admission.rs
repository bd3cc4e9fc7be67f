//! Which new QUIC connections a shard takes on, and what it does with the rest, before any TLS
//! work is spent on them.
//!
//! Every check here is arithmetic on counters the endpoint already keeps, or one lookup in a
//! fixed-size table: refusing a connection must cost far less than the sender paid to ask for it.
//! The order of the checks is the endpoint's (see `Endpoint::admit`); this module owns their
//! vocabulary. The per-source rate limit is [`crate::net::source_limit`].

/// Why an Initial did not start a connection. Each is a `reason` of
/// `spooky_datagrams_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Smaller than the 1,200 bytes RFC 9000 §14.1 requires of a client's first datagram.
    TooSmall,
    /// The shard is draining or shutting down.
    Draining,
    /// The shard holds `quic.max_connections` connections.
    ConnectionLimit,
    /// The shard holds `quic.max_handshakes` connections still in their handshake.
    HandshakeLimit,
    /// The client's address (IPv4 /32, IPv6 /64) opened connections faster than its bucket allows.
    SourceRate,
    /// A Retry token of ours that failed its check (forged, expired, other address).
    InvalidToken,
    /// The overload manager refuses new connections.
    Overload,
}
