//! Messages from the coordinator to the shards.
//!
//! The coordinator owns process-wide duties (health checking, signals, reload) and publishes their
//! results to every shard over its own crossbeam channel. Shards poll their channel once per tick
//! and never block on it; nothing a shard does per request waits for the coordinator.

/// One message to one shard.
#[derive(Clone, Debug)]
pub enum ControlMsg {
    /// Close every connection now and stop the shard.
    Shutdown,
    /// Stop taking new connections, send HTTP/3 GOAWAY on every connection, let requests in
    /// flight finish, close each connection once it is idle, and stop when none is left or at
    /// `deadline`, whichever comes first.
    Drain { deadline: std::time::Instant },
    /// A new configuration for new requests and new connections (SIGHUP reload).
    Reload(Box<crate::plan::ProxyPlan>),
    /// New backend health state; applied only if newer than what the shard already has.
    BackendHealth(HealthSnapshot),
}

/// Which backends may receive traffic, by upstream index then backend index, as in the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Strictly increasing per process; lets shards ignore a stale or repeated snapshot.
    pub version: u64,
    pub healthy: Vec<Vec<bool>>,
}

impl HealthSnapshot {
    /// Every backend of every upstream healthy: the state before any health check has run.
    pub fn all_healthy(backends_per_upstream: impl IntoIterator<Item = usize>) -> Self {
        HealthSnapshot {
            version: 0,
            healthy: backends_per_upstream
                .into_iter()
                .map(|n| vec![true; n])
                .collect(),
        }
    }
}
