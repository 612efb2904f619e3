//! The batch job of a [`BatchPipeline`] for a range of execution days; semantics in the
//! [module above](super).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch, interleave_record_batch};
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use differential_dataflow::input::Input;
use iceberg::expr::Reference;
use iceberg::spec::Datum;
use serde::{Deserialize, Serialize};

use super::stages::apply_all;
use super::types::conform_batch;
use super::{BatchPipeline, EXECUTION_DATES_PROPERTY};
use crate::catalog::{Lakehouse, parse_table_ident};
use crate::checks::{Evaluation, Report};
use crate::commit::{live_files, replace_partitions};
use crate::error::{Context, Error, Result};
use crate::model::{SECONDS_PER_DAY, format_date};
use crate::reader::{plan, read_tasks, scan};
use crate::writer::write_partition;

/// Where a candidate's row is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Slot {
    /// Row `row` of staged batch `batch` (a raw record of an executed day).
    Raw { batch: u32, row: u32 },
    /// The key's curated row in partition `day`, a day this run does not recompute.
    Kept { day: i32 },
}

/// One record of a key, ordered the way "latest wins": order value, then ingestion day, then
/// position within the day.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Candidate {
    order: Option<i64>,
    day: i32,
    position: u64,
    slot: Slot,
}

/// What a batch run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobSummary {
    /// The days recomputed (those of the range that have raw data).
    pub executed: Vec<String>,
    pub raw_rows: u64,
    /// Records left out as late (only with `lateness`).
    pub late: u64,
    /// Records without a key.
    pub without_key: u64,
    /// Curated rows per recomputed day.
    pub rows_per_day: BTreeMap<String, u64>,
    /// Rows of other days removed because a record of an executed day superseded them.
    pub superseded_elsewhere: u64,
    /// Partitions the snapshot replaced.
    pub partitions_replaced: Vec<String>,
    pub snapshot_id: Option<i64>,
    /// The checks' one-line summary, when the graph declares checks.
    pub checks: Option<String>,
    /// Checks that failed with policy `warn` (the run still committed).
    pub warnings: Vec<String>,
}

/// Text of a key column's value (keys compare as text, integer keys included).
fn key_texts(column: &ArrayRef) -> Result<Vec<Option<String>>> {
    let text = cast(column, &DataType::Utf8).context(|| "reading the key column".into())?;
    Ok(text.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect())
}

/// The order column as integers (timestamps in their unit, dates in days).
fn order_values(column: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let numbers = match column.data_type() {
        DataType::Date32 => cast(&cast(column, &DataType::Int32).context(|| "reading the order column".into())?, &DataType::Int64),
        _ => cast(column, &DataType::Int64),
    }
    .context(|| "reading the order column".into())?;
    Ok(numbers.as_primitive::<Int64Type>().iter().collect())
}

/// The UTC day of an order value of `data_type`, for the late cut.
fn day_of(value: i64, data_type: &DataType) -> i64 {
    let per_day = match data_type {
        DataType::Timestamp(TimeUnit::Second, _) => SECONDS_PER_DAY,
        DataType::Timestamp(TimeUnit::Millisecond, _) => SECONDS_PER_DAY * 1_000,
        DataType::Timestamp(TimeUnit::Microsecond, _) => SECONDS_PER_DAY * 1_000_000,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => SECONDS_PER_DAY * 1_000_000_000,
        _ => 1,
    };
    value.div_euclid(per_day)
}

/// The greatest candidate per key, computed by a differential `reduce` over an arrangement of the
/// candidates by key (one timely worker: the job's data is read by one process anyway).
fn latest_per_key(candidates: Vec<(String, Candidate)>) -> Vec<(String, Candidate)> {
    timely::execute_directly(move |worker| {
        let winners: Rc<RefCell<Vec<(String, Candidate)>>> = Default::default();
        let sink = winners.clone();
        let mut input = worker.dataflow::<u32, _, _>(|scope| {
            let (input, candidates) = scope.new_collection::<(String, Candidate), isize>();
            candidates
                .reduce_named("LatestPerKey", |_key, values, output| {
                    // Values come sorted: the last present one is the greatest.
                    if let Some((winner, _)) = values.iter().rev().find(|(_, count)| *count > 0) {
                        output.push(((*winner).clone(), 1));
                    }
                })
                .inspect(move |((key, winner), _time, diff)| {
                    if *diff > 0 {
                        sink.borrow_mut().push((key.clone(), winner.clone()));
                    }
                });
            input
        });
        for candidate in candidates {
            input.insert(candidate);
        }
        input.close();
        while worker.step() {}
        winners.take()
    })
}

/// Runs the batch job for execution days `from..=to` (`to`: through the newest raw day).
pub async fn run(lakehouse: &Lakehouse, pipeline: &BatchPipeline, from: i32, to: Option<i32>) -> Result<JobSummary> {
    let raw = lakehouse.ensure_table(&parse_table_ident(&pipeline.raw.name)?, &pipeline.raw.layout()).await?;
    let curated_ident = parse_table_ident(&pipeline.curated.name)?;
    let curated = lakehouse.ensure_table(&curated_ident, &pipeline.curated.layout()).await?;
    let curated_schema = pipeline.curated.arrow_schema()?;
    let day_column = pipeline.raw.partition_by.as_str();
    let in_range = |day: i32| day >= from && to.is_none_or(|to| day <= to);

    // Raw files of the range, ordered by day, then import order.
    let files: HashMap<String, (i32, i64)> = live_files(&raw)
        .await?
        .into_iter()
        .filter(|f| !f.is_deletes())
        .filter_map(|f| {
            let day = f.partition.filter(|day| in_range(*day))?;
            Some((f.data_file.file_path().to_string(), (day, f.sequence_number.unwrap_or(0))))
        })
        .collect();
    let executed: BTreeSet<i32> = files.values().map(|(day, _)| *day).collect();
    let mut summary = JobSummary { executed: executed.iter().map(|d| format_date(*d)).collect(), ..Default::default() };
    if executed.is_empty() {
        return Ok(summary);
    }
    let mut filter = Reference::new(day_column).greater_than_or_equal_to(Datum::date(from));
    if let Some(to) = to {
        filter = filter.and(Reference::new(day_column).less_than_or_equal_to(Datum::date(to)));
    }
    let mut tasks = plan(&raw, Some(filter), None).await?;
    tasks.sort_by_key(|task| (files.get(&task.data_file_path).copied().unwrap_or((i32::MAX, i64::MAX)), task.data_file_path.clone(), task.start));

    // Stage every raw record of the executed days and make it a candidate.
    let order_type = curated_schema.field_with_name(&pipeline.order_by).map(|f| f.data_type().clone()).map_err(|e| Error::Internal(e.to_string()))?;
    let mut staged: Vec<RecordBatch> = Vec::new();
    let mut candidates: Vec<(String, Candidate)> = Vec::new();
    let mut positions: BTreeMap<i32, u64> = BTreeMap::new();
    for task in tasks {
        let path = task.data_file_path.clone();
        let Some(&(day, _)) = files.get(&path) else { continue };
        let mut batches = Vec::new();
        read_tasks(&raw, vec![task], |batch| {
            batches.push(batch);
            Ok(())
        })
        .await?;
        for batch in batches {
            summary.raw_rows += batch.num_rows() as u64;
            let batch = conform_batch(&apply_all(&pipeline.stages, &batch)?, &curated_schema)?;
            let keys = key_texts(batch.column_by_name(&pipeline.key).expect("conformed"))?;
            let orders = order_values(batch.column_by_name(&pipeline.order_by).expect("conformed"))?;
            let index = u32::try_from(staged.len()).map_err(|_| Error::Internal("more than 2^32 batches in one run".into()))?;
            let position = positions.entry(day).or_default();
            for (row, (key, order)) in keys.into_iter().zip(orders).enumerate() {
                *position += 1;
                let Some(key) = key else {
                    summary.without_key += 1;
                    tracing::warn!(file = %path, row, "record without {} left out", pipeline.key);
                    continue;
                };
                if let (Some(lateness), Some(order)) = (pipeline.lateness_days, order)
                    && day_of(order, &order_type) < i64::from(day - lateness)
                {
                    summary.late += 1;
                    continue;
                }
                candidates.push((key, Candidate { order, day, position: *position, slot: Slot::Raw { batch: index, row: row as u32 } }));
            }
            staged.push(batch);
        }
    }

    // Seed with the curated rows of every other day: only key, order and day are read.
    let seed_columns = [pipeline.key.as_str(), pipeline.order_by.as_str(), day_column];
    // The day each seeded key lives in: where a raw winner removes it from.
    let mut kept_days: HashMap<String, i32> = HashMap::new();
    for batch in scan(&curated, None, Some(&seed_columns)).await? {
        let keys = key_texts(batch.column(0))?;
        let orders = order_values(batch.column(1))?;
        let days = batch.column(2).as_primitive::<arrow::datatypes::Date32Type>();
        for ((key, order), day) in keys.into_iter().zip(orders).zip(days.iter()) {
            if let (Some(key), Some(day)) = (key, day)
                && !executed.contains(&day)
            {
                kept_days.insert(key.clone(), day);
                candidates.push((key, Candidate { order, day, position: 0, slot: Slot::Kept { day } }));
            }
        }
    }

    let winners = latest_per_key(candidates);
    let mut rows_of_day: BTreeMap<i32, Vec<(usize, usize)>> = executed.iter().map(|day| (*day, Vec::new())).collect();
    let mut superseded: BTreeMap<i32, HashSet<String>> = BTreeMap::new();
    for (key, winner) in winners {
        if let Slot::Raw { batch, row } = winner.slot {
            rows_of_day.entry(winner.day).or_default().push((batch as usize, row as usize));
            if let Some(&day) = kept_days.get(&key) {
                superseded.entry(day).or_default().insert(key);
            }
        }
    }

    // The new content of every partition the snapshot replaces.
    let mut content: BTreeMap<i32, Vec<RecordBatch>> = BTreeMap::new();
    let staged_refs: Vec<&RecordBatch> = staged.iter().collect();
    for (day, mut rows) in rows_of_day {
        rows.sort_unstable();
        let batch = if rows.is_empty() {
            RecordBatch::new_empty(curated_schema.clone())
        } else {
            interleave_record_batch(&staged_refs, &rows).context(|| format!("gathering the rows of {}", format_date(day)))?
        };
        summary.rows_per_day.insert(format_date(day), batch.num_rows() as u64);
        content.insert(day, vec![batch]);
    }
    for (day, keys) in &superseded {
        summary.superseded_elsewhere += keys.len() as u64;
        let filter = Reference::new(day_column).equal_to(Datum::date(*day));
        let mut remaining = Vec::new();
        for batch in scan(&curated, Some(filter), None).await? {
            let batch = conform_batch(&batch, &curated_schema)?;
            let column = key_texts(batch.column_by_name(&pipeline.key).expect("conformed"))?;
            let keep: BooleanArray = column.iter().map(|key| Some(!key.as_ref().is_some_and(|k| keys.contains(k)))).collect();
            remaining.push(filter_record_batch(&batch, &keep).context(|| format!("removing superseded rows of {}", format_date(*day)))?);
        }
        content.insert(*day, remaining);
    }

    // The gate: judge everything the replaced partitions will hold.
    if !pipeline.checks.is_empty() {
        let mut evaluation = Evaluation::new(pipeline.checks.clone());
        for batch in content.values().flatten() {
            evaluation.observe(batch)?;
        }
        let newest = *executed.last().expect("not empty");
        let report: Report = evaluation.finish((i64::from(newest) + 1) * SECONDS_PER_DAY, Some(&curated_schema));
        summary.checks = Some(report.summary());
        if report.fatal().next().is_some() {
            return Err(Error::ChecksFailed { table: pipeline.curated.name.clone(), summary: report.summary(), report: report.to_text() });
        }
        summary.warnings = report.failed().map(|r| r.name.clone()).collect();
    }

    let mut add = Vec::new();
    for (day, batches) in &content {
        let batches: Vec<RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).cloned().collect();
        if !batches.is_empty() {
            add.extend(write_partition(&curated, *day, batches, pipeline.target_file_size, "batch").await?);
        }
    }
    let partitions: BTreeSet<i32> = content.keys().copied().collect();
    summary.partitions_replaced = partitions.iter().map(|d| format_date(*d)).collect();
    let dates = summary.executed.join(",");
    let properties = BTreeMap::from([(EXECUTION_DATES_PROPERTY.to_string(), dates)]);
    let committed = replace_partitions(lakehouse, &curated_ident, partitions, add, properties, None, pipeline.commit).await?;
    summary.snapshot_id = committed.map(|c| c.snapshot_id);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The winners computed plainly (keep the greatest per key), the reference for
    /// [`latest_per_key`].
    fn oracle(candidates: &[(String, Candidate)]) -> BTreeMap<String, Candidate> {
        let mut best: BTreeMap<String, Candidate> = BTreeMap::new();
        for (key, candidate) in candidates {
            let entry = best.entry(key.clone()).or_insert_with(|| candidate.clone());
            if candidate > entry {
                *entry = candidate.clone();
            }
        }
        best
    }

    #[test]
    fn latest_per_key_matches_a_plain_maximum_on_random_candidates() {
        for seed in 0..6u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let candidates: Vec<(String, Candidate)> = (0..400)
                .map(|i| {
                    let day = rng.random_range(0..4);
                    // Coarse order values make ties common; some records have none.
                    let order = (rng.random_range(0..10) > 0).then(|| rng.random_range(0..6i64));
                    let slot = if rng.random_range(0..5) == 0 { Slot::Kept { day } } else { Slot::Raw { batch: 0, row: i } };
                    (format!("k{}", rng.random_range(0..60)), Candidate { order, day, position: u64::from(i), slot })
                })
                .collect();
            let expected = oracle(&candidates);
            let found: BTreeMap<String, Candidate> = latest_per_key(candidates).into_iter().collect();
            assert_eq!(found, expected, "seed {seed}");
        }
    }

    #[test]
    fn ties_go_to_the_later_day_then_the_later_record() {
        let at = |day, position| Candidate { order: Some(5), day, position, slot: Slot::Raw { batch: 0, row: position as u32 } };
        let winners = latest_per_key(vec![("a".into(), at(2, 1)), ("a".into(), at(1, 9)), ("b".into(), at(1, 3)), ("b".into(), at(1, 4))]);
        let winners: BTreeMap<String, Candidate> = winners.into_iter().collect();
        assert_eq!(winners["a"], at(2, 1));
        assert_eq!(winners["b"], at(1, 4));
        let none = Candidate { order: None, ..at(9, 9) };
        let winners: BTreeMap<String, Candidate> = latest_per_key(vec![("c".into(), none), ("c".into(), at(1, 1))]).into_iter().collect();
        assert_eq!(winners["c"], at(1, 1), "a record without an order value loses");
    }
}
