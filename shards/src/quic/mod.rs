//! QUIC termination: connection IDs that name their shard ([`cid`]), the shared configuration
//! ([`config`]), the buffers stream data lives in ([`buffers`]), the sans-IO endpoint that owns
//! the shard's connections ([`endpoint`]), and what guards it from strangers: admission of new
//! connections ([`admission`]) and Retry tokens ([`token`]).
//!
//! Depends only on [`crate::net`] (for the send batch); the application on top (HTTP/3) plugs in
//! through [`endpoint::Session`].

pub mod admission;
pub mod buffers;
pub mod cid;
pub mod config;
pub mod endpoint;
pub mod token;

pub use buffers::QuicConnection;
pub use endpoint::{Destination, Endpoint, Session};
