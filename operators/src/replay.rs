//! `--mode replay`: drive raw partitions `from..=to` through the dataflow and commit each epoch.
//!
//! One process, `workers` timely worker threads. Every worker reads its share of each epoch's raw
//! files, evaluates the rules on them, and the upsert exchanges candidates by `event_id`. The
//! driver feeds one epoch, then waits until worker 0 has committed it before reading the next, so
//! memory holds one raw partition at a time plus the upsert state, and a failed commit stops the
//! run before anything builds on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use differential_dataflow::AsCollection;
use iceberg::TableIdent;
use iceberg::scan::FileScanTask;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::{Concat, OkErr};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::Probe;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::{InputHandle, ProbeHandle, StreamVec};

use crate::catalog::{CatalogSettings, Lakehouse};
use crate::commit::CommitOptions;
use crate::error::{Context, Error, Result};
use crate::model::{Candidate, RawEvent, RejectReason, Rejection, format_date};
use crate::reader::read_tasks;
use crate::rules::Rules;
use crate::schema::{curated_from_batch, raw_from_batch};
use crate::sink::changes::{Change, KeyChange, UpsertCounters, net_changes};
use crate::sink::committer::{CommitStats, Committer};
use crate::sink::curated::CuratedWriter;
use crate::sink::{EpochDays, Failure, SinkMessage};
use crate::source::raw::plan_replay;
use crate::upsert::upsert;

/// Everything a replay needs, resolved from the graph file and the command line.
#[derive(Clone)]
pub struct ReplaySettings {
    pub catalog: CatalogSettings,
    pub raw: TableIdent,
    pub curated: TableIdent,
    pub rejected: TableIdent,
    /// The topic late updates are attributed to in the rejected table.
    pub topic: String,
    pub rules: Rules,
    pub from: i32,
    pub to: Option<i32>,
    pub workers: usize,
    pub target_file_size: usize,
    pub commit: CommitOptions,
    /// Consecutive raw partitions are grouped into one epoch (one commit) up to this many events.
    pub max_epoch_events: u64,
}

/// Called with the number of raw records just read, and once with the total before the first.
pub trait ProgressSink: Send + Sync {
    fn start(&self, total_records: u64, epochs: usize);
    fn advance(&self, records: u64);
    fn epoch_committed(&self, last_ingestion_date: i32);
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    pub epochs: usize,
    pub partitions: usize,
    pub first_day: Option<i32>,
    pub last_day: Option<i32>,
    pub seeded_rows: u64,
    pub frozen_keys: u64,
    pub events_read: u64,
    /// Raw records that passed the rules and the late cut and entered the upsert.
    pub accepted: u64,
    pub inserted: u64,
    pub updated: u64,
    pub moved: u64,
    pub rejected: BTreeMap<RejectReason, u64>,
    pub curated_snapshots: u64,
    pub rejected_snapshots: u64,
    pub curated_files_added: u64,
    pub curated_files_removed: u64,
    pub commit_retries: u64,
    pub elapsed: Duration,
}

impl ReplaySummary {
    pub fn late(&self) -> u64 {
        self.rejected.iter().filter(|(r, _)| r.is_late()).map(|(_, n)| n).sum()
    }

    pub fn invalid(&self) -> u64 {
        self.rejected.iter().filter(|(r, _)| !r.is_late()).map(|(_, n)| n).sum()
    }

    pub fn events_per_second(&self) -> f64 {
        self.events_read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A record entering the dataflow.
#[derive(Debug, Clone)]
enum SourceRecord {
    Raw(RawEvent),
    Seed(u128, Candidate),
}

type Accepted = ((u128, Candidate), u64, isize);
type Evaluated = std::result::Result<Accepted, Box<Rejection>>;

/// The rules stage: validate, derive and cut late records, and reject records for frozen keys.
fn evaluate(record: SourceRecord, time: u64, rules: &Rules, frozen: &HashMap<u128, i32>) -> Evaluated {
    match record {
        SourceRecord::Seed(key, row) => Ok(((key, row), time, 1)),
        SourceRecord::Raw(event) => {
            let (key, candidate) = rules.evaluate(&event)?;
            match frozen.get(&key) {
                Some(day) => Err(Box::new(Rejection {
                    reason: RejectReason::LateUpdate,
                    detail: format!("the event's current row is in frozen partition rating_date={}", format_date(*day)),
                    event,
                })),
                None => Ok(((key, candidate), time, 1)),
            }
        }
    }
}

pub fn replay(settings: ReplaySettings, progress: Arc<dyn ProgressSink>) -> Result<ReplaySummary> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context(|| "starting the I/O runtime".into())?;
    let (lakehouse, raw, curated, rejected, plan) = runtime.block_on(async {
        let lakehouse = Lakehouse::open(&settings.catalog, false).await?;
        let raw = lakehouse.load(&settings.raw).await?;
        let curated = lakehouse.load(&settings.curated).await?;
        let rejected = lakehouse.load(&settings.rejected).await?;
        let plan = plan_replay(
            &raw,
            &curated,
            settings.from,
            settings.to,
            settings.rules.lateness_days,
            settings.max_epoch_events,
        )
        .await?;
        Ok::<_, Error>((lakehouse, raw, curated, rejected, plan))
    })?;
    tracing::info!(
        epochs = plan.epochs.len(),
        records = plan.input_records(),
        seed_rows = plan.seed_records,
        frozen_keys = plan.frozen.len(),
        "planned replay"
    );
    progress.start(plan.input_records(), plan.epochs.len());

    let epoch_days: Arc<Vec<EpochDays>> =
        Arc::new(plan.epochs.iter().map(|e| EpochDays { first: e.first_day, last: e.last_day }).collect());
    let mut summary = ReplaySummary {
        epochs: plan.epochs.len(),
        partitions: plan.epochs.iter().map(|e| e.days()).sum(),
        first_day: plan.epochs.first().map(|e| e.first_day),
        last_day: plan.epochs.last().map(|e| e.last_day),
        seeded_rows: plan.seed_records,
        frozen_keys: plan.frozen.len() as u64,
        ..Default::default()
    };
    let lakehouse = Arc::new(lakehouse);
    let plan = Arc::new(plan);
    let failure = Failure::default();
    let stats = Arc::new(CommitStats::default());
    let counters = Arc::new(UpsertCounters::default());
    let events_read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handle = runtime.handle().clone();
    let topic: Arc<str> = Arc::from(settings.topic.as_str());

    let worker_failure = failure.clone();
    let worker_stats = stats.clone();
    let worker_counters = counters.clone();
    let worker_events = events_read.clone();
    let worker_accepted = accepted.clone();
    let guards = timely::execute(timely::Config::process(settings.workers.max(1)), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let failure = worker_failure.clone();
        let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<SourceRecord>>> = InputHandle::new();
        let probe = ProbeHandle::new();
        let rules = settings.rules;
        let frozen = plan.clone();
        let accepted = worker_accepted.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let records = input.to_stream(scope);
            let evaluated: StreamVec<u64, Evaluated> = records.unary(Pipeline, "Rules", move |_capability, _info| {
                move |input, output| {
                    input.for_each_time(|time, data| {
                        let at = *time.time();
                        let mut session = output.session(&time);
                        let mut passed = 0;
                        for batch in data {
                            for record in batch.drain(..) {
                                let is_input = matches!(record, SourceRecord::Raw(_));
                                let evaluated = evaluate(record, at, &rules, &frozen.frozen);
                                passed += u64::from(is_input && evaluated.is_ok());
                                session.give(evaluated);
                            }
                        }
                        accepted.fetch_add(passed, Ordering::Relaxed);
                    });
                }
            });
            let (candidates, rule_rejections) = evaluated.ok_err::<Vec<Accepted>, Accepted, Vec<Box<Rejection>>, Box<Rejection>, _>(|x| x);
            let upserted = upsert(candidates.as_collection(), rules.lateness_days).inner;
            let changes = net_changes(upserted, topic.clone(), worker_counters.clone());
            let (key_changes, sink_messages) = changes.ok_err::<Vec<KeyChange>, KeyChange, Vec<SinkMessage>, SinkMessage, _>(|change| match change {
                Change::Key(key_change) => Ok(key_change),
                Change::Sink(message) => Err(message),
            });
            let (changed_days, other_messages) =
                sink_messages.ok_err::<Vec<i32>, i32, Vec<SinkMessage>, SinkMessage, _>(|message| match message {
                    SinkMessage::ChangedPartition(day) => Ok(day),
                    other => Err(other),
                });
            let writer = CuratedWriter {
                table: curated.clone(),
                runtime: handle.clone(),
                target_file_size: settings.target_file_size,
                worker: index,
                failure: failure.clone(),
                epoch_days: epoch_days.clone(),
                lateness_days: rules.lateness_days,
            };
            let curated_files = writer.build(key_changes, changed_days.clone().broadcast());
            let committer = Committer {
                lakehouse: lakehouse.clone(),
                curated: settings.curated.clone(),
                rejected: rejected.clone(),
                runtime: handle.clone(),
                epoch_days: epoch_days.clone(),
                options: settings.commit,
                target_file_size: settings.target_file_size,
                stats: worker_stats.clone(),
                failure: failure.clone(),
            };
            let to_commit = changed_days
                .map(SinkMessage::ChangedPartition)
                .concat(other_messages)
                .concat(curated_files)
                .concat(rule_rejections.map(|rejection| SinkMessage::Rejected(*rejection)));
            committer.build(to_commit).probe_with(&probe);
        });

        let mine = |tasks: &[FileScanTask]| -> Vec<FileScanTask> {
            tasks.iter().enumerate().filter(|(i, _)| i % peers == index).map(|(_, t)| t.clone()).collect()
        };
        // Epoch 0: the curated rows still inside the lateness window.
        let mut seeds = Vec::new();
        let seeded = handle.block_on(read_tasks(&curated, mine(&plan.seed_tasks), |batch| {
            curated_from_batch(&batch, &mut seeds)?;
            for (key, row) in seeds.drain(..) {
                input.send(SourceRecord::Seed(key, row));
            }
            worker.step();
            Ok(())
        }));
        if let Err(error) = seeded {
            failure.set(error);
        }
        input.advance_to(1);
        worker.step_while(|| probe.less_than(input.time()));

        let mut events = Vec::new();
        for (position, epoch) in plan.epochs.iter().enumerate() {
            if failure.is_set() {
                break;
            }
            let read = handle.block_on(read_tasks(&raw, mine(&epoch.tasks), |batch| {
                raw_from_batch(&batch, &mut events)?;
                let count = events.len() as u64;
                for event in events.drain(..) {
                    input.send(SourceRecord::Raw(event));
                }
                worker_events.fetch_add(count, Ordering::Relaxed);
                progress.advance(count);
                worker.step();
                Ok(())
            }));
            if let Err(error) = read {
                failure.set(error);
                break;
            }
            input.advance_to(position as u64 + 2);
            worker.step_while(|| probe.less_than(input.time()));
            if index == 0 && !failure.is_set() {
                progress.epoch_committed(epoch.last_day);
            }
        }
        drop(input);
        while worker.step_or_park(None) {}
    })
    .map_err(|e| Error::Internal(format!("starting the dataflow workers: {e}")))?;
    for result in guards.join() {
        result.map_err(|e| Error::Internal(format!("a dataflow worker panicked: {e}")))?;
    }
    if let Some(error) = failure.take() {
        return Err(error);
    }
    summary.events_read = events_read.load(Ordering::Relaxed);
    summary.accepted = accepted.load(Ordering::Relaxed);
    summary.inserted = counters.inserted.load(Ordering::Relaxed);
    summary.updated = counters.updated.load(Ordering::Relaxed);
    summary.moved = counters.moved.load(Ordering::Relaxed);
    summary.curated_snapshots = stats.curated_snapshots.load(Ordering::Relaxed);
    summary.rejected_snapshots = stats.rejected_snapshots.load(Ordering::Relaxed);
    summary.curated_files_added = stats.curated_files_added.load(Ordering::Relaxed);
    summary.curated_files_removed = stats.curated_files_removed.load(Ordering::Relaxed);
    summary.commit_retries = stats.commit_retries.load(Ordering::Relaxed);
    summary.rejected = stats.rejected.lock().map(|m| m.clone()).unwrap_or_default();
    summary.elapsed = started.elapsed();
    Ok(summary)
}
