//! Test support: a throwaway lakehouse with its own graph file, the `runtime` binary, readers of
//! the tables, and the oracle.

pub mod kafka;
pub mod oracle;
pub mod scenario;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use operators::catalog::{CatalogSettings, Lakehouse, parse_table_ident};
use operators::storage::{S3Warehouse, Warehouse};
use operators::sample::{Candidate, RawEvent};

pub const GRAPH_TEMPLATE: &str = include_str!("../../graphs/ratings.toml");
pub const READER_SCHEMA: &str = include_str!("../../graphs/schemas/movie_rating.avsc");

/// The `runtime` binary of this checkout, built once per test process.
pub fn runtime_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "runtime"])
            .current_dir(workspace_root())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the runtime binary failed");
        target_dir().join("debug").join("runtime")
    })
    .clone()
}

/// The folder holding this checkout's rule plugins (debug builds), built once per test process.
pub fn plugin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = workspace_root();
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "ratings-approval", "-p", "ratings-blocklist"])
            .current_dir(&root)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the rule plugins failed");
        target_dir().join("debug")
    })
    .clone()
}

/// The project's Python (PyIceberg, DuckDB), created by `scripts/python-env.sh` with pinned
/// versions on first use.
pub fn python() -> PathBuf {
    let root = workspace_root();
    let status = Command::new("bash").arg(root.join("scripts/python-env.sh")).status().expect("bash runs");
    assert!(status.success(), "creating the Python environment failed");
    root.join(".venv/bin/python")
}

/// Runs `tests/python/SCRIPT` on `table` of `lake`'s catalog and parses the JSON it prints.
pub fn python_json(lake: &Lake, script: &str, table: &str) -> serde_json::Value {
    python_script_json(script, &[], &lake.database(), &lake.dir.path().join("lake/warehouse"), table)
}

/// Runs `tests/python/SCRIPT ARGS…` on `table` of the SQL catalog in `database` and `warehouse`
/// and parses the JSON it prints.
pub fn python_script_json(
    script: &str,
    args: &[&std::ffi::OsStr],
    database: &Path,
    warehouse: &Path,
    table: &str,
) -> serde_json::Value {
    let output = Command::new(python())
        .arg(workspace_root().join("tests/python").join(script))
        .args(args)
        .arg("--database")
        .arg(database)
        .arg("--warehouse")
        .arg(warehouse)
        .args(["--catalog", "ratings_flow", "--table", table])
        .output()
        .expect("python runs");
    assert!(output.status.success(), "{script} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

/// PyIceberg's digest of `table` (tests/python/table_digest.py: rows, rows per partition, a
/// checksum of every row), read through PyIceberg's own S3 FileIO when the lake is on S3.
pub fn pyiceberg_digest(lake: &Lake, table: &str) -> serde_json::Value {
    let (warehouse, endpoint) = match &lake.warehouse {
        Warehouse::Local(path) => (path.display().to_string(), None),
        Warehouse::S3(s3) => (s3.uri.clone(), s3.endpoint.clone()),
    };
    let mut command = Command::new(python());
    command
        .arg(workspace_root().join("tests/python/table_digest.py"))
        .arg("--database")
        .arg(lake.database())
        .args(["--warehouse", &warehouse, "--catalog", "ratings_flow", "--table", table]);
    if let Some(endpoint) = endpoint {
        command.args(["--s3-endpoint", &endpoint]);
    }
    let output = command.output().expect("python runs");
    assert!(output.status.success(), "table_digest.py {table}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

fn stream_from(text: String, topic: &str, registry: &str) -> String {
    let text = set_line(text, "topic", &format!("{topic:?}"));
    let text = set_line(text, "brokers", &format!("{:?}", kafka::brokers()));
    set_line(text, "url", &format!("{registry:?}"))
}

/// The test S3 server `make test` started (scripts/s3.sh).
pub fn s3_endpoint() -> String {
    std::env::var("RATINGS_FLOW_TEST_S3").unwrap_or_else(|_| {
        panic!("RATINGS_FLOW_TEST_S3 is not set: run the suite with `make test` (it starts the S3 server), or `make s3-up` and `eval \"$(bash scripts/s3.sh env)\"`")
    })
}

/// The bucket scripts/s3.sh creates.
pub const TEST_BUCKET: &str = "warehouse";

/// An S3 warehouse at `uri` on the test server, credentials from the AWS chain.
pub fn test_bucket_warehouse(uri: String) -> S3Warehouse {
    S3Warehouse { uri, endpoint: Some(s3_endpoint()), region: Some("us-east-1".into()), path_style: true, credentials: None }
}

/// A graph text with its warehouse moved to a fresh prefix of the test bucket. The prefix is short
/// because s3s-fs names a side file of each object after the base64 of bucket and key, so a key
/// must stay under ~165 bytes (scripts/s3.sh).
pub fn on_s3(text: String) -> String {
    let uri = format!("s3://{TEST_BUCKET}/t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let section = format!("{:?}\n\n[catalog.s3]\nendpoint = {:?}\nregion = \"us-east-1\"\npath_style = true", uri, s3_endpoint());
    set_line(text, "warehouse", &section)
}

/// Removes the `[[rules.plugins]]` entry named `name` from a graph text.
pub fn without_plugin(text: String, name: &str) -> String {
    let marker = format!("[[rules.plugins]]\nname = \"{name}\"\n");
    let Some(start) = text.find(&marker) else { panic!("graph has no plugin {name}") };
    let end = text[start..].find("\n\n").map(|n| start + n + 1).unwrap_or(text.len());
    format!("{}{}", &text[..start], &text[end..])
}

/// A lakehouse in a temporary folder with a graph file pointing at it.
pub struct Lake {
    pub dir: tempfile::TempDir,
    pub graph: PathBuf,
    /// Where the graph puts table files: `lake/warehouse` in `dir`, or a prefix of the test bucket.
    pub warehouse: Warehouse,
    /// Tables keep the runtime they were loaded on for their I/O, so one runtime serves them all.
    runtime: tokio::runtime::Runtime,
}

pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Lake {
    /// A lake whose graph differs from the shipped one only in where the catalog lives.
    pub fn new() -> Lake {
        Lake::with_epoch_events(None)
    }

    /// As [`Lake::new`], with `commit.replay_epoch_events` set (1 = one epoch per raw partition).
    pub fn with_epoch_events(epoch_events: Option<u64>) -> Lake {
        Lake::with_graph(|text| match epoch_events {
            Some(events) => set_line(text, "replay_epoch_events", &events.to_string()),
            None => text,
        })
    }

    /// A lake streaming from `topic` on the test broker, with schemas from `registry`.
    pub fn for_stream(topic: &str, registry: &str) -> Lake {
        Lake::with_graph(|text| stream_from(text, topic, registry))
    }

    /// As [`Lake::for_stream`], the warehouse on the test S3 server.
    pub fn for_stream_on_s3(topic: &str, registry: &str) -> Lake {
        Lake::on_s3(|text| stream_from(text, topic, registry))
    }

    /// As [`Lake::with_graph`], with the warehouse under a fresh prefix of the test S3 server's
    /// bucket (credentials from the AWS environment variables `make test` sets).
    pub fn on_s3(edit: impl FnOnce(String) -> String) -> Lake {
        Lake::with_graph(|text| edit(on_s3(text)))
    }

    /// A lake whose graph is the shipped one without the blocklist plugin (so the oracle's
    /// business rules are approval at 7 alone), with the catalog in a temporary folder and `edit`
    /// applied.
    pub fn with_graph(edit: impl FnOnce(String) -> String) -> Lake {
        Lake::with_full_graph(|text| edit(without_plugin(text, "blocklist")))
    }

    /// A lake whose graph is the shipped one, every plugin included (the blocklist's lists are
    /// copied beside it), with the catalog in a temporary folder and `edit` applied.
    pub fn with_full_graph(edit: impl FnOnce(String) -> String) -> Lake {
        let dir = tempfile::tempdir().expect("temp dir");
        let graph = dir.path().join("graph.toml");
        let plugins = format!("{}/", plugin_dir().display());
        let text = GRAPH_TEMPLATE
            .replace("../.lakehouse/catalog.db", "lake/catalog.db")
            .replace("../.lakehouse/warehouse", "lake/warehouse")
            .replace("../plugins/lib/", &plugins);
        std::fs::create_dir(dir.path().join("blocklists")).expect("blocklists folder");
        std::fs::copy(workspace_root().join("graphs/blocklists/users.txt"), dir.path().join("blocklists/users.txt"))
            .expect("copy the blocklist");
        std::fs::write(&graph, edit(text)).expect("write graph");
        std::fs::create_dir(dir.path().join("schemas")).expect("schemas folder");
        std::fs::write(dir.path().join("schemas/movie_rating.avsc"), READER_SCHEMA).expect("write schema");
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        let text = std::fs::read_to_string(&graph).expect("read graph");
        let warehouse = match text.lines().find_map(|l| l.strip_prefix("warehouse = \"s3://")) {
            Some(rest) => Warehouse::S3(test_bucket_warehouse(format!("s3://{}", rest.trim_end_matches('"')))),
            None => Warehouse::Local(dir.path().join("lake/warehouse")),
        };
        let lake = Lake { dir, graph, warehouse, runtime };
        lake.ok(&["init"]);
        lake
    }

    pub fn command(&self, args: &[&str]) -> Command {
        Lake::command_for(&self.graph, args)
    }

    /// The runtime on another graph file.
    pub fn command_for(graph: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(runtime_bin());
        command.arg("--graph").arg(graph).args(args).env("RUST_LOG", "warn");
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("runtime runs"))
    }

    /// Runs and asserts success.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.status, 0, "runtime {args:?} failed:\n{}\n{}", run.stdout, run.stderr);
        run
    }

    pub fn catalog(&self) -> CatalogSettings {
        CatalogSettings::sql("ratings_flow", self.dir.path().join("lake/catalog.db"), self.warehouse.clone())
    }

    pub fn database(&self) -> PathBuf {
        self.dir.path().join("lake/catalog.db")
    }

    pub fn block_on<T>(&self, future: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(future)
    }

    pub fn table(&self, name: &str) -> iceberg::table::Table {
        self.block_on(async {
            let lakehouse = Lakehouse::open(&self.catalog(), false).await.expect("open lake");
            lakehouse.load(&parse_table_ident(name).unwrap()).await.expect("load table")
        })
    }

    pub fn scan(&self, name: &str) -> Vec<arrow_array::RecordBatch> {
        let table = self.table(name);
        self.block_on(async { operators::reader::scan(&table, None, None).await.expect("scan") })
    }

    pub fn raw_events(&self) -> Vec<RawEvent> {
        self.raw_events_of("raw.movie_ratings_raw")
    }

    pub fn raw_events_of(&self, table: &str) -> Vec<RawEvent> {
        let mut events = Vec::new();
        for batch in self.scan(table) {
            operators::sample::raw_from_batch(&batch, &mut events).unwrap();
        }
        events
    }

    /// Curated rows sorted by event_id.
    pub fn curated_rows(&self) -> Vec<(u128, Candidate)> {
        self.curated_rows_of("curated.movie_ratings")
    }

    pub fn curated_rows_of(&self, table: &str) -> Vec<(u128, Candidate)> {
        let mut rows = Vec::new();
        for batch in self.scan(table) {
            operators::sample::curated_from_batch(&batch, &mut rows).unwrap();
        }
        rows.sort_by_key(|row| row.0);
        rows
    }

    /// Rejected records as (source partition, source offset, reason), sorted.
    pub fn rejected(&self) -> Vec<(i32, i64, String)> {
        self.rejected_of("curated.movie_ratings_rejected")
    }

    pub fn rejected_of(&self, table: &str) -> Vec<(i32, i64, String)> {
        use arrow_array::{Int32Array, Int64Array, StringArray};
        let mut out = Vec::new();
        for batch in self.scan(table) {
            let c = operators::schema::Columns(&batch);
            let partition = c.get::<Int32Array>("source_partition").unwrap();
            let offset = c.get::<Int64Array>("source_offset").unwrap();
            let reason = c.get::<StringArray>("reason").unwrap();
            for row in 0..batch.num_rows() {
                out.push((partition.value(row), offset.value(row), reason.value(row).to_string()));
            }
        }
        out.sort();
        out
    }

    /// Every rejected row with all its columns (reason, detail, the values as ingested,
    /// coordinates, payload), one text line per row, sorted: two tables that hold the same rows
    /// give the same lines.
    pub fn rejected_rows_of(&self, table: &str) -> Vec<String> {
        self.rows_of(table)
    }

    /// Every row of a table with all its columns, one text line per row, sorted: two tables that
    /// hold the same rows give the same lines.
    pub fn rows_of(&self, table: &str) -> Vec<String> {
        let mut rows = Vec::new();
        for batch in self.scan(table) {
            let columns = batch.columns();
            for row in 0..batch.num_rows() {
                let values: Vec<String> = columns
                    .iter()
                    .map(|column| arrow::util::display::array_value_to_string(column, row).expect("displayable"))
                    .collect();
                rows.push(values.join(" | "));
            }
        }
        rows.sort();
        rows
    }

    /// Live data file paths of a table's current snapshot.
    pub fn live_files(&self, name: &str) -> Vec<String> {
        self.live_files_of_kind(name, false)
    }

    /// Live position delete file paths of a table's current snapshot.
    pub fn live_delete_files(&self, name: &str) -> Vec<String> {
        self.live_files_of_kind(name, true)
    }

    fn live_files_of_kind(&self, name: &str, deletes: bool) -> Vec<String> {
        let table = self.table(name);
        let mut files: Vec<String> = self
            .block_on(operators::commit::live_files(&table))
            .expect("live files")
            .into_iter()
            .filter(|f| f.is_deletes() == deletes)
            .map(|f| f.data_file.file_path().to_string())
            .collect();
        files.sort();
        files
    }

    pub fn snapshot_count(&self, name: &str) -> usize {
        self.table(name).metadata().snapshots().count()
    }
}

fn as_expected(rows: &[(u128, Candidate)]) -> std::collections::BTreeMap<String, oracle::ExpectedRow> {
    rows.iter()
        .map(|(key, c)| {
            (
                operators::sample::format_event_id(*key),
                oracle::ExpectedRow {
                    user_id: c.user_id.to_string(),
                    movie_id: c.movie_id.to_string(),
                    rating: c.rating.0,
                    is_approved: c.is_approved,
                    rating_timestamp: c.rating_timestamp,
                    rating_date: c.rating_date,
                    source: (c.position.ingestion_ts_ms, c.position.partition, c.position.offset),
                },
            )
        })
        .collect()
}

/// The lake's curated and rejected tables equal the oracle's, row for row (lineage included).
pub fn assert_matches_oracle(lake: &Lake, oracle: &oracle::Expected) {
    let rows = lake.curated_rows();
    let actual = as_expected(&rows);
    assert_eq!(actual.len(), rows.len(), "an event_id appears twice in curated");
    let missing: Vec<_> = oracle.rows.keys().filter(|k| !actual.contains_key(*k)).take(3).collect();
    let extra: Vec<_> = actual.keys().filter(|k| !oracle.rows.contains_key(*k)).take(3).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    for (id, row) in &oracle.rows {
        assert_eq!(&actual[id], row, "row {id}");
    }
    assert_eq!(lake.rejected(), oracle.rejected, "rejected table");
}

/// Replaces the value of the first line starting with `key =`.
pub fn set_line(text: String, key: &str, value: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.split('=').next().is_some_and(|k| k.trim() == key))
        .unwrap_or_else(|| panic!("graph has no {key} line"))
        .to_string();
    text.replacen(&line, &format!("{key} = {value}"), 1)
}

impl Default for Lake {
    fn default() -> Self {
        Lake::new()
    }
}

/// The generator flags of a run with every edge case well represented.
pub const EDGY: &[&str] = &[
    "generate", "--events", "24000", "--days", "9", "--start", "2025-05-01", "--users", "500", "--movies", "50",
    "--duplicates", "0.05", "--updates", "0.10", "--ties", "0.03", "--late", "0.02", "--invalid", "0.02", "--seed", "7",
];
