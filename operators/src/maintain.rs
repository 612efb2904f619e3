//! Table maintenance: compaction, snapshot expiry and orphan cleanup (`runtime maintain`).
//!
//! ```text
//!  compaction, per partition (identity of a date column)
//!    live files ──► small ones (< 3/4 of the target size); fewer than `min_small_files`: compact already
//!                   (a partition with position delete files: all its data files, and the deletes go)
//!               ──► read them ──► write files near the target ──► one Overwrite snapshot: remove the
//!                   small files, add the new ones
//!                   (files appended meanwhile: the commit is re-applied on the newer table;
//!                    one of the small files removed meanwhile: conflict → the new files are
//!                    deleted and the partition is skipped; nothing else changes)
//!  expiry
//!    snapshots ──► kept: the current one, those named by a ref, the newest `keep_snapshots`, those
//!                  younger than the retention ──► the rest removed from the metadata (compare-and-swap)
//!              ──► then deleted: their manifest lists, their manifests no kept snapshot lists, and
//!                  the data files of those manifests that no kept manifest mentions (a file a kept
//!                  snapshot removed stays until that snapshot expires too, as in Iceberg's Java
//!                  implementation: no kept metadata ever points at a missing file)
//!  orphan cleanup
//!    every file under the table's folder ──► not referenced by the metadata (metadata files and
//!    log, manifest lists, manifests, data files of any entry) and older than the safety age ──► deleted
//! ```
//!
//! Compaction keeps every row: the rows read are counted and compared with the rows written before
//! anything is committed. It makes the same Overwrite snapshot as the pipeline's own commits, so
//! readers, time travel and a running stream see an ordinary commit. A stream's writer remembers
//! which file holds each live row of the partitions it can still change; when compaction replaced
//! one of those files, the writer's next update there conflicts, the stream stops with a commit
//! conflict and its restart reloads the state from the table (nothing is lost or duplicated). The
//! stream's own writer compaction (`compact_after_files`) avoids that for partitions it writes.
//! Orphan cleanup never touches a file younger than the safety age, so files of a commit in
//! flight (written, not yet referenced) survive. It lists the table's folder, local or in the
//! bucket (see [`crate::storage`]), and deletes through the table's FileIO.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use iceberg::TableIdent;
use iceberg::table::Table;
use serde::Serialize;

use crate::catalog::Lakehouse;
use crate::commit::{CommitOptions, FileChange, commit, commit_metadata, live_files};
use crate::error::{Context, Error, Result};
use crate::model::format_date;
use crate::writer::write_partition;

/// Summary property of a compaction snapshot.
pub const OPERATION_PROPERTY: &str = "ratings-flow.maintenance";

#[derive(Debug, Clone)]
pub struct MaintainSettings {
    /// Compaction writes files near this size; files under 3/4 of it are small.
    pub target_file_size: u64,
    /// A partition is compacted once it has at least this many small files (at least 2).
    pub min_small_files: usize,
    /// Snapshots older than this may be expired ...
    pub snapshot_retention: Duration,
    /// ... but the newest this many are always kept (at least 1).
    pub keep_snapshots: usize,
    /// Unreferenced files younger than this are left alone.
    pub orphan_age: Duration,
    /// Report what would change, change nothing.
    pub dry_run: bool,
    pub commit: CommitOptions,
}

/// What compaction did (or would do) to one partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionCompaction {
    pub partition: String,
    pub small_files: usize,
    pub small_bytes: u64,
    pub rows: u64,
    /// Files written (dry run: the estimate).
    pub files_after: usize,
    pub outcome: CompactionOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompactionOutcome {
    Compacted { snapshot_id: i64 },
    /// Dry run.
    Planned,
    /// Another writer removed one of the small files during compaction; try again later.
    Skipped { reason: String },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ExpiryReport {
    pub kept_snapshots: usize,
    pub expired_snapshots: Vec<i64>,
    /// Files deleted (dry run: to delete).
    pub deleted_files: Vec<String>,
    /// Deletions that failed (the files are orphans now; orphan cleanup retries them).
    pub failed_deletes: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OrphanReport {
    /// Files deleted (dry run: to delete).
    pub deleted_files: Vec<String>,
    /// Unreferenced files younger than the safety age, left alone.
    pub too_young: usize,
    pub failed_deletes: usize,
}

fn small(size: u64, target: u64) -> bool {
    size < target / 4 * 3
}

/// Compacts every partition of `ident` that has enough small files.
pub async fn compact(lakehouse: &Lakehouse, ident: &TableIdent, settings: &MaintainSettings) -> Result<Vec<PartitionCompaction>> {
    let mut table = lakehouse.load(ident).await?;
    // Per partition: its data files (path, size, rows) and its position delete files (path, rows).
    type PartitionFiles = (Vec<(String, u64, u64)>, Vec<(String, u64)>);
    let mut by_partition: BTreeMap<i32, PartitionFiles> = BTreeMap::new();
    for file in live_files(&table).await? {
        let Some(day) = file.partition else { continue };
        let data = &file.data_file;
        let entry = by_partition.entry(day).or_default();
        if file.is_deletes() {
            entry.1.push((data.file_path().to_string(), data.record_count()));
        } else {
            entry.0.push((data.file_path().to_string(), data.file_size_in_bytes(), data.record_count()));
        }
    }
    let mut report = Vec::new();
    for (day, (data_files, delete_files)) in by_partition {
        // With position deletes, every data file of the partition is rewritten (the rows the
        // deletes mark are dropped) and the delete files go; otherwise only the small files.
        let files: Vec<(String, u64, u64)> = if delete_files.is_empty() {
            data_files.into_iter().filter(|f| small(f.1, settings.target_file_size)).collect()
        } else {
            data_files
        };
        if delete_files.is_empty() && files.len() < settings.min_small_files.max(2) {
            continue;
        }
        let deleted_rows: u64 = delete_files.iter().map(|f| f.1).sum();
        let small_bytes: u64 = files.iter().map(|f| f.1).sum();
        let rows: u64 = files.iter().map(|f| f.2).sum::<u64>().saturating_sub(deleted_rows);
        let mut entry = PartitionCompaction {
            partition: format_date(day),
            small_files: files.len(),
            small_bytes,
            rows,
            files_after: small_bytes.div_ceil(settings.target_file_size).max(1) as usize,
            outcome: CompactionOutcome::Planned,
        };
        if !settings.dry_run {
            let paths: Vec<String> = files.into_iter().map(|f| f.0).collect();
            let deletes: Vec<String> = delete_files.into_iter().map(|f| f.0).collect();
            match compact_partition(lakehouse, &table, day, paths, deletes, rows, settings).await? {
                Some((committed_table, snapshot_id, written)) => {
                    table = committed_table;
                    entry.files_after = written;
                    entry.outcome = CompactionOutcome::Compacted { snapshot_id };
                }
                None => {
                    entry.outcome =
                        CompactionOutcome::Skipped { reason: "another writer replaced some of its files meanwhile; run again later".into() };
                    table = lakehouse.load(ident).await?;
                }
            }
        }
        tracing::info!(table = %ident, partition = %entry.partition, small_files = entry.small_files, rows = entry.rows, outcome = ?entry.outcome, "compaction");
        report.push(entry);
    }
    Ok(report)
}

/// Rewrites `paths` (data files of partition `day`, `rows` live rows in all once the position
/// delete files `deletes` are applied) into files near the target size, removing `deletes` too.
/// `None`: a conflicting commit came first; nothing changed.
#[allow(clippy::too_many_arguments)]
async fn compact_partition(
    lakehouse: &Lakehouse,
    table: &Table,
    day: i32,
    paths: Vec<String>,
    deletes: Vec<String>,
    rows: u64,
    settings: &MaintainSettings,
) -> Result<Option<(Table, i64, usize)>> {
    let wanted: HashSet<&str> = paths.iter().map(String::as_str).collect();
    let partition_column = table.metadata().default_partition_spec().fields()[0].name.clone();
    let filter = iceberg::expr::Reference::new(partition_column).equal_to(iceberg::spec::Datum::date(day));
    let tasks: Vec<_> = crate::reader::plan(table, Some(filter), None)
        .await?
        .into_iter()
        .filter(|task| wanted.contains(task.data_file_path()))
        .collect();
    if tasks.len() != paths.len() {
        return Err(Error::Internal(format!(
            "compacting {} of {}: planned {} of its {} small files",
            format_date(day),
            table.identifier(),
            tasks.len(),
            paths.len()
        )));
    }
    let mut batches = Vec::new();
    crate::reader::read_tasks(table, tasks, |batch| {
        batches.push(batch);
        Ok(())
    })
    .await?;
    let read: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let written = write_partition(table, day, batches, settings.target_file_size as usize, "compact").await?;
    let written_paths = || -> Vec<String> { written.iter().map(|f| f.file_path().to_string()).collect() };
    let written_rows: u64 = written.iter().map(|f| f.record_count()).sum();
    if read != rows || written_rows != rows {
        delete_files(table, written_paths()).await;
        return Err(Error::Internal(format!(
            "compacting {} of {}: the manifests list {rows} rows, {read} were read and {written_rows} written; nothing committed",
            format_date(day),
            table.identifier()
        )));
    }
    let files_written = written.len();
    let change = FileChange {
        remove: paths.into_iter().chain(deletes).collect(),
        add: written.clone(),
        // Files appended to the partition meanwhile do not change what this rewrites; only a
        // removed file that is no longer live is a conflict (checked on every retry).
        guarded_partitions: BTreeSet::new(),
        properties: BTreeMap::from([(OPERATION_PROPERTY.to_string(), "compaction".to_string())]),
        ..Default::default()
    };
    match commit(lakehouse, table.clone(), change, settings.commit).await {
        Ok(committed) => Ok(Some((committed.table, committed.snapshot_id, files_written))),
        Err(Error::CommitConflict { detail, .. }) => {
            tracing::warn!(table = %table.identifier(), partition = %format_date(day), %detail, "compaction skipped");
            delete_files(table, written_paths()).await;
            Ok(None)
        }
        Err(error) => {
            delete_files(table, written_paths()).await;
            Err(error)
        }
    }
}

/// Deletes `paths`, best effort; returns how many failed.
async fn delete_files(table: &Table, paths: Vec<String>) -> usize {
    let mut failed = 0;
    for path in paths {
        if let Err(error) = table.file_io().delete(&path).await {
            tracing::warn!(%path, %error, "could not delete a file");
            failed += 1;
        }
    }
    failed
}

/// What a set of snapshots references.
#[derive(Default)]
struct References {
    manifest_lists: HashSet<String>,
    /// Manifest path → the data files of its entries (added, existing and deleted).
    manifests: BTreeMap<String, Vec<String>>,
}

impl References {
    fn data_files(&self) -> impl Iterator<Item = &String> {
        self.manifests.values().flatten()
    }
}

async fn references(table: &Table, snapshot_ids: &[i64]) -> Result<References> {
    let metadata = table.metadata();
    let mut refs = References::default();
    let context = || format!("reading the manifests of {}", table.identifier());
    for id in snapshot_ids {
        let Some(snapshot) = metadata.snapshot_by_id(*id) else { continue };
        refs.manifest_lists.insert(snapshot.manifest_list().to_string());
        let list = table.manifest_list_reader(snapshot).load().await.context(context)?;
        for manifest_file in list.entries() {
            if refs.manifests.contains_key(&manifest_file.manifest_path) {
                continue;
            }
            let manifest = manifest_file.load_manifest(table.file_io()).await.context(context)?;
            let files = manifest.entries().iter().map(|entry| entry.file_path().to_string()).collect();
            refs.manifests.insert(manifest_file.manifest_path.clone(), files);
        }
    }
    Ok(refs)
}

/// Expires the snapshots `settings` does not keep and deletes the files only they needed.
pub async fn expire(lakehouse: &Lakehouse, ident: &TableIdent, settings: &MaintainSettings, now_ms: i64) -> Result<ExpiryReport> {
    let table = lakehouse.load(ident).await?;
    let metadata = table.metadata();
    let mut snapshots: Vec<_> = metadata.snapshots().map(|s| (s.timestamp_ms(), s.snapshot_id())).collect();
    snapshots.sort_unstable_by(|a, b| b.cmp(a));
    let cutoff = now_ms - settings.snapshot_retention.as_millis() as i64;
    let named: HashSet<i64> = referenced_snapshots(metadata)?.into_iter().chain(metadata.current_snapshot_id()).collect();
    let (kept, expired): (Vec<_>, Vec<_>) = snapshots
        .iter()
        .enumerate()
        .partition(|(rank, (timestamp, id))| *rank < settings.keep_snapshots.max(1) || *timestamp >= cutoff || named.contains(id));
    let kept: Vec<i64> = kept.into_iter().map(|(_, (_, id))| *id).collect();
    let expired: Vec<i64> = expired.into_iter().map(|(_, (_, id))| *id).collect();
    let mut report = ExpiryReport { kept_snapshots: kept.len(), expired_snapshots: expired.clone(), ..Default::default() };
    if expired.is_empty() {
        return Ok(report);
    }
    let keep = references(&table, &kept).await?;
    let gone = references(&table, &expired).await?;
    // A file goes once no kept snapshot's metadata mentions it: manifest lists of expired
    // snapshots, their manifests no kept list shares, and the data files of those manifests that
    // no kept manifest lists (live or as a removal, so no kept metadata points at a missing file).
    let kept_data: HashSet<&String> = keep.data_files().collect();
    let unreachable: Vec<(&String, &Vec<String>)> =
        gone.manifests.iter().filter(|(path, _)| !keep.manifests.contains_key(*path)).collect();
    let mut deletable: BTreeSet<String> = gone.manifest_lists.difference(&keep.manifest_lists).cloned().collect();
    deletable.extend(unreachable.iter().map(|(path, _)| (*path).clone()));
    deletable.extend(unreachable.iter().flat_map(|(_, files)| files.iter()).filter(|f| !kept_data.contains(f)).cloned());
    let deletable: Vec<String> = deletable.into_iter().collect();
    report.deleted_files = deletable.clone();
    if settings.dry_run {
        return Ok(report);
    }
    let edit = |table: &Table| {
        let metadata = table.metadata();
        let ids: Vec<i64> = expired.iter().copied().filter(|id| metadata.snapshot_by_id(*id).is_some()).collect();
        if ids.is_empty() {
            return Ok(None);
        }
        if ids.iter().any(|id| metadata.current_snapshot_id() == Some(*id)) {
            return Err(Error::CommitConflict {
                table: table.identifier().to_string(),
                detail: "a snapshot chosen for expiry became current again; run again".into(),
            });
        }
        let location = table.metadata_location_result().context(|| "table has no metadata location".into())?.to_string();
        let built = metadata
            .clone()
            .into_builder(Some(location))
            .remove_snapshots(&ids)
            .build()
            .context(|| format!("expiring snapshots of {}", table.identifier()))?;
        Ok(Some(built))
    };
    commit_metadata(lakehouse, ident, settings.commit, edit).await?;
    report.failed_deletes = delete_files(&table, deletable).await;
    tracing::info!(table = %ident, expired = report.expired_snapshots.len(), kept = report.kept_snapshots, deleted_files = report.deleted_files.len(), "snapshot expiry");
    Ok(report)
}

/// Snapshot ids named by any branch or tag. The metadata's refs are not public in iceberg-rust, so
/// they are read from its serialized form (the table spec's `refs` object).
fn referenced_snapshots(metadata: &iceberg::spec::TableMetadata) -> Result<Vec<i64>> {
    let json = serde_json::to_value(metadata).map_err(|e| Error::Internal(format!("serializing table metadata: {e}")))?;
    let refs = json.get("refs").and_then(|refs| refs.as_object()).cloned().unwrap_or_default();
    Ok(refs.values().filter_map(|r| r.get("snapshot-id").and_then(|id| id.as_i64())).collect())
}

/// A file location in one spelling: metadata may name a local file `file:///a/b` or `/a/b`.
fn same_form(location: &str) -> String {
    if location.starts_with('/') { format!("file://{location}") } else { location.to_string() }
}

/// Deletes files under the table's folder that no metadata references and that are older than
/// the safety age.
pub async fn remove_orphans(lakehouse: &Lakehouse, ident: &TableIdent, settings: &MaintainSettings) -> Result<OrphanReport> {
    let table = lakehouse.load(ident).await?;
    let metadata = table.metadata();
    let ids: Vec<i64> = metadata.snapshots().map(|s| s.snapshot_id()).collect();
    let refs = references(&table, &ids).await?;
    let metadata_files = table
        .metadata_location()
        .map(str::to_string)
        .into_iter()
        .chain(metadata.metadata_log().iter().map(|log| log.metadata_file.clone()));
    let manifests = refs.manifests.keys().cloned().collect::<Vec<_>>();
    let data_files = refs.data_files().cloned().collect::<Vec<_>>();
    let referenced: HashSet<String> = metadata_files
        .chain(refs.manifest_lists)
        .chain(manifests)
        .chain(data_files)
        .map(|location| same_form(&location))
        .collect();
    let safe_before = std::time::SystemTime::now() - settings.orphan_age;
    let mut report = OrphanReport::default();
    let mut orphans = Vec::new();
    for (path, modified) in lakehouse.warehouse().list_files(metadata.location()).await? {
        if referenced.contains(&same_form(&path)) {
            continue;
        }
        if modified.is_some_and(|m| m < safe_before) {
            orphans.push(path);
        } else {
            report.too_young += 1;
        }
    }
    orphans.sort();
    if !settings.dry_run {
        for path in &orphans {
            if let Err(error) = table.file_io().delete(same_form(path)).await {
                tracing::warn!(%path, %error, "could not delete an orphan file");
                report.failed_deletes += 1;
            }
        }
    }
    report.deleted_files = orphans;
    tracing::info!(table = %ident, deleted = report.deleted_files.len(), too_young = report.too_young, dry_run = settings.dry_run, "orphan cleanup");
    Ok(report)
}

/// Maintenance while a stream runs (graph: `maintenance.schedule`): every `every`, compact the
/// append-only tables (raw, rejected: the stream only appends there, so compaction re-applies on
/// top of its commits), expire snapshots of all three and clean orphans. The curated table is
/// compacted by the stream's own writer (`compact_after_files`). Errors are logged, never fatal:
/// ingestion does not stop for maintenance.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub every: Duration,
    pub settings: MaintainSettings,
    pub append_only: Vec<TableIdent>,
    pub all: Vec<TableIdent>,
}

impl Schedule {
    /// Runs until the returned handle is aborted.
    pub fn spawn(self, catalog: crate::catalog::CatalogSettings, runtime: &tokio::runtime::Handle) -> tokio::task::JoinHandle<()> {
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(self.every).await;
                if let Err(error) = self.run_once(&catalog).await {
                    tracing::warn!(%error, "scheduled maintenance failed; ingestion goes on, the next round retries");
                }
            }
        })
    }

    async fn run_once(&self, catalog: &crate::catalog::CatalogSettings) -> Result<()> {
        let lakehouse = Lakehouse::open(catalog, false).await?;
        for ident in &self.append_only {
            compact(&lakehouse, ident, &self.settings).await?;
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        for ident in &self.all {
            expire(&lakehouse, ident, &self.settings, now_ms).await?;
            remove_orphans(&lakehouse, ident, &self.settings).await?;
        }
        Ok(())
    }
}

/// Defaults of the graph's `[maintenance]` section.
impl Default for MaintainSettings {
    fn default() -> Self {
        MaintainSettings {
            target_file_size: 128 << 20,
            min_small_files: 2,
            snapshot_retention: Duration::from_secs(7 * 86_400),
            keep_snapshots: 10,
            orphan_age: Duration::from_secs(86_400),
            dry_run: false,
            commit: CommitOptions::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    /// `file:///a/b` or `/a/b` as a local path.
    fn local_path(location: &str) -> Option<&str> {
        Some(location.strip_prefix("file://").unwrap_or(location))
    }

    use std::sync::Arc;

    use super::*;
    use crate::test_fixture::{Fixture, data_file, fixture};

    async fn append(f: &Fixture, files: Vec<iceberg::spec::DataFile>) -> Result<()> {
        let table = f.lakehouse.load(&f.ident).await?;
        commit(&f.lakehouse, table, FileChange { add: files, ..Default::default() }, CommitOptions::default()).await.map(drop)
    }

    /// Every key in the table, sorted, duplicates kept.
    async fn keys(f: &Fixture) -> Vec<u128> {
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        let mut rows = Vec::new();
        for batch in crate::reader::scan(&table, None, None).await.unwrap() {
            crate::sample::curated_from_batch(&batch, &mut rows).unwrap();
        }
        let mut keys: Vec<u128> = rows.into_iter().map(|(key, _)| key).collect();
        keys.sort_unstable();
        keys
    }

    async fn files_of(f: &Fixture, day: i32) -> Vec<String> {
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        let mut paths: Vec<String> = live_files(&table)
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.partition == Some(day))
            .map(|l| l.data_file.file_path().to_string())
            .collect();
        paths.sort();
        paths
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_merges_small_files_keeps_every_row_and_skips_compact_partitions() {
        let f = fixture().await;
        for round in 0..5u128 {
            append(&f, vec![data_file(&f, 10, round * 100, 40).await]).await.unwrap();
        }
        append(&f, vec![data_file(&f, 11, 10_000, 40).await]).await.unwrap();
        let (before, lone) = (keys(&f).await, files_of(&f, 11).await);
        let settings = MaintainSettings { dry_run: true, ..MaintainSettings::default() };

        let planned = compact(&f.lakehouse, &f.ident, &settings).await.unwrap();
        assert_eq!(planned.len(), 1, "only the partition with several small files");
        assert_eq!((planned[0].small_files, planned[0].rows, &planned[0].outcome), (5, 200, &CompactionOutcome::Planned));
        assert_eq!(files_of(&f, 10).await.len(), 5, "a dry run changes nothing");

        let done = compact(&f.lakehouse, &f.ident, &MaintainSettings::default()).await.unwrap();
        assert!(matches!(done[0].outcome, CompactionOutcome::Compacted { .. }), "{done:?}");
        assert_eq!(files_of(&f, 10).await.len(), 1);
        assert_eq!(files_of(&f, 11).await, lone, "a compact partition is not touched");
        assert_eq!(keys(&f).await, before);
        assert!(compact(&f.lakehouse, &f.ident, &MaintainSettings::default()).await.unwrap().is_empty(), "nothing left to do");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_racing_a_writer_loses_and_duplicates_nothing() {
        let f = Arc::new(fixture().await);
        let mut expected = Vec::new();
        let mut outcomes = Vec::new();
        for round in 0..4u128 {
            let base = round * 100_000;
            for file in 0..4 {
                append(&f, vec![data_file(&f, 10, base + file * 100, 30).await]).await.unwrap();
                expected.extend(base + file * 100..base + file * 100 + 30);
            }
            let writer = {
                let f = f.clone();
                tokio::spawn(async move {
                    let mut written = Vec::new();
                    for file in 0..6u128 {
                        let first = base + 50_000 + file * 100;
                        append(&f, vec![data_file(&f, 10, first, 20).await]).await.unwrap();
                        written.extend(first..first + 20);
                        tokio::time::sleep(Duration::from_millis(5 * round as u64)).await;
                    }
                    written
                })
            };
            let compacted = compact(&f.lakehouse, &f.ident, &MaintainSettings::default()).await.unwrap();
            outcomes.extend(compacted.into_iter().map(|p| p.outcome));
            expected.extend(writer.await.unwrap());
            expected.sort_unstable();
            assert_eq!(keys(&f).await, expected, "round {round}: every row once");
        }
        // Appends alone never make compaction give up: it re-applies on the newer table.
        assert!(outcomes.iter().all(|o| matches!(o, CompactionOutcome::Compacted { .. })), "{outcomes:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_replacing_a_small_file_first_makes_compaction_skip_and_clean_up() {
        let f = fixture().await;
        let mut paths = Vec::new();
        for round in 0..3u128 {
            let file = data_file(&f, 10, round * 100, 10).await;
            paths.push(file.file_path().to_string());
            append(&f, vec![file]).await.unwrap();
        }
        let stale = f.lakehouse.load(&f.ident).await.unwrap();
        // Another writer (the stream updating a row) replaces the first file.
        let change = FileChange { remove: vec![paths[0].clone()], add: vec![data_file(&f, 10, 0, 10).await], ..Default::default() };
        commit(&f.lakehouse, stale.clone(), change, CommitOptions::default()).await.unwrap();
        let before = keys(&f).await;
        let parquet_files = || {
            walkdir::WalkDir::new(local_path(stale.metadata().location()).unwrap())
                .into_iter()
                .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "parquet"))
                .count()
        };
        let on_disk = parquet_files();
        let outcome = compact_partition(&f.lakehouse, &stale, 10, paths, Vec::new(), 30, &MaintainSettings::default()).await.unwrap();
        assert!(outcome.is_none(), "the compaction must give way");
        assert_eq!(keys(&f).await, before, "nothing lost or duplicated");
        assert_eq!(parquet_files(), on_disk, "the compaction's own files are deleted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expiry_keeps_what_kept_snapshots_need_and_deletes_the_rest() {
        let f = fixture().await;
        let first = data_file(&f, 10, 0, 10).await;
        let first_path = first.file_path().to_string();
        append(&f, vec![first]).await.unwrap();
        append(&f, vec![data_file(&f, 10, 100, 10).await]).await.unwrap();
        // Replace the first file: it stays needed only by the two older snapshots.
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        let change = FileChange { remove: vec![first_path.clone()], add: vec![data_file(&f, 10, 200, 10).await], ..Default::default() };
        commit(&f.lakehouse, table, change, CommitOptions::default()).await.unwrap();
        let local = |path: &str| std::path::PathBuf::from(local_path(path).unwrap());
        assert!(local(&first_path).exists());

        let keep_two = MaintainSettings { snapshot_retention: Duration::ZERO, keep_snapshots: 2, ..MaintainSettings::default() };
        let report = expire(&f.lakehouse, &f.ident, &keep_two, chrono::Utc::now().timestamp_millis()).await.unwrap();
        assert_eq!((report.expired_snapshots.len(), report.kept_snapshots), (1, 2));
        assert!(local(&first_path).exists(), "the second snapshot still reads the first file");
        assert!(report.deleted_files.iter().all(|p| !p.ends_with(".parquet")), "{:?}", report.deleted_files);

        // The current snapshot's manifest still records the first file's removal: it stays.
        let keep_one = MaintainSettings { keep_snapshots: 1, ..keep_two.clone() };
        let report = expire(&f.lakehouse, &f.ident, &keep_one, chrono::Utc::now().timestamp_millis()).await.unwrap();
        assert_eq!(report.expired_snapshots.len(), 1);
        assert!(!report.deleted_files.contains(&first_path), "{:?}", report.deleted_files);
        assert!(report.deleted_files.iter().any(|p| p.contains("/snap-")), "the expired manifest list goes: {:?}", report.deleted_files);
        assert!(local(&first_path).exists());
        for path in report.deleted_files.iter() {
            assert!(!local(path).exists(), "{path} was to be deleted");
        }
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        assert_eq!(table.metadata().snapshots().count(), 1);
        let expected: Vec<u128> = (100..110).chain(200..210).collect();
        assert_eq!(keys(&f).await, expected, "the kept snapshot reads every file it needs");

        // Once a snapshot that no longer mentions it is the only one left, the file goes.
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        let live: Vec<String> = live_files(&table).await.unwrap().into_iter().map(|l| l.data_file.file_path().to_string()).collect();
        let change = FileChange { remove: live, add: vec![data_file(&f, 10, 300, 10).await], ..Default::default() };
        commit(&f.lakehouse, table, change, CommitOptions::default()).await.unwrap();
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        let live: Vec<String> = live_files(&table).await.unwrap().into_iter().map(|l| l.data_file.file_path().to_string()).collect();
        let change = FileChange { remove: live, add: vec![data_file(&f, 10, 400, 10).await], ..Default::default() };
        commit(&f.lakehouse, table, change, CommitOptions::default()).await.unwrap();
        let report = expire(&f.lakehouse, &f.ident, &keep_one, chrono::Utc::now().timestamp_millis()).await.unwrap();
        assert!(report.deleted_files.contains(&first_path), "{:?}", report.deleted_files);
        assert!(!local(&first_path).exists());
        assert_eq!(keys(&f).await, (400..410).collect::<Vec<u128>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_engines_offsets_and_fence_survive_maintenance_and_expiry_of_its_snapshot() {
        let f = fixture().await;
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        let properties = BTreeMap::from([
            (crate::commit::EPOCH_PROPERTY.to_string(), "3".to_string()),
            (crate::source::kafka::OFFSETS_PROPERTY.to_string(), r#"{"t":{"0":10}}"#.to_string()),
        ]);
        let change = FileChange { add: vec![data_file(&f, 10, 0, 10).await], properties, ..Default::default() };
        let engine = commit(&f.lakehouse, table, change, CommitOptions::default()).await.unwrap();
        let fence = crate::commit::Fence::after(&engine);
        // Three snapshots of other writers (maintenance, an import) after the engine's: each
        // carries its progress forward, so expiring the engine's own snapshot loses nothing.
        for round in 1..=3u128 {
            append(&f, vec![data_file(&f, 10, round * 100, 10).await]).await.unwrap();
        }
        let keep_one = MaintainSettings { snapshot_retention: Duration::ZERO, keep_snapshots: 1, ..MaintainSettings::default() };
        let report = expire(&f.lakehouse, &f.ident, &keep_one, chrono::Utc::now().timestamp_millis()).await.unwrap();
        assert!(report.expired_snapshots.contains(&engine.snapshot_id), "{:?}", report.expired_snapshots);
        assert_eq!(report.expired_snapshots.len(), 3);
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        assert_eq!(crate::commit::Fence::of(&table), fence);
        assert_eq!(crate::source::kafka::committed_offsets(&table, "t").unwrap(), crate::source::kafka::Offsets::from([(0, 10)]));
    }
}
