//! The one dataflow both modes run: only the source differs.
//!
//! ```text
//!  driver (per worker): seeds at epoch 0, then raw partitions (replay) or Kafka partitions (stream)
//!        │ SourceRecord
//!        ▼
//!  Rules: validate, derive, late cut, frozen keys, plugin chain ──rejections─────────┐
//!        │ (event_id, Candidate)                                                     │
//!        ▼                                                                           │
//!  exchange(event_id) → Upsert arrangement → key changes ──late updates──────────────┤
//!        │ row removed from / inserted into a rating_date (seeds: with their data file)  │
//!        ▼ exchange(rating_date)                                                      ▼
//!  CuratedWriter (per partition: new data files, position delete files) ──► Committer (worker 0)
//! ```
//!
//! The driver feeds one epoch and advances its input; replay then waits on the probe until the
//! committer has committed it, stream reads one more epoch meanwhile. The committer commits
//! nothing after a failure, so nothing lands on top of a failed epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use iceberg::TableIdent;
use iceberg::scan::FileScanTask;
use iceberg::table::Table;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::{Concat, OkErr};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Probe;
use timely::dataflow::{InputHandle, ProbeHandle, StreamVec};
use timely::worker::Worker;

use crate::catalog::Lakehouse;
use crate::commit::CommitOptions;
use crate::error::{Context, Error, Result};
use crate::metrics::Metrics;
use crate::model::{AsIngested, Candidate, KeyMap, RawEvent, RejectReason, Rejection};
use crate::reader::read_tasks;
use crate::writer::read_position_deletes;
use crate::rules::Rules;
use crate::rules::chain::{Accepted, Pending, RuleChain};
use crate::schema::curated_from_batch;
use crate::sink::committer::{CommitMode, CommitStats, Committer, Fences};
use crate::sink::curated::{CuratedWriter, DayChange, Location};
use crate::sink::{EpochLog, Failure, SinkMessage};
use crate::source::kafka::Offsets;
use crate::schema::{late_update_detail, late_update_rejection};
use crate::upsert::{KeyChange, UpsertChange, UpsertCounters, upsert};

/// How long a driver waiting for an epoch to be committed parks between looks at the probe when
/// its worker has nothing to do. Parking instead of spinning leaves the core to the operators,
/// the I/O runtime's writers and the commit the driver is waiting for; a worker is woken early
/// when data or progress reaches it.
pub const WAIT_PARK: std::time::Duration = std::time::Duration::from_millis(1);

/// A record entering the dataflow.
#[derive(Debug, Clone)]
pub enum SourceRecord {
    Raw(RawEvent),
    /// A curated row inside the lateness window and where it sits.
    Seed(u128, Candidate, Location),
    /// A live data or position delete file of a curated partition inside the lateness window.
    SeedFile { day: i32, path: Arc<str>, deletes: bool },
}

type Evaluated = std::result::Result<Accepted, Box<Rejection>>;

/// What the rules stage needs besides the rules.
pub struct RulesContext {
    pub rules: Rules,
    /// The graph's rule plugins, instantiated once per worker.
    pub chain: RuleChain,
    /// `event_id` → `rating_date` of every key whose row can no longer change.
    pub frozen: Arc<KeyMap<i32>>,
    /// Stream restart: records below these offsets are already in the curated table; they are
    /// read again only for a table that is behind, so they must not enter the upsert again.
    pub curated_from: Option<Arc<Offsets>>,
    /// Input records that passed the rules and entered the upsert.
    pub accepted: Arc<AtomicU64>,
    /// The graph's topic: a record from another topic keeps its own name for the rejected table.
    pub topic: Arc<str>,
}

/// The engine's part of the rules stage for one record: a seed passes, a raw record is validated
/// ([`Rules::evaluate`]), checked against frozen keys and against what curated holds already.
/// `None`: the record's effect on curated is already committed.
enum Verdict {
    Seed(u128, Candidate),
    Pending(Pending),
    Rejected(Box<Rejection>),
}

fn evaluate(record: SourceRecord, context: &RulesContext) -> Option<Verdict> {
    match record {
        SourceRecord::Seed(key, row, _) => Some(Verdict::Seed(key, row)),
        SourceRecord::SeedFile { .. } => None,
        SourceRecord::Raw(event) => {
            let (key, mut candidate) = match context.rules.evaluate(&event) {
                Ok(accepted) => accepted,
                Err(rejection) => return Some(Verdict::Rejected(rejection)),
            };
            candidate.as_ingested = as_ingested(&event, &context.topic);
            if let Some(day) = context.frozen.get(&key) {
                return Some(Verdict::Rejected(Box::new(Rejection { reason: RejectReason::LateUpdate, detail: late_update_detail(*day), event })));
            }
            if let Some(from) = &context.curated_from
                && event.source_offset < from.get(&event.source_partition).copied().unwrap_or(0)
            {
                return None;
            }
            Some(Verdict::Pending(Pending { key, candidate, event }))
        }
    }
}

/// What `event`, which passed validation, said that its candidate would lose: an event id spelled
/// other than canonically, a topic other than the graph's. `None` for (nearly) every record.
fn as_ingested(event: &RawEvent, topic: &Arc<str>) -> Option<Box<AsIngested>> {
    let event_id = event.event_id.as_deref().unwrap_or_default();
    // The (trimmed) id parsed as a UUID already: of its spellings only the hyphenated one has 36
    // characters of hex digits and hyphens alone (simple 32, braced 38, URN 45, padding is neither).
    let canonical = event_id.len() == 36 && event_id.bytes().all(|b| matches!(b, b'-' | b'0'..=b'9' | b'a'..=b'f'));
    (!canonical || *event.source_topic != **topic)
        .then(|| Box::new(AsIngested { event_id: event_id.to_string(), topic: event.source_topic.clone() }))
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
    /// The topic late updates are attributed to in the rejected table.
    pub topic: Arc<str>,
    pub stats: Arc<CommitStats>,
    pub metrics: Option<Arc<Metrics>>,
    /// The curated table's data-quality checks (the gate before each commit).
    pub checks: Arc<crate::checks::Checks>,
    /// The curated writer rewrites a changed partition holding this many files or more.
    pub compact_after_files: Option<usize>,
    /// This run's writer id, recorded in every snapshot it commits.
    pub writer: Arc<str>,
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
    let (topic, counters) = (sinks.topic.clone(), shared.counters.clone());
    let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<SourceRecord>>> = InputHandle::new();
    let probe = ProbeHandle::new();
    let lateness_days = context.rules.lateness_days;
    worker.dataflow::<u64, _, _>(|scope| {
        // Seeds (epoch 0) go to the rules and to the writer; input records only to the rules, so
        // they are split off first instead of every record being cloned for both.
        let (records, seeds) = input
            .to_stream(scope)
            .ok_err::<Vec<SourceRecord>, SourceRecord, Vec<SourceRecord>, SourceRecord, _>(|record| match record {
                SourceRecord::Raw(_) => Ok(record),
                seed => Err(seed),
            });
        let records = records.concat(seeds.clone());
        let seeds = seeds.flat_map(|record| match record {
            SourceRecord::Seed(key, row, at) => Some(DayChange::Seed { day: row.rating_date, key, at }),
            SourceRecord::SeedFile { day, path, deletes } => Some(DayChange::SeedFile { day, path, deletes }),
            SourceRecord::Raw(_) => None,
        });
        let failure = shared.failure.clone();
        let evaluated: StreamVec<u64, Evaluated> = records.unary(Pipeline, "Rules", move |_capability, _info| {
            let mut chain = context.chain.instantiate().map_err(|error| failure.set(error)).ok();
            move |input, output| {
                input.for_each_time(|time, data| {
                    let mut session = output.session(&time);
                    let mut pending = Vec::new();
                    for batch in data {
                        for record in batch.drain(..) {
                            match evaluate(record, &context) {
                                Some(Verdict::Seed(key, row)) => session.give(Ok((key, row))),
                                Some(Verdict::Rejected(rejection)) => session.give(Err(rejection)),
                                Some(Verdict::Pending(record)) => pending.push(record),
                                None => {}
                            }
                        }
                    }
                    // One call per plugin for everything this activation holds at this time. Once
                    // the run has failed (a plugin's error or panic here or on another worker) no
                    // plugin is called again: the run stops before this epoch commits.
                    if failure.is_set() {
                        chain = None;
                    }
                    let Some(live) = chain.as_mut() else { return };
                    match live.apply(pending) {
                        Ok((accepted, rejections)) => {
                            context.accepted.fetch_add(accepted.len() as u64, Ordering::Relaxed);
                            for accepted in accepted {
                                session.give(Ok(accepted));
                            }
                            for rejection in rejections {
                                session.give(Err(Box::new(rejection)));
                            }
                        }
                        Err(error) => {
                            chain = None;
                            failure.set(error)
                        }
                    }
                });
            }
        });
        let (candidates, rule_rejections) =
            evaluated.ok_err::<Vec<Accepted>, Accepted, Vec<Box<Rejection>>, Box<Rejection>, _>(|x| x);
        let epochs = shared.epochs.clone();
        let (key_changes, late_updates) = upsert(candidates, lateness_days, move |epoch| epochs.settled_day(epoch), counters)
            .ok_err::<Vec<KeyChange>, KeyChange, Vec<SinkMessage>, SinkMessage, _>(move |change| match change {
                UpsertChange::Key(key_change) => Ok(key_change),
                UpsertChange::LateUpdate { key, record, frozen_day } => {
                    Err(SinkMessage::Rejected(late_update_rejection(key, &record, &topic, frozen_day)))
                }
            });
        let day_changes = key_changes.flat_map(|change| {
            let removed = change.old.map(|old| DayChange::Remove { day: old.rating_date, key: change.key });
            let inserted = change.new.map(|new| DayChange::Insert { day: new.rating_date, key: change.key, row: new });
            removed.into_iter().chain(inserted)
        });
        let curated_files = writer.build(day_changes.concat(seeds));
        let to_commit = late_updates
            .concat(curated_files)
            .concat(rule_rejections.map(|rejection| SinkMessage::Rejected(*rejection)));
        committer.build(to_commit).probe_with(&probe);
    });
    (input, probe)
}

/// This worker's share of `tasks` (round-robin).
pub fn share_of(tasks: &[FileScanTask], index: usize, peers: usize) -> Vec<FileScanTask> {
    tasks.iter().enumerate().filter(|(i, _)| i % peers == index).map(|(_, t)| t.clone()).collect()
}

/// Epoch 0: feeds this worker's share of the curated rows inside the lateness window as seeds,
/// then waits until every worker's seeds are in the upsert.
pub fn feed_seeds(
    worker: &mut Worker,
    input: &mut Input,
    probe: &ProbeHandle<u64>,
    curated: &Table,
    seed_tasks: &[FileScanTask],
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
    let mut seeds = Vec::new();
    let mut announced: BTreeSet<String> = BTreeSet::new();
    // One task (one data file) at a time: every seed carries the file holding it and its position.
    for task in tasks {
        let file: Arc<str> = Arc::from(task.data_file_path.as_str());
        let day = match task.partition.as_ref().and_then(|p| p.fields().first().cloned().flatten()) {
            Some(iceberg::spec::Literal::Primitive(iceberg::spec::PrimitiveLiteral::Int(day))) => day,
            _ => {
                failure.set(Error::Internal(format!("curated data file {file} has no rating_date partition value")));
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
            curated_from_batch(&batch, &mut seeds)?;
            for (key, row) in seeds.drain(..) {
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
                input.send(SourceRecord::Seed(key, row, Location { file: file.clone(), pos: next_pos as u32 }));
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
    pub rejected: BTreeMap<RejectReason, u64>,
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
        self.rejected.iter().filter(|(r, _)| r.is_late()).map(|(_, n)| n).sum()
    }

    pub fn invalid(&self) -> u64 {
        self.rejected.iter().filter(|(r, _)| !r.is_late()).map(|(_, n)| n).sum()
    }
}

/// Runs `logic` on `workers` timely worker threads of this process and returns the first error
/// any operator parked in `shared.failure`.
pub fn execute(workers: usize, shared: &Shared, logic: impl Fn(&mut Worker) + Send + Sync + 'static) -> Result<()> {
    let guards = timely::execute(timely::Config::process(workers.max(1)), logic)
        .map_err(|e| Error::Internal(format!("starting the dataflow workers: {e}")))?;
    for result in guards.join() {
        result.map_err(|e| Error::Internal(format!("a dataflow worker panicked: {e}")))?;
    }
    match shared.failure.take() {
        Some(error) => Err(error),
        None => Ok(()),
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
