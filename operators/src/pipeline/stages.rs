//! Built-in row stages a graph configures instead of code (`[[stages]]`): each takes a batch and returns
//! it with one column changed, renamed or added, in the order the graph lists them.
//!
//! - `rename` `column` → `to`: the column keeps its place and values.
//! - `upper` `column`: upper-cases a string column (Unicode rules); nulls stay null.
//! - `cast` `column` → `to` (an Iceberg type name): Arrow's cast, refusing values that do not fit
//!   (overflow, unparsable text) rather than turning them into nulls. An integer becomes a
//!   `timestamp`/`timestamptz` in the `unit` it counts (`seconds`, `milliseconds`,
//!   `microseconds`); Iceberg stores microseconds, UTC for `timestamptz`.
//! - `list_length` `column` → `into`: the number of items of a list column, a null list counting
//!   as empty (so the result is never null); with `greater_than = N` the new column is the boolean
//!   `length > N` instead.
//! - `day` `column` → `into`: the UTC date of a timestamp or date column, or of an integer counting
//!   `unit` since the epoch; null stays null.
//!
//! Every stage is checked against the raw table's columns when the graph loads, by running the
//! stages on an empty batch: a missing column or a wrong type is reported there, naming the stage.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int32Array, RecordBatch, StringArray};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use iceberg::spec::{PrimitiveType, Type};

use super::types::primitive_named;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Rename { column: String, to: String },
    Upper { column: String },
    Cast { column: String, to: DataType, unit: Option<TimeUnit> },
    ListLength { column: String, into: String, greater_than: Option<i64> },
    Day { column: String, into: String, unit: Option<TimeUnit> },
}

/// The Arrow type an Iceberg primitive type name is written as, for the targets a cast takes.
pub fn arrow_type_of(name: &str) -> std::result::Result<DataType, String> {
    let refused = || format!("cannot cast to {name:?} (expected boolean, int, long, float, double, date, timestamp, timestamptz or string)");
    match primitive_named(name) {
        None | Some(PrimitiveType::Binary) => Err(refused()),
        Some(primitive) => iceberg::arrow::type_to_arrow_type(&Type::Primitive(primitive)).map_err(|e| format!("{}: {e}", refused())),
    }
}

/// `seconds`, `milliseconds` or `microseconds`.
pub fn time_unit_of(name: &str) -> std::result::Result<TimeUnit, String> {
    Ok(match super::TimeUnit::parse(name)? {
        super::TimeUnit::Seconds => TimeUnit::Second,
        super::TimeUnit::Milliseconds => TimeUnit::Millisecond,
        super::TimeUnit::Microseconds => TimeUnit::Microsecond,
    })
}

impl Stage {
    /// What the stage does, as error messages name it.
    pub fn describe(&self) -> String {
        match self {
            Stage::Rename { column, to } => format!("rename {column} → {to}"),
            Stage::Upper { column } => format!("upper {column}"),
            Stage::Cast { column, to, .. } => format!("cast {column} → {to}"),
            Stage::ListLength { column, into, .. } => format!("list_length {column} → {into}"),
            Stage::Day { column, into, .. } => format!("day {column} → {into}"),
        }
    }

    fn apply(&self, batch: &RecordBatch) -> std::result::Result<RecordBatch, String> {
        let schema = batch.schema();
        let index_of = |name: &str| {
            schema.index_of(name).map_err(|_| {
                let known: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                format!("no column {name:?} (columns here: {})", known.join(", "))
            })
        };
        let absent = |name: &str| match schema.index_of(name) {
            Ok(_) => Err(format!("column {name:?} exists already")),
            Err(_) => Ok(()),
        };
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        match self {
            Stage::Rename { column, to } => {
                let index = index_of(column)?;
                if to != column {
                    absent(to)?;
                }
                fields[index] = fields[index].clone().with_name(to);
            }
            Stage::Upper { column } => {
                let index = index_of(column)?;
                let Some(strings) = columns[index].as_string_opt::<i32>() else {
                    return Err(format!("column {column} is {}, not a string", columns[index].data_type()));
                };
                let upper: StringArray = strings.iter().map(|value| value.map(str::to_uppercase)).collect();
                columns[index] = Arc::new(upper);
            }
            Stage::Cast { column, to, unit } => {
                let index = index_of(column)?;
                let source = columns[index].clone();
                let options = CastOptions { safe: false, ..Default::default() };
                let via = match (source.data_type(), to, unit) {
                    (from, DataType::Timestamp(_, zone), Some(unit)) if from.is_integer() => {
                        Some(DataType::Timestamp(*unit, zone.clone()))
                    }
                    (from, DataType::Timestamp(_, _), None) if from.is_integer() => {
                        return Err(format!(
                            "column {column} is {from}: say which unit its integers count with `unit` (seconds, milliseconds or microseconds)"
                        ));
                    }
                    (_, _, Some(_)) => return Err("`unit` only applies to integers cast to a timestamp".into()),
                    _ => None,
                };
                let start = match via {
                    Some(via) => cast_with_options(&cast_with_options(&source, &DataType::Int64, &options).map_err(|e| e.to_string())?, &via, &options)
                        .map_err(|e| e.to_string())?,
                    None => source,
                };
                let cast = cast_with_options(&start, to, &options).map_err(|e| format!("column {column}: {e}"))?;
                fields[index] = Field::new(column, to.clone(), true);
                columns[index] = cast;
            }
            Stage::ListLength { column, into, greater_than } => {
                let index = index_of(column)?;
                absent(into)?;
                let values = &columns[index];
                let lengths: Vec<i64> = match values.data_type() {
                    DataType::List(_) => {
                        let list = values.as_list::<i32>();
                        (0..list.len()).map(|row| if list.is_null(row) { 0 } else { list.value_length(row) as i64 }).collect()
                    }
                    DataType::LargeList(_) => {
                        let list = values.as_list::<i64>();
                        (0..list.len()).map(|row| if list.is_null(row) { 0 } else { list.value_length(row) }).collect()
                    }
                    other => return Err(format!("column {column} is {other}, not a list")),
                };
                let (field, column): (Field, ArrayRef) = match greater_than {
                    Some(limit) => {
                        (Field::new(into, DataType::Boolean, true), Arc::new(BooleanArray::from_iter(lengths.iter().map(|l| Some(l > limit)))))
                    }
                    None => {
                        let counts = lengths.iter().map(|l| i32::try_from(*l).map_err(|_| format!("a list of {l} items in {column}")));
                        (Field::new(into, DataType::Int32, true), Arc::new(counts.collect::<std::result::Result<Int32Array, _>>()?))
                    }
                };
                fields.push(field);
                columns.push(column);
            }
            Stage::Day { column, into, unit } => {
                let index = index_of(column)?;
                absent(into)?;
                let source = columns[index].clone();
                let options = CastOptions { safe: false, ..Default::default() };
                let time = match (source.data_type(), unit) {
                    (from, Some(unit)) if from.is_integer() => {
                        let long = cast_with_options(&source, &DataType::Int64, &options).map_err(|e| e.to_string())?;
                        cast_with_options(&long, &DataType::Timestamp(*unit, None), &options).map_err(|e| e.to_string())?
                    }
                    (from, None) if from.is_integer() => {
                        return Err(format!("column {column} is {from}: say which unit its integers count with `unit` (seconds, milliseconds or microseconds)"));
                    }
                    (DataType::Timestamp(..) | DataType::Date32, None) => source,
                    (from, _) => return Err(format!("column {column} is {from}: day takes a timestamp, a date, or an integer with a `unit`")),
                };
                let day = cast_with_options(&time, &DataType::Date32, &options).map_err(|e| format!("column {column}: {e}"))?;
                fields.push(Field::new(into, DataType::Date32, true));
                columns.push(day);
            }
        }
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options).map_err(|e| e.to_string())
    }
}

/// Runs `stages` in order over `batch`. Errors name the stage (its place in the graph and what it
/// does).
pub fn apply_all(stages: &[Stage], batch: &RecordBatch) -> Result<RecordBatch> {
    let mut batch = batch.clone();
    for (index, stage) in stages.iter().enumerate() {
        batch = stage.apply(&batch).map_err(|problem| Error::User(format!("stages[{index}] ({}): {problem}", stage.describe())))?;
    }
    Ok(batch)
}

/// The schema `stages` produce from `input`, found by running them on no rows: a stage that does
/// not fit the columns fails here, before any data is read.
pub fn output_schema(stages: &[Stage], input: &SchemaRef) -> Result<SchemaRef> {
    Ok(apply_all(stages, &RecordBatch::new_empty(input.clone()))?.schema())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, ListArray};
    use arrow::buffer::{NullBuffer, OffsetBuffer};

    fn batch() -> RecordBatch {
        let tags = ListArray::new(
            Arc::new(Field::new("element", DataType::Int64, true)),
            OffsetBuffer::from_lengths([2, 1, 0, 0]),
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Some(NullBuffer::from(vec![true, true, true, false])),
        );
        RecordBatch::try_from_iter([
            ("language", Arc::new(StringArray::from(vec![Some("en"), Some("fr"), None, Some("ß")])) as ArrayRef),
            ("seconds", Arc::new(Int64Array::from(vec![0, 1_609_459_200, 1, -1])) as ArrayRef),
            ("tags", Arc::new(tags) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn each_stage_does_what_it_says() {
        let stages = vec![
            Stage::Upper { column: "language".into() },
            Stage::Rename { column: "language".into(), to: "lang".into() },
            Stage::Cast { column: "seconds".into(), to: arrow_type_of("timestamptz").unwrap(), unit: Some(TimeUnit::Second) },
            Stage::ListLength { column: "tags".into(), into: "many".into(), greater_than: Some(1) },
            Stage::ListLength { column: "tags".into(), into: "count".into(), greater_than: None },
            Stage::Day { column: "seconds".into(), into: "day".into(), unit: None },
        ];
        let out = apply_all(&stages, &batch()).unwrap();
        let schema = out.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["lang", "seconds", "tags", "many", "count", "day"]);
        let lang: Vec<Option<&str>> = out.column(0).as_string::<i32>().iter().collect();
        assert_eq!(lang, [Some("EN"), Some("FR"), None, Some("SS")]);
        let micros = out.column(1).as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(micros.values().to_vec(), vec![0, 1_609_459_200_000_000, 1_000_000, -1_000_000]);
        assert_eq!(out.column(1).data_type(), &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), "Iceberg's timestamptz in Arrow");
        let many: Vec<Option<bool>> = out.column(3).as_boolean().iter().collect();
        assert_eq!(many, [Some(true), Some(false), Some(false), Some(false)], "a null list is empty, not null");
        let count: Vec<Option<i32>> = out.column(4).as_primitive::<arrow::datatypes::Int32Type>().iter().collect();
        assert_eq!(count, [Some(2), Some(1), Some(0), Some(0)]);
        let days: Vec<Option<i32>> = out.column(5).as_primitive::<arrow::datatypes::Date32Type>().iter().collect();
        assert_eq!(days, [Some(0), Some(18_628), Some(0), Some(-1)], "the UTC date, the second before 1970 on 1969-12-31");
        let integers = Stage::Day { column: "seconds".into(), into: "d".into(), unit: Some(TimeUnit::Second) };
        let from_integers = apply_all(&[integers], &batch()).unwrap();
        assert_eq!(from_integers.column(3).as_primitive::<arrow::datatypes::Date32Type>().value(1), 18_628);
    }

    #[test]
    fn stages_that_do_not_fit_the_columns_are_refused_before_any_data() {
        let schema = batch().schema();
        let refused = |stage: Stage| output_schema(&[stage], &schema).unwrap_err().to_string();
        assert!(refused(Stage::Upper { column: "seconds".into() }).contains("stages[0] (upper seconds): column seconds is Int64, not a string"));
        assert!(refused(Stage::Rename { column: "nope".into(), to: "x".into() }).contains("no column \"nope\""));
        assert!(refused(Stage::Rename { column: "language".into(), to: "seconds".into() }).contains("exists already"));
        assert!(refused(Stage::ListLength { column: "language".into(), into: "n".into(), greater_than: None }).contains("not a list"));
        let no_unit = Stage::Cast { column: "seconds".into(), to: arrow_type_of("timestamp").unwrap(), unit: None };
        assert!(refused(no_unit).contains("`unit`"));
    }

    #[test]
    fn a_value_that_does_not_fit_is_an_error_not_a_null() {
        let batch = RecordBatch::try_from_iter([("seconds", Arc::new(Int64Array::from(vec![i64::MAX])) as ArrayRef)]).unwrap();
        let stage = Stage::Cast { column: "seconds".into(), to: arrow_type_of("timestamptz").unwrap(), unit: Some(TimeUnit::Second) };
        assert!(apply_all(&[stage], &batch).is_err());
    }
}
