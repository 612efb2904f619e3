//! Where a curated partition's live rows sit: key → (data file, position).
//!
//! The curated writer writes a data file as a few runs in key order (one per upsert worker that
//! sent rows, or one for a compacted partition), so a file is indexed by its keys as written (the
//! position is the index), where each run starts, and a live flag per row: 17 bytes a row,
//! against ~58 for a hash map entry (`benches/state_bytes.rs`), and no hashing on the hot path;
//! finding a key is one binary search per run. Rows reloaded at start (whatever order their file
//! has) are indexed as one sorted run, each with its position, once the reload is complete.
//!
//! Semantics: a key is live at most once per partition (the upsert removes a row before it
//! inserts its successor). Finding a key searches the files newest first; a file's dead rows stay
//! until the partition is compacted (its files are replaced, see [`RowIndex::clear`]) or leaves
//! the writer's memory. Files per partition are bounded by compaction (`compact_after_files`).

use std::collections::BTreeMap;

use crate::model::KeyMap;

/// One data file's rows: runs of ascending keys.
struct IndexedFile {
    id: u32,
    keys: Vec<u128>,
    /// Where each run of ascending keys starts in `keys`; the first is 0.
    runs: Vec<u32>,
    /// The row's position in the file; `None` when it is its index (files this writer wrote).
    positions: Option<Vec<u32>>,
    live: Vec<bool>,
}

impl IndexedFile {
    fn find(&self, key: u128) -> Option<usize> {
        let ends = self.runs.iter().skip(1).map(|&start| start as usize).chain([self.keys.len()]);
        self.runs.iter().zip(ends).find_map(|(&start, end)| {
            let start = start as usize;
            let index = start + self.keys[start..end].binary_search(&key).ok()?;
            self.live[index].then_some(index)
        })
    }

    fn position(&self, index: usize) -> u32 {
        self.positions.as_ref().map_or(index as u32, |positions| positions[index])
    }
}

#[derive(Default)]
pub struct RowIndex {
    /// Oldest first.
    files: Vec<IndexedFile>,
    /// Rows reloaded at start, by file, until [`RowIndex::seal_reloaded`] indexes them.
    reloaded: KeyMap<(u32, u32)>,
}

impl RowIndex {
    /// A file this writer wrote: its rows are `keys`, in that order. Any order is indexed
    /// correctly; a file written as a few ascending runs is found with a binary search per run.
    pub fn add_written(&mut self, id: u32, keys: Vec<u128>) {
        let descents = keys.windows(2).enumerate().filter(|(_, pair)| pair[1] <= pair[0]).map(|(index, _)| index as u32 + 1);
        let runs = std::iter::once(0).chain(descents).collect();
        let live = vec![true; keys.len()];
        self.files.push(IndexedFile { id, keys, runs, positions: None, live });
    }

    /// A row reloaded at start.
    pub fn add_reloaded(&mut self, key: u128, id: u32, position: u32) {
        self.reloaded.insert(key, (id, position));
    }

    /// Indexes the reloaded rows, one sorted vector per file.
    pub fn seal_reloaded(&mut self) {
        let mut by_file: BTreeMap<u32, Vec<(u128, u32)>> = BTreeMap::new();
        for (key, (id, position)) in std::mem::take(&mut self.reloaded) {
            by_file.entry(id).or_default().push((key, position));
        }
        for (id, mut rows) in by_file {
            rows.sort_unstable();
            let live = vec![true; rows.len()];
            let (keys, positions) = rows.into_iter().unzip();
            self.files.push(IndexedFile { id, keys, runs: vec![0], positions: Some(positions), live });
        }
    }

    /// The key's row is no longer live: returns where it sat.
    pub fn remove(&mut self, key: u128) -> Option<(u32, u32)> {
        self.files.iter_mut().rev().find_map(|file| {
            let index = file.find(key)?;
            file.live[index] = false;
            Some((file.id, file.position(index)))
        })
    }

    /// The live rows of file `id`: (position, key), by position.
    pub fn live_rows(&self, id: u32) -> Vec<(u32, u128)> {
        let mut rows: Vec<(u32, u128)> = self
            .files
            .iter()
            .filter(|file| file.id == id)
            .flat_map(|file| file.keys.iter().enumerate().filter(|(index, _)| file.live[*index]).map(|(index, key)| (file.position(index), *key)))
            .collect();
        rows.sort_unstable();
        rows
    }

    /// Forgets every row: the partition's files were all replaced.
    pub fn clear(&mut self) {
        self.files.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::RowIndex;

    /// Where the index says each live key sits, from every file's live rows.
    fn located(index: &RowIndex, files: u32) -> HashMap<u128, (u32, u32)> {
        (0..files).flat_map(|id| index.live_rows(id).into_iter().map(move |(position, key)| (key, (id, position)))).collect()
    }

    /// Random files written (in runs of ascending keys, or in no order), rows reloaded, removed
    /// and located, against a hash map of key → (file, position) (what the writer kept before).
    #[test]
    fn the_index_answers_as_a_key_to_location_map_does() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for _ in 0..20 {
            let mut index = RowIndex::default();
            let mut oracle: HashMap<u128, (u32, u32)> = HashMap::new();
            let universe: Vec<u128> = (0..300).map(|_| rng.random()).collect();
            // Reloaded rows: keys in file order arbitrary.
            let mut next_id = 0;
            for _ in 0..3 {
                let mut position = 0;
                for key in universe.iter().filter(|_| rng.random_bool(0.2)) {
                    if oracle.contains_key(key) {
                        continue;
                    }
                    index.add_reloaded(*key, next_id, position);
                    oracle.insert(*key, (next_id, position));
                    position += 1;
                }
                next_id += 1;
            }
            index.seal_reloaded();
            for _ in 0..30 {
                // An epoch: some keys removed (some to be rewritten), then a file written: one
                // sorted run, a few (one per upsert worker), or in no order at all.
                let mut written: Vec<u128> = Vec::new();
                for key in &universe {
                    if rng.random_bool(0.1) {
                        assert_eq!(index.remove(*key), oracle.remove(key), "remove {key}");
                        if rng.random_bool(0.5) {
                            written.push(*key);
                        }
                    } else if rng.random_bool(0.02) && !oracle.contains_key(key) {
                        written.push(*key);
                    }
                }
                match rng.random_range(0..3) {
                    0 => written.sort_unstable(),
                    1 => {
                        let parts = rng.random_range(2..=4);
                        let mut runs = vec![Vec::new(); parts];
                        for key in written.drain(..) {
                            runs[rng.random_range(0..parts)].push(key);
                        }
                        for mut run in runs {
                            run.sort_unstable();
                            written.extend(run);
                        }
                    }
                    _ => {
                        for i in (1..written.len()).rev() {
                            written.swap(i, rng.random_range(0..=i));
                        }
                    }
                }
                for (position, key) in written.iter().enumerate() {
                    oracle.insert(*key, (next_id, position as u32));
                }
                index.add_written(next_id, written);
                next_id += 1;
                assert_eq!(located(&index, next_id), oracle, "key → (file, position)");
                for id in 0..next_id {
                    let mut expected: Vec<(u32, u128)> = oracle.iter().filter(|(_, at)| at.0 == id).map(|(key, at)| (at.1, *key)).collect();
                    expected.sort_unstable();
                    assert_eq!(index.live_rows(id), expected, "live rows of file {id}");
                }
            }
            index.clear();
            assert!(located(&index, next_id).is_empty());
        }
    }
}
