//! `--mode replay`: drive raw partitions `from..=to` through the dataflow and commit each epoch.
//!
//! One process, `workers` timely worker threads. Every worker reads its share of each epoch's raw
//! files, evaluates the rules on them, and the upsert exchanges candidates by `event_id`. The
//! driver feeds one epoch, then waits until worker 0 has committed it before reading the next, so
//! memory holds one raw partition at a time plus the upsert state, and a failed commit stops the
//! run before anything builds on it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iceberg::TableIdent;

use crate::catalog::{CatalogSettings, Lakehouse};
use crate::commit::CommitOptions;
use crate::dataflow::{self, RulesContext, Shared, SourceRecord};
use crate::error::{Context, Error, Result};
use crate::model::RejectReason;
use crate::reader::read_tasks;
use crate::rules::Rules;
use crate::schema::raw_from_batch;
use crate::sink::committer::{CommitMode, CommitStats, Committer};
use crate::sink::curated::CuratedWriter;
use crate::sink::{EpochDays, EpochMeta};
use crate::source::raw::plan_replay;

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

pub fn replay(settings: ReplaySettings, progress: Arc<dyn ProgressSink>) -> Result<ReplaySummary> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context(|| "starting the I/O runtime".into())?;
    let (lakehouse, raw, curated, rejected, mut plan) = runtime.block_on(async {
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
        seed_rows = plan.state.seed_records,
        frozen_keys = plan.state.frozen.len(),
        "planned replay"
    );
    progress.start(plan.input_records(), plan.epochs.len());

    let shared = Shared::default();
    for (index, epoch) in plan.epochs.iter().enumerate() {
        let days = EpochDays { first: epoch.first_day, last: epoch.last_day };
        shared.epochs.merge(index as u64 + 1, EpochMeta { days: Some(days), ..Default::default() });
    }
    let mut summary = ReplaySummary {
        epochs: plan.epochs.len(),
        partitions: plan.epochs.iter().map(|e| e.days()).sum(),
        first_day: plan.epochs.first().map(|e| e.first_day),
        last_day: plan.epochs.last().map(|e| e.last_day),
        seeded_rows: plan.state.seed_records,
        frozen_keys: plan.state.frozen.len() as u64,
        ..Default::default()
    };
    let lakehouse = Arc::new(lakehouse);
    let frozen = Arc::new(std::mem::take(&mut plan.state.frozen));
    let plan = Arc::new(plan);
    let stats = Arc::new(CommitStats::default());
    let events_read = Arc::new(AtomicU64::new(0));
    let handle = runtime.handle().clone();
    let topic: Arc<str> = Arc::from(settings.topic.as_str());

    let worker_shared = shared.clone();
    let worker_stats = stats.clone();
    let worker_events = events_read.clone();
    let guards = timely::execute(timely::Config::process(settings.workers.max(1)), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let shared = worker_shared.clone();
        let context = RulesContext {
            rules: settings.rules,
            frozen: frozen.clone(),
            curated_from: None,
            accepted: shared.accepted.clone(),
        };
        let writer = CuratedWriter {
            table: curated.clone(),
            runtime: handle.clone(),
            target_file_size: settings.target_file_size,
            worker: index,
            failure: shared.failure.clone(),
            epochs: shared.epochs.clone(),
            lateness_days: settings.rules.lateness_days,
        };
        let committer = Committer {
            lakehouse: lakehouse.clone(),
            curated: settings.curated.clone(),
            rejected: rejected.clone(),
            runtime: handle.clone(),
            epochs: shared.epochs.clone(),
            mode: CommitMode::Replay,
            options: settings.commit,
            target_file_size: settings.target_file_size,
            stats: worker_stats.clone(),
            metrics: None,
            failure: shared.failure.clone(),
        };
        let (mut input, probe) = dataflow::build(worker, context, topic.clone(), shared.counters.clone(), writer, committer);
        dataflow::feed_seeds(worker, &mut input, &probe, &curated, &plan.state.seed_tasks, &handle, &shared.failure);

        let mut events = Vec::new();
        for (position, epoch) in plan.epochs.iter().enumerate() {
            if shared.failure.is_set() {
                break;
            }
            let read = handle.block_on(read_tasks(&raw, dataflow::share_of(&epoch.tasks, index, peers), |batch| {
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
                shared.failure.set(error);
                break;
            }
            input.advance_to(position as u64 + 2);
            worker.step_while(|| probe.less_than(input.time()));
            if index == 0 && !shared.failure.is_set() {
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
    if let Some(error) = shared.failure.take() {
        return Err(error);
    }
    summary.events_read = events_read.load(Ordering::Relaxed);
    summary.accepted = shared.accepted.load(Ordering::Relaxed);
    summary.inserted = shared.counters.inserted.load(Ordering::Relaxed);
    summary.updated = shared.counters.updated.load(Ordering::Relaxed);
    summary.moved = shared.counters.moved.load(Ordering::Relaxed);
    stats.fill(&mut summary);
    summary.elapsed = started.elapsed();
    Ok(summary)
}
