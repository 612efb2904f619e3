//! `runtime import`: existing Parquet files (an export, a previous system's history) into a graph's
//! raw table, as if each row had been ingested on its file's ingestion day. A replay then derives
//! curated and rejected from them like from any raw partition.
//!
//! - Every file is checked before anything is written: it must hold each event column (the reader
//!   schema's fields) with the raw table's type (list item names and field ids may differ) and an
//!   `ingestion_date` (date) or `ingestion_ts_ms` (epoch milliseconds) column; all problems of all
//!   files are reported together, one line each, and nothing is imported. Other columns are
//!   ignored. A row without an ingestion time belongs to no partition and is refused.
//! - Coordinates: `source_topic` = `import`, `source_partition` = -1 (no Kafka partition),
//!   `source_offset` = the row's place in the table's imports (files in name order, rows in file
//!   order, continuing after the previous import), `ingestion_ts_ms` = the file's value, or
//!   midnight UTC of its `ingestion_date`. Among records ingested the same day the later imported
//!   one is therefore the later ingested (ties of the order column go to it).
//! - One append snapshot per call. The snapshot records the SHA-256 of each file's bytes and the
//!   next offset; a file whose hash any snapshot of the table recorded is skipped, so importing the
//!   same file twice adds nothing (expiring the snapshot that recorded it forgets that).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray, new_null_array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Date32Type, Int64Type, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::pipeline::types::{conform, same_layout};
use crate::catalog::Lakehouse;
use crate::commit::{CommitOptions, FileChange, commit};
use crate::error::{Context, Error, Result};
use crate::model::{day_of_millis, format_date};
use crate::pipeline::Pipeline;
use crate::schema::arrow_schema;
use crate::writer::write_partition;

/// Snapshot summary key: the SHA-256 of every file an import added.
pub const IMPORTED_FILES_PROPERTY: &str = "ratings-flow.imported-files";
/// Snapshot summary key: the `source_offset` the next imported row takes.
pub const NEXT_IMPORT_OFFSET_PROPERTY: &str = "ratings-flow.next-import-offset";
/// The `source_topic` of imported rows.
pub const IMPORT_TOPIC: &str = "import";
/// The `source_partition` of imported rows.
pub const IMPORT_PARTITION: i32 = -1;

const MILLIS_PER_DAY: i64 = 86_400_000;

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub table: String,
    /// Files whose rows were added.
    pub imported: Vec<PathBuf>,
    /// Files skipped because the table already holds them (same content hash).
    pub already_imported: Vec<PathBuf>,
    /// Rows added per partition (`YYYY-MM-DD`).
    pub rows_per_partition: BTreeMap<String, u64>,
    pub snapshot_id: Option<i64>,
}

/// Expands folders (recursively, `*.parquet`), keeps files as given; sorted, without repeats.
pub(crate) fn parquet_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = BTreeSet::new();
    for path in paths {
        if path.is_dir() {
            for entry in walkdir::WalkDir::new(path) {
                let entry = entry.map_err(|e| Error::User(format!("reading folder {}: {e}", path.display())))?;
                if entry.file_type().is_file() && entry.path().extension().is_some_and(|e| e == "parquet") {
                    files.insert(entry.path().to_path_buf());
                }
            }
        } else if path.is_file() {
            files.insert(path.clone());
        } else {
            return Err(Error::User(format!("{}: no such file or folder", path.display())));
        }
    }
    if files.is_empty() {
        return Err(Error::User("no Parquet files to import (folders are searched for *.parquet)".into()));
    }
    Ok(files.into_iter().collect())
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).context(|| format!("reading {}", path.display()))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Hashes recorded by any snapshot the table still knows, and the next import offset.
fn recorded(table: &iceberg::table::Table) -> (BTreeSet<String>, i64) {
    let summaries = || table.metadata().snapshots().map(|s| &s.summary().additional_properties);
    let hashes = summaries()
        .filter_map(|p| p.get(IMPORTED_FILES_PROPERTY))
        .filter_map(|json| serde_json::from_str::<Vec<String>>(json).ok())
        .flatten()
        .collect();
    let next = summaries().filter_map(|p| p.get(NEXT_IMPORT_OFFSET_PROPERTY)?.parse::<i64>().ok()).max().unwrap_or(0);
    (hashes, next)
}

/// The columns an import takes from a file: the event columns, then its ingestion time.
struct Wanted {
    events: SchemaRef,
}

impl Wanted {
    /// The problems of one file's columns, one line each.
    fn problems(&self, path: &Path, file: &SchemaRef) -> Vec<String> {
        let mut problems: Vec<String> = self
            .events
            .fields()
            .iter()
            .filter_map(|expected| match file.field_with_name(expected.name()) {
                Err(_) => Some(format!("{}: column {} is missing (the table has it as {})", path.display(), expected.name(), expected.data_type())),
                Ok(found) if !same_layout(found.data_type(), expected.data_type()) => Some(format!(
                    "{}: column {} is {} in the file, the table has {}",
                    path.display(),
                    expected.name(),
                    found.data_type(),
                    expected.data_type()
                )),
                Ok(_) => None,
            })
            .collect();
        let time = file.field_with_name("ingestion_ts_ms").map(|f| f.data_type() == &DataType::Int64).ok();
        let date = file.field_with_name("ingestion_date").map(|f| f.data_type() == &DataType::Date32).ok();
        if time != Some(true) && date != Some(true) {
            problems.push(format!("{}: no ingestion time: give an ingestion_date (date) or ingestion_ts_ms (long, epoch milliseconds) column", path.display()));
        }
        problems
    }
}

pub(crate) fn reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
    let file = std::fs::File::open(path).context(|| format!("opening {}", path.display()))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::User(format!("{}: not a readable Parquet file: {e}", path.display())))
}

/// The ingestion time (epoch ms) of each row of a file's batch; `None` where it has none.
pub(crate) fn ingestion_times(batch: &RecordBatch) -> Result<Vec<Option<i64>>> {
    if let Some(times) = batch.column_by_name("ingestion_ts_ms").filter(|c| c.data_type() == &DataType::Int64) {
        return Ok(times.as_primitive::<Int64Type>().iter().collect());
    }
    let dates = batch
        .column_by_name("ingestion_date")
        .and_then(|c| c.as_primitive_opt::<Date32Type>())
        .ok_or_else(|| Error::User("no ingestion time: give an ingestion_date (date) or ingestion_ts_ms (long, epoch milliseconds) column".into()))?;
    Ok(dates.iter().map(|d| d.map(|d| i64::from(d) * MILLIS_PER_DAY)).collect())
}

/// Imports `paths` (files or folders) into `raw`, the raw table of `pipeline`.
pub async fn import(
    lakehouse: &Lakehouse,
    raw: &iceberg::TableIdent,
    pipeline: &Pipeline,
    paths: &[PathBuf],
    target_file_size: usize,
    options: CommitOptions,
) -> Result<ImportSummary> {
    let table = lakehouse.ensure_table(raw, &pipeline.raw_layout()?).await?;
    let raw_schema = arrow_schema(table.metadata().current_schema())?;
    let events: Vec<_> = pipeline.event_columns.iter().map(|f| raw_schema.field_with_name(&f.name).cloned()).collect::<std::result::Result<_, _>>().context(|| "the raw table's event columns".into())?;
    let wanted = Wanted { events: Arc::new(arrow::datatypes::Schema::new(events)) };
    let files = parquet_files(paths)?;
    let (hashes, mut next_offset) = recorded(&table);
    let mut summary = ImportSummary {
        table: raw.to_string(),
        imported: Vec::new(),
        already_imported: Vec::new(),
        rows_per_partition: BTreeMap::new(),
        snapshot_id: None,
    };
    let mut to_import = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        let hash = sha256_of(&path)?;
        if hashes.contains(&hash) || to_import.iter().any(|(_, h)| h == &hash) {
            summary.already_imported.push(path);
            continue;
        }
        problems.extend(wanted.problems(&path, reader(&path)?.schema()));
        to_import.push((path, hash));
    }
    if !problems.is_empty() {
        return Err(Error::User(format!("nothing was imported; the files do not match table {raw}:\n  {}", problems.join("\n  "))));
    }
    if to_import.is_empty() {
        return Ok(summary);
    }
    let mut days: BTreeMap<i32, Vec<RecordBatch>> = BTreeMap::new();
    for (path, _) in &to_import {
        let batches = reader(path)?.build().map_err(|e| Error::User(format!("{}: {e}", path.display())))?;
        for batch in batches {
            let batch = batch.map_err(|e| Error::User(format!("{}: reading rows: {e}", path.display())))?;
            let times = ingestion_times(&batch)?;
            let missing = times.iter().filter(|t| t.is_none()).count();
            if missing > 0 {
                return Err(Error::User(format!("nothing was imported; {}: {missing} rows have no ingestion time and belong to no partition", path.display())));
            }
            let rows = batch.num_rows();
            let times: Vec<i64> = times.into_iter().flatten().collect();
            let mut columns: Vec<ArrayRef> = Vec::with_capacity(raw_schema.fields().len());
            for field in raw_schema.fields() {
                let column: ArrayRef = match field.name().as_str() {
                    "source_topic" => Arc::new(StringArray::from(vec![IMPORT_TOPIC; rows])),
                    "source_partition" => Arc::new(Int32Array::from(vec![IMPORT_PARTITION; rows])),
                    "source_offset" => Arc::new(Int64Array::from_iter_values(next_offset..next_offset + rows as i64)),
                    "ingestion_ts_ms" => Arc::new(Int64Array::from(times.clone())),
                    "ingestion_date" => Arc::new(Date32Array::from_iter_values(times.iter().map(|ms| day_of_millis(*ms)))),
                    name => match batch.column_by_name(name).filter(|_| wanted.events.field_with_name(name).is_ok()) {
                        Some(column) => conform(column, field.data_type())?,
                        None => new_null_array(field.data_type(), rows),
                    },
                };
                columns.push(column);
            }
            next_offset += rows as i64;
            let batch = RecordBatch::try_new(raw_schema.clone(), columns).context(|| format!("{}: rows as the raw table's", path.display()))?;
            let dates = Date32Array::from_iter_values(times.iter().map(|ms| day_of_millis(*ms)));
            for day in dates.values().iter().copied().collect::<BTreeSet<i32>>() {
                let rows = arrow::compute::kernels::cmp::eq(&dates, &Date32Array::new_scalar(day)).context(|| "splitting rows by day".into())?;
                let part = filter_record_batch(&batch, &rows).context(|| "splitting rows by day".into())?;
                *summary.rows_per_partition.entry(format_date(day)).or_default() += part.num_rows() as u64;
                days.entry(day).or_default().push(part);
            }
        }
    }
    let mut add = Vec::new();
    for (day, batches) in days {
        add.extend(write_partition(&table, day, batches, target_file_size, "import").await?);
    }
    let file_hashes: Vec<&String> = to_import.iter().map(|(_, hash)| hash).collect();
    let properties = BTreeMap::from([
        (IMPORTED_FILES_PROPERTY.to_string(), serde_json::to_string(&file_hashes).map_err(|e| Error::Internal(format!("recording the imported files: {e}")))?),
        (NEXT_IMPORT_OFFSET_PROPERTY.to_string(), next_offset.to_string()),
    ]);
    let committed = commit(lakehouse, table, FileChange { add, properties, ..Default::default() }, options).await?;
    summary.snapshot_id = Some(committed.snapshot_id);
    summary.imported = to_import.into_iter().map(|(path, _)| path).collect();
    Ok(summary)
}
