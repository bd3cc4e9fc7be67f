//! Smooth weighted round-robin (nginx's algorithm): each pick adds every eligible backend's
//! weight to its current value, takes the largest, and subtracts the total from it. Picks
//! interleave (a:5 b:1 c:1 gives a a b a c a a) instead of bursting.

use super::{BackendIndex, Pick, Select};

pub struct RoundRobin {
    current: Vec<i64>,
}

impl RoundRobin {
    pub fn new(backends: usize) -> Self {
        RoundRobin {
            current: vec![0; backends],
        }
    }
}

impl Select for RoundRobin {
    fn select(&mut self, pick: &mut Pick<'_>) -> Option<BackendIndex> {
        let mut total = 0i64;
        let mut best: Option<BackendIndex> = None;
        for (i, _) in pick.eligible.iter().enumerate().filter(|(_, ok)| **ok) {
            let weight = i64::from(pick.weights[i]);
            self.current[i] += weight;
            total += weight;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{through_trait, LoadState};
    use super::*;

    #[test]
    fn follows_weights_exactly_and_interleaves() {
        let mut state = LoadState::new(&[5, 1, 1]);
        let mut rr = RoundRobin::new(3);
        let picks = through_trait(&mut rr, &mut state, &[true; 3], 7);
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        let picks = through_trait(&mut rr, &mut state, &[true, false, true], 6);
        // Weights 5 and 1 over six picks: five and one, the one in the middle of the run.
        assert_eq!(picks, vec![0, 0, 0, 2, 0, 0]);
    }
}
