//! QUIC termination: connection IDs that name their shard ([`cid`]), the shared configuration
//! ([`config`]) and the sans-IO endpoint that owns the shard's connections ([`endpoint`]).
//!
//! Depends only on [`crate::net`] (for the send batch); the application on top (HTTP/3) plugs in
//! through [`endpoint::Session`].

pub mod cid;
pub mod config;
pub mod endpoint;

pub use endpoint::{Destination, Endpoint, Session};
