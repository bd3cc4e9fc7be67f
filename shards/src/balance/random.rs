//! Weighted random: each backend is picked with probability weight / total of the eligible ones.

use super::{weighted_random, BackendIndex, Pick, Select};

pub struct Random;

impl Select for Random {
    fn select(&mut self, pick: &mut Pick<'_>) -> Option<BackendIndex> {
        weighted_random(pick)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{through_trait, LoadState};
    use super::*;

    #[test]
    fn follows_weights_and_skips_the_ineligible() {
        let mut state = LoadState::new(&[1, 2, 3]);
        let picks = through_trait(&mut Random, &mut state, &[true; 3], 60_000);
        for (i, expected) in [10_000, 20_000, 30_000].into_iter().enumerate() {
            let count = picks.iter().filter(|&&p| p == i).count();
            assert!(count.abs_diff(expected) < 1_000, "backend {i}: {count}");
        }
        let picks = through_trait(&mut Random, &mut state, &[false, true, false], 100);
        assert!(picks.iter().all(|&p| p == 1));
        let none = through_trait(&mut Random, &mut state, &[false; 3], 1);
        assert!(none.is_empty());
    }
}
