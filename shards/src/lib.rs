//! Spooky's per-core data plane.
//!
//! A shard terminates QUIC and HTTP/3 on its own socket and forwards each request over its own
//! pooled backend connections. The folders follow the request path, and dependencies run one
//! way, down it:
//!
//! ```text
//! shard ─▶ proxy ─▶ { h3, h2, h1, http, upstream, balance } ─▶ quic ─▶ net
//! ```
//!
//! - [`net`]: UDP with GRO/GSO, the `SO_REUSEPORT` group, kernel steering, hand-off between shards;
//! - [`quic`]: connection IDs and the sans-IO endpoint (connection table, timers, spare IDs);
//! - [`h3`]: the HTTP/3 session of each connection and the request streams on it;
//! - [`h2`] and [`h1`]: HTTP/2 and HTTP/1.1 request streams from the TCP+TLS listener;
//! - [`http`]: protocol-neutral request and response translation, and the
//!   [`http::Downstream`] seam every client protocol implements;
//! - [`proxy`]: one request's life (admit, route, select, attempt, retry, relay, log);
//! - [`balance`]: backend selection and passive health;
//! - [`upstream`]: routes, retry budgets, and backend connections behind the
//!   [`upstream::connector::Connector`] seam;
//! - [`shard`]: the executor and the tasks that drive all of the above.
//!
//! [`rt`] is the only module that names the runtime (glommio), [`sys`] the only one with system
//! calls (and `unsafe`). Nothing imports [`shard`].

pub mod balance;
pub mod control;
pub mod h1;
pub mod h2;
pub mod h3;
pub mod http;
pub mod net;
pub mod plan;
pub mod procfs;
pub mod proxy;
pub mod quic;
pub mod rt;
pub mod shard;
pub mod stats;
pub mod sys;
pub mod tls;
pub mod upstream;

pub use control::{ControlMsg, HealthSnapshot};
pub use shard::{spawn, ShardError, ShardSpec, ShardThread};
pub use stats::ShardStats;
