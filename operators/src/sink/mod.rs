//! Sinks: turning the upsert's changes into Iceberg commits.
//!
//! ```text
//!  upsert (per worker: its keys): per epoch, per changed key, its old and new partition;
//!        │ late updates → rejected rows
//!        │ Remove(day, key); Insert(day, keys, the new rows as one batch); seeds → Seed(day, file, position)
//!        ▼ exchange(partition)
//!  curated writer (the worker owning each partition): new rows → a new data file; superseded
//!  rows → a position delete file (their file and position); a partition at
//!  `compact_after_files` files → all live rows rewritten, its old files removed
//!        │ files added (data, deletes), files removed, files the deletes point at
//!        ▼
//!        │ before writing: the table's data-quality checks (crate::checks) judge the rows;
//!        │ `quarantine` rows become rejections, the evaluation goes to the committer
//!        ▼
//!  commit (worker 0) ◄── rejections (rules, late updates, quarantined rows)
//!   gate: merged evaluation → report; a failed `fail` check stops before any commit
//!   curated: one snapshot adding the new data and delete files (removing compacted ones)
//!   rejected: replay replaces the epoch's ingestion_date partitions; stream appends
//! ```
//!
//! Every live row of a partition that can still change is in memory (it is inside the lateness
//! window, or it could not change), with the file and position it sits at, so nothing is read
//! back from storage. Rows that only differ in how they were obtained (a reloaded row and its re-processed
//! record with the same values) are not a change, so re-running a replay commits nothing to
//! curated.

pub mod committer;
pub mod curated;
pub mod row_index;

use iceberg::spec::DataFile;
use serde::{Deserialize, Serialize};

use crate::records::Batch;

/// A data file handed from the worker that wrote it to the committing worker of the same process.
/// Workers of one process exchange data without serialization; crossing processes is refused.
#[derive(Debug, Clone)]
pub struct LocalDataFile(pub DataFile);

impl Serialize for LocalDataFile {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("data file descriptions are not sent between processes; run one process with -w workers"))
    }
}

impl<'de> Deserialize<'de> for LocalDataFile {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("data file descriptions are not sent between processes"))
    }
}

/// The ingestion dates an epoch covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochDays {
    pub first: i32,
    pub last: i32,
}

impl EpochDays {
    pub fn merge(this: Option<EpochDays>, other: EpochDays) -> EpochDays {
        match this {
            None => other,
            Some(days) => EpochDays { first: days.first.min(other.first), last: days.last.max(other.last) },
        }
    }
}

/// A worker's raw-table write for one epoch, running on the I/O runtime while the worker reads the
/// next epoch; the committer awaits it before the raw commit.
pub type RawWrite = tokio::task::JoinHandle<crate::Result<Vec<DataFile>>>;

/// What the drivers know about an epoch that the operators need when it completes. Replay fills
/// it from its plan up front; in stream mode every worker merges its share in before it advances
/// its input past the epoch, so it is complete once the epoch's frontier has passed.
#[derive(Debug, Default)]
pub struct EpochMeta {
    /// Ingestion dates of the epoch's records (`None`: no records).
    pub days: Option<EpochDays>,
    /// Stream: next offset per partition reached in this epoch (partitions with records only).
    pub offsets: crate::source::kafka::Offsets,
    /// Stream: the writes of the raw table's data files for this epoch's records (one per worker
    /// that read records).
    pub raw_writes: Vec<RawWrite>,
    /// Records the drivers read in this epoch.
    pub records: u64,
    /// Stream: when the first worker closed the epoch (for the epoch's latency in the logs).
    pub closed: Option<std::time::Instant>,
    /// Every record read after this epoch is ingested on this day or later (`None`: unknown).
    /// Replay: the epoch's last day (it reads ingestion dates in order). Stream: the earliest of
    /// the partitions' newest ingestion days so far, since each partition is read in offset order
    /// and its Kafka timestamps do not go back, while partitions can lag each other by days.
    pub settled_day: Option<i32>,
    /// Stream: per Kafka partition, the newest ingestion date read so far (by the run, or read
    /// back from curated at its start).
    pub partition_days: crate::source::kafka::PartitionDays,
}

impl EpochMeta {
    pub fn merge(&mut self, other: EpochMeta) {
        if let Some(days) = other.days {
            self.days = Some(EpochDays::merge(self.days, days));
        }
        self.offsets.extend(other.offsets);
        self.raw_writes.extend(other.raw_writes);
        self.records += other.records;
        self.closed = match (self.closed, other.closed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.settled_day = match (self.settled_day, other.settled_day) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (partition, day) in other.partition_days {
            crate::source::kafka::note_day(&mut self.partition_days, partition, day);
        }
    }
}

/// Epoch number → what is known about it; shared by the workers of one process.
#[derive(Debug, Clone, Default)]
pub struct EpochLog(std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u64, EpochMeta>>>);

impl EpochLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, EpochMeta>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn merge(&self, epoch: u64, meta: EpochMeta) {
        self.lock().entry(epoch).or_default().merge(meta);
    }

    pub fn days(&self, epoch: u64) -> Option<EpochDays> {
        self.lock().get(&epoch).and_then(|meta| meta.days)
    }

    pub fn settled_day(&self, epoch: u64) -> Option<i32> {
        self.lock().get(&epoch).and_then(|meta| meta.settled_day)
    }

    /// Hands the epoch's entry to the committer (it is not needed afterwards).
    pub fn take(&self, epoch: u64) -> EpochMeta {
        self.lock().remove(&epoch).unwrap_or_default()
    }
}

/// Everything the committing worker gathers for an epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SinkMessage {
    /// A curated data file written for one of the changed partitions.
    CuratedFile(Box<LocalDataFile>),
    /// A curated data or delete file the epoch's new files replace.
    RemovedFile(String),
    /// A curated data file in which the epoch's position deletes mark rows.
    DeletesIn(String),
    /// A record to write to the rejected table.
    Rejected(Batch),
    /// One worker's data-quality evaluation of the rows it wrote in the epoch.
    Checked(LocalEvaluation),
}

/// A worker's check evaluation, handed to the committing worker of the same process (like
/// [`LocalDataFile`], never serialized), with the newest ingestion time of the rows it judged.
#[derive(Debug, Clone)]
pub struct LocalEvaluation {
    pub evaluation: crate::checks::Evaluation,
    pub newest_ingestion_ms: Option<i64>,
}

impl Serialize for LocalEvaluation {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("check evaluations are not sent between processes; run one process with -w workers"))
    }
}

impl<'de> Deserialize<'de> for LocalEvaluation {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("check evaluations are not sent between processes"))
    }
}

/// The first error any operator hit. Operators cannot return errors, so they park it here and stop
/// committing; the driver stops feeding input and returns it.
#[derive(Debug, Clone, Default)]
pub struct Failure(std::sync::Arc<std::sync::Mutex<Option<crate::Error>>>);

impl Failure {
    pub fn set(&self, error: crate::Error) {
        let mut slot = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_none() {
            *slot = Some(error);
        }
    }

    pub fn is_set(&self) -> bool {
        self.0.lock().map(|slot| slot.is_some()).unwrap_or(true)
    }

    pub fn take(&self) -> Option<crate::Error> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}
