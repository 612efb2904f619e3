//! The pipeline a graph file declares: what the engine knows about the data, and all of it.
//!
//! An events graph states the raw columns (its Avro reader schema), the validation of each record,
//! the key, the order that decides the latest record per key, the curated partitioning as an
//! Iceberg transform, the lateness and the curated columns. From that the engine builds the three
//! tables:
//!
//! ```text
//!  raw       = the reader schema's fields (optional: bad data is kept as it came)
//!              + source_topic, source_partition, source_offset, ingestion_ts_ms, ingestion_date
//!              + decode_error, decode_detail, payload (a record whose bytes could not be read)
//!              partitioned by identity(ingestion_date)
//!  curated   = the declared curated columns + ingestion_ts_ms, source_partition, source_offset
//!              (the lineage that decides ties and re-processing), key columns as identifier
//!              partitioned by the declared transform's column (day(ts) as D, or identity(c))
//!  rejected  = reason, detail + the reader schema's fields + coordinates + payload
//!              partitioned by identity(ingestion_date)
//! ```
//!
//! Top-level field ids are assigned in that order from 1, nested fields after every top-level
//! one (depth-first), as Iceberg writers do. The declarations are checked against each other
//! when the graph loads ([`Pipeline::new`]): every error names the graph key at fault.

pub mod avro;
pub mod stages;
pub mod types;

use std::sync::Arc;

use iceberg::spec::{ListType, MapType, NestedField, PrimitiveType, Schema, StructType, Type};
use serde::Deserialize;

use crate::pipeline::stages::Stage;
use crate::error::{Context, Result};
use crate::schema::TableLayout;

/// `upsert.key`: one column or several.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum KeyColumns {
    One(String),
    Many(Vec<String>),
}

impl KeyColumns {
    pub fn names(&self) -> Vec<String> {
        match self {
            KeyColumns::One(name) => vec![name.clone()],
            KeyColumns::Many(names) => names.clone(),
        }
    }
}

/// How the engine holds a key (`upsert.key_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// A UUID in any usual text form (any case, with or without hyphens, in braces, `urn:uuid:`,
    /// surrounding spaces): keyed by its 128-bit value, written to curated in canonical form
    /// (lowercase, hyphenated). Raw and rejected keep the text as ingested.
    Uuid,
    /// Any other key: kept exactly as ingested (hashed to 128 bits for exchange and state, never
    /// rewritten); two spellings are two keys.
    #[default]
    Exact,
}

/// The graph's `[upsert]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertSection {
    pub key: KeyColumns,
    #[serde(default)]
    pub key_type: KeyKind,
    pub order_by: String,
    pub partition_by: String,
    pub lateness: String,
}

/// One `[[validate]]` entry: a rule a record must pass to reach the curated table. Rules run in
/// the order the graph lists them, after the key's own check; a record is rejected with the
/// reason of the first rule it fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSection {
    pub column: String,
    /// `present`, `range` or `not_after_ingestion`.
    pub rule: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// not_after_ingestion: what an integer column counts (`seconds`, `milliseconds`, `microseconds`).
    pub unit: Option<String>,
    /// not_after_ingestion: how far the value may lead the record's ingestion time, e.g. "1h".
    pub tolerance: Option<String>,
    /// The reject reason recorded (defaults: `missing_field`, `<column>_out_of_range`, `future_<column>`).
    pub reason: Option<String>,
}

/// The graph's `[curated]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CuratedSection {
    /// In table order: a raw or derived column by name, or `"name type"` for a column a rule
    /// plugin adds (Iceberg type names: `boolean`, `long`, `list<struct<id long, name string>>`, …).
    pub columns: Vec<String>,
}

/// What an integer time column counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Seconds,
    Milliseconds,
    Microseconds,
}

impl TimeUnit {
    pub fn parse(text: &str) -> std::result::Result<TimeUnit, String> {
        match text.trim() {
            "seconds" | "s" => Ok(TimeUnit::Seconds),
            "milliseconds" | "ms" => Ok(TimeUnit::Milliseconds),
            "microseconds" | "us" => Ok(TimeUnit::Microseconds),
            other => Err(format!("unknown unit {other:?} (expected seconds, milliseconds or microseconds)")),
        }
    }

    /// How many of this unit make a second.
    pub fn per_second(self) -> i64 {
        match self {
            TimeUnit::Seconds => 1,
            TimeUnit::Milliseconds => 1_000,
            TimeUnit::Microseconds => 1_000_000,
        }
    }
}

/// The curated partitioning: an Iceberg transform of one column, realised as a column of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioning {
    pub source: String,
    pub transform: PartitionTransform,
    /// The curated column holding the partition value (`day(ts) as D`: `D`; identity: the source).
    pub column: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionTransform {
    /// The UTC date of a timestamp, a date, or an integer counting `unit` since the epoch.
    Day { unit: Option<TimeUnit> },
    Identity,
}

impl Partitioning {
    /// `day(col)`, `day(col, seconds)`, `identity(col)` or `col`, optionally followed by `as name`.
    pub fn parse(text: &str) -> std::result::Result<Partitioning, String> {
        let form = "expected day(column) [as name], day(column, seconds|milliseconds|microseconds) [as name] or identity(column)";
        let (call, alias) = match text.split_once(" as ") {
            Some((call, alias)) => (call.trim(), Some(alias.trim().to_string())),
            None => (text.trim(), None),
        };
        let identifier = |name: &str| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let (transform, arguments) = match call.split_once('(') {
            Some((name, rest)) => {
                let arguments = rest.strip_suffix(')').ok_or_else(|| format!("{text:?}: {form}"))?;
                (name.trim(), arguments)
            }
            None => ("identity", call),
        };
        let mut arguments = arguments.split(',').map(str::trim);
        let source = arguments.next().filter(|a| identifier(a)).ok_or_else(|| format!("{text:?}: {form}"))?.to_string();
        let unit = arguments.next().map(TimeUnit::parse).transpose().map_err(|e| format!("{text:?}: {e}"))?;
        if arguments.next().is_some() || alias.as_deref().is_some_and(|a| !identifier(a)) {
            return Err(format!("{text:?}: {form}"));
        }
        match transform {
            "day" => Ok(Partitioning {
                column: alias.unwrap_or_else(|| format!("{source}_day")),
                source,
                transform: PartitionTransform::Day { unit },
            }),
            "identity" if unit.is_none() => {
                if alias.as_ref().is_some_and(|a| *a != source) {
                    return Err(format!("{text:?}: identity partitions by the column itself; drop `as`"));
                }
                Ok(Partitioning { column: source.clone(), source, transform: PartitionTransform::Identity })
            }
            _ => Err(format!("{text:?}: {form}")),
        }
    }
}

/// The columns every raw row carries after the event's own: where it came from and, for a record
/// whose bytes could not be read, why and the bytes.
pub const RAW_COORDINATES: [(&str, PrimitiveType, bool); 8] = [
    ("source_topic", PrimitiveType::String, true),
    ("source_partition", PrimitiveType::Int, true),
    ("source_offset", PrimitiveType::Long, true),
    ("ingestion_ts_ms", PrimitiveType::Long, true),
    ("ingestion_date", PrimitiveType::Date, true),
    ("decode_error", PrimitiveType::String, false),
    ("decode_detail", PrimitiveType::String, false),
    ("payload", PrimitiveType::Binary, false),
];

/// The raw column holding a record's ingestion time (epoch milliseconds), which a curated
/// partitioning may transform: `day(ingestion_ts_ms, milliseconds) as ingestion_date`.
pub const INGESTION_TIME: &str = "ingestion_ts_ms";

/// The lineage every curated row carries after its declared columns: the winning record's
/// ingestion position, which decides ties and re-processing after a restart as in a run that
/// never stopped.
pub const LINEAGE: [(&str, PrimitiveType); 3] =
    [("ingestion_ts_ms", PrimitiveType::Long), ("source_partition", PrimitiveType::Int), ("source_offset", PrimitiveType::Long)];

/// A checked `[[validate]]` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    pub column: String,
    pub rule: Rule,
    /// The reject reason of a record failing it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// Not null; a string not empty either.
    Present,
    /// A number within `min..=max` (either bound may be open); NaN is outside every range.
    Range { min: Option<f64>, max: Option<f64> },
    /// A time at most `tolerance_ms` after the record's ingestion time (clocks that run ahead are
    /// tolerated up to that bound); an integer column counts `unit`.
    NotAfterIngestion { unit: Option<TimeUnit>, tolerance_ms: i64 },
    /// A time at most `tolerance_ms` before the record's ingestion time (how old a record may be
    /// when it arrives, whatever partition it lands in); an integer column counts `unit`.
    NotBeforeIngestion { unit: Option<TimeUnit>, tolerance_ms: i64 },
}

impl Validation {
    /// Checks `section` against the event columns. `index` is its place in `[[validate]]`.
    pub fn new(section: &ValidationSection, index: usize, event_columns: &[Arc<NestedField>]) -> std::result::Result<Validation, String> {
        let at = format!("validate[{index}]");
        let column = section.column.clone();
        let ty = event_columns
            .iter()
            .find(|f| f.name == column)
            .map(|f| f.field_type.as_ref().clone())
            .ok_or_else(|| format!("{at}.column: no event column {column:?}"))?;
        let unused = |key: &str, present: bool| if present { Err(format!("{at}.{key}: rule {:?} takes no {key}", section.rule)) } else { Ok(()) };
        let numeric = matches!(ty, Type::Primitive(PrimitiveType::Int | PrimitiveType::Long | PrimitiveType::Float | PrimitiveType::Double));
        let (rule, default_reason) = match section.rule.as_str() {
            "present" => {
                unused("min", section.min.is_some())?;
                unused("max", section.max.is_some())?;
                unused("unit", section.unit.is_some())?;
                unused("tolerance", section.tolerance.is_some())?;
                (Rule::Present, "missing_field".to_string())
            }
            "range" => {
                unused("unit", section.unit.is_some())?;
                unused("tolerance", section.tolerance.is_some())?;
                if !numeric {
                    return Err(format!("{at}: range needs a number column; {column} is {ty}"));
                }
                if section.min.is_none() && section.max.is_none() {
                    return Err(format!("{at}: range needs min, max or both"));
                }
                (Rule::Range { min: section.min, max: section.max }, format!("{column}_out_of_range"))
            }
            rule @ ("not_after_ingestion" | "not_before_ingestion") => {
                unused("min", section.min.is_some())?;
                unused("max", section.max.is_some())?;
                let unit = section.unit.as_deref().map(TimeUnit::parse).transpose().map_err(|e| format!("{at}.unit: {e}"))?;
                match (&ty, unit) {
                    (Type::Primitive(PrimitiveType::Int | PrimitiveType::Long), None) => {
                        return Err(format!("{at}.unit: {column} is {ty}: say what it counts (seconds, milliseconds or microseconds)"));
                    }
                    (Type::Primitive(PrimitiveType::Int | PrimitiveType::Long), Some(_))
                    | (Type::Primitive(PrimitiveType::Timestamp | PrimitiveType::Timestamptz | PrimitiveType::Date), None) => {}
                    _ => return Err(format!("{at}: {rule} needs a time column; {column} is {ty}")),
                }
                let tolerance = section.tolerance.as_deref().unwrap_or("0s");
                let tolerance = humantime::parse_duration(tolerance)
                    .map_err(|e| format!("{at}.tolerance: expected a duration such as \"1h\", found {tolerance:?} ({e})"))?;
                let tolerance_ms = tolerance.as_millis() as i64;
                match rule {
                    "not_after_ingestion" => (Rule::NotAfterIngestion { unit, tolerance_ms }, format!("future_{column}")),
                    _ => (Rule::NotBeforeIngestion { unit, tolerance_ms }, format!("stale_{column}")),
                }
            }
            other => {
                return Err(format!(
                    "{at}.rule: unknown rule {other:?} (expected present, range, not_after_ingestion or not_before_ingestion)"
                ));
            }
        };
        let reason = section.reason.clone().unwrap_or(default_reason);
        if reason.is_empty() || !reason.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(format!("{at}.reason: {reason:?}: use lowercase letters, digits and _"));
        }
        Ok(Validation { column, rule, reason })
    }
}

/// A checked events pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The reader schema's fields, as the raw table's first columns (ids 1..).
    pub event_columns: Vec<Arc<NestedField>>,
    pub key: Vec<String>,
    pub key_kind: KeyKind,
    pub order_by: String,
    /// A stage casts the order column: records are ordered by its curated value.
    pub order_cast: bool,
    pub partitioning: Partitioning,
    /// The curated columns in table order, each with its type.
    pub curated: Vec<(String, Type)>,
    /// Columns guaranteed present in every curated row (required in the curated table).
    pub required: Vec<String>,
    /// `[[validate]]`, in order.
    pub validations: Vec<Validation>,
    /// `[[stages]]`, in order: derivations over the offered columns.
    pub stages: Vec<Stage>,
    /// The columns the rules offer the plugins: event columns, the partition column, the
    /// lineage, then what the stages changed or added.
    pub working: arrow::datatypes::SchemaRef,
    /// How the tables' new Parquet files are compressed when `init` creates them (a table's own
    /// properties rule once it exists: [`crate::writer::table_compression`]).
    pub compression: parquet::basic::Compression,
    /// How the tables' distinct columns ([`Pipeline::plain_columns`]) are encoded when `init`
    /// creates them (then the table's own property rules: [`crate::writer::table_distinct_encoding`]).
    pub distinct_encoding: crate::writer::DistinctEncoding,
    /// Columns the graph writes without a dictionary besides the distinct ones
    /// (`tables.without_dictionary`): a column of many short values that zstd compresses about
    /// as well as a dictionary does, where building the dictionary (a hash and a compare per row)
    /// costs more than it saves.
    pub without_dictionary: Vec<String>,
}

impl Pipeline {
    /// Checks the declarations against the reader schema and each other. Errors name the graph
    /// key at fault.
    pub fn new(
        reader: &apache_avro::Schema,
        upsert: &UpsertSection,
        validate: &[ValidationSection],
        stages: Vec<Stage>,
        curated: &CuratedSection,
    ) -> std::result::Result<Pipeline, String> {
        let mut next = 0;
        let event_columns =
            avro::event_columns(reader, 1, &mut next).map_err(|e| format!("source.reader_schema: {e}"))?;
        let validations = validate
            .iter()
            .enumerate()
            .map(|(index, section)| Validation::new(section, index, &event_columns))
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let validated_present: Vec<String> =
            validations.iter().filter(|v| v.rule == Rule::Present).map(|v| v.column.clone()).collect();
        let event_type = |name: &str| event_columns.iter().find(|f| f.name == name).map(|f| f.field_type.as_ref().clone());
        let known = || event_columns.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ");
        let key = upsert.key.names();
        if key.is_empty() {
            return Err("upsert.key: name at least one column".into());
        }
        for column in &key {
            match event_type(column) {
                None => return Err(format!("upsert.key: no event column {column:?} (the reader schema has: {})", known())),
                Some(Type::Primitive(PrimitiveType::String | PrimitiveType::Int | PrimitiveType::Long | PrimitiveType::Binary)) => {}
                Some(other) => return Err(format!("upsert.key: column {column} is {other}; a key is a string, int, long or binary")),
            }
        }
        if upsert.key_type == KeyKind::Uuid && !(key.len() == 1 && event_type(&key[0]) == Some(Type::Primitive(PrimitiveType::String))) {
            return Err("upsert.key_type: \"uuid\" takes one string key column".into());
        }
        let order_type = event_type(&upsert.order_by)
            .ok_or_else(|| format!("upsert.order_by: no event column {:?} (the reader schema has: {})", upsert.order_by, known()))?;
        if !matches!(
            order_type,
            Type::Primitive(PrimitiveType::Int | PrimitiveType::Long | PrimitiveType::Date | PrimitiveType::Timestamp | PrimitiveType::Timestamptz)
        ) {
            return Err(format!("upsert.order_by: column {} is {order_type}; the order is an integer, date or timestamp", upsert.order_by));
        }
        let partitioning = Partitioning::parse(&upsert.partition_by).map_err(|e| format!("upsert.partition_by: {e}"))?;
        // An event column, or the record's ingestion time: `day(ingestion_ts_ms, milliseconds)`
        // partitions curated by the day the winning record was ingested.
        let source_type = event_type(&partitioning.source)
            .or_else(|| (partitioning.source == INGESTION_TIME).then_some(Type::Primitive(PrimitiveType::Long)))
            .ok_or_else(|| {
                format!(
                    "upsert.partition_by: no event column {:?} (the reader schema has: {}; {INGESTION_TIME} is the ingestion time)",
                    partitioning.source,
                    known()
                )
            })?;
        let partition_type = match (partitioning.transform, &source_type) {
            (PartitionTransform::Day { unit: Some(_) }, Type::Primitive(PrimitiveType::Int | PrimitiveType::Long))
            | (PartitionTransform::Day { unit: None }, Type::Primitive(PrimitiveType::Date | PrimitiveType::Timestamp | PrimitiveType::Timestamptz)) => {
                Type::Primitive(PrimitiveType::Date)
            }
            (PartitionTransform::Day { unit: None }, Type::Primitive(PrimitiveType::Int | PrimitiveType::Long)) => {
                return Err(format!(
                    "upsert.partition_by: {} is {source_type}: say what it counts, e.g. day({}, seconds)",
                    partitioning.source, partitioning.source
                ));
            }
            (PartitionTransform::Identity, Type::Primitive(p)) if !matches!(p, PrimitiveType::Float | PrimitiveType::Double) => source_type.clone(),
            _ => return Err(format!("upsert.partition_by: cannot partition by {} of a {source_type} column", upsert.partition_by)),
        };
        // The offered columns before and after the stages (run on no rows: a stage that does not
        // fit fails here, naming it). Engine-owned columns must come out as they went in.
        let arrow_of = |ty: &Type| iceberg::arrow::type_to_arrow_type(ty).map_err(|e| format!("the Arrow type of {ty}: {e}"));
        let mut offered: Vec<arrow::datatypes::Field> = Vec::new();
        for field in &event_columns {
            offered.push(arrow::datatypes::Field::new(&field.name, arrow_of(&field.field_type)?, true));
        }
        if event_type(&partitioning.column).is_none() {
            offered.push(arrow::datatypes::Field::new(&partitioning.column, arrow_of(&partition_type)?, false));
        }
        for (name, ty) in LINEAGE {
            offered.push(arrow::datatypes::Field::new(name, arrow_of(&Type::Primitive(ty))?, false));
        }
        let offered = Arc::new(arrow::datatypes::Schema::new(offered));
        let working = crate::pipeline::stages::output_schema(&stages, &offered).map_err(|e| e.to_string())?;
        let owned = key.iter().chain([&partitioning.source, &partitioning.column]).cloned().chain(LINEAGE.iter().map(|(n, _)| n.to_string()));
        for name in owned {
            let before = offered.field_with_name(&name).map(|f| f.data_type().clone()).ok();
            let after = working.field_with_name(&name).map(|f| f.data_type().clone()).ok();
            if before != after {
                return Err(format!("stages: {name} is the key, partition or lineage; a stage may not rename, cast or replace it"));
            }
        }
        // The order column may be cast (an integer count of seconds becoming a timestamp, say);
        // records are then ordered by its curated value, the one a restart reads back.
        let order_after = working.field_with_name(&upsert.order_by).map(|f| f.data_type().clone()).map_err(|_| {
            format!("stages: {} is the order; a stage may cast it but not rename or drop it", upsert.order_by)
        })?;
        let order_cast = offered.field_with_name(&upsert.order_by).map(|f| f.data_type() != &order_after).unwrap_or(false);
        if order_cast && !crate::records::is_order_type(&order_after) {
            return Err(format!("stages: the order {} becomes {order_after}; it must stay an integer, date or timestamp", upsert.order_by));
        }
        // A column's type after the stages: an event column's own (with its nested ids) when the
        // stages left it alone, else what they made of it.
        let derived_type = |name: &str| -> std::result::Result<Option<Type>, String> {
            let Ok(field) = working.field_with_name(name) else { return Ok(None) };
            if let (Some(ty), Ok(before)) = (event_type(name), offered.field_with_name(name))
                && before.data_type() == field.data_type()
            {
                return Ok(Some(ty));
            }
            if name == partitioning.column {
                return Ok(Some(partition_type.clone()));
            }
            iceberg::arrow::arrow_type_to_type(field.data_type())
                .map(Some)
                .map_err(|e| format!("column {name} after the stages is {}, which has no Iceberg type here: {e}", field.data_type()))
        };
        let mut columns: Vec<(String, Type)> = Vec::with_capacity(curated.columns.len());
        for (index, text) in curated.columns.iter().enumerate() {
            let at = || format!("curated.columns[{index}]");
            let (name, declared) = match text.trim().split_once(char::is_whitespace) {
                Some((name, ty)) => {
                    let ty = crate::pipeline::types::type_named(ty.trim()).map_err(|e| format!("{}: {e}", at()))?;
                    (name.to_string(), Some(ty))
                }
                None => (text.trim().to_string(), None),
            };
            if columns.iter().any(|(existing, _)| *existing == name) || LINEAGE.iter().any(|(lineage, _)| *lineage == name) {
                return Err(format!("{}: column {name} appears twice (the lineage columns {} are added by the engine)", at(), lineage_names()));
            }
            let found = derived_type(&name).map_err(|e| format!("{}: {e}", at()))?;
            let ty = match (found, declared) {
                (Some(found), Some(declared)) if found != declared => {
                    return Err(format!("{}: {name} is {found}, declared {declared}", at()));
                }
                (Some(ty), _) | (None, Some(ty)) => ty,
                (None, None) => {
                    return Err(format!(
                        "{}: no column {name:?} among the event columns ({}), the partition column {} or what the stages add; a column a rule plugin adds is declared with its type, e.g. \"{name} boolean\"",
                        at(),
                        known(),
                        partitioning.column
                    ));
                }
            };
            columns.push((name, ty));
        }
        for (what, name) in key.iter().map(|k| ("upsert.key", k)).chain([("upsert.order_by", &upsert.order_by), ("upsert.partition_by", &partitioning.column)]) {
            if !columns.iter().any(|(c, _)| c == name) {
                return Err(format!("curated.columns: list {name} ({what}): the curated table needs it"));
            }
        }
        let mut required: Vec<String> = key.clone();
        required.extend([upsert.order_by.clone(), partitioning.column.clone()]);
        required.extend(validated_present.iter().cloned());
        // Columns a plugin adds: the chain checks they hold no null.
        required.extend(columns.iter().filter(|(name, _)| working.field_with_name(name).is_err()).map(|(n, _)| n.clone()));
        Ok(Pipeline {
            event_columns,
            key,
            key_kind: upsert.key_type,
            order_by: upsert.order_by.clone(),
            order_cast,
            partitioning,
            curated: columns,
            required,
            validations,
            stages,
            working,
            compression: crate::writer::default_compression(),
            distinct_encoding: crate::writer::DistinctEncoding::Delta,
            without_dictionary: Vec::new(),
        })
    }

    /// The raw table: event columns, then coordinates; partitioned by ingestion date.
    pub fn raw_layout(&self) -> Result<TableLayout> {
        let tail = RAW_COORDINATES.iter().map(|(name, ty, required)| (name.to_string(), Type::Primitive(ty.clone()), *required));
        let columns = self.event_columns.iter().map(|f| (f.name.clone(), f.field_type.as_ref().clone(), false)).chain(tail);
        layout(columns.collect(), &[], "ingestion_date", &self.plain_columns(), self.compression, self.distinct_encoding, "raw")
    }

    /// The rejected table: reason and detail, the event columns as ingested, coordinates, payload.
    pub fn rejected_layout(&self) -> Result<TableLayout> {
        let head = [("reason", PrimitiveType::String), ("detail", PrimitiveType::String)]
            .map(|(name, ty)| (name.to_string(), Type::Primitive(ty), true));
        let tail = RAW_COORDINATES
            .iter()
            .filter(|(name, _, _)| !name.starts_with("decode_"))
            .map(|(name, ty, required)| (name.to_string(), Type::Primitive(ty.clone()), *required));
        let events = self.event_columns.iter().map(|f| (f.name.clone(), f.field_type.as_ref().clone(), false));
        layout(head.into_iter().chain(events).chain(tail).collect(), &[], "ingestion_date", &self.plain_columns(), self.compression, self.distinct_encoding, "rejected")
    }

    /// The curated table: the declared columns, then the lineage; the key is its identifier.
    pub fn curated_layout(&self) -> Result<TableLayout> {
        let declared = self.curated.iter().map(|(name, ty)| (name.clone(), ty.clone(), self.required.contains(name)));
        let lineage = LINEAGE.iter().map(|(name, ty)| (name.to_string(), Type::Primitive(ty.clone()), true));
        layout(declared.chain(lineage).collect(), &self.key, &self.partitioning.column, &self.plain_columns(), self.compression, self.distinct_encoding, "curated")
    }

    /// The columns written without a Parquet dictionary: those nearly every row holds a
    /// different value of (the key, the order, ingestion times and offsets), then the graph's
    /// [`Pipeline::without_dictionary`].
    pub fn plain_columns(&self) -> Vec<String> {
        let mut columns = self.key.clone();
        columns.push(self.order_by.clone());
        columns.extend(["ingestion_ts_ms", "source_offset"].map(String::from));
        for name in &self.without_dictionary {
            if !columns.contains(name) {
                columns.push(name.clone());
            }
        }
        columns
    }
}

fn lineage_names() -> String {
    LINEAGE.map(|(name, _)| name).join(", ")
}

/// A schema of `columns` with Iceberg writer-style ids, `identifier` columns as its identifier
/// fields, identity-partitioned by `partition_column`.
fn layout(
    columns: Vec<(String, Type, bool)>,
    identifier: &[String],
    partition_column: &str,
    plain: &[String],
    compression: parquet::basic::Compression,
    distinct_encoding: crate::writer::DistinctEncoding,
    table: &str,
) -> Result<TableLayout> {
    let mut next = columns.len() as i32 + 1;
    let fields: Vec<Arc<NestedField>> = columns
        .iter()
        .enumerate()
        .map(|(index, (name, ty, required))| {
            let ty = renumber(ty, &mut next);
            let id = index as i32 + 1;
            Arc::new(if *required { NestedField::required(id, name, ty) } else { NestedField::optional(id, name, ty) })
        })
        .collect();
    let identifier_ids: Vec<i32> =
        identifier.iter().filter_map(|name| fields.iter().find(|f| f.name == *name).map(|f| f.id)).collect();
    let schema = Schema::builder()
        .with_fields(fields)
        .with_identifier_field_ids(identifier_ids)
        .build()
        .context(|| format!("building the {table} table's schema"))?;
    Ok(TableLayout { schema, partition_column: partition_column.to_string(), plain_columns: plain.to_vec(), compression, distinct_encoding })
}

/// `ty` with its nested fields numbered from `next`, depth-first.
fn renumber(ty: &Type, next: &mut i32) -> Type {
    let mut take = || {
        let id = *next;
        *next += 1;
        id
    };
    match ty {
        Type::Primitive(_) => ty.clone(),
        Type::List(list) => {
            let id = take();
            let element = renumber(&list.element_field.field_type, next);
            Type::List(ListType::new(Arc::new(NestedField::list_element(id, element, list.element_field.required))))
        }
        Type::Map(map) => {
            let (key_id, value_id) = (take(), take());
            let key = renumber(&map.key_field.field_type, next);
            let value = renumber(&map.value_field.field_type, next);
            Type::Map(MapType::new(
                Arc::new(NestedField::map_key_element(key_id, key)),
                Arc::new(NestedField::map_value_element(value_id, value, map.value_field.required)),
            ))
        }
        Type::Struct(fields) => {
            let ids: Vec<i32> = fields.fields().iter().map(|_| take()).collect();
            let renumbered = fields
                .fields()
                .iter()
                .zip(ids)
                .map(|(field, id)| {
                    let ty = renumber(&field.field_type, next);
                    Arc::new(if field.required { NestedField::required(id, &field.name, ty) } else { NestedField::optional(id, &field.name, ty) })
                })
                .collect();
            Type::Struct(StructType::new(renumbered))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLICKS: &str = r#"{"type":"record","name":"Click","fields":[
        {"name":"click_id","type":"long"},
        {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"page","type":["null",{"type":"record","name":"Page","fields":[{"name":"url","type":"string"}]}]},
        {"name":"tags","type":{"type":"array","items":"string"}}
    ]}"#;

    fn upsert(key: &str, partition_by: &str) -> UpsertSection {
        UpsertSection {
            key: KeyColumns::One(key.into()),
            key_type: KeyKind::Exact,
            order_by: "at".into(),
            partition_by: partition_by.into(),
            lateness: "2d".into(),
        }
    }

    fn pipeline(partition_by: &str, curated: &[&str]) -> std::result::Result<Pipeline, String> {
        let reader = apache_avro::Schema::parse_str(CLICKS).unwrap();
        let curated = CuratedSection { columns: curated.iter().map(|c| c.to_string()).collect() };
        Pipeline::new(&reader, &upsert("click_id", partition_by), &[], Vec::new(), &curated)
    }

    fn shown(layout: &TableLayout) -> Vec<String> {
        layout.schema.as_struct().fields().iter().map(|f| format!("{} {}{} {}", f.id, f.name, if f.required { "!" } else { "" }, f.field_type)).collect()
    }

    #[test]
    fn tables_of_a_schema_the_engine_never_saw() {
        let p = pipeline("day(at) as day", &["click_id", "at", "day", "tags", "page", "bot boolean"]).unwrap();
        let curated = p.curated_layout().unwrap();
        let fields = shown(&curated);
        assert_eq!(fields[..3], ["1 click_id! long", "2 at! timestamptz", "3 day! date"]);
        assert_eq!(fields[5], "6 bot! boolean", "a plugin's column is required: the chain checks it is never null");
        assert!(fields[4].starts_with("5 page struct"), "not validated present, so optional: {}", fields[4]);
        assert_eq!(fields[6..], ["7 ingestion_ts_ms! long", "8 source_partition! int", "9 source_offset! long"]);
        assert!(fields[3].starts_with("4 tags list"), "{fields:?}");
        assert_eq!(curated.schema.identifier_field_ids().collect::<Vec<_>>(), [1]);
        assert_eq!(curated.partition_column, "day");
        let raw = shown(&p.raw_layout().unwrap());
        assert_eq!(raw.len(), 4 + RAW_COORDINATES.len());
        assert_eq!(raw[4], "5 source_topic! string");
        let rejected = shown(&p.rejected_layout().unwrap());
        assert_eq!(rejected[..3], ["1 reason! string", "2 detail! string", "3 click_id long"]);
        assert_eq!(rejected.last().unwrap(), "12 payload binary");
    }

    #[test]
    fn partition_transforms_parse_with_their_column() {
        let day = Partitioning::parse("day(rating_timestamp, seconds) as rating_date").unwrap();
        assert_eq!(day.column, "rating_date");
        assert_eq!(day.transform, PartitionTransform::Day { unit: Some(TimeUnit::Seconds) });
        assert_eq!(Partitioning::parse("day(at)").unwrap().column, "at_day");
        assert_eq!(Partitioning::parse("identity(country)").unwrap().column, "country");
        assert_eq!(Partitioning::parse("country").unwrap().transform, PartitionTransform::Identity);
        for bad in ["month(at)", "day(at", "day(at, hours)", "identity(a) as b", "day() as d", "day(a b)"] {
            assert!(Partitioning::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn declarations_that_do_not_fit_the_schema_name_the_key() {
        let error = |partition_by: &str, curated: &[&str]| pipeline(partition_by, curated).unwrap_err();
        assert!(error("day(nope)", &["click_id"]).starts_with("upsert.partition_by: no event column \"nope\""));
        assert!(error("day(click_id)", &["click_id"]).contains("say what it counts, e.g. day(click_id, seconds)"));
        assert!(error("day(at) as d", &["click_id", "at", "d", "bot"]).contains("declared with its type, e.g. \"bot boolean\""));
        assert!(error("day(at) as d", &["click_id", "at"]).contains("curated.columns: list d (upsert.partition_by)"));
        assert!(error("day(at) as d", &["click_id", "at", "d", "at long"]).contains("appears twice"));
        assert!(error("day(at) as d", &["click_id", "at long", "d"]).contains("at is timestamptz, declared long"));
        let reader = apache_avro::Schema::parse_str(CLICKS).unwrap();
        let curated = CuratedSection { columns: vec!["page".into()] };
        let key_error = Pipeline::new(&reader, &upsert("page", "day(at)"), &[], Vec::new(), &curated).unwrap_err();
        assert!(key_error.contains("upsert.key: column page is struct"), "{key_error}");
        let uuid = UpsertSection { key_type: KeyKind::Uuid, ..upsert("click_id", "day(at)") };
        assert!(Pipeline::new(&reader, &uuid, &[], Vec::new(), &curated).unwrap_err().contains("\"uuid\" takes one string key column"));
    }
}
