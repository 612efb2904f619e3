//! The one dataflow both modes run: only the source differs.
//!
//! ```text
//!  driver (per worker): seeds at epoch 0, then raw batches (replay: raw Parquet; stream: Kafka)
//!        │ SourceRecord
//!        ▼
//!  Rules on each batch: validate, derive, late cut, frozen keys, plugin chain ──rejected rows──┐
//!        │ Candidates batches, split by the worker owning their keys                          │
//!        ▼                                                                                    │
//!  exchange(owner) → Upsert arrangement (key → Slot) ──late updates, as ingested──────────────┤
//!        │ per partition: keys whose row leaves it, new rows as one batch                      │
//!        ▼ exchange(partition)                                                                 ▼
//!  CuratedWriter (per partition: new data files, position delete files)                        │
//!        │ ReportFailures: this process failed? → Failed                                       ▼
//!        └──────────────────────────────────────────────────────────────────────────► Committer (worker 0)
//!  stream only: epoch facts (offsets, days) ─exchange(first worker of each process)─► Settle      ▲
//!               raw rows of the epoch ─► RawWriter (same worker; files on the I/O runtime) ───────┘
//!  Committer ── "stopped: why" ── broadcast ─► every worker's failure flag ─► probe
//! ```
//!
//! The driver feeds one epoch and advances its input; replay then waits on the probe until the
//! committer has committed it, stream reads one more epoch meanwhile. The committer commits
//! nothing after a failure, so nothing lands on top of a failed epoch.
//!
//! The same dataflow runs over several processes ([`crate::cluster`]): everything the committer
//! needs reaches it as data, so a worker in another process is no different from one beside it.
//! Each process's first worker keeps every worker's epoch facts (`Settle`), which the upsert and
//! the writers read when an epoch completes. A failure in a process reaches the committer as
//! [`SinkMessage::Failed`] before the epoch it may have spoilt completes (`ReportFailures`), and
//! the committer's stop reaches every process through the broadcast, so no driver reads on for a
//! run that can no longer commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, Date32Array, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, Schema, SchemaRef};
use iceberg::TableIdent;
use iceberg::scan::FileScanTask;
use iceberg::table::Table;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::{Concat, OkErr};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::vec::{Broadcast, Partition};
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};
use timely::worker::Worker;

use crate::catalog::Lakehouse;
use crate::commit::CommitOptions;
use crate::error::{Context, Error, Result};
use crate::metrics::Metrics;
use crate::model::{KeyMap, Origin, RejectReason, format_date};
use crate::pipeline::LINEAGE;
use crate::reader::read_tasks;
use crate::records::{Batch, Candidates, PrintedKey, Shares, Slot, fingerprinted_columns, fingerprints, order_values, Positions, rejected_batch, take_rows as take, uuid_text};
use crate::rules::Rules;
use crate::rules::chain::RuleChain;
use crate::sink::committer::{CommitMode, CommitStats, Committer, Fences};
use crate::sink::curated::{CuratedWriter, DayChange, Location};
use crate::sink::raw_writer::{RawRows, RawWriter};
use crate::sink::{EpochLog, EpochMeta, Failure, SinkMessage};
use crate::source::kafka::Offsets;
use crate::upsert::{UpsertChange, UpsertCounters, UpsertInput, route, upsert};
use crate::writer::read_position_deletes;

/// How long a driver waiting for an epoch to be committed parks between looks at the probe when
/// its worker has nothing to do. Parking instead of spinning leaves the core to the operators,
/// the I/O runtime's writers and the commit the driver is waiting for; a worker is woken early
/// when data or progress reaches it.
pub const WAIT_PARK: std::time::Duration = std::time::Duration::from_millis(1);

/// A record entering the dataflow.
#[derive(Debug, Clone)]
pub enum SourceRecord {
    /// Raw rows: a batch in the raw table's schema.
    Raw(RecordBatch),
    /// A curated row inside the lateness window: its key, slot and where it sits.
    Seed(u128, Slot, Location),
    /// A live data or position delete file of a curated partition inside the lateness window.
    SeedFile { day: i32, path: Arc<str>, deletes: bool },
    /// Stream: what this worker learned about the epoch (its offsets, days, records), sent before
    /// it advances past it.
    Facts(EpochMeta),
    /// Stream: this worker's rows of the epoch, per ingestion date, for the raw table.
    RawRows(RawRows),
}

/// What the rules stage needs besides the rules.
pub struct RulesContext {
    pub rules: Rules,
    /// The graph's rule plugins, instantiated once per worker.
    pub chain: RuleChain,
    /// Key → partition day of every key whose row can no longer change.
    pub frozen: Arc<KeyMap<i32>>,
    /// Stream restart: records below these offsets are already in the curated table; they are
    /// read again only for a table that is behind, so they must not enter the upsert again.
    pub curated_from: Option<Arc<Offsets>>,
    /// Input records that passed the rules and entered the upsert.
    pub accepted: Arc<AtomicU64>,
    /// The curated table's Arrow schema (curated columns, then lineage).
    pub curated_schema: SchemaRef,
    /// A UUID key's column, which curated rows leave out until they are written or rejected.
    pub printed_key: Option<PrintedKey>,
    /// The rejected table's Arrow schema.
    pub rejected_schema: SchemaRef,
    /// The graph's topic: a record's own topic is kept only where it differs.
    pub topic: Arc<str>,
}

/// The detail of every late update: where the key's row sits, frozen.
pub fn late_update_detail(partition_column: &str, frozen_day: i32) -> String {
    format!("the key's current row is in frozen partition {partition_column}={}", format_date(frozen_day))
}

/// One raw batch after the engine's rules: its rejected rows (a rejected-table batch) and, for the
/// rows that go on to the plugins, the offered columns, the rows as ingested, and their keys,
/// order values and partition days.
struct Judged {
    rejected: Option<RecordBatch>,
    working: RecordBatch,
    ingested: RecordBatch,
    /// Columns of `ingested` that `working` holds as they are (the same arrays): unless a plugin
    /// writes one, the curated rows hold it as ingested, and no row needs comparing.
    unchanged: BTreeSet<String>,
    keys: Vec<u128>,
    orders: Vec<i64>,
    days: Vec<i32>,
}

fn project(batch: &RecordBatch, names: &[&str]) -> Result<RecordBatch> {
    let schema = batch.schema();
    let indices = names
        .iter()
        .map(|name| schema.index_of(name).map_err(|_| Error::Internal(format!("column {name} is missing"))))
        .collect::<Result<Vec<_>>>()?;
    batch.project(&indices).context(|| "projecting rows".into())
}

/// The engine's part of the rules stage for one raw batch: validation ([`Rules::judge`]), frozen
/// keys, and what curated holds already (stream restart).
fn judge(raw: &RecordBatch, context: &RulesContext) -> Result<Judged> {
    let rules = &context.rules;
    let pipeline = &rules.pipeline;
    let judged = rules.judge(raw)?;
    let keys_as_ingested = judged.keys_as_ingested;
    let mut rejected_rows = judged.rejected;
    let (mut reasons, mut details) = (judged.reasons, judged.details);
    // Only a stream restart needs the coordinates here: the offsets curated holds already.
    let resumed = match &context.curated_from {
        Some(from) => Some((from, Positions::of(raw)?)),
        None => None,
    };
    let mut kept = Vec::with_capacity(judged.accepted.len());
    let (mut keys, mut orders, mut days) = (Vec::new(), Vec::new(), Vec::new());
    for (i, &row) in judged.accepted.iter().enumerate() {
        let key = judged.keys[i];
        if let Some(day) = context.frozen.get(&key) {
            rejected_rows.push(row);
            reasons.push(RejectReason::LateUpdate.as_str().to_string());
            details.push(late_update_detail(&pipeline.partitioning.column, *day));
            continue;
        }
        if let Some((from, coordinates)) = &resumed
            && let position = coordinates.get(row as usize)
            && position.offset < from.get(&position.partition).copied().unwrap_or(0)
        {
            continue;
        }
        kept.push(row);
        keys.push(key);
        orders.push(judged.orders[i]);
        days.push(judged.days[i]);
    }
    let rejected = if rejected_rows.is_empty() {
        None
    } else {
        Some(rejected_batch(&context.rejected_schema, &take(raw, &rejected_rows)?, reasons, details)?)
    };
    let event_names: Vec<&str> = pipeline.event_columns.iter().map(|f| f.name.as_str()).collect();
    let mut ingested_names = event_names.clone();
    ingested_names.extend(crate::records::COORDINATES);
    // Only the columns used from here on are copied: not the raw table's ingestion date, decode
    // error, detail and payload.
    let ingested = take(&project(raw, &ingested_names)?, &kept)?;
    // The offered columns: event columns (a uuid key in canonical form), the partition column,
    // the lineage.
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for name in &event_names {
        let column = ingested.column_by_name(name).ok_or_else(|| Error::Internal(format!("column {name} is missing")))?;
        // A uuid key whose every text is canonical already is offered as ingested, not printed.
        let column: ArrayRef = if rules.keys.canonical() && *name == pipeline.key[0] && !keys_as_ingested {
            Arc::new(uuid_text(&keys)?)
        } else {
            column.clone()
        };
        fields.push(Field::new(*name, column.data_type().clone(), true));
        columns.push(column);
    }
    if !event_names.contains(&pipeline.partitioning.column.as_str()) {
        fields.push(Field::new(&pipeline.partitioning.column, arrow::datatypes::DataType::Date32, false));
        columns.push(Arc::new(Date32Array::from(days.clone())));
    }
    for (name, _) in LINEAGE {
        let column = ingested.column_by_name(name).ok_or_else(|| Error::Internal(format!("column {name} is missing")))?;
        fields.push(Field::new(name, column.data_type().clone(), false));
        columns.push(column.clone());
    }
    let options = RecordBatchOptions::new().with_row_count(Some(kept.len()));
    let working = RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options).context(|| "assembling the rules' columns".into())?;
    let working = crate::pipeline::stages::apply_all(&pipeline.stages, &working)?;
    let unchanged = event_names
        .iter()
        .filter(|name| match (working.column_by_name(name), ingested.column_by_name(name)) {
            (Some(offered), Some(as_ingested)) => Arc::ptr_eq(offered, as_ingested),
            _ => false,
        })
        .map(|name| name.to_string())
        .collect();
    Ok(Judged { rejected, working, ingested, unchanged, keys, orders, days })
}

/// The candidates of the rows the plugin chain kept, in the curated table's columns, dealt to the
/// `peers` workers by the owner of their keys (shares of one batch; empty shares included).
#[allow(clippy::too_many_arguments)]
fn candidates(
    applied: crate::rules::chain::Applied,
    ingested: &RecordBatch,
    unchanged: &BTreeSet<String>,
    keys: &[u128],
    orders: &[i64],
    days: &[i32],
    context: &RulesContext,
    peers: usize,
) -> Result<Vec<Candidates>> {
    let schema = &context.curated_schema;
    let rows = applied.batch;
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = rows.column_by_name(field.name()).ok_or_else(|| Error::Internal(format!("curated column {} is missing after the rules", field.name())))?;
        let column = if column.data_type() == field.data_type() {
            column.clone()
        } else {
            arrow::compute::cast(column, field.data_type()).context(|| format!("curated column {}", field.name()))?
        };
        columns.push(column);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(rows.num_rows()));
    let rows = RecordBatch::try_new_with_options(schema.clone(), columns, &options).context(|| "assembling curated rows".into())?;
    let positions = Positions::of(&rows)?;
    let kept = &applied.kept;
    // A cast order column: its curated values order the records (a restart reads those back).
    let cast_orders = match context.rules.pipeline.order_cast {
        true => {
            let column = rows.column_by_name(&context.rules.pipeline.order_by).ok_or_else(|| Error::Internal("the order column is missing".into()))?;
            Some(order_values(column)?)
        }
        false => None,
    };
    // Each slot goes straight to its key's owner: sized up front (growing these lists of an
    // epoch's rows by doubling costs copies and fresh pages), written once.
    let mut shares = Shares::new(peers, kept.len());
    for (i, &row) in kept.iter().enumerate() {
        let order = match &cast_orders {
            Some(cast) => cast[i].ok_or_else(|| Error::Internal(format!("a stage made the order {} null", context.rules.pipeline.order_by)))?,
            None => orders[row as usize],
        };
        // No fingerprint yet: only a record meeting its reloaded row needs one (the upsert's doc).
        let slot = Slot { position: positions.get(i), origin: Origin::Input, order, day: days[row as usize], fingerprint: 0 };
        let key = keys[row as usize];
        shares.push(owner(key, peers), key, slot, i as u32)?;
    }
    let as_ingested = |name: &str| unchanged.contains(name) && !applied.written.contains(name);
    let ingested = differences(ingested, kept, &rows, &context.topic, as_ingested)?;
    let rows = match &context.printed_key {
        Some(printed) => printed.strip(rows),
        None => rows,
    };
    Ok(shares.finish(&rows, &ingested))
}

/// What `ingested` (the rows as ingested: event columns, coordinates), cut to the `kept` rows,
/// says that `rows` (their curated rows) does not: a column only where some row differs (a `uuid`
/// key in another spelling, a value a plugin replaced, an event column curated lacks, a topic not
/// the graph's), and in it only the differing values. Usually no column at all: late updates, the
/// one use, are rare, and the rows wait in the upsert for a whole epoch. A column `as_ingested`
/// names is known to be the same in `rows` and is not compared; the others are cut to the kept
/// rows only where they are compared.
fn differences(ingested: &RecordBatch, kept: &[u32], rows: &RecordBatch, topic: &str, as_ingested: impl Fn(&str) -> bool) -> Result<RecordBatch> {
    let count = rows.num_rows();
    let cut = |column: &ArrayRef, name: &str| -> Result<ArrayRef> {
        match kept.len() == column.len() {
            true => Ok(column.clone()),
            false => arrow::compute::take(column, &arrow::array::UInt32Array::from(kept.to_vec()), None).context(|| format!("cutting {name} to the kept rows")),
        }
    };
    let (mut fields, mut columns) = (Vec::new(), Vec::new());
    for (field, column) in ingested.schema().fields().iter().zip(ingested.columns()) {
        let name = field.name().as_str();
        if LINEAGE.iter().any(|(lineage, _)| *lineage == name) {
            continue;
        }
        let (column, same) = if name == "source_topic" {
            let topic = arrow::array::Scalar::new(arrow::array::StringArray::from(vec![topic]));
            let graphs = |column: &ArrayRef| arrow::compute::kernels::cmp::eq(column, &topic).context(|| "comparing topics".into());
            // Every row of the batch on the graph's topic: so are the kept ones.
            if graphs(column)?.true_count() == column.len() {
                continue;
            }
            let column = cut(column, name)?;
            let same = graphs(&column)?;
            (column, same)
        } else {
            match rows.column_by_name(name) {
                Some(curated) if curated.data_type() == column.data_type() => {
                    if as_ingested(name) {
                        continue;
                    }
                    let column = cut(column, name)?;
                    let same = arrow::compute::kernels::cmp::not_distinct(&column, curated).context(|| format!("comparing {name}"))?;
                    (column, same)
                }
                _ => (cut(column, name)?, arrow::array::BooleanArray::from(vec![false; count])),
            }
        };
        if same.true_count() == count {
            continue;
        }
        fields.push(field.as_ref().clone().with_nullable(true));
        columns.push(arrow::compute::nullif(&column, &same).context(|| format!("keeping {name} where it differs")).map(ArrayRef::from)?);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(count));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options).context(|| "rows as ingested".into())
}

/// Late updates as the rejected table records them: their curated rows with what `ingested` kept
/// of them as ingested laid over (see [`differences`]), and the graph's topic where they kept none.
fn as_ingested(rows: &RecordBatch, ingested: &RecordBatch, topic: &str) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = rows.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
    if ingested.column_by_name("source_topic").is_none() {
        fields.push(Field::new("source_topic", arrow::datatypes::DataType::Utf8, false));
        columns.push(Arc::new(arrow::array::StringArray::from(vec![topic; rows.num_rows()])));
    }
    for (field, column) in ingested.schema().fields().iter().zip(ingested.columns()) {
        match fields.iter().position(|f| f.name() == field.name()) {
            // A nested column's curated type can differ from its raw one (its fields' ids): then
            // `differences` kept the ingested column whole, so it replaces the curated one.
            Some(index) if fields[index].data_type() != column.data_type() => {
                fields[index] = field.as_ref().clone();
                columns[index] = column.clone();
            }
            Some(index) => {
                let kept = arrow::compute::is_not_null(column).context(|| "late updates as ingested".into())?;
                columns[index] = arrow::compute::kernels::zip::zip(&kept, column, &columns[index]).context(|| "late updates as ingested".into())?;
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    let fields: Vec<Field> = fields.into_iter().map(|f| f.with_nullable(true)).collect();
    let options = RecordBatchOptions::new().with_row_count(Some(rows.num_rows()));
    RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options).context(|| "late updates as ingested".into())
}

/// The rows the plugins rejected, as rejected-table rows.
fn plugin_rejections(rejected: &[(u32, String)], ingested: &RecordBatch, context: &RulesContext) -> Result<Option<RecordBatch>> {
    if rejected.is_empty() {
        return Ok(None);
    }
    let rows: Vec<u32> = rejected.iter().map(|(row, _)| *row).collect();
    let reasons = vec![RejectReason::RuleRejected.as_str().to_string(); rows.len()];
    let details = rejected.iter().map(|(_, detail)| detail.clone()).collect();
    Ok(Some(rejected_batch(&context.rejected_schema, &take(ingested, &rows)?, reasons, details)?))
}

/// `candidates` split by the worker owning each key (shares of the same batches, not copies),
/// as the rules stage sends them to the upsert; workers owning none of them get nothing.
pub fn by_owner(candidates: Candidates, peers: usize) -> Result<Vec<UpsertInput>> {
    if peers == 1 {
        return Ok(vec![UpsertInput::Rows { owner: 0, candidates }]);
    }
    Ok(upsert_inputs(candidates.split(peers, |key| owner(key, peers))?))
}

/// The worker of `peers` owning `key`.
fn owner(key: u128, peers: usize) -> usize {
    (route(key) % peers as u64) as usize
}

/// Shares (in worker order) as the upsert's input: workers owning none of them get nothing.
fn upsert_inputs(shares: Vec<Candidates>) -> Vec<UpsertInput> {
    shares
        .into_iter()
        .enumerate()
        .filter(|(_, share)| !share.is_empty())
        .map(|(owner, candidates)| UpsertInput::Rows { owner: owner as u64, candidates })
        .collect()
}

/// Where the dataflow's output goes: the same for every worker of a run.
#[derive(Clone)]
pub struct Sinks {
    pub lakehouse: Arc<Lakehouse>,
    pub curated_ident: TableIdent,
    pub curated: Table,
    pub rejected: Table,
    pub runtime: tokio::runtime::Handle,
    pub mode: CommitMode,
    pub options: CommitOptions,
    pub target_file_size: usize,
    /// The topic rows quarantined by a check are attributed to in the rejected table.
    pub topic: Arc<str>,
    pub stats: Arc<CommitStats>,
    pub metrics: Option<Arc<Metrics>>,
    /// The curated table's data-quality checks (the gate before each commit).
    pub checks: Arc<crate::checks::Checks>,
    /// The curated writer rewrites a changed partition holding this many files or more.
    pub compact_after_files: Option<usize>,
    /// This run's writer id, recorded in every snapshot it commits.
    pub writer: Arc<str>,
    /// Stream: the raw table, which the workers append their rows to.
    pub raw: Option<Table>,
}

/// The input a driver feeds.
pub type Input = InputHandle<u64, CapacityContainerBuilder<Vec<SourceRecord>>>;

/// Builds the dataflow on `worker`: rules → upsert → curated writer → committer.
/// Returns the input the driver feeds and the probe that tells which epochs are committed.
#[expect(clippy::result_large_err, reason = "`ok_err` routes records by returning them as `Ok` or `Err`: both are records, neither an error")]
pub fn build(worker: &mut Worker, context: RulesContext, shared: &Shared, sinks: &Sinks) -> (Input, ProbeHandle<u64>) {
    let writer = CuratedWriter {
        table: sinks.curated.clone(),
        runtime: sinks.runtime.clone(),
        target_file_size: sinks.target_file_size,
        worker: worker.index(),
        failure: shared.failure.clone(),
        epochs: shared.epochs.clone(),
        lateness_days: context.rules.lateness_days,
        checks: sinks.checks.clone(),
        topic: sinks.topic.clone(),
        compact_after_files: sinks.compact_after_files,
        pipeline: context.rules.pipeline.clone(),
        rejected_schema: context.rejected_schema.clone(),
        printed_key: context.printed_key.clone(),
    };
    let committer = Committer {
        lakehouse: sinks.lakehouse.clone(),
        curated: sinks.curated_ident.clone(),
        rejected: sinks.rejected.clone(),
        runtime: sinks.runtime.clone(),
        epochs: shared.epochs.clone(),
        mode: sinks.mode.clone(),
        options: sinks.options,
        target_file_size: sinks.target_file_size,
        stats: sinks.stats.clone(),
        metrics: sinks.metrics.clone(),
        failure: shared.failure.clone(),
        checks: sinks.checks.clone(),
        curated_snapshot: std::cell::Cell::new(sinks.curated.metadata().current_snapshot_id()),
        writer: sinks.writer.clone(),
        fences: Fences::at_start(&sinks.mode, &sinks.rejected, &sinks.curated),
    };
    let counters = shared.counters.clone();
    let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<SourceRecord>>> = InputHandle::new();
    let probe = ProbeHandle::new();
    let lateness_days = context.rules.lateness_days;
    // The leading columns of the candidates' rows that a slot's fingerprint hashes.
    let row_values = fingerprinted_columns(&context.rules.pipeline).len();
    let partition_column = context.rules.pipeline.partitioning.column.clone();
    let rejected_schema = context.rejected_schema.clone();
    let topic = context.topic.clone();
    let printed_key = context.printed_key.clone();
    let peers = worker.peers();
    let raw_writer = sinks.raw.clone().map(|table| RawWriter {
        table,
        runtime: sinks.runtime.clone(),
        target_file_size: sinks.target_file_size,
        worker: worker.index(),
        process: shared.process,
        failure: shared.failure.clone(),
    });
    let (process, processes) = (shared.process, shared.processes.max(1));
    worker.dataflow::<u64, _, _>(|scope| {
        // Seeds (epoch 0) go to the upsert and to the writer; raw batches only to the rules; an
        // epoch's facts to every process; its raw rows to this worker's raw writer.
        let mut parts = input.to_stream(scope).partition(3, |record| match record {
            SourceRecord::Facts(_) => (1, record),
            SourceRecord::RawRows(_) => (2, record),
            other => (0, other),
        });
        let raw_rows = parts.pop().expect("three parts").flat_map(|record| match record {
            SourceRecord::RawRows(rows) => Some(rows),
            _ => None,
        });
        let facts = parts.pop().expect("three parts").flat_map(|record| match record {
            SourceRecord::Facts(meta) => Some(meta),
            _ => None,
        });
        let (raw, seeds) = parts
            .pop()
            .expect("three parts")
            .ok_err::<Vec<RecordBatch>, RecordBatch, Vec<SourceRecord>, SourceRecord, _>(|record| match record {
                SourceRecord::Raw(batch) => Ok(batch),
                seed => Err(seed),
            });
        let seed_slots = seeds.clone().flat_map(|record| match record {
            SourceRecord::Seed(key, slot, _) => Some(UpsertInput::Seed { key, slot }),
            _ => None,
        });
        let seeds = seeds.flat_map(|record| match record {
            SourceRecord::Seed(key, slot, at) => Some(DayChange::Seed { day: slot.day, key, at }),
            SourceRecord::SeedFile { day, path, deletes } => Some(DayChange::SeedFile { day, path, deletes }),
            _ => None,
        });
        let failure = shared.failure.clone();
        let evaluated: timely::dataflow::StreamVec<u64, SinkOrUpsert> = raw.unary(Pipeline, "Rules", move |_capability, _info| {
            let mut chain = context.chain.instantiate().map_err(|error| failure.set(error)).ok();
            move |input, output| {
                input.for_each_time(|time, data| {
                    let mut session = output.session(&time);
                    // One call per plugin per raw batch (scans yield tens of thousands of rows).
                    for batch in data.flat_map(|batches| batches.drain(..)) {
                        // Once the run has failed (a plugin's error or panic here or on another
                        // worker) no plugin is called again: the run stops before this epoch commits.
                        if failure.is_set() {
                            chain = None;
                        }
                        let Some(live) = chain.as_mut() else { return };
                        match rules_step(&batch, live, &context, peers) {
                            Ok(out) => {
                                for item in out {
                                    session.give(item);
                                }
                            }
                            Err(error) => {
                                chain = None;
                                failure.set(error)
                            }
                        }
                    }
                });
            }
        });
        let (candidates, rule_rejections) =
            evaluated.ok_err::<Vec<UpsertInput>, UpsertInput, Vec<SinkMessage>, SinkMessage, _>(|x| x);
        let settled = settle(facts, &shared.epochs, peers / processes, processes, process == 0);
        let epochs = shared.epochs.clone();
        let changes = upsert(candidates.concat(seed_slots).concat(settled), lateness_days, row_values, move |epoch| epochs.settled_day(epoch), counters, shared.failure.clone());
        let failure = shared.failure.clone();
        let (day_changes, late_updates) = changes.ok_err::<Vec<DayChange>, DayChange, Vec<SinkMessage>, SinkMessage, _>(move |change| match change {
            UpsertChange::Remove { day, key } => Ok(DayChange::Remove { day, key }),
            UpsertChange::Insert { day, keys, rows } => Ok(DayChange::Insert { day, keys, rows }),
            UpsertChange::LateUpdates { keys, rows, ingested, frozen_days } => {
                let reasons = vec![RejectReason::LateUpdate.as_str().to_string(); frozen_days.len()];
                let details = frozen_days.iter().map(|day| late_update_detail(&partition_column, *day)).collect();
                let rows = match &printed_key {
                    Some(printed) => printed.restore(&rows.0, &keys),
                    None => Ok(rows.0),
                };
                match rows.and_then(|rows| as_ingested(&rows, &ingested.0, &topic)).and_then(|source| rejected_batch(&rejected_schema, &source, reasons, details)) {
                    Ok(batch) => Err(SinkMessage::Rejected(Batch::new(batch))),
                    Err(error) => {
                        failure.set(error);
                        Err(SinkMessage::Rejected(Batch::new(RecordBatch::new_empty(rejected_schema.clone()))))
                    }
                }
            }
        });
        let curated_files = report_failures(writer.build(day_changes.concat(seeds)), shared.failure.clone(), process);
        let mut to_commit = late_updates.concat(curated_files).concat(rule_rejections);
        if let Some(raw_writer) = raw_writer {
            to_commit = to_commit.concat(raw_writer.build(raw_rows));
        }
        let failure = shared.failure.clone();
        committer
            .build(to_commit)
            .broadcast()
            .inspect(move |message| {
                if !failure.is_set() {
                    failure.set(Error::PeerFailed(format!("process 0 stopped committing: {message}")));
                }
            })
            .probe_with(&probe);
    });
    (input, probe)
}

/// Epochs of facts a process without the committer keeps.
const FACTS_KEPT: u64 = 16;

/// Every worker's facts of each epoch, merged into each process's [`EpochLog`] by its first
/// worker (workers `process * per_process`). Gives nothing: concatenated into the upsert's input,
/// it holds the upsert (and so the writer and the committer) at an epoch until every fact of the
/// epoch is in the log, in every process.
fn settle<'scope>(
    facts: timely::dataflow::StreamVec<'scope, u64, EpochMeta>,
    epochs: &EpochLog,
    per_process: usize,
    processes: usize,
    committing: bool,
) -> timely::dataflow::StreamVec<'scope, u64, UpsertInput> {
    let epochs = epochs.clone();
    facts
        .flat_map(move |meta| (0..processes).map(move |process| ((process * per_process) as u64, meta.clone())))
        .unary::<CapacityContainerBuilder<Vec<UpsertInput>>, _, _, _>(Exchange::new(|(leader, _): &(u64, EpochMeta)| *leader), "Settle", move |_capability, _info| {
            move |input, _output| {
                input.for_each_time(|time, data| {
                    for (_, meta) in data.flat_map(|facts| facts.drain(..)) {
                        epochs.merge(*time.time(), meta);
                    }
                    // The committer takes each epoch's entry; elsewhere an entry is done once the
                    // upsert and the writers have passed its epoch, long before this: a worker
                    // reads ahead of the commits by one epoch.
                    if !committing {
                        epochs.forget_before(time.time().saturating_sub(FACTS_KEPT));
                    }
                });
            }
        })
}

/// Passes the writer's messages on, and tells the committer when this process has failed.
///
/// It holds a capability at the earliest epoch not yet known to be sound here. Once the writer's
/// frontier has passed epochs (so every operator upstream, in every process, is done with them)
/// and this process has no failure, it moves on to that frontier; if this process has failed, it
/// sends [`SinkMessage::Failed`] at the epoch it holds, which the committer has not committed yet.
/// Failures in other processes are their own instances' to report.
fn report_failures<'scope>(messages: timely::dataflow::StreamVec<'scope, u64, SinkMessage>, failure: Failure, process: usize) -> timely::dataflow::StreamVec<'scope, u64, SinkMessage> {
    messages.unary_frontier(Pipeline, "ReportFailures", move |capability, _info| {
        let mut held = Some(capability);
        move |(input, frontier), output| {
            input.for_each_time(|time, data| {
                let mut session = output.session(&time);
                for batch in data {
                    session.give_iterator(batch.drain(..));
                }
            });
            let Some(capability) = held.as_mut() else { return };
            let passed = frontier.frontier().first().copied();
            if let Some(message) = failure.describe() {
                output.session(capability).give(SinkMessage::Failed { process, message });
                held = None;
                return;
            }
            match passed {
                Some(time) if time > *capability.time() => capability.downgrade(&time),
                Some(_) => {}
                None => held = None,
            }
        }
    })
}

/// The rules stage for one raw batch: the engine's rules, then the plugin chain; rows for the
/// upsert (split by owner) and rejected rows.
fn rules_step(batch: &RecordBatch, chain: &mut crate::rules::chain::ChainInstance, context: &RulesContext, peers: usize) -> Result<Vec<SinkOrUpsert>> {
    let mut judged = judge(batch, context)?;
    let mut out = Vec::new();
    if let Some(rejected) = judged.rejected.take() {
        out.push(Err(SinkMessage::Rejected(Batch::new(rejected))));
    }
    if judged.working.num_rows() == 0 {
        return Ok(out);
    }
    let applied = chain.apply(judged.working)?;
    if let Some(rejected) = plugin_rejections(&applied.rejected, &judged.ingested, context)? {
        out.push(Err(SinkMessage::Rejected(Batch::new(rejected))));
    }
    let shares = candidates(applied, &judged.ingested, &judged.unchanged, &judged.keys, &judged.orders, &judged.days, context, peers)?;
    context.accepted.fetch_add(shares.iter().map(Candidates::len).sum::<usize>() as u64, Ordering::Relaxed);
    out.extend(upsert_inputs(shares).into_iter().map(Ok));
    Ok(out)
}

/// What the rules stage emits: rows for the upsert, or rejected rows for the committer.
type SinkOrUpsert = std::result::Result<UpsertInput, SinkMessage>;

/// This worker's share of `tasks` (round-robin over the tasks in file order: the planner's own
/// order can differ between processes, and every process must split the same list the same way).
pub fn share_of(tasks: &[FileScanTask], index: usize, peers: usize) -> Vec<FileScanTask> {
    let mut ordered: Vec<&FileScanTask> = tasks.iter().collect();
    ordered.sort_by(|a, b| (&a.data_file_path, a.start).cmp(&(&b.data_file_path, b.start)));
    ordered.into_iter().enumerate().filter(|(i, _)| i % peers == index).map(|(_, t)| t.clone()).collect()
}

/// The slot of every row of a curated batch, and its key (rows read back at start).
pub fn curated_slots(batch: &RecordBatch, rules: &Rules) -> Result<Vec<(u128, Slot)>> {
    let pipeline = &rules.pipeline;
    let keys = rules.keys.keys(batch)?.all("the curated table")?;
    let column = |name: &str| batch.column_by_name(name).ok_or_else(|| Error::User(format!("curated column {name} is missing from the table")));
    let orders = order_values(column(&pipeline.order_by)?)?;
    let days = order_values(column(&pipeline.partitioning.column)?)?;
    let values: Vec<ArrayRef> = fingerprinted_columns(pipeline).into_iter().map(|name| column(name).cloned()).collect::<Result<_>>()?;
    let prints = fingerprints(&values)?;
    let positions = Positions::of(batch)?;
    let mut slots = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let key = keys[row];
        let (Some(order), Some(day)) = (orders[row], days[row]) else {
            return Err(Error::User(format!("curated table holds a row without {} or {}", pipeline.order_by, pipeline.partitioning.column)));
        };
        let day = i32::try_from(day).map_err(|_| Error::User(format!("curated partition value {day} is not a day")))?;
        slots.push((key, Slot { position: positions.get(row), origin: Origin::Seed, order, day, fingerprint: prints[row] }));
    }
    Ok(slots)
}

/// Epoch 0: feeds this worker's share of the curated rows inside the lateness window as seeds,
/// then waits until every worker's seeds are in the upsert.
#[allow(clippy::too_many_arguments)]
pub fn feed_seeds(
    worker: &mut Worker,
    input: &mut Input,
    probe: &ProbeHandle<u64>,
    curated: &Table,
    seed_tasks: &[FileScanTask],
    rules: &Rules,
    runtime: &tokio::runtime::Handle,
    failure: &Failure,
) {
    let (index, peers) = (worker.index(), worker.peers());
    let tasks = share_of(seed_tasks, index, peers);
    // Rows come back with position deletes applied; each row's position in its file is found by
    // counting the file's rows and skipping the positions those deletes mark.
    let delete_paths: BTreeSet<String> = tasks.iter().flat_map(|t| t.deletes.iter().map(|d| d.file_path.clone())).collect();
    let deleted = match runtime.block_on(read_position_deletes(curated, &delete_paths.iter().cloned().collect::<Vec<_>>())) {
        Ok(deleted) => deleted,
        Err(error) => {
            failure.set(error);
            return;
        }
    };
    let mut announced: BTreeSet<String> = BTreeSet::new();
    // One task (one data file) at a time: every seed carries the file holding it and its position.
    for task in tasks {
        let file: Arc<str> = Arc::from(task.data_file_path.as_str());
        let day = match task.partition.as_ref().and_then(|p| p.fields().first().cloned().flatten()) {
            Some(iceberg::spec::Literal::Primitive(iceberg::spec::PrimitiveLiteral::Int(day))) => day,
            _ => {
                failure.set(Error::Internal(format!("curated data file {file} has no day partition value")));
                break;
            }
        };
        input.send(SourceRecord::SeedFile { day, path: file.clone(), deletes: false });
        for delete in &task.deletes {
            if announced.insert(delete.file_path.clone()) {
                input.send(SourceRecord::SeedFile { day, path: Arc::from(delete.file_path.as_str()), deletes: true });
            }
        }
        let mut skipped = deleted.get(file.as_ref()).map(|p| p.iter().copied().peekable());
        let mut next_pos: i64 = 0;
        let seeded = runtime.block_on(read_tasks(curated, vec![task], |batch| {
            for (key, slot) in curated_slots(&batch, rules)? {
                while let Some(skipped) = skipped.as_mut() {
                    match skipped.peek() {
                        Some(&p) if p < next_pos => drop(skipped.next()),
                        Some(&p) if p == next_pos => {
                            skipped.next();
                            next_pos += 1;
                        }
                        _ => break,
                    }
                }
                input.send(SourceRecord::Seed(key, slot, Location { file: file.clone(), pos: next_pos as u32 }));
                next_pos += 1;
            }
            worker.step();
            Ok(())
        }));
        if let Err(error) = seeded {
            failure.set(error);
            break;
        }
    }
    input.advance_to(1);
    worker.step_or_park_while(Some(WAIT_PARK), || probe.less_than(input.time()));
}

/// Shared handles every worker's operators report into.
#[derive(Clone, Default)]
pub struct Shared {
    pub failure: Failure,
    pub epochs: EpochLog,
    pub counters: Arc<UpsertCounters>,
    pub accepted: Arc<AtomicU64>,
    /// This process's index in the run (see [`crate::cluster`]).
    pub process: usize,
    /// Processes in the run (0 counts as 1).
    pub processes: usize,
}

impl Shared {
    pub fn outcome(&self, stats: &CommitStats) -> Outcome {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Outcome {
            accepted: load(&self.accepted),
            inserted: load(&self.counters.inserted),
            updated: load(&self.counters.updated),
            moved: load(&self.counters.moved),
            out_of_order: load(&self.counters.out_of_order),
            rejected: stats.rejected.lock().map(|m| m.clone()).unwrap_or_default(),
            raw_snapshots: load(&stats.raw_snapshots),
            curated_snapshots: load(&stats.curated_snapshots),
            rejected_snapshots: load(&stats.rejected_snapshots),
            curated_files_added: load(&stats.curated_files_added),
            curated_files_removed: load(&stats.curated_files_removed),
            commit_retries: load(&stats.commit_retries),
            epochs_checked: load(&stats.epochs_checked),
            check_failures: stats.check_failures.lock().map(|m| m.clone()).unwrap_or_default(),
        }
    }
}

/// What a run did to the tables, in either mode.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Input records that passed the rules and the late cut and entered the upsert.
    pub accepted: u64,
    pub inserted: u64,
    pub updated: u64,
    pub moved: u64,
    /// Records ingested before their key's current row of the same run (see [`crate::upsert`]).
    pub out_of_order: u64,
    /// Rows written to the rejected table, per reason.
    pub rejected: BTreeMap<String, u64>,
    pub raw_snapshots: u64,
    pub curated_snapshots: u64,
    pub rejected_snapshots: u64,
    pub curated_files_added: u64,
    pub curated_files_removed: u64,
    pub commit_retries: u64,
    /// Epochs the curated table's data-quality checks judged.
    pub epochs_checked: u64,
    /// Per check: epochs in which it failed.
    pub check_failures: BTreeMap<String, u64>,
}

impl Outcome {
    pub fn late(&self) -> u64 {
        self.rejected.iter().filter(|(r, _)| is_late(r)).map(|(_, n)| n).sum()
    }

    pub fn invalid(&self) -> u64 {
        self.rejected.iter().filter(|(r, _)| !is_late(r)).map(|(_, n)| n).sum()
    }
}

/// Whether a reject reason is the late cut's (`late`, `late_update`).
fn is_late(reason: &str) -> bool {
    RejectReason::parse(reason).is_some_and(RejectReason::is_late)
}

/// Runs `logic` on `workers` timely worker threads of this process, with the other processes of
/// `cluster`, and returns the first error any operator parked in `shared.failure`, else the bytes
/// this process sent to the others.
pub fn execute(
    workers: usize,
    cluster: &crate::cluster::Cluster,
    identity: &crate::cluster::Identity,
    shared: &Shared,
    logic: impl Fn(&mut Worker) + Send + Sync + 'static,
) -> Result<u64> {
    let ran = crate::cluster::run(workers.max(1), cluster, identity, logic);
    // An operator's own error explains more than the lost connection it may have caused.
    match (shared.failure.take(), ran) {
        (Some(error), _) => Err(error),
        (None, ran) => ran,
    }
}

/// The tokio runtime the operators block on for Iceberg and registry I/O.
pub fn io_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context(|| "starting the I/O runtime".into())
}
