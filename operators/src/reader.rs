//! Reading tables back: whole scans with an optional filter, or a given list of file scan tasks.

use futures::{StreamExt, TryStreamExt};
use iceberg::expr::{Predicate, Reference};
use iceberg::scan::FileScanTask;
use iceberg::spec::Datum;
use iceberg::table::Table;

use arrow_array::RecordBatch;

use crate::error::{Context, Result};

/// `column >= day`, `column <= day`, `column < day` for date columns.
pub fn date_at_least(column: &str, day: i32) -> Predicate {
    Reference::new(column).greater_than_or_equal_to(Datum::date(day))
}

pub fn date_at_most(column: &str, day: i32) -> Predicate {
    Reference::new(column).less_than_or_equal_to(Datum::date(day))
}

pub fn date_before(column: &str, day: i32) -> Predicate {
    Reference::new(column).less_than(Datum::date(day))
}

/// Plans the files of the current snapshot that may hold rows matching `filter`.
pub async fn plan(table: &Table, filter: Option<Predicate>, columns: Option<&[&str]>) -> Result<Vec<FileScanTask>> {
    let mut scan = table.scan();
    if let Some(filter) = filter {
        scan = scan.with_filter(filter);
    }
    if let Some(columns) = columns {
        scan = scan.select(columns.iter().copied());
    }
    let scan = scan.build().context(|| format!("planning a scan of {}", table.identifier()))?;
    scan.plan_files()
        .await
        .context(|| format!("planning a scan of {}", table.identifier()))?
        .try_collect()
        .await
        .context(|| format!("planning a scan of {}", table.identifier()))
}

/// Rows per batch a scan yields: large enough that per-batch costs (a plugin call, an exchange,
/// a rules pass) vanish against per-row work, small enough to stay out of the allocator's huge
/// (OS-mapped) sizes for most columns. Parquet's own default is 1024.
pub const SCAN_BATCH_ROWS: usize = 65_536;

/// Reads the given tasks, calling `each` per batch.
pub async fn read_tasks(table: &Table, tasks: Vec<FileScanTask>, mut each: impl FnMut(RecordBatch) -> Result<()>) -> Result<()> {
    let context = || format!("reading data files of {}", table.identifier());
    // iceberg 0.10.1 can lose a wake-up when two tasks read concurrently need the same position
    // delete file (the second waits on a `Notify` created after the first signalled it) and the
    // scan then hangs. Tasks with delete files are therefore read one after the other.
    let reader = table.reader_builder().with_batch_size(SCAN_BATCH_ROWS);
    let reader = match tasks.iter().any(|task| !task.deletes.is_empty()) {
        true => reader.with_data_file_concurrency_limit(1),
        false => reader,
    };
    let tasks = futures::stream::iter(tasks.into_iter().map(Ok)).boxed();
    let mut batches = reader.build().read(tasks).context(context)?.stream();
    while let Some(batch) = batches.next().await {
        each(batch.context(context)?)?;
    }
    Ok(())
}

/// Reads every row matching `filter` (rows whose partition cannot match are never opened).
pub async fn scan(table: &Table, filter: Option<Predicate>, columns: Option<&[&str]>) -> Result<Vec<RecordBatch>> {
    let tasks = plan(table, filter, columns).await?;
    let mut batches = Vec::new();
    read_tasks(table, tasks, |batch| {
        batches.push(batch);
        Ok(())
    })
    .await?;
    Ok(batches)
}
