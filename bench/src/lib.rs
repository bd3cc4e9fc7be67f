//! Spooky's test and benchmark tools: an HTTP/3 client ([`client`]), an HTTP/2 test backend
//! ([`backend`]), hostile traffic ([`flood`]), the load generator ([`load`]), the benchmark
//! matrix ([`matrix`]) and the soak run ([`soak`]) with its charts ([`chart`]), used by the
//! integration tests and by the `spooky-bench` command.

pub mod backend;
pub mod chart;
pub mod client;
pub mod flood;
pub mod load;
pub mod matrix;
pub mod pickcost;
pub mod soak;
pub mod sys;
