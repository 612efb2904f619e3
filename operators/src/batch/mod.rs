//! Batch pipelines over any schema: a graph file declares the raw table's columns, the stages
//! that derive the curated columns, the key and the order that picks the latest row, and the
//! checks; nothing in the engine knows the schema.
//!
//! ```text
//!  Parquet files ──► runtime import ──► raw table (append, one snapshot per call,
//!                    (columns checked,   partitioned by a date column, files hashed
//!                     split per day)     so a second import of a file adds nothing)
//!
//!  runtime --mode replay --from D1 --to D2             (the batch job for execution dates D1..D2)
//!
//!  raw files of D1..D2 ──► stages ──► candidates ──┐
//!  (day, then import order, then row)              ├─► upsert: a differential `reduce` per key,
//!  curated rows of other days (key, order, day) ───┘   greatest (order, day, position) wins
//!        │
//!        ▼
//!  per executed day: its winners │ per other day that lost keys: its rows minus those keys
//!        └──────────────► checks (fail: nothing is committed) ──► write files ──► one Overwrite
//!                                                                                 snapshot
//! ```
//!
//! Semantics:
//! - A day's curated partition holds the rows whose winning record was ingested that day, so
//!   running a day recomputes that partition from its raw files and the rest of the table: a day
//!   can be re-run (same rows), and running days one at a time gives the table one run over all of
//!   them gives (the winner of a key depends only on the set of its records).
//! - Ties: equal order values go to the later ingestion day, then to the later record of the day
//!   (files in the order they were imported, rows in file order). A curated row of another day
//!   never ties with a raw record of an executed day on anything but the order value, because
//!   their days differ.
//! - A record without a key cannot be upserted: it is counted and its file and row are logged. A
//!   record without an order value sorts before every record with one.
//! - With `lateness` set, records whose order value falls on a day more than `lateness` before
//!   their ingestion day are counted as late and left out (the order column must then be a date or
//!   a timestamp).
//! - State is the curated table itself: only its key, order and day columns are read to seed the
//!   upsert, and only days that lose a key are read in full.

pub mod import;
pub mod job;
pub mod stages;
pub mod types;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use iceberg::spec::Schema;

use crate::checks::Checks;
use crate::commit::CommitOptions;
use crate::error::{Error, Result};
use crate::schema::TableLayout;
use stages::Stage;

/// Snapshot summary property of a raw table: the SHA-256 of every file an import added, as a
/// JSON array of hex strings.
pub const IMPORTED_FILES_PROPERTY: &str = "ratings-flow.imported-files";
/// Snapshot summary property of a curated table: the execution days a batch run recomputed.
pub const EXECUTION_DATES_PROPERTY: &str = "ratings-flow.execution-dates";

/// A table of a batch graph: its full name and layout.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: String,
    pub schema: Schema,
    pub partition_by: String,
}

impl TableSpec {
    pub fn layout(&self) -> TableLayout {
        TableLayout { schema: self.schema.clone(), partition_column: self.partition_by.clone(), plain_columns: Vec::new() }
    }

    pub fn arrow_schema(&self) -> Result<SchemaRef> {
        iceberg::arrow::schema_to_arrow_schema(&self.schema)
            .map(Arc::new)
            .map_err(|e| Error::Internal(format!("the Arrow schema of {}: {e}", self.name)))
    }
}

/// A batch pipeline as its graph file declares it, validated.
#[derive(Debug, Clone)]
pub struct BatchPipeline {
    pub raw: TableSpec,
    pub curated: TableSpec,
    pub stages: Vec<Stage>,
    /// The curated table's columns, in order, each a column of the staged batch.
    pub curated_columns: Vec<String>,
    pub key: String,
    pub order_by: String,
    /// Records whose order value is more than this many days before their ingestion day are late.
    pub lateness_days: Option<i32>,
    pub checks: Arc<Checks>,
    pub target_file_size: usize,
    pub commit: CommitOptions,
}

impl BatchPipeline {
    /// Derives the curated table from the raw one: runs the stages on no rows, picks
    /// `curated_columns`, and checks the key, order and partition columns and the checks.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raw: TableSpec,
        curated_name: String,
        curated_partition_by: String,
        stages: Vec<Stage>,
        curated_columns: Vec<String>,
        key: String,
        order_by: String,
        lateness_days: Option<i32>,
        checks: Arc<Checks>,
        target_file_size: usize,
        commit: CommitOptions,
    ) -> Result<BatchPipeline> {
        let user = |message: String| Error::User(message);
        let raw_arrow = raw.arrow_schema()?;
        if !matches!(raw_arrow.field_with_name(&raw.partition_by).map(|f| f.data_type()), Ok(arrow::datatypes::DataType::Date32)) {
            return Err(user(format!("tables.raw.partition_by: {:?} must be a date column of the raw table", raw.partition_by)));
        }
        let staged = stages::output_schema(&stages, &raw_arrow)?;
        let mut fields = Vec::new();
        for name in &curated_columns {
            let field = staged.field_with_name(name).map_err(|_| {
                let known: Vec<&str> = staged.fields().iter().map(|f| f.name().as_str()).collect();
                user(format!("tables.curated.columns: no column {name:?} after the stages (there are: {})", known.join(", ")))
            })?;
            if fields.iter().any(|f: &arrow::datatypes::Field| f.name() == name) {
                return Err(user(format!("tables.curated.columns: {name} is listed twice")));
            }
            // Metadata (field ids of the raw table) would fight the ids assigned below.
            fields.push(field.clone().with_metadata(Default::default()));
        }
        let curated_arrow = arrow::datatypes::Schema::new(fields);
        let schema = iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&curated_arrow)
            .map_err(|e| user(format!("tables.curated.columns: no Iceberg type for a column: {e}")))?;
        let curated = TableSpec { name: curated_name, schema, partition_by: curated_partition_by };
        let curated_arrow = curated.arrow_schema()?;
        let type_of = |name: &str| curated_arrow.field_with_name(name).map(|f| f.data_type().clone());
        use arrow::datatypes::DataType as T;
        match type_of(&curated.partition_by) {
            Ok(T::Date32) => {}
            _ => return Err(user(format!("tables.curated.partition_by: {:?} must be a date column of the curated table", curated.partition_by))),
        }
        if curated.partition_by != raw.partition_by {
            return Err(user(format!(
                "tables.curated.partition_by: a batch graph partitions curated by the raw table's ingestion day ({:?}), found {:?}",
                raw.partition_by, curated.partition_by
            )));
        }
        match type_of(&key) {
            Ok(t) if t == T::Utf8 || t.is_integer() => {}
            Ok(t) => return Err(user(format!("upsert.key: {key} is {t}; a key is a string or an integer column"))),
            Err(_) => return Err(user(format!("upsert.key: {key:?} is not a curated column"))),
        }
        match type_of(&order_by) {
            Ok(T::Timestamp(_, _) | T::Date32) => {}
            Ok(t) if t.is_integer() && lateness_days.is_none() => {}
            Ok(t) if t.is_integer() => {
                return Err(user(format!("upsert.lateness needs a date or timestamp order column; {order_by} is {t}")));
            }
            Ok(t) => return Err(user(format!("upsert.order_by: {order_by} is {t}; expected an integer, date or timestamp column"))),
            Err(_) => return Err(user(format!("upsert.order_by: {order_by:?} is not a curated column"))),
        }
        checks.validate(&curated.name, &curated_arrow)?;
        Ok(BatchPipeline {
            raw,
            curated,
            stages,
            curated_columns,
            key,
            order_by,
            lateness_days,
            checks,
            target_file_size,
            commit,
        })
    }
}
