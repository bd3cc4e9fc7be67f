//! The coordinator: process-wide duties, published to shards, never on the request path.
//!
//! It holds one crossbeam sender per shard. Whatever must reach every shard (backend health,
//! shutdown) is sent to each shard's own channel; a shard picks messages up at its next control
//! tick ([`shards::shard::CONTROL_TICK`]) and applies them to its own copy of the state.

use crossbeam_channel::Sender;
use shards::{ControlMsg, HealthSnapshot};

use crate::admin::SharedView;

pub struct Coordinator {
    shards: Vec<Sender<ControlMsg>>,
    health_version: u64,
    /// What the admin endpoint shows; kept in step with what shards were told.
    view: SharedView,
}

impl Coordinator {
    pub fn new(shards: Vec<Sender<ControlMsg>>, view: SharedView) -> Self {
        Coordinator {
            shards,
            health_version: 0,
            view,
        }
    }

    /// Publishes a new health view to every shard, with the next version number.
    pub fn publish_health(&mut self, healthy: Vec<Vec<bool>>) {
        self.health_version += 1;
        if let Ok(mut view) = self.view.lock() {
            view.healthy = healthy.clone();
        }
        let snapshot = HealthSnapshot {
            version: self.health_version,
            healthy,
        };
        self.broadcast(ControlMsg::BackendHealth(snapshot));
    }

    /// Sends a new plan to every shard, then a health snapshot shaped for it (every backend
    /// healthy until health checks say otherwise). Shards apply both in order at their next tick.
    pub fn publish_plan(&mut self, plan: &shards::plan::ProxyPlan) {
        if let Ok(mut view) = self.view.lock() {
            view.plan = plan.clone();
            view.config_generation += 1;
        }
        self.broadcast(ControlMsg::Reload(Box::new(plan.clone())));
        self.publish_health(
            plan.upstreams
                .iter()
                .map(|u| vec![true; u.backends.len()])
                .collect(),
        );
    }

    /// Tells every shard to stop gracefully: GOAWAY, finish requests in flight, stop by `deadline`.
    pub fn drain(&self, deadline: std::time::Instant) {
        self.broadcast(ControlMsg::Drain { deadline });
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
