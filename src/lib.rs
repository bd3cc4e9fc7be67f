//! The `spooky` process: configuration, the coordinator and shard startup.
//!
//! The data plane itself lives in the `shards` crate; this crate turns an operator's intent
//! (a TOML file, signals) into running shards and keeps them informed.

pub mod coordinator;
pub mod runtime;

pub use runtime::{ProxySettings, RunningProxy, StartError};
