//! The client side of an Iceberg REST catalog (`catalog.kind = "rest"`): tables are created,
//! loaded and committed per the REST spec, the files themselves still go through the warehouse's
//! `FileIO` (local or S3).
//!
//! ```text
//!  Lakehouse ──► RestClient ── GET  /v1/config ─────────────────────────► prefix, defaults
//!                   │      ── POST token endpoint (client credentials) ─► bearer token
//!                   │      ── HEAD/POST /v1/{prefix}/namespaces[/{ns}]
//!                   │      ── HEAD/GET/POST .../namespaces/{ns}/tables[/{table}]
//!                   └───── ── POST .../tables/{table}: requirements + updates ─► 200 | 409 | 5xx
//! ```
//!
//! Why not iceberg-catalog-rest's `RestCatalog`: it commits only what iceberg-rust's transactions
//! build (its `TableCommit` cannot be made outside the crate), and those cannot remove files or add
//! position deletes, which every engine epoch does; and it reports an unexpected 5xx exactly like
//! a 401, so a caller cannot tell "retry" from "fix your token". This client reuses the crate's
//! request and response types and adds only the HTTP and the status handling.
//!
//! Answers, as the spec defines them for each call:
//! - 2xx: done.
//! - 409 on a commit: a requirement failed (another writer moved `main`); [`CommitAnswer::Conflict`]
//!   and the caller re-validates on the newer table, as after a lost compare-and-swap.
//! - 5xx, a timeout or a connection dropped after the request was sent, on a commit: the commit may
//!   or may not have been applied ([`CommitAnswer::Unknown`]); the caller reloads the table and
//!   looks for its own snapshot before doing anything else.
//! - 5xx, 429 or no connection on any other call: retried with capped exponential backoff for at
//!   most [`PATIENCE`].
//! - 401 with client credentials: the token is fetched again once (it may have expired).
//! - Any other 4xx: refused with the server's message, never retried ([`Error::RestCatalog`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iceberg::io::FileIO;
use iceberg::spec::{Schema, UnboundPartitionSpec};
use iceberg::table::Table;
use iceberg::{NamespaceIdent, TableIdent, TableRequirement, TableUpdate};
use iceberg_catalog_rest::{CommitTableRequest, CreateNamespaceRequest, CreateTableRequest, LoadTableResult};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::sync::{Mutex, OnceCell};

use crate::error::{Error, Result};
use crate::storage::Secret;

/// How long calls other than commits are retried while the catalog answers 5xx/429 or cannot be
/// reached, before the error is returned.
pub const PATIENCE: Duration = Duration::from_secs(120);
/// One request's limit; a commit that hits it has an unknown outcome.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach a REST catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct RestSettings {
    /// The catalog's base address, without `/v1` (e.g. `http://127.0.0.1:8181`).
    pub uri: String,
    /// The warehouse the server should serve, sent with the config request (Polaris: the catalog's
    /// name; Lakekeeper: the warehouse's name). Servers with one warehouse need none.
    pub server_warehouse: Option<String>,
    /// The path prefix of every call after config. The server's config may override it.
    pub prefix: Option<String>,
    pub auth: RestAuth,
}

/// How the client authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum RestAuth {
    None,
    /// A bearer token sent as is.
    Token(Secret),
    /// OAuth2 client credentials exchanged for a bearer token at the token endpoint.
    ClientCredentials {
        client_id: String,
        client_secret: Secret,
        /// The token endpoint; the spec's default is `{uri}/v1/oauth/tokens`.
        token_endpoint: Option<String>,
        /// Requested scope (default `catalog`).
        scope: Option<String>,
    },
}

/// What the server said to a commit.
#[derive(Debug)]
pub enum CommitAnswer {
    Committed,
    /// 409: a requirement failed; the table moved under us.
    Conflict(String),
    /// 5xx or a timeout: applied or not, the table will tell.
    Unknown(String),
}

/// A client of one REST catalog.
pub struct RestClient {
    settings: RestSettings,
    http: reqwest::Client,
    /// Storage for the files of every table this catalog loads.
    file_io: FileIO,
    /// The async runtime the loaded tables read their files on.
    runtime: iceberg::Runtime,
    /// The path prefix, learned from the first config call.
    prefix: OnceCell<String>,
    /// The bearer token in use (fetched on first need with client credentials).
    token: Mutex<Option<Secret>>,
}

#[derive(Deserialize, Default)]
struct ConfigAnswer {
    #[serde(default)]
    defaults: HashMap<String, String>,
    #[serde(default)]
    overrides: HashMap<String, String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// A failed call, before it becomes an [`Error`]: the status (none when no answer came) and what
/// the server or the connection said.
struct Failed {
    status: Option<StatusCode>,
    message: String,
}

impl Failed {
    /// Whether the same call may succeed later without anyone changing anything.
    fn transient(&self) -> bool {
        self.status.is_none_or(|s| s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS)
    }

    fn into_error(self, context: String) -> Error {
        let mut message = self.message;
        if matches!(self.status, Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)) {
            message.push_str(" (check the token or client credentials the graph's [catalog] names, and their rights)");
        }
        Error::RestCatalog { context, status: self.status.map(|s| s.as_u16()), message }
    }
}

impl RestClient {
    /// A client for `settings`; must be made inside the tokio runtime its tables will use.
    pub fn new(settings: RestSettings, file_io: FileIO) -> Result<RestClient> {
        let runtime = iceberg::Runtime::try_current()
            .map_err(|e| Error::Internal(format!("the REST catalog client needs a tokio runtime: {e}")))?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("ratings-flow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("building the REST catalog's HTTP client: {e}")))?;
        let token = match &settings.auth {
            RestAuth::Token(token) => Some(token.clone()),
            _ => None,
        };
        Ok(RestClient { settings, http, file_io, runtime, prefix: OnceCell::new(), token: Mutex::new(token) })
    }

    pub fn uri(&self) -> &str {
        &self.settings.uri
    }

    /// Whether the namespace exists.
    pub async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        let url = format!("{}/namespaces/{}", self.base().await?, encode_namespace(namespace));
        self.exists(url, || format!("looking up namespace {}", namespace.join("."))).await
    }

    /// Creates the namespace; one created meanwhile by someone else is fine.
    pub async fn create_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        let url = format!("{}/namespaces", self.base().await?);
        let body = serde_json::to_vec(&CreateNamespaceRequest { namespace: namespace.clone(), properties: HashMap::new() })
            .map_err(|e| Error::Internal(format!("encoding a namespace request: {e}")))?;
        let context = || format!("creating namespace {}", namespace.join("."));
        match self.call(Method::POST, &url, Some(&body)).await {
            Ok(_) => Ok(()),
            Err(failed) if failed.status == Some(StatusCode::CONFLICT) => Ok(()),
            Err(failed) => Err(failed.into_error(context())),
        }
    }

    pub async fn table_exists(&self, ident: &TableIdent) -> Result<bool> {
        let url = self.table_url(ident).await?;
        self.exists(url, || format!("looking up table {ident}")).await
    }

    /// Loads the table: `NotFound` when the catalog has no such table.
    pub async fn load_table(&self, ident: &TableIdent) -> Result<Table> {
        let url = self.table_url(ident).await?;
        let context = || format!("loading table {ident}");
        let answer = match self.call(Method::GET, &url, None).await {
            Ok(answer) => answer,
            Err(failed) if failed.status == Some(StatusCode::NOT_FOUND) => {
                return Err(Error::NotFound(format!(
                    "table {ident} does not exist in the REST catalog at {} (run `runtime init --graph <graph>` to create the pipeline's tables)",
                    self.settings.uri
                )));
            }
            Err(failed) => return Err(failed.into_error(context())),
        };
        self.table_from(ident, &answer, context)
    }

    /// Creates a table in `namespace` and returns it as created.
    pub async fn create_table(
        &self,
        ident: &TableIdent,
        schema: Schema,
        partition_spec: UnboundPartitionSpec,
        properties: HashMap<String, String>,
    ) -> Result<Table> {
        let url = format!("{}/namespaces/{}/tables", self.base().await?, encode_namespace(ident.namespace()));
        let request = CreateTableRequest {
            name: ident.name().to_string(),
            location: None,
            schema,
            partition_spec: Some(partition_spec),
            write_order: None,
            stage_create: Some(false),
            properties,
        };
        let body = serde_json::to_vec(&request).map_err(|e| Error::Internal(format!("encoding a create-table request: {e}")))?;
        let context = || format!("creating table {ident}");
        let answer = self.call(Method::POST, &url, Some(&body)).await.map_err(|failed| failed.into_error(context()))?;
        self.table_from(ident, &answer, context)
    }

    /// Sends one commit: `requirements` judged by the server, then `updates` applied. Never
    /// retried here: after an unknown outcome only the table can say whether it landed.
    pub async fn commit(&self, ident: &TableIdent, requirements: Vec<TableRequirement>, updates: Vec<TableUpdate>) -> Result<CommitAnswer> {
        let url = self.table_url(ident).await?;
        let request = CommitTableRequest { identifier: Some(ident.clone()), requirements, updates };
        let body = serde_json::to_vec(&request).map_err(|e| Error::Internal(format!("encoding a commit request: {e}")))?;
        match self.send(Method::POST, &url, Some(&body)).await {
            Ok(_) => Ok(CommitAnswer::Committed),
            Err(failed) if failed.status == Some(StatusCode::CONFLICT) => Ok(CommitAnswer::Conflict(failed.message)),
            Err(failed) if failed.status.is_none_or(|s| s.is_server_error()) => Ok(CommitAnswer::Unknown(failed.message)),
            Err(failed) => Err(failed.into_error(format!("committing to {ident}"))),
        }
    }

    fn table_from(&self, ident: &TableIdent, answer: &[u8], context: impl Fn() -> String) -> Result<Table> {
        let loaded: LoadTableResult = serde_json::from_slice(answer).map_err(|e| Error::RestCatalog {
            context: context(),
            status: None,
            message: format!("the catalog's answer is not a LoadTableResult: {e}"),
        })?;
        let mut builder = Table::builder().identifier(ident.clone()).metadata(Arc::new(loaded.metadata)).file_io(self.file_io.clone()).runtime(self.runtime.clone());
        if let Some(location) = loaded.metadata_location {
            builder = builder.metadata_location(location);
        }
        builder.build().map_err(|e| Error::Iceberg { context: context(), source: Box::new(e) })
    }

    async fn exists(&self, url: String, context: impl Fn() -> String) -> Result<bool> {
        match self.call(Method::HEAD, &url, None).await {
            Ok(_) => Ok(true),
            Err(failed) if failed.status == Some(StatusCode::NOT_FOUND) => Ok(false),
            Err(failed) => Err(failed.into_error(context())),
        }
    }

    async fn table_url(&self, ident: &TableIdent) -> Result<String> {
        Ok(format!(
            "{}/namespaces/{}/tables/{}",
            self.base().await?,
            encode_namespace(ident.namespace()),
            encode_segment(ident.name())
        ))
    }

    /// `{uri}/v1` or `{uri}/v1/{prefix}`, the prefix as the server's config says.
    async fn base(&self) -> Result<String> {
        let prefix = self.prefix.get_or_try_init(|| self.load_prefix()).await?;
        let root = format!("{}/v1", self.settings.uri.trim_end_matches('/'));
        Ok(if prefix.is_empty() { root } else { format!("{root}/{}", encode_segment(prefix)) })
    }

    /// Asks the server for its configuration: its overrides win over the graph's prefix, which
    /// wins over the server's defaults.
    async fn load_prefix(&self) -> Result<String> {
        let mut url = format!("{}/v1/config", self.settings.uri.trim_end_matches('/'));
        if let Some(warehouse) = &self.settings.server_warehouse {
            url = format!("{url}?warehouse={}", encode_segment(warehouse));
        }
        let context = || format!("reading the configuration of the REST catalog at {}", self.settings.uri);
        let answer = self.call(Method::GET, &url, None).await.map_err(|failed| failed.into_error(context()))?;
        let config: ConfigAnswer = serde_json::from_slice(&answer).map_err(|e| Error::RestCatalog {
            context: context(),
            status: None,
            message: format!("the answer is not a catalog configuration: {e}"),
        })?;
        Ok(config
            .overrides
            .get("prefix")
            .cloned()
            .or_else(|| self.settings.prefix.clone())
            .or_else(|| config.defaults.get("prefix").cloned())
            .unwrap_or_default())
    }

    /// [`Self::send`], retried with backoff while the failure is transient, for at most [`PATIENCE`].
    async fn call(&self, method: Method, url: &str, body: Option<&[u8]>) -> std::result::Result<Vec<u8>, Failed> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            match self.send(method.clone(), url, body).await {
                Err(failed) if failed.transient() && started.elapsed() < PATIENCE => {
                    tracing::warn!(%method, url, retry_in = ?wait, "the REST catalog failed: {}; retrying", failed.message);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                outcome => return outcome,
            }
        }
    }

    /// One request, authenticated; on a 401 with client credentials the token is fetched again
    /// and the request sent once more.
    async fn send(&self, method: Method, url: &str, body: Option<&[u8]>) -> std::result::Result<Vec<u8>, Failed> {
        let fresh_token_helps = matches!(self.settings.auth, RestAuth::ClientCredentials { .. });
        let answer = self.send_once(method.clone(), url, body).await;
        match answer {
            Err(failed) if failed.status == Some(StatusCode::UNAUTHORIZED) && fresh_token_helps => {
                *self.token.lock().await = None;
                self.send_once(method, url, body).await
            }
            answer => answer,
        }
    }

    async fn send_once(&self, method: Method, url: &str, body: Option<&[u8]>) -> std::result::Result<Vec<u8>, Failed> {
        let mut request = self.http.request(method, url);
        if let Some(token) = self.bearer_token().await? {
            request = request.bearer_auth(token.expose());
        }
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_vec());
        }
        let response = request.send().await.map_err(|e| Failed { status: None, message: transport_message(e) })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| Failed { status: None, message: transport_message(e) })?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        Err(Failed { status: Some(status), message: server_message(status, &bytes) })
    }

    /// The token to send, fetched with the client credentials when there is none yet.
    async fn bearer_token(&self) -> std::result::Result<Option<Secret>, Failed> {
        let RestAuth::ClientCredentials { client_id, client_secret, token_endpoint, scope } = &self.settings.auth else {
            return Ok(self.token.lock().await.clone());
        };
        let mut token = self.token.lock().await;
        if let Some(token) = token.as_ref() {
            return Ok(Some(token.clone()));
        }
        let endpoint =
            token_endpoint.clone().unwrap_or_else(|| format!("{}/v1/oauth/tokens", self.settings.uri.trim_end_matches('/')));
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", client_secret.expose()),
            ("scope", scope.as_deref().unwrap_or("catalog")),
        ];
        let response = self
            .http
            .post(&endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| Failed { status: None, message: format!("token endpoint {endpoint}: {}", transport_message(e)) })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| Failed { status: None, message: transport_message(e) })?;
        if !status.is_success() {
            return Err(Failed { status: Some(status), message: format!("token endpoint {endpoint}: {}", server_message(status, &bytes)) });
        }
        let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|e| Failed {
            status: None,
            message: format!("token endpoint {endpoint}: the answer has no access_token: {e}"),
        })?;
        let fresh = Secret::new(answer.access_token);
        *token = Some(fresh.clone());
        Ok(Some(fresh))
    }
}

/// What a connection failure says, without the URL (the caller's context names the call).
fn transport_message(error: reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "no answer in time"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "the connection failed"
    };
    format!("{what} ({})", error.without_url())
}

/// The spec's `ErrorModel` message when the body is one, else the status and the body's start.
fn server_message(status: StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => match envelope.error.kind {
            Some(kind) => format!("{status}: {kind}: {}", envelope.error.message),
            None => format!("{status}: {}", envelope.error.message),
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(300).collect();
            if text.trim().is_empty() { status.to_string() } else { format!("{status}: {}", text.trim()) }
        }
    }
}

/// A namespace as one path segment: levels joined by the unit separator, percent-encoded.
fn encode_namespace(namespace: &NamespaceIdent) -> String {
    encode_segment(&namespace.join("\u{1f}"))
}

fn encode_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_joined_by_the_unit_separator_and_percent_encoded() {
        let namespace = NamespaceIdent::from_strs(["a b", "c"]).unwrap();
        assert_eq!(encode_namespace(&namespace), "a%20b%1Fc");
        assert_eq!(encode_segment("x+y/z"), "x%2By%2Fz");
    }

    #[test]
    fn the_servers_error_model_is_what_an_error_says() {
        let body = br#"{"error":{"message":"Table already exists: a.b","type":"AlreadyExistsException","code":409}}"#;
        assert_eq!(server_message(StatusCode::CONFLICT, body), "409 Conflict: AlreadyExistsException: Table already exists: a.b");
        assert_eq!(server_message(StatusCode::BAD_GATEWAY, b"<html>proxy</html>"), "502 Bad Gateway: <html>proxy</html>");
        assert_eq!(server_message(StatusCode::SERVICE_UNAVAILABLE, b""), "503 Service Unavailable");
    }

    #[test]
    fn only_server_errors_throttling_and_lost_connections_are_retried() {
        let failed = |status: Option<u16>| Failed { status: status.map(|s| StatusCode::from_u16(s).unwrap()), message: String::new() };
        for status in [None, Some(500), Some(502), Some(503), Some(504), Some(429)] {
            assert!(failed(status).transient(), "{status:?}");
        }
        for status in [400, 401, 403, 404, 409, 422] {
            assert!(!failed(Some(status)).transient(), "{status}");
        }
    }
}
