//! The upsert: the latest row per `event_id`, held in a differential arrangement.
//!
//! ```text
//!  (event_id, Candidate) ── exchange(event_id) ──► per epoch, once the frontier passes it:
//!     sort the epoch's candidates by key, then ingestion order
//!     per key: current row (arrangement cursor) + the epoch's candidates ─ fold ─► winner, late
//!     one batch (-old row, +winner per changed key) into the arrangement
//!        │ KeyChange { old, new } per changed key; LateUpdate per rejected record
//!        ▼
//! ```
//!
//! The arrangement (`OrdValSpine<event_id, Candidate>`) holds exactly one row per key: the
//! current one. Each epoch costs a sort of its own candidates and one cursor seek per key, and the
//! state is one copy of the live rows (differential's `reduce` kept every input record of a key as
//! well, plus an output trace). Rows whose `rating_date` falls behind the settled ingestion date
//! (see [`crate::sink::EpochMeta`]) by more than the lateness leave the arrangement, as their
//! partition does the curated writer's memory: every later record of such a key would be a late
//! update, and it still is, because the key stays behind with its date (20 bytes instead of a row).
//!
//! Semantics, per key, folding candidates in ingestion order ([`Candidate`]'s `Ord`):
//! - The winner is the candidate with the greatest `(rating_timestamp, ingestion position,
//!   origin)`: latest rating wins, ties go to the later ingested record, and a re-processed record
//!   replaces its reloaded copy (so changed rules re-derive the row). Exact duplicates (the same
//!   record twice) are idempotent.
//! - Late update: once the current row's `rating_date` is older than `ingestion_date - lateness`
//!   of an incoming input record, that row's partition is frozen and the record is rejected as a
//!   late update instead of moving the row. Seeds are never rejected: they are what was committed.
//! - A key's records reach the upsert in ingestion order: replay feeds ingestion dates in order
//!   and sorts within an epoch; the stream reads each key from one Kafka partition in offset
//!   order, and the Kafka timestamp (the ingestion time) grows with the offset unless producers
//!   stamp records with clocks that go backwards. So folding an epoch's candidates onto the
//!   current row gives what folding all of the key's records would, however the records were cut
//!   into epochs, and a replay reproduces the stream. A candidate ingested before a current row
//!   of the same run (such a backwards clock) is still folded in, and counted and logged, because
//!   the late decision then follows arrival order. (A replay run again over committed dates meets
//!   seeds ingested after its first records; that is no disorder: such records are never late
//!   against a seed inside the lateness window, and the winner is the greatest either way.)
//! - A row that only differs from the current one in how it was obtained (a reloaded seed and its
//!   re-processed record) replaces it in the arrangement but is no change for the table.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::implementations::ord_neu::{OrdValSpine, RcOrdValBuilder};
use differential_dataflow::trace::{Builder, Cursor, Description, Trace, TraceReader};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::progress::Antichain;

use crate::model::{Candidate, KeyMap, Origin};
use crate::stash::EpochStash;

/// The arrangement of current rows.
pub type UpsertSpine = OrdValSpine<u128, Candidate, u64, isize>;
type UpsertBuilder = RcOrdValBuilder<u128, Candidate, u64, isize>;

/// One key's change in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyChange {
    pub key: u128,
    pub old: Option<Candidate>,
    pub new: Option<Candidate>,
}

/// What the upsert emits per epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UpsertChange {
    /// The key's row changed (or appeared).
    Key(KeyChange),
    /// A record that arrived after the key's row was frozen in partition `frozen_day`.
    LateUpdate { key: u128, record: Candidate, frozen_day: i32 },
}

/// Counters of what the upsert did, summed over workers.
#[derive(Debug, Default)]
pub struct UpsertCounters {
    pub inserted: AtomicU64,
    pub updated: AtomicU64,
    pub moved: AtomicU64,
    /// Candidates ingested before the key's current row (see the module doc).
    pub out_of_order: AtomicU64,
    /// Rows the arrangement holds now: one per key, less the keys whose row froze.
    pub held: AtomicI64,
}

/// The fold over one key's candidates, given in ingestion order. Returns the winner and the records
/// rejected as late updates, each with the `rating_date` of the frozen row it met.
pub fn fold<'a>(
    candidates: impl IntoIterator<Item = &'a Candidate>,
    lateness_days: i32,
) -> (Option<&'a Candidate>, Vec<(&'a Candidate, i32)>) {
    let mut current: Option<&Candidate> = None;
    let mut late = Vec::new();
    for candidate in candidates {
        current = match current {
            None => Some(candidate),
            Some(row) => {
                let frozen_before = candidate.position.ingestion_date() - lateness_days;
                if candidate.origin == Origin::Input && row.rating_date < frozen_before {
                    late.push((candidate, row.rating_date));
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

/// Equal but for how the row was obtained (a reloaded seed, its re-processed record): the table
/// row is the same.
fn same_row(a: &Candidate, b: &Candidate) -> bool {
    Candidate { origin: b.origin, as_ingested: b.as_ingested.clone(), ..a.clone() } == *b
}

/// Which worker holds a key: event ids are UUIDs, so their bits are already spread.
fn route(key: &u128) -> u64 {
    (*key ^ (*key >> 64)) as u64
}

/// Maintains the current row per key (epoch 0: the seeds) and emits each epoch's changes.
pub fn upsert<'scope>(
    candidates: StreamVec<'scope, u64, (u128, Candidate)>,
    lateness_days: i32,
    settled_day: impl Fn(u64) -> Option<i32> + 'static,
    counters: Arc<UpsertCounters>,
) -> StreamVec<'scope, u64, UpsertChange> {
    let scope = candidates.scope();
    let exchange = Exchange::new(|(key, _): &(u128, Candidate)| route(key));
    candidates.unary_frontier(exchange, "Upsert", move |_capability, info| {
        let logger = scope.worker().logger_for::<differential_dataflow::logging::DifferentialEventBuilder>("differential/arrange").map(Into::into);
        let activator = Some(scope.activator_for(Rc::clone(&info.address)));
        let (mut state, mut writer) = TraceAgent::new(UpsertSpine::new(info.clone(), logger.clone(), activator), info, logger);
        let mut pending: EpochStash<(u128, Candidate)> = EpochStash::default();
        // The arrangement's upper: each completed epoch's batch starts where the last one ended.
        let mut lower = Antichain::from_elem(0u64);
        // Keys by the rating_date their row entered with (entries of rows that moved on since are
        // skipped when the day freezes), and the keys whose row sits in a frozen partition.
        let mut live_days: BTreeMap<i32, Vec<u128>> = BTreeMap::new();
        let mut frozen: KeyMap<i32> = KeyMap::default();
        move |(input, frontier), output| {
            input.for_each_time(|time, data| pending.stash(&time, data));
            while let Some((time, capability, batches)) = pending.pop_complete(frontier.frontier()) {
                let mut epoch: Vec<(u128, Candidate)> = Vec::with_capacity(batches.iter().map(Vec::len).sum());
                batches.into_iter().for_each(|mut batch| epoch.append(&mut batch));
                epoch.sort_unstable();
                epoch.dedup();
                let mut session = output.session(&capability);
                // At most a retraction and an insertion per key.
                let mut updates: Vec<((u128, Candidate), u64, isize)> = Vec::with_capacity(2 * epoch.len());
                let (mut cursor, storage) = state.cursor();
                let mut out_of_order = 0u64;
                // Rows the batch adds to the arrangement: a key without a row gains one.
                let mut held = 0i64;
                for group in epoch.chunk_by(|a, b| a.0 == b.0) {
                    let key = group[0].0;
                    if let Some(&frozen_day) = frozen.get(&key) {
                        // The row left with its partition: every later record is late for it.
                        for (_, record) in group.iter().filter(|(_, c)| c.origin == Origin::Input) {
                            session.give(UpsertChange::LateUpdate { key, record: record.clone(), frozen_day });
                        }
                        continue;
                    }
                    let current = current_row(&mut cursor, &storage, key);
                    // A seed preceded by re-processed records is a replay run again, not disorder.
                    if let Some(row) = current.as_ref().filter(|row| row.origin == Origin::Input)
                        && group[0].1.position < row.position
                    {
                        out_of_order += 1;
                    }
                    let (winner, late) = fold(current.iter().chain(group.iter().map(|(_, c)| c)), lateness_days);
                    for (record, frozen_day) in late {
                        session.give(UpsertChange::LateUpdate { key, record: record.clone(), frozen_day });
                    }
                    let Some(winner) = winner.filter(|w| Some(*w) != current.as_ref()).cloned() else { continue };
                    // Epoch 0 holds the seeds: they are what the table holds, not changes to it.
                    if time > 0 && !current.as_ref().is_some_and(|row| same_row(row, &winner)) {
                        match &current {
                            None => counters.inserted.fetch_add(1, Relaxed),
                            Some(row) if row.rating_date != winner.rating_date => {
                                counters.moved.fetch_add(1, Relaxed);
                                counters.updated.fetch_add(1, Relaxed)
                            }
                            Some(_) => counters.updated.fetch_add(1, Relaxed),
                        };
                        session.give(UpsertChange::Key(KeyChange { key, old: current.clone(), new: Some(winner.clone()) }));
                    }
                    live_days.entry(winner.rating_date).or_default().push(key);
                    // The batch wants (key, row) order: the winner may sort before the old row.
                    let new = ((key, winner), time, 1);
                    match current.map(|row| ((key, row), time, -1)) {
                        Some(old) if old.0 < new.0 => updates.extend([old, new]),
                        Some(old) => updates.extend([new, old]),
                        None => {
                            updates.push(new);
                            held += 1;
                        }
                    }
                }
                drop(session);
                if out_of_order > 0 {
                    counters.out_of_order.fetch_add(out_of_order, Relaxed);
                    tracing::warn!(epoch = time, records = out_of_order, "records ingested before their key's current row (Kafka timestamps going backwards): the late rule followed arrival order for them");
                }
                if let Some(settled) = settled_day(time) {
                    held -= freeze(settled - lateness_days, &mut live_days, &mut frozen, &mut updates, &mut state, time);
                }
                counters.held.fetch_add(held, Relaxed);
                let mut builder = UpsertBuilder::with_capacity(updates.len(), updates.len(), updates.len());
                builder.push(&mut updates);
                let upper = Antichain::from_elem(time + 1);
                let description = Description::new(std::mem::replace(&mut lower, upper.clone()), upper, Antichain::from_elem(0));
                writer.insert(builder.done(description), Some(time));
            }
            writer.seal(frontier.frontier().to_owned());
            lower = frontier.frontier().to_owned();
            state.set_logical_compaction(frontier.frontier());
            state.set_physical_compaction(frontier.frontier());
            writer.exert();
        }
    })
}

/// The key's row in the arrangement (its value with a positive count). Keys must be asked in
/// ascending order of one cursor: the cursor only moves forward.
fn current_row<C>(cursor: &mut C, storage: &C::Storage, key: u128) -> Option<Candidate>
where
    C: for<'a> Cursor<Key<'a> = &'a u128, Val<'a> = &'a Candidate, DiffGat<'a> = &'a isize>,
{
    cursor.seek_key(storage, &key);
    if cursor.get_key(storage) != Some(&key) {
        return None;
    }
    let mut current = None;
    while let Some(row) = cursor.get_val(storage) {
        let mut count = 0;
        cursor.map_times(storage, |_, diff| count += *diff);
        if count > 0 {
            current = Some(row.clone());
        }
        cursor.step_val(storage);
    }
    current
}

/// Rows whose `rating_date` is before `frozen_before` leave the arrangement at `time`: every
/// later record is ingested on the settled day or after, so it would be a late update for them.
/// Their keys stay in `frozen` (an `event_id` and a date instead of a whole row), so such a record
/// is still rejected rather than starting a second row.
///
/// `updates` is this epoch's batch, sorted by `(key, row)` with at most one insertion (the key's
/// new row) per key, and stays so: a row that freezes in the epoch that wrote it is not inserted,
/// any other freezing row is retracted, merged in at its place. Both walks go forward through
/// sorted keys, so freezing costs a pass over the batch and a cursor seek per frozen key, not a
/// hash of the batch and a sort. Returns how many rows leave the arrangement (retracted or not
/// inserted).
fn freeze(
    frozen_before: i32,
    live_days: &mut BTreeMap<i32, Vec<u128>>,
    frozen: &mut KeyMap<i32>,
    updates: &mut Vec<((u128, Candidate), u64, isize)>,
    state: &mut TraceAgent<UpsertSpine>,
    time: u64,
) -> i64 {
    let mut expired: Vec<(u128, i32)> = Vec::new();
    while let Some(entry) = live_days.first_entry().filter(|entry| *entry.key() < frozen_before) {
        let (day, keys) = entry.remove_entry();
        expired.reserve(keys.len());
        expired.extend(keys.into_iter().map(|key| (key, day)));
    }
    if expired.is_empty() {
        return 0;
    }
    expired.sort_unstable();
    expired.dedup();
    let (mut cursor, storage) = state.cursor();
    // Insertions of this epoch that freeze at once, and retractions of older rows, by key.
    let mut not_inserted = vec![false; updates.len()];
    let mut retractions = Vec::new();
    let mut next = 0;
    for (key, day) in expired {
        // A key's row after this epoch: its insertion in this batch, else the arrangement's.
        while next < updates.len() && updates[next].0.0 < key {
            next += 1;
        }
        let inserted = (next..updates.len()).take_while(|&i| updates[i].0.0 == key).find(|&i| updates[i].2 > 0);
        match inserted {
            Some(index) => {
                if updates[index].0.1.rating_date == day && !not_inserted[index] {
                    frozen.insert(key, day);
                    not_inserted[index] = true;
                }
            }
            None => {
                if let Some(row) = current_row(&mut cursor, &storage, key).filter(|row| row.rating_date == day) {
                    frozen.insert(key, day);
                    retractions.push(((key, row), time, -1));
                }
            }
        }
    }
    // Merge: retractions are for keys without an entry in the batch, in key order. Rows leaving
    // are counted where the batch changes, so the count is what the arrangement loses.
    let mut merged = Vec::with_capacity(updates.len() + retractions.len());
    let mut retractions = retractions.into_iter().peekable();
    let mut left = 0;
    for (update, skip) in updates.drain(..).zip(not_inserted) {
        while let Some(retraction) = retractions.next_if(|r| r.0 < update.0) {
            merged.push(retraction);
            left += 1;
        }
        if skip {
            left += 1;
        } else {
            merged.push(update);
        }
    }
    for retraction in retractions {
        merged.push(retraction);
        left += 1;
    }
    *updates = merged;
    left
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use timely::dataflow::InputHandle;
    use timely::dataflow::operators::probe::Handle as ProbeHandle;
    use timely::dataflow::operators::{Inspect, Probe};

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
            as_ingested: None,
        }
    }

    /// Plain oracle: sort all candidates of a key by ingestion order, then fold.
    fn oracle(all: &[(u128, Candidate)], lateness: i32) -> Checkpoint {
        let mut by_key: BTreeMap<u128, Vec<&Candidate>> = BTreeMap::new();
        for (key, c) in all {
            by_key.entry(*key).or_default().push(c);
        }
        let (mut current, mut late_set) = (BTreeMap::new(), BTreeSet::new());
        for (key, mut list) in by_key {
            list.sort();
            list.dedup();
            let (winner, late) = fold(list.iter().copied(), lateness);
            if let Some(row) = winner {
                current.insert(key, row.clone());
            }
            late_set.extend(late.into_iter().map(|(c, _)| (key, c.clone())));
        }
        (current, late_set)
    }

    /// The current row per key, and every late update reported so far.
    type Checkpoint = (BTreeMap<u128, Candidate>, BTreeSet<(u128, Candidate)>);

    /// Runs the operator on `workers` workers, one epoch per element of `epochs` (epoch 0: seeds),
    /// and returns after each epoch the rows its changes add up to and the late updates so far.
    /// `settled[t]`: the settled ingestion day after epoch `t` (`None`: nothing freezes).
    fn run(epochs: Vec<Vec<(u128, Candidate)>>, settled: Vec<Option<i32>>, workers: usize) -> Vec<Checkpoint> {
        run_counting(epochs, settled, workers, Arc::default())
    }

    fn run_counting(
        epochs: Vec<Vec<(u128, Candidate)>>,
        settled: Vec<Option<i32>>,
        workers: usize,
        counters: Arc<UpsertCounters>,
    ) -> Vec<Checkpoint> {
        let count = epochs.len();
        // Epoch 0's rows are the table's: the operator reports no change for them.
        let seeds: BTreeMap<u128, Candidate> = epochs[0].iter().cloned().collect();
        let seen: Arc<Mutex<Vec<(u64, UpsertChange)>>> = Arc::default();
        let sink = seen.clone();
        timely::execute(timely::Config::process(workers), move |worker| {
            let (sink, epochs, settled, counters) = (sink.clone(), epochs.clone(), settled.clone(), counters.clone());
            let probe = ProbeHandle::new();
            let mut input = InputHandle::new();
            worker.dataflow::<u64, _, _>(|scope| {
                upsert(input.to_stream(scope), 5, move |epoch| settled.get(epoch as usize).copied().flatten(), counters)
                    .inspect_time(move |time, change| sink.lock().unwrap().push((*time, change.clone())))
                    .probe_with(&probe);
            });
            for (epoch, records) in epochs.into_iter().enumerate() {
                // Every worker feeds its share; the exchange brings each key to its owner.
                for record in records.into_iter().skip(worker.index()).step_by(worker.peers()) {
                    input.send(record);
                }
                input.advance_to(epoch as u64 + 1);
                worker.step_while(|| probe.less_than(input.time()));
            }
        })
        .unwrap();
        let seen = seen.lock().unwrap();
        let (mut current, mut late) = (seeds, BTreeSet::new());
        let mut checkpoints = Vec::new();
        for epoch in 0..count as u64 {
            for (_, change) in seen.iter().filter(|(time, _)| *time == epoch) {
                match change {
                    UpsertChange::Key(KeyChange { key, old, new }) => {
                        assert_eq!(current.get(key).map(|c| Candidate { origin: Origin::Input, ..c.clone() }), old.clone().map(|c| Candidate { origin: Origin::Input, ..c }), "old row of {key}");
                        match new {
                            Some(row) => current.insert(*key, row.clone()),
                            None => current.remove(key),
                        };
                    }
                    UpsertChange::LateUpdate { key, record, .. } => assert!(late.insert((*key, record.clone())), "late update reported twice"),
                }
            }
            checkpoints.push((current.clone(), late.clone()));
        }
        checkpoints
    }

    #[test]
    fn upsert_matches_oracle_after_every_epoch() {
        for seed in 0..8u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut epochs: Vec<Vec<(u128, Candidate)>> = vec![Vec::new()];
            epochs.extend((0..6).map(|epoch| {
                (0..40).map(|i| (rng.random_range(0..25u128), random_candidate(&mut rng, epoch * 40 + i))).collect::<Vec<_>>()
            }));
            // Duplicates are idempotent: records delivered twice within an epoch, and a later
            // epoch delivering a key's current row again.
            let again: Vec<_> = epochs[2].iter().take(5).cloned().collect();
            epochs[2].extend(again);
            let (current, _) = oracle(&epochs.concat()[..epochs[..4].concat().len()], 5);
            epochs[4].extend(current.into_iter().take(3));
            let checkpoints = run(epochs.clone(), vec![None; epochs.len()], 1 + seed as usize % 2);
            let mut prefix = Vec::new();
            for (epoch, batch) in epochs.iter().enumerate() {
                prefix.extend(batch.iter().cloned());
                assert_eq!(checkpoints[epoch], oracle(&prefix, 5), "seed {seed}, epoch {epoch}");
            }
            assert!(!checkpoints.last().unwrap().1.is_empty(), "seed {seed}: no late update exercised");

            // Rows freeze (leave the arrangement) once the settled day passes their date by the
            // lateness: later records of their keys are late updates, exactly as the full fold
            // says. (Without the re-delivered rows: those were ingested before the settled day.)
            epochs[4].truncate(40);
            // A new key whose row is behind the settled day already when it is written: it
            // freezes in the epoch that inserts it.
            let last = epochs.last().unwrap().last().unwrap().1.clone();
            let rating_timestamp = last.position.ingestion_ts_ms / 1000 - 6 * 86_400;
            let behind = Candidate {
                position: IngestPosition { offset: last.position.offset + 1, ..last.position },
                rating_timestamp,
                rating_date: crate::model::day_of_seconds(rating_timestamp),
                ..last
            };
            epochs.last_mut().unwrap().push((1_000, behind));
            let mut newest = i32::MIN;
            let settled: Vec<Option<i32>> = epochs
                .iter()
                .map(|batch| {
                    newest = batch.iter().map(|(_, c)| c.position.ingestion_date()).fold(newest, i32::max);
                    (newest > i32::MIN).then_some(newest)
                })
                .collect();
            let counters = Arc::new(UpsertCounters::default());
            let checkpoints = run_counting(epochs.clone(), settled.clone(), 1 + seed as usize % 2, counters.clone());
            let mut prefix = Vec::new();
            for (epoch, batch) in epochs.iter().enumerate() {
                prefix.extend(batch.iter().cloned());
                assert_eq!(checkpoints[epoch], oracle(&prefix, 5), "frozen: seed {seed}, epoch {epoch}");
            }
            // Frozen rows have left the arrangement: it holds exactly the rows not behind the last
            // settled day by more than the lateness.
            let frozen_before = settled.last().copied().flatten().unwrap() - 5;
            let (current, _) = oracle(&prefix, 5);
            let live = current.values().filter(|row| row.rating_date >= frozen_before).count();
            assert!(live < current.len(), "seed {seed}: no row froze");
            assert_eq!(counters.held.load(Relaxed), live as i64, "seed {seed}: rows held after freezing");
        }
    }

    #[test]
    fn a_seed_replaced_by_the_same_values_is_no_change() {
        let seed = random_candidate(&mut ChaCha8Rng::seed_from_u64(1), 3);
        let seed = Candidate { origin: Origin::Seed, ..seed };
        let same = Candidate { origin: Origin::Input, ..seed.clone() };
        let moved = Candidate {
            position: IngestPosition { offset: 4, ..seed.position },
            rating_timestamp: seed.rating_timestamp + 86_400,
            rating_date: seed.rating_date + 1,
            origin: Origin::Input,
            ..seed.clone()
        };
        let checkpoints = run(vec![vec![(7, seed.clone())], vec![(7, same)], vec![(7, moved.clone())]], vec![None; 3], 1);
        // Epoch 1 re-derives the same row: no change is reported; epoch 2 moves it.
        assert_eq!(checkpoints[1].0, BTreeMap::from([(7, seed)]));
        assert_eq!(checkpoints[2].0, BTreeMap::from([(7, moved)]));
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
            as_ingested: None,
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
        assert_eq!(late, vec![(&six_days_later, base.rating_date)]);
    }
}
