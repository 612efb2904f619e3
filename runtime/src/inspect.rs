//! `runtime show`, `runtime history` and `runtime check`: looking at tables.

use std::sync::Arc;

use arrow::util::pretty::pretty_format_batches;
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::{Datum, PrimitiveType, Type};
use iceberg::table::Table;
use operators::checks::{Checks, Evaluation, Report};
use operators::error::{Error, Result};

/// Parses `column=value` into an equality filter typed by the table's schema.
pub fn parse_where(table: &Table, text: &str) -> Result<Predicate> {
    let (column, value) = text
        .split_once('=')
        .ok_or_else(|| Error::User(format!("--where {text:?}: expected column=value, e.g. day=2025-05-01")))?;
    let (column, value) = (column.trim(), value.trim());
    let schema = table.metadata().current_schema();
    let field = schema
        .field_by_name(column)
        .ok_or_else(|| Error::User(format!("--where: table {} has no column {column}", table.identifier())))?;
    let bad = |what: &str| Error::User(format!("--where {column}={value}: expected {what}"));
    let datum = match &*field.field_type {
        Type::Primitive(PrimitiveType::Date) => Datum::date(operators::model::parse_date(value).ok_or_else(|| bad("a date YYYY-MM-DD"))?),
        Type::Primitive(PrimitiveType::String) => Datum::string(value),
        Type::Primitive(PrimitiveType::Long) => Datum::long(value.parse::<i64>().map_err(|_| bad("an integer"))?),
        Type::Primitive(PrimitiveType::Int) => Datum::int(value.parse::<i32>().map_err(|_| bad("an integer"))?),
        Type::Primitive(PrimitiveType::Boolean) => Datum::bool(value.parse::<bool>().map_err(|_| bad("true or false"))?),
        Type::Primitive(PrimitiveType::Float) => Datum::float(value.parse::<f32>().map_err(|_| bad("a number"))?),
        other => return Err(Error::User(format!("--where: filtering on {column} of type {other} is not supported"))),
    };
    Ok(Reference::new(column).equal_to(datum))
}

/// The first `limit` matching rows as an aligned text table, plus the total count.
pub async fn show(table: &Table, filter: Option<Predicate>, limit: usize) -> Result<String> {
    let batches = operators::reader::scan(table, filter, None).await?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut shown = Vec::new();
    let mut remaining = limit;
    for batch in batches {
        if remaining == 0 {
            break;
        }
        let take = remaining.min(batch.num_rows());
        shown.push(batch.slice(0, take));
        remaining -= take;
    }
    let rendered = pretty_format_batches(&shown).map_err(|e| Error::Internal(format!("formatting rows: {e}")))?;
    let note = if total > limit { format!("only showing top {limit} of {total} rows") } else { format!("{total} rows") };
    Ok(format!("{rendered}\n{note}"))
}

/// One line per snapshot, oldest first.
pub fn history(table: &Table) -> String {
    const SHOWN: [&str; 9] = [
        "added-records",
        "deleted-records",
        "added-data-files",
        "deleted-data-files",
        "added-delete-files",
        "removed-delete-files",
        "added-position-deletes",
        "removed-position-deletes",
        "total-records",
    ];
    let metadata = table.metadata();
    let current = metadata.current_snapshot_id();
    let mut snapshots: Vec<_> = metadata.snapshots().collect();
    snapshots.sort_by_key(|s| (s.sequence_number(), s.timestamp_ms()));
    let mut lines = vec![format!("{:<20} {:<4} {:<24} {:<10} summary", "snapshot", "seq", "committed (UTC)", "operation")];
    for snapshot in snapshots {
        let summary = &snapshot.summary().additional_properties;
        let mut keys: Vec<String> = SHOWN.iter().filter(|k| summary.contains_key(**k)).map(|k| k.to_string()).collect();
        let mut ours: Vec<&String> = summary.keys().filter(|k| k.starts_with("ratings-flow.")).collect();
        ours.sort();
        keys.extend(ours.into_iter().cloned());
        let details: Vec<String> = keys.iter().map(|k| format!("{k}={}", summary[k])).collect();
        let when = chrono::DateTime::from_timestamp_millis(snapshot.timestamp_ms())
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let marker = if Some(snapshot.snapshot_id()) == current { "*" } else { " " };
        lines.push(format!(
            "{:<20}{marker}{:<4} {:<24} {:<10} {}",
            snapshot.snapshot_id(),
            snapshot.sequence_number(),
            when,
            snapshot.summary().operation.as_str(),
            details.join(" ")
        ));
    }
    lines.join("\n")
}

/// Runs `checks` over the table's rows (those `filter` selects), judging freshness against
/// `reference_secs`. Reads one file at a time; only the checks' state is kept.
pub async fn check(table: &Table, checks: Arc<Checks>, filter: Option<Predicate>, reference_secs: i64) -> Result<Report> {
    let tasks = operators::reader::plan(table, filter, None).await?;
    let mut evaluation = Evaluation::judging_only(checks);
    operators::reader::read_tasks(table, tasks, |batch| evaluation.observe(&batch).map(drop)).await?;
    let schema = operators::schema::arrow_schema(table.metadata().current_schema())?;
    Ok(evaluation.finish(reference_secs, Some(&schema)))
}
