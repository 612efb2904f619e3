//! Table layouts (an Iceberg schema and its partition column) and Arrow access to their batches.
//! What the three tables of a pipeline hold is declared by its graph; see [`crate::pipeline`].

use std::sync::Arc;

use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef as ArrowSchemaRef;
use iceberg::spec::{Schema, Transform, UnboundPartitionSpec};

use crate::error::{Context, Error, Result};

/// A table's Iceberg schema and partition spec (identity on one date column).
pub struct TableLayout {
    pub schema: Schema,
    pub partition_column: String,
    /// Columns whose values are (nearly) all distinct: written without a Parquet dictionary, which
    /// would only be built to be thrown away once it outgrows its page. Kept in the table's
    /// [`PLAIN_COLUMNS_PROPERTY`].
    pub plain_columns: Vec<String>,
    /// How new Parquet files are compressed; a new table gets it as Iceberg's compression
    /// properties ([`crate::writer::compression_properties`]).
    pub compression: parquet::basic::Compression,
    /// How the plain columns are encoded; a new table gets it as its
    /// [`crate::writer::DISTINCT_ENCODING_PROPERTY`].
    pub distinct_encoding: crate::writer::DistinctEncoding,
}

/// The table property listing columns written without a dictionary (comma-separated).
pub const PLAIN_COLUMNS_PROPERTY: &str = "ratings-flow.write.plain-columns";

impl TableLayout {
    pub fn partition_spec(&self) -> Result<UnboundPartitionSpec> {
        let source = self
            .schema
            .field_by_name(&self.partition_column)
            .ok_or_else(|| Error::Internal(format!("no partition column {}", self.partition_column)))?;
        UnboundPartitionSpec::builder()
            .add_partition_field(source.id, self.partition_column.clone(), Transform::Identity)
            .map(|b| b.build())
            .context(|| "building partition spec".into())
    }
}

pub fn arrow_schema(schema: &Schema) -> Result<ArrowSchemaRef> {
    iceberg::arrow::schema_to_arrow_schema(schema)
        .map(Arc::new)
        .context(|| "converting Iceberg schema to Arrow".into())
}

/// Typed access to a batch's columns by name, with errors that name the column.
pub struct Columns<'a>(pub &'a RecordBatch);

impl<'a> Columns<'a> {
    pub fn get<T: Array + 'static>(&self, name: &str) -> Result<&'a T> {
        let column = self
            .0
            .column_by_name(name)
            .ok_or_else(|| Error::User(format!("column {name} is missing from the table")))?;
        column.as_any().downcast_ref::<T>().ok_or_else(|| {
            Error::User(format!("column {name} has type {}, which this pipeline does not read", column.data_type()))
        })
    }
}
