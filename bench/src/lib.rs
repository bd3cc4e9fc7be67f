//! Spooky's test and benchmark tools: an HTTP/3 client ([`client`]) and an HTTP/2 test backend
//! ([`backend`]), used by the integration tests and by the `spooky-bench` command.

pub mod backend;
pub mod client;
pub mod pickcost;
