//! A client for the Confluent Schema Registry REST API: the three calls the engine and the test
//! producer make, written against the public API documentation.
//!
//! - `GET /schemas/ids/{id}`: the writer schema of a record (the decoder caches it per id; ids
//!   are immutable, so a cached answer never goes stale).
//! - `POST /subjects/{subject}/versions`: register a schema (idempotent: the registry answers the
//!   existing id when the same schema is registered again).
//! - `GET /subjects/{subject}/versions/latest`.
//!
//! A `404` is an answer ([`Lookup::NotFound`]); a refused connection, a timeout or a `5xx` is an
//! [`Error::Registry`] that a retry may fix.

use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
}

/// The registry's answer to a lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<T> {
    Found(T),
    /// The registry does not know the id or subject; its error message.
    NotFound(String),
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Deserialize)]
struct VersionBody {
    id: u32,
    schema: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: Option<i64>,
    message: Option<String>,
}

impl RegistryClient {
    pub fn new(url: &str, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::User(format!("schema registry client for {url}: {e}")))?;
        Ok(RegistryClient { base: url.trim_end_matches('/').to_string(), http })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// The schema registered under `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<Lookup<String>> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let response = self.http.get(&url).header("Accept", CONTENT_TYPE).send().await;
        match read::<SchemaBody>(&url, response).await? {
            Lookup::Found(body) => Ok(Lookup::Found(body.schema)),
            Lookup::NotFound(message) => Ok(Lookup::NotFound(message)),
        }
    }

    /// Registers `schema` under `subject` and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let url = format!("{}/subjects/{subject}/versions", self.base);
        let body = serde_json::json!({ "schema": schema });
        let response = self.http.post(&url).header("Content-Type", CONTENT_TYPE).json(&body).send().await;
        match read::<IdBody>(&url, response).await? {
            Lookup::Found(body) => Ok(body.id),
            Lookup::NotFound(message) => Err(Error::Registry(format!("registering under {subject}: {message}"))),
        }
    }

    /// The latest schema registered under `subject`: `(id, schema)`.
    pub async fn latest(&self, subject: &str) -> Result<Lookup<(u32, String)>> {
        let url = format!("{}/subjects/{subject}/versions/latest", self.base);
        let response = self.http.get(&url).header("Accept", CONTENT_TYPE).send().await;
        Ok(match read::<VersionBody>(&url, response).await? {
            Lookup::Found(body) => Lookup::Found((body.id, body.schema)),
            Lookup::NotFound(message) => Lookup::NotFound(message),
        })
    }
}

async fn read<T: for<'de> Deserialize<'de>>(
    url: &str,
    response: reqwest::Result<reqwest::Response>,
) -> Result<Lookup<T>> {
    let response = response.map_err(|e| Error::Registry(format!("schema registry {url} unreachable: {e}")))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| Error::Registry(format!("schema registry {url}: reading the answer: {e}")))?;
    if status == reqwest::StatusCode::NOT_FOUND {
        let message = serde_json::from_str::<ErrorBody>(&text)
            .ok()
            .map(|e| format!("{} (error code {})", e.message.unwrap_or_default(), e.error_code.unwrap_or(404)))
            .unwrap_or_else(|| text.clone());
        return Ok(Lookup::NotFound(message));
    }
    if status.is_client_error() {
        return Err(Error::User(format!("schema registry {url} refused the request ({status}): {text}")));
    }
    if !status.is_success() {
        return Err(Error::Registry(format!("schema registry {url} answered {status}: {text}")));
    }
    serde_json::from_str(&text)
        .map(Lookup::Found)
        .map_err(|e| Error::Registry(format!("schema registry {url} answered something unexpected ({e}): {text}")))
}
