//! The coordinator: process-wide duties, published to shards, never on the request path.
//!
//! It holds one crossbeam sender per shard. Whatever must reach every shard (configuration,
//! backend health, drain and shutdown) is sent to each shard's own channel; a shard picks
//! messages up at its next control tick ([`shards::shard::CONTROL_TICK`]) and applies them to its
//! own copy of the state. The coordinator is shared by the signal-handling thread and the health
//! checker behind a mutex; that lock is never taken by a shard.

use crossbeam_channel::Sender;
use shards::plan::ProxyPlan;
use shards::{ControlMsg, HealthSnapshot};

use crate::admin::SharedView;

pub struct Coordinator {
    shards: Vec<Sender<ControlMsg>>,
    health_version: u64,
    /// Configuration generation: 1 at start, +1 per applied reload.
    generation: u64,
    /// Current health, by upstream then backend, as last published.
    healthy: Vec<Vec<bool>>,
    /// What the admin endpoint shows; kept in step with what shards were told.
    view: SharedView,
}

impl Coordinator {
    /// A coordinator for shards that already run `plan`.
    pub fn new(shards: Vec<Sender<ControlMsg>>, view: SharedView, plan: &ProxyPlan) -> Self {
        let mut coordinator = Coordinator {
            shards,
            health_version: 0,
            generation: 1,
            healthy: Vec::new(),
            view,
        };
        coordinator.publish_health(all_healthy(plan));
        coordinator
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a health check result that changed a backend's state, and publishes it. Reports
    /// from a checker of an older configuration generation are ignored.
    pub fn set_backend_health(
        &mut self,
        generation: u64,
        upstream: usize,
        backend: usize,
        healthy: bool,
    ) {
        if generation != self.generation {
            return;
        }
        let Some(slot) = self
            .healthy
            .get_mut(upstream)
            .and_then(|u| u.get_mut(backend))
        else {
            return;
        };
        if *slot == healthy {
            return;
        }
        *slot = healthy;
        // Named as the configuration names them (the plan the view holds is the current one,
        // since reports of older generations were dropped above).
        let names = self.view.lock().ok().and_then(|view| {
            let pool = view.plan.upstreams.get(upstream)?;
            Some((pool.name.clone(), pool.backends.get(backend)?.id.clone()))
        });
        let (pool, id) = names.unwrap_or_else(|| (upstream.to_string(), backend.to_string()));
        log::warn!(
            "backend {id} of upstream {pool} is now {}",
            if healthy { "healthy" } else { "unhealthy" }
        );
        self.publish_health(self.healthy.clone());
    }

    /// Publishes a health view to every shard, with the next version number.
    fn publish_health(&mut self, healthy: Vec<Vec<bool>>) {
        self.health_version += 1;
        self.healthy = healthy.clone();
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
    /// healthy until its checks say otherwise). Shards apply both, in order, at their next tick.
    /// Returns the new configuration generation.
    pub fn publish_plan(&mut self, plan: &ProxyPlan) -> u64 {
        self.generation += 1;
        if let Ok(mut view) = self.view.lock() {
            view.plan = plan.clone();
            view.config_generation = self.generation;
        }
        self.broadcast(ControlMsg::Reload(Box::new(plan.clone())));
        self.publish_health(all_healthy(plan));
        self.generation
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

fn all_healthy(plan: &ProxyPlan) -> Vec<Vec<bool>> {
    plan.upstreams
        .iter()
        .map(|u| vec![true; u.backends.len()])
        .collect()
}
