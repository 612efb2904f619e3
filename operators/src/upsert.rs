//! The upsert: the latest row per `event_id`, held in a differential arrangement.
//!
//! Input: a collection of `(event_id, Candidate)`, every accepted record plus, at epoch 0, the rows
//! reloaded from the curated table (`Origin::Seed`). Output: a collection of `(event_id,
//! UpsertOutput)` holding, per key, the current row and every record rejected as a late update.
//! Its changes per epoch are what the curated sink commits: `+1` for a new winner, `-1` for the
//! row it supersedes.
//!
//! Semantics, per key, folding candidates in ingestion order ([`Candidate`]'s `Ord`):
//! - The winner is the candidate with the greatest `(rating_timestamp, ingestion position,
//!   origin)`: latest rating wins, ties go to the later ingested record, and a re-processed record
//!   replaces its reloaded copy (so changed rules re-derive the row). Exact duplicates (the same
//!   record twice) are idempotent.
//! - Late update: once the current row's `rating_date` is older than `ingestion_date - lateness`
//!   of an incoming input record, that row's partition is frozen and the record is rejected as a
//!   late update instead of moving the row. Seeds are never rejected: they are what was committed.
//! - The fold depends only on the set of candidates, not on how they were cut into epochs, so a
//!   replay in one go and a replay in pieces produce the same table.
//!
//! Differential's `reduce` hands the values of a key over in sorted order, which is exactly
//! ingestion order, so the fold is a single pass with no extra sort.

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use crate::model::{Candidate, Origin};

/// What the upsert holds per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum UpsertOutput {
    /// The row the curated table shows for this key.
    Current(Candidate),
    /// A record that arrived after the key's row was frozen.
    LateUpdate(Candidate),
}

/// The fold over one key's candidates, given in ingestion order. Returns the winner and the records
/// rejected as late updates.
pub fn fold<'a>(
    candidates: impl IntoIterator<Item = &'a Candidate>,
    lateness_days: i32,
) -> (Option<&'a Candidate>, Vec<&'a Candidate>) {
    let mut current: Option<&Candidate> = None;
    let mut late = Vec::new();
    for candidate in candidates {
        current = match current {
            None => Some(candidate),
            Some(row) => {
                let frozen_before = candidate.position.ingestion_date() - lateness_days;
                if candidate.origin == Origin::Input && row.rating_date < frozen_before {
                    late.push(candidate);
                    Some(row)
                } else if candidate.beats(row) {
                    Some(candidate)
                } else {
                    Some(row)
                }
            }
        };
    }
    (current, late)
}

/// Arranges candidates by key and maintains [`UpsertOutput`] per key.
pub fn upsert<'scope>(
    candidates: VecCollection<'scope, u64, (u128, Candidate), isize>,
    lateness_days: i32,
) -> VecCollection<'scope, u64, (u128, UpsertOutput), isize> {
    candidates.reduce_named("Upsert", move |_key, input, output| {
        let present = input.iter().filter(|(_, count)| *count > 0).map(|(candidate, _)| *candidate);
        let (current, late) = fold(present, lateness_days);
        if let Some(row) = current {
            output.push((UpsertOutput::Current(row.clone()), 1));
        }
        output.extend(late.into_iter().map(|c| (UpsertOutput::LateUpdate(c.clone()), 1)));
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use differential_dataflow::input::Input;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use timely::dataflow::operators::probe::Handle as ProbeHandle;

    use super::*;
    use crate::model::{IngestPosition, Rating};

    const DAY_MS: i64 = 86_400_000;

    fn random_candidate(rng: &mut ChaCha8Rng, seq: i64) -> Candidate {
        // Ingestion moves forward ~1 day every 20 records; ratings land up to 4 days before it, so
        // late updates, ties (coarse timestamps) and partition moves all happen.
        let ingestion_ts_ms = seq * DAY_MS / 20;
        let rating_timestamp = (ingestion_ts_ms / 1000 - rng.random_range(0..4) * 86_400) / 3600 * 3600;
        Candidate {
            position: IngestPosition { ingestion_ts_ms, partition: rng.random_range(0..3), offset: seq },
            origin: Origin::Input,
            rating_timestamp,
            rating_date: crate::model::day_of_seconds(rating_timestamp),
            user_id: format!("u{}", rng.random_range(0..5)).into(),
            movie_id: "m".into(),
            rating: Rating(rng.random_range(0..=10) as f32),
            is_approved: false,
        }
    }

    /// Plain oracle: sort all candidates of a key by ingestion order, then fold.
    fn oracle(all: &[(u128, Candidate)], lateness: i32) -> BTreeMap<(u128, UpsertOutput), isize> {
        let mut by_key: BTreeMap<u128, Vec<&Candidate>> = BTreeMap::new();
        for (key, c) in all {
            by_key.entry(*key).or_default().push(c);
        }
        let mut expected = BTreeMap::new();
        for (key, mut list) in by_key {
            list.sort();
            list.dedup();
            let (current, late) = fold(list.iter().copied(), lateness);
            if let Some(row) = current {
                expected.insert((key, UpsertOutput::Current(row.clone())), 1);
            }
            for c in late {
                expected.insert((key, UpsertOutput::LateUpdate(c.clone())), 1);
            }
        }
        expected
    }

    #[test]
    fn upsert_matches_oracle_after_every_epoch() {
        for seed in 0..8u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let epochs: Vec<Vec<(u128, Candidate)>> = (0..6)
                .map(|epoch| {
                    (0..40)
                        .map(|i| (rng.random_range(0..25u128), random_candidate(&mut rng, epoch * 40 + i)))
                        .collect()
                })
                .collect();
            // Re-deliver some records verbatim: duplicates must be idempotent.
            let mut epochs = epochs;
            let replays: Vec<_> = epochs[1].iter().take(5).cloned().collect();
            epochs[3].extend(replays);

            let epochs_in = epochs.clone();
            let checkpoints: Vec<BTreeMap<_, _>> = timely::execute_directly(move |worker| {
                let seen: Rc<RefCell<BTreeMap<(u128, UpsertOutput), isize>>> = Default::default();
                let probe = ProbeHandle::new();
                let mut input = worker.dataflow::<u64, _, _>(|scope| {
                    let (input, candidates) = scope.new_collection::<(u128, Candidate), isize>();
                    let seen = seen.clone();
                    upsert(candidates, 5)
                        .inspect(move |(record, _time, diff)| {
                            let mut map = seen.borrow_mut();
                            let entry = map.entry(record.clone()).or_insert(0);
                            *entry += diff;
                            if *entry == 0 {
                                map.remove(record);
                            }
                        })
                        .probe_with(&probe);
                    input
                });
                let mut checkpoints = Vec::new();
                for (epoch, batch) in epochs_in.into_iter().enumerate() {
                    for record in batch {
                        input.insert(record);
                    }
                    input.advance_to(epoch as u64 + 1);
                    input.flush();
                    worker.step_while(|| probe.less_than(input.time()));
                    checkpoints.push(seen.borrow().clone());
                }
                checkpoints
            });
            let mut prefix = Vec::new();
            for (epoch, batch) in epochs.iter().enumerate() {
                prefix.extend(batch.iter().cloned());
                assert_eq!(checkpoints[epoch], oracle(&prefix, 5), "seed {seed}, epoch {epoch}");
            }
            assert!(checkpoints.last().unwrap().keys().any(|(_, o)| matches!(o, UpsertOutput::LateUpdate(_))));
        }
    }

    #[test]
    fn seed_is_replaced_by_its_reprocessed_record_and_ties_go_to_later_ingest() {
        let base = Candidate {
            position: IngestPosition { ingestion_ts_ms: 10 * DAY_MS, partition: 0, offset: 1 },
            origin: Origin::Seed,
            rating_timestamp: 10 * 86_400,
            rating_date: 10,
            user_id: "u".into(),
            movie_id: "m".into(),
            rating: Rating(8.0),
            is_approved: true,
        };
        let reprocessed = Candidate { origin: Origin::Input, is_approved: false, ..base.clone() };
        let (winner, late) = fold([&base, &reprocessed], 5);
        assert_eq!(winner, Some(&reprocessed));
        assert!(late.is_empty());

        let tie_later = Candidate {
            position: IngestPosition { offset: 2, ..base.position },
            rating: Rating(1.0),
            origin: Origin::Input,
            ..base.clone()
        };
        let older_rating = Candidate {
            position: IngestPosition { offset: 3, ..base.position },
            rating_timestamp: base.rating_timestamp - 1,
            origin: Origin::Input,
            ..base.clone()
        };
        let (winner, _) = fold([&base, &tie_later, &older_rating], 5);
        assert_eq!(winner, Some(&tie_later));

        let six_days_later = Candidate {
            position: IngestPosition { ingestion_ts_ms: 16 * DAY_MS, partition: 0, offset: 9 },
            rating_timestamp: 16 * 86_400,
            rating_date: 16,
            origin: Origin::Input,
            ..base.clone()
        };
        let (winner, late) = fold([&base, &six_days_later], 5);
        assert_eq!(winner, Some(&base));
        assert_eq!(late, vec![&six_days_later]);
    }
}
