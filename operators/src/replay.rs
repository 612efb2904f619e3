//! `--mode replay`: drive raw partitions `from..=to` through the dataflow and commit each epoch.
//!
//! `workers` timely worker threads in each of the run's processes (one unless a cluster runs it,
//! see [`crate::cluster`]); every process plans the same epochs from the same table snapshots.
//! Every worker reads its share of each epoch's raw files, evaluates the rules on them, and the
//! upsert exchanges candidates by key. The
//! driver feeds one epoch, then waits until worker 0 has committed it before reading the next, so
//! memory holds one raw partition at a time plus the upsert state, and a failed commit stops the
//! run before anything builds on it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iceberg::TableIdent;

use crate::catalog::{CatalogSettings, Lakehouse};
use crate::commit::CommitOptions;
use crate::dataflow::{self, Outcome, RulesContext, Shared, Sinks, SourceRecord};
use crate::error::{Error, Result};
use crate::reader::read_tasks;
use crate::model::format_date;
use crate::records::PrintedKey;
use crate::rules::Rules;
use crate::rules::chain::RuleChain;
use crate::schema::arrow_schema;
use crate::sink::committer::{CommitMode, CommitStats};
use crate::sink::{EpochDays, EpochMeta};
use crate::source::raw::plan_replay;

/// Everything a replay needs, resolved from the graph file and the command line.
#[derive(Clone)]
pub struct ReplaySettings {
    pub catalog: CatalogSettings,
    pub raw: TableIdent,
    pub curated: TableIdent,
    pub rejected: TableIdent,
    /// The topic rows quarantined by a check are attributed to in the rejected table.
    pub topic: String,
    pub rules: Rules,
    /// The graph's rule plugins (loaded and checked).
    pub chain: RuleChain,
    /// The curated table's data-quality checks, judged before every commit.
    pub checks: std::sync::Arc<crate::checks::Checks>,
    /// The curated writer rewrites a changed partition holding this many files or more.
    pub compact_after_files: Option<usize>,
    pub from: i32,
    pub to: Option<i32>,
    pub workers: usize,
    pub target_file_size: usize,
    pub commit: CommitOptions,
    /// Consecutive raw partitions are grouped into one epoch (one commit) up to this many events.
    pub max_epoch_events: u64,
    /// The processes of the run and this one's place among them.
    pub cluster: crate::cluster::Cluster,
    /// What every process of the run must agree on (graph, plugins, engine); the tables' snapshots
    /// are added at the start.
    pub identity: crate::cluster::Identity,
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
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// Per epoch, from its first raw file being read to its commit (what an epoch costs, without
    /// the start-up that reloads the state).
    pub epoch_times: Vec<Duration>,
    /// Bytes this process sent to the other processes of a cluster run.
    pub exchanged_bytes: u64,
}

impl ReplaySummary {
    pub fn events_per_second(&self) -> f64 {
        self.events_read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub fn replay(settings: ReplaySettings, progress: Arc<dyn ProgressSink>) -> Result<ReplaySummary> {
    let started = Instant::now();
    let runtime = dataflow::io_runtime()?;
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
            &settings.rules,
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

    let shared = Shared { process: settings.cluster.process, processes: settings.cluster.processes, ..Shared::default() };
    let identity = settings.identity.clone().with("view of the tables", crate::cluster::snapshots(&[&raw, &curated, &rejected]));
    for (index, epoch) in plan.epochs.iter().enumerate() {
        let days = EpochDays { first: epoch.first_day, last: epoch.last_day };
        let meta = EpochMeta { days: Some(days), settled_day: Some(epoch.last_day), ..Default::default() };
        shared.epochs.merge(index as u64 + 1, meta);
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
    let frozen = Arc::new(std::mem::take(&mut plan.state.frozen));
    let curated_schema = arrow_schema(curated.metadata().current_schema())?;
    let printed_key = PrintedKey::of(&settings.rules.pipeline, &curated_schema)?;
    let rejected_schema = arrow_schema(rejected.metadata().current_schema())?;
    let plan = Arc::new(plan);
    let stats = Arc::new(CommitStats::default());
    let events_read = Arc::new(AtomicU64::new(0));
    let handle = runtime.handle().clone();
    let sinks = Sinks {
        lakehouse: Arc::new(lakehouse),
        curated_ident: settings.curated.clone(),
        curated: curated.clone(),
        rejected: rejected.clone(),
        runtime: handle.clone(),
        mode: CommitMode::Replay,
        options: settings.commit,
        target_file_size: settings.target_file_size,
        topic: Arc::from(settings.topic.as_str()),
        stats: stats.clone(),
        metrics: None,
        checks: settings.checks.clone(),
        compact_after_files: settings.compact_after_files,
        writer: Arc::from(crate::commit::new_writer_id()),
        raw: None,
    };

    let worker_shared = shared.clone();
    let worker_events = events_read.clone();
    let epoch_times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let worker_epoch_times = epoch_times.clone();
    let cluster = settings.cluster.clone();
    summary.exchanged_bytes = dataflow::execute(settings.workers, &cluster, &identity, &shared, move |worker| {
        let epoch_times = &worker_epoch_times;
        let (index, peers) = (worker.index(), worker.peers());
        let shared = worker_shared.clone();
        let context = RulesContext {
            rules: settings.rules.clone(),
            chain: settings.chain.clone(),
            frozen: frozen.clone(),
            curated_from: None,
            accepted: shared.accepted.clone(),
            curated_schema: curated_schema.clone(),
            printed_key: printed_key.clone(),
            rejected_schema: rejected_schema.clone(),
            topic: sinks.topic.clone(),
        };
        let (mut input, probe) = dataflow::build(worker, context, &shared, &sinks);
        dataflow::feed_seeds(worker, &mut input, &probe, &curated, &plan.state.seed_tasks, &settings.rules, &handle, &shared.failure);

        for (position, epoch) in plan.epochs.iter().enumerate() {
            if shared.failure.is_set() {
                break;
            }
            let epoch_started = Instant::now();
            let read = handle.block_on(read_tasks(&raw, dataflow::share_of(&epoch.tasks, index, peers), |batch| {
                let count = batch.num_rows() as u64;
                input.send(SourceRecord::Raw(batch));
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
            worker.step_or_park_while(Some(crate::dataflow::WAIT_PARK), || probe.less_than(input.time()));
            if index == 0 && !shared.failure.is_set() {
                progress.epoch_committed(epoch.last_day);
                let took = epoch_started.elapsed();
                tracing::info!(epoch = position + 1, last_day = %format_date(epoch.last_day), seconds = format!("{:.3}", took.as_secs_f64()), "epoch replayed");
                epoch_times.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(took);
            }
        }
        drop(input);
        while worker.step_or_park(None) {}
    })?;
    summary.events_read = events_read.load(Ordering::Relaxed);
    summary.epoch_times = std::mem::take(&mut *epoch_times.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    summary.outcome = shared.outcome(&stats);
    summary.elapsed = started.elapsed();
    Ok(summary)
}
