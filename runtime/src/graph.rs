//! The graph file: a pipeline's stages and settings, parsed into typed config and validated up
//! front. Unknown keys, wrong types and missing fields are errors naming the file, the key and
//! what was expected; relative paths resolve against the graph file's folder.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::sync::Arc;

use operators::catalog::{CatalogConnection, CatalogSettings};
use operators::rest_catalog::{RestAuth, RestSettings};
use operators::storage::{S3Credentials, S3Warehouse, Secret, Warehouse};
use operators::checks::{Check, CheckKind, Checks, Policy, TextPattern};
use operators::commit::CommitOptions;
use iceberg::spec::{PrimitiveType, Type};
use operators::pipeline::{PartitionTransform, Pipeline};
use operators::pipeline::stages::{Stage, arrow_type_of, time_unit_of};
use operators::rules::Rules;
use operators::rules::chain::RuleChain;
use operators::rules::plugin::PluginSpec;
use operators::source::kafka::KafkaSettings;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct GraphError {
    pub file: String,
    pub message: String,
}

/// A graph of the retired batch engine (`pipeline.kind = "batch"`) is refused with one message
/// saying what replaced it, before its other sections would be reported one unknown key at a time.
fn refuse_removed_kind(path: &Path) -> Result<(), GraphError> {
    #[derive(Deserialize)]
    struct Peek {
        pipeline: Option<PeekPipeline>,
    }
    #[derive(Deserialize)]
    struct PeekPipeline {
        kind: Option<toml::Value>,
    }
    let peek: Peek = parse_file(path)?;
    match peek.pipeline.and_then(|p| p.kind) {
        None => Ok(()),
        Some(kind) => Err(GraphError {
            file: path.display().to_string(),
            message: format!(
                "pipeline.kind ({kind}): this key is gone; every graph now runs on the one engine, in --mode stream and --mode replay. \
                 Remove it; a former batch graph also declares [source] with a reader schema, [tables] raw/curated/rejected by name, \
                 [upsert] partition_by and [curated] columns instead of [tables.raw]/[tables.curated] (README \"Writing a graph\"; graphs/movies.toml is the converted movies graph)"
            ),
        }),
    }
}

/// Reads and deserializes a graph file; errors name the file, the key, the problem and the line.
pub fn parse_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, GraphError> {
    let file = path.display().to_string();
    let fail = |message: String| GraphError { file: file.clone(), message };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read the graph file: {e}")))?;
    let deserializer = toml::Deserializer::new(&text);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let location = e.inner().span().map(|span| {
            let line = text[..span.start.min(text.len())].lines().count().max(1);
            format!(" (line {line})")
        });
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { format!("{key}: ") };
        fail(format!("{key}{}{}", e.inner().message().trim(), location.unwrap_or_default()))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphFile {
    pub pipeline: PipelineSection,
    pub catalog: CatalogSection,
    pub source: SourceSection,
    pub tables: TablesSection,
    pub upsert: operators::pipeline::UpsertSection,
    pub curated: operators::pipeline::CuratedSection,
    /// Validation rules, in order (see README, "Graph file reference").
    #[serde(default)]
    pub validate: Vec<operators::pipeline::ValidationSection>,
    /// Derivations, in order, applied to every record that passed validation.
    #[serde(default)]
    pub stages: Vec<StageSection>,
    #[serde(default)]
    pub rules: RulesSection,
    #[serde(default)]
    pub commit: CommitSection,
    /// Data-quality checks per table (role `raw`/`curated`/`rejected` or the table's name).
    #[serde(default)]
    pub checks: std::collections::BTreeMap<String, Vec<CheckSection>>,
    #[serde(default)]
    pub maintenance: MaintenanceSection,
}

/// One `[[stages]]` entry: a built-in derivation ([`Stage`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    /// rename, upper, cast, list_length, day.
    pub kind: String,
    pub column: String,
    /// rename: the new name; cast: the Iceberg type.
    pub to: Option<String>,
    /// list_length, day: the new column.
    pub into: Option<String>,
    /// cast of integers to a timestamp, day of integers: seconds, milliseconds or microseconds.
    pub unit: Option<String>,
    /// list_length: make the new column `length > greater_than` (a boolean).
    pub greater_than: Option<i64>,
}

/// A stage as a graph file's `[[stages]]` entry declares it .
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

/// `runtime maintain` settings; every key has a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceSection {
    /// Compaction writes files near this size; files under 3/4 of it are small.
    pub target_file_size: String,
    /// Compact a partition once it has at least this many small files.
    pub min_small_files: usize,
    /// Expire snapshots older than this ...
    pub snapshot_retention: String,
    /// ... keeping at least the newest this many.
    pub keep_snapshots: usize,
    /// Orphan cleanup leaves unreferenced files younger than this alone.
    pub orphan_age: String,
    /// The curated writer rewrites a changed partition once it holds this many files (0: never).
    pub compact_after_files: usize,
    /// Stream: run compaction (raw, rejected), expiry and orphan cleanup this often ("off": never).
    pub schedule: String,
}

impl Default for MaintenanceSection {
    fn default() -> Self {
        MaintenanceSection {
            target_file_size: "128MiB".into(),
            min_small_files: 2,
            snapshot_retention: "7d".into(),
            keep_snapshots: 10,
            orphan_age: "1d".into(),
            compact_after_files: 16,
            schedule: "off".into(),
        }
    }
}

/// One data-quality check; which keys it takes depends on `kind` (see README.md, "Checks").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSection {
    pub name: String,
    /// not_null, range, uuid, pattern, unique, row_count, schema, freshness.
    pub kind: String,
    pub policy: Policy,
    pub column: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// freshness: a duration such as "2d".
    pub max_age: Option<String>,
    /// schema: "name Type" per column, in order (Arrow type names).
    pub columns: Option<Vec<String>>,
    /// row_count: also judge stream epochs (default false).
    pub in_stream: Option<bool>,
    /// pattern: a regular expression the whole value must match.
    pub pattern: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CatalogSection {
    /// Iceberg SQL catalog on a SQLite file; data in a local folder or an S3 bucket
    /// (`warehouse = "s3://bucket/prefix"` with an `[catalog.s3]` section).
    Sql {
        name: String,
        database: PathBuf,
        warehouse: String,
        #[serde(default)]
        s3: Option<S3Section>,
    },
    /// Iceberg REST catalog at `uri`; the table files in a local folder or an S3 bucket as for
    /// `sql` (with a REST catalog, `warehouse` says how to reach the files the server places).
    Rest(RestSection),
}

/// An Iceberg REST catalog. Like every secret, the token and the client secret come from
/// environment variables or files the graph names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestSection {
    pub name: String,
    pub uri: String,
    pub warehouse: String,
    #[serde(default)]
    pub s3: Option<S3Section>,
    /// The warehouse name the server expects in its config request (Polaris: the catalog).
    pub server_warehouse: Option<String>,
    /// The path prefix of the catalog's endpoints, unless the server's config sets one.
    pub prefix: Option<String>,
    /// A bearer token, from this environment variable or file.
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    /// OAuth2 client credentials: the id, and the secret from a variable or a file.
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// The OAuth2 token endpoint (default: `{uri}/v1/oauth/tokens`).
    pub oauth2_server_uri: Option<String>,
    /// The scope asked for with client credentials (default `catalog`).
    pub scope: Option<String>,
}

/// How to reach an S3-compatible warehouse. Secrets are never written in the graph: they come
/// from environment variables or files it names, or from the AWS chain when none is named.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    /// The store's address, e.g. `http://127.0.0.1:9000`; absent for AWS itself.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `endpoint/bucket/key` addressing instead of `bucket.endpoint/key`.
    #[serde(default)]
    pub path_style: bool,
    /// Environment variables holding the key pair (and session token).
    pub access_key_id_env: Option<String>,
    pub secret_access_key_env: Option<String>,
    pub session_token_env: Option<String>,
    /// A file holding the secret access key (e.g. a mounted secret), instead of its variable.
    pub secret_access_key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    pub topic: String,
    pub brokers: String,
    pub group_id: String,
    /// The reader schema (`.avsc`) records are resolved into.
    pub reader_schema: PathBuf,
    /// Which client fetches records: `auto` (default), `native` or `librdkafka`.
    pub fetch: Option<String>,
    /// Further librdkafka client settings, passed as given.
    #[serde(default)]
    pub kafka: std::collections::BTreeMap<String, toml::Value>,
    pub registry: RegistrySection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    pub url: String,
    /// Per request; an unreachable registry is retried while the stream waits.
    #[serde(default = "default_registry_timeout")]
    pub timeout: String,
}

fn default_registry_timeout() -> String {
    "10s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablesSection {
    pub raw: String,
    pub curated: String,
    pub rejected: String,
    /// Parquet codec (and level) of the tables `init` creates: `zstd(1)`, `lz4`, `snappy`, ...
    /// (absent: the engine's default, `zstd(1)`).
    pub compression: Option<String>,
    /// `delta` or `plain`: how the columns holding a distinct value per row (key, order,
    /// ingestion time, offset) are encoded in the tables `init` creates (absent: `delta`).
    pub distinct_encoding: Option<String>,
    /// More columns written without a Parquet dictionary, encoded like the distinct ones, in the
    /// tables `init` creates (absent: none).
    #[serde(default)]
    pub without_dictionary: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSection {
    /// Only to say where it went (a `[[validate]]` rule now).
    pub future_tolerance: Option<toml::Value>,
    /// Only to say where it went (the approval plugin's config).
    pub approval_threshold: Option<toml::Value>,
    /// Business rules as plugins, applied in this order.
    #[serde(default)]
    pub plugins: Vec<PluginSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    /// How errors and the rejected table name the plugin (default: the name it describes itself with).
    pub name: Option<String>,
    /// The shared library (`.so`), relative to the graph file's folder.
    pub path: PathBuf,
    /// Passed to the plugin as JSON; its own documentation lists the keys.
    #[serde(default)]
    pub config: toml::Table,
}

/// `[commit]`; every key has a default (the shipped ratings graph states them all).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommitSection {
    /// Stream: one epoch (one commit per table) per interval.
    pub interval: String,
    pub target_file_size: String,
    /// Compare-and-swap attempts before a commit gives up.
    pub max_attempts: u32,
    /// Replay: consecutive ingestion days go into one epoch up to this many events.
    pub replay_epoch_events: u64,
    /// Stream: an epoch also closes once it has read this many records.
    pub stream_epoch_events: u64,
}

impl Default for CommitSection {
    fn default() -> Self {
        CommitSection {
            interval: "10s".into(),
            target_file_size: "128MiB".into(),
            max_attempts: 8,
            replay_epoch_events: 2_000_000,
            stream_epoch_events: 1_000_000,
        }
    }
}

/// A loaded, validated graph.
#[derive(Debug, Clone)]
pub struct Graph {
    pub path: PathBuf,
    pub name: String,
    pub catalog: CatalogSettings,
    pub topic: String,
    pub kafka: KafkaSettings,
    pub registry_url: String,
    pub registry_timeout: std::time::Duration,
    pub reader_schema_path: PathBuf,
    pub reader_schema: apache_avro::Schema,
    /// The pipeline the graph declares: its tables' columns, key, order and partitioning.
    pub pipeline: Arc<Pipeline>,
    pub commit_interval: std::time::Duration,
    pub raw: String,
    pub curated: String,
    pub rejected: String,
    pub rules: Rules,
    /// The rule plugins as the graph names them; loaded (and checked) by [`Graph::rule_chain`].
    pub plugins: Vec<PluginSpec>,
    pub target_file_size: usize,
    pub commit: CommitOptions,
    pub replay_epoch_events: u64,
    /// Stream: an epoch closes after `commit_interval` or once it has read this many records.
    pub stream_epoch_events: u64,
    /// Data-quality checks by full table name (tables without checks are absent).
    pub checks: BTreeMap<String, Arc<Checks>>,
    /// `runtime maintain` settings (dry_run off).
    pub maintenance: operators::maintain::MaintainSettings,
    /// The curated writer rewrites a changed partition holding this many files or more.
    pub compact_after_files: Option<usize>,
    /// Stream: how often maintenance runs in the background.
    pub maintenance_schedule: Option<std::time::Duration>,
}

impl Graph {
    pub fn load(path: &Path) -> Result<Graph, GraphError> {
        refuse_removed_kind(path)?;
        let parsed: GraphFile = parse_file(path)?;
        let folder = path.parent().unwrap_or(Path::new("."));
        Self::validate(parsed, folder).map(|mut graph| {
            graph.path = path.to_path_buf();
            graph
        })
        .map_err(|message| GraphError { file: path.display().to_string(), message })
    }

    fn validate(file: GraphFile, folder: &Path) -> Result<Graph, String> {
        let catalog = catalog_settings(file.catalog, folder)?;
        let lateness_days = match file.upsert.lateness.trim() {
            "off" => Rules::LATENESS_OFF,
            text => {
                let lateness = parse_duration("upsert.lateness", text)?;
                if lateness.as_secs() % 86_400 != 0 {
                    return Err(format!("upsert.lateness: expected whole days such as \"5d\" or \"off\", found \"{}\"", file.upsert.lateness));
                }
                (lateness.as_secs() / 86_400) as i32
            }
        };
        if file.rules.future_tolerance.is_some() {
            return Err("rules.future_tolerance: declared as a validation rule now: [[validate]] column = \"<time column>\", \
                        rule = \"not_after_ingestion\", tolerance = \"1h\""
                .into());
        }
        if file.rules.approval_threshold.is_some() {
            return Err("rules.approval_threshold: the approval rule is a plugin now; set `threshold` in its config \
                        ([[rules.plugins]] name = \"approval\", config = { threshold = 7.0 })"
                .into());
        }
        let mut plugins = Vec::with_capacity(file.rules.plugins.len());
        for (index, plugin) in file.rules.plugins.into_iter().enumerate() {
            let config = serde_json::to_value(&plugin.config)
                .map_err(|e| format!("rules.plugins[{index}].config: cannot pass it on as JSON: {e}"))?;
            plugins.push(PluginSpec { label: plugin.name, path: folder.join(plugin.path), config, base_dir: folder.to_path_buf() });
        }
        let target_file_size = parse_size("commit.target_file_size", &file.commit.target_file_size)?;
        if file.commit.replay_epoch_events == 0 {
            return Err("commit.replay_epoch_events: expected at least 1".into());
        }
        if file.commit.stream_epoch_events == 0 {
            return Err("commit.stream_epoch_events: expected at least 1".into());
        }
        if file.commit.max_attempts == 0 {
            return Err("commit.max_attempts: expected at least 1".into());
        }
        let commit_interval = parse_duration("commit.interval", &file.commit.interval)?;
        if commit_interval < std::time::Duration::from_millis(100) {
            return Err(format!("commit.interval: expected at least 100ms, found \"{}\"", file.commit.interval));
        }
        let registry_timeout = parse_duration("source.registry.timeout", &file.source.registry.timeout)?;
        let registry_url = file.source.registry.url.trim().to_string();
        if !(registry_url.starts_with("http://") || registry_url.starts_with("https://")) {
            return Err(format!("source.registry.url: expected an http:// or https:// address, found \"{registry_url}\""));
        }
        if file.source.brokers.trim().is_empty() {
            return Err("source.brokers: expected host:port[,host:port…]".into());
        }
        let reader_schema_path = folder.join(&file.source.reader_schema);
        let schema_text = std::fs::read_to_string(&reader_schema_path)
            .map_err(|e| format!("source.reader_schema: cannot read {}: {e}", reader_schema_path.display()))?;
        let reader_schema = apache_avro::Schema::parse_str(&schema_text)
            .map_err(|e| format!("source.reader_schema: {} is not an Avro schema: {e}", reader_schema_path.display()))?;
        let stages = file
            .stages
            .into_iter()
            .enumerate()
            .map(|(index, section)| stage_from(section).map_err(|e| format!("stages[{index}]: {e}")))
            .collect::<Result<Vec<_>, String>>()?;
        let mut pipeline = Pipeline::new(&reader_schema, &file.upsert, &file.validate, stages, &file.curated)?;
        if let Some(compression) = &file.tables.compression {
            pipeline.compression = operators::writer::parse_compression(compression).map_err(|e| format!("tables.compression: {e}"))?;
        }
        if let Some(encoding) = &file.tables.distinct_encoding {
            pipeline.distinct_encoding =
                operators::writer::DistinctEncoding::parse(encoding).map_err(|e| format!("tables.distinct_encoding: {e}"))?;
        }
        pipeline.without_dictionary = without_dictionary(&pipeline, file.tables.without_dictionary)?;
        let pipeline = Arc::new(pipeline);
        let mut properties = std::collections::BTreeMap::new();
        for (key, value) in file.source.kafka {
            if let Some((name, text)) = kafka_secret(&key, &value, folder)? {
                properties.insert(name, text);
                continue;
            }
            let text = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err(format!("source.kafka.{key}: expected a string, number or boolean, found {}", other.type_str()));
                }
            };
            properties.insert(key, text);
        }
        let kafka = KafkaSettings {
            brokers: file.source.brokers.trim().to_string(),
            topic: file.source.topic.clone(),
            group_id: file.source.group_id,
            fetch: match &file.source.fetch {
                Some(text) => operators::source::kafka::native::FetchClient::parse(text).map_err(|e| format!("source.{e}"))?,
                None => Default::default(),
            },
            properties,
        };
        for (key, name) in [("tables.raw", &file.tables.raw), ("tables.curated", &file.tables.curated), ("tables.rejected", &file.tables.rejected)] {
            operators::catalog::parse_table_ident(name).map_err(|e| format!("{key}: {e}"))?;
        }
        let tables = [("raw", &file.tables.raw), ("curated", &file.tables.curated), ("rejected", &file.tables.rejected)];
        let mut checks = BTreeMap::new();
        for (table, sections) in file.checks {
            let Some((role, full)) = tables.iter().find(|(role, full)| *role == table || **full == table) else {
                return Err(format!("checks.{table}: no such table; checks are declared under raw, curated or rejected"));
            };
            let declared = sections
                .into_iter()
                .enumerate()
                .map(|(index, section)| {
                    check_from(section).map_err(|e| format!("checks.{table}[{index}]: {e}"))
                })
                .collect::<Result<Vec<Check>, String>>()?;
            let declared = Checks::new(declared).map_err(|e| format!("checks.{table}: {e}"))?;
            let layout = match *role {
                "raw" => pipeline.raw_layout(),
                "curated" => pipeline.curated_layout(),
                _ => pipeline.rejected_layout(),
            }
            .and_then(|layout| operators::schema::arrow_schema(&layout.schema))
            .map_err(|e| format!("checks.{table}: {e}"))?;
            declared.validate(full, &layout).map_err(|e| format!("checks.{table}: {e}"))?;
            checks.insert(full.to_string(), Arc::new(declared));
        }
        let section = &file.maintenance;
        let maintenance = operators::maintain::MaintainSettings {
            target_file_size: parse_size("maintenance.target_file_size", &section.target_file_size)?,
            min_small_files: section.min_small_files,
            snapshot_retention: parse_duration("maintenance.snapshot_retention", &section.snapshot_retention)?,
            keep_snapshots: section.keep_snapshots,
            orphan_age: parse_duration("maintenance.orphan_age", &section.orphan_age)?,
            dry_run: false,
            commit: CommitOptions { max_attempts: file.commit.max_attempts, ..CommitOptions::default() },
        };
        if maintenance.min_small_files < 2 {
            return Err("maintenance.min_small_files: expected at least 2 (one small file has nothing to merge with)".into());
        }
        if maintenance.keep_snapshots < 1 {
            return Err("maintenance.keep_snapshots: expected at least 1 (the current snapshot is always kept)".into());
        }
        let compact_after_files = match section.compact_after_files {
            0 => None,
            1 => return Err("maintenance.compact_after_files: expected 0 (off) or at least 2".into()),
            n => Some(n),
        };
        let maintenance_schedule = match section.schedule.trim() {
            "off" => None,
            text => Some(parse_duration("maintenance.schedule", text)?),
        };
        let partitioning = &pipeline.partitioning;
        if lateness_days != Rules::LATENESS_OFF && partitioning.transform == PartitionTransform::Identity {
            let partition_type = pipeline.curated.iter().find(|(name, _)| *name == partitioning.column).map(|(_, ty)| ty);
            if !matches!(partition_type, Some(Type::Primitive(PrimitiveType::Date))) {
                return Err(format!(
                    "upsert.lateness: the curated partitions are identity({}), {}, not days: a lateness freezes partitions whose day is \
                     that many days before the ingestion date; partition by day(...) or by a date column, or set lateness = \"off\"",
                    partitioning.column,
                    partition_type.map_or_else(|| "a column curated does not list".to_string(), |ty| format!("a {ty} column"))
                ));
            }
        }
        let rules = Rules::new(pipeline.clone(), lateness_days);
        Ok(Graph {
            checks,
            maintenance,
            compact_after_files,
            maintenance_schedule,
            path: PathBuf::new(),
            name: file.pipeline.name,
            catalog,
            topic: file.source.topic,
            kafka,
            registry_url,
            registry_timeout,
            reader_schema_path,
            reader_schema,
            pipeline,
            commit_interval,
            raw: file.tables.raw,
            curated: file.tables.curated,
            rejected: file.tables.rejected,
            plugins,
            rules,
            target_file_size: target_file_size as usize,
            commit: CommitOptions { max_attempts: file.commit.max_attempts, ..CommitOptions::default() },
            replay_epoch_events: file.commit.replay_epoch_events,
            stream_epoch_events: file.commit.stream_epoch_events,
        })
    }

    /// The data-quality checks declared for table `full` (none: an empty set).
    pub fn checks_for(&self, full: &str) -> Arc<Checks> {
        self.checks.get(full).cloned().unwrap_or_default()
    }

    /// Loads the rule plugins and checks them against the columns the chain offers.
    pub fn rule_chain(&self) -> operators::Result<RuleChain> {
        RuleChain::load(&self.plugins, &self.pipeline)
    }

    /// The graph's tables as (role, full name).
    pub fn tables(&self) -> [(&'static str, &str); 3] {
        [("raw", &self.raw), ("curated", &self.curated), ("rejected", &self.rejected)]
    }

    /// Finds a table by role (`curated`), full name (`curated.movie_ratings`) or short name
    /// (`movie_ratings`).
    pub fn resolve_table(&self, name: &str) -> Option<&str> {
        self.lake().find(name).ok()
    }

    /// The graph's catalog, tables and checks, for the commands that look at tables.
    pub fn lake(&self) -> Lake<'_> {
        Lake { catalog: &self.catalog, tables: self.tables().to_vec(), checks: &self.checks }
    }
}

/// Where a graph's tables are and what they are checked for, whatever kind of pipeline fills them.
pub struct Lake<'a> {
    pub catalog: &'a CatalogSettings,
    /// (role, full name)
    pub tables: Vec<(&'static str, &'a str)>,
    /// Data-quality checks by full table name.
    pub checks: &'a BTreeMap<String, Arc<Checks>>,
}

impl<'a> Lake<'a> {
    /// A table by role (`curated`), full name (`curated.movie_ratings`) or short name
    /// (`movie_ratings`); the error lists the graph's tables.
    pub fn find(&self, name: &str) -> operators::Result<&'a str> {
        self.tables
            .iter()
            .find(|(role, full)| *role == name || *full == name || full.rsplit('.').next() == Some(name))
            .map(|(_, full)| *full)
            .ok_or_else(|| {
                let known: Vec<String> = self.tables.iter().map(|(role, full)| format!("{role} ({full})")).collect();
                operators::Error::NotFound(format!("unknown table {name:?}; this graph has {}", known.join(", ")))
            })
    }
}

/// `tables.without_dictionary`, each name checked to be a column of the raw, curated or rejected
/// table (a name no table has is a typo the writer would ignore without a word).
fn without_dictionary(pipeline: &Pipeline, names: Vec<String>) -> Result<Vec<String>, String> {
    let layouts = [pipeline.raw_layout(), pipeline.curated_layout(), pipeline.rejected_layout()]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tables: {e}"))?;
    let has = |name: &str| layouts.iter().any(|layout| layout.schema.field_by_name(name).is_some());
    for name in &names {
        if !has(name) {
            let mut columns: Vec<&str> = layouts.iter().flat_map(|l| l.schema.as_struct().fields().iter().map(|f| f.name.as_str())).collect();
            columns.sort_unstable();
            columns.dedup();
            return Err(format!("tables.without_dictionary: no table has a column {name:?}; the tables' columns are {}", columns.join(", ")));
        }
    }
    Ok(names)
}

/// A `[source.kafka]` secret: `NAME_env = "VARIABLE"` or `NAME_file = "path"` give librdkafka's
/// `NAME` from the environment or a file (e.g. `"sasl.password_env" = "KAFKA_PASSWORD"`); a
/// password or secret written in the graph itself is refused, so graphs can be shared and logged.
/// `None`: `key` is an ordinary setting.
fn kafka_secret(key: &str, value: &toml::Value, folder: &Path) -> Result<Option<(String, String)>, String> {
    let named = |value: &toml::Value| {
        value.as_str().map(str::to_string).ok_or_else(|| format!("source.kafka.{key}: expected a string"))
    };
    if let Some(name) = key.strip_suffix("_env") {
        return Ok(Some((name.to_string(), secret_from_env(&format!("source.kafka.{key}"), &named(value)?)?)));
    }
    if let Some(name) = key.strip_suffix("_file") {
        return Ok(Some((name.to_string(), secret_from_file(&format!("source.kafka.{key}"), &folder.join(named(value)?))?)));
    }
    if operators::source::kafka::is_secret_setting(key) {
        return Err(format!(
            "source.kafka.{key}: secrets are not written in the graph; name the environment variable holding it with \"{key}_env\" (or a file with \"{key}_file\")"
        ));
    }
    Ok(None)
}

/// The secret `section.{what}_env` or `section.{what}_file` names (at most one of them may be
/// given), or `None` when neither is.
fn secret_named(section: &str, what: &str, env: Option<String>, file: Option<PathBuf>, folder: &Path) -> Result<Option<Secret>, String> {
    let value = match (env, file) {
        (Some(_), Some(_)) => return Err(format!("{section}: give {what}_env or {what}_file, not both")),
        (Some(variable), None) => secret_from_env(&format!("{section}.{what}_env"), &variable)?,
        (None, Some(file)) => secret_from_file(&format!("{section}.{what}_file"), &folder.join(file))?,
        (None, None) => return Ok(None),
    };
    Ok(Some(Secret::new(value)))
}

/// The value of the environment variable `variable`, which the graph's `key` names.
fn secret_from_env(key: &str, variable: &str) -> Result<String, String> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(format!("{key} names the environment variable {variable}, which is not set")),
    }
}

/// What the file at `path`, which the graph's `key` names, holds (without its final line break).
fn secret_from_file(key: &str, path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// The catalog a graph names, paths resolved against the graph file's folder.
pub(crate) fn catalog_settings(section: CatalogSection, folder: &Path) -> Result<CatalogSettings, String> {
    match section {
        CatalogSection::Sql { name, database, warehouse, s3 } => {
            if name.trim().is_empty() {
                return Err("catalog.name: expected a non-empty catalog name".into());
            }
            let warehouse = warehouse_from(warehouse, s3, folder)?;
            Ok(CatalogSettings::sql(name, folder.join(database), warehouse))
        }
        CatalogSection::Rest(rest) => {
            let RestSection {
                name,
                uri,
                warehouse,
                s3,
                server_warehouse,
                prefix,
                token_env,
                token_file,
                client_id,
                client_secret_env,
                client_secret_file,
                oauth2_server_uri,
                scope,
            } = rest;
            if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                return Err(format!("catalog.uri {uri:?}: expected the REST catalog's http:// or https:// address"));
            }
            let token = secret_named("catalog", "token", token_env, token_file, folder)?;
            let client_secret = secret_named("catalog", "client_secret", client_secret_env, client_secret_file, folder)?;
            let auth = match (token, client_id, client_secret) {
                (None, None, None) => RestAuth::None,
                (Some(token), None, None) => RestAuth::Token(token),
                (None, Some(client_id), Some(client_secret)) => {
                    RestAuth::ClientCredentials { client_id, client_secret, token_endpoint: oauth2_server_uri.clone(), scope: scope.clone() }
                }
                (Some(_), _, _) => return Err("catalog: give a token (token_env / token_file) or client credentials, not both".into()),
                (None, Some(_), None) => {
                    return Err("catalog.client_id needs its secret: client_secret_env or client_secret_file".into());
                }
                (None, None, Some(_)) => return Err("catalog: the client secret needs catalog.client_id".into()),
            };
            if !matches!(auth, RestAuth::ClientCredentials { .. }) && (oauth2_server_uri.is_some() || scope.is_some()) {
                return Err("catalog.oauth2_server_uri and catalog.scope apply to client credentials (client_id + client secret)".into());
            }
            let warehouse = warehouse_from(warehouse, s3, folder)?;
            let connection = CatalogConnection::Rest(RestSettings { uri, server_warehouse, prefix, auth });
            Ok(CatalogSettings { name, connection, warehouse })
        }
    }
}

/// Where the table files go: `s3://bucket[/prefix]` (with `[catalog.s3]`), or a local folder.
fn warehouse_from(warehouse: String, s3: Option<S3Section>, folder: &Path) -> Result<Warehouse, String> {
    match (warehouse.strip_prefix("s3://"), s3) {
        (Some(_), s3) => Ok(Warehouse::S3(s3_warehouse(warehouse.trim_end_matches('/').to_string(), s3.unwrap_or_default(), folder)?)),
        (None, Some(_)) => Err(format!("catalog.s3 is set but catalog.warehouse ({warehouse:?}) is not an s3://bucket[/prefix] location")),
        (None, None) if warehouse.contains("://") => {
            Err(format!("catalog.warehouse {warehouse:?}: expected a local folder or s3://bucket[/prefix]"))
        }
        (None, None) => Ok(Warehouse::Local(folder.join(warehouse))),
    }
}

/// An S3 warehouse with its credentials read from where the graph says.
fn s3_warehouse(uri: String, section: S3Section, folder: &Path) -> Result<S3Warehouse, String> {
    let S3Section { endpoint, region, path_style, access_key_id_env, secret_access_key_env, session_token_env, secret_access_key_file } =
        section;
    let from_env = |key: &str, variable: &str| secret_from_env(&format!("catalog.s3.{key}"), variable).map(Secret::new);
    let secret = secret_named("catalog.s3", "secret_access_key", secret_access_key_env, secret_access_key_file, folder)?;
    let credentials = match (access_key_id_env, secret) {
        (Some(variable), Some(secret_access_key)) => Some(S3Credentials {
            access_key_id: from_env("access_key_id_env", &variable)?,
            secret_access_key,
            session_token: session_token_env.map(|v| from_env("session_token_env", &v)).transpose()?,
        }),
        (None, None) if session_token_env.is_none() => None,
        _ => {
            return Err(
                "catalog.s3: name both access_key_id_env and the secret (secret_access_key_env or secret_access_key_file), \
                 or neither to use the AWS environment variables and profile files"
                    .into(),
            );
        }
    };
    // As the AWS tools choose it: the graph, then the environment, then us-east-1 (which
    // self-hosted stores accept).
    let region = region
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".to_string());
    Ok(S3Warehouse { uri, endpoint, region: Some(region), path_style, credentials })
}

/// A check as declared: the keys `kind` needs must be there, the others must not.
pub(crate) fn check_from(section: CheckSection) -> Result<Check, String> {
    let CheckSection { name, kind, policy, column, min, max, max_age, columns, in_stream, pattern } = section;
    let given: Vec<&str> = [
        ("column", column.is_some()),
        ("min", min.is_some()),
        ("max", max.is_some()),
        ("max_age", max_age.is_some()),
        ("columns", columns.is_some()),
        ("in_stream", in_stream.is_some()),
        ("pattern", pattern.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, present)| present.then_some(key))
    .collect();
    let allow = |allowed: &[&str]| -> Result<(), String> {
        match given.iter().find(|key| !allowed.contains(key)) {
            Some(key) => Err(format!("check `{name}`: a {kind} check does not take `{key}` (it takes: {})", allowed.join(", "))),
            None => Ok(()),
        }
    };
    let need_column = || column.clone().ok_or_else(|| format!("check `{name}`: a {kind} check needs `column`"));
    let kind = match kind.as_str() {
        "not_null" => {
            allow(&["column"])?;
            CheckKind::NotNull { column: need_column()? }
        }
        "uuid" => {
            allow(&["column"])?;
            CheckKind::Uuid { column: need_column()? }
        }
        "pattern" => {
            allow(&["column", "pattern"])?;
            let text = pattern.ok_or_else(|| format!("check `{name}`: a pattern check needs `pattern` (a regular expression the whole value must match)"))?;
            let pattern = TextPattern::new(&text).map_err(|e| format!("check `{name}`: pattern {text:?} is not a regular expression: {e}"))?;
            CheckKind::Pattern { column: need_column()?, pattern }
        }
        "unique" => {
            allow(&["column"])?;
            CheckKind::Unique { column: need_column()? }
        }
        "range" => {
            allow(&["column", "min", "max"])?;
            if min.is_none() && max.is_none() {
                return Err(format!("check `{name}`: a range check needs `min`, `max` or both"));
            }
            if let (Some(low), Some(high)) = (min, max)
                && low > high
            {
                return Err(format!("check `{name}`: min {low} is above max {high}"));
            }
            CheckKind::Range { column: need_column()?, min, max }
        }
        "row_count" => {
            allow(&["min", "in_stream"])?;
            let min = min.ok_or_else(|| format!("check `{name}`: a row_count check needs `min`"))?;
            if min < 0.0 || min.fract() != 0.0 {
                return Err(format!("check `{name}`: min must be a whole number of rows, found {min}"));
            }
            CheckKind::RowCount { min: min as u64, in_stream: in_stream.unwrap_or(false) }
        }
        "schema" => {
            allow(&["columns"])?;
            let columns = columns.ok_or_else(|| format!("check `{name}`: a schema check needs `columns`"))?;
            let columns = columns
                .iter()
                .map(|text| match text.split_once(char::is_whitespace) {
                    Some((column, data_type)) => {
                        let data_type = data_type.trim();
                        let parsed = data_type
                            .parse::<arrow::datatypes::DataType>()
                            .map_err(|e| format!("check `{name}`: {text:?}: {data_type:?} is not an Arrow type ({e})"))?;
                        Ok((column.to_string(), operators::checks::type_text(&parsed)))
                    }
                    None => Err(format!("check `{name}`: expected \"column Type\" such as \"rating Float32\", found {text:?}")),
                })
                .collect::<Result<Vec<_>, String>>()?;
            CheckKind::Schema { columns }
        }
        "freshness" => {
            allow(&["column", "max_age"])?;
            let text = max_age.ok_or_else(|| format!("check `{name}`: a freshness check needs `max_age`"))?;
            let max_age = parse_duration("max_age", &text).map_err(|e| format!("check `{name}`: {e}"))?;
            CheckKind::Freshness { column: need_column()?, max_age_secs: max_age.as_secs() as i64 }
        }
        other => {
            return Err(format!(
                "check `{name}`: unknown kind {other:?} (expected not_null, range, uuid, pattern, unique, row_count, schema or freshness)"
            ));
        }
    };
    Ok(Check { name, policy, kind })
}

pub(crate) fn parse_size(key: &str, text: &str) -> Result<u64, String> {
    let size = text
        .parse::<bytesize::ByteSize>()
        .map_err(|e| format!("{key}: expected a size such as \"128MiB\", found \"{text}\" ({e})"))?
        .as_u64();
    if size < 1024 * 1024 {
        return Err(format!("{key}: expected at least 1MiB"));
    }
    Ok(size)
}

pub(crate) fn parse_duration(key: &str, text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{key}: expected a duration such as \"5d\" or \"1h\", found \"{text}\" ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../../graphs/ratings.toml");
    const READER_SCHEMA: &str = include_str!("../../graphs/schemas/movie_rating.avsc");

    fn load(text: &str) -> Result<Graph, GraphError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::create_dir(dir.path().join("schemas")).unwrap();
        std::fs::write(dir.path().join("schemas/movie_rating.avsc"), READER_SCHEMA).unwrap();
        Graph::load(&path)
    }

    #[test]
    fn shipped_graph_loads_with_paths_relative_to_its_folder() {
        let graph = load(GOOD).unwrap();
        assert_eq!(graph.rules.lateness_days, 5);
        let off = load(&GOOD.replace("lateness = \"5d\"", "lateness = \"off\"")).unwrap();
        assert_eq!(off.rules.lateness_days, Rules::LATENESS_OFF);
        assert_eq!(graph.pipeline.key, ["event_id"]);
        assert_eq!(graph.pipeline.partitioning.column, "rating_date");
        assert_eq!(graph.pipeline.validations.len(), 6);
        let names: Vec<_> = graph.plugins.iter().map(|p| p.label.clone().unwrap()).collect();
        assert_eq!(names, ["approval", "blocklist"]);
        assert_eq!(graph.plugins[0].config, serde_json::json!({"threshold": 7.0}));
        assert!(graph.plugins[0].path.starts_with(graph.path.parent().unwrap()));
        let CatalogConnection::Sql { database } = &graph.catalog.connection else { panic!("the shipped graph uses the SQL catalog") };
        assert!(database.starts_with(graph.path.parent().unwrap()));
        assert_eq!(graph.target_file_size, 128 * 1024 * 1024);
        assert_eq!(graph.resolve_table("movie_ratings"), Some("curated.movie_ratings"));
    }

    #[test]
    fn the_tables_compression_is_a_codec_with_an_optional_level() {
        use operators::writer::{default_compression, parse_compression};
        assert_eq!(load(GOOD).unwrap().pipeline.compression, default_compression());
        let with = |codec: &str| GOOD.replace("compression = \"zstd(1)\"", &format!("compression = \"{codec}\""));
        let graph = load(&with("lz4")).unwrap();
        assert_ne!(graph.pipeline.compression, default_compression());
        assert_eq!(graph.pipeline.compression, parse_compression("lz4").unwrap());
        assert_eq!(graph.pipeline.raw_layout().unwrap().compression, graph.pipeline.compression);
        let message = load(&with("zstd(40)")).unwrap_err().to_string();
        assert!(message.contains("tables.compression: compression level \"40\" for zstd: expected a whole number up to 22"), "{message}");
    }

    #[test]
    fn the_tables_distinct_encoding_is_delta_unless_the_graph_says_plain() {
        use operators::writer::DistinctEncoding;
        let shipped = GOOD.lines().find(|line| line.starts_with("distinct_encoding =")).expect("the shipped graph states it");
        let without = GOOD.replace(shipped, "");
        assert_eq!(load(&without).unwrap().pipeline.distinct_encoding, DistinctEncoding::Delta);
        let with = |encoding: &str| GOOD.replace(shipped, &format!("distinct_encoding = \"{encoding}\""));
        let graph = load(&with("Plain")).unwrap();
        assert_eq!(graph.pipeline.distinct_encoding, DistinctEncoding::Plain);
        assert_eq!(graph.pipeline.curated_layout().unwrap().distinct_encoding, DistinctEncoding::Plain);
        let message = load(&with("rle")).unwrap_err().to_string();
        assert!(message.contains("tables.distinct_encoding: unknown encoding \"rle\": expected delta or plain"), "{message}");
    }

    #[test]
    fn columns_without_a_dictionary_join_the_distinct_ones_in_every_table_and_a_typo_is_refused() {
        let shipped = GOOD.lines().find(|line| line.starts_with("without_dictionary =")).expect("the shipped graph states it");
        let with = |columns: &str| GOOD.replace(shipped, &format!("without_dictionary = {columns}"));
        let distinct = ["event_id", "rating_timestamp", "ingestion_ts_ms", "source_offset"];
        let graph = load(&with("[]")).unwrap();
        assert_eq!(graph.pipeline.plain_columns(), distinct);
        let graph = load(&with("[\"movie_id\", \"source_topic\", \"event_id\"]")).unwrap();
        let expected: Vec<&str> = distinct.into_iter().chain(["movie_id", "source_topic"]).collect();
        for layout in [graph.pipeline.raw_layout(), graph.pipeline.curated_layout(), graph.pipeline.rejected_layout()] {
            assert_eq!(layout.unwrap().plain_columns, expected);
        }
        let message = load(&with("[\"movie\"]")).unwrap_err().to_string();
        assert!(message.contains("tables.without_dictionary: no table has a column \"movie\"; the tables' columns are "), "{message}");
        assert!(message.contains("movie_id"), "{message}");
    }

    #[test]
    fn stages_derive_curated_columns_and_may_not_touch_the_key() {
        let with_stage = |stage: &str, column: &str| {
            GOOD.replace("[rules]\n#", &format!("{stage}\n[rules]\n#")).replace("\"rating_date\"]", &format!("\"rating_date\", \"{column}\"]"))
        };
        let graph = load(&with_stage("[[stages]]\nkind = \"day\"\ncolumn = \"rating_timestamp\"\nunit = \"seconds\"\ninto = \"rated_on\"", "rated_on")).unwrap();
        let layout = graph.pipeline.curated_layout().unwrap();
        let rated_on = layout.schema.field_by_name("rated_on").expect("the stage's column is curated");
        assert_eq!(rated_on.field_type.to_string(), "date");
        let renamed = with_stage("[[stages]]\nkind = \"rename\"\ncolumn = \"event_id\"\nto = \"id\"", "id");
        let message = load(&renamed).unwrap_err().to_string();
        assert!(message.contains("stages: event_id is the key, partition or lineage"), "{message}");
        // The order may be cast to another order type (records are then ordered by its curated
        // value), not to anything else.
        let cast = |to: &str| {
            let unit = if to == "timestamptz" { "unit = \"seconds\"\n" } else { "" };
            let stage = format!("[[stages]]\nkind = \"cast\"\ncolumn = \"rating_timestamp\"\nto = \"{to}\"\n{unit}");
            GOOD.replace("[rules]\n#", &format!("{stage}\n[rules]\n#"))
                .replace("day(rating_timestamp, seconds) as rating_date", "day(ingestion_ts_ms, milliseconds) as rating_date")
        };
        assert!(load(&cast("timestamptz")).unwrap().pipeline.order_cast);
        let message = load(&cast("string")).unwrap_err().to_string();
        assert!(message.contains("stages: the order rating_timestamp becomes Utf8; it must stay an integer, date or timestamp"), "{message}");
        assert!(!graph.pipeline.order_cast);
        let unknown = with_stage("[[stages]]\nkind = \"lower\"\ncolumn = \"user_id\"", "user_id2");
        assert!(load(&unknown).unwrap_err().to_string().contains("stages[0]: unknown stage kind \"lower\""));
    }

    #[test]
    fn the_fetch_client_defaults_to_auto_and_an_unknown_one_is_refused() {
        use operators::source::kafka::native::FetchClient;
        assert_eq!(load(GOOD).unwrap().kafka.fetch, FetchClient::Auto);
        let with = |value: &str| GOOD.replacen("[source]\n", &format!("[source]\nfetch = \"{value}\"\n"), 1);
        assert_eq!(load(&with("librdkafka")).unwrap().kafka.fetch, FetchClient::Librdkafka);
        assert_eq!(load(&with("native")).unwrap().kafka.fetch, FetchClient::Native);
        let message = load(&with("fast")).unwrap_err().to_string();
        assert!(message.contains("source.fetch = \"fast\": expected \"auto\", \"native\" or \"librdkafka\""), "{message}");
    }

    #[test]
    fn kafka_secrets_come_from_the_environment_or_a_file_never_from_the_graph() {
        let with = |line: &str| GOOD.replace("\"fetch.max.bytes\" = ", &format!("{line}\n\"fetch.max.bytes\" = "));
        let message = load(&with("\"sasl.password\" = \"hunter2-in-the-graph\"")).unwrap_err().to_string();
        assert!(message.contains("source.kafka.sasl.password: secrets are not written in the graph"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let message = load(&with("\"sasl.password_env\" = \"RATINGS_FLOW_NO_SUCH_VARIABLE\"")).unwrap_err().to_string();
        assert!(message.contains("names the environment variable RATINGS_FLOW_NO_SUCH_VARIABLE, which is not set"), "{message}");
        // PATH is set in every test environment: it stands in for a variable holding a password.
        let graph = load(&with("\"sasl.password_env\" = \"PATH\"\n\"security.protocol\" = \"SASL_PLAINTEXT\"")).unwrap();
        assert_eq!(graph.kafka.properties["sasl.password"], std::env::var("PATH").unwrap());
        assert_eq!(graph.kafka.properties["security.protocol"], "SASL_PLAINTEXT");
        assert!(!format!("{:?}", graph.kafka).contains(&std::env::var("PATH").unwrap()), "settings print without the secret");
    }

    #[test]
    fn a_rest_catalog_takes_a_token_or_client_credentials_from_the_environment_never_from_the_graph() {
        let rest = |lines: &str| {
            GOOD.replace("kind = \"sql\"", "kind = \"rest\"")
                .replace("database = \"../.lakehouse/catalog.db\"", &format!("uri = \"http://127.0.0.1:8181\"\n{lines}"))
        };
        let path = std::env::var("PATH").unwrap();
        let graph = load(&rest("token_env = \"PATH\"\nprefix = \"lake\"")).unwrap();
        let CatalogConnection::Rest(settings) = &graph.catalog.connection else { panic!("a REST catalog") };
        assert_eq!(settings.uri, "http://127.0.0.1:8181");
        assert_eq!(settings.prefix.as_deref(), Some("lake"));
        assert!(matches!(&settings.auth, RestAuth::Token(token) if token.expose() == path));
        assert!(!format!("{:?}", graph.catalog).contains(&path), "settings print without the token");
        let graph = load(&rest("client_id = \"engine\"\nclient_secret_env = \"PATH\"\nscope = \"PRINCIPAL_ROLE:ALL\"")).unwrap();
        let CatalogConnection::Rest(settings) = &graph.catalog.connection else { panic!("a REST catalog") };
        assert!(matches!(&settings.auth, RestAuth::ClientCredentials { client_id, scope: Some(scope), .. }
            if client_id == "engine" && scope == "PRINCIPAL_ROLE:ALL"));
        let refused = [
            (rest("token = \"in-the-graph\""), "unknown field `token`"),
            (rest("token_env = \"PATH\"\nclient_id = \"x\"\nclient_secret_env = \"PATH\""), "a token (token_env / token_file) or client credentials, not both"),
            (rest("client_id = \"x\""), "catalog.client_id needs its secret"),
            (rest("scope = \"catalog\""), "apply to client credentials"),
            (rest("token_env = \"RATINGS_FLOW_NO_SUCH_VARIABLE\""), "catalog.token_env names the environment variable RATINGS_FLOW_NO_SUCH_VARIABLE"),
            (rest("").replace("http://127.0.0.1:8181", "127.0.0.1:8181"), "expected the REST catalog's http:// or https:// address"),
        ];
        for (text, expected) in refused {
            let message = load(&text).unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} should mention {expected:?}");
            assert!(!message.contains("in-the-graph"), "{message}");
        }
    }

    #[test]
    fn errors_name_the_key_and_what_was_expected() {
        let cases = [
            (GOOD.replace("[rules]", "[rules]\napproval_threshold = 7.0"), "rules.approval_threshold: the approval rule is a plugin now"),
            (GOOD.replace("[[rules.plugins]]\nname = \"approval\"\npath", "[[rules.plugins]]\nname = \"approval\"\nfile"), "unknown field `file`"),
            (GOOD.replace("[rules]", "[rules]\ncolour = 1"), "unknown field `colour`"),
            (GOOD.replace("lateness = \"5d\"", ""), "missing field `lateness`"),
            (GOOD.replace("name = \"ratings\"", "name = \"ratings\"\nkind = \"batch\""), "pipeline.kind (\"batch\"): this key is gone"),
            (GOOD.replace("lateness = \"5d\"", "lateness = \"36h\""), "upsert.lateness: expected whole days such as \"5d\" or \"off\""),
            (
                GOOD.replace("\"day(rating_timestamp, seconds) as rating_date\"", "\"identity(rating_timestamp)\"").replace(", \"rating_date\"]", "]"),
                "upsert.lateness: the curated partitions are identity(rating_timestamp), a long column, not days",
            ),
            (GOOD.replace("key = \"event_id\"", "key = \"user\""), "upsert.key: no event column \"user\""),
            (GOOD.replace("[rules]\n#", "[rules]\nfuture_tolerance = \"1h\"\n#"), "rules.future_tolerance: declared as a validation rule now"),
            (GOOD.replace("tolerance = \"1h\"", "tolerance = \"soon\""), "validate[5].tolerance: expected a duration"),
            (GOOD.replace("rule = \"range\"", "rule = \"between\""), "validate[3].rule: unknown rule \"between\""),
            (GOOD.replace("\"is_approved boolean\"", "\"is_approved\""), "curated.columns[4]: no column \"is_approved\""),
            (GOOD.replace("replay_epoch_events = 2000000", "replay_epoch_events = -3"), "commit.replay_epoch_events"),
            (GOOD.replace("stream_epoch_events = 1000000", "stream_epoch_events = 0"), "commit.stream_epoch_events: expected at least 1"),
            (GOOD.replace("schemas/movie_rating.avsc", "schemas/missing.avsc"), "source.reader_schema: cannot read"),
            (GOOD.replace("interval = \"10s\"", "interval = \"soon\""), "commit.interval"),
            (GOOD.replace("url = \"http://127.0.0.1:8081\"", "url = \"127.0.0.1:8081\""), "source.registry.url"),
        ];
        for (text, expected) in cases {
            let message = load(&text).unwrap_err().to_string();
            assert!(message.contains(expected), "{message:?} should mention {expected:?}");
            assert!(!message.contains('\n'), "{message:?} should be one line");
        }
    }
}
