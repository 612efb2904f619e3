//! The curated writer: merge-on-read at row granularity, so a commit's cost follows the change,
//! not the table.
//!
//! Every curated partition lives on one worker (changes are exchanged by day), which holds
//! where each of the partition's live rows sits (data file and row position, by key), plus the
//! partition's live data and position delete files. The rows themselves arrive once, as the
//! epoch's batch of the partition's new rows, and are written at once.
//! When an epoch completes:
//!
//! - a **new key** is written into a new data file; no old file is touched;
//! - an **update** (a key's row superseded, possibly moving to another day) marks the old row
//!   deleted: one Iceberg v2 position delete file per changed partition lists `(file, position)`
//!   of the epoch's superseded rows, and the new row goes into the new data file. Old data files
//!   are never rewritten for an update, so an epoch on a 20M-row table costs about what it costs
//!   on an empty one;
//! - a **duplicate** (the same values again) is no change at all (the net-change stage drops it);
//! - a changed partition holding `compact_after_files` files or more (data and delete files,
//!   graph: `maintenance.compact_after_files`) is **compacted** in the same commit: its live rows
//!   (read back from its data files: a row is live where the partition says its key sits) are
//!   written into files near the target size and every old data and delete file of the partition
//!   is removed. Doing it here, in the one place that knows where each row is, means
//!   curated compaction never conflicts with the pipeline's own commits; `runtime maintain`
//!   compacts what the pipeline no longer writes.
//!
//! Epoch 0 carries the seeds: the keys of the curated rows inside the lateness window, each with
//! its data file and position, and every live file of those partitions; they only build the state.
//! Partitions older than `settled ingestion date - lateness` can no longer change and leave
//! memory, which therefore follows the lateness window and not the table's history. The settled
//! date is the one every later record is ingested on or after ([`crate::sink::EpochMeta`]): in
//! stream mode the earliest of the partitions' newest dates, because a partition that lags the
//! others by days still sends updates that move rows out of partitions the others left behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use iceberg::table::Table;
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;

use crate::checks::{Checks, Evaluation};
use crate::model::RejectReason;
use crate::pipeline::Pipeline;
use crate::records::{Batch, PrintedKey, rejected_batch};
use crate::sink::row_index::RowIndex;
use crate::sink::{EpochLog, Failure, FileDescription, SinkMessage, WorkerEvaluation};
use crate::stash::EpochStash;
use crate::error::Context;
use crate::writer::{read_parquet, write_partition, write_position_deletes};

/// Where a curated row sits: its data file and its position in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub file: Arc<str>,
    pub pos: u32,
}

/// One change to one curated partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DayChange {
    /// A row already in the table: where it is (epoch 0).
    Seed { day: i32, key: u128, at: Location },
    /// A live file of a partition in the window: a data file, or a position delete file (epoch 0).
    SeedFile { day: i32, path: Arc<str>, deletes: bool },
    /// The key's row leaves the partition.
    Remove { day: i32, key: u128 },
    /// New rows enter the partition: one per key, curated columns then lineage.
    Insert { day: i32, keys: Vec<u128>, rows: Batch },
}

impl DayChange {
    pub fn day(&self) -> i32 {
        match self {
            DayChange::Seed { day, .. }
            | DayChange::SeedFile { day, .. }
            | DayChange::Remove { day, .. }
            | DayChange::Insert { day, .. } => *day,
        }
    }
}

pub struct CuratedWriter {
    pub table: Table,
    pub runtime: tokio::runtime::Handle,
    pub target_file_size: usize,
    pub worker: usize,
    pub failure: Failure,
    /// Ingestion dates of each epoch.
    pub epochs: EpochLog,
    pub lateness_days: i32,
    /// The curated table's data-quality checks, run on every batch before it is written.
    pub checks: Arc<Checks>,
    /// The topic quarantined rows are attributed to in the rejected table.
    pub topic: Arc<str>,
    /// A changed partition holding at least this many files has all of them rewritten.
    pub compact_after_files: Option<usize>,
    pub pipeline: Arc<Pipeline>,
    /// The rejected table's Arrow schema (rows a check quarantines go there).
    pub rejected_schema: SchemaRef,
    /// A UUID key's column, which new rows arrive without and rows read back are stripped of
    /// until they are written.
    pub printed_key: Option<PrintedKey>,
}

/// What the checks made of one epoch on one worker.
struct Judged {
    evaluation: Evaluation,
    newest_ingestion_ms: Option<i64>,
    quarantined: Vec<RecordBatch>,
}

/// A partition's new rows: one batch per source, each row with its key.
type NewRows = Vec<(Vec<u128>, RecordBatch)>;

/// Data file paths, interned: rows refer to their file by a 4-byte id.
#[derive(Default)]
struct Files {
    paths: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
}

impl Files {
    fn id(&mut self, path: &Arc<str>) -> u32 {
        if let Some(id) = self.ids.get(path) {
            return *id;
        }
        let id = self.paths.len() as u32;
        self.paths.push(path.clone());
        self.ids.insert(path.clone(), id);
        id
    }
}

/// Where each of a partition's live rows sits (file id, position), and the ids of its live data
/// and position delete files.
#[derive(Default)]
struct Partition {
    rows: RowIndex,
    data_files: BTreeSet<u32>,
    delete_files: BTreeSet<u32>,
}

impl CuratedWriter {
    pub fn build<'scope>(self, changes: StreamVec<'scope, u64, DayChange>) -> StreamVec<'scope, u64, SinkMessage> {
        let exchange = Exchange::new(|change: &DayChange| change.day() as u64);
        changes.unary_frontier(exchange, "CuratedWriter", move |_capability, _info| {
            let mut partitions: BTreeMap<i32, Partition> = BTreeMap::new();
            let mut files = Files::default();
            let mut pending: EpochStash<DayChange> = EpochStash::default();
            move |(input, frontier), output| {
                input.for_each_time(|time, data| pending.stash(&time, data));
                while let Some((time, capability, changes)) = pending.pop_complete(frontier.frontier()) {
                    // Per partition: (file id, position) of the rows this epoch supersedes.
                    let mut superseded: BTreeMap<i32, Vec<(u32, u32)>> = BTreeMap::new();
                    let mut touched: BTreeSet<i32> = BTreeSet::new();
                    // Removes before inserts: a key updated within one partition is both.
                    let mut inserts: BTreeMap<i32, NewRows> = BTreeMap::new();
                    for change in changes.into_iter().flatten() {
                        match change {
                            DayChange::Seed { day, key, at } => {
                                let id = files.id(&at.file);
                                let partition = partitions.entry(day).or_default();
                                partition.rows.add_reloaded(key, id, at.pos);
                                partition.data_files.insert(id);
                            }
                            DayChange::SeedFile { day, path, deletes } => {
                                let id = files.id(&path);
                                let partition = partitions.entry(day).or_default();
                                if deletes { partition.delete_files.insert(id) } else { partition.data_files.insert(id) };
                            }
                            DayChange::Remove { day, key } => {
                                if let Some(at) = partitions.get_mut(&day).and_then(|p| p.rows.remove(key)) {
                                    touched.insert(day);
                                    superseded.entry(day).or_default().push(at);
                                }
                            }
                            DayChange::Insert { day, keys, rows } => inserts.entry(day).or_default().push((keys, rows.0)),
                        }
                    }
                    if time == 0 {
                        for partition in partitions.values_mut() {
                            partition.rows.seal_reloaded();
                        }
                        continue;
                    }
                    touched.extend(inserts.keys().copied());
                    if self.failure.is_set() {
                        continue;
                    }
                    let mut session = output.session(&capability);
                    let mut judged = Judged {
                        evaluation: Evaluation::new(self.checks.clone()),
                        newest_ingestion_ms: None,
                        quarantined: Vec::new(),
                    };
                    for day in touched {
                        let partition = partitions.entry(day).or_default();
                        let compact = self
                            .compact_after_files
                            .is_some_and(|limit| partition.data_files.len() + partition.delete_files.len() >= limit);
                        let deletes = superseded.remove(&day).unwrap_or_default();
                        let new_rows = inserts.remove(&day).unwrap_or_default();
                        match self.write_day(day, partition, compact, deletes, new_rows, &mut files, &mut judged) {
                            Ok(messages) => {
                                for message in messages {
                                    session.give(message);
                                }
                            }
                            Err(error) => {
                                self.failure.set(error);
                                break;
                            }
                        }
                    }
                    if !self.checks.is_empty() {
                        for rejected in judged.quarantined {
                            session.give(SinkMessage::Rejected(Batch::new(rejected)));
                        }
                        session.give(SinkMessage::Checked(WorkerEvaluation {
                            evaluation: judged.evaluation.into_state(),
                            newest_ingestion_ms: judged.newest_ingestion_ms,
                        }));
                    }
                    if let Some(settled) = self.epochs.settled_day(time) {
                        // Later records are ingested on `settled` or after: a row in an older
                        // partition is late for every one of them, so those partitions cannot change.
                        let frozen_before = settled - self.lateness_days;
                        partitions.retain(|&day, _| day >= frozen_before);
                    }
                }
            }
        })
    }

    /// Lands one changed partition: its new rows in new data files, the rows this epoch
    /// superseded (`deletes`) in a position delete file; or, when `compact`, every live row in new
    /// files with all old files removed. Returns the messages for the committer.
    #[allow(clippy::too_many_arguments)]
    fn write_day(
        &self,
        day: i32,
        partition: &mut Partition,
        compact: bool,
        deletes: Vec<(u32, u32)>,
        mut rows: NewRows,
        files: &mut Files,
        judged: &mut Judged,
    ) -> crate::Result<Vec<SinkMessage>> {
        let mut messages = Vec::new();
        if compact {
            self.read_live_rows(partition, files, &mut rows)?;
            // Every old file is replaced by the files written next.
            partition.rows.clear();
        }
        let written = match rows.iter().any(|(keys, _)| !keys.is_empty()) {
            true => {
                // New rows are written in the parts they arrived in, each in key order (one per
                // upsert worker): merging them into one order would copy every row once more
                // for nothing the index or a reader needs. A compacted partition's rows (read
                // back file by file) are merged, so its files hold one run.
                let parts = match compact {
                    true => vec![sorted_by_key(rows)?],
                    false => rows.into_iter().filter(|(keys, _)| !keys.is_empty()).collect(),
                };
                let parts = match &self.printed_key {
                    Some(printed) => parts
                        .into_iter()
                        .map(|(keys, batch)| printed.restore(&batch, &keys).map(|batch| (keys, batch)))
                        .collect::<crate::Result<NewRows>>()?,
                    None => parts,
                };
                self.write_rows(day, partition, parts, files, judged)?
            }
            false => Vec::new(),
        };
        if compact {
            for id in std::mem::take(&mut partition.data_files).into_iter().chain(std::mem::take(&mut partition.delete_files)) {
                messages.push(SinkMessage::RemovedFile(files.paths[id as usize].to_string()));
            }
        } else if !deletes.is_empty() {
            let mut marked: Vec<(Arc<str>, i64)> =
                deletes.iter().map(|(file, pos)| (files.paths[*file as usize].clone(), i64::from(*pos))).collect();
            marked.sort_unstable();
            let prefix = format!("w{}", self.worker);
            let file = self.runtime.block_on(write_position_deletes(&self.table, day, &marked, &prefix))?;
            partition.delete_files.insert(files.id(&Arc::from(file.file_path())));
            let targets: BTreeSet<u32> = deletes.iter().map(|(file, _)| *file).collect();
            for target in targets {
                messages.push(SinkMessage::DeletesIn(files.paths[target as usize].to_string()));
            }
            messages.push(SinkMessage::CuratedFile(FileDescription::of(file, &self.table)?));
        }
        for file in written {
            partition.data_files.insert(files.id(&Arc::from(file.file_path())));
            messages.push(SinkMessage::CuratedFile(FileDescription::of(file, &self.table)?));
        }
        Ok(messages)
    }

    /// Appends the partition's live rows to `rows`, read back from its data files: the row index
    /// says which positions of each file are live and whose key each holds (rows the position
    /// delete files mark are no key's place any more), so nothing is parsed or looked up per row.
    fn read_live_rows(&self, partition: &Partition, files: &Files, rows: &mut NewRows) -> crate::Result<()> {
        for &id in &partition.data_files {
            let path = &files.paths[id as usize];
            let live = partition.rows.live_rows(id);
            if live.is_empty() {
                continue;
            }
            let batches = self.runtime.block_on(read_parquet(&self.table, path))?;
            let mut next = live.iter().peekable();
            let mut start = 0u32;
            for batch in batches {
                let end = start + batch.num_rows() as u32;
                let mut taken = Vec::new();
                let mut keys = Vec::new();
                while let Some((position, key)) = next.next_if(|(position, _)| *position < end) {
                    taken.push(position - start);
                    keys.push(*key);
                }
                start = end;
                if taken.is_empty() {
                    continue;
                }
                let batch = conform(&crate::records::take_rows(&batch, &taken)?, &self.table)?;
                let batch = match &self.printed_key {
                    Some(printed) => printed.strip(batch),
                    None => batch,
                };
                rows.push((keys, batch));
            }
            if let Some((position, _)) = next.next() {
                return Err(crate::Error::Internal(format!("curated file {path} has {start} rows, but the writer holds a live row at position {position}")));
            }
        }
        Ok(())
    }

    /// Writes `parts` (each in key order), one after the other, into new data files and records
    /// where each row now sits. The checks judge the rows first; rows a `quarantine` check refuses
    /// leave the partition and become rejections instead of being written.
    fn write_rows(
        &self,
        day: i32,
        partition: &mut Partition,
        parts: NewRows,
        files: &mut Files,
        judged: &mut Judged,
    ) -> crate::Result<Vec<iceberg::spec::DataFile>> {
        let mut kept: NewRows = Vec::with_capacity(parts.len());
        for (keys, batch) in parts {
            let (keys, batch) = self.judge(partition, keys, batch, judged)?;
            if !keys.is_empty() {
                kept.push((keys, batch));
            }
        }
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        let (keys, batches): (Vec<Vec<u128>>, Vec<RecordBatch>) = kept.into_iter().unzip();
        let prefix = format!("w{}", self.worker);
        let written = self.runtime.block_on(write_partition(&self.table, day, batches, self.target_file_size, &prefix))?;
        // The rolling writer fills files in row order: the first file's `record_count` rows, then
        // the next file's.
        let mut keys = keys.into_iter().flatten();
        for file in &written {
            let id = files.id(&Arc::from(file.file_path()));
            partition.rows.add_written(id, keys.by_ref().take(file.record_count() as usize).collect());
        }
        if keys.next().is_some() {
            return Err(crate::Error::Internal(format!(
                "the writer's files for {}={} hold fewer rows than were written",
                self.pipeline.partitioning.column,
                crate::model::format_date(day)
            )));
        }
        Ok(written)
    }

    /// The rows of one part the checks let through, with their keys; rows a `quarantine` check
    /// refuses leave the partition's index and go to `judged.quarantined`.
    fn judge(
        &self,
        partition: &mut Partition,
        mut keys: Vec<u128>,
        mut batch: RecordBatch,
        judged: &mut Judged,
    ) -> crate::Result<(Vec<u128>, RecordBatch)> {
        if !keys.is_empty() && !self.checks.is_empty() {
            let newest = crate::records::Positions::of(&batch)?.newest_ingestion_ms();
            judged.newest_ingestion_ms = judged.newest_ingestion_ms.max(newest);
            if let Some(quarantine) = judged.evaluation.observe(&batch)? {
                let refused = &quarantine.rows;
                let keep = arrow::compute::not(refused).context(|| "filtering quarantined rows".into())?;
                let mut kept_keys = Vec::with_capacity(keys.len());
                let (mut reasons, mut details, mut quarantined) = (Vec::new(), Vec::new(), Vec::new());
                for (index, key) in keys.iter().enumerate() {
                    if !refused.value(index) {
                        kept_keys.push(*key);
                        continue;
                    }
                    partition.rows.remove(*key);
                    let check = quarantine.check_name(index).unwrap_or("?");
                    quarantined.push(index as u32);
                    reasons.push(RejectReason::CheckFailed.as_str().to_string());
                    details.push(format!("check `{check}`: {}", self.checks.expected(check)));
                }
                judged.quarantined.push(self.rejected_rows(&batch, &quarantined, reasons, details)?);
                batch = arrow::compute::filter_record_batch(&batch, &keep).context(|| "filtering quarantined rows".into())?;
                keys = kept_keys;
            }
        }
        Ok((keys, batch))
    }

    /// Curated rows as the rejected table records them: their values where the rejected table has
    /// a column of the same name, the coordinates of the record they came from, the graph's topic.
    fn rejected_rows(&self, batch: &RecordBatch, rows: &[u32], reasons: Vec<String>, details: Vec<String>) -> crate::Result<RecordBatch> {
        let rows = crate::records::take_rows(batch, rows)?;
        let topic: ArrayRef = Arc::new(StringArray::from(vec![&*self.topic; rows.num_rows()]));
        let mut fields: Vec<arrow::datatypes::FieldRef> = rows.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(arrow::datatypes::Field::new("source_topic", arrow::datatypes::DataType::Utf8, false)));
        let mut columns = rows.columns().to_vec();
        columns.push(topic);
        let source = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns).context(|| "quarantined rows".into())?;
        rejected_batch(&self.rejected_schema, &source, reasons, details)
    }
}

/// A batch read back from the table in the table's exact Arrow schema (what the writer writes).
fn conform(batch: &RecordBatch, table: &Table) -> crate::Result<RecordBatch> {
    let schema = crate::schema::arrow_schema(table.metadata().current_schema())?;
    crate::pipeline::types::conform_batch(batch, &schema)
}

/// All of a compacted partition's rows in one batch, sorted by key. Each part is a few runs in
/// key order (a file is read back in the order it was written), so one sorted part is used as it
/// is and several are gathered once, in key order: a stable sort finds the runs and only merges
/// them.
fn sorted_by_key(mut rows: NewRows) -> crate::Result<(Vec<u128>, RecordBatch)> {
    let sorted = |keys: &[u128]| keys.windows(2).all(|pair| pair[0] <= pair[1]);
    if rows.len() == 1 && sorted(&rows[0].0) {
        return Ok(rows.pop().expect("one part"));
    }
    let mut order: Vec<(u128, usize, usize)> =
        rows.iter().enumerate().flat_map(|(part, (keys, _))| keys.iter().enumerate().map(move |(row, key)| (*key, part, row))).collect();
    order.sort();
    let batches: Vec<&RecordBatch> = rows.iter().map(|(_, batch)| batch).collect();
    if batches.is_empty() {
        return Err(crate::Error::Internal("no rows to write".into()));
    }
    let indices: Vec<(usize, usize)> = order.iter().map(|(_, part, row)| (*part, *row)).collect();
    let gathered = crate::records::interleave_rows(&batches, &indices)?;
    Ok((order.into_iter().map(|(key, _, _)| key).collect(), gathered))
}
