//! The coordinator: process-wide duties, published to shards, never on the request path.
//!
//! It holds one crossbeam sender per shard. Whatever must reach every shard (backend health,
//! shutdown) is sent to each shard's own channel; a shard picks messages up at its next control
//! tick ([`shards::shard::CONTROL_TICK`]) and applies them to its own copy of the state.

use crossbeam_channel::Sender;
use shards::{ControlMsg, HealthSnapshot};

pub struct Coordinator {
    shards: Vec<Sender<ControlMsg>>,
    health_version: u64,
}

impl Coordinator {
    pub fn new(shards: Vec<Sender<ControlMsg>>) -> Self {
        Coordinator {
            shards,
            health_version: 0,
        }
    }

    /// Publishes a new health view to every shard, with the next version number.
    pub fn publish_health(&mut self, healthy: Vec<Vec<bool>>) {
        self.health_version += 1;
        let snapshot = HealthSnapshot {
            version: self.health_version,
            healthy,
        };
        self.broadcast(ControlMsg::BackendHealth(snapshot));
    }

    /// Tells every shard to close its connections and stop.
    pub fn shutdown(&self) {
        self.broadcast(ControlMsg::Shutdown);
    }

    fn broadcast(&self, msg: ControlMsg) {
        for shard in &self.shards {
            // A shard that already stopped has dropped its receiver; nothing is lost.
            let _ = shard.send(msg.clone());
        }
    }
}
