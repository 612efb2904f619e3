//! The one dataflow both modes run: only the source differs.
//!
//! ```text
//!  driver (per worker): seeds at epoch 0, then raw partitions (replay) or Kafka partitions (stream)
//!        │ SourceRecord
//!        ▼
//!  Rules: validate, derive, late cut, frozen keys ──rejections────────────────────────┐
//!        │ (event_id, Candidate)                                                     │
//!        ▼                                                                           │
//!  exchange(event_id) → Upsert arrangement → net changes ──late updates──────────────┤
//!        │ row removed from / inserted into a rating_date (seeds: with their data file)  │
//!        ▼ exchange(rating_date)                                                      ▼
//!  CuratedWriter (per partition: new files, rewritten dirty files) ──► Committer (worker 0)
//! ```
//!
//! The driver feeds one epoch, advances its input and waits on the probe until the committer has
//! committed that epoch, so a failed commit stops the run before anything builds on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use differential_dataflow::AsCollection;
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

use crate::model::{Candidate, RawEvent, RejectReason, Rejection, format_date};
use crate::reader::read_tasks;
use crate::rules::Rules;
use crate::schema::curated_from_batch;
use crate::sink::changes::{Change, KeyChange, UpsertCounters, net_changes};
use crate::sink::committer::Committer;
use crate::sink::curated::{CuratedWriter, DayChange};
use crate::sink::{EpochLog, Failure, SinkMessage};
use crate::source::kafka::Offsets;
use crate::upsert::upsert;

/// A record entering the dataflow.
#[derive(Debug, Clone)]
pub enum SourceRecord {
    Raw(RawEvent),
    /// A curated row inside the lateness window and the data file it was read from.
    Seed(u128, Candidate, Arc<str>),
}

type Accepted = ((u128, Candidate), u64, isize);
type Evaluated = std::result::Result<Accepted, Box<Rejection>>;

/// What the rules stage needs besides the rules.
pub struct RulesContext {
    pub rules: Rules,
    /// `event_id` → `rating_date` of every key whose row can no longer change.
    pub frozen: Arc<HashMap<u128, i32>>,
    /// Stream restart: records below these offsets are already in the curated table; they are
    /// read again only for a table that is behind, so they must not enter the upsert again.
    pub curated_from: Option<Arc<Offsets>>,
    /// Input records that passed the rules and entered the upsert.
    pub accepted: Arc<AtomicU64>,
}

/// The rules stage for one record. `None`: the record's effect on curated is already committed.
fn evaluate(record: SourceRecord, time: u64, context: &RulesContext) -> Option<Evaluated> {
    match record {
        SourceRecord::Seed(key, row, _) => Some(Ok(((key, row), time, 1))),
        SourceRecord::Raw(event) => {
            let (key, candidate) = match context.rules.evaluate(&event) {
                Ok(accepted) => accepted,
                Err(rejection) => return Some(Err(rejection)),
            };
            if let Some(day) = context.frozen.get(&key) {
                return Some(Err(Box::new(Rejection {
                    reason: RejectReason::LateUpdate,
                    detail: format!("the event's current row is in frozen partition rating_date={}", format_date(*day)),
                    event,
                })));
            }
            if let Some(from) = &context.curated_from
                && event.source_offset < from.get(&event.source_partition).copied().unwrap_or(0)
            {
                return None;
            }
            context.accepted.fetch_add(1, Ordering::Relaxed);
            Some(Ok(((key, candidate), time, 1)))
        }
    }
}

/// Builds the dataflow on `worker`: rules → upsert → net changes → curated writer → committer.
/// Returns the input the driver feeds and the probe that tells which epochs are committed.
pub fn build(
    worker: &mut Worker,
    context: RulesContext,
    topic: Arc<str>,
    counters: Arc<UpsertCounters>,
    writer: CuratedWriter,
    committer: Committer,
) -> (InputHandle<u64, CapacityContainerBuilder<Vec<SourceRecord>>>, ProbeHandle<u64>) {
    let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<SourceRecord>>> = InputHandle::new();
    let probe = ProbeHandle::new();
    let lateness_days = context.rules.lateness_days;
    worker.dataflow::<u64, _, _>(|scope| {
        let records = input.to_stream(scope);
        let seeds = records.clone().flat_map(|record| match record {
            SourceRecord::Seed(key, row, file) => Some(DayChange::Seed { day: row.rating_date, key, row, file }),
            SourceRecord::Raw(_) => None,
        });
        let evaluated: StreamVec<u64, Evaluated> = records.unary(Pipeline, "Rules", move |_capability, _info| {
            move |input, output| {
                input.for_each_time(|time, data| {
                    let at = *time.time();
                    let mut session = output.session(&time);
                    for batch in data {
                        for record in batch.drain(..) {
                            if let Some(evaluated) = evaluate(record, at, &context) {
                                session.give(evaluated);
                            }
                        }
                    }
                });
            }
        });
        let (candidates, rule_rejections) =
            evaluated.ok_err::<Vec<Accepted>, Accepted, Vec<Box<Rejection>>, Box<Rejection>, _>(|x| x);
        let upserted = upsert(candidates.as_collection(), lateness_days).inner;
        let changes = net_changes(upserted, topic, counters);
        let (key_changes, sink_messages) =
            changes.ok_err::<Vec<KeyChange>, KeyChange, Vec<SinkMessage>, SinkMessage, _>(|change| match change {
                Change::Key(key_change) => Ok(key_change),
                Change::Sink(message) => Err(message),
            });
        let day_changes = key_changes.flat_map(|change| {
            let removed = change.old.map(|old| DayChange::Remove { day: old.rating_date, key: change.key });
            let inserted = change.new.map(|new| DayChange::Insert { day: new.rating_date, key: change.key, row: new });
            removed.into_iter().chain(inserted)
        });
        let curated_files = writer.build(day_changes.concat(seeds));
        let to_commit = sink_messages
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
    input: &mut InputHandle<u64, CapacityContainerBuilder<Vec<SourceRecord>>>,
    probe: &ProbeHandle<u64>,
    curated: &Table,
    seed_tasks: &[FileScanTask],
    runtime: &tokio::runtime::Handle,
    failure: &Failure,
) {
    let (index, peers) = (worker.index(), worker.peers());
    let mut seeds = Vec::new();
    // One task (one data file) at a time: every seed carries the path of the file holding it.
    for task in share_of(seed_tasks, index, peers) {
        let file: Arc<str> = Arc::from(task.data_file_path.as_str());
        let seeded = runtime.block_on(read_tasks(curated, vec![task], |batch| {
            curated_from_batch(&batch, &mut seeds)?;
            for (key, row) in seeds.drain(..) {
                input.send(SourceRecord::Seed(key, row, file.clone()));
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
    worker.step_while(|| probe.less_than(input.time()));
}

/// Shared handles every worker's operators report into.
#[derive(Clone, Default)]
pub struct Shared {
    pub failure: Failure,
    pub epochs: EpochLog,
    pub counters: Arc<UpsertCounters>,
    pub accepted: Arc<AtomicU64>,
}
