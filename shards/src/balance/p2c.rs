//! Power of two choices (Mitzenmacher): two weighted-random candidates, the lower score wins.
//! `least-request` scores by requests in flight per weight; `latency-aware` multiplies that by the
//! smoothed time to response headers, so a slow backend gets fewer requests before it is loaded.

use super::{weighted_random, BackendIndex, Pick, Select};

/// Assumed response time of a backend with no sample yet, so new backends get tried.
const EWMA_UNKNOWN_US: f64 = 1_000.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Score {
    LeastRequest,
    LatencyAware,
}

pub struct PowerOfTwo {
    score: Score,
}

impl PowerOfTwo {
    pub fn new(score: Score) -> Self {
        PowerOfTwo { score }
    }

    fn score(&self, load: &Pick<'_>, i: BackendIndex) -> f64 {
        let busy = f64::from(load.in_flight[i] + 1) / f64::from(load.weights[i]);
        match self.score {
            Score::LeastRequest => busy,
            Score::LatencyAware => {
                let ewma = if load.ewma_us[i] > 0.0 {
                    load.ewma_us[i]
                } else {
                    EWMA_UNKNOWN_US
                };
                ewma * busy
            }
        }
    }
}

impl Select for PowerOfTwo {
    fn select(&mut self, pick: &mut Pick<'_>) -> Option<BackendIndex> {
        let first = weighted_random(pick)?;
        if pick.eligible.iter().filter(|ok| **ok).count() < 2 {
            return Some(first);
        }
        pick.eligible[first] = false;
        let second = weighted_random(pick);
        pick.eligible[first] = true;
        let second = second?;
        Some(if self.score(pick, second) < self.score(pick, first) {
            second
        } else {
            first
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{through_trait, LoadState};
    use super::*;

    #[test]
    fn least_request_never_picks_the_busiest_of_three() {
        let mut state = LoadState::new(&[100; 3]);
        state.in_flight[0] = 50;
        let picks = through_trait(
            &mut PowerOfTwo::new(Score::LeastRequest),
            &mut state,
            &[true; 3],
            3000,
        );
        // Two distinct candidates are drawn, so the busiest one always loses.
        assert!(!picks.contains(&0), "{picks:?}");
        assert!(picks.contains(&1) && picks.contains(&2));
    }

    #[test]
    fn latency_aware_prefers_the_fast_backend() {
        let mut state = LoadState::new(&[100; 2]);
        state.ewma_us = vec![50_000.0, 1_000.0];
        let picks = through_trait(
            &mut PowerOfTwo::new(Score::LatencyAware),
            &mut state,
            &[true; 2],
            1000,
        );
        assert!(picks.iter().all(|&p| p == 1));
        // An unmeasured backend counts as 1 ms, so it is tried against a 50 ms one.
        state.ewma_us = vec![50_000.0, 0.0];
        let picks = through_trait(
            &mut PowerOfTwo::new(Score::LatencyAware),
            &mut state,
            &[true; 2],
            10,
        );
        assert!(picks.iter().all(|&p| p == 1));
    }

    #[test]
    fn one_eligible_backend_is_picked_alone() {
        let mut state = LoadState::new(&[100; 3]);
        state.in_flight[2] = 1000;
        let picks = through_trait(
            &mut PowerOfTwo::new(Score::LeastRequest),
            &mut state,
            &[false, false, true],
            5,
        );
        assert_eq!(picks, vec![2; 5]);
    }
}
