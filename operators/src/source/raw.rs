//! The raw-table source of `--mode replay`.
//!
//! A replay of `from..=to` is planned up front:
//! - **epoch 0, seed**: the curated rows whose partition day is inside the lateness window of
//!   `from` (`>= from - lateness`): exactly the rows that records ingested on or after `from` can
//!   still replace. They enter the upsert as `Origin::Seed`, so the replay composes with what is
//!   already in the table.
//! - **frozen keys**: the keys of curated rows older than that window, each with its partition
//!   day. A record for one of them is a late update (its row can no longer move). Only the key and
//!   partition columns of the frozen partitions are read, once per run.
//! - **epochs 1..**: consecutive raw `ingestion_date` partitions in ascending order (ingestion
//!   order), as many per epoch as fit in `max_epoch_events` (always at least one). Every epoch is
//!   one commit, and a commit rewrites each curated partition the epoch changed, so bigger epochs
//!   mean less rewriting during a backfill and fewer snapshots; smaller epochs mean a finer replay
//!   cursor. Inside an epoch order does not matter: the upsert folds each key in ingestion order,
//!   so the result is the same for any epoch size.
//!
//! Files of an epoch are spread over the workers round-robin; each worker reads its own.

use std::collections::BTreeMap;

use iceberg::scan::FileScanTask;
use iceberg::table::Table;

use crate::error::{Error, Result};
use crate::model::{KeyMap, format_date};
use crate::reader::{date_at_least, date_at_most, date_before, plan, read_tasks};
use crate::records::order_values;
use crate::rules::Rules;

/// Consecutive raw partitions `first_day..=last_day`: one epoch's input.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    pub first_day: i32,
    pub last_day: i32,
    pub tasks: Vec<FileScanTask>,
    pub records: u64,
}

/// The upsert's starting state: the curated rows records ingested from a given day on can still
/// replace, and the keys they can no longer move.
#[derive(Debug, Clone, Default)]
pub struct StatePlan {
    pub seed_tasks: Vec<FileScanTask>,
    pub seed_records: u64,
    /// Key → partition day of every curated row older than the window.
    pub frozen: KeyMap<i32>,
}

#[derive(Debug, Clone)]
pub struct ReplayPlan {
    pub state: StatePlan,
    pub epochs: Vec<EpochPlan>,
}

impl EpochPlan {
    /// How many raw partitions the epoch reads.
    pub fn days(&self) -> usize {
        self.tasks.iter().filter_map(partition_of).collect::<std::collections::BTreeSet<_>>().len()
    }
}

impl ReplayPlan {
    pub fn input_records(&self) -> u64 {
        self.epochs.iter().map(|e| e.records).sum()
    }
}

pub fn partition_of(task: &FileScanTask) -> Option<i32> {
    use iceberg::spec::{Literal, PrimitiveLiteral};
    match task.partition.as_ref()?.fields().first() {
        Some(Some(Literal::Primitive(PrimitiveLiteral::Int(day)))) => Some(*day),
        _ => None,
    }
}

pub async fn plan_replay(
    raw: &Table,
    curated: &Table,
    from: i32,
    to: Option<i32>,
    rules: &Rules,
    max_epoch_events: u64,
) -> Result<ReplayPlan> {
    if let Some(to) = to
        && to < from
    {
        return Err(Error::User(format!("--from {} is after --to {}", format_date(from), format_date(to))));
    }
    let mut filter = date_at_least("ingestion_date", from);
    if let Some(to) = to {
        filter = filter.and(date_at_most("ingestion_date", to));
    }
    let mut by_day: BTreeMap<i32, EpochPlan> = BTreeMap::new();
    for task in plan(raw, Some(filter), None).await? {
        let day = partition_of(&task).ok_or_else(|| {
            Error::User(format!("raw table {} is not partitioned by ingestion_date", raw.identifier()))
        })?;
        let epoch =
            by_day.entry(day).or_insert_with(|| EpochPlan { first_day: day, last_day: day, tasks: Vec::new(), records: 0 });
        epoch.records += task.record_count.unwrap_or(0);
        epoch.tasks.push(task);
    }
    let mut epochs: Vec<EpochPlan> = Vec::new();
    for day in by_day.into_values() {
        match epochs.last_mut() {
            Some(epoch) if epoch.records + day.records <= max_epoch_events => {
                epoch.last_day = day.last_day;
                epoch.records += day.records;
                epoch.tasks.extend(day.tasks);
            }
            _ => epochs.push(day),
        }
    }

    let state = plan_state(curated, from - rules.lateness_days, rules).await?;
    Ok(ReplayPlan { state, epochs })
}

/// Seeds: curated rows whose partition day is `>= window_start`; frozen keys: the older ones (only
/// their key and partition columns are read).
pub async fn plan_state(curated: &Table, window_start: i32, rules: &Rules) -> Result<StatePlan> {
    let day_column = rules.pipeline.partitioning.column.as_str();
    let seed_tasks = plan(curated, Some(date_at_least(day_column, window_start)), None).await?;
    let seed_records = seed_tasks.iter().map(|t| t.record_count.unwrap_or(0)).sum();

    let mut frozen = KeyMap::default();
    let mut columns: Vec<&str> = rules.keys.columns().iter().map(String::as_str).collect();
    columns.push(day_column);
    let frozen_tasks = plan(curated, Some(date_before(day_column, window_start)), Some(&columns)).await?;
    read_tasks(curated, frozen_tasks, |batch| {
        let keys = rules.keys.keys(&batch)?.all("the curated table")?;
        let day_values = batch.column_by_name(day_column).ok_or_else(|| Error::User(format!("curated column {day_column} is missing")))?;
        for (key, day) in keys.into_iter().zip(order_values(day_values)?) {
            let day = day.ok_or_else(|| Error::User(format!("curated table holds a row without {day_column}")))?;
            frozen.insert(key, day as i32);
        }
        Ok(())
    })
    .await?;
    Ok(StatePlan { seed_tasks, seed_records, frozen })
}
