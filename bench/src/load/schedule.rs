//! When requests are due. In open loop (`--rate`) requests are due at fixed intervals whether or
//! not earlier ones finished, and each keeps its due time as the start of its latency: a target
//! that stalls is charged for every request it delayed, which closed-loop tools hide
//! ("coordinated omission"). In closed loop a request is due as soon as a stream is free.

use std::time::{Duration, Instant};

/// Due times at a constant rate from `start`.
pub struct Pacer {
    start: Instant,
    interval: Duration,
    issued: u64,
}

impl Pacer {
    /// `rate` requests per second (must be positive).
    pub fn new(start: Instant, rate: f64) -> Pacer {
        Pacer {
            start,
            interval: Duration::from_secs_f64(1.0 / rate),
            issued: 0,
        }
    }

    /// The next due time.
    pub fn next_due(&self) -> Instant {
        self.start + self.interval.mul_f64(self.issued as f64)
    }

    /// Takes every due time up to `now`, oldest first, into `out`.
    pub fn take_due(&mut self, now: Instant, out: &mut std::collections::VecDeque<Instant>) {
        loop {
            let due = self.next_due();
            if due > now {
                return;
            }
            out.push_back(due);
            self.issued += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    #[test]
    fn due_times_are_evenly_spaced_and_never_skipped() {
        let start = Instant::now();
        let mut pacer = Pacer::new(start, 1000.0);
        let mut due = VecDeque::new();
        // Asked late: every missed slot is still issued, with its own due time.
        pacer.take_due(start + Duration::from_micros(4500), &mut due);
        assert_eq!(due.len(), 5);
        assert_eq!(due[0], start);
        assert_eq!(due[4], start + Duration::from_millis(4));
        assert_eq!(pacer.next_due(), start + Duration::from_millis(5));
    }
}
