//! # ratings-plugin-sdk
//!
//! Write a ratings-flow business rule as a config struct plus one function over an Arrow
//! [`RecordBatch`], and export it as a shared library with [`export_rule!`]:
//!
//! ```
//! use std::sync::Arc;
//! use ratings_plugin_sdk::{Applied, Description, Rule, export_rule};
//! use ratings_plugin_sdk::arrow_array::{BooleanArray, Float32Array, RecordBatch};
//! use ratings_plugin_sdk::arrow_schema::DataType;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct Approval {
//!     #[serde(default = "seven")]
//!     threshold: f32,
//! }
//! fn seven() -> f32 { 7.0 }
//!
//! impl Rule for Approval {
//!     fn describe() -> Description {
//!         Description::new("approval", "1.0.0")
//!             .input("rating", DataType::Float32)
//!             .output("is_approved", DataType::Boolean)
//!     }
//!     fn apply(&self, batch: &RecordBatch) -> Result<Applied, String> {
//!         let ratings = batch.column(0).as_any().downcast_ref::<Float32Array>().ok_or("rating is not Float32")?;
//!         let approved: BooleanArray = ratings.iter().map(|r| r.map(|r| r >= self.threshold)).collect();
//!         Ok(Applied::outputs(vec![Arc::new(approved)]))
//!     }
//! }
//! export_rule!(Approval);
//! # fn main() {}
//! ```
//!
//! - The batch holds exactly the declared input columns, in declaration order.
//! - [`Applied`] holds the declared output columns, in declaration order, one value per input
//!   row, and optionally a per-row verdict: `None` keeps the row, `Some(reason)` sends it to the
//!   rejected table with that reason.
//! - The engine creates one instance per worker thread and never calls one instance from two
//!   threads at once, so a rule needs `Send` but not `Sync`.
//! - Rules must be deterministic: the same batch and config give the same output, whatever the
//!   time, the machine or the batch boundaries. That is what lets a replay of the raw table
//!   reproduce what the stream decided. The API offers no clock on purpose; a rule that needs a
//!   time reads it from a column (`rating_timestamp`, `ingestion_ts_ms`).
//! - A panic inside the rule is caught on the plugin side and comes back as an error; it never
//!   unwinds into the engine.
//!
//! The ABI itself is in [`abi`] and `plugins/ABI.md`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use arrow_array;
pub use arrow_schema;
pub use serde;
pub use serde_json;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::DataType;
use serde::{Deserialize, Serialize};

pub mod abi;
pub mod cdata;
#[doc(hidden)]
pub mod export;
pub mod testing;

/// What a plugin tells the engine about itself before anything else runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    pub name: String,
    pub version: String,
    /// Columns the rule reads: the engine checks they exist with these types at the rule's place
    /// in the chain, and passes exactly these, in this order.
    pub inputs: Vec<ColumnSpec>,
    /// Columns the rule adds or replaces, in the order [`Applied::columns`] holds them.
    pub outputs: Vec<ColumnSpec>,
}

/// A column name and its Arrow type, written as Arrow prints it (`Float32`, `Utf8`, `Boolean`,
/// `Int64`, `Date32`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
}

impl ColumnSpec {
    pub fn new(name: &str, data_type: &DataType) -> Self {
        ColumnSpec { name: name.to_string(), data_type: data_type.to_string() }
    }

    /// The Arrow type, or why the text is not one.
    pub fn arrow_type(&self) -> Result<DataType, String> {
        self.data_type
            .parse::<DataType>()
            .map_err(|e| format!("column {}: type {:?} is not an Arrow type: {e}", self.name, self.data_type))
    }
}

impl Description {
    pub fn new(name: &str, version: &str) -> Self {
        Description { name: name.to_string(), version: version.to_string(), inputs: Vec::new(), outputs: Vec::new() }
    }

    pub fn input(mut self, name: &str, data_type: DataType) -> Self {
        self.inputs.push(ColumnSpec::new(name, &data_type));
        self
    }

    pub fn output(mut self, name: &str, data_type: DataType) -> Self {
        self.outputs.push(ColumnSpec::new(name, &data_type));
        self
    }
}

/// Where the rule runs: what it may need to finish its set-up.
#[derive(Debug, Clone)]
pub struct Context {
    /// The folder of the graph file that names the plugin.
    pub base_dir: PathBuf,
}

impl Context {
    /// `path` as the graph file means it: relative paths start at the graph file's folder.
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// What [`Rule::apply`] returns.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The declared output columns, in declaration order.
    pub columns: Vec<ArrayRef>,
    /// Per input row: null keeps the row, a string rejects it with that reason.
    pub verdicts: Option<StringArray>,
}

impl Applied {
    /// Output columns, every row kept.
    pub fn outputs(columns: Vec<ArrayRef>) -> Self {
        Applied { columns, verdicts: None }
    }

    /// No output columns, only verdicts (a filter rule).
    pub fn verdicts(verdicts: StringArray) -> Self {
        Applied { columns: Vec::new(), verdicts: Some(verdicts) }
    }

    pub fn with_verdicts(mut self, verdicts: StringArray) -> Self {
        self.verdicts = Some(verdicts);
        self
    }
}

/// A business rule: the struct is the rule's config as the graph file gives it (deserialized from
/// the plugin's `config` table), and whatever state [`Rule::prepare`] loads.
pub trait Rule: serde::de::DeserializeOwned + Send + 'static {
    fn describe() -> Description;

    /// Runs once per instance after the config is read: check values, load files (resolve paths
    /// with [`Context::resolve`]). An error here stops the engine at start with the message.
    fn prepare(&mut self, _context: &Context) -> Result<(), String> {
        Ok(())
    }

    /// Applies the rule to one batch of the declared input columns.
    fn apply(&self, batch: &RecordBatch) -> Result<Applied, String>;
}

/// The schema of the batch a rule receives: its declared inputs, in order.
pub fn input_schema(description: &Description) -> Result<arrow_schema::SchemaRef, String> {
    columns_schema(&description.inputs)
}

/// The schema of a rule's output batch: its declared outputs, in order.
pub fn output_schema(description: &Description) -> Result<arrow_schema::SchemaRef, String> {
    columns_schema(&description.outputs)
}

fn columns_schema(columns: &[ColumnSpec]) -> Result<arrow_schema::SchemaRef, String> {
    let fields = columns
        .iter()
        .map(|spec| Ok(arrow_schema::Field::new(&spec.name, spec.arrow_type()?, true)))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Arc::new(arrow_schema::Schema::new(fields)))
}

/// Checks `applied` against the declared outputs (`schema`, from [`output_schema`]) for an input
/// of `rows` rows: the engine checks again, but an author learns more from an error raised here.
pub fn check_output(schema: &arrow_schema::SchemaRef, rows: usize, applied: &Applied) -> Result<(), String> {
    if applied.columns.len() != schema.fields().len() {
        return Err(format!(
            "apply returned {} output columns, the description declares {}",
            applied.columns.len(),
            schema.fields().len()
        ));
    }
    for (field, column) in schema.fields().iter().zip(&applied.columns) {
        if column.data_type() != field.data_type() {
            return Err(format!("output column {} is {}, declared {}", field.name(), column.data_type(), field.data_type()));
        }
        if column.len() != rows {
            return Err(format!("output column {} has {} rows, the input has {rows}", field.name(), column.len()));
        }
    }
    if let Some(verdicts) = &applied.verdicts
        && verdicts.len() != rows
    {
        return Err(format!("verdicts have {} rows, the input has {rows}", verdicts.len()));
    }
    Ok(())
}
