//! The shard's side of the control plane: health snapshots, reload, drain and shutdown, applied
//! once per tick from the coordinator's channel, which the shard never blocks on.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use quiche::h3::WireErrorCode;

use super::overload::{process_rss_bytes, Reading, Stage};
use super::{Shard, ShardError};
use crate::control::ControlMsg;
use crate::plan::ProxyPlan;
use crate::quic::config::quic_config;
use crate::rt;
use crate::upstream::Upstreams;

/// How often a shard looks at its control channel.
pub const CONTROL_TICK: Duration = Duration::from_millis(10);

/// How many ticks pass between sweeps for idle TCP connections: about a second.
const IDLE_SWEEP_TICKS: u32 = 100;

/// How many ticks pass between looks at the shard's load: 100 ms, quick enough to catch a
/// surge and rare enough that reading the process's memory costs nothing measurable.
const OVERLOAD_TICKS: u32 = 10;

/// The application close code when connections end because the shard stops (RFC 9114 §8.1).
const CLOSE_CODE: u64 = WireErrorCode::NoError as u64;

pub async fn control_loop(
    shard: Rc<Shard>,
    control: Receiver<ControlMsg>,
) -> Result<(), ShardError> {
    let mut drain_deadline: Option<Instant> = None;
    let mut ticks_to_sweep = IDLE_SWEEP_TICKS;
    let mut ticks_to_overload = OVERLOAD_TICKS;
    loop {
        rt::sleep(CONTROL_TICK).await;
        shard.stats.heartbeat.incr();
        ticks_to_overload -= 1;
        if ticks_to_overload == 0 {
            ticks_to_overload = OVERLOAD_TICKS;
            shard.check_overload();
        }
        ticks_to_sweep -= 1;
        if ticks_to_sweep == 0 {
            ticks_to_sweep = IDLE_SWEEP_TICKS;
            // QUIC's idle timeout is the transport's own (RFC 9000 §10.1); TCP connections get
            // the same one from here.
            shard
                .tcp
                .close_idle(Instant::now(), shard.quic_settings.idle_timeout);
        }
        loop {
            match control.try_recv() {
                Ok(ControlMsg::BackendHealth(snapshot)) => {
                    shard.upstreams.borrow().apply_health(&snapshot);
                }
                Ok(ControlMsg::Reload(plan)) => shard.reload(&plan),
                Ok(ControlMsg::Drain { deadline }) => {
                    log::info!("draining: no new connections, GOAWAY sent, TCP listener closed");
                    drain_deadline = Some(deadline);
                    shard.conns.endpoint.borrow_mut().start_drain(CLOSE_CODE);
                    shard.tcp.start_drain();
                    shard.flush();
                }
                Ok(ControlMsg::Shutdown) | Err(TryRecvError::Disconnected) => {
                    shard.conns.endpoint.borrow_mut().close_all(CLOSE_CODE);
                    shard.flush();
                    return Ok(());
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if let Some(deadline) = drain_deadline {
            shard.conns.endpoint.borrow_mut().close_idle(CLOSE_CODE);
            shard.flush();
            let open = shard.conns.endpoint.borrow().len() + shard.tcp.len();
            if open == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                log::warn!("drain timeout: closing {open} connection(s) with requests in flight");
                shard.conns.endpoint.borrow_mut().close_all(CLOSE_CODE);
                shard.tcp.close_all();
                shard.flush();
                // Let the TCP connections' tasks run once, so that they close their sockets.
                rt::yield_now().await;
                return Ok(());
            }
        }
    }
}

impl Shard {
    /// Reads the shard's load and moves to the overload stage it calls for.
    fn check_overload(&self) {
        let mut manager = self.overload.borrow_mut();
        if !manager.is_enabled() && self.overload_stage.get() == Stage::Normal {
            return;
        }
        let reading = Reading {
            connections: (self.conns.endpoint.borrow().len() + self.tcp.len()) as u64,
            requests: self.stats.streams_active.get(),
            rss_bytes: if manager.needs_memory() {
                process_rss_bytes()
            } else {
                0
            },
        };
        let Some(stage) = manager.update(&reading) else {
            return;
        };
        self.overload_stage.set(stage);
        self.stats.overload_stage.set(stage.level());
        self.conns
            .endpoint
            .borrow_mut()
            .set_shedding(stage >= Stage::RetryAll, stage >= Stage::RefuseConnections);
        let pressure = manager.pressure(&reading);
        log::warn!(
            "shard {}: overload stage {} ({}) at {:.0}% of the nearest mark: {} connections, {} requests in flight, {} MB resident",
            self.index,
            stage.level(),
            stage.name(),
            pressure * 100.0,
            reading.connections,
            reading.requests,
            reading.rss_bytes >> 20,
        );
    }

    /// Applies a new plan: routes, pools and balancing for new requests, and the TLS
    /// certificate and transport settings for new connections. Open connections and requests in
    /// flight are untouched.
    fn reload(&self, plan: &ProxyPlan) {
        match quic_config(plan) {
            Ok(config) => self
                .conns
                .endpoint
                .borrow_mut()
                .reconfigure(config, &plan.quic),
            Err(e) => {
                // The coordinator validated the files a moment ago; keep serving with the old
                // certificate rather than fail new handshakes.
                log::error!(
                    "shard {}: reload kept the old TLS settings: {e}",
                    self.index
                );
            }
        }
        match crate::tls::tcp_server_config(&plan.tls, &plan.sni) {
            Ok(config) => *self.tcp_tls.borrow_mut() = config,
            Err(e) => log::error!(
                "shard {}: reload kept the old TLS settings for TCP: {e}",
                self.index
            ),
        }
        self.proxy.access_log.set(plan.access_log);
        let port = self.socket.local_addr().map_or(0, |addr| addr.port());
        *self.alt_svc.borrow_mut() = super::alt_svc(port, plan);
        self.overload.borrow_mut().set_marks(plan.overload);
        let previous = self.upstreams.borrow().clone();
        let next = Upstreams::new(plan, self.index, &self.stats, Some(&previous));
        *self.upstreams.borrow_mut() = Rc::new(next);
        log::info!("shard {}: configuration reloaded", self.index);
    }
}
