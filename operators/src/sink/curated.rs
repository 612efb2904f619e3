//! The curated writer: every worker holds the live partitions' rows of its keys and, when an epoch
//! completes, writes its share of every partition that changed anywhere (the union arrives by
//! broadcast), so the commit can drop all old files of those partitions.
//!
//! Partitions older than `latest ingestion date - lateness` can no longer change; they leave
//! memory, which therefore follows the lateness window and not the table's history.

use std::collections::{BTreeMap, BTreeSet};

use iceberg::table::Table;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::model::Candidate;
use crate::schema::{arrow_schema, curated_to_batch};
use crate::sink::changes::KeyChange;
use crate::sink::{EpochLog, Failure, LocalDataFile, SinkMessage};
use crate::writer::write_partition;

pub struct CuratedWriter {
    pub table: Table,
    pub runtime: tokio::runtime::Handle,
    pub target_file_size: usize,
    pub worker: usize,
    pub failure: Failure,
    /// Ingestion dates of each epoch.
    pub epochs: EpochLog,
    pub lateness_days: i32,
}

struct PendingEpoch {
    capability: Capability<u64>,
    changes: Vec<KeyChange>,
    changed: BTreeSet<i32>,
}

impl PendingEpoch {
    fn new(capability: Capability<u64>) -> Self {
        PendingEpoch { capability, changes: Vec::new(), changed: BTreeSet::new() }
    }
}

impl CuratedWriter {
    pub fn build<'scope>(
        self,
        changes: StreamVec<'scope, u64, KeyChange>,
        changed_days: StreamVec<'scope, u64, i32>,
    ) -> StreamVec<'scope, u64, SinkMessage> {
        changes.binary_frontier(changed_days, Pipeline, Pipeline, "CuratedWriter", move |_capability, _info| {
            let mut live: BTreeMap<i32, BTreeMap<u128, Candidate>> = BTreeMap::new();
            let mut pending: BTreeMap<u64, PendingEpoch> = BTreeMap::new();
            move |(changes, changes_frontier), (days, days_frontier), output| {
                // An epoch without local changes still has to write this worker's share of the
                // partitions other workers changed, so both inputs can open an epoch.
                changes.for_each_time(|time, data| {
                    let epoch = pending.entry(*time.time()).or_insert_with(|| PendingEpoch::new(time.retain(0)));
                    for batch in data {
                        epoch.changes.append(batch);
                    }
                });
                days.for_each_time(|time, data| {
                    let epoch = pending.entry(*time.time()).or_insert_with(|| PendingEpoch::new(time.retain(0)));
                    for batch in data {
                        epoch.changed.extend(batch.drain(..));
                    }
                });
                while let Some((&time, _)) = pending.first_key_value() {
                    if changes_frontier.less_equal(&time) || days_frontier.less_equal(&time) {
                        break;
                    }
                    let PendingEpoch { capability, changes: updates, changed } = pending.pop_first().expect("first entry exists").1;
                    for change in &updates {
                        if let Some(old) = &change.old
                            && let Some(partition) = live.get_mut(&old.rating_date)
                        {
                            partition.remove(&change.key);
                        }
                    }
                    for change in updates {
                        if let Some(new) = change.new {
                            live.entry(new.rating_date).or_default().insert(change.key, new);
                        }
                    }
                    if time == 0 || changed.is_empty() || self.failure.is_set() {
                        continue;
                    }
                    let written = self.write(&live, &changed);
                    match written {
                        Ok(files) => {
                            let mut session = output.session(&capability);
                            for file in files {
                                session.give(SinkMessage::CuratedFile(LocalDataFile(file)));
                            }
                        }
                        Err(error) => self.failure.set(error),
                    }
                    if let Some(days) = self.epochs.days(time) {
                        // Later epochs ingest after `days.last`: older partitions cannot change.
                        let frozen_before = days.last - self.lateness_days;
                        live.retain(|&partition, _| partition >= frozen_before);
                    }
                }
            }
        })
    }

    fn write(&self, live: &BTreeMap<i32, BTreeMap<u128, Candidate>>, changed: &BTreeSet<i32>) -> crate::Result<Vec<iceberg::spec::DataFile>> {
        let schema = arrow_schema(self.table.metadata().current_schema())?;
        let mut files = Vec::new();
        for day in changed {
            let Some(rows) = live.get(day).filter(|rows| !rows.is_empty()) else { continue };
            let batch = curated_to_batch(&schema, rows.iter())?;
            let prefix = format!("w{}", self.worker);
            files.extend(self.runtime.block_on(write_partition(&self.table, *day, [batch], self.target_file_size, &prefix))?);
        }
        Ok(files)
    }
}
