//! Data-quality checks: declared per table in the graph file, run on the data a commit is about
//! to publish (the gate) and on what a table already holds (`runtime check`).
//!
//! ```text
//!  rows about to be written (per worker, per partition)       a table's rows (runtime check)
//!        │ Evaluation::observe(batch)                                │ Evaluation::observe(batch)
//!        │   row checks → failing rows counted, sampled;             │
//!        │   `quarantine` rows returned to the caller (not written)  │
//!        │   table checks → counts, key hashes, newest value         │
//!        ▼                                                           ▼
//!  committer: merge the workers' evaluations ─► finish(reference time) ─► Report
//!        fail  → the epoch is not committed, the engine stops with the report (a restart retries)
//!        warn  → logged and counted, the epoch commits
//! ```
//!
//! Row checks (`not_null`, `range`, `uuid`, `pattern`) judge each row on its own and may `quarantine`: the
//! offending rows go to the rejected table with reason `check_failed` and the check's name, the
//! rest commits. Table checks (`unique`, `row_count`, `schema`, `freshness`) judge the data as a
//! whole and can only `fail` or `warn`.
//!
//! Edge cases: a null value fails `range` and `uuid` as well as `not_null` (a value that is not
//! there is not in range), and `pattern` (the whole value must match); NaN is never in range; `unique` keeps a
//! canonical (lower-case) UUID as its 128-bit value, exactly, and shows a repeated one in its
//! sample as itself; any other value it hashes to 128 bits (a false duplicate needs a hash
//! collision, ~2^-64 at a billion rows) and shows by its hash; `freshness` compares the newest
//! value with a reference time the caller gives (in the pipeline the newest ingestion time of the
//! epoch's records, so a replay judges exactly what the stream judged; in `runtime check` the
//! wall clock unless `--as-of` is given); `row_count` in the gate counts the rows an epoch
//! writes, which is zero for an epoch of duplicates only, so stream graphs usually leave it out.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

/// What happens when a check finds something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The epoch is not committed; the engine stops with the report.
    Fail,
    /// Offending rows go to the rejected table; the rest commits (row checks only).
    Quarantine,
    /// Logged and counted; everything commits.
    Warn,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Fail => "fail",
            Policy::Quarantine => "quarantine",
            Policy::Warn => "warn",
        }
    }
}

/// What a check tests.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    NotNull { column: String },
    /// Inclusive bounds; either may be open.
    Range { column: String, min: Option<f64>, max: Option<f64> },
    /// A string in the canonical 8-4-4-4-12 hex form.
    Uuid { column: String },
    /// A string the whole of which matches a regular expression.
    Pattern { column: String, pattern: TextPattern },
    Unique { column: String },
    /// `in_stream`: also judged on stream epochs (an epoch of only duplicates writes no rows, so
    /// a stream usually leaves it to replays and `runtime check`).
    RowCount { min: u64, in_stream: bool },
    /// The table's columns and their types (Arrow type names, e.g. `Utf8`, `Float32`, `Date32`).
    Schema { columns: Vec<(String, String)> },
    /// The newest value of `column` is at most `max_age_secs` older than the reference time.
    /// Int64 columns are epoch seconds; Date32 and timestamps are converted.
    Freshness { column: String, max_age_secs: i64 },
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::NotNull { .. } => "not_null",
            CheckKind::Range { .. } => "range",
            CheckKind::Uuid { .. } => "uuid",
            CheckKind::Pattern { .. } => "pattern",
            CheckKind::Unique { .. } => "unique",
            CheckKind::RowCount { .. } => "row_count",
            CheckKind::Schema { .. } => "schema",
            CheckKind::Freshness { .. } => "freshness",
        }
    }

    fn is_row_check(&self) -> bool {
        matches!(self, CheckKind::NotNull { .. } | CheckKind::Range { .. } | CheckKind::Uuid { .. } | CheckKind::Pattern { .. })
    }

    fn column(&self) -> Option<&str> {
        match self {
            CheckKind::NotNull { column }
            | CheckKind::Range { column, .. }
            | CheckKind::Uuid { column }
            | CheckKind::Pattern { column, .. }
            | CheckKind::Unique { column }
            | CheckKind::Freshness { column, .. } => Some(column),
            CheckKind::RowCount { .. } | CheckKind::Schema { .. } => None,
        }
    }

    fn expected(&self) -> String {
        match self {
            CheckKind::NotNull { column } => format!("{column} is never null"),
            CheckKind::Range { column, min, max } => {
                let bound = |b: &Option<f64>| b.map(|v| v.to_string()).unwrap_or_else(|| "…".into());
                format!("{column} in {}..={}", bound(min), bound(max))
            }
            CheckKind::Uuid { column } => format!("{column} is a UUID"),
            CheckKind::Pattern { column, pattern } => format!("{column} matches {}", pattern.text()),
            CheckKind::Unique { column } => format!("{column} is unique"),
            CheckKind::RowCount { min, .. } => format!("at least {min} rows"),
            CheckKind::Schema { columns } => format!("the {} declared columns, in order", columns.len()),
            CheckKind::Freshness { column, max_age_secs } => {
                format!("newest {column} at most {} old", humantime::format_duration(std::time::Duration::from_secs(*max_age_secs as u64)))
            }
        }
    }
}

/// The regular expression of a `pattern` check, anchored at both ends: the whole value must
/// match, as "exactly two letters" means.
#[derive(Debug, Clone)]
pub struct TextPattern {
    text: String,
    anchored: regex::Regex,
}

impl TextPattern {
    /// Compiles `text` (the `regex` crate's syntax). The error names what is wrong with it.
    pub fn new(text: &str) -> std::result::Result<TextPattern, String> {
        let anchored = regex::Regex::new(&format!("^(?:{text})$")).map_err(|e| e.to_string())?;
        Ok(TextPattern { text: text.to_string(), anchored })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, value: &str) -> bool {
        self.anchored.is_match(value)
    }
}

impl PartialEq for TextPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// One declared check.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub policy: Policy,
    pub kind: CheckKind,
}

/// A table's checks, validated against its schema.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    pub checks: Vec<Check>,
}

/// Rows a failing check shows in its report.
const SAMPLE_ROWS: usize = 5;

/// The two hashers of `unique`'s 128-bit fingerprints (fixed seeds: fingerprints from different
/// workers must agree).
const UNIQUE_HASH: [foldhash::quality::FixedState; 2] =
    [foldhash::quality::FixedState::with_seed(0x5eed_0001), foldhash::quality::FixedState::with_seed(0x5eed_0002)];

impl Checks {
    pub fn new(checks: Vec<Check>) -> Result<Checks> {
        let mut names = HashSet::new();
        for check in &checks {
            if !names.insert(check.name.as_str()) {
                return Err(Error::User(format!("check `{}` is declared twice", check.name)));
            }
            if check.policy == Policy::Quarantine && !check.kind.is_row_check() {
                return Err(Error::User(format!(
                    "check `{}`: policy quarantine needs a row check (not_null, range, uuid); a {} check can only fail or warn",
                    check.name,
                    check.kind.name()
                )));
            }
        }
        Ok(Checks { checks })
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Checks that every column a check names exists in `schema` with a type the check reads.
    pub fn validate(&self, table: &str, schema: &Schema) -> Result<()> {
        for check in &self.checks {
            let Some(column) = check.kind.column() else { continue };
            let field = schema.field_with_name(column).map_err(|_| {
                let known: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                Error::User(format!("check `{}` on {table}: no column {column:?} (columns: {})", check.name, known.join(", ")))
            })?;
            let data_type = field.data_type();
            let fits = match &check.kind {
                CheckKind::Range { .. } => data_type.is_numeric(),
                CheckKind::Uuid { .. } | CheckKind::Pattern { .. } => {
                    matches!(data_type, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
                }
                CheckKind::Freshness { .. } => {
                    matches!(data_type, DataType::Int64 | DataType::Date32 | DataType::Timestamp(_, _))
                }
                _ => true,
            };
            if !fits {
                return Err(Error::User(format!(
                    "check `{}` on {table}: a {} check cannot read column {column} of type {data_type}",
                    check.name,
                    check.kind.name()
                )));
            }
        }
        Ok(())
    }

    /// What check `name` expects, for rejection details.
    pub fn expected(&self, name: &str) -> String {
        self.checks.iter().find(|c| c.name == name).map(|c| c.kind.expected()).unwrap_or_default()
    }
}

/// What one check found so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CheckState {
    failing: u64,
    sample: Vec<String>,
    /// `unique`: the 128-bit hash of every value seen that is not a canonical UUID, in no order.
    /// Duplicates are found once, by sorting, in `finish`: far cheaper than a hash set probed per
    /// row (a cache miss each on a set of an epoch's million keys) and merged key by key across
    /// workers.
    seen: Vec<u128>,
    /// `unique`: every canonical (lower-case) UUID seen, as its value. No hash: the value is the
    /// text, exactly, so a duplicate is certain and its sample can show it; and rows written in
    /// key order (the curated writer's parts) come as ascending runs, which `finish` merges
    /// instead of sorting. No such text equals a value of `seen`, which holds other texts.
    seen_uuids: Vec<u128>,
    /// `freshness`: the newest value seen, in epoch seconds.
    newest: Option<i64>,
}

/// Checks running over batches; merge the evaluations of several workers, then [`finish`].
///
/// [`finish`]: Evaluation::finish
#[derive(Debug, Clone)]
pub struct Evaluation {
    checks: Arc<Checks>,
    states: Vec<CheckState>,
    rows: u64,
    quarantined: u64,
    /// The schema of the batches seen (for `schema` checks).
    schema: Option<Arc<Schema>>,
    /// `false` when judging what a table already holds: nothing is quarantined, every row counts.
    quarantine: bool,
    /// Judging a stream epoch: `row_count` checks without `in_stream` pass without judging.
    stream_epoch: bool,
}

/// An [`Evaluation`] without its checks: what a worker sends to the committing worker, possibly in
/// another process, which judges it with its own copy of the checks ([`Evaluation::resume`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluationState {
    states: Vec<CheckState>,
    rows: u64,
    quarantined: u64,
    #[serde(with = "crate::records::ipc_schema")]
    schema: Option<Arc<Schema>>,
    quarantine: bool,
    stream_epoch: bool,
}

impl Evaluation {
    /// Judges data about to be published: `quarantine` checks refuse rows.
    pub fn new(checks: Arc<Checks>) -> Evaluation {
        let states = vec![CheckState::default(); checks.checks.len()];
        Evaluation { checks, states, rows: 0, quarantined: 0, schema: None, quarantine: true, stream_epoch: false }
    }

    /// The same evaluation, judged as a stream epoch.
    pub fn for_stream_epoch(self) -> Evaluation {
        Evaluation { stream_epoch: true, ..self }
    }

    /// What this evaluation found, without the checks.
    pub fn into_state(self) -> EvaluationState {
        let Evaluation { checks: _, states, rows, quarantined, schema, quarantine, stream_epoch } = self;
        EvaluationState { states, rows, quarantined, schema, quarantine, stream_epoch }
    }

    /// Continues what `state` found with `checks` (the same checks, in the same order).
    pub fn resume(checks: Arc<Checks>, state: EvaluationState) -> Result<Evaluation> {
        let EvaluationState { states, rows, quarantined, schema, quarantine, stream_epoch } = state;
        if states.len() != checks.checks.len() {
            return Err(Error::Internal(format!("an evaluation of {} checks arrived for {} checks", states.len(), checks.checks.len())));
        }
        Ok(Evaluation { checks, states, rows, quarantined, schema, quarantine, stream_epoch })
    }

    /// Judges data already published (`runtime check`): rows are only counted and sampled.
    pub fn judging_only(checks: Arc<Checks>) -> Evaluation {
        Evaluation { quarantine: false, ..Evaluation::new(checks) }
    }

    /// Runs every check over `batch`. Returns the rows that `quarantine` checks refuse (`true` =
    /// quarantine), with for each such row the name of the first check it failed; `None` when no
    /// row is quarantined. Quarantined rows still count for the other checks' reports but not for
    /// the table checks (they will not be published).
    pub fn observe(&mut self, batch: &RecordBatch) -> Result<Option<Quarantine>> {
        if self.schema.is_none() {
            self.schema = Some(batch.schema());
        }
        let rows = batch.num_rows();
        let ctx = || "running data-quality checks".to_string();
        let mut quarantine: Option<(BooleanBufferBuilder, Vec<Option<usize>>)> = None;
        for (index, check) in self.checks.checks.iter().enumerate() {
            if !check.kind.is_row_check() {
                continue;
            }
            let column = column(batch, check.kind.column().expect("row checks name a column"))?;
            if passes_whole(&check.kind, column)? {
                continue;
            }
            let failing = failing_rows(&check.kind, column)?;
            let count = failing.true_count();
            if count == 0 {
                continue;
            }
            let state = &mut self.states[index];
            state.failing += count as u64;
            for row in failing.iter().enumerate().filter(|(_, f)| *f == Some(true)).map(|(row, _)| row) {
                if state.sample.len() >= SAMPLE_ROWS {
                    break;
                }
                state.sample.push(render_row(batch, row));
            }
            if check.policy == Policy::Quarantine && self.quarantine {
                let (mask, first) = quarantine.get_or_insert_with(|| {
                    let mut mask = BooleanBufferBuilder::new(rows);
                    mask.append_n(rows, false);
                    (mask, vec![None; rows])
                });
                for row in failing.iter().enumerate().filter(|(_, f)| *f == Some(true)).map(|(row, _)| row) {
                    if first[row].is_none() {
                        mask.set_bit(row, true);
                        first[row] = Some(index);
                    }
                }
            }
        }
        let quarantine = quarantine.map(|(mut mask, first)| Quarantine {
            rows: BooleanArray::new(mask.finish(), None),
            check_of_row: first,
            checks: self.checks.clone(),
        });
        let kept = match &quarantine {
            Some(q) => arrow::compute::filter_record_batch(batch, &arrow::compute::not(&q.rows).context(ctx)?).context(ctx)?,
            None => batch.clone(),
        };
        self.quarantined += quarantine.as_ref().map(|q| q.rows.true_count() as u64).unwrap_or(0);
        self.rows += kept.num_rows() as u64;
        for (index, check) in self.checks.checks.iter().enumerate() {
            let state = &mut self.states[index];
            match &check.kind {
                CheckKind::Unique { column: name } => {
                    let values = column(&kept, name)?;
                    // Strings hash as they are; other types by their text (no per-row allocation
                    // for the usual string keys).
                    let strings = values.as_string_opt::<i32>();
                    let formatter = ArrayFormatter::try_new(values.as_ref(), &FormatOptions::default()).context(ctx)?;
                    // Room for the kind of value the column starts with: a key holds one kind.
                    let starts_with_uuid =
                        strings.is_some_and(|s| !s.is_empty() && s.is_valid(0) && crate::canonical_uuid::parse(s.value(0).as_bytes()).is_some());
                    if starts_with_uuid {
                        state.seen_uuids.reserve(values.len());
                    } else {
                        state.seen.reserve(values.len());
                    }
                    for row in 0..values.len() {
                        let text;
                        let value = match (values.is_null(row), strings) {
                            (true, _) => None,
                            (false, Some(strings)) => Some(strings.value(row)),
                            (false, None) => {
                                text = formatter.value(row).to_string();
                                Some(text.as_str())
                            }
                        };
                        match value.and_then(|text| crate::canonical_uuid::parse(text.as_bytes())) {
                            Some(uuid) => state.seen_uuids.push(uuid),
                            // Two independently seeded 64-bit hashes make the 128-bit fingerprint.
                            None => state.seen.push((u128::from(UNIQUE_HASH[0].hash_one(value)) << 64) | u128::from(UNIQUE_HASH[1].hash_one(value))),
                        }
                    }
                }
                CheckKind::Freshness { column: name, .. } => {
                    if let Some(newest) = newest_seconds(column(&kept, name)?)? {
                        state.newest = Some(state.newest.map_or(newest, |n| n.max(newest)));
                    }
                }
                _ => {}
            }
        }
        Ok(quarantine)
    }

    /// Adds another worker's evaluation of the same checks.
    pub fn merge(&mut self, other: Evaluation) {
        self.rows += other.rows;
        self.quarantined += other.quarantined;
        if self.schema.is_none() {
            self.schema = other.schema;
        }
        for (mine, theirs) in self.states.iter_mut().zip(other.states) {
            mine.failing += theirs.failing;
            for sample in theirs.sample {
                if mine.sample.len() < SAMPLE_ROWS {
                    mine.sample.push(sample);
                }
            }
            // A value seen by two workers is a duplicate too: `finish` judges all of them at once.
            append_to_larger(&mut mine.seen, theirs.seen);
            append_to_larger(&mut mine.seen_uuids, theirs.seen_uuids);
            mine.newest = match (mine.newest, theirs.newest) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
    }

    /// Rows seen that were not quarantined.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The report. `reference_secs` is the time `freshness` measures against (epoch seconds);
    /// `schema` the table's schema (the batches' schema when `None`).
    pub fn finish(self, reference_secs: i64, schema: Option<&Schema>) -> Report {
        let schema = schema.cloned().or_else(|| self.schema.as_deref().cloned());
        let results = self
            .checks
            .checks
            .iter()
            .zip(self.states)
            .map(|(check, mut state)| {
                let (passed, found) = match &check.kind {
                    CheckKind::NotNull { .. } | CheckKind::Range { .. } | CheckKind::Uuid { .. } | CheckKind::Pattern { .. } => {
                        (state.failing == 0, format!("{} failing rows", state.failing))
                    }
                    CheckKind::Unique { .. } => {
                        state.failing += duplicates(&mut state.seen_uuids, &mut state.sample, |uuid| uuid::Uuid::from_u128(uuid).to_string());
                        state.failing += duplicates(&mut state.seen, &mut state.sample, |hash| format!("hash {hash:032x}"));
                        (state.failing == 0, format!("{} duplicate values", state.failing))
                    }
                    CheckKind::RowCount { in_stream: false, .. } if self.stream_epoch => {
                        (true, "not judged on stream epochs (in_stream = false)".to_string())
                    }
                    CheckKind::RowCount { min, .. } => (self.rows >= *min, format!("{} rows", self.rows)),
                    CheckKind::Schema { columns } => match &schema {
                        Some(schema) => {
                            let found: Vec<(String, String)> =
                                schema.fields().iter().map(|f| (f.name().clone(), type_text(f.data_type()))).collect();
                            (&found == columns, schema_difference(columns, &found))
                        }
                        None => (true, "no rows, nothing to compare".into()),
                    },
                    CheckKind::Freshness { max_age_secs, .. } => match state.newest {
                        Some(newest) => {
                            let age = reference_secs - newest;
                            let newest_text = chrono::DateTime::from_timestamp(newest, 0)
                                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                                .unwrap_or_else(|| newest.to_string());
                            let age_text = humantime::format_duration(std::time::Duration::from_secs(age.max(0) as u64));
                            (age <= *max_age_secs, format!("newest {newest_text}, {age_text} old"))
                        }
                        // Nothing is published, so nothing is stale; `row_count` judges emptiness.
                        None => (true, "no rows to judge".into()),
                    },
                };
                CheckResult {
                    name: check.name.clone(),
                    kind: check.kind.name(),
                    policy: check.policy,
                    passed,
                    expected: check.kind.expected(),
                    found,
                    failing_rows: state.failing,
                    sample: if passed { Vec::new() } else { state.sample },
                }
            })
            .collect();
        Report { rows: self.rows, quarantined: self.quarantined, results }
    }
}

/// Appends `theirs` to `mine`, or `mine` to `theirs` when that list is the longer: the longer one
/// keeps its place, and only the shorter is copied (a million values per worker in an epoch).
/// Order does not matter to [`duplicates`].
fn append_to_larger(mine: &mut Vec<u128>, mut theirs: Vec<u128>) {
    if theirs.len() > mine.len() {
        std::mem::swap(mine, &mut theirs);
    }
    mine.extend(theirs);
}

/// How many of `fingerprints` repeat an earlier one (a value seen `n` times counts `n - 1`); up to
/// [`SAMPLE_ROWS`] repeated values go to `sample`, as `shown` renders a fingerprint. Sorts
/// `fingerprints`.
fn duplicates(fingerprints: &mut [u128], sample: &mut Vec<String>, shown: impl Fn(u128) -> String) -> u64 {
    // A few long ascending runs (UUID keys of rows written in key order, one run per part) are
    // merged by the stable sort, which finds them: 25 against 34 ms for a million in 14 runs.
    // Anything else (hashes) sorts faster unstably: 33 against 55 ms for a million.
    let descents = fingerprints.windows(2).filter(|pair| pair[1] < pair[0]).count();
    if descents <= fingerprints.len() / 1024 {
        fingerprints.sort();
    } else {
        fingerprints.sort_unstable();
    }
    let mut repeats = 0;
    for same in fingerprints.chunk_by(|a, b| a == b).filter(|same| same.len() > 1) {
        repeats += same.len() as u64 - 1;
        if sample.len() < SAMPLE_ROWS {
            sample.push(format!("(a value seen {} times, {})", same.len(), shown(same[0])));
        }
    }
    repeats
}

/// Rows refused by `quarantine` checks in one batch.
#[derive(Debug, Clone)]
pub struct Quarantine {
    /// `true` for each refused row.
    pub rows: BooleanArray,
    check_of_row: Vec<Option<usize>>,
    checks: Arc<Checks>,
}

impl Quarantine {
    /// The name of the check that refused `row` (the first one, when several did).
    pub fn check_name(&self, row: usize) -> Option<&str> {
        self.check_of_row.get(row).copied().flatten().map(|index| self.checks.checks[index].name.as_str())
    }
}

/// The outcome of every check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Rows judged (quarantined rows excluded).
    pub rows: u64,
    pub quarantined: u64,
    pub results: Vec<CheckResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub kind: &'static str,
    pub policy: Policy,
    pub passed: bool,
    pub expected: String,
    pub found: String,
    pub failing_rows: u64,
    /// Up to five offending rows, rendered `column=value, …`.
    pub sample: Vec<String>,
}

impl Report {
    /// Checks that failed with policy `fail`.
    pub fn fatal(&self) -> impl Iterator<Item = &CheckResult> {
        self.results.iter().filter(|r| !r.passed && r.policy == Policy::Fail)
    }

    pub fn failed(&self) -> impl Iterator<Item = &CheckResult> {
        self.results.iter().filter(|r| !r.passed)
    }

    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    /// One line for logs: `passed=N failed=[name (policy): found, …]`.
    pub fn summary(&self) -> String {
        let failed: Vec<String> = self.failed().map(|r| format!("{} ({}): {}", r.name, r.policy.as_str(), r.found)).collect();
        format!("{} checks, {} passed, failed [{}]", self.results.len(), self.results.len() - failed.len(), failed.join("; "))
    }

    /// The report as aligned text: one line per check, then the failing checks' samples.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let width = self.results.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
        out.push_str(&format!("{:<width$}  {:<6}  {:<10}  {:<40}  found\n", "check", "result", "policy", "expected"));
        for r in &self.results {
            let result = if r.passed { "ok" } else { "FAILED" };
            out.push_str(&format!("{:<width$}  {result:<6}  {:<10}  {:<40}  {}\n", r.name, r.policy.as_str(), r.expected, r.found));
        }
        for r in self.failed() {
            if r.sample.is_empty() {
                continue;
            }
            out.push_str(&format!("\n{} — failing rows (up to {SAMPLE_ROWS}):\n", r.name));
            for row in &r.sample {
                out.push_str(&format!("  {row}\n"));
            }
        }
        out.push_str(&format!("\n{} rows checked", self.rows));
        if self.quarantined > 0 {
            out.push_str(&format!(", {} quarantined", self.quarantined));
        }
        out
    }
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| Error::Internal(format!("checked batch has no column {name}")))
}

/// Whether every row passes the row check `kind`, decided from the column as a whole (null count,
/// minimum and maximum, or one pass that stops at the first bad value) so clean batches skip
/// building the per-row answer.
fn passes_whole(kind: &CheckKind, values: &ArrayRef) -> Result<bool> {
    if values.null_count() > 0 {
        return Ok(false);
    }
    Ok(match kind {
        CheckKind::NotNull { .. } => true,
        CheckKind::Uuid { .. } => values.as_string_opt::<i32>().is_some_and(|text| text.iter().all(|value| value.is_some_and(is_canonical_uuid))),
        CheckKind::Range { min, max, .. } => {
            let numbers = cast(values, &DataType::Float64).context(|| "running a range check".into())?;
            let numbers = numbers.as_primitive::<arrow::datatypes::Float64Type>();
            // Arrow orders NaN above every number, so a NaN shows up as the maximum.
            match (arrow::compute::min(numbers), arrow::compute::max(numbers)) {
                (Some(low), Some(high)) => {
                    !high.is_nan() && min.is_none_or(|m| low >= m) && max.is_none_or(|m| high <= m)
                }
                _ => true,
            }
        }
        _ => false,
    })
}

/// `true` where the row fails `kind` (a row check).
fn failing_rows(kind: &CheckKind, values: &ArrayRef) -> Result<BooleanArray> {
    let ctx = || format!("running a {} check", kind.name());
    let nulls = |values: &ArrayRef| -> Vec<bool> { (0..values.len()).map(|row| values.is_null(row)).collect() };
    Ok(match kind {
        CheckKind::NotNull { .. } => BooleanArray::from(nulls(values)),
        CheckKind::Range { min, max, .. } => {
            let numbers = cast(values, &DataType::Float64).context(ctx)?;
            let numbers = numbers.as_primitive::<arrow::datatypes::Float64Type>();
            numbers
                .iter()
                .map(|value| {
                    Some(match value {
                        None => true,
                        Some(v) => v.is_nan() || min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m),
                    })
                })
                .collect()
        }
        CheckKind::Uuid { .. } => {
            let text = cast(values, &DataType::Utf8).context(ctx)?;
            text.as_string::<i32>().iter().map(|value| Some(!value.is_some_and(is_canonical_uuid))).collect()
        }
        CheckKind::Pattern { pattern, .. } => {
            let text = cast(values, &DataType::Utf8).context(ctx)?;
            text.as_string::<i32>().iter().map(|value| Some(!value.is_some_and(|v| pattern.matches(v)))).collect()
        }
        _ => return Err(Error::Internal(format!("{} is not a row check", kind.name()))),
    })
}

/// How `schema` checks write a type: Arrow's own text of it without what readers and writers
/// label differently for the same data (field metadata such as Parquet field ids, the name of list
/// items, nullability of nested fields), so `List(Struct("id": Int64, "name": Utf8))` is one type
/// whichever file or scan it came from.
pub fn type_text(data_type: &DataType) -> String {
    fn plain(data_type: &DataType) -> DataType {
        use arrow::datatypes::Field;
        match data_type {
            DataType::List(item) => DataType::List(Arc::new(Field::new_list_field(plain(item.data_type()), true))),
            DataType::LargeList(item) => DataType::LargeList(Arc::new(Field::new_list_field(plain(item.data_type()), true))),
            DataType::Struct(fields) => {
                DataType::Struct(fields.iter().map(|f| Field::new(f.name(), plain(f.data_type()), true)).collect())
            }
            other => other.clone(),
        }
    }
    plain(data_type).to_string()
}

/// Which bytes are hex digits, either case.
const HEX_DIGIT: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = (byte as u8).is_ascii_hexdigit();
        byte += 1;
    }
    table
};

/// `8-4-4-4-12` hex digits, either case.
fn is_canonical_uuid(text: &str) -> bool {
    let Ok(bytes) = <&[u8; 36]>::try_from(text.as_bytes()) else { return false };
    // Runs on every row written: a fixed-length loop without early exits unrolls into branch-free
    // table lookups (~8x faster than testing group by group).
    let mut canonical = true;
    for (position, &byte) in bytes.iter().enumerate() {
        canonical &= if matches!(position, 8 | 13 | 18 | 23) { byte == b'-' } else { HEX_DIGIT[usize::from(byte)] };
    }
    canonical
}

/// The newest value of a time column, in epoch seconds.
fn newest_seconds(values: &ArrayRef) -> Result<Option<i64>> {
    let seconds = match values.data_type() {
        DataType::Int64 => values.clone(),
        DataType::Date32 => {
            let days = values.as_primitive::<arrow::datatypes::Date32Type>();
            Arc::new(arrow::array::Int64Array::from_iter(days.iter().map(|d| d.map(|d| i64::from(d) * 86_400)))) as ArrayRef
        }
        DataType::Timestamp(_, _) => {
            let ctx = || "reading a freshness column".to_string();
            cast(&cast(values, &DataType::Timestamp(TimeUnit::Second, None)).context(ctx)?, &DataType::Int64).context(ctx)?
        }
        other => return Err(Error::Internal(format!("freshness cannot read a {other} column"))),
    };
    Ok(arrow::compute::max(seconds.as_primitive::<arrow::datatypes::Int64Type>()))
}

/// How `found` differs from `declared`, in words.
fn schema_difference(declared: &[(String, String)], found: &[(String, String)]) -> String {
    if declared == found {
        return "as declared".into();
    }
    let type_of = |columns: &[(String, String)], name: &str| columns.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone());
    let mut differences = Vec::new();
    for (name, data_type) in declared {
        match type_of(found, name) {
            None => differences.push(format!("{name} missing")),
            Some(other) if &other != data_type => differences.push(format!("{name} is {other}, not {data_type}")),
            Some(_) => {}
        }
    }
    for (name, data_type) in found {
        if type_of(declared, name).is_none() {
            differences.push(format!("{name} {data_type} not declared"));
        }
    }
    if differences.is_empty() {
        differences.push("the same columns in another order".into());
    }
    differences.join("; ")
}

/// `column=value, …` for one row.
fn render_row(batch: &RecordBatch, row: usize) -> String {
    let schema = batch.schema();
    let options = FormatOptions::default().with_null("null");
    let fields: Vec<String> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .filter(|(_, field)| !matches!(field.data_type(), DataType::Binary | DataType::LargeBinary))
        .map(|(values, field)| match ArrayFormatter::try_new(values.as_ref(), &options) {
            Ok(formatter) => format!("{}={}", field.name(), formatter.value(row)),
            Err(_) => format!("{}=?", field.name()),
        })
        .collect();
    fields.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Float32Array, Int64Array, StringArray};

    #[test]
    fn canonical_uuid_agrees_with_the_uuid_crate_on_every_byte_at_every_position() {
        let valid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        for position in 0..valid.len() {
            for byte in 0..=u8::MAX {
                let mut bytes = valid.as_bytes().to_vec();
                bytes[position] = byte;
                let Ok(text) = String::from_utf8(bytes) else { continue };
                // At 36 bytes the uuid crate accepts only the hyphenated form.
                let oracle = text.len() == 36 && uuid::Uuid::try_parse(&text).is_ok();
                assert_eq!(is_canonical_uuid(&text), oracle, "{text:?}");
            }
        }
    }

    #[test]
    fn canonical_uuid_is_five_hex_groups_8_4_4_4_12() {
        assert!(is_canonical_uuid("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(is_canonical_uuid("0F8FAD5B-D9CB-469F-A165-70867728950E"));
        for bad in [
            "",
            "0f8fad5bd9cb469fa16570867728950e",
            "0f8fad5b-d9cb-469f-a165-70867728950",
            "0f8fad5b-d9cb-469f-a165-70867728950e0",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
            "0f8fad5bd-9cb-469f-a165-70867728950e",
            "0f8fad5b-d9cb-469f-a16570867728-950e",
            "0f8fad5b-d9cb-469f-a165-7086772895-e",
            "-f8fad5b-d9cb-469f-a165-70867728950e",
        ] {
            assert!(!is_canonical_uuid(bad), "{bad}");
        }
    }

    fn batch(ids: Vec<Option<&str>>, ratings: Vec<Option<f32>>, ts: Vec<i64>) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("event_id", Arc::new(StringArray::from(ids)) as ArrayRef),
            ("rating", Arc::new(Float32Array::from(ratings)) as ArrayRef),
            ("rating_timestamp", Arc::new(Int64Array::from(ts)) as ArrayRef),
        ])
        .unwrap()
    }

    fn check(name: &str, policy: Policy, kind: CheckKind) -> Check {
        Check { name: name.into(), policy, kind }
    }

    const A: &str = "0b9a1d3e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
    const B: &str = "1b9a1d3e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";

    #[test]
    fn row_checks_count_sample_and_quarantine_the_offending_rows() {
        let checks = Arc::new(
            Checks::new(vec![
                check("ids", Policy::Quarantine, CheckKind::Uuid { column: "event_id".into() }),
                check("rating_range", Policy::Quarantine, CheckKind::Range { column: "rating".into(), min: Some(0.0), max: Some(10.0) }),
                check("rating_present", Policy::Warn, CheckKind::NotNull { column: "rating".into() }),
            ])
            .unwrap(),
        );
        let data = batch(
            vec![Some(A), Some("not-a-uuid"), Some(B), None, Some(A)],
            vec![Some(7.0), Some(5.0), Some(10.5), Some(3.0), None],
            vec![0; 5],
        );
        let mut evaluation = Evaluation::new(checks);
        let quarantine = evaluation.observe(&data).unwrap().unwrap();
        let refused: Vec<bool> = quarantine.rows.iter().map(|r| r.unwrap()).collect();
        assert_eq!(refused, [false, true, true, true, true]);
        assert_eq!(quarantine.check_name(1), Some("ids"));
        assert_eq!(quarantine.check_name(2), Some("rating_range"));
        assert_eq!(quarantine.check_name(4), Some("rating_range"), "a null rating is out of range");
        let report = evaluation.finish(0, None);
        assert_eq!(report.rows, 1);
        assert_eq!(report.quarantined, 4);
        let failing: Vec<(&str, u64)> = report.results.iter().map(|r| (r.name.as_str(), r.failing_rows)).collect();
        assert_eq!(failing, [("ids", 2), ("rating_range", 2), ("rating_present", 1)]);
        assert!(report.results[0].sample[0].contains("event_id=not-a-uuid"), "{:?}", report.results[0].sample);
        assert_eq!(report.fatal().count(), 0);
    }

    #[test]
    fn clean_data_passes_every_check() {
        let checks = Arc::new(
            Checks::new(vec![
                check("ids", Policy::Fail, CheckKind::Uuid { column: "event_id".into() }),
                check("unique", Policy::Fail, CheckKind::Unique { column: "event_id".into() }),
                check("rows", Policy::Fail, CheckKind::RowCount { min: 2, in_stream: false }),
                check("fresh", Policy::Fail, CheckKind::Freshness { column: "rating_timestamp".into(), max_age_secs: 60 }),
                check(
                    "schema",
                    Policy::Fail,
                    CheckKind::Schema {
                        columns: vec![
                            ("event_id".into(), "Utf8".into()),
                            ("rating".into(), "Float32".into()),
                            ("rating_timestamp".into(), "Int64".into()),
                        ],
                    },
                ),
            ])
            .unwrap(),
        );
        let mut evaluation = Evaluation::new(checks);
        assert!(evaluation.observe(&batch(vec![Some(A), Some(B)], vec![Some(1.0), Some(2.0)], vec![100, 200])).unwrap().is_none());
        let report = evaluation.finish(230, None);
        assert!(report.passed(), "{}", report.to_text());
    }

    #[test]
    fn table_checks_fire_on_data_crafted_to_break_them_also_across_workers() {
        let checks = Arc::new(
            Checks::new(vec![
                check("unique", Policy::Fail, CheckKind::Unique { column: "event_id".into() }),
                check("rows", Policy::Warn, CheckKind::RowCount { min: 10, in_stream: false }),
                check("fresh", Policy::Fail, CheckKind::Freshness { column: "rating_timestamp".into(), max_age_secs: 60 }),
                check("schema", Policy::Fail, CheckKind::Schema { columns: vec![("event_id".into(), "Utf8".into())] }),
            ])
            .unwrap(),
        );
        let mut first = Evaluation::new(checks.clone());
        first.observe(&batch(vec![Some(A), Some(B)], vec![Some(1.0); 2], vec![100, 200])).unwrap();
        let mut second = Evaluation::new(checks);
        second.observe(&batch(vec![Some(A)], vec![Some(1.0)], vec![150])).unwrap();
        first.merge(second);
        let report = first.finish(261, None);
        let verdicts: Vec<(&str, bool)> = report.results.iter().map(|r| (r.name.as_str(), r.passed)).collect();
        assert_eq!(verdicts, [("unique", false), ("rows", false), ("fresh", false), ("schema", false)]);
        assert_eq!(report.results[0].failing_rows, 1);
        assert_eq!(report.results[0].sample.len(), 1);
        assert_eq!(report.results[0].sample, [format!("(a value seen 2 times, {A})")]);
        assert_eq!(report.fatal().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["unique", "fresh", "schema"]);
        assert!(report.results[2].found.contains("1m 1s old"), "{}", report.results[2].found);
    }

    #[test]
    fn unique_counts_every_repeat_within_and_across_batches_nulls_included() {
        let checks = Arc::new(Checks::new(vec![check("unique", Policy::Fail, CheckKind::Unique { column: "event_id".into() })]).unwrap());
        let mut evaluation = Evaluation::new(checks);
        // A three times (twice in one batch), B once, null twice: 2 + 1 repeats.
        evaluation.observe(&batch(vec![Some(A), Some(B), Some(A), None], vec![Some(1.0); 4], vec![1; 4])).unwrap();
        evaluation.observe(&batch(vec![None, Some(A)], vec![Some(1.0); 2], vec![1; 2])).unwrap();
        let report = evaluation.finish(0, None);
        assert_eq!(report.results[0].failing_rows, 3);
        assert_eq!(report.results[0].found, "3 duplicate values");
        let mut sample = report.results[0].sample.clone();
        sample.sort();
        assert_eq!(sample.len(), 2, "{sample:?}");
        assert!(sample[0].starts_with("(a value seen 2 times") && sample[1].starts_with("(a value seen 3 times"), "{sample:?}");
    }

    /// `unique` against a count of each exact text, on seeded random columns: canonical UUIDs
    /// (also in upper case, which is another text), other texts and nulls, repeated within and
    /// across batches and workers, in key-ordered runs or in no order.
    #[test]
    fn unique_counts_exactly_the_repeated_texts_of_random_columns() {
        use rand::{Rng, SeedableRng};
        let checks = Arc::new(Checks::new(vec![check("unique", Policy::Fail, CheckKind::Unique { column: "event_id".into() })]).unwrap());
        for seed in 0..40 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let pool: Vec<Option<String>> = (0..rng.random_range(1..200))
                .map(|_| match rng.random_range(0..10) {
                    0 => None,
                    1 => Some(uuid::Uuid::from_u128(rng.random()).to_string().to_uppercase()),
                    2 => Some(format!("user-{}", rng.random_range(0..50))),
                    _ => Some(uuid::Uuid::from_u128(rng.random()).to_string()),
                })
                .collect();
            let mut workers: Vec<Evaluation> = (0..2).map(|_| Evaluation::new(checks.clone())).collect();
            let mut counts: std::collections::HashMap<Option<String>, u64> = std::collections::HashMap::new();
            for _ in 0..rng.random_range(1..6) {
                let mut values: Vec<Option<String>> = (0..rng.random_range(0..300)).map(|_| pool[rng.random_range(0..pool.len())].clone()).collect();
                if rng.random_bool(0.5) {
                    values.sort();
                }
                for value in &values {
                    *counts.entry(value.clone()).or_default() += 1;
                }
                let rows = values.len();
                let worker = rng.random_range(0..workers.len());
                workers[worker].observe(&batch(values.iter().map(|v| v.as_deref()).collect(), vec![Some(1.0); rows], vec![1; rows])).unwrap();
            }
            let mut all = workers.remove(0);
            all.merge(workers.remove(0));
            let report = all.finish(0, None);
            let repeats: u64 = counts.values().map(|n| n - 1).sum();
            assert_eq!(report.results[0].failing_rows, repeats, "seed {seed}");
            let repeated: Vec<&String> = counts.iter().filter(|(_, n)| **n > 1).filter_map(|(text, _)| text.as_ref()).collect();
            for shown in &report.results[0].sample {
                // A canonical UUID is shown as itself, and it is one of the repeated texts.
                if let Some(uuid) = shown.split(", ").nth(1).map(|s| s.trim_end_matches(')')).filter(|s| !s.starts_with("hash ")) {
                    assert!(repeated.iter().any(|text| text.as_str() == uuid), "seed {seed}: {shown}");
                }
            }
        }
    }

    #[test]
    fn range_refuses_nan_and_clean_batches_take_the_whole_column_path() {
        let checks =
            Arc::new(Checks::new(vec![check("r", Policy::Warn, CheckKind::Range { column: "rating".into(), min: Some(0.0), max: Some(10.0) })]).unwrap());
        let clean = batch(vec![Some(A), Some(B)], vec![Some(0.0), Some(10.0)], vec![0, 0]);
        assert!(passes_whole(&checks.checks[0].kind, clean.column(1)).unwrap());
        let with_nan = batch(vec![Some(A), Some(B)], vec![Some(f32::NAN), Some(5.0)], vec![0, 0]);
        assert!(!passes_whole(&checks.checks[0].kind, with_nan.column(1)).unwrap());
        let mut evaluation = Evaluation::new(checks);
        evaluation.observe(&with_nan).unwrap();
        assert_eq!(evaluation.finish(0, None).results[0].failing_rows, 1);
    }

    #[test]
    fn row_count_is_left_out_of_stream_epochs_unless_asked() {
        let checks = Arc::new(
            Checks::new(vec![
                check("batch_only", Policy::Fail, CheckKind::RowCount { min: 1, in_stream: false }),
                check("always", Policy::Fail, CheckKind::RowCount { min: 1, in_stream: true }),
            ])
            .unwrap(),
        );
        let verdicts = |report: Report| report.results.iter().map(|r| r.passed).collect::<Vec<_>>();
        assert_eq!(verdicts(Evaluation::new(checks.clone()).finish(0, None)), [false, false]);
        assert_eq!(verdicts(Evaluation::new(checks).for_stream_epoch().finish(0, None)), [true, false]);
    }

    #[test]
    fn freshness_reads_dates() {
        let checks =
            Arc::new(Checks::new(vec![check("fresh", Policy::Fail, CheckKind::Freshness { column: "d".into(), max_age_secs: 86_400 })]).unwrap());
        let data = RecordBatch::try_from_iter([("d", Arc::new(Date32Array::from(vec![Some(10), None, Some(12)])) as ArrayRef)]).unwrap();
        let mut evaluation = Evaluation::new(checks.clone());
        evaluation.observe(&data).unwrap();
        assert!(evaluation.clone().finish(13 * 86_400, None).passed());
        assert!(!evaluation.finish(13 * 86_400 + 1, None).passed());
    }

    #[test]
    fn declarations_are_validated() {
        let error = Checks::new(vec![check("u", Policy::Quarantine, CheckKind::Unique { column: "event_id".into() })]).unwrap_err();
        assert!(error.to_string().contains("quarantine needs a row check"), "{error}");
        let twice = vec![
            check("x", Policy::Warn, CheckKind::RowCount { min: 1, in_stream: false }),
            check("x", Policy::Warn, CheckKind::RowCount { min: 2, in_stream: true }),
        ];
        assert!(Checks::new(twice).unwrap_err().to_string().contains("declared twice"));
        let schema = batch(vec![], vec![], vec![]).schema();
        let checks = Checks::new(vec![check("r", Policy::Warn, CheckKind::Range { column: "ratin".into(), min: None, max: None })]).unwrap();
        assert!(checks.validate("t", &schema).unwrap_err().to_string().contains("no column \"ratin\""));
        let checks = Checks::new(vec![check("u", Policy::Warn, CheckKind::Uuid { column: "rating".into() })]).unwrap();
        assert!(checks.validate("t", &schema).unwrap_err().to_string().contains("cannot read column rating"));
    }
}
