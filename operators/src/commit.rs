//! Our own Iceberg commit: "a commit = files to remove + files to add", as one snapshot.
//!
//! iceberg-rust can only fast-append, so replacing rows needs this module. It follows the table
//! spec (format v2):
//!
//! ```text
//!  base snapshot ── manifest list ──┬─ manifest without removed files ───────► carried over as is
//!                                   ├─ manifest holding a removed file ──────► rewritten: that entry
//!                                   │                                          DELETED, the rest EXISTING
//!                                   └─ manifest with an earlier snapshot's ──► rewritten without them
//!                                      DELETED entries                         (dropped if nothing is left)
//!  files to add ─────────────────────────────────────────────────────────────► new manifest, ADDED
//!                         │
//!                         ▼
//!  new manifest list (parent = base, sequence = last + 1) → snapshot (`append` if nothing is
//!  removed, else `overwrite`; summary with added/deleted/total counts and our properties)
//!  → new metadata file (snapshot, `main` ref, snapshot and metadata logs)
//!  → compare-and-swap of the catalog pointer, expecting the base's metadata location
//! ```
//!
//! Fencing: an engine commit (a stream's or a replay's epoch) names the table's newest engine
//! commit it was computed from ([`Fence`]: that commit's writer id and epoch). Before every attempt
//! the base's newest engine commit must still be that one: if another engine run committed since
//! (a second stream on the same graph, a zombie that woke up, a replay while a stream runs), the
//! change was computed from state that no longer holds and is refused with [`Error::Fenced`],
//! never re-applied. Every other commit (maintenance, `generate`, `import`) carries the engine's
//! progress properties forward from its base, so it never moves the fence, the current snapshot
//! always says where the engine is, and expiry may drop the engine's own snapshots; such commits
//! are handled as conflicts below.
//!
//! Conflicts: when the swap finds another writer's commit first, the change is re-validated on the
//! new base. It is re-applied only if the fence still holds, every file it removes is still live
//! and no file was added to or removed from the partitions it guards since its base; otherwise
//! [`Error::CommitConflict`] tells the caller to recompute. Retries are bounded. Files written for
//! a lost attempt (manifests, manifest list, metadata) are deleted; the change's data files belong
//! to the caller.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use iceberg::spec::{
    DataContentType, DataFile, FormatVersion, ManifestContentType, Literal, MAIN_BRANCH, ManifestFile, ManifestListWriter, ManifestWriterBuilder, Operation,
    PrimitiveLiteral, Snapshot, SnapshotReference, SnapshotRetention, SnapshotSummaryCollector, Summary,
};
use iceberg::table::Table;
use iceberg::TableIdent;
use iceberg::spec::TableMetadataBuildResult;

use crate::catalog::{Lakehouse, Publication};
use crate::error::{Context, Error, Result};

/// Snapshot summary property: the replay position a curated snapshot reflects.
pub const REPLAY_CURSOR_PROPERTY: &str = "ratings-flow.replay-cursor";
/// Snapshot summary property: the dataflow epoch that produced the snapshot (with
/// [`WRITER_PROPERTY`], the engine commit a [`Fence`] names; other commits carry both forward).
pub const EPOCH_PROPERTY: &str = "ratings-flow.epoch";
/// Snapshot summary property: the engine run that made the snapshot (a fresh id per run).
pub const WRITER_PROPERTY: &str = "ratings-flow.writer";
/// Snapshot summary property: the engine commit the change was computed from (`writer/epoch` of
/// the table's newest engine commit when the run read it, or `none`).
pub const BASE_PROPERTY: &str = "ratings-flow.base";

/// The properties that say where the engine is: every snapshot carries them forward from its
/// base unless it sets them itself, so the current snapshot always tells, whatever maintenance
/// committed since and whatever expiry removed.
const PROGRESS_PROPERTIES: [&str; 5] = [
    EPOCH_PROPERTY,
    WRITER_PROPERTY,
    crate::source::kafka::OFFSETS_PROPERTY,
    REPLAY_CURSOR_PROPERTY,
    crate::source::kafka::PARTITION_DAYS_PROPERTY,
];

/// One engine commit, as its snapshot (and every snapshot carrying its progress forward) names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineCommit {
    /// The run's writer id (0 for snapshots of versions before writer ids).
    pub writer: u64,
    pub epoch: u64,
}

impl EngineCommit {
    fn of(summary: &HashMap<String, String>) -> Option<EngineCommit> {
        let epoch = summary.get(EPOCH_PROPERTY)?.parse().unwrap_or(0);
        let writer = summary.get(WRITER_PROPERTY).and_then(|w| u64::from_str_radix(w, 16).ok()).unwrap_or(0);
        Some(EngineCommit { writer, epoch })
    }
}

impl std::fmt::Display for EngineCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:012x}/{}", self.writer, self.epoch)
    }
}

/// What an engine commit was computed from: the table's newest engine commit when the run read
/// the table (its offsets, replay cursor and rows), then each of the run's own commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub base: Option<EngineCommit>,
}

impl Fence {
    /// The fence of a table as loaded now.
    pub fn of(table: &Table) -> Fence {
        Fence { base: newest_with(table, EPOCH_PROPERTY).and_then(|s| EngineCommit::of(&s.summary().additional_properties)) }
    }

    /// The fence after `committed`, a commit of this run.
    pub fn after(committed: &Committed) -> Fence {
        let snapshot = committed.table.metadata().snapshot_by_id(committed.snapshot_id);
        Fence { base: snapshot.and_then(|s| EngineCommit::of(&s.summary().additional_properties)) }
    }
}

/// A fresh writer id for one engine run: 12 hex digits.
pub fn new_writer_id() -> String {
    format!("{:012x}", uuid::Uuid::new_v4().as_u64_pair().0 >> 16)
}

/// What one commit does to a table.
#[derive(Debug, Clone, Default)]
pub struct FileChange {
    /// Paths of data files to remove; each must be live in the base snapshot. Paths are enough:
    /// the commit takes each file's description from the manifest that lists it.
    pub remove: Vec<String>,
    /// Data files and position delete files to add.
    pub add: Vec<DataFile>,
    /// Data files the added position deletes point at: each must be live in the base (and still
    /// be on a retry), or the deletes would mark rows of a file another writer replaced.
    pub referenced: Vec<String>,
    /// The snapshot the writer's view of `referenced` comes from. While it is still the base's
    /// current snapshot nobody else has committed since, so the check reads no manifests (a
    /// stream's every commit would otherwise read all of them).
    pub referenced_in: Option<i64>,
    /// Partitions (identity of a date column) whose content this change replaces: another writer
    /// touching one of them in the meantime is a conflict.
    pub guarded_partitions: BTreeSet<i32>,
    /// Extra snapshot summary properties (positions, epoch).
    pub properties: BTreeMap<String, String>,
    /// For engine commits: the engine snapshot this change was computed from. The commit is
    /// refused ([`Error::Fenced`]) once another engine snapshot has replaced it.
    pub fence: Option<Fence>,
}

/// The outcome of a successful commit.
#[derive(Debug, Clone)]
pub struct Committed {
    pub snapshot_id: i64,
    pub operation: Operation,
    /// Attempts made, 1 when nobody else committed in between.
    pub attempts: u32,
    pub files_added: usize,
    pub files_removed: usize,
    pub table: Table,
}

/// Commit settings.
#[derive(Debug, Clone, Copy)]
pub struct CommitOptions {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
}

impl Default for CommitOptions {
    fn default() -> Self {
        CommitOptions { max_attempts: 8, initial_backoff: Duration::from_millis(20) }
    }
}

/// A data or delete file that is live in a snapshot, with the bookkeeping needed to mark it
/// DELETED.
#[derive(Debug, Clone)]
pub struct LiveFile {
    pub data_file: DataFile,
    pub partition: Option<i32>,
}

impl LiveFile {
    /// A position delete file rather than a data file.
    pub fn is_deletes(&self) -> bool {
        self.data_file.content_type() != DataContentType::Data
    }
}

/// The value of the first partition field, for tables partitioned by identity of a date column.
pub fn partition_day(file: &DataFile) -> Option<i32> {
    match file.partition().fields().first() {
        Some(Some(Literal::Primitive(PrimitiveLiteral::Int(day)))) => Some(*day),
        _ => None,
    }
}

/// The newest snapshot of the current branch whose summary has property `key`. Walks the parent
/// chain; where expiry removed a parent, goes on with the older snapshots by sequence number (the
/// tables' history is linear: every commit of ours and of maintenance goes to `main`).
fn newest_with<'a>(table: &'a Table, key: &str) -> Option<&'a iceberg::spec::SnapshotRef> {
    let metadata = table.metadata();
    let has = |snapshot: &iceberg::spec::SnapshotRef| snapshot.summary().additional_properties.contains_key(key);
    let mut snapshot = metadata.current_snapshot();
    while let Some(current) = snapshot {
        if has(current) {
            return Some(current);
        }
        snapshot = match current.parent_snapshot_id() {
            None => return None,
            Some(id) => match metadata.snapshot_by_id(id) {
                Some(parent) => Some(parent),
                None => {
                    let below = current.sequence_number();
                    return metadata.snapshots().filter(|s| s.sequence_number() < below && has(s)).max_by_key(|s| s.sequence_number());
                }
            },
        };
    }
    None
}

/// The value of summary property `key` in the newest snapshot of the current branch that has it.
/// Snapshots without it (another writer's, or a mode that does not record it) are passed over.
pub fn newest_property(table: &Table, key: &str) -> Option<String> {
    newest_with(table, key).map(|snapshot| snapshot.summary().additional_properties[key].clone())
}

/// Refuses a change whose fence no longer holds on `base`.
fn check_fence(base: &Table, fence: Fence) -> Result<()> {
    let now = Fence::of(base);
    if now == fence {
        return Ok(());
    }
    let computed_from = fence.base.map_or_else(|| "an empty table".to_string(), |c| format!("writer/epoch {c}"));
    let detail = match now.base {
        Some(head) => format!("writer/epoch {head} committed after {computed_from}, which this change was computed from"),
        // Only a rollback takes every engine commit out of the branch: the state this change was
        // computed from is gone either way.
        None => format!("{computed_from}, which this change was computed from, is no longer on the table's branch"),
    };
    Err(Error::Fenced { table: base.identifier().to_string(), detail })
}

/// Every live data file of the table's current snapshot.
pub async fn live_files(table: &Table) -> Result<Vec<LiveFile>> {
    let Some(snapshot) = table.metadata().current_snapshot() else {
        return Ok(Vec::new());
    };
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .context(|| format!("reading the manifest list of {}", table.identifier()))?;
    let mut files = Vec::new();
    for manifest_file in list.entries() {
        let manifest = manifest_file
            .load_manifest(table.file_io())
            .await
            .context(|| format!("reading manifest {}", manifest_file.manifest_path))?;
        for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
            let data_file = entry.data_file().clone();
            files.push(LiveFile { partition: partition_day(&data_file), data_file });
        }
    }
    Ok(files)
}

/// Replaces the content of `partitions`: every live file in them is removed and `add` is added.
/// Returns `None` without committing when there is nothing to remove and nothing to add.
pub async fn replace_partitions(
    lakehouse: &Lakehouse,
    ident: &TableIdent,
    partitions: BTreeSet<i32>,
    add: Vec<DataFile>,
    properties: BTreeMap<String, String>,
    fence: Option<Fence>,
    options: CommitOptions,
) -> Result<Option<Committed>> {
    let table = lakehouse.load(ident).await?;
    let remove: Vec<String> = live_files(&table)
        .await?
        .into_iter()
        .filter(|f| f.partition.is_some_and(|p| partitions.contains(&p)))
        .map(|f| f.data_file.file_path().to_string())
        .collect();
    if remove.is_empty() && add.is_empty() {
        return Ok(None);
    }
    let change = FileChange { remove, add, guarded_partitions: partitions, properties, fence, ..Default::default() };
    commit(lakehouse, table, change, options).await.map(Some)
}

/// Commits `change` on top of `base`, retrying on the newest table after a lost compare-and-swap.
pub async fn commit(lakehouse: &Lakehouse, base: Table, change: FileChange, options: CommitOptions) -> Result<Committed> {
    let ident = base.identifier().clone();
    let mut base = base;
    let mut backoff = options.initial_backoff;
    // Every snapshot id this call sent: after an unknown outcome, one of them may have landed.
    let mut sent: Vec<i64> = Vec::new();
    for attempt in 1..=options.max_attempts {
        if let Some(fence) = change.fence {
            check_fence(&base, fence)?;
        }
        let prepared = prepare(&base, &change).await?;
        // The operation follows from the change alone: every attempt's is the same.
        let operation = prepared.operation.clone();
        sent.push(prepared.snapshot_id);
        let committed = |table: Table, snapshot_id: i64| Committed {
            snapshot_id,
            operation: operation.clone(),
            attempts: attempt,
            files_added: change.add.len(),
            files_removed: change.remove.len(),
            table,
        };
        match lakehouse.publish(&base, prepared.built).await? {
            Publication::Committed => {
                let table = lakehouse.load(&ident).await?;
                return Ok(committed(table, prepared.snapshot_id));
            }
            Publication::Lost => {
                discard(&base, &prepared.written).await;
                tracing::debug!(table = %ident, attempt, "another writer committed first; re-validating on the new base");
            }
            // The files stay: they are the snapshot's if it landed, orphans for maintenance if not.
            Publication::Unknown(reason) => {
                tracing::warn!(table = %ident, attempt, "the catalog did not say whether the commit landed ({reason}); reloading the table to see")
            }
        }
        let newer = lakehouse.load(&ident).await?;
        // Ours after all: a commit whose answer was lost, or one the server applied late.
        if let Some(&id) = sent.iter().find(|&&id| newer.metadata().snapshot_by_id(id).is_some()) {
            tracing::info!(table = %ident, snapshot = id, "the commit had landed");
            return Ok(committed(newer, id));
        }
        validate_rebase(&base, &newer, &change).await?;
        base = newer;
        // Jitter keeps writers that lost to each other from retrying in lockstep.
        tokio::time::sleep(backoff.mul_f64(rand::random_range(0.5..1.5))).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Err(Error::CommitConflict {
        table: ident.to_string(),
        detail: format!("still losing the race after {} attempts; is another writer committing continuously?", options.max_attempts),
    })
}

/// Commits a change of the table's metadata that adds no snapshot (snapshot expiry, a REST
/// client's commit served by `catalog serve`): `edit` gets the newest table and returns its new
/// metadata, or `None` when there is nothing to change. After a lost compare-and-swap, or an
/// answer lost on the way, `edit` runs again on the newer table (so it must return `None` for a
/// change the table already holds). Returns the table as committed.
pub async fn commit_metadata(
    lakehouse: &Lakehouse,
    ident: &TableIdent,
    options: CommitOptions,
    edit: impl Fn(&Table) -> Result<Option<TableMetadataBuildResult>>,
) -> Result<Option<Table>> {
    let mut backoff = options.initial_backoff;
    for _ in 0..options.max_attempts {
        let base = lakehouse.load(ident).await?;
        let Some(built) = edit(&base)? else { return Ok(None) };
        match lakehouse.publish(&base, built).await? {
            Publication::Committed => return lakehouse.load(ident).await.map(Some),
            Publication::Lost => {}
            Publication::Unknown(reason) => {
                tracing::warn!(table = %ident, "the catalog did not say whether the change landed ({reason}); reloading the table to see")
            }
        }
        tokio::time::sleep(backoff.mul_f64(rand::random_range(0.5..1.5))).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Err(Error::CommitConflict {
        table: ident.to_string(),
        detail: format!("still losing the race after {} attempts", options.max_attempts),
    })
}

/// Checks that `change`, prepared against `old`, still means the same thing on `new`.
async fn validate_rebase(old: &Table, new: &Table, change: &FileChange) -> Result<()> {
    let old_files = live_files(old).await?;
    let old_live: HashSet<&str> = old_files.iter().map(|f| f.data_file.file_path()).collect();
    let new_files = live_files(new).await?;
    let new_live: HashSet<&str> = new_files.iter().map(|f| f.data_file.file_path()).collect();
    let conflict = |detail: String| Error::CommitConflict { table: new.identifier().to_string(), detail };
    if let Some(gone) = change.remove.iter().find(|f| !new_live.contains(f.as_str())) {
        return Err(conflict(format!("file {gone} was removed by another writer")));
    }
    if let Some(gone) = change.referenced.iter().find(|f| !new_live.contains(f.as_str())) {
        return Err(conflict(format!("data file {gone}, where this commit deletes rows, was replaced by another writer")));
    }
    let touched = new_files
        .iter()
        .filter(|f| !old_live.contains(f.data_file.file_path()))
        .chain(old_files.iter().filter(|f| !new_live.contains(f.data_file.file_path())))
        .filter_map(|f| f.partition)
        .find(|p| change.guarded_partitions.contains(p));
    if let Some(day) = touched {
        return Err(conflict(format!(
            "another writer changed partition {} that this commit replaces",
            crate::model::format_date(day)
        )));
    }
    Ok(())
}

/// A commit whose files are written but not yet published.
struct Prepared {
    snapshot_id: i64,
    operation: Operation,
    /// The manifests and the manifest list written for it.
    written: Vec<String>,
    /// The base's metadata with the snapshot added and `main` moved to it.
    built: TableMetadataBuildResult,
}

/// Deletes what a lost attempt wrote. Best effort: leftovers are orphans, never referenced.
async fn discard(base: &Table, written: &[String]) {
    for path in written {
        if let Err(error) = base.file_io().delete(path).await {
            tracing::warn!(%path, %error, "could not delete a file of a lost commit attempt");
        }
    }
}

fn new_snapshot_id(table: &Table) -> i64 {
    loop {
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((high ^ low) & (i64::MAX as u64)) as i64;
        if id != 0 && table.metadata().snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

async fn prepare(base: &Table, change: &FileChange) -> Result<Prepared> {
    let metadata = base.metadata();
    if metadata.format_version() != FormatVersion::V2 {
        return Err(Error::User(format!(
            "table {} has format version {:?}; ratings-flow commits format v2 tables",
            base.identifier(),
            metadata.format_version()
        )));
    }
    let base_location = base.metadata_location_result().context(|| "base table has no metadata location".into())?.to_string();
    let snapshot_id = new_snapshot_id(base);
    let sequence_number = metadata.next_sequence_number();
    let commit_id = uuid::Uuid::new_v4();
    let metadata_dir = format!("{}/metadata", metadata.location());
    let schema = metadata.current_schema().clone();
    let spec = metadata.default_partition_spec().as_ref().clone();
    let file_io = base.file_io();
    let mut written = Vec::new();
    let context = || format!("writing a snapshot of {}", base.identifier());

    let remove: HashSet<&str> = change.remove.iter().map(String::as_str).collect();
    let mut removed_found: HashMap<String, DataFile> = HashMap::new();
    let mut manifests: Vec<ManifestFile> = Vec::new();
    if let Some(parent) = metadata.current_snapshot() {
        let list = base.manifest_list_reader(parent).load().await.context(context)?;
        for (index, manifest_file) in list.entries().iter().enumerate() {
            // A manifest left with only DELETED entries describes no file of this snapshot: it is
            // dropped (as Iceberg's Java implementation does), so the removals it records end with
            // the snapshots that made them and expiry can delete those files.
            let live_entries = manifest_file.added_files_count.unwrap_or(1) + manifest_file.existing_files_count.unwrap_or(1);
            if live_entries == 0 {
                continue;
            }
            // A manifest that records removals (DELETED entries) of an earlier snapshot is
            // rewritten without them: a removal belongs to the snapshot that made it, so expiring
            // that snapshot frees the file.
            let records_removals = manifest_file.deleted_files_count.unwrap_or(0) > 0;
            if remove.is_empty() && !records_removals {
                // Carried over without reading it.
                manifests.push(manifest_file.clone());
                continue;
            }
            let manifest = manifest_file.load_manifest(file_io).await.context(context)?;
            let touched = manifest.entries().iter().any(|e| e.is_alive() && remove.contains(e.file_path()));
            if !touched && !records_removals {
                manifests.push(manifest_file.clone());
                continue;
            }
            let path = format!("{metadata_dir}/{commit_id}-r{index}.avro");
            let output = file_io.new_output(&path).context(context)?;
            let builder = ManifestWriterBuilder::new(output, Some(snapshot_id), schema.clone(), spec.clone());
            let mut writer = match manifest_file.content {
                ManifestContentType::Deletes => builder.build_v2_deletes(),
                ManifestContentType::Data => builder.build_v2_data(),
            };
            for entry in manifest.entries().iter().filter(|e| e.is_alive()) {
                let sequence = entry.sequence_number().unwrap_or(manifest_file.sequence_number);
                let file_sequence = entry.file_sequence_number.or(Some(sequence));
                if remove.contains(entry.file_path()) {
                    removed_found.insert(entry.file_path().to_string(), entry.data_file().clone());
                    writer.add_delete_file(entry.data_file().clone(), sequence, file_sequence).context(context)?;
                } else {
                    let added_by = entry.snapshot_id().unwrap_or(manifest_file.added_snapshot_id);
                    writer.add_existing_file(entry.data_file().clone(), added_by, sequence, file_sequence).context(context)?;
                }
            }
            manifests.push(writer.write_manifest_file().await.context(context)?);
            written.push(path);
        }
    }
    if let Some(missing) = change.remove.iter().find(|f| !removed_found.contains_key(f.as_str())) {
        return Err(Error::CommitConflict {
            table: base.identifier().to_string(),
            detail: format!("file {missing} to remove is not live in the base snapshot"),
        });
    }
    let unchanged_since_writer = change.referenced_in.is_some() && change.referenced_in == metadata.current_snapshot_id();
    if !change.referenced.is_empty() && !unchanged_since_writer {
        let live: HashSet<String> =
            live_files(base).await?.into_iter().map(|f| f.data_file.file_path().to_string()).collect();
        if let Some(gone) = change.referenced.iter().find(|f| !live.contains(f.as_str())) {
            return Err(Error::CommitConflict {
                table: base.identifier().to_string(),
                detail: format!("data file {gone}, where this commit deletes rows, is not live in the base snapshot"),
            });
        }
    }
    let (deletes, data): (Vec<&DataFile>, Vec<&DataFile>) =
        change.add.iter().partition(|f| f.content_type() != DataContentType::Data);
    for (files, suffix) in [(data, "a"), (deletes, "d")] {
        if files.is_empty() {
            continue;
        }
        let path = format!("{metadata_dir}/{commit_id}-{suffix}.avro");
        let output = file_io.new_output(&path).context(context)?;
        let builder = ManifestWriterBuilder::new(output, Some(snapshot_id), schema.clone(), spec.clone());
        let mut writer = if suffix == "d" { builder.build_v2_deletes() } else { builder.build_v2_data() };
        for file in files {
            writer.add_file(file.clone(), sequence_number).context(context)?;
        }
        manifests.push(writer.write_manifest_file().await.context(context)?);
        written.push(path);
    }

    let list_path = format!("{metadata_dir}/snap-{snapshot_id}-1-{commit_id}.avro");
    let list_output = file_io.new_output(&list_path).context(context)?.writer().await.context(context)?;
    let mut list_writer =
        ManifestListWriter::v2(list_output, snapshot_id, metadata.current_snapshot_id(), sequence_number);
    list_writer.add_manifests(manifests.into_iter()).context(context)?;
    list_writer.close().await.context(context)?;
    written.push(list_path.clone());

    // Adding position deletes removes rows: an overwrite, like removing files.
    let adds_deletes = change.add.iter().any(|f| f.content_type() != DataContentType::Data);
    let operation = if change.remove.is_empty() && !adds_deletes { Operation::Append } else { Operation::Overwrite };
    let removed: Vec<DataFile> = removed_found.into_values().collect();
    let summary = summarize(base, change, &removed, operation.clone());
    let snapshot = Snapshot::builder()
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(metadata.current_snapshot_id())
        .with_sequence_number(sequence_number)
        .with_timestamp_ms(chrono::Utc::now().timestamp_millis().max(metadata.last_updated_ms()))
        .with_manifest_list(list_path)
        .with_summary(summary)
        .with_schema_id(metadata.current_schema_id())
        .build();
    let built = metadata
        .clone()
        .into_builder(Some(base_location))
        .add_snapshot(snapshot)
        .context(context)?
        .set_ref(MAIN_BRANCH, SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)))
        .context(context)?
        .build()
        .context(context)?;
    Ok(Prepared { snapshot_id, operation, written, built })
}

/// The snapshot summary: the spec's added/deleted counts, running totals and our properties.
fn summarize(base: &Table, change: &FileChange, removed: &[DataFile], operation: Operation) -> Summary {
    let metadata = base.metadata();
    let mut collector = SnapshotSummaryCollector::default();
    for file in &change.add {
        collector.add_file(file, metadata.current_schema().clone(), metadata.default_partition_spec().clone());
    }
    for file in removed {
        collector.remove_file(file, metadata.current_schema().clone(), metadata.default_partition_spec().clone());
    }
    let mut properties: HashMap<String, String> = collector.build();
    let previous = metadata.current_snapshot().map(|s| s.summary().additional_properties.clone()).unwrap_or_default();
    let previous_total = |key: &str| previous.get(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let is_data = |f: &&DataFile| f.content_type() == DataContentType::Data;
    let sum = |files: &mut dyn Iterator<Item = &DataFile>, field: fn(&DataFile) -> u64| -> u64 { files.map(field).sum() };
    let records = |f: &DataFile| f.record_count();
    let size = |f: &DataFile| f.file_size_in_bytes();
    let one = |_: &DataFile| 1;
    let added_records = sum(&mut change.add.iter().filter(is_data), records);
    let deleted_records = sum(&mut removed.iter().filter(is_data), records);
    let added_size = sum(&mut change.add.iter(), size);
    let removed_size = sum(&mut removed.iter(), size);
    let added_files = sum(&mut change.add.iter().filter(is_data), one);
    let removed_files = sum(&mut removed.iter().filter(is_data), one);
    let added_delete_files = sum(&mut change.add.iter().filter(|f| !is_data(f)), one);
    let removed_delete_files = sum(&mut removed.iter().filter(|f| !is_data(f)), one);
    let added_positions = sum(&mut change.add.iter().filter(|f| !is_data(f)), records);
    let removed_positions = sum(&mut removed.iter().filter(|f| !is_data(f)), records);
    let totals = [
        ("total-records", (previous_total("total-records") + added_records).saturating_sub(deleted_records)),
        ("total-data-files", (previous_total("total-data-files") + added_files).saturating_sub(removed_files)),
        ("total-files-size", (previous_total("total-files-size") + added_size).saturating_sub(removed_size)),
        ("total-delete-files", (previous_total("total-delete-files") + added_delete_files).saturating_sub(removed_delete_files)),
        (
            "total-position-deletes",
            (previous_total("total-position-deletes") + added_positions).saturating_sub(removed_positions),
        ),
        ("total-equality-deletes", 0),
    ];
    for (key, value) in totals {
        properties.insert(key.to_string(), value.to_string());
    }
    for key in PROGRESS_PROPERTIES {
        if let Some(value) = newest_property(base, key) {
            properties.insert(key.to_string(), value);
        }
    }
    properties.extend(change.properties.clone());
    if let Some(fence) = change.fence {
        properties.insert(BASE_PROPERTY.to_string(), fence.base.map_or_else(|| "none".to_string(), |c| c.to_string()));
    }
    Summary { operation, additional_properties: properties }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::test_fixture::{Fixture, data_file, fixture};

    async fn append(f: &Fixture, files: Vec<DataFile>) -> Committed {
        append_with(f, files, CommitOptions::default()).await
    }

    async fn append_with(f: &Fixture, files: Vec<DataFile>, options: CommitOptions) -> Committed {
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        commit(&f.lakehouse, table, FileChange { add: files, ..Default::default() }, options).await.unwrap()
    }

    async fn live_paths(f: &Fixture) -> Vec<(Option<i32>, String)> {
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        let mut paths: Vec<_> =
            live_files(&table).await.unwrap().into_iter().map(|l| (l.partition, l.data_file.file_path().to_string())).collect();
        paths.sort();
        paths
    }

    async fn row_count(f: &Fixture) -> usize {
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        crate::reader::scan(&table, None, None).await.unwrap().iter().map(|b| b.num_rows()).sum()
    }

    #[tokio::test]
    async fn overwrite_marks_removed_files_deleted_and_keeps_the_rest() {
        let f = fixture().await;
        let a1 = data_file(&f, 100, 0, 10).await;
        let b1 = data_file(&f, 101, 100, 20).await;
        let first = append(&f, vec![a1.clone(), b1.clone()]).await;
        assert_eq!(first.operation, Operation::Append);

        let a2 = data_file(&f, 100, 0, 7).await;
        let replaced = replace_partitions(&f.lakehouse, &f.ident, BTreeSet::from([100]), vec![a2.clone()], BTreeMap::new(), None, CommitOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(replaced.operation, Operation::Overwrite);
        assert_eq!(live_paths(&f).await, {
            let mut v = vec![(Some(100), a2.file_path().to_string()), (Some(101), b1.file_path().to_string())];
            v.sort();
            v
        });
        assert_eq!(row_count(&f).await, 27);

        let snapshot = replaced.table.metadata().current_snapshot().unwrap().clone();
        let summary = &snapshot.summary().additional_properties;
        assert_eq!(summary["added-records"], "7");
        assert_eq!(summary["deleted-records"], "10");
        assert_eq!(summary["deleted-data-files"], "1");
        assert_eq!(summary["total-records"], "27");
        assert_eq!(summary["total-data-files"], "2");
        assert_eq!(snapshot.parent_snapshot_id(), Some(first.snapshot_id));
        assert_eq!(snapshot.sequence_number(), 2);

        // The rewritten manifest records a1 as DELETED by this snapshot and b1 as EXISTING.
        let table = &replaced.table;
        let list = table.manifest_list_reader(&snapshot).load().await.unwrap();
        let mut statuses = Vec::new();
        for manifest in list.entries() {
            for entry in manifest.load_manifest(table.file_io()).await.unwrap().entries() {
                statuses.push((entry.file_path().to_string(), entry.status(), entry.snapshot_id()));
            }
        }
        assert!(statuses.contains(&(a1.file_path().to_string(), iceberg::spec::ManifestStatus::Deleted, Some(replaced.snapshot_id))));
        assert!(statuses.contains(&(b1.file_path().to_string(), iceberg::spec::ManifestStatus::Existing, Some(first.snapshot_id))));
        assert!(statuses.contains(&(a2.file_path().to_string(), iceberg::spec::ManifestStatus::Added, Some(replaced.snapshot_id))));

        // Time travel to the first snapshot still sees the removed file's rows.
        let old = table.scan().snapshot_id(first.snapshot_id).build().unwrap();
        let old_rows: usize = futures::TryStreamExt::try_collect::<Vec<_>>(old.to_arrow().await.unwrap()).await.unwrap().iter().map(|b| b.num_rows()).sum();
        assert_eq!(old_rows, 30);
    }

    #[tokio::test]
    async fn lost_swap_is_reapplied_when_the_other_writer_touched_other_partitions() {
        let f = fixture().await;
        let a1 = data_file(&f, 100, 0, 10).await;
        append(&f, vec![a1.clone()]).await;
        let base = f.lakehouse.load(&f.ident).await.unwrap();

        // Another writer commits to partition 101 after we took our base: our first swap fails.
        let other = data_file(&f, 101, 100, 5).await;
        append(&f, vec![other.clone()]).await;

        let a2 = data_file(&f, 100, 0, 4).await;
        let change = FileChange { remove: vec![a1.file_path().to_string()], add: vec![a2.clone()], guarded_partitions: BTreeSet::from([100]), ..Default::default() };
        let committed = commit(&f.lakehouse, base, change, CommitOptions::default()).await.unwrap();
        assert_eq!(committed.attempts, 2, "the first compare-and-swap must have lost");
        let mut expected = vec![(Some(100), a2.file_path().to_string()), (Some(101), other.file_path().to_string())];
        expected.sort();
        assert_eq!(live_paths(&f).await, expected);
        assert_eq!(row_count(&f).await, 9);
        assert_eq!(committed.table.metadata().snapshots().count(), 3);
    }

    #[tokio::test]
    async fn overlapping_concurrent_change_is_a_conflict_not_a_silent_overwrite() {
        let f = fixture().await;
        let a1 = data_file(&f, 100, 0, 10).await;
        append(&f, vec![a1.clone()]).await;

        // The other writer adds rows to the partition we are replacing.
        let base = f.lakehouse.load(&f.ident).await.unwrap();
        append(&f, vec![data_file(&f, 100, 500, 3).await]).await;
        let change = FileChange {
            remove: vec![a1.file_path().to_string()],
            add: vec![data_file(&f, 100, 0, 4).await],
            guarded_partitions: BTreeSet::from([100]),
            ..Default::default()
        };
        let error = commit(&f.lakehouse, base, change.clone(), CommitOptions::default()).await.unwrap_err();
        assert!(matches!(&error, Error::CommitConflict { detail, .. } if detail.contains("partition")), "{error}");

        // The other writer removed the very file we remove.
        let base = f.lakehouse.load(&f.ident).await.unwrap();
        replace_partitions(&f.lakehouse, &f.ident, BTreeSet::from([100]), vec![], BTreeMap::new(), None, CommitOptions::default()).await.unwrap();
        let error = commit(&f.lakehouse, base, FileChange { guarded_partitions: BTreeSet::new(), ..change }, CommitOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(&error, Error::CommitConflict { detail, .. } if detail.contains("removed by another writer")), "{error}");
        assert_eq!(row_count(&f).await, 0, "the conflicting commits changed nothing");
    }

    /// An engine commit: it carries an epoch, and a fence on what it was computed from.
    fn engine_change(files: Vec<DataFile>, fence: Fence, writer: &str, epoch: u64) -> FileChange {
        let properties = BTreeMap::from([
            (EPOCH_PROPERTY.to_string(), epoch.to_string()),
            (WRITER_PROPERTY.to_string(), writer.to_string()),
        ]);
        FileChange { add: files, properties, fence: Some(fence), ..Default::default() }
    }

    #[tokio::test]
    async fn a_commit_computed_from_a_superseded_engine_snapshot_is_refused_not_reapplied() {
        let f = fixture().await;
        // Two engines read the table while it is empty: both compute from "no engine snapshot".
        let base = f.lakehouse.load(&f.ident).await.unwrap();
        let fence = Fence::of(&base);
        assert_eq!(fence, Fence { base: None });
        let first = engine_change(vec![data_file(&f, 100, 0, 10).await], fence, "a1", 1);
        let winner = commit(&f.lakehouse, base.clone(), first, CommitOptions::default()).await.unwrap();
        let summary = &winner.table.metadata().current_snapshot().unwrap().summary().additional_properties;
        assert_eq!(summary[BASE_PROPERTY], "none");
        assert_eq!(Fence::of(&winner.table), Fence { base: Some(EngineCommit { writer: 0xa1, epoch: 1 }) });
        assert_eq!(Fence::after(&winner), Fence::of(&winner.table));

        // The second engine's commit touches another partition (a plain conflict check would let
        // it through) but was computed from the same empty table: refused, whatever base it is
        // handed, on the first attempt and after a lost swap alike.
        let second = engine_change(vec![data_file(&f, 101, 100, 10).await], fence, "b2", 1);
        for handed in [base, f.lakehouse.load(&f.ident).await.unwrap()] {
            let error = commit(&f.lakehouse, handed, second.clone(), CommitOptions::default()).await.unwrap_err();
            assert!(matches!(&error, Error::Fenced { detail, .. } if detail.contains("writer/epoch 0000000000a1/1 committed after an empty table")), "{error}");
            assert_eq!(error.fault(), crate::error::Fault::User);
            assert!(!error.retryable());
        }
        assert_eq!(live_paths(&f).await.len(), 1, "the refused commit added nothing");
        assert_eq!(row_count(&f).await, 10);
    }

    #[tokio::test]
    async fn a_commit_is_reapplied_over_another_writers_append_but_not_over_an_engines() {
        let f = fixture().await;
        let first = engine_change(vec![data_file(&f, 100, 0, 10).await], Fence { base: None }, "c3", 1);
        let first = commit(&f.lakehouse, f.lakehouse.load(&f.ident).await.unwrap(), first, CommitOptions::default()).await.unwrap();
        let fence = Fence::after(&first);
        let base = f.lakehouse.load(&f.ident).await.unwrap();

        // Maintenance (no epoch of its own) appends meanwhile: it carries the engine's progress
        // forward, the fence still holds, the change is re-applied.
        append(&f, vec![data_file(&f, 102, 500, 5).await]).await;
        let carried = f.lakehouse.load(&f.ident).await.unwrap();
        assert_eq!(carried.metadata().current_snapshot().unwrap().summary().additional_properties[WRITER_PROPERTY], "c3");
        assert_eq!(Fence::of(&carried), fence);
        let next = engine_change(vec![data_file(&f, 101, 100, 10).await], fence, "c3", 2);
        let next = commit(&f.lakehouse, base, next, CommitOptions::default()).await.unwrap();
        assert_eq!(next.attempts, 2, "the first swap lost to the append");
        assert_eq!(row_count(&f).await, 25);
        let summary = &next.table.metadata().current_snapshot().unwrap().summary().additional_properties;
        assert_eq!(summary[BASE_PROPERTY], "0000000000c3/1");
        assert_eq!(Fence::after(&next), Fence { base: Some(EngineCommit { writer: 0xc3, epoch: 2 }) });

        // Built on the same first commit, another run's change (a zombie waking up) is refused.
        let stale = engine_change(vec![data_file(&f, 103, 900, 3).await], fence, "d4", 1);
        let error = commit(&f.lakehouse, next.table.clone(), stale, CommitOptions::default()).await.unwrap_err();
        assert!(matches!(&error, Error::Fenced { .. }), "{error}");
        assert!(error.to_string().contains("another writer is committing to curated.movie_ratings"), "{error}");
        assert_eq!(row_count(&f).await, 25);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appenders_all_land_exactly_once() {
        let f = Arc::new(fixture().await);
        let mut writers = Vec::new();
        for writer in 0..4u128 {
            let f = f.clone();
            writers.push(tokio::spawn(async move {
                let mut attempts = 0;
                for round in 0..5u128 {
                    let file = data_file(&f, 100 + (writer as i32), writer * 1000 + round * 10, 10).await;
                    // Four writers committing back to back is the worst case: allow many attempts.
                    let options = CommitOptions { max_attempts: 64, ..CommitOptions::default() };
                    attempts += append_with(&f, vec![file], options).await.attempts;
                }
                attempts
            }));
        }
        let mut attempts = 0;
        for writer in writers {
            attempts += writer.await.unwrap();
        }
        assert_eq!(live_paths(&f).await.len(), 20);
        assert_eq!(row_count(&f).await, 200);
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        assert_eq!(table.metadata().snapshots().count(), 20);
        assert_eq!(table.metadata().current_snapshot().unwrap().summary().additional_properties["total-records"], "200");
        assert!(attempts >= 20);
    }

    #[tokio::test]
    async fn position_deletes_hide_rows_without_rewriting_and_need_their_data_file_live() {
        let f = fixture().await;
        let a = data_file(&f, 100, 0, 10).await;
        append(&f, vec![a.clone()]).await;
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        let path: Arc<str> = Arc::from(a.file_path());
        let deletes = crate::writer::write_position_deletes(&table, 100, &[(path.clone(), 2), (path.clone(), 7)], "t").await.unwrap();
        assert_eq!(deletes.content_type(), DataContentType::PositionDeletes);
        let change = FileChange { add: vec![deletes.clone()], referenced: vec![a.file_path().to_string()], ..Default::default() };
        let committed = commit(&f.lakehouse, table, change, CommitOptions::default()).await.unwrap();
        assert_eq!(committed.operation, Operation::Overwrite, "removing rows is an overwrite");
        let summary = &committed.table.metadata().current_snapshot().unwrap().summary().additional_properties;
        assert_eq!(summary["total-records"], "10", "records count data files only");
        assert_eq!(summary["total-data-files"], "1");
        assert_eq!(summary["total-delete-files"], "1");
        assert_eq!(summary["total-position-deletes"], "2");
        assert_eq!(row_count(&f).await, 8, "the reader applies the deletes");
        let read = crate::writer::read_position_deletes(&committed.table, &[deletes.file_path().to_string()]).await.unwrap();
        assert_eq!(read[a.file_path()], vec![2, 7]);

        // Deletes pointing at a file another writer replaced meanwhile are a conflict.
        let base = f.lakehouse.load(&f.ident).await.unwrap();
        let replacement = data_file(&f, 100, 50, 3).await;
        let other = FileChange { remove: vec![a.file_path().to_string()], add: vec![replacement], ..Default::default() };
        commit(&f.lakehouse, base.clone(), other, CommitOptions::default()).await.unwrap();
        let late = crate::writer::write_position_deletes(&base, 100, &[(path, 3)], "t").await.unwrap();
        let change = FileChange { add: vec![late], referenced: vec![a.file_path().to_string()], ..Default::default() };
        let error = commit(&f.lakehouse, base, change, CommitOptions::default()).await.unwrap_err();
        assert!(matches!(&error, Error::CommitConflict { detail, .. } if detail.contains("where this commit deletes rows")), "{error}");
        assert_eq!(row_count(&f).await, 3);
    }
}
