//! The commit step, on worker 0: once an epoch is complete everywhere, one Overwrite snapshot on
//! the curated table (the changed partitions' old files out, the workers' new files in) and one on
//! the rejected table (the epoch's ingestion_date partitions replaced by their rejections, so a
//! replay of the same days does not record them twice). Both carry the replay cursor: the last
//! ingestion date the snapshot reflects.
//!
//! Later epochs are not committed after a failure: their changes build on the failed one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use iceberg::TableIdent;
use iceberg::spec::DataFile;
use iceberg::table::Table;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::catalog::Lakehouse;
use crate::commit::{CommitOptions, EPOCH_PROPERTY, REPLAY_CURSOR_PROPERTY, replace_partitions};
use crate::error::Result;
use crate::model::{RejectReason, Rejection, format_date};
use crate::schema::{arrow_schema, rejected_to_batch};
use crate::sink::{EpochDays, Failure, SinkMessage};
use crate::writer::write_partition;

#[derive(Debug, Default)]
pub struct CommitStats {
    pub curated_snapshots: AtomicU64,
    pub rejected_snapshots: AtomicU64,
    pub curated_files_added: AtomicU64,
    pub curated_files_removed: AtomicU64,
    pub commit_retries: AtomicU64,
    pub rejected: Mutex<BTreeMap<RejectReason, u64>>,
}

pub struct Committer {
    pub lakehouse: Arc<Lakehouse>,
    pub curated: TableIdent,
    pub rejected: Table,
    pub runtime: tokio::runtime::Handle,
    pub epoch_days: Arc<Vec<EpochDays>>,
    pub options: CommitOptions,
    pub target_file_size: usize,
    pub stats: Arc<CommitStats>,
    pub failure: Failure,
}

#[derive(Default)]
struct EpochInput {
    files: Vec<DataFile>,
    changed: BTreeSet<i32>,
    rejections: Vec<Rejection>,
}

impl Committer {
    pub fn build<'scope>(self, messages: StreamVec<'scope, u64, SinkMessage>) -> StreamVec<'scope, u64, u64> {
        messages.unary_frontier(Exchange::new(|_: &SinkMessage| 0), "Commit", move |_capability, _info| {
            let mut pending: BTreeMap<u64, (Capability<u64>, EpochInput)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_time(|time, data| {
                    let epoch = &mut pending.entry(*time.time()).or_insert_with(|| (time.retain(0), EpochInput::default())).1;
                    for batch in data {
                        for message in batch.drain(..) {
                            match message {
                                SinkMessage::CuratedFile(file) => epoch.files.push(file.0),
                                SinkMessage::ChangedPartition(day) => {
                                    epoch.changed.insert(day);
                                }
                                SinkMessage::Rejected(rejection) => epoch.rejections.push(rejection),
                            }
                        }
                    }
                });
                while let Some((&time, _)) = pending.first_key_value() {
                    if frontier.less_equal(&time) {
                        break;
                    }
                    let (capability, epoch) = pending.pop_first().expect("first entry exists").1;
                    if time == 0 || self.failure.is_set() {
                        continue;
                    }
                    match self.runtime.block_on(self.commit(time, epoch)) {
                        Ok(()) => output.session(&capability).give(time),
                        Err(error) => self.failure.set(error),
                    }
                }
            }
        })
    }

    async fn commit(&self, epoch: u64, input: EpochInput) -> Result<()> {
        let Some(days) = self.epoch_days.get(epoch as usize - 1).copied() else {
            return Err(crate::Error::Internal(format!("epoch {epoch} has no ingestion dates")));
        };
        let properties = BTreeMap::from([
            (REPLAY_CURSOR_PROPERTY.to_string(), format_date(days.last)),
            (EPOCH_PROPERTY.to_string(), epoch.to_string()),
        ]);
        if !input.changed.is_empty() {
            let committed =
                replace_partitions(&self.lakehouse, &self.curated, input.changed, input.files, properties.clone(), self.options)
                    .await?;
            if let Some(committed) = committed {
                self.stats.curated_snapshots.fetch_add(1, Ordering::Relaxed);
                self.stats.curated_files_added.fetch_add(committed.files_added as u64, Ordering::Relaxed);
                self.stats.curated_files_removed.fetch_add(committed.files_removed as u64, Ordering::Relaxed);
                self.stats.commit_retries.fetch_add(u64::from(committed.attempts - 1), Ordering::Relaxed);
            }
        }

        let mut rejections = input.rejections;
        rejections.sort_by_key(|r| r.event.position());
        {
            let mut counts = self.stats.rejected.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for rejection in &rejections {
                *counts.entry(rejection.reason).or_default() += 1;
            }
        }
        let schema = arrow_schema(self.rejected.metadata().current_schema())?;
        let mut files = Vec::new();
        for day in days.first..=days.last {
            let of_day: Vec<Rejection> =
                rejections.iter().filter(|r| r.event.ingestion_date() == day).cloned().collect();
            if !of_day.is_empty() {
                let batch = rejected_to_batch(&schema, &of_day)?;
                files.extend(write_partition(&self.rejected, day, [batch], self.target_file_size, "rejected").await?);
            }
        }
        let ident = self.rejected.identifier();
        let replaced: BTreeSet<i32> = (days.first..=days.last).collect();
        if let Some(committed) = replace_partitions(&self.lakehouse, ident, replaced, files, properties, self.options).await?
        {
            self.stats.rejected_snapshots.fetch_add(1, Ordering::Relaxed);
            self.stats.commit_retries.fetch_add(u64::from(committed.attempts - 1), Ordering::Relaxed);
        }
        Ok(())
    }
}
