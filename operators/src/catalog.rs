//! Opening the lakehouse: the Iceberg catalog, its pointer table, and the pipeline's tables.
//!
//! The embedded default is Iceberg's SQL catalog on a SQLite file plus a local warehouse folder:
//! no server, and readable by any SQL-catalog client (PyIceberg's `SqlCatalog` among them). The
//! warehouse may instead be an S3 bucket (see [`crate::storage`]); the catalog file stays local. The
//! catalog folder must exist unless the caller asks for creation (`runtime init`), so a typo in a
//! path is an error instead of a fresh empty lakehouse.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalog, SqlCatalogBuilder};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::error::{Context, Error, Result};
use crate::schema::TableLayout;
use crate::storage::Warehouse;

/// Where the catalog lives.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogSettings {
    /// The catalog's name (the `catalog_name` column of the SQL catalog tables).
    pub name: String,
    /// The SQLite database file.
    pub database: PathBuf,
    /// Where table data and metadata go: a local folder or an S3 bucket.
    pub warehouse: Warehouse,
}

/// An open catalog plus the direct access to its pointer table that our own commits need.
pub struct Lakehouse {
    catalog: SqlCatalog,
    pointers: SqlitePool,
    name: String,
    warehouse: Warehouse,
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
    /// Opens the catalog. With `create`, makes the catalog folder, database and warehouse first.
    pub async fn open(settings: &CatalogSettings, create: bool) -> Result<Lakehouse> {
        let database = absolute(&settings.database)?;
        let warehouse = match &settings.warehouse {
            Warehouse::Local(path) => Warehouse::Local(absolute(path)?),
            other => other.clone(),
        };
        let folder = database.parent().unwrap_or(Path::new("/")).to_path_buf();
        if create {
            std::fs::create_dir_all(&folder).context(|| format!("creating {}", folder.display()))?;
            if let Warehouse::Local(path) = &warehouse {
                std::fs::create_dir_all(path).context(|| format!("creating {}", path.display()))?;
            }
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
            .load(&settings.name, props)
            .await
            .context(|| format!("opening SQL catalog {}", database.display()))?;
        Ok(Lakehouse { catalog, pointers, name: settings.name.clone(), warehouse })
    }

    /// Where the tables' files live.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    pub fn catalog(&self) -> &SqlCatalog {
        &self.catalog
    }

    pub async fn load(&self, ident: &TableIdent) -> Result<Table> {
        while_busy(|| self.load_once(ident)).await
    }

    async fn load_once(&self, ident: &TableIdent) -> Result<Table> {
        if !self.catalog.table_exists(ident).await.context(|| format!("looking up table {ident}"))? {
            return Err(Error::NotFound(format!(
                "table {ident} does not exist in catalog {:?} (run `runtime init --graph <graph>` to create the pipeline's tables)",
                self.name
            )));
        }
        self.catalog.load_table(ident).await.context(|| format!("loading table {ident}"))
    }

    /// Creates the table (and its namespace) if missing; an existing table must have the layout's
    /// columns.
    pub async fn ensure_table(&self, ident: &TableIdent, layout: &TableLayout) -> Result<Table> {
        let namespace = ident.namespace().clone();
        if !self.catalog.namespace_exists(&namespace).await.context(|| format!("looking up namespace {namespace:?}"))? {
            self.catalog
                .create_namespace(&namespace, HashMap::new())
                .await
                .context(|| format!("creating namespace {}", namespace_name(&namespace)))?;
        }
        if self.catalog.table_exists(ident).await.context(|| format!("looking up table {ident}"))? {
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
        let creation = TableCreation::builder()
            .name(ident.name().to_string())
            .schema(layout.schema.clone())
            .partition_spec(layout.partition_spec()?)
            .properties([
                ("write.parquet.compression-codec".to_string(), "zstd".to_string()),
                (crate::schema::PLAIN_COLUMNS_PROPERTY.to_string(), layout.plain_columns.join(",")),
            ])
            .build();
        self.catalog.create_table(&namespace, creation).await.context(|| format!("creating table {ident}"))
    }

    /// Atomically moves the table's metadata pointer from `expected` to `new`. Returns false when
    /// the pointer is no longer `expected` (another writer committed first).
    pub async fn swap_metadata_pointer(&self, ident: &TableIdent, expected: &str, new: &str) -> Result<bool> {
        // A busy database refused the whole statement, so running it again is safe.
        while_busy(|| self.swap_once(ident, expected, new)).await
    }

    async fn swap_once(&self, ident: &TableIdent, expected: &str, new: &str) -> Result<bool> {
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
        .execute(&self.pointers)
        .await
        .context(|| format!("swapping the metadata pointer of {ident}"))?;
        Ok(result.rows_affected() == 1)
    }
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
