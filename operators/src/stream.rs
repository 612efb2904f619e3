//! `--mode stream`: Kafka partitions through the same dataflow as replay, one epoch per commit
//! interval, exactly once into the raw, rejected and curated tables.
//!
//! ```text
//!  start: offsets of raw, rejected, curated (each table's newest snapshot that has them)
//!         seeds: curated rows inside the lateness window of the last ingestion date committed
//!
//!  worker i (of all processes' workers): consumer assigned partitions p % workers == i, from the table furthest behind
//!     │ records a batch at a time (source::kafka::fetch) → Confluent frame → registry (cached)
//!     │   → Avro read plan → typed raw columns (Kafka timestamp = ingestion)
//!     │   every record, also undecodable ones, is a raw row (unless raw already holds it)
//!     ▼
//!  shared dataflow (rules → upsert → curated writer) ── commit on worker 0 per epoch:
//!     raw append ─► rejected append ─► curated overwrite, each with its offsets
//! ```
//!
//! Raw rows go into typed column buffers (`source::kafka::columns`) as they are read; at the close
//! an epoch's rows reach the raw writer per ingestion date as slices of the batches as read.
//!
//! An epoch closes when the first of these happens:
//! - `commit_interval` has passed on the worker's clock;
//! - the worker has read its share of `epoch_events`: a backlog is read in epochs of bounded size
//!   (bounded memory), each written while the next is read, instead of one epoch holding all an
//!   interval could read;
//! - the run is reading a backlog (some worker's previous or current epoch closed full) and nothing
//!   has arrived for `BACKLOG_DRAINED_AFTER`: the backlog is drained, and its rest lands now rather than when
//!   the interval ends. Only right after a full epoch: a trickle still gets one epoch per interval;
//! - no partition has delivered a record for `stop_when_idle`, or a stop was requested (Ctrl-C,
//!   SIGTERM): the run ends once this epoch is committed.
//!
//! At the close the worker sends its raw rows to its raw writer (`sink::raw_writer`: a Parquet
//! write on the I/O runtime) and its facts of the epoch (offsets, days, records) into the
//! dataflow, advances its input and reads the next epoch while the closed one is upserted,
//! written and committed (the epoch completes once the raw writes are done). Meanwhile the consumer is polled without
//! blocking, so the exchanges and the commit never wait behind a poll. Before closing an epoch a
//! worker waits until the previous one is committed, so at most two epochs are in memory and a
//! failed commit stops the run one epoch later at most. A crash at any point is safe: each table
//! resumes from its own offsets.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use iceberg::TableIdent;
use rdkafka::consumer::{BaseConsumer, CommitMode as KafkaCommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::catalog::{CatalogSettings, Lakehouse};
use crate::commit::{CommitOptions, Fence, REPLAY_CURSOR_PROPERTY, new_writer_id, newest_property};
use crate::dataflow::{self, Outcome, RulesContext, Shared, Sinks, SourceRecord};
use crate::error::{Context, Error, Result};
use crate::metrics::Metrics;
use crate::model::{day_of_millis, parse_date};
use crate::records::PrintedKey;
use crate::rules::Rules;
use crate::rules::chain::RuleChain;
use crate::schema::arrow_schema;
use crate::source::kafka::columns::{Coordinates, RawColumns};
use crate::source::kafka::fetch::{BatchConsumer, Fetched};
use crate::source::kafka::native::{FetchSettings, NativeFetcher};
use crate::sink::committer::{CommitMode, CommitStats, StreamCommit};
use crate::sink::{EpochDays, EpochMeta};
use crate::source::kafka::confluent::{Backoff, Decoder};
use crate::source::kafka::registry::RegistryClient;
use crate::source::kafka::{KafkaSettings, Offsets, Resume, committed_offsets, committed_partition_days, note_day};
use crate::source::raw::{StatePlan, plan_state};

/// Everything a stream run needs, resolved from the graph file and the command line.
#[derive(Clone)]
pub struct StreamSettings {
    pub catalog: CatalogSettings,
    pub raw: TableIdent,
    pub curated: TableIdent,
    pub rejected: TableIdent,
    pub kafka: KafkaSettings,
    pub registry_url: String,
    pub registry_timeout: Duration,
    /// The pipeline's reader schema (the graph's `.avsc`).
    pub reader_schema: apache_avro::Schema,
    pub rules: Rules,
    /// The graph's rule plugins (loaded and checked).
    pub chain: RuleChain,
    /// The curated table's data-quality checks, judged before every commit.
    pub checks: std::sync::Arc<crate::checks::Checks>,
    /// The curated writer rewrites a changed partition holding this many files or more.
    pub compact_after_files: Option<usize>,
    /// Maintenance run in the background while streaming.
    pub schedule: Option<crate::maintain::Schedule>,
    pub workers: usize,
    pub target_file_size: usize,
    pub commit: CommitOptions,
    pub commit_interval: Duration,
    /// An epoch also closes once the workers have read this many records (each its share), so
    /// a backlog is read in epochs of bounded size: bounded memory, and the next epoch is read
    /// while this one is written instead of everything waiting for the interval to end.
    pub epoch_events: u64,
    pub stop_when_idle: Option<Duration>,
    pub metrics: Option<Arc<Metrics>>,
    /// Set from outside (a signal handler) to end the run after the current epoch.
    pub stop: Arc<AtomicBool>,
    /// The processes of the run and this one's place among them.
    pub cluster: crate::cluster::Cluster,
    /// What every process of the run must agree on (graph, plugins, engine); the tables' snapshots
    /// are added at the start.
    pub identity: crate::cluster::Identity,
}

/// What a stream run did.
#[derive(Debug, Clone, Default)]
pub struct StreamSummary {
    pub partitions: Vec<i32>,
    /// Where reading started, per partition (`None`: from the beginning).
    pub started_at: BTreeMap<i32, Option<i64>>,
    pub seeded_rows: u64,
    pub records_read: u64,
    /// Epochs that read records; each is one commit per table.
    pub epochs: u64,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// From the start to the commit of the last epoch that read records: how long the run took to
    /// land what it read (without the idle wait before a `stop_when_idle` stop).
    pub committed_after: Option<Duration>,
    /// From the start to the first record read: start-up (catalog, seeds, consumer connections).
    pub first_record_after: Option<Duration>,
    /// Bytes this process sent to the other processes of a cluster run.
    pub exchanged_bytes: u64,
}

/// How long a worker with no epoch in flight waits for the next record before it looks at the
/// clock and the stop conditions again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// How long every poll of a worker reading a backlog must come back empty before it takes the
/// backlog as drained. Longer than a broker holds an empty fetch and than a producer's batching
/// pauses, so that a steady stream that fills epochs is not cut into a full and a small one.
const BACKLOG_DRAINED_AFTER: Duration = Duration::from_millis(250);

/// Whether epoch `epoch` is reading a backlog: some worker closed it or the epoch before it full
/// (`full_epoch`, 0 for none yet).
fn catching_up(full_epoch: u64, epoch: u64) -> bool {
    full_epoch > 0 && full_epoch + 1 >= epoch
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn stream(settings: StreamSettings) -> Result<StreamSummary> {
    let started = Instant::now();
    let runtime = dataflow::io_runtime()?;

    // Fail fast, before any worker starts, on a broker that cannot be reached or a missing topic.
    let probe_consumer = settings.kafka.consumer()?;
    let partitions = settings.kafka.partitions(&probe_consumer, Duration::from_secs(15))?;
    drop(probe_consumer);

    let (lakehouse, raw, curated, rejected, resume, state) = runtime.block_on(async {
        let lakehouse = Lakehouse::open(&settings.catalog, false).await?;
        let raw = lakehouse.load(&settings.raw).await?;
        let curated = lakehouse.load(&settings.curated).await?;
        let rejected = lakehouse.load(&settings.rejected).await?;
        let topic = &settings.kafka.topic;
        let resume = Resume {
            raw: committed_offsets(&raw, topic)?,
            rejected: committed_offsets(&rejected, topic)?,
            curated: committed_offsets(&curated, topic)?,
            partition_days: committed_partition_days(&curated, topic)?,
        };
        // The day the curated table's rows are settled to: the earliest of the partitions' newest
        // ingestion dates, as the run that committed it froze rows by (a partition that lags the
        // others keeps older rows updatable). Tables a replay wrote give only the last ingestion
        // date they reflect.
        let cursor = newest_property(&curated, REPLAY_CURSOR_PROPERTY).and_then(|text| parse_date(&text));
        let settled = match (resume.settled_day(), cursor) {
            (Some(settled), Some(cursor)) => Some(settled.min(cursor)),
            (settled, cursor) => settled.or(cursor),
        };
        let state = match (curated.metadata().current_snapshot(), settled) {
            (None, _) => StatePlan::default(),
            (Some(_), Some(settled)) => plan_state(&curated, settled - settings.rules.lateness_days, &settings.rules).await?,
            (Some(_), None) => plan_state(&curated, i32::MIN, &settings.rules).await?,
        };
        Ok::<_, Error>((lakehouse, raw, curated, rejected, resume, state))
    })?;
    let started_at: BTreeMap<i32, Option<i64>> = partitions.iter().map(|p| (*p, resume.start(*p))).collect();
    tracing::info!(
        topic = %settings.kafka.topic,
        partitions = partitions.len(),
        start = ?started_at,
        seed_rows = state.seed_records,
        frozen_keys = state.frozen.len(),
        "starting stream"
    );
    let mut summary = StreamSummary {
        partitions: partitions.clone(),
        started_at: started_at.clone(),
        seeded_rows: state.seed_records,
        ..Default::default()
    };

    let shared = Shared { process: settings.cluster.process, processes: settings.cluster.processes, ..Shared::default() };
    let identity = settings.identity.clone().with("view of the tables", crate::cluster::snapshots(&[&raw, &curated, &rejected]));
    let frozen = Arc::new(state.frozen);
    let seed_tasks = Arc::new(state.seed_tasks);
    let stats = Arc::new(CommitStats::default());
    let records_read = Arc::new(AtomicU64::new(0));
    let first_record_at: Arc<OnceLock<Instant>> = Arc::default();
    let last_record_ms = Arc::new(AtomicI64::new(now_ms()));
    // The newest epoch some worker closed because its share was full: while the one before the
    // current epoch was full somewhere, the run is reading a backlog.
    let full_epoch = Arc::new(AtomicU64::new(0));
    let handle = runtime.handle().clone();
    let curated_from = Arc::new(resume.curated.clone());
    let stream_commit =
        StreamCommit { raw: settings.raw.clone(), raw_fence: Fence::of(&raw), topic: settings.kafka.topic.clone(), resume };
    let partitions = Arc::new(partitions);
    let seeded_rows = state.seed_records;
    let sinks = Sinks {
        lakehouse: Arc::new(lakehouse),
        curated_ident: settings.curated.clone(),
        curated: curated.clone(),
        rejected: rejected.clone(),
        runtime: handle.clone(),
        mode: CommitMode::Stream(stream_commit.clone()),
        options: settings.commit,
        target_file_size: settings.target_file_size,
        topic: Arc::from(settings.kafka.topic.as_str()),
        stats: stats.clone(),
        metrics: settings.metrics.clone(),
        checks: settings.checks.clone(),
        compact_after_files: settings.compact_after_files,
        writer: Arc::from(new_writer_id()),
        raw: Some(raw.clone()),
    };

    let curated_schema = arrow_schema(curated.metadata().current_schema())?;
    let printed_key = PrintedKey::of(&settings.rules.pipeline, &curated_schema)?;
    let rejected_schema = arrow_schema(rejected.metadata().current_schema())?;
    // Maintenance runs beside the committer, in process 0 only.
    let maintenance = settings.schedule.clone().filter(|_| settings.cluster.process == 0).map(|schedule| schedule.spawn(settings.catalog.clone(), &handle));
    let worker_shared = shared.clone();
    let worker_records = records_read.clone();
    let first_record = first_record_at.clone();
    let cluster = settings.cluster.clone();
    let ran = dataflow::execute(settings.workers, &cluster, &identity, &shared, move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let shared = worker_shared.clone();
        let metrics = settings.metrics.clone();
        let context = RulesContext {
            rules: settings.rules.clone(),
            chain: settings.chain.clone(),
            frozen: frozen.clone(),
            curated_from: Some(curated_from.clone()),
            accepted: shared.accepted.clone(),
            curated_schema: curated_schema.clone(),
            printed_key: printed_key.clone(),
            rejected_schema: rejected_schema.clone(),
            topic: sinks.topic.clone(),
        };
        let (mut input, probe) = dataflow::build(worker, context, &shared, &sinks);
        dataflow::feed_seeds(worker, &mut input, &probe, &curated, &seed_tasks, &settings.rules, &handle, &shared.failure);

        let mine: Vec<i32> = partitions.iter().copied().filter(|p| (*p as usize) % peers == index).collect();
        let mut source = match PartitionReader::new(&settings, &mine, &stream_commit.resume, &handle, metrics.clone()) {
            Ok(source) => Some(source),
            Err(error) => {
                shared.failure.set(error);
                None
            }
        };
        let raw_schema = match arrow_schema(raw.metadata().current_schema()) {
            Ok(schema) => schema,
            Err(error) => {
                shared.failure.set(error);
                return;
            }
        };
        let mut epoch = 1u64;
        // Offsets of the closed epochs not yet known to be committed (at most two).
        let mut unconfirmed: VecDeque<Offsets> = VecDeque::new();
        let mut raw_rows = RawRows::default();
        // The rows being read, as the raw table's columns.
        let mut columns = match RawColumns::new(&raw_schema, STREAM_BATCH_ROWS) {
            Ok(columns) => columns,
            Err(error) => {
                shared.failure.set(error);
                return;
            }
        };
        // This worker's share of an epoch's records.
        let epoch_share = settings.epoch_events.div_ceil(peers as u64).max(1);
        // Idle time counts from when reading starts: a long start (seeding a big lateness window)
        // is not a quiet topic.
        last_record_ms.fetch_max(now_ms(), Ordering::Relaxed);
        let idle = || {
            let idle_for = Duration::from_millis((now_ms() - last_record_ms.load(Ordering::Relaxed)).max(0) as u64);
            settings.stop_when_idle.is_some_and(|idle| idle_for >= idle)
        };
        while let Some(source) = source.as_mut().filter(|_| !shared.failure.is_set()) {
            let deadline = Instant::now() + settings.commit_interval;
            let mut meta = EpochMeta::default();
            let mut since_step = 0u64;
            // Records read into `columns` and not yet sent into the dataflow.
            let mut unsent = 0usize;
            // Since when every poll of this epoch has come back empty.
            let mut empty_since: Option<Instant> = None;
            while Instant::now() < deadline && meta.records < epoch_share && !idle() && !settings.stop.load(Ordering::Relaxed) {
                // While the previous epoch is being written and committed, the consumer is only
                // asked for what it holds already and the worker parks on the dataflow, so the
                // exchanges and the commit never wait behind a blocking poll; otherwise the poll
                // waits for the next record.
                let in_flight = probe.less_than(&epoch);
                let wait = if in_flight { Duration::ZERO } else { IDLE_POLL };
                // Drain what the consumer has buffered, then look at the clock and the dataflow
                // again; never past a full batch, which is what the columns have room for.
                let batch = (epoch_share - meta.records).min(READ_BATCH).min(STREAM_BATCH_ROWS.saturating_sub(unsent).max(1) as u64);
                let drained = source.read(wait, batch, &mut meta, &mut columns, &shared.failure);
                // Rows enter the dataflow in batches of up to STREAM_BATCH_ROWS, or as soon as the
                // consumer has nothing more buffered: every batch costs the rules a fixed amount.
                unsent += drained as usize;
                if unsent > 0 && (unsent >= STREAM_BATCH_ROWS || drained < batch) {
                    send_rows(&mut columns, &mut raw_rows, &source.raw_from, &mut input, &shared.failure);
                    unsent = 0;
                }
                if drained > 0 {
                    last_record_ms.store(now_ms(), Ordering::Relaxed);
                    empty_since = None;
                    first_record.get_or_init(Instant::now);
                } else if catching_up(full_epoch.load(Ordering::Relaxed), epoch)
                    && empty_since.get_or_insert_with(Instant::now).elapsed() >= BACKLOG_DRAINED_AFTER
                {
                    // A backlog was being read and this worker's part of it is drained: what it
                    // left for this epoch lands now, not when the interval ends.
                    break;
                }
                since_step += drained;
                if drained == 0 && in_flight {
                    since_step = 0;
                    worker.step_or_park(Some(Duration::from_millis(1)));
                } else if drained < READ_BATCH || since_step >= 4096 {
                    since_step = 0;
                    worker.step();
                }
                if shared.failure.is_set() {
                    break;
                }
            }
            if unsent > 0 {
                send_rows(&mut columns, &mut raw_rows, &source.raw_from, &mut input, &shared.failure);
            }
            if meta.records >= epoch_share {
                full_epoch.fetch_max(epoch, Ordering::Relaxed);
            }
            meta.closed = Some(Instant::now());
            meta.settled_day = source.settled_day();
            meta.partition_days = source.newest_day.clone();
            worker_records.fetch_add(meta.records, Ordering::Relaxed);
            if let Some(metrics) = &metrics {
                metrics.records("source").inc_by(meta.records);
                metrics.records("raw").inc_by(raw_rows.len() as u64);
            }
            match raw_rows.take(&raw_schema) {
                Ok(days) if days.is_empty() => {}
                Ok(days) => input.send(SourceRecord::RawRows(days)),
                Err(error) => shared.failure.set(error),
            }
            unconfirmed.push_back(meta.offsets.clone());
            input.send(SourceRecord::Facts(meta));
            epoch += 1;
            input.advance_to(epoch);
            // One epoch in flight: the epoch just closed is written and committed while the next
            // one is read, but the one before it must be committed first. The wait parks: a
            // spinning worker would take a core from the writers and the commit it waits for.
            worker.step_or_park_while(Some(dataflow::WAIT_PARK), || probe.less_than(&(epoch - 1)));
            if shared.failure.is_set() {
                break;
            }
            while unconfirmed.len() > 1 {
                source.after_commit(&unconfirmed.pop_front().expect("two epochs are unconfirmed"));
            }
            if let (0, Some(metrics)) = (index, &metrics) {
                let outcome = shared.outcome(&sinks.stats);
                for (stage, total) in [("accepted", outcome.accepted), ("inserted", outcome.inserted), ("updated", outcome.updated)] {
                    let counter = metrics.records(stage);
                    counter.inc_by(total.saturating_sub(counter.get()));
                }
                metrics.upsert_keys.set((seeded_rows + outcome.inserted) as i64);
                metrics.upsert_rows.set(shared.counters.held.load(Ordering::Relaxed));
            }
            if idle() || settings.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        drop(input);
        while worker.step_or_park(None) {}
        if let Some(source) = source.as_ref().filter(|_| !shared.failure.is_set()) {
            for offsets in unconfirmed {
                source.after_commit(&offsets);
            }
        }
    });
    if let Some(maintenance) = maintenance {
        maintenance.abort();
    }
    summary.exchanged_bytes = ran?;
    summary.records_read = records_read.load(Ordering::Relaxed);
    summary.epochs = stats.stream_epochs.load(Ordering::Relaxed);
    summary.outcome = shared.outcome(&stats);
    summary.elapsed = started.elapsed();
    let last_commit = *stats.last_stream_commit.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    summary.committed_after = last_commit.map(|at| at.duration_since(started));
    summary.first_record_after = first_record_at.get().map(|at| at.duration_since(started));
    Ok(summary)
}

/// The most rows the stream sends into the dataflow as one batch.
const STREAM_BATCH_ROWS: usize = 16_384;

/// The most records one read takes from the consumer before the loop looks at the clock again.
const READ_BATCH: u64 = 256;

/// Sends the rows read so far into the dataflow, keeping those the raw table lacks for it.
fn send_rows(columns: &mut RawColumns, raw_rows: &mut RawRows, raw_from: &Offsets, input: &mut dataflow::Input, failure: &crate::sink::Failure) {
    match columns.finish().and_then(|rows| raw_rows.push(&rows, raw_from).map(|()| rows)) {
        Ok(rows) => input.send(SourceRecord::Raw(rows)),
        Err(error) => failure.set(error),
    }
}

/// An epoch's raw rows as they are read (the records the raw table does not hold yet).
#[derive(Default)]
struct RawRows {
    batches: Vec<RecordBatch>,
    rows: usize,
}

impl RawRows {
    /// Keeps the rows of `batch` at or after `raw_from` (partition → first offset the raw table
    /// lacks): after a restart the raw table may be ahead of the others.
    fn push(&mut self, batch: &RecordBatch, raw_from: &Offsets) -> Result<()> {
        let partitions = raw_column::<arrow::datatypes::Int32Type>(batch, "source_partition")?.values();
        let offsets = raw_column::<arrow::datatypes::Int64Type>(batch, "source_offset")?.values();
        // Rows come in runs of one partition: its first missing offset is looked up once a run.
        let mut run: Option<(i32, i64)> = None;
        let keep: arrow::array::BooleanArray = partitions
            .iter()
            .zip(offsets.iter())
            .map(|(&partition, &offset)| {
                let from = match run {
                    Some((of, from)) if of == partition => from,
                    _ => run.insert((partition, raw_from.get(&partition).copied().unwrap_or(0))).1,
                };
                Some(offset >= from)
            })
            .collect();
        let batch = if keep.false_count() > 0 {
            arrow::compute::filter_record_batch(batch, &keep).context(|| "dropping rows the raw table holds".into())?
        } else {
            batch.clone()
        };
        self.rows += batch.num_rows();
        self.batches.push(batch);
        Ok(())
    }

    fn len(&self) -> usize {
        self.rows
    }

    /// The epoch's rows per ingestion date, each day's in partition and offset order, leaving it
    /// empty. A consumer reads each partition in offset order, so the rows grouped by (date,
    /// partition) in the order they were read are already in that order: one pass instead of
    /// joining the epoch's batches and sorting them. Should a partition's offsets ever go
    /// backwards within a group, the rows are sorted instead.
    ///
    /// A partition's records arrive a fetch at a time, in runs of hundreds or thousands, so a day
    /// is handed on as slices of the batches as read, without copying a row. A day read in short
    /// runs (partitions interleaved record by record) is gathered into one batch instead, since
    /// the writer pays a fixed cost per batch.
    fn take(&mut self, schema: &arrow_schema::SchemaRef) -> Result<Vec<(i32, Vec<RecordBatch>)>> {
        self.rows = 0;
        let batches = std::mem::take(&mut self.batches);
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Ok(Vec::new());
        }
        match arrival_groups(&batches)? {
            Some(groups) => {
                let sources: Vec<&RecordBatch> = batches.iter().collect();
                let mut days: Vec<(i32, Vec<RecordBatch>)> = Vec::new();
                let mut runs: Vec<Run> = Vec::new();
                let mut groups = groups.into_iter().peekable();
                while let Some(((day, _), (_, group))) = groups.next() {
                    runs.extend(group);
                    if groups.peek().is_none_or(|((next_day, _), _)| *next_day != day) {
                        let rows: usize = runs.iter().map(|run| run.rows).sum();
                        let batches = if rows >= runs.len() * SHORTEST_SLICED_RUN {
                            runs.iter().map(|run| batches[run.batch].slice(run.first, run.rows)).collect()
                        } else {
                            let rows: Vec<(usize, usize)> = runs.iter().flat_map(|run| (run.first..run.first + run.rows).map(|row| (run.batch, row))).collect();
                            vec![crate::records::interleave_rows(&sources, &rows)?]
                        };
                        days.push((day, batches));
                        runs.clear();
                    }
                }
                Ok(days)
            }
            None => {
                let all = arrow::compute::concat_batches(schema, &batches).context(|| "joining the epoch's raw rows".into())?;
                let all = crate::records::sorted_by(&all, &["ingestion_date", "source_partition", "source_offset"])?;
                Ok(crate::records::day_runs(&all, "ingestion_date")?.into_iter().map(|(day, rows)| (day, vec![rows])).collect())
            }
        }
    }
}

/// A day's raw rows are handed on as slices when its runs average at least this many rows, and
/// gathered into one batch otherwise.
const SHORTEST_SLICED_RUN: usize = 256;

/// Consecutive rows of one batch.
#[derive(Debug, Clone, Copy)]
struct Run {
    batch: usize,
    first: usize,
    rows: usize,
}

/// Rows by (ingestion date, partition): the group's last offset and its runs, in reading order.
type ArrivalGroups = BTreeMap<(i32, i32), (i64, Vec<Run>)>;

/// A coordinate column of raw rows the stream built itself (so a missing or mistyped one is a bug).
fn raw_column<'a, T: arrow::datatypes::ArrowPrimitiveType>(batch: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::PrimitiveArray<T>> {
    use arrow::array::AsArray;
    let column = batch.column_by_name(name).ok_or_else(|| Error::Internal(format!("raw rows without {name}")))?;
    column.as_primitive_opt::<T>().ok_or_else(|| Error::Internal(format!("raw column {name} is {}, not {}", column.data_type(), T::DATA_TYPE)))
}

/// The rows of `batches` grouped by (ingestion date, partition), in the groups' order, each group
/// in reading order; `None` if a group's offsets are not ascending.
fn arrival_groups(batches: &[RecordBatch]) -> Result<Option<ArrivalGroups>> {
    use arrow::datatypes::{Date32Type, Int32Type, Int64Type};
    let mut groups = ArrivalGroups::new();
    for (index, batch) in batches.iter().enumerate() {
        let days = raw_column::<Date32Type>(batch, "ingestion_date")?.values();
        let partitions = raw_column::<Int32Type>(batch, "source_partition")?.values();
        let offsets = raw_column::<Int64Type>(batch, "source_offset")?.values();
        let mut row = 0;
        while row < batch.num_rows() {
            // Consecutive rows of one group (a partition's fetch, one day) go in together.
            let key = (days[row], partitions[row]);
            let (last_offset, runs) = groups.entry(key).or_insert_with(|| (i64::MIN, Vec::new()));
            let first = row;
            while row < batch.num_rows() && (days[row], partitions[row]) == key {
                if offsets[row] <= *last_offset {
                    return Ok(None);
                }
                *last_offset = offsets[row];
                row += 1;
            }
            runs.push(Run { batch: index, first, rows: row - first });
        }
    }
    Ok(Some(groups))
}

/// Where a worker's records come from: librdkafka, or the native fetch path beside a librdkafka
/// consumer that is assigned nothing (it stores the group's offsets and reads watermarks).
enum Records {
    Librdkafka(BatchConsumer),
    Native { fetcher: NativeFetcher, consumer: BaseConsumer },
}

impl Records {
    fn consumer(&self) -> &BaseConsumer {
        match self {
            Records::Librdkafka(batch) => batch.consumer(),
            Records::Native { consumer, .. } => consumer,
        }
    }

    /// The offset after the last record handed over from `partition`.
    fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        match self {
            Records::Librdkafka(batch) => {
                let position = batch.consumer().position().ok()?;
                position.find_partition(topic, partition).and_then(|e| e.offset().to_raw()).filter(|o| *o >= 0)
            }
            Records::Native { fetcher, .. } => fetcher.position(partition),
        }
    }
}

/// One worker's consumer and decoder.
struct PartitionReader {
    records: Records,
    decoder: Decoder,
    topic: String,
    raw_from: Offsets,
    partitions: Vec<i32>,
    /// The newest ingestion date read from each partition in this run.
    newest_day: BTreeMap<i32, i32>,
    metrics: Option<Arc<Metrics>>,
}

impl PartitionReader {
    fn new(
        settings: &StreamSettings,
        partitions: &[i32],
        resume: &Resume,
        runtime: &tokio::runtime::Handle,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self> {
        let consumer = settings.kafka.consumer()?;
        let starts: Vec<(i32, Option<i64>)> = partitions.iter().map(|p| (*p, resume.start(*p))).collect();
        let records = match FetchSettings::of(&settings.kafka)? {
            Some(native) => {
                tracing::debug!(?partitions, "fetching natively");
                Records::Native { fetcher: NativeFetcher::start(native, &starts)?, consumer }
            }
            None => {
                tracing::debug!(?partitions, "fetching through librdkafka");
                // Partition leaders into this consumer's metadata cache first: librdkafka asks for
                // the start offsets as soon as partitions are assigned, and one that finds no
                // leader yet retries 500 ms later, so every start (and test) would idle half a
                // second.
                if !partitions.is_empty() {
                    settings.kafka.partitions(&consumer, Duration::from_secs(15))?;
                }
                Records::Librdkafka(BatchConsumer::assign(consumer, &settings.kafka.topic, &starts)?)
            }
        };
        let registry = RegistryClient::new(&settings.registry_url, settings.registry_timeout)?;
        let retries = metrics.as_ref().map(|m| m.registry_retries.clone());
        let decoder = Decoder::new(
            settings.reader_schema.clone(),
            registry,
            runtime.clone(),
            Backoff::default(),
            settings.stop.clone(),
            Box::new(move || {
                if let Some(counter) = &retries {
                    counter.inc();
                }
            }),
        );
        Ok(PartitionReader {
            records,
            decoder,
            topic: settings.kafka.topic.clone(),
            raw_from: resume.raw.clone(),
            partitions: partitions.to_vec(),
            // What curated reflects of these partitions: a restart settles days as the run did.
            newest_day: resume.partition_days.iter().filter(|(p, _)| partitions.contains(p)).map(|(p, d)| (*p, *d)).collect(),
            metrics,
        })
    }

    /// Reads up to `max` records into `columns`, noting each in `meta`, waiting up to `wait` for
    /// the first if none is buffered. Returns how many were read; stops at a failure (set).
    fn read(&mut self, wait: Duration, max: u64, meta: &mut EpochMeta, columns: &mut RawColumns, failure: &crate::sink::Failure) -> u64 {
        if self.partitions.is_empty() {
            std::thread::sleep(wait);
            return 0;
        }
        let (decoder, topic, newest_day) = (&mut self.decoder, self.topic.as_str(), &mut self.newest_day);
        let before = meta.records;
        let mut failed = false;
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        // Records come in runs of one partition: its next offset and newest day are noted once
        // per run, not per record.
        let mut run: Option<(i32, i64, i32)> = None;
        let mut days: Option<EpochDays> = None;
        let each = |record: Fetched<'_>| {
            if failed {
                // The run stops; records after the failure are not noted, so no table claims them.
                return;
            }
            let ingestion_ts_ms = record.timestamp_ms.unwrap_or_else(now_ms);
            let at = Coordinates { topic, partition: record.partition, offset: record.offset, ingestion_ts_ms };
            let decoded = decoder.decode(record.payload, columns, at);
            if let Err(error) = decoded.map(|read| read.unwrap_or_else(|undecodable| columns.append_undecodable(undecodable, at))) {
                failure.set(error);
                failed = true;
                return;
            }
            let day = day_of_millis(ingestion_ts_ms);
            days = Some(EpochDays::merge(days, EpochDays { first: day, last: day }));
            match &mut run {
                Some((partition, next, newest)) if *partition == record.partition => {
                    *next = record.offset + 1;
                    *newest = (*newest).max(day);
                }
                _ => {
                    if let Some((partition, next, newest)) = run.replace((record.partition, record.offset + 1, day)) {
                        note_day(newest_day, partition, newest);
                        meta.offsets.insert(partition, next);
                    }
                }
            }
            meta.records += 1;
        };
        let fetched = match &mut self.records {
            Records::Librdkafka(batch) => Ok(batch.read(wait, max, each)),
            Records::Native { fetcher, .. } => fetcher.read(wait, max, each),
        };
        if let Some((partition, next, newest)) = run {
            note_day(newest_day, partition, newest);
            meta.offsets.insert(partition, next);
        }
        if let Some(days) = days {
            meta.days = Some(EpochDays::merge(meta.days, days));
        }
        if let Err(error) = fetched {
            failure.set(error);
        }
        meta.records - before
    }

    /// The earliest of this worker's partitions' newest ingestion dates (what curated reflects of
    /// them at the start, then what this run read; partitions that never delivered do not count).
    fn settled_day(&self) -> Option<i32> {
        self.newest_day.values().min().copied()
    }

    /// After an epoch is in the tables: tell the consumer group where we are (for lag tools
    /// only) and refresh the lag gauges.
    fn after_commit(&self, offsets: &Offsets) {
        if !offsets.is_empty() {
            let mut list = TopicPartitionList::new();
            for (partition, next) in offsets {
                // Only fails for an invalid offset, which a consumed record's successor is not.
                let _ = list.add_partition_offset(&self.topic, *partition, Offset::Offset(*next));
            }
            if let Err(error) = self.records.consumer().commit(&list, KafkaCommitMode::Async) {
                tracing::debug!(%error, "could not store the group's offsets (monitoring only)");
            }
        }
        let Some(metrics) = &self.metrics else { return };
        for partition in &self.partitions {
            let next = self.records.position(&self.topic, *partition);
            if let (Some(next), Ok((_, high))) =
                (next, self.records.consumer().fetch_watermarks(&self.topic, *partition, Duration::from_millis(500)))
            {
                metrics.consumer_lag(*partition).set((high - next).max(0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Date32Array, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use rand::{Rng, SeedableRng};

    use super::*;

    fn schema() -> arrow_schema::SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("payload", DataType::Utf8, true),
            Field::new("ingestion_date", DataType::Date32, false),
            Field::new("source_partition", DataType::Int32, false),
            Field::new("source_offset", DataType::Int64, false),
            Field::new("ingestion_ts_ms", DataType::Int64, false),
        ]))
    }

    /// Batches as a consumer reads them: each of 4 partitions in offset order, runs of one
    /// partition interleaved. In half the seeds the runs are short and ingestion dates jump back
    /// and forth within a partition; in the others runs are fetch-sized, one date each.
    fn read_batches(seed: u64) -> Vec<RecordBatch> {
        let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut next_offset = [0i64; 4];
        let fetch_sized = seed % 2 == 1;
        (0..random.random_range(1..6))
            .map(|_| {
                let (mut days, mut partitions, mut offsets, mut payloads) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for _ in 0..random.random_range(0..if fetch_sized { 12 } else { 40 }) {
                    let partition = random.random_range(0..4);
                    let (rows, run_day) = if fetch_sized { (random.random_range(200..700), Some(20_000 + random.random_range(0..3))) } else { (random.random_range(1..8), None) };
                    for _ in 0..rows {
                        next_offset[partition] += random.random_range(1..3);
                        days.push(run_day.unwrap_or_else(|| 20_000 + random.random_range(0..3)));
                        partitions.push(partition as i32);
                        offsets.push(next_offset[partition]);
                        payloads.push(format!("p{partition}o{}", next_offset[partition]));
                    }
                }
                let payloads_len = payloads.len();
                RecordBatch::try_new(
                    schema(),
                    vec![
                        Arc::new(StringArray::from(payloads)),
                        Arc::new(Date32Array::from(days)),
                        Arc::new(Int32Array::from(partitions)),
                        Arc::new(Int64Array::from(offsets)),
                        Arc::new(Int64Array::from(vec![0; payloads_len])),
                    ],
                )
                .unwrap()
            })
            .collect()
    }

    /// (date, partition, offset, payload) of each row.
    fn row_tuples(batch: &RecordBatch) -> Vec<(i32, i32, i64, String)> {
        (0..batch.num_rows())
            .map(|row| {
                (
                    batch.column(1).as_primitive::<arrow::datatypes::Date32Type>().value(row),
                    batch.column(2).as_primitive::<arrow::datatypes::Int32Type>().value(row),
                    batch.column(3).as_primitive::<arrow::datatypes::Int64Type>().value(row),
                    batch.column(0).as_string::<i32>().value(row).to_string(),
                )
            })
            .collect()
    }

    fn rows_of(days: &[(i32, Vec<RecordBatch>)]) -> Vec<(i32, i32, i64, String)> {
        let mut rows = Vec::new();
        for (day, batches) in days {
            for batch in batches {
                let tuples = row_tuples(batch);
                assert!(tuples.iter().all(|(date, ..)| date == day), "a row sits under another day");
                rows.extend(tuples);
            }
        }
        rows
    }

    #[test]
    fn raw_rows_come_out_per_day_in_partition_and_offset_order_like_a_sort() {
        let mut sliced_days = 0;
        for seed in 0..200 {
            let batches = read_batches(seed);
            let mut oracle: Vec<_> = batches.iter().flat_map(row_tuples).collect();
            oracle.sort();
            let mut raw = RawRows::default();
            for batch in batches {
                raw.push(&batch, &Offsets::new()).unwrap();
            }
            let days = raw.take(&schema()).unwrap();
            let mut seen_days: Vec<i32> = days.iter().map(|(day, _)| *day).collect();
            seen_days.dedup();
            assert_eq!(seen_days.len(), days.len(), "seed {seed}: a day comes out twice");
            assert_eq!(rows_of(&days), oracle, "seed {seed}");
            assert_eq!(raw.len(), 0);
            sliced_days += days.iter().filter(|(_, batches)| batches.len() > 1).count();
        }
        assert!(sliced_days > 100, "only {sliced_days} days were handed on as slices");
    }

    #[test]
    fn raw_rows_the_raw_table_already_holds_are_dropped_and_no_others() {
        let mut dropped = 0;
        for seed in 0..100 {
            let batches = read_batches(seed);
            let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1000);
            // The raw table holds each partition up to some offset (partition 3: none of it).
            let raw_from: Offsets = (0..3).map(|partition| (partition, random.random_range(0..400))).collect();
            let mut oracle: Vec<_> = batches.iter().flat_map(row_tuples).filter(|(_, partition, offset, _)| *offset >= raw_from.get(partition).copied().unwrap_or(0)).collect();
            oracle.sort();
            let mut raw = RawRows::default();
            for batch in &batches {
                raw.push(batch, &raw_from).unwrap();
            }
            dropped += batches.iter().map(RecordBatch::num_rows).sum::<usize>() - raw.len();
            assert_eq!(rows_of(&raw.take(&schema()).unwrap()), oracle, "seed {seed}");
        }
        assert!(dropped > 1000, "only {dropped} rows were held already");
    }

    #[test]
    fn raw_rows_whose_offsets_go_backwards_are_still_sorted() {
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(vec!["b", "a", "c"])),
                Arc::new(Date32Array::from(vec![20_000, 20_000, 19_999])),
                Arc::new(Int32Array::from(vec![0, 0, 0])),
                Arc::new(Int64Array::from(vec![7, 3, 9])),
                Arc::new(Int64Array::from(vec![0, 0, 0])),
            ],
        )
        .unwrap();
        let mut raw = RawRows::default();
        raw.push(&batch, &Offsets::new()).unwrap();
        let rows = rows_of(&raw.take(&schema()).unwrap());
        assert_eq!(rows, vec![(19_999, 0, 9, "c".into()), (20_000, 0, 3, "a".into()), (20_000, 0, 7, "b".into())]);
    }
}
