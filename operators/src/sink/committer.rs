//! The commit step, on worker 0: once an epoch is complete everywhere, one snapshot per table (see
//! [`CommitMode`]): the curated table's removes the data files the writers rewrote and adds their
//! new files (an Overwrite, or an Append when the epoch only added rows).
//!
//! Later epochs are not committed after a failure: their changes build on the failed one.
//!
//! Fencing: every commit carries the table's engine commit it was computed from ([`Fence`]): at
//! the start the one the run read its offsets, cursor and state from, then the run's own previous
//! commit. A commit whose table another engine run has committed to since is refused
//! ([`crate::Error::Fenced`]) and the run stops; see [`crate::commit`].
//!
//! Failpoints (`FAILPOINTS=name=action`, for crash tests): `stream-before-raw-commit`,
//! `stream-after-raw-commit`, `stream-after-rejected-commit`, `stream-after-curated-commit`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use iceberg::TableIdent;
use iceberg::spec::DataFile;
use iceberg::table::Table;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::catalog::Lakehouse;
use crate::checks::{Checks, Evaluation};
use crate::sink::FileDescription;
use crate::commit::{
    CommitOptions, Committed, EPOCH_PROPERTY, Fence, FileChange, REPLAY_CURSOR_PROPERTY, WRITER_PROPERTY, commit, replace_partitions,
};
use crate::metrics::Metrics;
use crate::source::kafka::{
    OFFSETS_PROPERTY, Offsets, PARTITION_DAYS_PROPERTY, Resume, format_offsets, format_partition_days, note_day,
};
use crate::error::Result;
use crate::error::Context;
use crate::model::format_date;
use crate::schema::arrow_schema;
use crate::sink::{EpochDays, EpochLog, EpochMeta, Failure, SinkMessage};
use crate::writer::write_partition;

#[derive(Debug, Default)]
pub struct CommitStats {
    pub curated_snapshots: AtomicU64,
    pub rejected_snapshots: AtomicU64,
    pub raw_snapshots: AtomicU64,
    /// Stream epochs that read records (and therefore committed).
    pub stream_epochs: AtomicU64,
    /// When the last of those epochs was committed.
    pub last_stream_commit: Mutex<Option<Instant>>,
    pub curated_files_added: AtomicU64,
    pub curated_files_removed: AtomicU64,
    pub commit_retries: AtomicU64,
    pub rejected: Mutex<BTreeMap<String, u64>>,
    /// Epochs the data-quality checks judged.
    pub epochs_checked: AtomicU64,
    /// Per check: epochs in which it failed (whatever its policy).
    pub check_failures: Mutex<BTreeMap<String, u64>>,
}

/// How an epoch lands in the tables.
#[derive(Clone)]
pub enum CommitMode {
    /// Curated: the writers' file change. Rejected: the epoch's `ingestion_date` partitions
    /// replaced, so replaying the same days never records a rejection twice. Both carry the replay
    /// cursor (the last ingestion date reflected).
    Replay,
    /// Raw, then rejected, then curated, each carrying the Kafka offsets it reflects. Raw and
    /// rejected are appended. The order keeps `raw >= rejected >= curated` positions after any
    /// crash, so a restart reads from curated's position and each table skips what it holds.
    Stream(StreamCommit),
}

#[derive(Clone)]
pub struct StreamCommit {
    pub raw: TableIdent,
    /// The raw table's fence when the run read its offsets.
    pub raw_fence: Fence,
    pub topic: String,
    /// What each table held when the run started.
    pub resume: Resume,
}

/// Per table, the engine commit the run's next commit builds on.
pub struct Fences {
    /// Stream only: a replay does not write raw.
    pub raw: std::cell::Cell<Fence>,
    pub rejected: std::cell::Cell<Fence>,
    pub curated: std::cell::Cell<Fence>,
}

impl Fences {
    /// The fences of a run that read `rejected` and `curated` (and, streaming, raw) at its start.
    pub fn at_start(mode: &CommitMode, rejected: &Table, curated: &Table) -> Fences {
        let raw = match mode {
            CommitMode::Stream(stream) => stream.raw_fence,
            CommitMode::Replay => Fence { base: None },
        };
        Fences {
            raw: std::cell::Cell::new(raw),
            rejected: std::cell::Cell::new(Fence::of(rejected)),
            curated: std::cell::Cell::new(Fence::of(curated)),
        }
    }

    /// After a commit of this run, it is what the next one builds on.
    fn advance(cell: &std::cell::Cell<Fence>, committed: &Committed) {
        cell.set(Fence::after(committed));
    }
}

pub struct Committer {
    pub lakehouse: Arc<Lakehouse>,
    pub curated: TableIdent,
    pub rejected: Table,
    pub runtime: tokio::runtime::Handle,
    pub epochs: EpochLog,
    pub mode: CommitMode,
    pub options: CommitOptions,
    pub target_file_size: usize,
    pub stats: Arc<CommitStats>,
    pub metrics: Option<Arc<Metrics>>,
    pub failure: Failure,
    /// The curated table's data-quality checks: judged before anything of an epoch is committed.
    pub checks: Arc<Checks>,
    /// The curated snapshot the writers' state reflects: the one the run started from, then each
    /// curated commit of this run.
    pub curated_snapshot: std::cell::Cell<Option<i64>>,
    /// This run's id, recorded in every snapshot it makes.
    pub writer: std::sync::Arc<str>,
    pub fences: Fences,
}

#[derive(Default)]
struct EpochInput {
    files: Vec<FileDescription>,
    /// Stream: the raw data files the workers wrote for the epoch's records.
    raw_files: Vec<FileDescription>,
    removed: Vec<String>,
    referenced: Vec<String>,
    rejections: Vec<RecordBatch>,
    /// The workers' check evaluations, merged.
    evaluation: Option<Evaluation>,
    newest_ingestion_ms: Option<i64>,
}

impl EpochInput {
    /// The curated change, or `None` when the epoch changed no curated row. `known` is the
    /// snapshot the writers' view of the files comes from.
    fn changes_curated(&self) -> bool {
        !(self.files.is_empty() && self.removed.is_empty())
    }

    fn curated_change(&mut self, curated: &Table, properties: BTreeMap<String, String>, known: Option<i64>, fence: Fence) -> Result<Option<FileChange>> {
        if !self.changes_curated() {
            return Ok(None);
        }
        let add = std::mem::take(&mut self.files).iter().map(|file| file.decode(curated)).collect::<Result<Vec<DataFile>>>()?;
        Ok(Some(FileChange {
            remove: std::mem::take(&mut self.removed),
            add,
            referenced: std::mem::take(&mut self.referenced),
            referenced_in: known,
            guarded_partitions: BTreeSet::new(),
            properties,
            fence: Some(fence),
        }))
    }
}

impl Committer {
    /// Commits each epoch once it is complete. The output says, once, at the first epoch it
    /// did not commit because of a failure, what failed: every process stops on it.
    pub fn build<'scope>(self, messages: StreamVec<'scope, u64, SinkMessage>) -> StreamVec<'scope, u64, String> {
        messages.unary_frontier(Exchange::new(|_: &SinkMessage| 0), "Commit", move |_capability, _info| {
            let mut pending: BTreeMap<u64, (Capability<u64>, EpochInput)> = BTreeMap::new();
            // Stream: the cumulative position of each table (every partition it has seen).
            let mut positions = match &self.mode {
                CommitMode::Stream(stream) => Some(stream.resume.clone()),
                CommitMode::Replay => None,
            };
            // Whether the processes were told to stop.
            let mut stopped = false;
            move |(input, frontier), output| {
                input.for_each_time(|time, data| {
                    let epoch = &mut pending.entry(*time.time()).or_insert_with(|| (time.retain(0), EpochInput::default())).1;
                    for batch in data {
                        for message in batch.drain(..) {
                            match message {
                                SinkMessage::CuratedFile(file) => epoch.files.push(file),
                                SinkMessage::RawFiles(files) => epoch.raw_files.extend(files),
                                SinkMessage::RemovedFile(path) => epoch.removed.push(path),
                                SinkMessage::DeletesIn(path) => epoch.referenced.push(path),
                                SinkMessage::Rejected(rejected) => epoch.rejections.push(rejected.0),
                                SinkMessage::Checked(judged) => {
                                    epoch.newest_ingestion_ms = epoch.newest_ingestion_ms.max(judged.newest_ingestion_ms);
                                    match Evaluation::resume(self.checks.clone(), judged.evaluation) {
                                        Ok(evaluation) => match &mut epoch.evaluation {
                                            Some(merged) => merged.merge(evaluation),
                                            None => epoch.evaluation = Some(evaluation),
                                        },
                                        Err(error) => self.failure.set(error),
                                    }
                                }
                                // Whatever the epoch, nothing may be committed from here on.
                                SinkMessage::Failed { process, message } => {
                                    self.failure.set(crate::Error::PeerFailed(format!("process {process} failed: {message}")))
                                }
                            }
                        }
                    }
                });
                while let Some((&time, _)) = pending.first_key_value() {
                    if frontier.less_equal(&time) {
                        break;
                    }
                    let (capability, epoch) = pending.pop_first().expect("first entry exists").1;
                    let meta = self.epochs.take(time);
                    if let Some(message) = self.failure.describe() {
                        if !stopped {
                            stopped = true;
                            output.session(&capability).give(message);
                        }
                        continue;
                    }
                    if time == 0 {
                        continue;
                    }
                    let started = Instant::now();
                    let (records, closed) = (meta.records, meta.closed);
                    let (added, removed, rejections) = (epoch.files.len(), epoch.removed.len(), epoch.rejections.iter().map(RecordBatch::num_rows).sum::<usize>());
                    let committed = match (&self.mode, positions.as_mut()) {
                        (CommitMode::Stream(stream), Some(positions)) => {
                            self.runtime.block_on(self.commit_stream(stream, positions, time, meta, epoch))
                        }
                        _ => self.runtime.block_on(self.commit_replay(time, meta, epoch)),
                    };
                    match committed {
                        Ok(()) => {
                            if records > 0 && matches!(self.mode, CommitMode::Stream(_)) {
                                *self.stats.last_stream_commit.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                                    Some(Instant::now());
                            }
                            if let Some(metrics) = &self.metrics {
                                metrics.epoch_commit_seconds.observe(started.elapsed().as_secs_f64());
                            }
                            if records > 0 {
                                tracing::info!(
                                    epoch = time,
                                    records,
                                    rejections,
                                    curated_files_added = added,
                                    curated_files_removed = removed,
                                    commit_seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
                                    since_close_seconds = closed.map(|c| format!("{:.3}", c.elapsed().as_secs_f64())),
                                    "epoch committed"
                                );
                            }
                        }
                        Err(error) => {
                            output.session(&capability).give(error.to_string());
                            stopped = true;
                            self.failure.set(error);
                        }
                    }
                }
            }
        })
    }

    /// The gate: judges the epoch's rows with the merged evaluations, logs and counts the result,
    /// and refuses the epoch when a `fail` check failed.
    fn gate(&self, epoch: u64, input: &mut EpochInput) -> Result<()> {
        if self.checks.is_empty() {
            return Ok(());
        }
        let mut evaluation = input.evaluation.take().unwrap_or_else(|| Evaluation::new(self.checks.clone()));
        if matches!(self.mode, CommitMode::Stream(_)) {
            evaluation = evaluation.for_stream_epoch();
        }
        // Freshness is judged against the epoch's own ingestion time, so a replay judges as the
        // stream did.
        let reference = input.newest_ingestion_ms.map(|ms| ms.div_euclid(1000)).unwrap_or(0);
        let report = evaluation.finish(reference, None);
        self.stats.epochs_checked.fetch_add(1, Ordering::Relaxed);
        {
            let mut failures = self.stats.check_failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for result in &report.results {
                if !result.passed {
                    *failures.entry(result.name.clone()).or_default() += 1;
                }
                if let Some(metrics) = &self.metrics {
                    metrics.check(&result.name, result.passed).inc();
                }
            }
        }
        if report.passed() {
            tracing::info!(epoch, rows = report.rows, "checks passed: {}", report.summary());
        } else {
            tracing::warn!(epoch, rows = report.rows, quarantined = report.quarantined, "checks: {}", report.summary());
        }
        if report.fatal().next().is_some() {
            let failed: Vec<&str> = report.fatal().map(|r| r.name.as_str()).collect();
            return Err(crate::Error::ChecksFailed {
                table: self.curated.to_string(),
                summary: format!("epoch {epoch}: check(s) {} with policy fail", failed.join(", ")),
                report: report.to_text(),
            });
        }
        Ok(())
    }

    fn count_rejections(&self, rejections: &RecordBatch) -> Result<()> {
        let reasons = rejections
            .column_by_name("reason")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| crate::Error::Internal("rejected rows without a reason".into()))?;
        let mut counts = self.stats.rejected.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for reason in reasons.iter().flatten() {
            match counts.get_mut(reason) {
                Some(count) => *count += 1,
                None => {
                    counts.insert(reason.to_string(), 1);
                }
            }
            if let Some(metrics) = &self.metrics {
                metrics.rejected(reason).inc();
            }
        }
        Ok(())
    }

    fn note(&self, committed: &Committed, curated: bool) {
        if curated {
            self.curated_snapshot.set(Some(committed.snapshot_id));
            self.stats.curated_snapshots.fetch_add(1, Ordering::Relaxed);
            self.stats.curated_files_added.fetch_add(committed.files_added as u64, Ordering::Relaxed);
            self.stats.curated_files_removed.fetch_add(committed.files_removed as u64, Ordering::Relaxed);
        }
        self.stats.commit_retries.fetch_add(u64::from(committed.attempts - 1), Ordering::Relaxed);
    }

    /// The epoch's rejected rows in ingestion order (then by reason and detail, so the order
    /// never depends on which worker sent what first), without the records `held` says the table
    /// has already (partition → next offset).
    fn ordered_rejections(&self, batches: Vec<RecordBatch>, held: Option<&Offsets>) -> Result<RecordBatch> {
        let schema = arrow_schema(self.rejected.metadata().current_schema())?;
        let all = arrow::compute::concat_batches(&schema, &batches).context(|| "joining the epoch's rejected rows".into())?;
        let all = match held {
            Some(held) if !held.is_empty() => {
                let positions = crate::records::Positions::of(&all)?;
                let keep: arrow::array::BooleanArray =
                    positions.iter().map(|p| Some(p.offset >= held.get(&p.partition).copied().unwrap_or(0))).collect();
                arrow::compute::filter_record_batch(&all, &keep).context(|| "dropping rejections already written".into())?
            }
            _ => all,
        };
        crate::records::sorted_by(&all, &["ingestion_ts_ms", "source_partition", "source_offset", "reason", "detail"])
    }

    /// Writes rejections (in ingestion order), one set of files per ingestion date.
    async fn write_rejections(&self, rejections: &RecordBatch) -> Result<Vec<DataFile>> {
        let mut files = Vec::new();
        for (day, batch) in crate::records::day_runs(rejections, "ingestion_date")? {
            files.extend(write_partition(&self.rejected, day, [batch], self.target_file_size, "rejected").await?);
        }
        Ok(files)
    }

    async fn commit_replay(&self, epoch: u64, meta: EpochMeta, mut input: EpochInput) -> Result<()> {
        let Some(days) = meta.days else {
            return Err(crate::Error::Internal(format!("epoch {epoch} has no ingestion dates")));
        };
        self.gate(epoch, &mut input)?;
        let properties = BTreeMap::from([
            (REPLAY_CURSOR_PROPERTY.to_string(), format_date(days.last)),
            (EPOCH_PROPERTY.to_string(), epoch.to_string()),
            (WRITER_PROPERTY.to_string(), self.writer.to_string()),
        ]);
        let curated = if input.changes_curated() { Some(self.lakehouse.load(&self.curated).await?) } else { None };
        if let Some(curated) = curated
            && let Some(change) = input.curated_change(&curated, properties.clone(), self.curated_snapshot.get(), self.fences.curated.get())?
        {
            let committed = commit(&self.lakehouse, curated, change, self.options).await?;
            self.note(&committed, true);
            Fences::advance(&self.fences.curated, &committed);
        }
        let rejections = self.ordered_rejections(std::mem::take(&mut input.rejections), None)?;
        self.count_rejections(&rejections)?;
        let files = self.write_rejections(&rejections).await?;
        let ident = self.rejected.identifier();
        let replaced: BTreeSet<i32> = (days.first..=days.last).collect();
        let fence = Some(self.fences.rejected.get());
        if let Some(committed) = replace_partitions(&self.lakehouse, ident, replaced, files, properties, fence, self.options).await? {
            self.stats.rejected_snapshots.fetch_add(1, Ordering::Relaxed);
            self.note(&committed, false);
            Fences::advance(&self.fences.rejected, &committed);
        }
        Ok(())
    }

    async fn commit_stream(
        &self,
        stream: &StreamCommit,
        positions: &mut Resume,
        epoch: u64,
        meta: EpochMeta,
        mut input: EpochInput,
    ) -> Result<()> {
        if meta.records == 0 {
            // Nothing was read: no table moves, no snapshot.
            return Ok(());
        }
        self.gate(epoch, &mut input)?;
        let timer = |table: &'static str| {
            let started = Instant::now();
            let metrics = self.metrics.clone();
            move || {
                if let Some(metrics) = metrics {
                    metrics.table_commit_seconds(table).observe(started.elapsed().as_secs_f64());
                }
            }
        };
        let properties = |offsets: &Offsets, days: Option<EpochDays>| {
            let mut properties = BTreeMap::from([
                (OFFSETS_PROPERTY.to_string(), format_offsets(&stream.topic, offsets)),
                (EPOCH_PROPERTY.to_string(), epoch.to_string()),
                (WRITER_PROPERTY.to_string(), self.writer.to_string()),
            ]);
            if let Some(days) = days {
                properties.insert(REPLAY_CURSOR_PROPERTY.to_string(), format_date(days.last));
            }
            properties
        };
        let advance = |offsets: &mut Offsets| {
            for (partition, next) in &meta.offsets {
                let entry = offsets.entry(*partition).or_insert(*next);
                *entry = (*entry).max(*next);
            }
        };

        self.stats.stream_epochs.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            metrics.epochs.inc();
        }
        fail::fail_point!("stream-before-raw-commit");
        let before = positions.raw.clone();
        advance(&mut positions.raw);
        // After a restart the first records may all be in raw already: nothing to commit there.
        if !input.raw_files.is_empty() || before != positions.raw {
            let raw = self.lakehouse.load(&stream.raw).await?;
            let raw_files = input.raw_files.iter().map(|file| file.decode(&raw)).collect::<Result<Vec<DataFile>>>()?;
            let done = timer("raw");
            let change = FileChange {
                add: raw_files,
                properties: properties(&positions.raw, meta.days),
                fence: Some(self.fences.raw.get()),
                ..Default::default()
            };
            let committed = commit(&self.lakehouse, raw, change, self.options).await?;
            self.stats.raw_snapshots.fetch_add(1, Ordering::Relaxed);
            self.note(&committed, false);
            Fences::advance(&self.fences.raw, &committed);
            done();
        }
        fail::fail_point!("stream-after-raw-commit");

        // Rejections of records the rejected table already holds (a restart re-reads from the
        // table furthest behind) are dropped here.
        let held = &stream.resume.rejected;
        let rejections = self.ordered_rejections(std::mem::take(&mut input.rejections), Some(held))?;
        self.count_rejections(&rejections)?;
        let files = self.write_rejections(&rejections).await?;
        let before = positions.rejected.clone();
        advance(&mut positions.rejected);
        if !files.is_empty() || before != positions.rejected {
            let rejected = self.lakehouse.load(self.rejected.identifier()).await?;
            let done = timer("rejected");
            let change = FileChange {
                add: files,
                properties: properties(&positions.rejected, meta.days),
                fence: Some(self.fences.rejected.get()),
                ..Default::default()
            };
            let committed = commit(&self.lakehouse, rejected, change, self.options).await?;
            self.stats.rejected_snapshots.fetch_add(1, Ordering::Relaxed);
            self.note(&committed, false);
            Fences::advance(&self.fences.rejected, &committed);
            done();
        }
        fail::fail_point!("stream-after-rejected-commit");

        let before = positions.curated.clone();
        advance(&mut positions.curated);
        for (partition, day) in &meta.partition_days {
            note_day(&mut positions.partition_days, *partition, *day);
        }
        let mut properties = properties(&positions.curated, meta.days);
        properties.insert(PARTITION_DAYS_PROPERTY.to_string(), format_partition_days(&stream.topic, &positions.partition_days));
        // Only duplicates or rejections: no rows change, but the position still has to move.
        let fence = self.fences.curated.get();
        let curated = self.lakehouse.load(&self.curated).await?;
        let change = match input.curated_change(&curated, properties.clone(), self.curated_snapshot.get(), fence)? {
            Some(change) => change,
            None if before == positions.curated => return Ok(()),
            None => FileChange { properties, fence: Some(fence), ..Default::default() },
        };
        let done = timer("curated");
        let committed = commit(&self.lakehouse, curated, change, self.options).await?;
        self.note(&committed, true);
        Fences::advance(&self.fences.curated, &committed);
        done();
        fail::fail_point!("stream-after-curated-commit");
        Ok(())
    }
}
