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
pub mod raw_writer;
pub mod curated;
pub mod row_index;

use iceberg::spec::DataFile;
use serde::{Deserialize, Serialize};

use crate::error::Context;
use crate::records::Batch;

/// A data or delete file as it travels from the worker that wrote it to the committing worker,
/// possibly in another process: the Iceberg spec's JSON form of a manifest entry's `data_file`
/// (iceberg-rust's own encoder), with the partition spec it was written under. It is decoded
/// against the table it belongs to, which is what gives the JSON its types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDescription {
    pub spec_id: i32,
    pub json: String,
}

impl FileDescription {
    /// Describes `file`, written into `table` under its default partition spec.
    pub fn of(file: DataFile, table: &iceberg::table::Table) -> crate::Result<FileDescription> {
        let metadata = table.metadata();
        let spec = metadata.default_partition_spec();
        let partition_type = spec.partition_type(metadata.current_schema()).context(|| "the partition type of a written file".into())?;
        let json = iceberg::spec::serialize_data_file_to_json(file, &partition_type, metadata.format_version())
            .context(|| "describing a written file".into())?;
        Ok(FileDescription { spec_id: spec.spec_id(), json })
    }

    /// The file this describes, as a file of `table`.
    pub fn decode(&self, table: &iceberg::table::Table) -> crate::Result<DataFile> {
        let metadata = table.metadata();
        let spec = metadata
            .partition_spec_by_id(self.spec_id)
            .ok_or_else(|| crate::Error::Internal(format!("a written file names partition spec {}, which {} lacks", self.spec_id, table.identifier())))?;
        let schema = metadata.current_schema();
        let partition_type = spec.partition_type(schema).context(|| "the partition type of a written file".into())?;
        iceberg::spec::deserialize_data_file_from_json(&self.json, self.spec_id, &partition_type, schema)
            .context(|| "reading a written file's description".into())
    }
}

/// The ingestion dates an epoch covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// What the drivers know about an epoch that the operators need when it completes. Replay fills
/// it from its plan up front, in every process; in stream mode every worker sends its share into
/// the dataflow before it advances its input past the epoch, and the first worker of each process
/// merges every worker's share into its process's [`EpochLog`] (see `dataflow::settle`), so it is
/// complete once the epoch's frontier has passed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EpochMeta {
    /// Ingestion dates of the epoch's records (`None`: no records).
    pub days: Option<EpochDays>,
    /// Stream: next offset per partition reached in this epoch (partitions with records only).
    pub offsets: crate::source::kafka::Offsets,
    /// Records the drivers read in this epoch.
    pub records: u64,
    /// Stream: when the first worker of this process closed the epoch (for the epoch's latency in
    /// the logs; a clock reading does not travel between processes).
    #[serde(skip)]
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

    /// Drops the entries of epochs before `epoch`.
    pub fn forget_before(&self, epoch: u64) {
        let mut log = self.lock();
        *log = log.split_off(&epoch);
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
    CuratedFile(FileDescription),
    /// Stream: raw data files one worker wrote for the epoch's records.
    RawFiles(Vec<FileDescription>),
    /// A curated data or delete file the epoch's new files replace.
    RemovedFile(String),
    /// A curated data file in which the epoch's position deletes mark rows.
    DeletesIn(String),
    /// A record to write to the rejected table.
    Rejected(Batch),
    /// One worker's data-quality evaluation of the rows it wrote in the epoch.
    Checked(WorkerEvaluation),
    /// A process of the run failed at or before this epoch: nothing from here on may be committed.
    Failed { process: usize, message: String },
}

/// A worker's check evaluation (without the checks, which the committer has), with the newest
/// ingestion time of the rows it judged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerEvaluation {
    pub evaluation: crate::checks::EvaluationState,
    pub newest_ingestion_ms: Option<i64>,
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

    /// The error, as a message for other processes.
    pub fn describe(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref().map(ToString::to_string)
    }
}
