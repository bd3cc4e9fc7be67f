//! The shard watchdog: notices a shard whose event loop stopped turning, and (in the `spooky`
//! binary) ends the process so the service manager restarts it.
//!
//! A shard's event loop once stopped for good after 5.5 minutes of uptime: glommio 0.9 keeps a
//! waker reference per re-poll of a pending datagram operation, the shard's main task re-polled
//! its socket read on every 10 ms tick, and the task's 16-bit reference count overflowed (see
//! `shards::shard::run`, where the read now has its own task). Nothing in the shard reported it:
//! the shard simply stopped taking packets. This watchdog makes any such failure visible and
//! bounded. Every shard bumps a heartbeat on its 10 ms control tick, and this thread checks the
//! heartbeats every 250 ms:
//!
//! - a heartbeat that has not moved for 1 s marks the shard stalled (`spooky_shard_stalled` 1,
//!   `spooky_shard_stalls_total` +1, a warning in the log);
//! - with [`Watchdog::exit_after`] set (the binary sets 10 s), a shard stalled that long is
//!   reported to the main thread ([`crate::signals::report_stall`]), which ends the process with
//!   exit code 70 without waiting for the stalled shard, and systemd's `Restart=on-failure`
//!   starts it again. A shard that was only starved of CPU recovers long before.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use shards::ShardStats;

/// How often heartbeats are read.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long a heartbeat may stand still before the shard counts as stalled.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);
/// Exit status when a stalled shard ends the process (EX_SOFTWARE).
pub const STALL_EXIT_CODE: i32 = 70;

/// What the watchdog concludes about one shard at one check.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Running,
    /// The shard just crossed [`STALLED_AFTER`].
    Stalled,
    /// Still stalled (already reported).
    StillStalled,
    /// Stalled for longer than the exit limit.
    Exit,
}

/// Follows one shard's heartbeat across checks. Plain data: the decisions are unit-tested.
#[derive(Debug, Default)]
pub struct StallTracker {
    last_beat: u64,
    still_for: Duration,
}

impl StallTracker {
    /// Records the heartbeat read at a check `CHECK_EVERY` after the previous one.
    pub fn observe(&mut self, beat: u64, exit_after: Option<Duration>) -> Verdict {
        if beat != self.last_beat {
            self.last_beat = beat;
            self.still_for = Duration::ZERO;
            return Verdict::Running;
        }
        let before = self.still_for;
        self.still_for += CHECK_EVERY;
        if exit_after.is_some_and(|limit| self.still_for >= limit) {
            Verdict::Exit
        } else if before < STALLED_AFTER && self.still_for >= STALLED_AFTER {
            Verdict::Stalled
        } else if self.still_for >= STALLED_AFTER {
            Verdict::StillStalled
        } else {
            Verdict::Running
        }
    }
}

/// The running watchdog; stops when dropped.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    /// Milliseconds a shard may stay stalled before the process exits; 0 for never.
    exit_after_ms: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(shards: Vec<Arc<ShardStats>>) -> io::Result<Watchdog> {
        let stop = Arc::new(AtomicBool::new(false));
        let exit_after_ms = Arc::new(AtomicU64::new(0));
        let (stopping, exit_limit) = (stop.clone(), exit_after_ms.clone());
        let thread = std::thread::Builder::new()
            .name("spooky-watchdog".into())
            .spawn(move || watch(&shards, &stopping, &exit_limit))?;
        Ok(Watchdog {
            stop,
            exit_after_ms,
            thread: Some(thread),
        })
    }

    /// Ends the process when a shard stays stalled for `limit`.
    pub fn exit_after(&self, limit: Duration) {
        self.exit_after_ms
            .store(limit.as_millis().max(1) as u64, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn watch(shards: &[Arc<ShardStats>], stop: &AtomicBool, exit_after_ms: &AtomicU64) {
    let mut trackers: Vec<StallTracker> = shards
        .iter()
        .map(|s| StallTracker {
            last_beat: s.heartbeat.get(),
            still_for: Duration::ZERO,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(CHECK_EVERY);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let exit_after = match exit_after_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        for (index, (stats, tracker)) in shards.iter().zip(&mut trackers).enumerate() {
            if stats.running.get() != 1 {
                continue;
            }
            match tracker.observe(stats.heartbeat.get(), exit_after) {
                Verdict::Running => stats.stalled.set(0),
                Verdict::Stalled => {
                    stats.stalled.set(1);
                    stats.stalls.incr();
                    log::warn!(
                        "shard {index} (thread {}) has not run its 10 ms tick for {} s",
                        stats.thread_id.get(),
                        STALLED_AFTER.as_secs()
                    );
                }
                Verdict::StillStalled => {}
                Verdict::Exit => {
                    log::error!(
                        "shard {index} has been stalled for {} s and does not recover (see \
                         docs/operations.md, 'A shard stops answering'); exiting so that the \
                         service manager restarts spooky",
                        exit_after.map_or(0, |d| d.as_secs())
                    );
                    if let Err(e) = crate::signals::report_stall() {
                        log::error!("cannot tell the main thread about the stall: {e}");
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(
        tracker: &mut StallTracker,
        beat: u64,
        n: usize,
        exit: Option<Duration>,
    ) -> Vec<Verdict> {
        (0..n).map(|_| tracker.observe(beat, exit)).collect()
    }

    #[test]
    fn a_moving_heartbeat_is_running() {
        let mut t = StallTracker::default();
        for beat in 1..100 {
            assert_eq!(
                t.observe(beat, Some(Duration::from_secs(10))),
                Verdict::Running
            );
        }
    }

    #[test]
    fn a_still_heartbeat_is_reported_once_then_exits_at_the_limit() {
        let mut t = StallTracker::default();
        t.observe(5, None);
        let verdicts = checks(&mut t, 5, 8, Some(Duration::from_secs(2)));
        // 250 ms checks: stalled at 1 s (4th check), exit at 2 s (8th).
        assert_eq!(
            verdicts[..3],
            [Verdict::Running, Verdict::Running, Verdict::Running]
        );
        assert_eq!(verdicts[3], Verdict::Stalled);
        assert_eq!(
            verdicts[4..7],
            [
                Verdict::StillStalled,
                Verdict::StillStalled,
                Verdict::StillStalled
            ]
        );
        assert_eq!(verdicts[7], Verdict::Exit);
    }

    #[test]
    fn recovery_resets_and_no_limit_never_exits() {
        let mut t = StallTracker::default();
        t.observe(1, None);
        assert!(checks(&mut t, 1, 40, None)
            .iter()
            .all(|v| *v != Verdict::Exit));
        assert_eq!(t.observe(2, None), Verdict::Running);
        assert_eq!(
            checks(&mut t, 2, 4, None)[3],
            Verdict::Stalled,
            "a new episode is reported"
        );
    }
}
