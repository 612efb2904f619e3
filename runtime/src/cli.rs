//! Command line: `runtime --graph G --mode replay --from D [--to E]`, plus `init`, `generate`,
//! `show` and `history`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use operators::catalog::{Lakehouse, parse_table_ident};
use operators::error::{Error, Fault, Result};
use operators::generate::GenerateSettings;
use operators::model::{format_date, parse_date};
use operators::replay::{ProgressSink, ReplaySettings, ReplaySummary};

use crate::graph::{Graph, Lake};

#[derive(Debug, Parser)]
#[command(
    name = "runtime",
    version,
    about = "ratings-flow: event streams into clean, upserted, partitioned Iceberg tables, live from Kafka or replayed from raw history",
    // `-h` is the cluster's hostfile, as in every Timely program; help is `--help`.
    disable_help_flag = true
)]
pub struct Cli {
    /// Print help.
    #[arg(long, global = true, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// The graph file naming the pipeline's catalog, tables and settings.
    #[arg(long, global = true, default_value = "graphs/ratings.toml")]
    pub graph: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Re-derive the curated table from raw partitions --from..--to.
    Replay,
    /// Consume Kafka continuously.
    Stream,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to run: replay raw partitions, or stream from Kafka.
    #[arg(long)]
    pub mode: Option<Mode>,
    /// First ingestion_date to replay (YYYY-MM-DD).
    #[arg(long)]
    pub from: Option<String>,
    /// Last ingestion_date to replay, inclusive (default: the newest raw partition).
    #[arg(long)]
    pub to: Option<String>,
    /// Timely worker threads (per process in a cluster; every process needs the same).
    #[arg(short = 'w', long, default_value_t = 2)]
    pub workers: usize,
    /// Cluster: processes running this one dataflow (README "Running on a cluster").
    #[arg(short = 'n', long, default_value_t = 1)]
    pub processes: usize,
    /// Cluster: this process's index, 0..processes. Process 0 commits.
    #[arg(short = 'p', long, default_value_t = 0)]
    pub process: usize,
    /// Cluster: a file of host:port lines, one per process in index order (default: 127.0.0.1
    /// from port 2101 up).
    #[arg(short = 'h', long)]
    pub hostfile: Option<PathBuf>,
    /// Cluster: how long a process waits for the others to connect at the start.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub cluster_wait: Duration,
    /// Never draw a progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Stream: stop once no partition has delivered a record for this long (e.g. 5s), after
    /// committing everything read.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub stop_when_idle: Option<Duration>,
    /// Stream: epoch length, overriding the graph's commit.interval (e.g. 1s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub commit_interval: Option<Duration>,
    /// Stream: serve Prometheus metrics on this address (e.g. 127.0.0.1:9187). Off by default.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the catalog folder, the SQLite catalog and the graph's tables (idempotent).
    Init,
    /// Write seeded synthetic events into raw partitions, as ingestion would.
    Generate(GenerateArgs),
    /// Send seeded test events to the graph's topic as Confluent-framed Avro.
    Produce(ProduceArgs),
    /// Print rows of a table as an aligned table.
    Show {
        /// Table: role (raw, curated, rejected), full name or short name.
        table: String,
        /// Rows to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Equality filter column=value, e.g. rating_date=2025-05-01 in the shipped graph (prunes partitions).
        #[arg(long = "where")]
        filter: Option<String>,
    },
    /// Run the graph's data-quality checks on what a table holds. Exit status: 0 every check
    /// passed, 3 at least one failed (the report says which), 1/2 the checks could not run.
    Check {
        /// Table: role (raw, curated, rejected), full name or short name.
        #[arg(long, default_value = "curated")]
        table: String,
        /// Only this partition, as column=value, e.g. rating_date=2025-05-01 in the shipped graph.
        #[arg(long)]
        partition: Option<String>,
        /// Report format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        /// The time freshness is judged against (RFC 3339, e.g. 2025-05-10T00:00:00Z; default: now).
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Compact small files, expire old snapshots and delete orphan files (all three unless some
    /// are chosen), on every table of the graph or one. Settings: the graph's [maintenance].
    Maintain {
        /// Table: role (raw, curated, rejected), full name or short name (default: all three).
        #[arg(long)]
        table: Option<String>,
        /// Compact partitions with small files.
        #[arg(long)]
        compact: bool,
        /// Expire snapshots and delete the files only they needed.
        #[arg(long)]
        expire: bool,
        /// Delete unreferenced files older than maintenance.orphan_age.
        #[arg(long)]
        orphans: bool,
        /// List what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Report format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
    /// Load Parquet files (or folders of them) into the graph's raw table, as ingested on their
    /// ingestion day (their ingestion_date or ingestion_ts_ms column): event columns checked
    /// against the reader schema, one append snapshot; a file imported before (same content) is
    /// skipped.
    Import {
        /// The raw table: role, full name or short name.
        #[arg(long, default_value = "raw")]
        table: String,
        /// Parquet files, or folders searched for *.parquet.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List a table's snapshots with operation and summary.
    History {
        /// Table: role (raw, curated, rejected), full name or short name.
        table: String,
    },
    /// The graph's catalog for other tools.
    #[command(subcommand)]
    Catalog(CatalogCommand),
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Serve the embedded catalog as an Iceberg REST catalog (config, namespaces, tables, commits)
    /// until stopped, so Spark, Trino, DuckDB, PyIceberg or another ratings-flow engine attach it
    /// over REST. Without --token-env anyone who reaches the address may commit: keep it on
    /// loopback, or behind a proxy that authenticates.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8181")]
        addr: std::net::SocketAddr,
        /// Require this environment variable's value as the bearer token of every request. Clients
        /// send it as a token, or as the client secret of OAuth2 client credentials, which
        /// /v1/oauth/tokens exchanges for it.
        #[arg(long, value_name = "VARIABLE")]
        token_env: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

/// `runtime check`: some check failed.
const CHECKS_FAILED: u8 = 3;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Events in total.
    #[arg(long, default_value_t = 300_000)]
    pub events: u64,
    /// Ingestion days the events are spread over.
    #[arg(long, default_value_t = 10)]
    pub days: u32,
    /// First ingestion date (YYYY-MM-DD).
    #[arg(long, default_value = "2025-05-01")]
    pub start: String,
    /// Topic partitions the events are spread over by event_id.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    #[command(flatten)]
    pub mix: MixArgs,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Events in total.
    #[arg(long, default_value_t = 200_000)]
    pub count: u64,
    /// Ingestion days the events' Kafka timestamps are spread over.
    #[arg(long, default_value_t = 10)]
    pub days: u32,
    /// First ingestion date (YYYY-MM-DD) of the Kafka timestamps (default: so that the last day is today).
    #[arg(long)]
    pub start: Option<String>,
    /// Events per second (default: as fast as the broker takes them).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Fraction of records replaced by unreadable bytes (bad magic byte, unknown schema id, cut-off body, in turn).
    #[arg(long, default_value_t = 0.002)]
    pub malformed: f64,
    /// Writer schema (.avsc) to register and encode with (default: the graph's reader schema).
    #[arg(long)]
    pub writer_schema: Option<PathBuf>,
    /// Stamp records with the send time instead of the generated ingestion time (to measure freshness).
    #[arg(long)]
    pub stamp_now: bool,
    /// Frame records with this already registered schema id instead of registering --writer-schema
    /// (no registry call: works while the registry is down).
    #[arg(long)]
    pub schema_id: Option<u32>,
    /// Send the rows of these Parquet files (or folders of them) instead of generated events, for
    /// a graph of any schema: each row encoded with the writer schema by column name, keyed by the
    /// graph's key, Kafka timestamp = its ingestion_ts_ms or ingestion_date (--count, --days,
    /// --start and the mix flags are then unused).
    #[arg(long = "from", num_args = 1..)]
    pub from_files: Vec<PathBuf>,
    #[command(flatten)]
    pub mix: MixArgs,
}

/// The edge-case mix shared by `generate` and `produce`.
#[derive(Debug, Args)]
pub struct MixArgs {
    /// Distinct users.
    #[arg(long, default_value_t = 50_000)]
    pub users: u32,
    /// Distinct movies.
    #[arg(long, default_value_t = 5_000)]
    pub movies: u32,
    /// Fraction of exact re-deliveries of earlier events.
    #[arg(long, default_value_t = 0.02)]
    pub duplicates: f64,
    /// Fraction of updates (same event_id, newer rating_timestamp; may move the row to another day).
    #[arg(long, default_value_t = 0.03)]
    pub updates: f64,
    /// Fraction of ties (same event_id and rating_timestamp, other rating).
    #[arg(long, default_value_t = 0.005)]
    pub ties: f64,
    /// Fraction of late events (rated 6 to 20 days before ingestion).
    #[arg(long, default_value_t = 0.004)]
    pub late: f64,
    /// Fraction of invalid records (rating out of range, empty event_id, future timestamp).
    #[arg(long, default_value_t = 0.003)]
    pub invalid: f64,
    /// Fraction of records whose event_id is spelled other than canonically (uppercase, braces,
    /// urn:uuid:, no hyphens); the engine keys them as the same event.
    #[arg(long, default_value_t = 0.0)]
    pub id_spellings: f64,
    /// Random seed: the same seed and settings give the same rows.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl MixArgs {
    fn settings(&self, events: u64, days: u32, start_day: i32, partitions: i32, topic: &str) -> Result<GenerateSettings> {
        let settings = GenerateSettings {
            events,
            days,
            start_day,
            users: self.users,
            movies: self.movies,
            duplicates: self.duplicates,
            updates: self.updates,
            ties: self.ties,
            late: self.late,
            invalid: self.invalid,
            id_spellings: self.id_spellings,
            seed: self.seed,
            partitions,
            topic: topic.to_string(),
        };
        settings.validate().map_err(Error::User)?;
        Ok(settings)
    }
}

/// Runs the parsed command line (the binary parses it first, to set the allocator up by mode).
pub fn main(cli: Cli) -> ExitCode {
    // Crash tests set FAILPOINTS (e.g. `stream-after-raw-commit=sleep(60000)`); unset, it does nothing.
    let _failpoints = fail::FailScenario::setup();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // The S3 request signer logs the credentials it loaded, secret key included, at debug level:
    // whatever RUST_LOG asks for, its logs stop at warnings, so no log line can carry a key.
    for quiet in ["reqsign_core=warn", "reqsign_aws_v4=warn", "reqsign_aws_core=warn", "reqsign_file_read_tokio=warn"] {
        filter = filter.add_directive(quiet.parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log redirected to a file or a collector must
        // not be full of escape sequences.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            let hint = if error.retryable() { " (retrying may help)" } else { "" };
            eprintln!("error ({}): {}{hint}", error.fault(), one_line(&error.to_string()));
            ExitCode::from(if error.fault() == Fault::User { 2 } else { 1 })
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn load_graph(path: &std::path::Path) -> Result<Graph> {
    Graph::load(path).map_err(|e| Error::User(e.to_string()))
}

pub(crate) fn io_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the I/O runtime: {e}")))
}

pub(crate) fn date_arg(flag: &str, text: &str) -> Result<i32> {
    parse_date(text).ok_or_else(|| Error::User(format!("{flag} {text:?}: expected a date YYYY-MM-DD")))
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let graph = load_graph(&cli.graph)?;
    if let Some(Command::Check { table, partition, format, as_of }) = &cli.command {
        return check(&graph.lake(), table, partition.as_deref(), *format, as_of.as_deref());
    }
    match cli.command {
        Some(Command::Init) => init(&graph),
        Some(Command::Generate(args)) => generate(&graph, args),
        Some(Command::Produce(args)) => produce(&graph, args),
        Some(Command::Show { table, limit, filter }) => show(&graph.lake(), &table, limit, filter.as_deref()),
        Some(Command::History { table }) => history(&graph.lake(), &table),
        Some(Command::Maintain { table, compact, expire, orphans, dry_run, format }) => {
            maintain(&graph, table.as_deref(), [compact, expire, orphans], dry_run, format)
        }
        None => match cli.run.mode {
            Some(Mode::Replay) => replay(&graph, &cli.run),
            Some(Mode::Stream) => stream(&graph, &cli.run),
            None => Err(Error::User("nothing to do: give --mode replay --from YYYY-MM-DD, or a command (see --help)".into())),
        },
        Some(Command::Check { .. }) => unreachable!("handled above"),
        Some(Command::Import { table, files }) => import(&graph, &table, &files),
        Some(Command::Catalog(CatalogCommand::Serve { addr, token_env })) => serve_catalog(&graph, addr, token_env.as_deref()),
    }
    .map(|()| ExitCode::SUCCESS)
}

/// `runtime catalog serve`: the embedded catalog over Iceberg's REST protocol.
fn serve_catalog(graph: &Graph, addr: std::net::SocketAddr, token_env: Option<&str>) -> Result<()> {
    let token = match token_env {
        None => None,
        Some(variable) => match std::env::var(variable) {
            Ok(token) if !token.is_empty() => Some(operators::storage::Secret::new(token)),
            _ => return Err(Error::User(format!("--token-env names the environment variable {variable}, which is not set"))),
        },
    };
    let runtime = io_runtime()?;
    let lakehouse = runtime.block_on(Lakehouse::open(&graph.catalog, false))?;
    let name = graph.catalog.name.clone();
    operators::catalog_server::serve(lakehouse, &runtime, addr, token, |bound| {
        println!("serving catalog {name:?} as an Iceberg REST catalog on http://{bound} (Ctrl-C stops)");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })
}

/// `runtime import`: Parquet files into the raw table, as ingested on their ingestion day.
fn import(graph: &Graph, table: &str, files: &[PathBuf]) -> Result<()> {
    let full = graph.lake().find(table)?;
    if full != graph.raw {
        return Err(Error::User(format!("import loads files into the raw table ({}); {full} is derived from it by --mode replay", graph.raw)));
    }
    let raw = parse_table_ident(&graph.raw)?;
    let summary = io_runtime()?.block_on(async {
        let lakehouse = Lakehouse::open(&graph.catalog, true).await?;
        operators::source::import::import(&lakehouse, &raw, &graph.pipeline, files, graph.target_file_size, graph.commit).await
    })?;
    println!("import into {}:", summary.table);
    for path in &summary.imported {
        println!("  imported          {}", path.display());
    }
    for path in &summary.already_imported {
        println!("  already imported  {} (same content; skipped)", path.display());
    }
    for (day, rows) in &summary.rows_per_partition {
        println!("  ingestion_date={day}: {rows} rows");
    }
    match summary.snapshot_id {
        Some(id) => println!("  snapshot {id}"),
        None => println!("  nothing new: no snapshot"),
    }
    Ok(())
}

/// What `runtime maintain` did to one table.
#[derive(serde::Serialize)]
struct Maintained {
    table: String,
    dry_run: bool,
    compaction: Option<Vec<operators::maintain::PartitionCompaction>>,
    expiry: Option<operators::maintain::ExpiryReport>,
    orphans: Option<operators::maintain::OrphanReport>,
}

fn maintain(graph: &Graph, table: Option<&str>, chosen: [bool; 3], dry_run: bool, format: ReportFormat) -> Result<()> {
    let [compact, expire, orphans] = if chosen.iter().any(|c| *c) { chosen } else { [true; 3] };
    let tables: Vec<String> = match table {
        Some(name) => vec![graph.resolve_table(name).ok_or_else(|| Error::NotFound(format!("unknown table {name:?}")))?.to_string()],
        None => graph.tables().iter().map(|(_, full)| full.to_string()).collect(),
    };
    let settings = operators::maintain::MaintainSettings { dry_run, ..graph.maintenance.clone() };
    let runtime = io_runtime()?;
    let reports = runtime.block_on(async {
        let lakehouse = Lakehouse::open(&graph.catalog, false).await?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut reports = Vec::new();
        for full in tables {
            let ident = parse_table_ident(&full)?;
            let compaction =
                if compact { Some(operators::maintain::compact(&lakehouse, &ident, &settings).await?) } else { None };
            let expiry =
                if expire { Some(operators::maintain::expire(&lakehouse, &ident, &settings, now_ms).await?) } else { None };
            let orphans =
                if orphans { Some(operators::maintain::remove_orphans(&lakehouse, &ident, &settings).await?) } else { None };
            reports.push(Maintained { table: full, dry_run, compaction, expiry, orphans });
        }
        Ok::<_, Error>(reports)
    })?;
    match format {
        ReportFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&reports).map_err(|e| Error::Internal(format!("writing the report: {e}")))?)
        }
        ReportFormat::Text => {
            let verb = |done: &'static str, planned: &'static str| if dry_run { planned } else { done };
            for report in &reports {
                println!("{}{}", report.table, if dry_run { " (dry run: nothing changed)" } else { "" });
                if let Some(partitions) = &report.compaction {
                    if partitions.is_empty() {
                        println!("  compaction: every partition is compact");
                    }
                    for p in partitions {
                        let outcome = match &p.outcome {
                            operators::maintain::CompactionOutcome::Compacted { snapshot_id } => format!("compacted (snapshot {snapshot_id})"),
                            operators::maintain::CompactionOutcome::Planned => "would compact".to_string(),
                            operators::maintain::CompactionOutcome::Skipped { reason } => format!("skipped: {reason}"),
                        };
                        println!(
                            "  compaction: {} {} small files ({}, {} rows) -> {} files: {outcome}",
                            p.partition,
                            p.small_files,
                            bytesize::ByteSize(p.small_bytes),
                            p.rows,
                            p.files_after
                        );
                    }
                }
                if let Some(expiry) = &report.expiry {
                    println!(
                        "  expiry:     {} snapshots {}, {} kept; {} files {}",
                        expiry.expired_snapshots.len(),
                        verb("expired", "to expire"),
                        expiry.kept_snapshots,
                        expiry.deleted_files.len(),
                        verb("deleted", "to delete")
                    );
                }
                if let Some(orphans) = &report.orphans {
                    println!(
                        "  orphans:    {} files {}, {} unreferenced files younger than {} left alone",
                        orphans.deleted_files.len(),
                        verb("deleted", "to delete"),
                        orphans.too_young,
                        humantime::format_duration(settings.orphan_age)
                    );
                    if dry_run {
                        for path in &orphans.deleted_files {
                            println!("    {path}");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// `runtime check`: the graph's checks for table `name` over what it holds (one partition with
/// `partition`), printed as a report.
pub(crate) fn check(lake: &Lake, name: &str, partition: Option<&str>, format: ReportFormat, as_of: Option<&str>) -> Result<ExitCode> {
    let (runtime, table) = load_named(lake, name)?;
    let full = table.identifier().to_string();
    let checks = lake.checks.get(&full).cloned().unwrap_or_default();
    if checks.is_empty() {
        return Err(Error::User(format!("the graph declares no checks for {full} (add [[checks.{name}]] entries, see README.md)")));
    }
    let reference = match as_of {
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| Error::User(format!("--as-of {text:?}: expected an RFC 3339 time such as 2025-05-10T00:00:00Z ({e})")))?
            .timestamp(),
        None => chrono::Utc::now().timestamp(),
    };
    let filter = partition.map(|p| crate::inspect::parse_where(&table, p)).transpose()?;
    let report = runtime.block_on(crate::inspect::check(&table, checks, filter, reference))?;
    match format {
        ReportFormat::Text => println!("{full}{}\n{}", partition.map(|p| format!(" ({p})")).unwrap_or_default(), report.to_text()),
        ReportFormat::Json => {
            let json = serde_json::json!({ "table": full, "partition": partition, "passed": report.passed(), "report": report });
            println!("{}", serde_json::to_string_pretty(&json).map_err(|e| Error::Internal(format!("writing the report: {e}")))?);
        }
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(CHECKS_FAILED) })
}

fn init(graph: &Graph) -> Result<()> {
    io_runtime()?.block_on(async {
        let lakehouse = Lakehouse::open(&graph.catalog, true).await?;
        let layouts = [
            (&graph.raw, graph.pipeline.raw_layout()?),
            (&graph.curated, graph.pipeline.curated_layout()?),
            (&graph.rejected, graph.pipeline.rejected_layout()?),
        ];
        for (name, layout) in layouts {
            let table = lakehouse.ensure_table(&parse_table_ident(name)?, &layout).await?;
            println!("ready: {name} at {}", table.metadata().location());
        }
        Ok(())
    })
}

fn generate(graph: &Graph, args: GenerateArgs) -> Result<()> {
    let start_day = date_arg("--start", &args.start)?;
    let settings = args.mix.settings(args.events, args.days, start_day, args.partitions, &graph.topic)?;
    let bar = progress_bar(settings.events, "generating", false);
    let raw = parse_table_ident(&graph.raw)?;
    let written = io_runtime()?.block_on(async {
        let lakehouse = Lakehouse::open(&graph.catalog, false).await?;
        operators::generate::write_generated(&lakehouse, &raw, settings, graph.target_file_size, |day, rows| {
            bar.inc(rows as u64);
            bar.set_message(format_date(day));
        })
        .await
    })?;
    bar.finish_and_clear();
    println!("generated {written} raw events into {}", graph.raw);
    Ok(())
}

fn progress_bar(total: u64, label: &str, hidden: bool) -> ProgressBar {
    let bar = if hidden { ProgressBar::hidden() } else { ProgressBar::new(total) };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} events ({per_sec}, eta {eta}) {msg}")
            .expect("progress template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

struct ReplayProgress(ProgressBar);

impl ProgressSink for ReplayProgress {
    fn start(&self, total_records: u64, epochs: usize) {
        self.0.set_length(total_records);
        self.0.set_message(format!("{epochs} partitions"));
    }

    fn advance(&self, records: u64) {
        self.0.inc(records);
    }

    fn epoch_committed(&self, ingestion_date: i32) {
        self.0.set_message(format!("committed {}", format_date(ingestion_date)));
    }
}

/// Loads the graph's rule plugins before any table is touched, so a broken plugin fails at start.
fn load_rules(graph: &Graph) -> Result<operators::rules::chain::RuleChain> {
    let chain = graph.rule_chain()?;
    tracing::info!(rules = ?chain.names(), "rule plugins loaded");
    Ok(chain)
}

fn replay(graph: &Graph, args: &crate::cli::RunArgs) -> Result<()> {
    let from = date_arg("--from", args.from.as_deref().ok_or_else(|| Error::User("--mode replay needs --from YYYY-MM-DD".into()))?)?;
    let to = args.to.as_deref().map(|to| date_arg("--to", to)).transpose()?;
    if let Some(to) = to
        && to < from
    {
        return Err(Error::User(format!("--from {} is after --to {}", format_date(from), format_date(to))));
    }
    if args.workers == 0 {
        return Err(Error::User("-w must be at least 1".into()));
    }
    let chain = load_rules(graph)?;
    let cluster = cluster(args)?;
    let command = format!("replay --from {} --to {}", format_date(from), to.map(format_date).unwrap_or_else(|| "newest".into()));
    let settings = ReplaySettings {
        catalog: graph.catalog.clone(),
        raw: parse_table_ident(&graph.raw)?,
        curated: parse_table_ident(&graph.curated)?,
        rejected: parse_table_ident(&graph.rejected)?,
        topic: graph.topic.clone(),
        rules: graph.rules.clone(),
        chain: chain.clone(),
        checks: graph.checks_for(&graph.curated),
        compact_after_files: graph.compact_after_files,
        from,
        to,
        workers: args.workers,
        target_file_size: graph.target_file_size,
        commit: graph.commit,
        max_epoch_events: graph.replay_epoch_events,
        identity: identity(graph, &chain, &command, &cluster)?,
        cluster,
    };
    let bar = progress_bar(0, "replay", args.no_progress);
    let summary = operators::replay::replay(settings, Arc::new(ReplayProgress(bar.clone())))?;
    bar.finish_and_clear();
    print_summary(&summary, graph.checks_for(&graph.curated).checks.len());
    Ok(())
}

/// Where this process sits in the run (`-n`, `-p`, `-h`, `--cluster-wait`).
fn cluster(args: &RunArgs) -> Result<operators::cluster::Cluster> {
    if args.processes <= 1 && args.process == 0 {
        return Ok(operators::cluster::Cluster::single());
    }
    operators::cluster::Cluster::new(args.processes, args.process, args.hostfile.as_deref(), args.cluster_wait)
}

/// What every process of a cluster run must agree on: the command, the graph file, the reader
/// schema, the plugins and the engine build (nothing for a single process, which has no one to
/// agree with).
fn identity(
    graph: &Graph,
    chain: &operators::rules::chain::RuleChain,
    command: &str,
    cluster: &operators::cluster::Cluster,
) -> Result<operators::cluster::Identity> {
    use sha2::Digest;
    if cluster.is_single() {
        return Ok(operators::cluster::Identity::default());
    }
    let text = std::fs::read(&graph.path).map_err(|e| Error::User(format!("reading the graph {}: {e}", graph.path.display())))?;
    let digest = |bytes: &[u8]| -> String { sha2::Sha256::digest(bytes).iter().take(8).map(|b| format!("{b:02x}")).collect() };
    Ok(operators::cluster::Identity::default()
        .with("command", command)
        .with("graph file", format!("sha256 {}", digest(&text)))
        .with("reader schema", format!("sha256 {}", digest(graph.reader_schema.canonical_form().as_bytes())))
        .with("plugins", chain.identity())
        .with("engine build", env!("CARGO_PKG_VERSION")))
}

fn print_summary(s: &ReplaySummary, checks: usize) {
    let range = match (s.first_day, s.last_day) {
        (Some(a), Some(b)) => format!("{}..{}", format_date(a), format_date(b)),
        _ => "no raw partitions in range".to_string(),
    };
    println!(
        "replay {range}: {} partitions in {} epochs, {} events in {:.2}s ({:.0} events/s)",
        s.partitions,
        s.epochs,
        s.events_read,
        s.elapsed.as_secs_f64(),
        s.events_per_second()
    );
    println!("  state:     {} curated rows reloaded from the lateness window, {} frozen keys indexed", s.seeded_rows, s.frozen_keys);
    print_exchange(s.exchanged_bytes, s.events_read);
    print_outcome(&s.outcome, checks);
}

/// In a cluster run: what this process sent to the others. Counts are this process's own
/// (its workers' reads and upserts; the commits in process 0).
fn print_exchange(bytes: u64, records: u64) {
    if bytes > 0 {
        println!(
            "  cluster:   {bytes} bytes sent to the other processes ({:.1} per record this process read); the counts below are this process's",
            bytes as f64 / records.max(1) as f64
        );
    }
}

/// The lines both modes print about what the run did to the tables.
fn print_outcome(o: &operators::dataflow::Outcome, checks: usize) {
    println!(
        "  upserted:  {} valid records: {} new rows, {} updated rows ({} moved to another partition); {} changed nothing (duplicates, superseded, or already applied)",
        o.accepted,
        o.inserted,
        o.updated,
        o.moved,
        o.accepted.saturating_sub(o.inserted + o.updated)
    );
    if o.out_of_order > 0 {
        println!(
            "  order:     {} records were ingested before their key's current row (Kafka timestamps going backwards in a partition); the late rule followed arrival order for them",
            o.out_of_order
        );
    }
    let reasons: Vec<String> = o.rejected.iter().map(|(reason, n)| format!("{}={n}", reason.as_str())).collect();
    println!("  rejected:  {} late, {} invalid, unreadable or refused by a rule [{}]", o.late(), o.invalid(), reasons.join(" "));
    println!(
        "  commits:   raw {}, rejected {}, curated {} snapshots (+{} / -{} curated files), {} retries",
        o.raw_snapshots, o.rejected_snapshots, o.curated_snapshots, o.curated_files_added, o.curated_files_removed, o.commit_retries
    );
    if o.epochs_checked > 0 {
        let failures: Vec<String> = o.check_failures.iter().map(|(check, epochs)| format!("{check} in {epochs}")).collect();
        let failures = if failures.is_empty() { "none".to_string() } else { failures.join(", ") };
        println!("  checks:    {} epochs judged before commit; failed: {failures} ({checks} checks each)", o.epochs_checked);
    }
}

fn load_named(lake: &Lake, name: &str) -> Result<(tokio::runtime::Runtime, iceberg::table::Table)> {
    let full = lake.find(name)?;
    let runtime = io_runtime()?;
    let table = runtime.block_on(async { Lakehouse::open(lake.catalog, false).await?.load(&parse_table_ident(full)?).await })?;
    Ok((runtime, table))
}

pub(crate) fn show(lake: &Lake, name: &str, limit: usize, filter: Option<&str>) -> Result<()> {
    let (runtime, table) = load_named(lake, name)?;
    let filter = filter.map(|f| crate::inspect::parse_where(&table, f)).transpose()?;
    println!("{}", runtime.block_on(crate::inspect::show(&table, filter, limit))?);
    Ok(())
}

pub(crate) fn history(lake: &Lake, name: &str) -> Result<()> {
    let (_runtime, table) = load_named(lake, name)?;
    println!("{}", crate::inspect::history(&table));
    Ok(())
}

fn produce(graph: &Graph, args: ProduceArgs) -> Result<()> {
    let today = operators::model::day_of_millis(chrono::Utc::now().timestamp_millis());
    let start_day = match &args.start {
        Some(start) => date_arg("--start", start)?,
        None => today - args.days.max(1) as i32 + 1,
    };
    if !(0.0..=1.0).contains(&args.malformed) {
        return Err(Error::User(format!("--malformed {}: expected a fraction between 0 and 1", args.malformed)));
    }
    if args.rate.is_some_and(|rate| rate <= 0.0) {
        return Err(Error::User("--rate: expected events per second above 0".into()));
    }
    let writer_schema = match &args.writer_schema {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::User(format!("--writer-schema {}: {e}", path.display())))?;
            apache_avro::Schema::parse_str(&text)
                .map_err(|e| Error::User(format!("--writer-schema {}: not an Avro schema: {e}", path.display())))?
        }
        None => graph.reader_schema.clone(),
    };
    let records = if args.from_files.is_empty() {
        // The generator's partition count is replaced by the topic's.
        operators::produce::Records::Generated(args.mix.settings(args.count, args.days, start_day, 1, &graph.topic)?)
    } else {
        operators::produce::Records::Files { paths: args.from_files.clone(), key: graph.pipeline.key.clone() }
    };
    let total = if args.from_files.is_empty() { args.count } else { 0 };
    let settings = operators::produce::ProduceSettings {
        kafka: graph.kafka.clone(),
        registry_url: graph.registry_url.clone(),
        writer_schema,
        records,
        malformed: args.malformed,
        rate: args.rate,
        stamp_now: args.stamp_now,
        schema_id: args.schema_id,
    };
    let bar = progress_bar(total, "producing", false);
    let summary = operators::produce::produce(settings, |sent| bar.set_position(sent))?;
    bar.finish_and_clear();
    println!(
        "produced {} events to {} ({} partitions, schema id {}), {} of them unreadable on purpose, in {:.2}s",
        summary.sent,
        graph.topic,
        summary.partitions,
        summary.schema_id,
        summary.malformed,
        summary.elapsed.as_secs_f64()
    );
    Ok(())
}

fn stream(graph: &Graph, args: &RunArgs) -> Result<()> {
    if args.workers == 0 {
        return Err(Error::User("-w must be at least 1".into()));
    }
    if args.from.is_some() || args.to.is_some() {
        return Err(Error::User("--from/--to belong to --mode replay; a stream resumes from the offsets in its tables".into()));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_signal = stop.clone();
    ctrlc::set_handler(move || {
        if on_signal.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!("stopping now");
            std::process::exit(130);
        }
        eprintln!("stopping after the current epoch is committed (press Ctrl-C again to stop at once; nothing is lost either way)");
    })
    .map_err(|e| Error::Internal(format!("installing the signal handler: {e}")))?;
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let metrics = operators::metrics::Metrics::new();
            metrics.serve(addr)?;
            Some(metrics)
        }
        None => None,
    };
    let chain = load_rules(graph)?;
    let cluster = cluster(args)?;
    let settings = operators::stream::StreamSettings {
        catalog: graph.catalog.clone(),
        raw: parse_table_ident(&graph.raw)?,
        curated: parse_table_ident(&graph.curated)?,
        rejected: parse_table_ident(&graph.rejected)?,
        kafka: graph.kafka.clone(),
        registry_url: graph.registry_url.clone(),
        registry_timeout: graph.registry_timeout,
        reader_schema: graph.reader_schema.clone(),
        rules: graph.rules.clone(),
        chain: chain.clone(),
        checks: graph.checks_for(&graph.curated),
        compact_after_files: graph.compact_after_files,
        schedule: graph.maintenance_schedule.map(|every| {
            let tables: Vec<iceberg::TableIdent> =
                graph.tables().iter().filter_map(|(_, full)| parse_table_ident(full).ok()).collect();
            operators::maintain::Schedule {
                every,
                settings: graph.maintenance.clone(),
                append_only: tables.iter().filter(|t| t.to_string() != graph.curated).cloned().collect(),
                all: tables,
            }
        }),
        workers: args.workers,
        target_file_size: graph.target_file_size,
        commit: graph.commit,
        commit_interval: args.commit_interval.unwrap_or(graph.commit_interval),
        epoch_events: graph.stream_epoch_events,
        stop_when_idle: args.stop_when_idle,
        metrics,
        stop,
        identity: identity(graph, &chain, "stream", &cluster)?,
        cluster,
    };
    let s = operators::stream::stream(settings)?;
    let from: Vec<String> = s
        .started_at
        .iter()
        .map(|(p, o)| format!("{p}@{}", o.map(|o| o.to_string()).unwrap_or_else(|| "start".into())))
        .collect();
    println!(
        "stream {}: {} records from {} partitions in {:.2}s ({:.0} records/s), {} epochs",
        graph.topic,
        s.records_read,
        s.partitions.len(),
        s.elapsed.as_secs_f64(),
        s.records_read as f64 / s.elapsed.as_secs_f64().max(1e-9),
        s.epochs
    );
    if let Some(landed) = s.committed_after {
        println!(
            "  landed:    the last epoch with records committed {:.2}s after the start ({:.0} records/s)",
            landed.as_secs_f64(),
            s.records_read as f64 / landed.as_secs_f64().max(1e-9)
        );
        if let Some(first) = s.first_record_after {
            let reading = landed.saturating_sub(first).as_secs_f64();
            println!(
                "             {:.2}s from the first record read to that commit ({:.0} records/s)",
                reading,
                s.records_read as f64 / reading.max(1e-9)
            );
        }
    }
    println!("  resumed:   {} (partition@offset), {} curated rows reloaded from the lateness window", from.join(" "), s.seeded_rows);
    print_exchange(s.exchanged_bytes, s.records_read);
    print_outcome(&s.outcome, graph.checks_for(&graph.curated).checks.len());
    Ok(())
}
