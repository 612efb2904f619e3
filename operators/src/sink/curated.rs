//! The curated writer: copy-on-write at data-file granularity, so a commit's cost follows the
//! change, not the table.
//!
//! Every `rating_date` partition lives on one worker (changes are exchanged by day), which holds
//! the partition's live rows and, for each, the data file it sits in. When an epoch completes:
//!
//! - a **new key** is written into a new file; no old file is touched;
//! - an **update** (a key's row superseded, possibly moving to another day) makes the file that
//!   held the old row dirty: that file is removed and its surviving rows are written again,
//!   together with the partition's new rows, into new files;
//! - a **duplicate** (the same values again) is no change at all (the net-change stage drops it).
//!
//! So a stream epoch that adds rows to today's partition appends one small file per partition it
//! touched, and an update rewrites only the files that held superseded rows. When a changed
//! partition holds `compact_after_files` files or more (graph: `maintenance.compact_after_files`),
//! all of them are dirty: the epoch rewrites the partition into files near the target size. Doing
//! it here, in the one place that knows which file holds each row, means curated compaction never
//! conflicts with the pipeline's own commits; `runtime maintain` compacts what the pipeline no
//! longer writes.
//!
//! Epoch 0 carries the seeds: the curated rows inside the lateness window, each with the path of
//! the file it was read from; they only build the state. Partitions older than
//! `latest ingestion date - lateness` can no longer change and leave memory, which therefore
//! follows the lateness window and not the table's history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use iceberg::table::Table;
use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::checks::{Checks, Evaluation};
use crate::model::{Candidate, RawEvent, RejectReason, Rejection};
use crate::schema::{arrow_schema, curated_to_batch};
use crate::sink::{EpochLog, Failure, LocalDataFile, LocalEvaluation, SinkMessage};
use crate::error::Context;
use crate::writer::write_partition;

/// One change to one curated partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DayChange {
    /// A row already in the table, in data file `file` (epoch 0).
    Seed { day: i32, key: u128, row: Candidate, file: Arc<str> },
    /// The key's row leaves the partition.
    Remove { day: i32, key: u128 },
    /// The key's new row enters the partition.
    Insert { day: i32, key: u128, row: Candidate },
}

impl DayChange {
    pub fn day(&self) -> i32 {
        match self {
            DayChange::Seed { day, .. } | DayChange::Remove { day, .. } | DayChange::Insert { day, .. } => *day,
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
}

/// What the checks made of one epoch on one worker.
struct Judged {
    evaluation: Evaluation,
    newest_ingestion_ms: Option<i64>,
    quarantined: Vec<Rejection>,
}

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

/// A partition's live rows: the row and the file holding it (`None`: not written yet).
type Partition = HashMap<u128, (Candidate, Option<u32>)>;

impl CuratedWriter {
    pub fn build<'scope>(self, changes: StreamVec<'scope, u64, DayChange>) -> StreamVec<'scope, u64, SinkMessage> {
        let exchange = Exchange::new(|change: &DayChange| change.day() as u64);
        changes.unary_frontier(exchange, "CuratedWriter", move |_capability, _info| {
            let mut partitions: BTreeMap<i32, Partition> = BTreeMap::new();
            let mut files = Files::default();
            let mut pending: BTreeMap<u64, (Capability<u64>, Vec<DayChange>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_time(|time, data| {
                    let entry = pending.entry(*time.time()).or_insert_with(|| (time.retain(0), Vec::new()));
                    for batch in data {
                        entry.1.append(batch);
                    }
                });
                while let Some((&time, _)) = pending.first_key_value() {
                    if frontier.less_equal(&time) {
                        break;
                    }
                    let (capability, changes) = pending.pop_first().expect("first entry exists").1;
                    let mut dirty: BTreeMap<i32, BTreeSet<u32>> = BTreeMap::new();
                    let mut touched: BTreeSet<i32> = BTreeSet::new();
                    // Removes before inserts: a key updated within one partition is both.
                    let (inserts, others): (Vec<DayChange>, Vec<DayChange>) =
                        changes.into_iter().partition(|c| matches!(c, DayChange::Insert { .. }));
                    for change in others {
                        match change {
                            DayChange::Seed { day, key, row, file } => {
                                let id = files.id(&file);
                                partitions.entry(day).or_default().insert(key, (row, Some(id)));
                            }
                            // Epoch 0's removes and inserts are the seeds again, as the upsert saw them.
                            DayChange::Remove { .. } if time == 0 => {}
                            DayChange::Remove { day, key } => {
                                if let Some((_, file)) = partitions.get_mut(&day).and_then(|p| p.remove(&key)) {
                                    touched.insert(day);
                                    if let Some(file) = file {
                                        dirty.entry(day).or_default().insert(file);
                                    }
                                }
                            }
                            DayChange::Insert { .. } => unreachable!("inserts were split off"),
                        }
                    }
                    if time == 0 {
                        continue;
                    }
                    for change in inserts {
                        if let DayChange::Insert { day, key, row } = change {
                            partitions.entry(day).or_default().insert(key, (row, None));
                            touched.insert(day);
                        }
                    }
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
                        if let Some(limit) = self.compact_after_files {
                            // Too many files: rewrite them all with this epoch's rows (compaction
                            // in the writer, so it never races the writer's own commits).
                            let held: BTreeSet<u32> = partition.values().filter_map(|(_, file)| *file).collect();
                            if held.len() >= limit {
                                dirty.insert(day, held);
                            }
                        }
                        let no_files = BTreeSet::new();
                        let dirty_files = dirty.get(&day).unwrap_or(&no_files);
                        match self.rewrite(day, partition, dirty_files, &mut files, &mut judged) {
                            Ok(written) => {
                                for file in dirty_files {
                                    session.give(SinkMessage::RemovedFile(files.paths[*file as usize].to_string()));
                                }
                                for file in written {
                                    session.give(SinkMessage::CuratedFile(LocalDataFile(file)));
                                }
                            }
                            Err(error) => {
                                self.failure.set(error);
                                break;
                            }
                        }
                    }
                    if !self.checks.is_empty() {
                        for rejection in judged.quarantined {
                            session.give(SinkMessage::Rejected(rejection));
                        }
                        session.give(SinkMessage::Checked(LocalEvaluation {
                            evaluation: judged.evaluation,
                            newest_ingestion_ms: judged.newest_ingestion_ms,
                        }));
                    }
                    if let Some(days) = self.epochs.days(time) {
                        // Later epochs ingest after `days.last`: older partitions cannot change.
                        let frozen_before = days.last - self.lateness_days;
                        partitions.retain(|&day, _| day >= frozen_before);
                    }
                }
            }
        })
    }

    /// Writes the partition's unwritten rows and the survivors of its dirty files into new files,
    /// and points those rows at them. The checks judge the rows first; rows a `quarantine` check
    /// refuses leave the partition and become rejections instead of being written.
    fn rewrite(
        &self,
        day: i32,
        partition: &mut Partition,
        dirty: &BTreeSet<u32>,
        files: &mut Files,
        judged: &mut Judged,
    ) -> crate::Result<Vec<iceberg::spec::DataFile>> {
        let mut keys: Vec<u128> = partition
            .iter()
            .filter(|(_, (_, file))| file.is_none_or(|f| dirty.contains(&f)))
            .map(|(key, _)| *key)
            .collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        keys.sort_unstable();
        let schema = arrow_schema(self.table.metadata().current_schema())?;
        let mut batch = curated_to_batch(&schema, keys.iter().map(|key| (key, &partition[key].0)))?;
        if !self.checks.is_empty() {
            let newest = keys.iter().map(|key| partition[key].0.position.ingestion_ts_ms).max();
            judged.newest_ingestion_ms = judged.newest_ingestion_ms.max(newest);
            if let Some(quarantine) = judged.evaluation.observe(&batch)? {
                let refused = &quarantine.rows;
                let keep = arrow::compute::not(refused).context(|| "filtering quarantined rows".into())?;
                batch = arrow::compute::filter_record_batch(&batch, &keep).context(|| "filtering quarantined rows".into())?;
                let mut kept = Vec::with_capacity(batch.num_rows());
                for (row, key) in keys.into_iter().enumerate() {
                    if !refused.value(row) {
                        kept.push(key);
                        continue;
                    }
                    let (candidate, _) = partition.remove(&key).expect("checked rows are in the partition");
                    let check = quarantine.check_name(row).unwrap_or("?");
                    judged.quarantined.push(Rejection {
                        reason: RejectReason::CheckFailed,
                        detail: format!("check `{check}`: {}", self.checks.expected(check)),
                        event: raw_event(key, &candidate, &self.topic),
                    });
                }
                keys = kept;
                if keys.is_empty() {
                    return Ok(Vec::new());
                }
            }
        }
        let prefix = format!("w{}", self.worker);
        let written = self.runtime.block_on(write_partition(&self.table, day, [batch], self.target_file_size, &prefix))?;
        // The rolling writer fills files in row order: the first file's `record_count` rows, then
        // the next file's.
        let mut rows = keys.iter();
        for file in &written {
            let id = files.id(&Arc::from(file.file_path()));
            for key in rows.by_ref().take(file.record_count() as usize) {
                if let Some(slot) = partition.get_mut(key) {
                    slot.1 = Some(id);
                }
            }
        }
        if rows.next().is_some() {
            return Err(crate::Error::Internal(format!(
                "the writer's files for rating_date={} hold fewer rows than were written",
                crate::model::format_date(day)
            )));
        }
        Ok(written)
    }
}

/// The row as the rejected table records it: its values and the coordinates of the record it
/// came from.
fn raw_event(key: u128, row: &Candidate, topic: &str) -> RawEvent {
    RawEvent {
        event_id: Some(uuid::Uuid::from_u128(key).hyphenated().to_string()),
        user_id: Some(row.user_id.to_string()),
        movie_id: Some(row.movie_id.to_string()),
        rating: Some(row.rating.0),
        rating_timestamp: Some(row.rating_timestamp),
        source_topic: topic.to_string(),
        source_partition: row.position.partition,
        source_offset: row.position.offset,
        ingestion_ts_ms: row.position.ingestion_ts_ms,
        undecodable: None,
    }
}
