//! The upsert: the latest row per key, held in a differential arrangement cut by partition day.
//!
//! ```text
//!  Candidates batches ── exchange(owner of their keys) ──► per epoch, once the frontier passes it:
//!  (+ seeds: key, Slot)    sort the epoch's (key, slot, row) by key, then ingestion order
//!     per key: current slot (a cursor per batch of every live day) + the epoch's candidates ─ fold ─► winner, late
//!     per changed day a batch (-old slot in the old row's day, +winner in its own) into that day's spine
//!     days behind the settled date by more than the lateness: their spines leave whole, keys to `frozen`
//!        │ per partition: the keys whose row leaves it, the new rows (gathered from the epoch's
//!        │ batches into one batch per partition); late updates, as ingested
//!        ▼
//! ```
//!
//! The arrangement (module `live_days`: an `OrdValSpine<key, Slot>` per live partition day) holds
//! exactly one [`Slot`] per key: order value, ingestion position, partition and a fingerprint of
//! the row, never the row itself (it lives in the epoch's batch until written, then in its data
//! file; the curated writer knows where). Each epoch costs a sort of its own candidates and one
//! forward pass over the arrangement, a seek per key of the epoch in every batch of every live
//! day. Partitions whose day falls behind the settled ingestion date (see
//! [`crate::sink::EpochMeta`]) by more than the lateness leave the arrangement after that pass, as
//! they leave the curated writer's memory: their day's spine is read once in key order and dropped.
//! Every later record of such a key would be a late update, and it still is, because the key stays
//! behind with its day (20 bytes in [`frozen`]'s sorted runs instead of a slot).
//!
//! Semantics, per key, folding candidates in ingestion order ([`Slot`]'s `Ord`):
//! - The winner is the candidate with the greatest `(order value, ingestion position, origin)`:
//!   the latest wins, ties go to the later ingested record, and a re-processed record replaces its
//!   reloaded copy (so changed rules re-derive the row). Exact duplicates (the same record twice)
//!   are idempotent.
//! - Late update: once the current row's day is older than `ingestion_date - lateness`
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
//!   re-processed record: same position, same fingerprint) replaces it in the arrangement but is
//!   no change for the table. Only there is a fingerprint compared, so a record's is computed
//!   there, from its row, and not for every record: a stream never meets a record it committed
//!   (it resumes after the committed offsets), a replay only where it runs again over committed
//!   dates. The first such meeting in an epoch hashes that candidate batch's rows at once.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use arrow::array::RecordBatch;
use differential_dataflow::trace::implementations::ord_neu::{OrdValSpine, RcOrdValBuilder};
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use crate::error::Context;
use crate::model::Origin;
use crate::records::{Batch, Candidates, Slot};
use crate::sink::Failure;
use crate::stash::EpochStash;

mod frozen;
mod key_buckets;
mod live_days;
use frozen::FrozenKeys;
use key_buckets::KeyBuckets;
use live_days::LiveDays;

/// The arrangement of current slots.
pub type UpsertSpine = OrdValSpine<u128, Slot, u64, isize>;
type UpsertBuilder = RcOrdValBuilder<u128, Slot, u64, isize>;

/// What enters the upsert.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum UpsertInput {
    /// Rows of an epoch whose keys worker `owner` holds.
    Rows { owner: u64, candidates: Candidates },
    /// A key's row already in the table (epoch 0).
    Seed { key: u128, slot: Slot },
}

/// What the upsert emits per epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum UpsertChange {
    /// The key's row leaves partition `day` (superseded, or moved to another partition).
    Remove { day: i32, key: u128 },
    /// New rows of partition `day` (curated columns, then lineage), one per key of `keys`.
    Insert { day: i32, keys: Vec<u128>, rows: Batch },
    /// Records that arrived after their key's row froze: their keys, their rows, what they said
    /// as ingested that the rows do not (see [`Candidates::ingested`]), and per record the
    /// partition its key's row is frozen in.
    LateUpdates { keys: Vec<u128>, rows: Batch, ingested: Batch, frozen_days: Vec<i32> },
}

/// Counters of what the upsert did, summed over workers.
#[derive(Debug, Default)]
pub struct UpsertCounters {
    pub inserted: AtomicU64,
    pub updated: AtomicU64,
    pub moved: AtomicU64,
    /// Candidates ingested before the key's current row (see the module doc).
    pub out_of_order: AtomicU64,
    /// Slots the arrangement holds now: one per key, less the keys whose row froze.
    pub held: AtomicI64,
}

/// The fold over one key's candidates, given in ingestion order. Returns the winner and the records
/// rejected as late updates, each with the day of the frozen row it met.
pub fn fold<'a, T>(candidates: impl IntoIterator<Item = (&'a Slot, T)>, lateness_days: i32) -> (Option<(&'a Slot, T)>, Vec<(T, i32)>) {
    let mut current: Option<(&Slot, T)> = None;
    let mut late = Vec::new();
    for (candidate, tag) in candidates {
        current = match current {
            None => Some((candidate, tag)),
            Some((row, row_tag)) => {
                let frozen_before = candidate.position.ingestion_date() - lateness_days;
                if candidate.origin == Origin::Input && row.day < frozen_before {
                    late.push((tag, row.day));
                    Some((row, row_tag))
                } else if candidate.beats(row) {
                    Some((candidate, tag))
                } else {
                    Some((row, row_tag))
                }
            }
        };
    }
    (current, late)
}

/// The fingerprint of row `row` of candidate batch `batch`: its first `row_values` columns hashed
/// ([`crate::records::fingerprints`]), the whole batch's at its first use (a replay run again over
/// committed dates meets nearly every row of it).
fn row_fingerprint(batches: &[Candidates], prints: &mut [Option<Vec<u64>>], row_values: usize, batch: u32, row: u32) -> crate::Result<u64> {
    let (batch, row) = (batch as usize, row as usize);
    let batch_prints = match &mut prints[batch] {
        Some(computed) => computed,
        unknown @ None => {
            let rows = &batches[batch].rows;
            let columns = rows.columns().get(..row_values).ok_or_else(|| {
                crate::Error::Internal(format!("candidate rows have {} columns, the fingerprint hashes {row_values}", rows.num_columns()))
            })?;
            unknown.insert(crate::records::fingerprints(columns)?)
        }
    };
    Ok(batch_prints[row])
}

/// Which worker holds a key: UUIDs and xxh3 hashes have their bits spread already.
pub fn route(key: u128) -> u64 {
    (key ^ (key >> 64)) as u64
}

/// Where a candidate of the epoch sits: (batch, row), or the arrangement's current slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Current,
    Seed,
    Row(u32, u32),
}

/// Maintains the current slot per key (epoch 0: the seeds) and emits each epoch's changes.
///
/// `row_values`: how many leading columns of the candidates' rows a slot's fingerprint hashes
/// ([`crate::records::fingerprinted_columns`]).
pub fn upsert<'scope>(
    input: StreamVec<'scope, u64, UpsertInput>,
    lateness_days: i32,
    row_values: usize,
    settled_day: impl Fn(u64) -> Option<i32> + 'static,
    counters: Arc<UpsertCounters>,
    failure: Failure,
) -> StreamVec<'scope, u64, UpsertChange> {
    let scope = input.scope();
    let exchange = Exchange::new(|input: &UpsertInput| match input {
        UpsertInput::Rows { owner, .. } => *owner,
        UpsertInput::Seed { key, .. } => route(*key),
    });
    input.unary_frontier(exchange, "Upsert", move |_capability, info| {
        let logger = scope.worker().logger_for::<differential_dataflow::logging::DifferentialEventBuilder>("differential/arrange").map(Into::into);
        let activator = scope.activator_for(Rc::clone(&info.address));
        let mut live = LiveDays::new(info, logger, activator, lateness_days < crate::rules::Rules::LATENESS_OFF);
        let mut pending: EpochStash<UpsertInput> = EpochStash::default();
        // The keys whose row sits in a frozen partition, each with its day.
        let mut frozen = FrozenKeys::default();
        move |(input, frontier), output| {
            input.for_each_time(|time, data| pending.stash(&time, data));
            while let Some((time, capability, arrived)) = pending.pop_complete(frontier.frontier()) {
                let mut batches: Vec<Candidates> = Vec::new();
                // Per batch, its rows' fingerprints, once a record of it meets its reloaded row.
                let mut prints: Vec<Option<Vec<u64>>> = Vec::new();
                // (key, slot, where the row is), sorted by key, then ingestion order: placed in
                // buckets by key as they arrive, each sized by a count of the keys first (growing
                // vectors by doubling costs a copy and fresh pages each time), then each sorted.
                let total = arrived.iter().flatten().map(|item| match item {
                    UpsertInput::Rows { candidates, .. } => candidates.len(),
                    UpsertInput::Seed { .. } => 1,
                });
                let keys = arrived.iter().flatten().flat_map(|item| match item {
                    UpsertInput::Rows { candidates, .. } => candidates.keys.as_slice(),
                    UpsertInput::Seed { key, .. } => std::slice::from_ref(key),
                });
                let mut epoch: KeyBuckets<(u128, Slot, Source)> = KeyBuckets::for_keys(total.sum(), keys.copied());
                // Per day, the candidates rated on it: what sizes the day's batch.
                let mut per_day: Vec<(i32, usize)> = Vec::new();
                let mut count_day = |day: i32| match per_day.iter_mut().find(|(d, _)| *d == day) {
                    Some((_, count)) => *count += 1,
                    None => per_day.push((day, 1)),
                };
                for item in arrived.into_iter().flatten() {
                    match item {
                        UpsertInput::Seed { key, slot } => {
                            count_day(slot.day);
                            epoch.push(key, (key, slot, Source::Seed));
                        }
                        UpsertInput::Rows { mut candidates, .. } => {
                            let index = batches.len() as u32;
                            // Keys and slots move into the epoch's list; only the rows wait on.
                            let (keys, slots) = (std::mem::take(&mut candidates.keys), std::mem::take(&mut candidates.slots));
                            for (row, (key, slot)) in keys.into_iter().zip(slots).enumerate() {
                                count_day(slot.day);
                                epoch.push(key, (key, slot, Source::Row(index, candidates.row_of(row))));
                            }
                            batches.push(candidates);
                            prints.push(None);
                        }
                    }
                }
                // The same record twice (same key and slot) is one candidate.
                let epoch = epoch.sorted(|(key, slot, _)| (*key, *slot));
                // A key's candidates share a bucket, so grouping within buckets groups by key.
                let groups = || epoch.iter().flat_map(|bucket| bucket.chunk_by(|a, b| a.0 == b.0));
                let mut slots = live.reader();
                let mut out_of_order = 0u64;
                // Counted here and added once per epoch: the counters are shared by every worker,
                // and an atomic add per key would bounce their cache line between the cores.
                let (mut inserted_keys, mut updated_keys, mut moved_keys) = (0u64, 0u64, 0u64);
                // Slots the arrangement gains with this epoch (negative when more leave).
                let mut held = 0i64;
                let mut removed: Vec<(i32, u128)> = Vec::new();
                // Per partition: (key, batch, row) of the new rows, with room for every candidate
                // of the day (a list grown by doubling costs copies and fresh pages; room never
                // written costs no memory). Epoch 0 (the seeds) inserts nothing.
                let mut inserted: BTreeMap<i32, Vec<(u128, u32, u32)>> = match time {
                    0 => BTreeMap::new(),
                    _ => per_day.iter().map(|(day, count)| (*day, Vec::with_capacity(*count))).collect(),
                };
                // (key, batch, row, frozen day) of the late updates.
                let mut late: Vec<(u128, u32, u32, i32)> = Vec::new();
                let mut changes = live.changes(per_day);
                let mut frozen_lookup = frozen.lookup();
                for group in groups() {
                    let key = group[0].0;
                    if let Some(frozen_day) = frozen_lookup.get(key) {
                        // The row left with its partition: every later record is late for it.
                        for (_, _, source) in group {
                            if let Source::Row(batch, row) = source {
                                late.push((key, *batch, *row, frozen_day));
                            }
                        }
                        continue;
                    }
                    let current = slots.get(key);
                    // A seed preceded by re-processed records is a replay run again, not disorder.
                    if let Some(slot) = current.as_ref().filter(|slot| slot.origin == Origin::Input)
                        && group[0].1.position < slot.position
                    {
                        out_of_order += 1;
                    }
                    let candidates = current.iter().map(|slot| (slot, Source::Current)).chain(group.iter().map(|(_, slot, source)| (slot, *source)));
                    let (winner, late_here) = fold(candidates, lateness_days);
                    for (source, frozen_day) in late_here {
                        if let Source::Row(batch, row) = source {
                            late.push((key, batch, row, frozen_day));
                        }
                    }
                    let Some((winner, source)) = winner.filter(|(_, source)| *source != Source::Current) else {
                        continue;
                    };
                    let mut winner = *winner;
                    if let (Some(slot), Source::Row(batch, row)) = (&current, source)
                        && slot.origin == Origin::Seed
                        && slot.position == winner.position
                    {
                        match row_fingerprint(&batches, &mut prints, row_values, batch, row) {
                            Ok(print) => winner.fingerprint = print,
                            Err(error) => failure.set(error),
                        }
                    }
                    // Epoch 0 holds the seeds: they are what the table holds, not changes to it.
                    if time > 0 && !current.as_ref().is_some_and(|slot| slot.same_row(&winner)) {
                        match &current {
                            None => inserted_keys += 1,
                            Some(slot) if slot.day != winner.day => {
                                moved_keys += 1;
                                updated_keys += 1;
                            }
                            Some(_) => updated_keys += 1,
                        }
                        if let Some(slot) = &current {
                            removed.push((slot.day, key));
                        }
                        if let Source::Row(batch, row) = source {
                            inserted.entry(winner.day).or_default().push((key, batch, row));
                        }
                    }
                    // The old slot leaves its day's spine, the winner enters its own; within one
                    // day's batch in (key, slot) order, and the winner may sort before the old slot.
                    let new = (winner.day, ((key, winner), time, 1));
                    let old = current.map(|slot| (slot.day, ((key, slot), time, -1)));
                    held += 1 - i64::from(old.is_some());
                    let (first, second) = match old {
                        Some(old) if new.1.0 < old.1.0 => (Some(new), Some(old)),
                        old => (old, Some(new)),
                    };
                    for (day, update) in first.into_iter().chain(second) {
                        changes.push(day, update);
                    }
                }
                drop((frozen_lookup, slots));
                live.insert(changes, time);
                // Rows in partitions before `frozen_before` freeze with this epoch: their days'
                // spines leave whole, and only their keys stay behind, each with its day.
                if let Some(frozen_before) = settled_day(time).map(|settled| settled - lateness_days) {
                    for (day, keys) in live.take_before(frozen_before) {
                        held -= keys.len() as i64;
                        let days = vec![day; keys.len()];
                        frozen.extend_sorted(keys, days);
                    }
                }
                // Memory is what bounds an epoch's size: every list is freed as soon as it is done.
                drop(epoch);
                let mut session = output.session(&capability);
                for (day, key) in removed {
                    session.give(UpsertChange::Remove { day, key });
                }
                let gathered = gather(&batches, inserted, late);
                match gathered {
                    Ok((inserts, late)) => {
                        for insert in inserts {
                            session.give(insert);
                        }
                        if let Some(late) = late {
                            session.give(late);
                        }
                    }
                    Err(error) => failure.set(error),
                }
                drop(session);
                drop(batches);
                if out_of_order > 0 {
                    counters.out_of_order.fetch_add(out_of_order, Relaxed);
                    tracing::warn!(epoch = time, records = out_of_order, "records ingested before their key's current row (Kafka timestamps going backwards): the late rule followed arrival order for them");
                }
                counters.held.fetch_add(held, Relaxed);
                counters.inserted.fetch_add(inserted_keys, Relaxed);
                counters.updated.fetch_add(updated_keys, Relaxed);
                counters.moved.fetch_add(moved_keys, Relaxed);
            }
            live.compact(frontier.frontier());
        }
    })
}

/// The epoch's new rows as one batch per partition (in key order), and its late updates as
/// ingested.
fn gather(
    batches: &[Candidates],
    inserted: BTreeMap<i32, Vec<(u128, u32, u32)>>,
    late: Vec<(u128, u32, u32, i32)>,
) -> crate::Result<(Vec<UpsertChange>, Option<UpsertChange>)> {
    let rows: Vec<&RecordBatch> = batches.iter().map(|c| &c.rows).collect();
    let mut inserts = Vec::with_capacity(inserted.len());
    for (day, entries) in inserted.into_iter().filter(|(_, entries)| !entries.is_empty()) {
        let indices: Vec<(usize, usize)> = entries.iter().map(|(_, batch, row)| (*batch as usize, *row as usize)).collect();
        let batch = crate::records::interleave_rows(&rows, &indices)?;
        inserts.push(UpsertChange::Insert { day, keys: entries.iter().map(|(key, _, _)| *key).collect(), rows: Batch::new(batch) });
    }
    if late.is_empty() {
        return Ok((inserts, None));
    }
    let indices: Vec<(usize, usize)> = late.iter().map(|(_, batch, row, _)| (*batch as usize, *row as usize)).collect();
    let late_rows = crate::records::interleave_rows(&rows, &indices)?;
    // Each batch kept its own columns as ingested (those where some row differs): the late
    // updates get the union, null where a batch kept none.
    let ingested = ingested_of(batches, &indices)?;
    let frozen_days = late.iter().map(|(_, _, _, day)| *day).collect();
    let keys = late.iter().map(|(key, _, _, _)| *key).collect();
    Ok((inserts, Some(UpsertChange::LateUpdates { keys, rows: Batch::new(late_rows), ingested: Batch::new(ingested), frozen_days })))
}

/// The as-ingested columns of the rows at `indices` (batch, row): every column some batch kept.
fn ingested_of(batches: &[Candidates], indices: &[(usize, usize)]) -> crate::Result<RecordBatch> {
    let mut fields: Vec<arrow::datatypes::FieldRef> = Vec::new();
    for batch in batches {
        for field in batch.ingested.schema().fields() {
            if !fields.iter().any(|f| f.name() == field.name()) {
                fields.push(field.clone());
            }
        }
    }
    let mut columns = Vec::with_capacity(fields.len());
    for field in &fields {
        let per_batch: Vec<arrow::array::ArrayRef> = batches
            .iter()
            .map(|b| b.ingested.column_by_name(field.name()).cloned().unwrap_or_else(|| arrow::array::new_null_array(field.data_type(), b.rows.num_rows())))
            .collect();
        let refs: Vec<&dyn arrow::array::Array> = per_batch.iter().map(|a| a.as_ref()).collect();
        columns.push(arrow::compute::interleave(&refs, indices).context(|| "gathering late updates as ingested".into())?);
    }
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(indices.len()));
    RecordBatch::try_new_with_options(Arc::new(arrow::datatypes::Schema::new(fields)), columns, &options).context(|| "late updates as ingested".into())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    use arrow::array::{AsArray, Int64Array};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use timely::dataflow::InputHandle;
    use timely::dataflow::operators::probe::Handle as ProbeHandle;
    use timely::dataflow::operators::{Inspect, Probe};

    use super::*;
    use crate::model::{IngestPosition, day_of_millis};

    const DAY_MS: i64 = 86_400_000;

    /// A candidate record: its key and slot; `seq` (its offset) identifies it in the rows.
    type Record = (u128, Slot);

    fn random_record(rng: &mut ChaCha8Rng, seq: i64) -> Record {
        random_record_among(rng, seq, 25)
    }

    /// A random record of one of `keys` keys (`0..keys`).
    fn random_record_among(rng: &mut ChaCha8Rng, seq: i64, keys: u128) -> Record {
        // Ingestion moves forward ~1 day every 20 records; orders land up to 4 days before it, so
        // late updates, ties (coarse orders) and partition moves all happen.
        let ingestion_ts_ms = seq * DAY_MS / 20;
        let order = (ingestion_ts_ms / 1000 - rng.random_range(0..4) * 86_400) / 3600 * 3600;
        let slot = Slot {
            position: IngestPosition { ingestion_ts_ms, partition: rng.random_range(0..3), offset: seq },
            origin: Origin::Input,
            order,
            day: order.div_euclid(86_400) as i32,
            fingerprint: rng.random_range(0..3),
        };
        (rng.random_range(0..keys), slot)
    }

    /// The rows of `records`: the row's value (what its slot's `fingerprint` stands for in these
    /// tests, the one column the upsert hashes), then the record's offset.
    fn candidates(records: &[Record]) -> Candidates {
        let values = Int64Array::from_iter_values(records.iter().map(|(_, slot)| slot.fingerprint as i64));
        let offsets = Int64Array::from_iter_values(records.iter().map(|(_, slot)| slot.position.offset));
        let rows = RecordBatch::try_from_iter([("value", Arc::new(values) as arrow::array::ArrayRef), ("seq", Arc::new(offsets) as arrow::array::ArrayRef)]).unwrap();
        Candidates::new(rows.clone(), rows, records.iter().map(|r| r.0).collect(), records.iter().map(|r| r.1).collect())
    }

    /// A reloaded row's slot: its fingerprint hashes the row's value as the upsert hashes a
    /// candidate's row.
    fn seed(slot: Slot) -> Slot {
        let value: arrow::array::ArrayRef = Arc::new(Int64Array::from(vec![slot.fingerprint as i64]));
        Slot { origin: Origin::Seed, fingerprint: crate::records::fingerprints(&[value]).unwrap()[0], ..slot }
    }

    /// Plain oracle: sort all records of a key by ingestion order, drop exact repeats, fold.
    fn oracle(all: &[Record], lateness: i32) -> Checkpoint {
        let mut by_key: BTreeMap<u128, Vec<Slot>> = BTreeMap::new();
        for (key, slot) in all {
            by_key.entry(*key).or_default().push(*slot);
        }
        let (mut current, mut late_set) = (BTreeMap::new(), BTreeSet::new());
        for (key, mut list) in by_key {
            list.sort();
            list.dedup();
            let (winner, late) = fold(list.iter().map(|slot| (slot, slot.position.offset)), lateness);
            if let Some((slot, _)) = winner {
                current.insert(key, (slot.day, slot.position.offset));
            }
            late_set.extend(late.into_iter().map(|(offset, _)| offset));
        }
        (current, late_set)
    }

    /// Per key the day and offset of its current row, and the offsets reported late so far.
    type Checkpoint = (BTreeMap<u128, (i32, i64)>, BTreeSet<i64>);

    /// Runs the operator on `workers` workers, one epoch per element of `epochs` (epoch 0: seeds),
    /// and returns after each epoch the rows its changes add up to and the late updates so far.
    /// `settled[t]`: the settled ingestion day after epoch `t` (`None`: nothing freezes).
    fn run(epochs: Vec<Vec<Record>>, settled: Vec<Option<i32>>, workers: usize, counters: Arc<UpsertCounters>) -> Vec<Checkpoint> {
        run_with_lateness(epochs, settled, workers, counters, 5)
    }

    /// [`run`] with a lateness of `lateness` days.
    fn run_with_lateness(epochs: Vec<Vec<Record>>, settled: Vec<Option<i32>>, workers: usize, counters: Arc<UpsertCounters>, lateness: i32) -> Vec<Checkpoint> {
        let count = epochs.len();
        // Epoch 0's rows are the table's: the operator reports no change for them.
        let seeds: BTreeMap<u128, (i32, i64)> = epochs[0].iter().map(|(key, slot)| (*key, (slot.day, slot.position.offset))).collect();
        let seen: Arc<Mutex<Vec<(u64, UpsertChange)>>> = Arc::default();
        let sink = seen.clone();
        let failure = Failure::default();
        timely::execute(timely::Config::process(workers), move |worker| {
            let (sink, epochs, settled, counters, failure) = (sink.clone(), epochs.clone(), settled.clone(), counters.clone(), failure.clone());
            let probe = ProbeHandle::new();
            let mut input = InputHandle::new();
            worker.dataflow::<u64, _, _>(|scope| {
                upsert(input.to_stream(scope), lateness, 1, move |epoch| settled.get(epoch as usize).copied().flatten(), counters, failure)
                    .inspect_time(move |time, change| sink.lock().unwrap().push((*time, change.clone())))
                    .probe_with(&probe);
            });
            let peers = worker.peers() as u64;
            for (epoch, records) in epochs.into_iter().enumerate() {
                // Every worker feeds its share; each batch goes to the owner of its keys.
                let mine: Vec<Record> = records.into_iter().skip(worker.index()).step_by(worker.peers()).collect();
                if epoch == 0 {
                    for (key, slot) in mine {
                        input.send(UpsertInput::Seed { key, slot: seed(slot) });
                    }
                } else {
                    for owner in 0..peers {
                        let share: Vec<Record> = mine.iter().filter(|(key, _)| route(*key) % peers == owner).copied().collect();
                        if !share.is_empty() {
                            input.send(UpsertInput::Rows { owner, candidates: candidates(&share) });
                        }
                    }
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
            let changes: Vec<&UpsertChange> = seen.iter().filter(|(time, _)| *time == epoch).map(|(_, c)| c).collect();
            for change in &changes {
                if let UpsertChange::Remove { day, key } = change {
                    let (had, _) = current.remove(key).unwrap_or_else(|| panic!("epoch {epoch}: {key} removed without a row"));
                    assert_eq!(had, *day, "the removed row's day");
                }
            }
            for change in &changes {
                match change {
                    UpsertChange::Insert { day, keys, rows } => {
                        let offsets = rows.0.column_by_name("seq").unwrap().as_primitive::<arrow::datatypes::Int64Type>();
                        for (key, offset) in keys.iter().zip(offsets.values()) {
                            assert!(current.insert(*key, (*day, *offset)).is_none(), "epoch {epoch}: {key} inserted twice");
                        }
                    }
                    UpsertChange::LateUpdates { rows, frozen_days, .. } => {
                        let offsets = rows.0.column_by_name("seq").unwrap().as_primitive::<arrow::datatypes::Int64Type>();
                        assert_eq!(offsets.len(), frozen_days.len());
                        for offset in offsets.values() {
                            assert!(late.insert(*offset), "late update reported twice");
                        }
                    }
                    UpsertChange::Remove { .. } => {}
                }
            }
            checkpoints.push((current.clone(), late.clone()));
        }
        checkpoints
    }

    /// The settled ingestion day after each epoch: the newest ingestion date so far.
    fn settled_days(epochs: &[Vec<Record>]) -> Vec<Option<i32>> {
        let mut newest = i32::MIN;
        epochs
            .iter()
            .map(|batch| {
                newest = batch.iter().map(|(_, s)| day_of_millis(s.position.ingestion_ts_ms)).fold(newest, i32::max);
                (newest > i32::MIN).then_some(newest)
            })
            .collect()
    }

    /// Runs `epochs` through the upsert (lateness `lateness` days) and asserts after each epoch that
    /// its rows and late updates are the oracle's over every record so far; returns those
    /// checkpoints.
    fn each_epoch_matches_the_oracle(
        epochs: &[Vec<Record>],
        settled: Vec<Option<i32>>,
        workers: usize,
        counters: Arc<UpsertCounters>,
        what: &str,
        lateness: i32,
    ) -> Vec<Checkpoint> {
        let checkpoints = run_with_lateness(epochs.to_vec(), settled, workers, counters, lateness);
        let mut prefix = Vec::new();
        for (epoch, batch) in epochs.iter().enumerate() {
            prefix.extend(batch.iter().copied());
            assert_eq!(checkpoints[epoch], oracle(&prefix, lateness), "{what}, epoch {epoch}");
        }
        checkpoints
    }

    #[test]
    fn upsert_matches_the_oracle_after_every_epoch_with_and_without_freezing() {
        for seed in 0..8u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut epochs: Vec<Vec<Record>> = vec![Vec::new()];
            epochs.extend((0..6).map(|epoch| (0..40).map(|i| random_record(&mut rng, epoch * 40 + i)).collect::<Vec<_>>()));
            // Duplicates are idempotent: records delivered twice within an epoch.
            let again: Vec<_> = epochs[2].iter().take(5).copied().collect();
            epochs[2].extend(again);
            let workers = 1 + seed as usize % 2;
            let checkpoints = each_epoch_matches_the_oracle(&epochs, vec![None; epochs.len()], workers, Arc::default(), &format!("seed {seed}"), 5);
            assert!(!checkpoints.last().unwrap().1.is_empty(), "seed {seed}: no late update exercised");

            // Slots freeze (leave the arrangement) once the settled day passes their day by the
            // lateness: later records of their keys are late updates, exactly as the full fold
            // says. A new key whose row is behind the settled day already freezes in the epoch
            // that inserts it.
            let (_, last) = *epochs.last().unwrap().last().unwrap();
            let order = last.position.ingestion_ts_ms / 1000 - 6 * 86_400;
            let behind = Slot { position: IngestPosition { offset: last.position.offset + 1, ..last.position }, order, day: order.div_euclid(86_400) as i32, ..last };
            epochs.last_mut().unwrap().push((1_000, behind));
            // Keys no later epoch touches freeze too: some between the keys later epochs do
            // touch, some after all of them.
            let quiet: Vec<Record> = (0..12u128)
                .map(|i| {
                    let base = epochs[1][i as usize].1;
                    let key = if i % 2 == 0 { 500 + i } else { 2_000 + i };
                    (key, Slot { position: IngestPosition { offset: 10_000 + i as i64, ..base.position }, ..base })
                })
                .collect();
            epochs[1].extend(quiet);
            let settled = settled_days(&epochs);
            let counters = Arc::new(UpsertCounters::default());
            each_epoch_matches_the_oracle(&epochs, settled.clone(), workers, counters.clone(), &format!("frozen: seed {seed}"), 5);
            let frozen_before = settled.last().copied().flatten().unwrap() - 5;
            let (current, _) = oracle(&epochs.concat(), 5);
            let live = current.values().filter(|(day, _)| *day >= frozen_before).count();
            assert!(live < current.len(), "seed {seed}: no row froze");
            assert_eq!(counters.held.load(Relaxed), live as i64, "seed {seed}: slots held after freezing");
        }
    }

    #[test]
    fn with_lateness_off_nothing_freezes_and_every_row_stays_held() {
        for seed in 0..4u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut epochs: Vec<Vec<Record>> = vec![Vec::new()];
            epochs.extend((0..6).map(|epoch| (0..40).map(|i| random_record(&mut rng, epoch * 40 + i)).collect::<Vec<_>>()));
            let settled = settled_days(&epochs);
            let lateness = crate::rules::Rules::LATENESS_OFF;
            let counters = Arc::new(UpsertCounters::default());
            each_epoch_matches_the_oracle(&epochs, settled, 1 + seed as usize % 2, counters.clone(), &format!("seed {seed}"), lateness);
            let (current, late) = oracle(&epochs.concat(), lateness);
            assert!(late.is_empty(), "seed {seed}: no record is late without a lateness");
            assert_eq!(counters.held.load(Relaxed), current.len() as i64, "seed {seed}: every row stays held");
            let days: BTreeSet<i32> = current.values().map(|(day, _)| *day).collect();
            assert!(days.len() >= 3, "seed {seed}: rows over several days");
        }
    }

    #[test]
    fn upsert_matches_the_oracle_on_spread_keys_sorted_in_many_buckets() {
        // UUID-like keys (an odd multiplier spreads 0..3000 over all 128 bits, one to one) and
        // epochs of thousands of candidates, so the epoch is sorted in many key buckets.
        let spread = |key: u128| key.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        for seed in 0..4u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut epochs: Vec<Vec<Record>> = vec![Vec::new()];
            epochs.extend((0..4).map(|epoch| {
                (0..6_000).map(|i| random_record_among(&mut rng, epoch * 6_000 + i, 3_000)).map(|(key, slot)| (spread(key), slot)).collect::<Vec<_>>()
            }));
            let again: Vec<_> = epochs[2].iter().take(50).copied().collect();
            epochs[2].extend(again);
            let workers = 1 + seed as usize % 2;
            each_epoch_matches_the_oracle(&epochs, vec![None; epochs.len()], workers, Arc::default(), &format!("seed {seed}"), 5);
        }
    }

    #[test]
    fn a_seed_reprocessed_with_the_same_values_is_no_change_and_with_other_values_an_update() {
        let (key, slot) = random_record(&mut ChaCha8Rng::seed_from_u64(1), 3);
        let same = Arc::new(UpsertCounters::default());
        run(vec![vec![(key, slot)], vec![(key, slot)]], vec![None; 2], 1, same.clone());
        assert_eq!((same.inserted.load(Relaxed), same.updated.load(Relaxed)), (0, 0), "the same row again is no change");
        // Rules that changed since the row was written derive other values from the same record.
        let rederived = Slot { fingerprint: slot.fingerprint + 1, ..slot };
        let changed = Arc::new(UpsertCounters::default());
        let checkpoints = run(vec![vec![(key, slot)], vec![(key, rederived)]], vec![None; 2], 1, changed.clone());
        assert_eq!(changed.updated.load(Relaxed), 1, "a re-derived row replaces the reloaded one");
        assert_eq!(checkpoints[1].0[&key], (slot.day, slot.position.offset));
    }

    #[test]
    fn ties_go_to_the_later_ingested_record_and_late_updates_keep_the_frozen_row() {
        let base = Slot {
            position: IngestPosition { ingestion_ts_ms: 10 * DAY_MS, partition: 0, offset: 1 },
            origin: Origin::Seed,
            order: 10 * 86_400,
            day: 10,
            fingerprint: 0,
        };
        let reprocessed = Slot { origin: Origin::Input, ..base };
        let (winner, late) = fold([(&base, 0), (&reprocessed, 1)], 5);
        assert_eq!(winner.map(|w| w.1), Some(1), "a re-processed record replaces its reloaded row");
        assert!(late.is_empty());
        let tie_later = Slot { position: IngestPosition { offset: 2, ..base.position }, origin: Origin::Input, ..base };
        let older = Slot { position: IngestPosition { offset: 3, ..base.position }, order: base.order - 1, origin: Origin::Input, ..base };
        let (winner, _) = fold([(&base, 0), (&tie_later, 1), (&older, 2)], 5);
        assert_eq!(winner.map(|w| w.1), Some(1));
        let six_days_later = Slot {
            position: IngestPosition { ingestion_ts_ms: 16 * DAY_MS, partition: 0, offset: 9 },
            order: 16 * 86_400,
            day: 16,
            origin: Origin::Input,
            fingerprint: 0,
        };
        let (winner, late) = fold([(&base, 0), (&six_days_later, 1)], 5);
        assert_eq!(winner.map(|w| w.1), Some(0));
        assert_eq!(late, vec![(1, base.day)]);
    }
}
