//! `runtime import`: existing Parquet files into a batch graph's raw table.
//!
//! - Every file is checked before anything is written: each table column must be in the file
//!   with the table's type (list item names and field ids may differ); all mismatches of all files
//!   are reported together, one line per column. Columns the table does not have are ignored.
//! - Rows go to the partition their own date column names; a row without one is refused (the
//!   report counts them) because it belongs to no partition.
//! - One append snapshot per call. The snapshot records the SHA-256 of each file's bytes, and a
//!   file whose hash any snapshot of the table recorded is skipped: importing the same file twice
//!   adds nothing (expiring the snapshot that recorded it forgets that).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Date32Type, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::types::{conform_batch, same_layout};
use super::{IMPORTED_FILES_PROPERTY, TableSpec};
use crate::catalog::{Lakehouse, parse_table_ident};
use crate::commit::{CommitOptions, FileChange, commit};
use crate::error::{Context, Error, Result};
use crate::model::format_date;
use crate::writer::write_partition;

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
fn parquet_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
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

/// Hashes recorded by any snapshot the table still knows.
fn recorded_hashes(table: &iceberg::table::Table) -> BTreeSet<String> {
    table
        .metadata()
        .snapshots()
        .filter_map(|s| s.summary().additional_properties.get(IMPORTED_FILES_PROPERTY))
        .filter_map(|json| serde_json::from_str::<Vec<String>>(json).ok())
        .flatten()
        .collect()
}

/// The problems of one file's columns against the table's, one line each.
fn column_problems(path: &Path, file: &SchemaRef, table: &SchemaRef) -> Vec<String> {
    table
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
        .collect()
}

fn reader(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<std::fs::File>> {
    let file = std::fs::File::open(path).context(|| format!("opening {}", path.display()))?;
    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::User(format!("{}: not a readable Parquet file: {e}", path.display())))
}

/// Imports `paths` (files or folders) into `raw`.
pub async fn import(lakehouse: &Lakehouse, raw: &TableSpec, paths: &[PathBuf], target_file_size: usize, options: CommitOptions) -> Result<ImportSummary> {
    let ident = parse_table_ident(&raw.name)?;
    let table = lakehouse.ensure_table(&ident, &raw.layout()).await?;
    let expected = raw.arrow_schema()?;
    let files = parquet_files(paths)?;
    let recorded = recorded_hashes(&table);
    let mut summary = ImportSummary {
        table: raw.name.clone(),
        imported: Vec::new(),
        already_imported: Vec::new(),
        rows_per_partition: BTreeMap::new(),
        snapshot_id: None,
    };
    let mut to_import = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        let hash = sha256_of(&path)?;
        if recorded.contains(&hash) || to_import.iter().any(|(_, h)| h == &hash) {
            summary.already_imported.push(path);
            continue;
        }
        problems.extend(column_problems(&path, reader(&path)?.schema(), &expected));
        to_import.push((path, hash));
    }
    if !problems.is_empty() {
        return Err(Error::User(format!("nothing was imported; the files do not match table {}:\n  {}", raw.name, problems.join("\n  "))));
    }
    if to_import.is_empty() {
        return Ok(summary);
    }
    let mut days: BTreeMap<i32, Vec<RecordBatch>> = BTreeMap::new();
    for (path, _) in &to_import {
        let batches = reader(path)?.build().map_err(|e| Error::User(format!("{}: {e}", path.display())))?;
        for batch in batches {
            let batch = batch.map_err(|e| Error::User(format!("{}: reading rows: {e}", path.display())))?;
            let batch = conform_batch(&batch, &expected)?;
            let dates = batch.column_by_name(&raw.partition_by).expect("conformed to the table").as_primitive::<Date32Type>();
            if dates.null_count() > 0 {
                return Err(Error::User(format!(
                    "nothing was imported; {}: {} rows have no {} and belong to no partition",
                    path.display(),
                    dates.null_count(),
                    raw.partition_by
                )));
            }
            let distinct: BTreeSet<i32> = dates.values().iter().copied().collect();
            for day in distinct {
                let rows = arrow::compute::kernels::cmp::eq(dates, &arrow::array::Date32Array::new_scalar(day))
                    .context(|| "splitting rows by day".into())?;
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
    let hashes: Vec<&String> = to_import.iter().map(|(_, hash)| hash).collect();
    let properties = BTreeMap::from([(IMPORTED_FILES_PROPERTY.to_string(), serde_json::to_string(&hashes).expect("strings serialize"))]);
    let committed = commit(lakehouse, table, FileChange { add, properties, ..Default::default() }, options).await?;
    summary.snapshot_id = Some(committed.snapshot_id);
    summary.imported = to_import.into_iter().map(|(path, _)| path).collect();
    Ok(summary)
}
