//! Spooky's per-core data plane.
//!
//! A shard terminates QUIC and HTTP/3 on its own socket and forwards each request over its own
//! pooled HTTP/2 connections. Protocol rules that can be checked without IO (header translation,
//! routing, backend selection, connection ID derivation) live in small sans-IO modules with their
//! own unit tests; the IO-driving modules (`connections`, `streams`, `forward`, `pool`, `shard`)
//! are exercised end to end by the workspace's integration tests.

pub mod affinity;
pub mod balancer;
pub mod cid;
pub mod connections;
pub mod control;
pub mod forward;
pub mod handoff;
pub mod headers;
mod notify;
pub mod outlier;
pub mod plan;
pub mod pool;
pub mod router;
pub mod shard;
pub mod socket;
pub mod stats;
pub mod steering;
mod streams;
pub mod udp;
pub mod upstreams;

pub use control::{ControlMsg, HealthSnapshot};
pub use shard::{spawn, ShardError, ShardSpec, ShardThread};
pub use stats::ShardStats;
