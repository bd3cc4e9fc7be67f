//! The `spooky` process: configuration, the coordinator and shard startup.
//!
//! The data plane itself lives in the `shards` crate; this crate turns an operator's intent
//! (a TOML file, signals) into running shards and keeps them informed.

pub mod admin;
pub mod config;
pub mod coordinator;
pub mod cpulist;
pub mod demo;
mod demo_backend;
pub mod dns;
pub mod health;
pub mod metrics;
pub mod runtime;
pub mod selfsigned;
pub mod signals;
pub mod watchdog;

pub use runtime::{ProxySettings, RunningProxy, StartError};
