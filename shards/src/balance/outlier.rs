//! Passive health: each shard ejects backends that fail its own requests.
//!
//! Active checks (run by the coordinator) see a backend every few seconds; a shard sees every
//! request. A refused connection ejects a backend at once; resets and 5xx responses eject it after
//! a run of consecutive failures. An ejection lasts a backoff that doubles on each repeat (1 s, 2 s,
//! 4 s … up to 30 s) and the count of repeats is forgotten after a quiet period, so a backend that
//! flaps is kept out longer while one that failed once comes back quickly.

use std::time::{Duration, Instant};

/// What went wrong with a request to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// TCP connect refused or timed out, or the HTTP/2 handshake failed.
    Connect,
    /// The backend reset the stream or the connection.
    Reset,
    /// The backend answered 5xx.
    ServerError,
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After this long without an ejection, the next one starts again at the first backoff.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Consecutive resets or 5xx responses that eject a backend.
const CONSECUTIVE_ERRORS: u32 = 5;

#[derive(Default, Clone)]
struct BackendOutlier {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections in the current run (drives the backoff).
    repeats: u32,
    last_ejected: Option<Instant>,
    /// Total ejections, for counters and logs.
    ejections: u64,
}

pub struct Outliers {
    backends: Vec<BackendOutlier>,
}

impl Outliers {
    pub fn new(count: usize) -> Self {
        Outliers {
            backends: vec![BackendOutlier::default(); count],
        }
    }

    pub fn is_ejected(&self, backend: usize, now: Instant) -> bool {
        self.backends
            .get(backend)
            .and_then(|b| b.ejected_until)
            .is_some_and(|until| now < until)
    }

    pub fn record_success(&mut self, backend: usize) {
        if let Some(b) = self.backends.get_mut(backend) {
            b.consecutive_failures = 0;
        }
    }

    /// Records a failure; returns the ejection's length when this failure ejects the backend.
    pub fn record_failure(
        &mut self,
        backend: usize,
        failure: Failure,
        now: Instant,
    ) -> Option<Duration> {
        let b = self.backends.get_mut(backend)?;
        if b.ejected_until.is_some_and(|until| now < until) {
            return None;
        }
        b.consecutive_failures += 1;
        let threshold = match failure {
            Failure::Connect => 1,
            Failure::Reset | Failure::ServerError => CONSECUTIVE_ERRORS,
        };
        if b.consecutive_failures < threshold {
            return None;
        }
        if b.last_ejected
            .is_some_and(|t| now.duration_since(t) > FORGET_AFTER)
        {
            b.repeats = 0;
        }
        let backoff = FIRST_BACKOFF
            .saturating_mul(1u32 << b.repeats.min(5))
            .min(MAX_BACKOFF);
        b.repeats += 1;
        b.ejections += 1;
        b.consecutive_failures = 0;
        b.last_ejected = Some(now);
        b.ejected_until = Some(now + backoff);
        Some(backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failure_ejects_at_once_with_growing_backoff() {
        let mut o = Outliers::new(1);
        let t0 = Instant::now();
        assert_eq!(
            o.record_failure(0, Failure::Connect, t0),
            Some(Duration::from_secs(1))
        );
        assert!(o.is_ejected(0, t0));
        assert!(!o.is_ejected(0, t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            o.record_failure(0, Failure::Connect, t1),
            Some(Duration::from_secs(2))
        );
        let t2 = t1 + Duration::from_secs(3);
        assert_eq!(
            o.record_failure(0, Failure::Connect, t2),
            Some(Duration::from_secs(4))
        );
        // A long quiet period resets the backoff.
        let t3 = t2 + Duration::from_secs(120);
        assert_eq!(
            o.record_failure(0, Failure::Connect, t3),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn server_errors_need_a_run_and_success_breaks_it() {
        let mut o = Outliers::new(1);
        let now = Instant::now();
        for _ in 0..4 {
            assert_eq!(o.record_failure(0, Failure::ServerError, now), None);
        }
        o.record_success(0);
        for _ in 0..4 {
            assert_eq!(o.record_failure(0, Failure::ServerError, now), None);
        }
        assert!(o.record_failure(0, Failure::ServerError, now).is_some());
        assert!(o.is_ejected(0, now));
    }
}
