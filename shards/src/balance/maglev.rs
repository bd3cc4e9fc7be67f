//! Consistent hashing with a Maglev lookup table (Eisenbud et al., NSDI 2016): a request's key
//! hash picks a slot, the slot's owner serves it, and removing one of N backends moves about 1/N
//! of keys. The table is built from backend ids, weights and active health only, so every shard
//! and every process maps a key to the same backend.

use super::{stable_hash, weighted_random, BackendIndex, Pick, Select};

/// Lookup table size: a prime well above any pool size, so each backend owns many slots.
const MAGLEV_TABLE: usize = 65_537;

pub struct Maglev {
    ids: Vec<String>,
    weights: Vec<u32>,
    /// Backend per slot, over the actively healthy backends (empty when none is).
    table: Vec<u32>,
}

impl Maglev {
    pub fn new(ids: Vec<String>, weights: Vec<u32>) -> Self {
        let everyone = vec![true; ids.len()];
        let table = maglev_table(&ids, &weights, &everyone);
        Maglev {
            ids,
            weights,
            table,
        }
    }
}

impl Select for Maglev {
    /// The backend owning the hash's slot; if it is ejected or already tried, the next slots'
    /// owners in table order, so the fallback is as stable as the first choice. A request
    /// without the key is spread at random rather than all sent to one backend.
    fn select(&mut self, pick: &mut Pick<'_>) -> Option<BackendIndex> {
        let Some(hash) = pick.key else {
            return weighted_random(pick);
        };
        if self.table.is_empty() {
            return None;
        }
        let start = (hash % self.table.len() as u64) as usize;
        (0..self.table.len())
            .map(|step| self.table[(start + step) % self.table.len()] as usize)
            .find(|&backend| pick.eligible[backend])
    }

    fn health_changed(&mut self, healthy: &[bool]) {
        self.table = maglev_table(&self.ids, &self.weights, healthy);
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Builds a Maglev lookup table (Eisenbud et al., NSDI 2016) over the included backends. Each
/// backend's preference order comes from hashes of its id, so the table depends only on the ids,
/// weights and health, never on order of arrival. Weights are honoured by giving each backend
/// `weight / gcd` turns per round.
fn maglev_table(ids: &[String], weights: &[u32], include: &[bool]) -> Vec<u32> {
    let members: Vec<usize> = (0..ids.len()).filter(|&i| include[i]).collect();
    if members.is_empty() {
        return Vec::new();
    }
    let m = MAGLEV_TABLE as u64;
    let divisor = members.iter().fold(0, |g, &i| gcd(g, weights[i])).max(1);
    let turns: Vec<u32> = members
        .iter()
        .map(|&i| (weights[i] / divisor).clamp(1, 1000))
        .collect();
    let prefs: Vec<(u64, u64)> = members
        .iter()
        .map(|&i| {
            let offset = stable_hash(format!("offset:{}", ids[i]).as_bytes()) % m;
            let skip = stable_hash(format!("skip:{}", ids[i]).as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut table = vec![u32::MAX; MAGLEV_TABLE];
    let mut filled = 0;
    loop {
        for (k, &backend) in members.iter().enumerate() {
            for _ in 0..turns[k] {
                let (offset, skip) = prefs[k];
                loop {
                    let slot = ((offset + next[k] * skip) % m) as usize;
                    next[k] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = backend as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == MAGLEV_TABLE {
                    return table;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::LoadState;
    use super::*;

    fn pick(
        maglev: &mut Maglev,
        state: &mut LoadState,
        eligible: &mut [bool],
        key: u64,
    ) -> Option<usize> {
        maglev.select(&mut state.pick(eligible, Some(key)))
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("b{i}")).collect()
    }

    #[test]
    fn the_same_everywhere_and_removing_one_moves_about_one_nth() {
        let keys: Vec<u64> = (0..10_000)
            .map(|k| stable_hash(format!("user-{k}").as_bytes()))
            .collect();
        let mut state = LoadState::new(&[100; 5]);
        let mut a = Maglev::new(ids(5), vec![100; 5]);
        // Another shard or process builds the same table.
        let mut other = Maglev::new(ids(5), vec![100; 5]);
        let mut all = [true; 5];
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| pick(&mut a, &mut state, &mut all, k).unwrap())
            .collect();
        for (&k, &owner) in keys.iter().zip(&before) {
            assert_eq!(pick(&mut other, &mut state, &mut all, k), Some(owner));
        }
        let shares: Vec<usize> = (0..5)
            .map(|i| before.iter().filter(|&&o| o == i).count())
            .collect();
        assert!(
            shares.iter().all(|&n| (1_700..=2_300).contains(&n)),
            "{shares:?}"
        );
        let healthy = [true, true, false, true, true];
        a.health_changed(&healthy);
        let mut eligible = healthy;
        let after: Vec<usize> = keys
            .iter()
            .map(|&k| pick(&mut a, &mut state, &mut eligible, k).unwrap())
            .collect();
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        assert!((1_500..=2_500).contains(&moved), "moved {moved} of 10000");
        // Maglev trades perfect minimal disruption for balance: nearly all moved keys are the
        // removed backend's own.
        let collateral = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| x != y && **x != 2)
            .count();
        assert!(
            collateral < 300,
            "{collateral} keys of surviving backends moved"
        );
    }

    #[test]
    fn honours_weights_and_falls_back_in_table_order() {
        let mut state = LoadState::new(&[1, 3]);
        let mut maglev = Maglev::new(ids(2), vec![1, 3]);
        let mut both = [true; 2];
        let heavy = (0..20_000u64)
            .filter(|k| {
                pick(
                    &mut maglev,
                    &mut state,
                    &mut both,
                    stable_hash(&k.to_le_bytes()),
                ) == Some(1)
            })
            .count();
        assert!((14_000..=16_000).contains(&heavy), "{heavy}");
        // Backend 1 ejected (not in the table's health, only ineligible): its keys go to 0.
        let mut only_zero = [true, false];
        assert_eq!(pick(&mut maglev, &mut state, &mut only_zero, 42), Some(0));
        maglev.health_changed(&[false, false]);
        assert_eq!(pick(&mut maglev, &mut state, &mut both, 42), None);
    }
}
