//! The one error type of the operators crate.
//!
//! Every error says whose fault it is ([`Fault`]) and whether retrying the same operation can help
//! ([`Error::retryable`]), so the runtime can decide between "fix your input", "the catalog is down,
//! try again" and "this is a bug in ratings-flow".

use std::fmt;

/// Who has to act for the error to go away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Bad configuration, arguments or data layout: the user must change something.
    User,
    /// The catalog, the object store or another system outside the engine failed.
    External,
    /// A broken invariant inside the engine.
    Internal,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::User => "user error",
            Fault::External => "external system error",
            Fault::Internal => "internal error",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something the user asked for or configured cannot work as given.
    #[error("{0}")]
    User(String),
    /// A table, namespace or partition the user named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The catalog or storage failed while doing `context`. Boxed: `iceberg::Error` is large, and
    /// every `Result` of the crate would otherwise carry its size.
    #[error("{context}: {source}")]
    Iceberg {
        context: String,
        #[source]
        source: Box<iceberg::Error>,
    },
    /// Local file system trouble while doing `context`.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The object store failed while doing `context` (listing a bucket; table files go through
    /// Iceberg's FileIO and fail as `Iceberg`).
    #[error("{context}: {source}")]
    ObjectStore {
        context: String,
        #[source]
        source: opendal::Error,
    },
    /// The REST catalog refused or failed `context`: its HTTP status (none when no answer came) and
    /// the server's message.
    #[error("{context}: REST catalog: {message}")]
    RestCatalog { context: String, status: Option<u16>, message: String },
    /// The SQL catalog database failed while doing `context`.
    #[error("{context}: {source}")]
    Sql {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    /// Another writer changed the table in a way that overlaps this commit.
    #[error("commit conflict on {table}: {detail}")]
    CommitConflict { table: String, detail: String },
    /// Another engine run committed to the table after the state this commit was computed from:
    /// two engines are writing the same tables. Nothing of this commit was applied.
    #[error(
        "another writer is committing to {table} ({detail}); this engine stopped without committing its epoch. \
         Stop the other engine (a second stream on this graph, or a replay while a stream runs); \
         then restart this one if it should go on: it resumes from what the tables hold"
    )]
    Fenced { table: String, detail: String },
    /// Arrow or Parquet encoding failed while doing `context`.
    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    /// The Kafka client failed while doing `context`.
    #[error("{context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Data about to be published failed a check whose policy is `fail`; nothing was committed.
    #[error("data-quality checks failed on {table}, nothing was committed: {summary}\n{report}")]
    ChecksFailed { table: String, summary: String, report: String },
    /// The schema registry answered with an error or could not be reached.
    #[error("{0}")]
    Registry(String),
    /// The processes of a cluster run could not start together: a peer was not reachable in time,
    /// or it runs another graph, plugin set, engine version or view of the tables.
    #[error("cluster: {0}")]
    ClusterStart(String),
    /// Another process of the cluster failed or vanished; this one stopped without committing
    /// anything after the failure.
    #[error(
        "cluster: {0}. This process stopped without committing anything after it; restart every process of the cluster: \
         each table resumes exactly once from what it holds"
    )]
    PeerFailed(String),
    /// A broken invariant inside the engine.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn fault(&self) -> Fault {
        match self {
            Error::User(_) | Error::NotFound(_) | Error::ChecksFailed { .. } | Error::Fenced { .. } | Error::ClusterStart(_) => Fault::User,
            Error::PeerFailed(_) => Fault::External,
            Error::Iceberg { source, .. } => match source.kind() {
                iceberg::ErrorKind::DataInvalid
                | iceberg::ErrorKind::FeatureUnsupported
                | iceberg::ErrorKind::NamespaceNotFound
                | iceberg::ErrorKind::TableNotFound => Fault::User,
                _ => Fault::External,
            },
            Error::Io { .. } | Error::Sql { .. } | Error::CommitConflict { .. } | Error::Registry(_) => Fault::External,
            Error::ObjectStore { source, .. } => match source.kind() {
                opendal::ErrorKind::ConfigInvalid | opendal::ErrorKind::PermissionDenied => Fault::User,
                _ => Fault::External,
            },
            // 4xx: the request, the credentials or the graph's catalog settings are wrong.
            Error::RestCatalog { status: Some(400..=499), .. } => Fault::User,
            Error::RestCatalog { .. } => Fault::External,
            Error::Kafka { source, .. } => match source {
                rdkafka::error::KafkaError::ClientCreation(_) => Fault::User,
                _ => Fault::External,
            },
            Error::Arrow { .. } | Error::Internal(_) => Fault::Internal,
        }
    }

    /// Whether running the same operation again may succeed without anybody changing anything.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Iceberg { source, .. } => source.retryable(),
            Error::Io { .. } | Error::Sql { .. } | Error::Registry(_) => true,
            Error::ObjectStore { source, .. } => source.is_temporary(),
            Error::RestCatalog { status, .. } => status.is_none_or(|s| s >= 500 || s == 429),
            Error::Kafka { source, .. } => source.rdkafka_error_code().is_some(),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches "what we were doing" to errors from the libraries we call.
pub trait Context<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, iceberg::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| match credentials_problem(&source) {
            Some(problem) => Error::User(format!("{}: {problem}", context())),
            None => Error::Iceberg { context: context(), source: Box::new(source) },
        })
    }
}

/// An object store refusing or unable to sign a request is the deployment's to fix, not an
/// outage to retry: say so in one line. The store's own error text is matched because the
/// storage layer reports both as a generic I/O failure.
fn credentials_problem(error: &iceberg::Error) -> Option<&'static str> {
    let text = error.to_string();
    if text.contains("failed to load signing credential") {
        Some(
            "no S3 credentials were found: name the variables holding them in [catalog.s3] \
             (access_key_id_env, secret_access_key_env or secret_access_key_file), or set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, or an AWS profile",
        )
    } else if text.contains("PermissionDenied") && text.contains("status: 403") {
        Some("the object store refused the request (403 Forbidden): check the key pair the graph names and its rights on the bucket")
    } else {
        None
    }
}

impl<T> Context<T> for std::result::Result<T, std::io::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io { context: context(), source })
    }
}

impl<T> Context<T> for std::result::Result<T, sqlx::Error> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Sql { context: context(), source })
    }
}

impl<T> Context<T> for std::result::Result<T, arrow::error::ArrowError> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Arrow { context: context(), source })
    }
}

impl<T> Context<T> for std::result::Result<T, rdkafka::error::KafkaError> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Kafka { context: context(), source })
    }
}
