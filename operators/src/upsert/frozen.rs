//! The keys whose row froze, each with the day of the partition it froze in.
//!
//! A key freezes once and stays frozen: every later record of it is a late update. The upsert asks
//! about every key of an epoch, in ascending order, and adds the keys freezing with the epoch, also
//! in ascending order. So the set is kept as sorted runs (a key's 16 bytes and its day's 4 in two
//! parallel vectors: 20 bytes per key, no hash table around them) and read with one forward
//! [`Lookup`] per epoch, which gallops through each run from where the last key left it.
//!
//! Runs are merged like a log-structured tree: a new run is merged into the one before it while
//! that one is less than twice its size. So there are at most log2(keys) runs, every key is
//! copied O(log keys) times over its life, and a merge is a sequential pass in place (the larger
//! run grows, the smaller is merged in from the back) rather than a rehash of millions of entries,
//! which is what a hash map paid whenever an epoch froze millions of keys at once.
//!
//! Edge cases: an empty run is never kept; keys must not repeat within or across runs (a frozen
//! key is never frozen again: the upsert rejects its records before it could), which debug
//! builds check.

/// Frozen keys and their partition day.
#[derive(Debug, Default)]
pub struct FrozenKeys {
    /// Each run sorted by key; runs ordered from largest to smallest.
    runs: Vec<Run>,
}

#[derive(Debug, Default)]
struct Run {
    keys: Vec<u128>,
    days: Vec<i32>,
}

impl FrozenKeys {
    /// Adds keys that froze, in ascending order, none of them frozen already.
    pub fn extend_sorted(&mut self, keys: Vec<u128>, days: Vec<i32>) {
        debug_assert_eq!(keys.len(), days.len());
        debug_assert!(keys.is_sorted_by(|a, b| a < b), "frozen keys must arrive ascending and once");
        if keys.is_empty() {
            return;
        }
        self.runs.push(Run { keys, days });
        while let [.., larger, smaller] = self.runs.as_slice()
            && larger.keys.len() < 2 * smaller.keys.len()
        {
            let smaller = self.runs.pop().expect("two runs");
            let larger = self.runs.last_mut().expect("two runs");
            larger.merge(smaller);
        }
    }

    /// A forward-only reader: ask keys in ascending order.
    pub fn lookup(&self) -> Lookup<'_> {
        Lookup { runs: &self.runs, positions: vec![0; self.runs.len()] }
    }
}

impl Run {
    /// Merges `other` (disjoint keys) into this run, in place from the back.
    fn merge(&mut self, other: Run) {
        let (mut mine, mut theirs) = (self.keys.len(), other.keys.len());
        let total = mine + theirs;
        self.keys.resize(total, 0);
        self.days.resize(total, 0);
        let mut next = total;
        while theirs > 0 {
            next -= 1;
            if mine > 0 && self.keys[mine - 1] > other.keys[theirs - 1] {
                mine -= 1;
                self.keys[next] = self.keys[mine];
                self.days[next] = self.days[mine];
            } else {
                theirs -= 1;
                debug_assert!(mine == 0 || self.keys[mine - 1] != other.keys[theirs], "a key frozen twice");
                self.keys[next] = other.keys[theirs];
                self.days[next] = other.days[theirs];
            }
        }
    }
}

/// Looks keys up in ascending order; each run is read forward from where the previous key left it.
pub struct Lookup<'a> {
    runs: &'a [Run],
    positions: Vec<usize>,
}

impl Lookup<'_> {
    /// The day `key` froze in, if it did. `key` must not be smaller than the previous one asked.
    pub fn get(&mut self, key: u128) -> Option<i32> {
        let mut found = None;
        for (run, position) in self.runs.iter().zip(&mut self.positions) {
            *position = first_at_least(&run.keys, *position, key);
            if run.keys.get(*position) == Some(&key) {
                found = Some(run.days[*position]);
            }
        }
        found
    }
}

/// The first index at or after `from` whose key is `>= key`: galloping, so a lookup costs the
/// logarithm of how far it moves, not of the run's length.
pub(super) fn first_at_least(keys: &[u128], from: usize, key: u128) -> usize {
    let from = from.min(keys.len());
    let rest = &keys[from..];
    let mut bound = 1;
    while bound < rest.len() && rest[bound] < key {
        bound *= 2;
    }
    let start = bound / 2;
    let end = (bound + 1).min(rest.len());
    from + start + rest[start.min(end)..end].partition_point(|candidate| *candidate < key)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn lookups_in_ascending_order_find_every_frozen_key_and_nothing_else() {
        for seed in 0..20 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut frozen = FrozenKeys::default();
            let mut oracle: BTreeMap<u128, i32> = BTreeMap::new();
            // Keys from a small range, so lookups hit, miss between keys, and runs interleave.
            for _ in 0..rng.random_range(1..40) {
                let mut added: BTreeMap<u128, i32> = BTreeMap::new();
                for _ in 0..rng.random_range(0..300) {
                    let key = rng.random_range(0..5_000u128);
                    if !oracle.contains_key(&key) {
                        added.insert(key, rng.random_range(-10..10));
                    }
                }
                oracle.extend(added.iter().map(|(k, d)| (*k, *d)));
                frozen.extend_sorted(added.keys().copied().collect(), added.values().copied().collect());
                assert_eq!(frozen.runs.iter().map(|run| run.keys.len()).sum::<usize>(), oracle.len(), "seed {seed}");
                // Runs stay geometric: each at least twice the next.
                assert!(frozen.runs.windows(2).all(|pair| pair[0].keys.len() >= 2 * pair[1].keys.len()), "seed {seed}");
                let mut asked: Vec<u128> = (0..rng.random_range(0..400)).map(|_| rng.random_range(0..5_100u128)).collect();
                asked.sort_unstable();
                let mut lookup = frozen.lookup();
                for key in asked {
                    assert_eq!(lookup.get(key), oracle.get(&key).copied(), "seed {seed}, key {key}");
                }
            }
        }
    }

    #[test]
    fn galloping_finds_the_first_key_not_below() {
        let keys: Vec<u128> = (0..100).map(|k| k * 3).collect();
        for from in [0, 1, 7, 50, 99, 100, 150] {
            for key in 0..310u128 {
                let expected = from.min(keys.len()) + keys[from.min(keys.len())..].partition_point(|k| *k < key);
                assert_eq!(first_at_least(&keys, from, key), expected, "from {from}, key {key}");
            }
        }
    }
}
