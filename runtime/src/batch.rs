//! Batch graphs (`pipeline.kind = "batch"`): a raw table of any declared schema, stages that
//! derive the curated columns, an upsert key and order, and checks; and the commands that run on
//! them (`init`, `import`, `--mode replay`, `check`, `show`, `history`). Every key is documented
//! in README.md ("Batch graphs").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use operators::batch::stages::{Stage, arrow_type_of, time_unit_of};
use operators::batch::types::schema_of;
use operators::batch::{BatchPipeline, TableSpec};
use operators::catalog::{CatalogSettings, Lakehouse, parse_table_ident};
use operators::checks::{Check, Checks, Policy};
use operators::commit::CommitOptions;
use operators::error::{Error, Result};
use operators::model::format_date;
use serde::Deserialize;

use crate::cli::{self, Cli, Command, Mode, date_arg, io_runtime};
use crate::graph::{Lake, CatalogSection, CheckSection, GraphError, PipelineSection, catalog_settings, check_from, parse_duration, parse_file, parse_size};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchGraphFile {
    pipeline: PipelineSection,
    catalog: CatalogSection,
    tables: BatchTablesSection,
    upsert: BatchUpsertSection,
    #[serde(default)]
    stages: Vec<StageSection>,
    #[serde(default)]
    commit: BatchCommitSection,
    #[serde(default)]
    checks: BTreeMap<String, Vec<CheckSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchTablesSection {
    raw: RawTableSection,
    curated: CuratedTableSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTableSection {
    /// namespace.table
    name: String,
    /// A date column: the ingestion day, and the execution day of the batch job.
    partition_by: String,
    /// "name type" per column, Iceberg type names.
    columns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CuratedTableSection {
    name: String,
    partition_by: String,
    /// Columns of the staged rows, in the table's order.
    columns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchUpsertSection {
    key: String,
    order_by: String,
    /// "off", or a whole number of days such as "5d".
    lateness: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    /// rename, upper, cast, list_length, day.
    kind: String,
    column: String,
    /// rename: the new name; cast: the Iceberg type.
    to: Option<String>,
    /// list_length, day: the new column.
    into: Option<String>,
    /// cast of integers to a timestamp, day of integers: seconds, milliseconds or microseconds.
    unit: Option<String>,
    /// list_length: make the new column `length > greater_than` (a boolean).
    greater_than: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct BatchCommitSection {
    target_file_size: String,
    max_attempts: u32,
}

impl Default for BatchCommitSection {
    fn default() -> Self {
        BatchCommitSection { target_file_size: "128MiB".into(), max_attempts: 8 }
    }
}

/// A loaded, validated batch graph.
#[derive(Debug, Clone)]
pub struct BatchGraph {
    pub name: String,
    pub catalog: CatalogSettings,
    pub pipeline: BatchPipeline,
    /// Checks by full table name.
    pub checks: BTreeMap<String, Arc<Checks>>,
}

/// A stage as a graph file's `[[stages]]` entry declares it (batch and events graphs alike).
pub(crate) fn stage_from(section: StageSection) -> std::result::Result<Stage, String> {
    let StageSection { kind, column, to, into, unit, greater_than } = section;
    let given: Vec<&str> = [("to", to.is_some()), ("into", into.is_some()), ("unit", unit.is_some()), ("greater_than", greater_than.is_some())]
        .into_iter()
        .filter_map(|(key, present)| present.then_some(key))
        .collect();
    let allow = |allowed: &[&str]| match given.iter().find(|key| !allowed.contains(key)) {
        Some(key) => Err(format!("a {kind} stage does not take `{key}`")),
        None => Ok(()),
    };
    let need = |value: Option<String>, key: &str| value.ok_or_else(|| format!("a {kind} stage needs `{key}`"));
    Ok(match kind.as_str() {
        "rename" => {
            allow(&["to"])?;
            Stage::Rename { column, to: need(to, "to")? }
        }
        "upper" => {
            allow(&[])?;
            Stage::Upper { column }
        }
        "cast" => {
            allow(&["to", "unit"])?;
            let to = arrow_type_of(&need(to, "to")?)?;
            Stage::Cast { column, to, unit: unit.as_deref().map(time_unit_of).transpose()? }
        }
        "list_length" => {
            allow(&["into", "greater_than"])?;
            Stage::ListLength { column, into: need(into, "into")?, greater_than }
        }
        "day" => {
            allow(&["into", "unit"])?;
            Stage::Day { column, into: need(into, "into")?, unit: unit.as_deref().map(time_unit_of).transpose()? }
        }
        other => return Err(format!("unknown stage kind {other:?} (expected rename, upper, cast, list_length or day)")),
    })
}

impl BatchGraph {
    pub fn load(path: &Path) -> std::result::Result<BatchGraph, GraphError> {
        let file: BatchGraphFile = parse_file(path)?;
        let folder = path.parent().unwrap_or(Path::new("."));
        Self::validate(file, folder).map_err(|message| GraphError { file: path.display().to_string(), message })
    }

    fn validate(file: BatchGraphFile, folder: &Path) -> std::result::Result<BatchGraph, String> {
        let catalog = catalog_settings(file.catalog, folder)?;
        let tables = &file.tables;
        for (key, name) in [("tables.raw.name", &tables.raw.name), ("tables.curated.name", &tables.curated.name)] {
            parse_table_ident(name).map_err(|e| format!("{key}: {e}"))?;
        }
        let raw_schema = schema_of(&tables.raw.columns).map_err(|e| format!("tables.raw.columns: {e}"))?;
        let raw = TableSpec { name: tables.raw.name.clone(), schema: raw_schema, partition_by: tables.raw.partition_by.clone() };
        let stages = file
            .stages
            .into_iter()
            .enumerate()
            .map(|(index, section)| stage_from(section).map_err(|e| format!("stages[{index}]: {e}")))
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let lateness_days = match file.upsert.lateness.trim() {
            "off" => None,
            text => {
                let duration = parse_duration("upsert.lateness", text)?;
                let days = duration.as_secs() / 86_400;
                if duration.as_secs() % 86_400 != 0 || days == 0 {
                    return Err(format!("upsert.lateness: expected \"off\" or a whole number of days such as \"5d\", found {text:?}"));
                }
                Some(days as i32)
            }
        };
        let target_file_size = parse_size("commit.target_file_size", &file.commit.target_file_size)? as usize;
        if file.commit.max_attempts == 0 {
            return Err("commit.max_attempts: expected at least 1".into());
        }
        let commit = CommitOptions { max_attempts: file.commit.max_attempts, ..CommitOptions::default() };
        let mut checks = BTreeMap::new();
        let mut curated_checks = Arc::new(Checks::default());
        for (table, sections) in file.checks {
            let role = if table == "curated" || table == tables.curated.name {
                "curated"
            } else if table == "raw" || table == tables.raw.name {
                "raw"
            } else {
                return Err(format!("checks.{table}: no such table; checks are declared under raw or curated"));
            };
            let declared = sections
                .into_iter()
                .enumerate()
                .map(|(index, section)| {
                    let check: Check = check_from(section).map_err(|e| format!("checks.{table}[{index}]: {e}"))?;
                    if check.policy == Policy::Quarantine {
                        return Err(format!(
                            "checks.{table}[{index}]: check `{}`: a batch graph has no rejected table to quarantine rows into; use fail or warn",
                            check.name
                        ));
                    }
                    Ok(check)
                })
                .collect::<std::result::Result<Vec<_>, String>>()?;
            let declared = Arc::new(Checks::new(declared).map_err(|e| format!("checks.{table}: {e}"))?);
            if role == "curated" {
                curated_checks = declared.clone();
                checks.insert(tables.curated.name.clone(), declared);
            } else {
                let schema = raw.arrow_schema().map_err(|e| e.to_string())?;
                declared.validate(&raw.name, &schema).map_err(|e| format!("checks.{table}: {e}"))?;
                checks.insert(raw.name.clone(), declared);
            }
        }
        let pipeline = BatchPipeline::new(
            raw,
            tables.curated.name.clone(),
            tables.curated.partition_by.clone(),
            stages,
            tables.curated.columns.clone(),
            file.upsert.key,
            file.upsert.order_by,
            lateness_days,
            curated_checks,
            target_file_size,
            commit,
        )
        .map_err(|e| e.to_string())?;
        Ok(BatchGraph { name: file.pipeline.name, catalog, pipeline, checks })
    }

    /// The graph's catalog, tables and checks, for the commands that look at tables.
    fn lake(&self) -> Lake<'_> {
        let tables = vec![("raw", self.pipeline.raw.name.as_str()), ("curated", self.pipeline.curated.name.as_str())];
        Lake { catalog: &self.catalog, tables, checks: &self.checks }
    }
}

/// Runs a command of the CLI on a batch graph.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let graph = BatchGraph::load(&cli.graph).map_err(|e| Error::User(e.to_string()))?;
    let not_here = |what: &str| Error::User(format!("{what} is not available for batch graphs like {} (they take init, import, --mode replay, check, show and history)", cli.graph.display()));
    match cli.command {
        Some(Command::Init) => init(&graph).map(|()| ExitCode::SUCCESS),
        Some(Command::Import { table, files }) => import(&graph, &table, &files).map(|()| ExitCode::SUCCESS),
        Some(Command::Check { table, partition, format, as_of }) => {
            cli::check(&graph.lake(), &table, partition.as_deref(), format, as_of.as_deref())
        }
        Some(Command::Show { table, limit, filter }) => cli::show(&graph.lake(), &table, limit, filter.as_deref()).map(|()| ExitCode::SUCCESS),
        Some(Command::History { table }) => cli::history(&graph.lake(), &table).map(|()| ExitCode::SUCCESS),
        Some(Command::Generate(_)) => Err(not_here("`generate`")),
        Some(Command::Produce(_)) => Err(not_here("`produce`")),
        Some(Command::Maintain { .. }) => Err(not_here("`maintain`")),
        None => match cli.run.mode {
            Some(Mode::Replay) => replay(&graph, cli.run.from.as_deref(), cli.run.to.as_deref()).map(|()| ExitCode::SUCCESS),
            Some(Mode::Stream) => Err(not_here("--mode stream")),
            None => Err(Error::User("nothing to do: give --mode replay --from YYYY-MM-DD, or a command (see --help)".into())),
        },
    }
}

fn init(graph: &BatchGraph) -> Result<()> {
    io_runtime()?.block_on(async {
        let lakehouse = Lakehouse::open(&graph.catalog, true).await?;
        for spec in [&graph.pipeline.raw, &graph.pipeline.curated] {
            let table = lakehouse.ensure_table(&parse_table_ident(&spec.name)?, &spec.layout()).await?;
            println!("ready: {} at {}", spec.name, table.metadata().location());
        }
        Ok(())
    })
}

fn import(graph: &BatchGraph, table: &str, files: &[PathBuf]) -> Result<()> {
    let full = graph.lake().find(table)?;
    if full != graph.pipeline.raw.name {
        return Err(Error::User(format!(
            "import loads files into the raw table ({}); {full} is derived from it by --mode replay",
            graph.pipeline.raw.name
        )));
    }
    let summary = io_runtime()?.block_on(async {
        let lakehouse = Lakehouse::open(&graph.catalog, true).await?;
        operators::batch::import::import(&lakehouse, &graph.pipeline.raw, files, graph.pipeline.target_file_size, graph.pipeline.commit).await
    })?;
    println!("import into {}:", summary.table);
    for path in &summary.imported {
        println!("  imported          {}", path.display());
    }
    for path in &summary.already_imported {
        println!("  already imported  {} (same content; skipped)", path.display());
    }
    for (day, rows) in &summary.rows_per_partition {
        println!("  {}={day}: {rows} rows", graph.pipeline.raw.partition_by);
    }
    match summary.snapshot_id {
        Some(id) => println!("  snapshot {id}"),
        None => println!("  nothing new: no snapshot"),
    }
    Ok(())
}

fn replay(graph: &BatchGraph, from: Option<&str>, to: Option<&str>) -> Result<()> {
    let from = date_arg("--from", from.ok_or_else(|| Error::User("--mode replay needs --from YYYY-MM-DD".into()))?)?;
    let to = to.map(|to| date_arg("--to", to)).transpose()?;
    if let Some(to) = to
        && to < from
    {
        return Err(Error::User(format!("--from {} is after --to {}", format_date(from), format_date(to))));
    }
    let summary = io_runtime()?.block_on(async {
        let lakehouse = Lakehouse::open(&graph.catalog, true).await?;
        operators::batch::job::run(&lakehouse, &graph.pipeline, from, to).await
    })?;
    let range = format!("{}..{}", format_date(from), to.map(format_date).unwrap_or_else(|| "newest".into()));
    if summary.executed.is_empty() {
        println!("batch {range}: the raw table {} has no partition in this range; nothing changed", graph.pipeline.raw.name);
        return Ok(());
    }
    println!("batch {range} into {}:", graph.pipeline.curated.name);
    println!("  executed days:  {}", summary.executed.join(", "));
    println!("  raw records:    {}", summary.raw_rows);
    for (day, rows) in &summary.rows_per_day {
        println!("  {}={day}: {rows} curated rows", graph.pipeline.curated.partition_by);
    }
    println!("  superseded rows removed from other days: {}", summary.superseded_elsewhere);
    if graph.pipeline.lateness_days.is_some() {
        println!("  late records left out: {}", summary.late);
    }
    if summary.without_key > 0 {
        println!("  records without {} left out: {} (logged with file and row)", graph.pipeline.key, summary.without_key);
    }
    if let Some(checks) = &summary.checks {
        let warned = if summary.warnings.is_empty() { String::new() } else { format!(" (warnings: {})", summary.warnings.join(", ")) };
        println!("  checks:         {checks}{warned}");
    }
    match summary.snapshot_id {
        Some(id) => println!("  snapshot {id} replaced partitions {}", summary.partitions_replaced.join(", ")),
        None => println!("  nothing to commit"),
    }
    Ok(())
}
