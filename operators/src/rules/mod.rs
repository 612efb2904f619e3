//! The rules stage: the engine's validation, derivation and late cut over a raw batch
//! ([`Rules::judge`]), then the business rules of the graph's plugins over the survivors
//! ([`chain`]). Everything here is what the graph declares ([`crate::pipeline`]); nothing names a
//! column of its own.
//!
//! Semantics, per record, in this order (the first failure decides the reason); each rule reads
//! only the record itself, never the wall clock, so a replay of the raw table reproduces exactly
//! what the stream decided:
//! 1. A record whose bytes could not be read keeps the reason and detail its source gave it.
//! 2. The key: every key column present (a string not empty or blank); a `uuid` key must be a UUID
//!    in one of its usual spellings. Reasons `missing_<column>`, `invalid_<column>`.
//! 3. The graph's `[[validate]]` rules in order ([`crate::pipeline::Rule`]).
//! 4. The order column and the partition's source column must be present (reason `missing_field`;
//!    a graph normally says so with `present` rules, which then come first).
//! 5. The partition value: for `day(col)` the UTC day of the value.
//! 6. Late cut: a record whose partition day is more than `lateness` days before its ingestion
//!    date is rejected as `late`. Exactly `lateness` days before is still on time.

pub mod chain;
pub mod plugin;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type};

use crate::error::{Error, Result};
use crate::model::{RejectReason, day_of_millis, format_date};
use crate::pipeline::{PartitionTransform, Pipeline, Rule, TimeUnit, Validation};
use crate::records::{KeyMaker, KeyProblem, order_values};

/// The compiled rules of one pipeline.
#[derive(Debug, Clone)]
pub struct Rules {
    pub pipeline: Arc<Pipeline>,
    pub keys: KeyMaker,
    pub lateness_days: i32,
}

/// What [`Rules::judge`] made of a raw batch: the rows that passed with their key, order and
/// partition value, and the rows rejected with reason and detail. Row numbers index the batch.
#[derive(Debug, Default)]
pub struct Judged {
    pub accepted: Vec<u32>,
    pub keys: Vec<u128>,
    /// Whether every accepted row's key column holds what curated will ([`crate::records::Keys`]).
    pub keys_as_ingested: bool,
    pub orders: Vec<i64>,
    pub days: Vec<i32>,
    pub rejected: Vec<u32>,
    pub reasons: Vec<String>,
    pub details: Vec<String>,
}

/// Each row's verdict while the rules run: the first rule a row fails decides its reason, so a
/// rejected row is skipped by every later rule. Only rejected rows carry text.
struct Verdicts {
    failed: Vec<bool>,
    /// (row, reason, detail), in the order the rules rejected them.
    rejected: Vec<(usize, String, String)>,
}

impl Verdicts {
    fn new(rows: usize) -> Verdicts {
        Verdicts { failed: vec![false; rows], rejected: Vec::new() }
    }

    fn passing(&self, row: usize) -> bool {
        !self.failed[row]
    }

    /// Rejects `row`, which must still be passing.
    fn reject(&mut self, row: usize, reason: String, detail: String) {
        debug_assert!(!self.failed[row], "row {row} was rejected already");
        self.failed[row] = true;
        self.rejected.push((row, reason, detail));
    }

    /// Rejects with `reason` every row still passing that `fails` gives a detail for.
    fn reject_each(&mut self, reason: &str, mut fails: impl FnMut(usize) -> Option<String>) {
        for row in 0..self.failed.len() {
            if !self.failed[row]
                && let Some(detail) = fails(row)
            {
                self.failed[row] = true;
                self.rejected.push((row, reason.to_string(), detail));
            }
        }
    }
}

impl Rules {
    /// `lateness = "off"`: a window wider than any day a table can hold (about 2,700 years), so no
    /// record is late and no row freezes. Every curated row then stays updatable, and a restart
    /// reloads them all.
    pub const LATENESS_OFF: i32 = 1_000_000;

    pub fn new(pipeline: Arc<Pipeline>, lateness_days: i32) -> Rules {
        Rules { keys: KeyMaker::new(&pipeline), pipeline, lateness_days }
    }

    /// The day before which a row's partition can no longer change for records ingested on
    /// `ingestion_date`.
    pub fn window_start(&self, ingestion_date: i32) -> i32 {
        ingestion_date - self.lateness_days
    }

    /// Judges every row of `raw` (a batch in the raw table's schema).
    pub fn judge(&self, raw: &RecordBatch) -> Result<Judged> {
        let rows = raw.num_rows();
        let column = |name: &str| raw.column_by_name(name).ok_or_else(|| Error::User(format!("column {name} is missing from the raw table")));
        let ingestion = column("ingestion_ts_ms")?.as_primitive_opt::<Int64Type>().ok_or_else(|| Error::User("ingestion_ts_ms is not a long".into()))?.clone();
        let mut verdicts = Verdicts::new(rows);
        if let (Some(errors), Some(details)) = (raw.column_by_name("decode_error"), raw.column_by_name("decode_detail")) {
            let (errors, details) = (errors.as_string::<i32>(), details.as_string::<i32>());
            for row in (0..rows).filter(|&row| errors.is_valid(row)) {
                let detail = if details.is_valid(row) { details.value(row).to_string() } else { String::new() };
                verdicts.reject(row, errors.value(row).to_string(), detail);
            }
        }
        let keys = self.keys.keys(raw)?;
        for (row, problem) in &keys.problems {
            if !verdicts.passing(*row) {
                continue;
            }
            match problem {
                KeyProblem::Missing(name) => verdicts.reject(*row, format!("missing_{name}"), format!("{name} is missing")),
                KeyProblem::NotUuid(text) => {
                    let name = &self.pipeline.key[0];
                    verdicts.reject(*row, format!("invalid_{name}"), format!("{name} {text:?} is not a UUID"));
                }
            }
        }
        for validation in &self.pipeline.validations {
            apply(validation, column(&validation.column)?, &ingestion, &mut verdicts)?;
        }
        let order = order_values(column(&self.pipeline.order_by)?)?;
        let source = column(&self.pipeline.partitioning.source)?;
        // A day of the order column itself (the shipped graph) reads its values once.
        let days = match self.pipeline.partitioning.source == self.pipeline.order_by {
            true => self.partition_values(source.data_type(), &order)?,
            false => self.partition_values(source.data_type(), &order_values(source)?)?,
        };
        for row in 0..rows {
            if !verdicts.passing(row) {
                continue;
            }
            let Some(_) = order[row] else {
                verdicts.reject(row, RejectReason::MissingField.as_str().into(), format!("{} is missing", self.pipeline.order_by));
                continue;
            };
            let Some(day) = days[row] else {
                verdicts.reject(row, RejectReason::MissingField.as_str().into(), format!("{} is missing", self.pipeline.partitioning.source));
                continue;
            };
            let ingestion_date = day_of_millis(ingestion.value(row));
            if day < self.window_start(ingestion_date) {
                let detail = format!(
                    "{} {} is {} days before ingestion date {} (lateness {} days)",
                    self.pipeline.partitioning.column,
                    format_date(day),
                    ingestion_date - day,
                    format_date(ingestion_date),
                    self.lateness_days
                );
                verdicts.reject(row, RejectReason::Late.as_str().into(), detail);
            }
        }
        // Nearly every row passes: the accepted lists are sized for all of them up front.
        let passing = rows - verdicts.rejected.len();
        let mut judged = Judged {
            accepted: Vec::with_capacity(passing),
            keys: Vec::with_capacity(passing),
            orders: Vec::with_capacity(passing),
            days: Vec::with_capacity(passing),
            keys_as_ingested: keys.as_ingested,
            ..Judged::default()
        };
        for row in (0..rows).filter(|&row| verdicts.passing(row)) {
            judged.accepted.push(row as u32);
            judged.keys.push(keys.values[row]);
            judged.orders.push(order[row].expect("checked"));
            judged.days.push(days[row].expect("checked"));
        }
        // Rejections in row order, as the rules met them row by row.
        verdicts.rejected.sort_unstable_by_key(|(row, _, _)| *row);
        for (row, reason, detail) in verdicts.rejected {
            judged.rejected.push(row as u32);
            judged.reasons.push(reason);
            judged.details.push(detail);
        }
        Ok(judged)
    }

    /// The partition value of each row (`None`: the source value is null), from the source
    /// column's type and its values as [`order_values`] reads them.
    pub fn partition_values(&self, source_type: &DataType, values: &[Option<i64>]) -> Result<Vec<Option<i32>>> {
        let partitioning = &self.pipeline.partitioning;
        let per_day: Option<i64> = match (partitioning.transform, source_type) {
            (PartitionTransform::Day { unit: Some(unit) }, _) => Some(86_400 * unit.per_second()),
            (PartitionTransform::Day { unit: None }, DataType::Date32) | (PartitionTransform::Identity, _) => None,
            (PartitionTransform::Day { unit: None }, DataType::Timestamp(..)) => Some(86_400 * TimeUnit::Microseconds.per_second()),
            (_, other) => return Err(Error::User(format!("cannot take the day of a {other} column"))),
        };
        let mut days = Vec::with_capacity(values.len());
        for value in values {
            days.push(match value {
                None => None,
                Some(v) => {
                    let day = per_day.map_or(*v, |per_day| v.div_euclid(per_day));
                    Some(i32::try_from(day).map_err(|_| Error::User(format!("partition value {day} of {} does not fit a date", partitioning.source)))?)
                }
            });
        }
        Ok(days)
    }
}

/// Marks the rows `validation` rejects among those still passing.
fn apply(validation: &Validation, column: &ArrayRef, ingestion: &arrow::array::Int64Array, verdicts: &mut Verdicts) -> Result<()> {
    let name = &validation.column;
    let reason = validation.reason.as_str();
    // Only rows no earlier rule rejected are judged. Columns are read through their typed array
    // and null buffer, found once per batch, and a detail is only formatted for a row that fails.
    let nulls = column.logical_nulls();
    let is_null = |row: usize| nulls.as_ref().is_some_and(|nulls| nulls.is_null(row));
    match &validation.rule {
        Rule::Present => {
            let strings = column.as_string_opt::<i32>();
            // A column without nulls that is not text has every value present.
            if nulls.is_some() || strings.is_some() {
                let missing = |row: usize| is_null(row) || strings.is_some_and(|strings| strings.value_length(row) == 0);
                verdicts.reject_each(reason, |row| missing(row).then(|| format!("{name} is missing")));
            }
        }
        Rule::Range { min, max } => {
            let bounds = match (min, max) {
                (Some(min), Some(max)) => format!("outside {min}..={max}"),
                (Some(min), None) => format!("below {min}"),
                (None, Some(max)) => format!("above {max}"),
                (None, None) => return Err(Error::Internal(format!("range rule on {name} without bounds"))),
            };
            let outside = |value: f64| value.is_nan() || min.is_some_and(|min| value < min) || max.is_some_and(|max| value > max);
            // The value as a number to compare, and as the column shows it (for the detail): each
            // value is shown in its own type (a float32 rating 10.1 reads as 10.1, not 10.100000381).
            let check = |verdicts: &mut Verdicts, value_of: &dyn Fn(usize) -> f64, shown: &dyn Fn(usize) -> String| {
                verdicts.reject_each(reason, |row| (!is_null(row) && outside(value_of(row))).then(|| format!("{name} {} is {bounds}", shown(row))));
            };
            match column.data_type() {
                DataType::Float32 => {
                    let values = column.as_primitive::<Float32Type>();
                    check(verdicts, &|row| f64::from(values.value(row)), &|row| values.value(row).to_string());
                }
                DataType::Float64 => {
                    let values = column.as_primitive::<Float64Type>();
                    check(verdicts, &|row| values.value(row), &|row| values.value(row).to_string());
                }
                DataType::Int32 => {
                    let values = column.as_primitive::<Int32Type>();
                    check(verdicts, &|row| f64::from(values.value(row)), &|row| values.value(row).to_string());
                }
                DataType::Int64 => {
                    let values = column.as_primitive::<Int64Type>();
                    check(verdicts, &|row| values.value(row) as f64, &|row| values.value(row).to_string());
                }
                // The graph loader admits range rules on int, long, float and double columns only.
                other => return Err(Error::Internal(format!("range rule on {name}, a {other} column"))),
            }
        }
        Rule::NotAfterIngestion { unit, tolerance_ms } | Rule::NotBeforeIngestion { unit, tolerance_ms } => {
            let after = matches!(validation.rule, Rule::NotAfterIngestion { .. });
            let (values, unit, suffix) = match (column.data_type(), unit) {
                (DataType::Timestamp(..), _) => (order_values(column)?, TimeUnit::Microseconds, "µs"),
                (DataType::Date32, _) => (order_values(column)?.into_iter().map(|d| d.map(|d| d * 86_400_000_000)).collect(), TimeUnit::Microseconds, "µs"),
                (_, Some(unit)) => {
                    let suffix = match unit {
                        TimeUnit::Seconds => "s",
                        TimeUnit::Milliseconds => "ms",
                        TimeUnit::Microseconds => "µs",
                    };
                    (order_values(column)?, *unit, suffix)
                }
                (other, None) => return Err(Error::Internal(format!("an ingestion-time rule on {name} ({other}) without a unit"))),
            };
            let per_second = unit.per_second();
            // The ingestion time in the column's unit, rounded down (milliseconds to seconds: floor).
            let in_unit = |ms: i64| if per_second >= 1000 { ms * (per_second / 1000) } else { ms.div_euclid(1000 / per_second) };
            let tolerance = in_unit(*tolerance_ms);
            verdicts.reject_each(reason, |row| {
                let value = values[row]?;
                let ingested = in_unit(ingestion.value(row));
                if after && value > ingested + tolerance {
                    Some(format!("{name} {value} is {}{suffix} after ingestion (tolerance {tolerance}{suffix})", value - ingested))
                } else if !after && value < ingested - tolerance {
                    Some(format!("{name} {value} is {}{suffix} before ingestion (tolerance {tolerance}{suffix})", ingested - value))
                } else {
                    None
                }
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::sample::{RawEvent, format_event_id};
    use crate::test_fixture::ratings_rules;

    const DAY: i64 = 86_400;

    fn event(rating: Option<f32>, rating_timestamp: i64, ingestion_ts_ms: i64) -> RawEvent {
        RawEvent {
            event_id: Some("6F9619FF-8B86-D011-B42D-00C04FC964FF".into()),
            user_id: Some("u1".into()),
            movie_id: Some("m1".into()),
            rating,
            rating_timestamp: Some(rating_timestamp),
            source_topic: "t".into(),
            source_partition: 0,
            source_offset: 7,
            ingestion_ts_ms,
            undecodable: None,
        }
    }

    /// The reason each event gets (`None`: accepted), with the key and day of accepted ones.
    fn judge(events: &[RawEvent]) -> Vec<Result<(u128, i32), (String, String)>> {
        let rules = ratings_rules();
        let schema = crate::schema::arrow_schema(&rules.pipeline.raw_layout().unwrap().schema).unwrap();
        let judged = rules.judge(&crate::sample::raw_to_batch(&schema, events).unwrap()).unwrap();
        let mut out: Vec<Option<Result<(u128, i32), (String, String)>>> = vec![None; events.len()];
        for (i, row) in judged.accepted.iter().enumerate() {
            out[*row as usize] = Some(Ok((judged.keys[i], judged.days[i])));
        }
        for (i, row) in judged.rejected.iter().enumerate() {
            out[*row as usize] = Some(Err((judged.reasons[i].clone(), judged.details[i].clone())));
        }
        out.into_iter().map(|verdict| verdict.expect("every row judged once")).collect()
    }

    #[test]
    fn a_uuid_key_is_its_value_and_the_partition_is_the_utc_day() {
        let verdicts = judge(&[event(Some(7.0), 10 * DAY + 5, (10 * DAY + 60) * 1000), event(Some(6.99), 10 * DAY - 1, 10 * DAY * 1000)]);
        let (key, day) = verdicts[0].clone().unwrap();
        assert_eq!(format_event_id(key), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
        assert_eq!(day, 10);
        assert_eq!(verdicts[1].clone().unwrap().1, 9);
    }

    #[test]
    fn the_lateness_boundary_is_exact() {
        let ingest = 20 * DAY * 1000;
        let verdicts = judge(&[event(Some(5.0), 15 * DAY, ingest), event(Some(5.0), 15 * DAY - 1, ingest)]);
        assert!(verdicts[0].is_ok());
        let (reason, detail) = verdicts[1].clone().unwrap_err();
        assert_eq!(reason, "late");
        assert_eq!(detail, "rating_date 1970-01-15 is 6 days before ingestion date 1970-01-21 (lateness 5 days)");
    }

    #[test]
    fn invalid_values_are_rejected_with_the_first_failing_rules_reason_and_detail() {
        let ingest = 20 * DAY * 1000;
        let cases = [
            (event(Some(10.5), 20 * DAY, ingest), "rating_out_of_range", "rating 10.5 is outside 0..=10"),
            (event(Some(-0.1), 20 * DAY, ingest), "rating_out_of_range", "rating -0.1 is outside 0..=10"),
            (event(Some(f32::NAN), 20 * DAY, ingest), "rating_out_of_range", "rating NaN is outside 0..=10"),
            (event(None, 20 * DAY, ingest), "missing_field", "rating is missing"),
            (event(Some(5.0), 20 * DAY + 3601, ingest), "future_timestamp", "rating_timestamp 1731601 is 3601s after ingestion (tolerance 3600s)"),
            (RawEvent { event_id: Some(" ".into()), ..event(Some(5.0), 20 * DAY, ingest) }, "missing_event_id", "event_id is missing"),
            (RawEvent { event_id: Some("nope".into()), ..event(Some(5.0), 20 * DAY, ingest) }, "invalid_event_id", "event_id \"nope\" is not a UUID"),
            (RawEvent { user_id: Some(String::new()), ..event(Some(5.0), 20 * DAY, ingest) }, "missing_field", "user_id is missing"),
            // Two problems: the rule listed first decides.
            (RawEvent { movie_id: None, ..event(Some(11.0), 20 * DAY, ingest) }, "missing_field", "movie_id is missing"),
        ];
        let events: Vec<RawEvent> = cases.iter().map(|(e, _, _)| e.clone()).collect();
        for ((raw, reason, detail), verdict) in cases.iter().zip(judge(&events)) {
            assert_eq!(verdict, Err((reason.to_string(), detail.to_string())), "{raw:?}");
        }
        assert!(judge(&[event(Some(5.0), 20 * DAY + 3600, ingest)])[0].is_ok(), "the tolerance is inclusive");
    }
}
