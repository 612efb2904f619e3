//! Opening the lakehouse: the Iceberg catalog, how a commit is published to it, and the
//! pipeline's tables.
//!
//! Two catalogs:
//! - the embedded default, Iceberg's SQL catalog on a SQLite file: no server, and readable by any
//!   SQL-catalog client (PyIceberg's `SqlCatalog` among them). A commit writes the new metadata
//!   file and swaps the table's pointer row with a compare-and-swap. The catalog folder must exist
//!   unless the caller asks for creation (`runtime init`), so a typo in a path is an error
//!   instead of a fresh empty lakehouse;
//! - an Iceberg REST catalog ([`crate::rest_catalog`]): a commit sends its metadata changes with
//!   the requirements that make it a compare-and-swap (`assert-table-uuid`, and
//!   `assert-ref-snapshot-id` of `main` at the base's snapshot); the server writes the metadata.
//!
//! Either way the table files go to the warehouse: a local folder or an S3 bucket
//! (see [`crate::storage`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use iceberg::io::FileIOBuilder;
use iceberg::spec::{MAIN_BRANCH, TableMetadataBuildResult};
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, MetadataLocation, NamespaceIdent, TableCreation, TableIdent, TableRequirement};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalog, SqlCatalogBuilder};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::error::{Context, Error, Result};
use crate::rest_catalog::{CommitAnswer, RestClient, RestSettings};
use crate::schema::TableLayout;
use crate::storage::Warehouse;

/// Where the catalog lives and where the table files go.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogSettings {
    /// The catalog's name (the `catalog_name` column of the SQL catalog tables; a label for REST).
    pub name: String,
    pub connection: CatalogConnection,
    /// Where table data and metadata go: a local folder or an S3 bucket. With a REST catalog the
    /// server places tables; this says how to reach their files (scheme, endpoint, credentials).
    pub warehouse: Warehouse,
}

/// Which catalog holds the tables' pointers.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogConnection {
    /// The embedded SQL catalog in this SQLite file.
    Sql { database: PathBuf },
    /// An Iceberg REST catalog server.
    Rest(RestSettings),
}

impl CatalogSettings {
    /// The embedded default: a SQLite catalog file and a warehouse.
    pub fn sql(name: impl Into<String>, database: PathBuf, warehouse: Warehouse) -> CatalogSettings {
        CatalogSettings { name: name.into(), connection: CatalogConnection::Sql { database }, warehouse }
    }
}

/// An open catalog, and how our own commits publish to it.
pub struct Lakehouse {
    backend: Backend,
    name: String,
    warehouse: Warehouse,
}

enum Backend {
    /// The SQL catalog, plus direct access to its pointer table for the compare-and-swap.
    Sql { catalog: SqlCatalog, pointers: SqlitePool },
    Rest(RestClient),
}

/// What became of a commit sent to the catalog.
#[derive(Debug)]
pub enum Publication {
    Committed,
    /// Another writer's commit came first: nothing of this one was applied.
    Lost,
    /// The catalog did not say (a 5xx, a timeout): reload the table to see whether it landed.
    Unknown(String),
}

pub fn parse_table_ident(name: &str) -> Result<TableIdent> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(Error::User(format!("table name {name:?} must be namespace.table, e.g. curated.events")));
    }
    TableIdent::from_strs(parts).context(|| format!("table name {name:?}"))
}

/// Absolute and without `.`/`..`, so table locations read cleanly in every client.
fn absolute(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path).context(|| format!("resolving {}", path.display()))?;
    let mut clean = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            other => clean.push(other),
        }
    }
    Ok(clean)
}

impl Lakehouse {
    /// Opens the catalog. With `create`, makes the catalog folder, database and a local warehouse
    /// first.
    pub async fn open(settings: &CatalogSettings, create: bool) -> Result<Lakehouse> {
        let warehouse = match &settings.warehouse {
            Warehouse::Local(path) => Warehouse::Local(absolute(path)?),
            other => other.clone(),
        };
        if create && let Warehouse::Local(path) = &warehouse {
            std::fs::create_dir_all(path).context(|| format!("creating {}", path.display()))?;
        }
        let backend = match &settings.connection {
            CatalogConnection::Sql { database } => open_sql(&settings.name, database, &warehouse, create).await?,
            CatalogConnection::Rest(rest) => {
                let file_io = FileIOBuilder::new(warehouse.storage_factory()).with_props(warehouse.file_io_properties()).build();
                Backend::Rest(RestClient::new(rest.clone(), file_io)?)
            }
        };
        Ok(Lakehouse { backend, name: settings.name.clone(), warehouse })
    }

    /// Where the tables' files live.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// The embedded SQL catalog, for what only it can do (serving it over REST).
    pub fn sql_catalog(&self) -> Result<&SqlCatalog> {
        match &self.backend {
            Backend::Sql { catalog, .. } => Ok(catalog),
            Backend::Rest(client) => Err(Error::User(format!(
                "this graph's catalog is the REST catalog at {}; only an embedded (kind = \"sql\") catalog can be served",
                client.uri()
            ))),
        }
    }

    pub async fn load(&self, ident: &TableIdent) -> Result<Table> {
        match &self.backend {
            Backend::Sql { catalog, .. } => while_busy(|| self.load_sql(catalog, ident)).await,
            Backend::Rest(client) => client.load_table(ident).await,
        }
    }

    async fn load_sql(&self, catalog: &SqlCatalog, ident: &TableIdent) -> Result<Table> {
        if !catalog.table_exists(ident).await.context(|| format!("looking up table {ident}"))? {
            return Err(Error::NotFound(format!(
                "table {ident} does not exist in catalog {:?} (run `runtime init --graph <graph>` to create the pipeline's tables)",
                self.name
            )));
        }
        catalog.load_table(ident).await.context(|| format!("loading table {ident}"))
    }

    /// Creates the table (and its namespace) if missing; an existing table must have the layout's
    /// columns.
    pub async fn ensure_table(&self, ident: &TableIdent, layout: &TableLayout) -> Result<Table> {
        let namespace = ident.namespace().clone();
        if !self.namespace_exists(&namespace).await? {
            self.create_namespace(&namespace).await?;
        }
        if self.table_exists(ident).await? {
            let table = self.load(ident).await?;
            let existing = table.metadata().current_schema();
            for field in layout.schema.as_struct().fields() {
                match existing.field_by_name(&field.name) {
                    Some(have) if have.field_type == field.field_type => {}
                    Some(have) => {
                        return Err(Error::User(format!(
                            "table {ident} column {} has type {}, expected {}",
                            field.name, have.field_type, field.field_type
                        )));
                    }
                    None => return Err(Error::User(format!("table {ident} has no column {}", field.name))),
                }
            }
            return Ok(table);
        }
        let mut properties = HashMap::from([(crate::schema::PLAIN_COLUMNS_PROPERTY.to_string(), layout.plain_columns.join(","))]);
        properties.extend(crate::writer::compression_properties(layout.compression));
        properties.insert(crate::writer::DISTINCT_ENCODING_PROPERTY.to_string(), layout.distinct_encoding.name().to_string());
        match &self.backend {
            Backend::Sql { catalog, .. } => {
                let creation = TableCreation::builder()
                    .name(ident.name().to_string())
                    .schema(layout.schema.clone())
                    .partition_spec(layout.partition_spec()?)
                    .properties(properties)
                    .build();
                catalog.create_table(&namespace, creation).await.context(|| format!("creating table {ident}"))
            }
            Backend::Rest(client) => client.create_table(ident, layout.schema.clone(), layout.partition_spec()?, properties).await,
        }
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        match &self.backend {
            Backend::Sql { catalog, .. } => {
                catalog.namespace_exists(namespace).await.context(|| format!("looking up namespace {}", namespace_name(namespace)))
            }
            Backend::Rest(client) => client.namespace_exists(namespace).await,
        }
    }

    async fn create_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        match &self.backend {
            Backend::Sql { catalog, .. } => catalog
                .create_namespace(namespace, HashMap::new())
                .await
                .map(drop)
                .context(|| format!("creating namespace {}", namespace_name(namespace))),
            Backend::Rest(client) => client.create_namespace(namespace).await,
        }
    }

    async fn table_exists(&self, ident: &TableIdent) -> Result<bool> {
        match &self.backend {
            Backend::Sql { catalog, .. } => catalog.table_exists(ident).await.context(|| format!("looking up table {ident}")),
            Backend::Rest(client) => client.table_exists(ident).await,
        }
    }

    /// Publishes `built`, new metadata made from `base`'s, if nobody committed since `base` was
    /// loaded. SQL: writes the metadata file beside the base's and swaps the pointer from the
    /// base's location to it (the file of a lost swap is deleted). REST: sends the metadata's
    /// changes with the requirements that `base` is still the table's current state.
    pub async fn publish(&self, base: &Table, built: TableMetadataBuildResult) -> Result<Publication> {
        let ident = base.identifier();
        match &self.backend {
            Backend::Sql { pointers, .. } => {
                let context = || format!("writing new metadata of {ident}");
                let base_location = base.metadata_location_result().context(context)?.to_string();
                // A new file name (version + 1, fresh UUID): the base metadata file is never touched.
                let location =
                    MetadataLocation::from_str(&base_location).context(context)?.with_next_version().with_new_metadata(&built.metadata);
                built.metadata.write_to(base.file_io(), &location).await.context(context)?;
                let location = location.to_string();
                // Crash tests stop the process here: every file of the commit is written, the
                // catalog does not name it.
                fail::fail_point!("commit-before-swap");
                // A busy database refused the whole statement, so running it again is safe.
                if while_busy(|| self.swap_pointer(pointers, ident, &base_location, &location)).await? {
                    return Ok(Publication::Committed);
                }
                if let Err(error) = base.file_io().delete(&location).await {
                    tracing::warn!(%error, "could not delete the metadata file of a lost attempt");
                }
                Ok(Publication::Lost)
            }
            Backend::Rest(client) => {
                let requirements = vec![
                    TableRequirement::UuidMatch { uuid: base.metadata().uuid() },
                    TableRequirement::RefSnapshotIdMatch {
                        r#ref: MAIN_BRANCH.to_string(),
                        snapshot_id: base.metadata().current_snapshot_id(),
                    },
                ];
                fail::fail_point!("commit-before-swap");
                Ok(match client.commit(ident, requirements, built.changes).await? {
                    CommitAnswer::Committed => Publication::Committed,
                    CommitAnswer::Conflict(message) => {
                        tracing::debug!(table = %ident, "the REST catalog refused the commit: {message}");
                        Publication::Lost
                    }
                    CommitAnswer::Unknown(message) => Publication::Unknown(message),
                })
            }
        }
    }

    /// Points the embedded catalog's entry for `ident` from metadata file `expected` to `new`, if it
    /// still names `expected` (false otherwise). For tools that reset a table to an earlier
    /// metadata file (the commit benchmark); commits go through [`Lakehouse::publish`].
    pub async fn swap_metadata_pointer(&self, ident: &TableIdent, expected: &str, new: &str) -> Result<bool> {
        match &self.backend {
            Backend::Sql { pointers, .. } => while_busy(|| self.swap_pointer(pointers, ident, expected, new)).await,
            Backend::Rest(client) => Err(Error::User(format!(
                "the REST catalog at {} moves its pointers itself; only the embedded catalog's can be set",
                client.uri()
            ))),
        }
    }

    /// Moves the table's metadata pointer from `expected` to `new` in one statement. False when
    /// the pointer is no longer `expected` (another writer committed first).
    async fn swap_pointer(&self, pointers: &SqlitePool, ident: &TableIdent, expected: &str, new: &str) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
             WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? AND metadata_location = ?",
        )
        .bind(new)
        .bind(expected)
        .bind(&self.name)
        .bind(namespace_name(ident.namespace()))
        .bind(ident.name())
        .bind(expected)
        .execute(pointers)
        .await
        .context(|| format!("swapping the metadata pointer of {ident}"))?;
        Ok(result.rows_affected() == 1)
    }
}

/// Opens the embedded SQL catalog on `database` (made first with `create`).
async fn open_sql(name: &str, database: &Path, warehouse: &Warehouse, create: bool) -> Result<Backend> {
    let database = absolute(database)?;
    let folder = database.parent().unwrap_or(Path::new("/")).to_path_buf();
    if create {
        std::fs::create_dir_all(&folder).context(|| format!("creating {}", folder.display()))?;
    } else if !folder.is_dir() {
        return Err(Error::User(format!(
            "catalog folder {} does not exist: fix catalog.database in the graph file, or run `runtime init` to create a new lakehouse",
            folder.display()
        )));
    } else if !database.is_file() {
        return Err(Error::User(format!(
            "catalog database {} does not exist: run `runtime init --graph <graph>` first",
            database.display()
        )));
    }
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", database.display()))
        .context(|| format!("catalog database {}", database.display()))?
        .create_if_missing(create)
        .busy_timeout(std::time::Duration::from_secs(30));
    // A pool that outlives nothing: the SQL catalog opens its own pool on the same file; this
    // one only ever runs the compare-and-swap of a metadata pointer.
    let pointers = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .context(|| format!("opening catalog database {}", database.display()))?;
    // The catalog hands its properties to the FileIO of every table it loads: the storage
    // settings (credentials among them) travel there and nowhere else.
    let mut props = warehouse.file_io_properties();
    props.insert("uri".to_string(), format!("sqlite://{}", database.display()));
    props.insert("warehouse".to_string(), warehouse.location());
    let catalog = SqlCatalogBuilder::default()
        .sql_bind_style(SqlBindStyle::QMark)
        .with_storage_factory(warehouse.storage_factory())
        .load(name, props)
        .await
        .context(|| format!("opening SQL catalog {}", database.display()))?;
    Ok(Backend::Sql { catalog, pointers })
}

/// How long catalog calls are retried while another process holds the SQLite database locked
/// (a backup, a reader's long transaction, a second engine's commit), before giving up.
const BUSY_PATIENCE: Duration = Duration::from_secs(120);

/// Whether `error` is SQLite refusing a statement because another connection holds the lock
/// (SQLITE_BUSY, "database is locked"; SQLITE_LOCKED, "database table is locked").
fn is_busy(error: &Error) -> bool {
    let text = error.to_string();
    text.contains("database is locked") || text.contains("database table is locked")
}

/// Runs `call` again, with capped exponential backoff, while the catalog database is busy, for at
/// most [`BUSY_PATIENCE`]. SQLite's own busy wait (the connections' busy timeout) comes first; this
/// covers locks held longer than that.
async fn while_busy<T, F: std::future::Future<Output = Result<T>>>(mut call: impl FnMut() -> F) -> Result<T> {
    let started = std::time::Instant::now();
    let mut wait = Duration::from_millis(50);
    loop {
        match call().await {
            Err(error) if is_busy(&error) && started.elapsed() < BUSY_PATIENCE => {
                tracing::warn!(retry_in = ?wait, "the catalog is busy (another process holds its database locked); retrying: {error}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            outcome => return outcome,
        }
    }
}

fn namespace_name(namespace: &NamespaceIdent) -> String {
    namespace.join(".")
}
