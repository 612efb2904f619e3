//! `runtime catalog serve`: an Iceberg REST catalog endpoint over the embedded SQLite catalog, so
//! any REST client (PyIceberg's `RestCatalog`, Spark, Trino, DuckDB) can attach the embedded
//! lakehouse with no other server.
//!
//! ```text
//!   HTTP request ──► route (spec paths under /v1, namespaces joined by %1F) ──► SQL catalog
//!                                                                             │
//!   commit: load table ─► check requirements ─► apply updates ─► write metadata file ─► CAS the
//!           ▲                 (409 on failure)                                  pointer (SQLite)
//!           └──────────── pointer moved meanwhile: start again from the newer table ◄─┘
//! ```
//!
//! Served: `GET /v1/config`; namespaces: list, create, load, exists (`HEAD`); tables: list,
//! create, load, exists, commit (`POST .../tables/{table}`) with the spec's requirement checks.
//! A commit whose requirements no longer hold answers 409 (`CommitFailedException`), exactly what
//! a client must re-validate on. A commit takes the same compare-and-swap of the metadata pointer
//! as the engine's own commits, so the engine and REST writers can share tables. Anything else
//! answers 404 (unknown path) or 405; staged creates, renames, drops and views are not served
//! (501). Errors use the spec's `ErrorModel`.
//!
//! Authentication, when a token is given: every request must carry it as its bearer token (401
//! `NotAuthorizedException` otherwise), and `POST /v1/oauth/tokens` grants it for OAuth2 client
//! credentials whose secret is that token. One shared secret, enough for a lakehouse served to
//! its own team; without a token, only loopback is a safe address.
//!
//! Failpoints (the `FAILPOINTS` variable, for tests of clients): `catalog-serve-refuse-commit`
//! answers a commit 503 without applying it; `catalog-serve-lose-commit-answer` applies the commit
//! and then answers 502, as a proxy that lost the answer would.

use std::collections::HashMap;
use std::net::SocketAddr;

use iceberg::spec::TableMetadataBuilder;
use iceberg::{Catalog, ErrorKind, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::{
    CommitTableRequest, CommitTableResponse, CreateNamespaceRequest, CreateTableRequest, ListNamespaceResponse, ListTablesResponse, LoadTableResult, NamespaceResponse,
};
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::catalog::Lakehouse;
use crate::commit::{CommitOptions, commit_metadata};
use crate::error::{Error, Result};
use crate::storage::Secret;

/// Serves `lakehouse` on `addr` until the process ends, requiring `token` when one is given.
/// `on_ready` is told the bound address.
pub fn serve(
    lakehouse: Lakehouse,
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    token: Option<Secret>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    lakehouse.sql_catalog()?;
    let server = Server::http(addr).map_err(|e| Error::User(format!("cannot listen on {addr}: {e}")))?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    on_ready(bound);
    for mut request in server.incoming_requests() {
        let answer = match &token {
            Some(token) => match authenticate(&mut request, token) {
                Ok(None) => runtime.block_on(handle(&lakehouse, &mut request)),
                Ok(Some(granted)) => Ok(granted),
                Err(failure) => Err(failure),
            },
            None => runtime.block_on(handle(&lakehouse, &mut request)),
        };
        let (status, body) = match answer {
            Ok(Answer::Json(status, body)) => (status, Some(body)),
            Ok(Answer::Empty(status)) => (status, None),
            Err(failure) => (failure.code, Some(failure.body())),
        };
        if status >= 500 {
            tracing::warn!(method = %request.method(), url = request.url(), status, "catalog request failed");
        }
        let response = match body {
            Some(body) => Response::from_string(body)
                .with_status_code(status)
                .with_header(Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("a valid header")),
            None => Response::from_string(String::new()).with_status_code(status),
        };
        if let Err(error) = request.respond(response) {
            tracing::debug!(%error, "a client went away before its answer");
        }
    }
    Ok(())
}

/// Lets a request through when it carries `token` (`Ok(None)`), answers a token request with
/// the right client secret itself, and refuses anything else with 401.
fn authenticate(request: &mut Request, token: &Secret) -> std::result::Result<Option<Answer>, Failure> {
    if request.method() == &Method::Post && request.url().trim_end_matches('/').ends_with("/v1/oauth/tokens") {
        let mut form = String::new();
        request.as_reader().read_to_string(&mut form).map_err(|e| Failure::bad_request(format!("reading the token request: {e}")))?;
        let secret = form_urlencoded::parse(form.as_bytes()).find(|(key, _)| key == "client_secret").map(|(_, value)| value.into_owned());
        return match secret {
            Some(secret) if secret == token.expose() => json(
                200,
                &serde_json::json!({ "access_token": token.expose(), "token_type": "bearer", "issued_token_type": "urn:ietf:params:oauth:token-type:access_token" }),
            )
            .map(Some),
            // The OAuth2 error shape (RFC 6749), which token clients expect.
            _ => Err(Failure::new(401, "NotAuthorizedException", "invalid client credentials")),
        };
    }
    let expected = format!("Bearer {}", token.expose());
    let presented = request.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str());
    match presented {
        Some(value) if value == expected => Ok(None),
        Some(_) => Err(Failure::new(401, "NotAuthorizedException", "the bearer token is not this catalog's")),
        None => Err(Failure::new(401, "NotAuthorizedException", "this catalog needs a bearer token (Authorization: Bearer ...)")),
    }
}

enum Answer {
    Json(u16, String),
    Empty(u16),
}

fn json(status: u16, value: &impl Serialize) -> std::result::Result<Answer, Failure> {
    serde_json::to_string(value).map(|body| Answer::Json(status, body)).map_err(|e| Failure::server(format!("encoding the answer: {e}")))
}

/// An error answer: HTTP status, the spec's exception type, a message.
struct Failure {
    code: u16,
    kind: &'static str,
    message: String,
}

impl Failure {
    fn new(code: u16, kind: &'static str, message: impl Into<String>) -> Failure {
        Failure { code, kind, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(400, "BadRequestException", message)
    }

    fn server(message: impl Into<String>) -> Failure {
        Failure::new(500, "ServerErrorException", message)
    }

    /// The spec's `ErrorModel` in its envelope (iceberg-catalog-rest's type has a private field).
    fn body(&self) -> String {
        serde_json::json!({ "error": { "message": self.message, "type": self.kind, "code": self.code } }).to_string()
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        match &error {
            Error::NotFound(_) => Failure::new(404, "NoSuchTableException", error.to_string()),
            Error::CommitConflict { .. } | Error::Fenced { .. } => Failure::new(409, "CommitFailedException", error.to_string()),
            Error::User(_) => Failure::bad_request(error.to_string()),
            Error::Iceberg { source, .. } => match source.kind() {
                ErrorKind::NamespaceNotFound => Failure::new(404, "NoSuchNamespaceException", error.to_string()),
                ErrorKind::TableNotFound => Failure::new(404, "NoSuchTableException", error.to_string()),
                ErrorKind::NamespaceAlreadyExists => Failure::new(409, "AlreadyExistsException", error.to_string()),
                ErrorKind::TableAlreadyExists => Failure::new(409, "AlreadyExistsException", error.to_string()),
                ErrorKind::DataInvalid | ErrorKind::FeatureUnsupported => Failure::bad_request(error.to_string()),
                _ => Failure::server(error.to_string()),
            },
            _ if error.retryable() => Failure::new(503, "ServiceUnavailableException", error.to_string()),
            _ => Failure::server(error.to_string()),
        }
    }
}

impl From<iceberg::Error> for Failure {
    fn from(error: iceberg::Error) -> Failure {
        Failure::from(Error::Iceberg { context: "catalog".into(), source: Box::new(error) })
    }
}

/// `a%1Fb` → the namespace `a.b` (the spec joins levels with the unit separator).
fn namespace_of(segment: &str) -> std::result::Result<NamespaceIdent, Failure> {
    let decoded = percent_decode(segment)?;
    NamespaceIdent::from_vec(decoded.split('\u{1f}').map(str::to_string).collect())
        .map_err(|e| Failure::bad_request(format!("namespace {decoded:?}: {e}")))
}

/// A path segment, percent-decoded (`+` is a plus sign in a path, not a space).
fn percent_decode(text: &str) -> std::result::Result<String, Failure> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| Failure::bad_request(format!("{text:?} is not UTF-8 once decoded")))
}

fn body<T: serde::de::DeserializeOwned>(request: &mut Request) -> std::result::Result<T, Failure> {
    let mut text = String::new();
    request.as_reader().read_to_string(&mut text).map_err(|e| Failure::bad_request(format!("reading the request body: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Failure::bad_request(format!("request body: {e}")))
}

async fn handle(lakehouse: &Lakehouse, request: &mut Request) -> std::result::Result<Answer, Failure> {
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or_default().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    let catalog = lakehouse.sql_catalog()?;
    // An optional prefix (`/v1/{prefix}/namespaces/...`) is accepted and ignored: one catalog.
    let start = match segments.as_slice() {
        ["v1", "namespaces" | "config", ..] => 1,
        ["v1", _, _, ..] => 2,
        _ => return Err(Failure::new(404, "NotFoundException", format!("no such endpoint: {path}"))),
    };
    let parts = &segments[start..];
    match (method.clone(), parts) {
        (Method::Get, ["config"]) => json(200, &serde_json::json!({ "defaults": {}, "overrides": {} })),
        (Method::Get, ["namespaces"]) => {
            let parent = query(&url, "parent").map(|p| namespace_of(&p)).transpose()?;
            let namespaces = catalog.list_namespaces(parent.as_ref()).await?;
            json(200, &ListNamespaceResponse { namespaces, next_page_token: None })
        }
        (Method::Post, ["namespaces"]) => {
            let create: CreateNamespaceRequest = body(request)?;
            let namespace = catalog.create_namespace(&create.namespace, create.properties).await?;
            json(200, &NamespaceResponse::from(&namespace))
        }
        (Method::Get, ["namespaces", namespace]) => {
            let namespace = catalog.get_namespace(&namespace_of(namespace)?).await?;
            json(200, &NamespaceResponse::from(&namespace))
        }
        (Method::Head, ["namespaces", namespace]) => {
            Ok(Answer::Empty(if catalog.namespace_exists(&namespace_of(namespace)?).await? { 204 } else { 404 }))
        }
        (Method::Get, ["namespaces", namespace, "tables"]) => {
            let identifiers = catalog.list_tables(&namespace_of(namespace)?).await?;
            json(200, &ListTablesResponse { identifiers, next_page_token: None })
        }
        (Method::Post, ["namespaces", namespace, "tables"]) => {
            let create: CreateTableRequest = body(request)?;
            if create.stage_create == Some(true) {
                return Err(Failure::new(501, "NotImplementedException", "staged table creation is not served"));
            }
            let creation = TableCreation::builder()
                .name(create.name)
                .location_opt(create.location)
                .schema(create.schema)
                .partition_spec_opt(create.partition_spec)
                .sort_order_opt(create.write_order)
                .properties(create.properties)
                .build();
            let table = catalog.create_table(&namespace_of(namespace)?, creation).await?;
            json(200, &load_result(&table))
        }
        (Method::Get, ["namespaces", namespace, "tables", table]) => {
            let ident = TableIdent::new(namespace_of(namespace)?, percent_decode(table)?);
            json(200, &load_result(&lakehouse.load(&ident).await?))
        }
        (Method::Head, ["namespaces", namespace, "tables", table]) => {
            let ident = TableIdent::new(namespace_of(namespace)?, percent_decode(table)?);
            Ok(Answer::Empty(if catalog.table_exists(&ident).await? { 204 } else { 404 }))
        }
        (Method::Post, ["namespaces", namespace, "tables", table]) => {
            let ident = TableIdent::new(namespace_of(namespace)?, percent_decode(table)?);
            let commit: CommitTableRequest = body(request)?;
            fail::fail_point!("catalog-serve-refuse-commit", |_| {
                Err(Failure::new(503, "ServiceUnavailableException", "the commit was not applied (failpoint catalog-serve-refuse-commit)"))
            });
            let committed = commit_table(lakehouse, &ident, commit).await?;
            fail::fail_point!("catalog-serve-lose-commit-answer", |_| {
                Err(Failure::new(502, "BadGatewayException", "the commit was applied, the answer lost (failpoint catalog-serve-lose-commit-answer)"))
            });
            let metadata_location = committed.metadata_location().unwrap_or_default().to_string();
            json(200, &CommitTableResponse { metadata_location, metadata: committed.metadata().clone() })
        }
        (_, ["namespaces", ..]) | (_, ["config"]) => {
            Err(Failure::new(501, "NotImplementedException", format!("{method} {path} is not served by this catalog")))
        }
        _ => Err(Failure::new(404, "NotFoundException", format!("no such endpoint: {path}"))),
    }
}

fn query(url: &str, key: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=').map(str::to_string))
}

fn load_result(table: &iceberg::table::Table) -> LoadTableResult {
    LoadTableResult {
        metadata_location: table.metadata_location().map(str::to_string),
        metadata: table.metadata().clone(),
        config: HashMap::new(),
        storage_credentials: None,
    }
}

/// Checks `commit`'s requirements against the table as it is, applies its updates, and swaps the
/// pointer; when another writer moved the pointer meanwhile, starts again from the newer table,
/// so the requirements are judged against what the commit will really follow.
async fn commit_table(lakehouse: &Lakehouse, ident: &TableIdent, commit: CommitTableRequest) -> Result<iceberg::table::Table> {
    let edit = |base: &iceberg::table::Table| -> Result<Option<iceberg::spec::TableMetadataBuildResult>> {
        for requirement in &commit.requirements {
            requirement.check(Some(base.metadata())).map_err(|e| Error::CommitConflict {
                table: ident.to_string(),
                detail: format!("requirement failed: {}", e.message()),
            })?;
        }
        let location = base.metadata_location().map(str::to_string);
        let mut builder = TableMetadataBuilder::new_from_metadata(base.metadata().clone(), location);
        for update in commit.updates.iter().cloned() {
            builder = update.apply(builder).map_err(|e| Error::User(format!("update of {ident} refused: {}", e.message())))?;
        }
        let built = builder.build().map_err(|e| Error::User(format!("update of {ident} refused: {}", e.message())))?;
        Ok(Some(built))
    };
    let committed = commit_metadata(lakehouse, ident, CommitOptions::default(), edit).await?;
    committed.ok_or_else(|| Error::Internal(format!("the commit of {ident} made no metadata")))
}
