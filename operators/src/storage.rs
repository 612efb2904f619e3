//! Where a lakehouse's table files live: a local folder, or a bucket of an S3-compatible object
//! store. Every table file (data, delete, manifest, manifest list, metadata) is read and written
//! through Iceberg's `FileIO`: the local file system, or iceberg-rust's OpenDAL S3 storage. The
//! one thing `FileIO` cannot do is list a folder, which orphan cleanup needs; that goes through
//! OpenDAL's S3 service directly, built from the same settings.
//!
//! Credentials: an access key pair named by environment variables or read from files, or (neither
//! given) the AWS SDK's usual chain: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
//! `AWS_SESSION_TOKEN`, then the profile files (`AWS_PROFILE`, `~/.aws/credentials`,
//! `~/.aws/config`). A secret is held as a [`Secret`], whose `Debug` and `Display` print a
//! placeholder, so no log line, error or summary can carry it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use iceberg::io::{LocalFsStorageFactory, StorageFactory};
use iceberg_storage_opendal::OpenDalStorageFactory;

use crate::error::{Error, Result};

/// A credential: printable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that must hand it to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// Where table files go.
#[derive(Debug, Clone, PartialEq)]
pub enum Warehouse {
    /// A local folder (made by `runtime init`).
    Local(PathBuf),
    /// `s3://bucket/prefix` on an S3-compatible store.
    S3(S3Warehouse),
}

/// A warehouse in an S3-compatible bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Warehouse {
    /// `s3://bucket` or `s3://bucket/prefix`, without a trailing slash.
    pub uri: String,
    /// The store's address (`http://127.0.0.1:9000`); `None` for AWS itself.
    pub endpoint: Option<String>,
    /// The region requests are signed for (the graph loader fills it from `AWS_REGION` /
    /// `AWS_DEFAULT_REGION`, else `us-east-1`, when the graph names none).
    pub region: Option<String>,
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint` (most self-hosted stores).
    pub path_style: bool,
    /// An access key pair; `None`: the AWS chain (environment variables, then profile files).
    pub credentials: Option<S3Credentials>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct S3Credentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

impl S3Warehouse {
    /// The bucket and the prefix (no leading or trailing slash) of `uri`.
    fn bucket_and_prefix(&self) -> Result<(&str, &str)> {
        let rest = self
            .uri
            .strip_prefix("s3://")
            .ok_or_else(|| Error::User(format!("catalog.warehouse {:?}: an object-store warehouse is s3://bucket[/prefix]", self.uri)))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::User(format!("catalog.warehouse {:?}: the bucket name is missing", self.uri)));
        }
        Ok((bucket, prefix.trim_matches('/')))
    }

    /// An OpenDAL operator on the bucket, for listing.
    fn operator(&self) -> Result<opendal::Operator> {
        let (bucket, _) = self.bucket_and_prefix()?;
        let mut builder = opendal::services::S3::default().bucket(bucket).root("/");
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint(endpoint);
        }
        builder = builder.region(self.region.as_deref().unwrap_or("us-east-1"));
        if !self.path_style {
            builder = builder.enable_virtual_host_style();
        }
        if let Some(credentials) = &self.credentials {
            builder = builder
                .access_key_id(credentials.access_key_id.expose())
                .secret_access_key(credentials.secret_access_key.expose());
            if let Some(token) = &credentials.session_token {
                builder = builder.session_token(token.expose());
            }
        }
        let uri = &self.uri;
        opendal::Operator::new(builder)
            .map(|b| b.finish())
            .map_err(|source| Error::ObjectStore { context: format!("opening warehouse {uri}"), source })
    }
}

impl Warehouse {
    /// The warehouse as the catalog's `warehouse` property: `file:///abs/path` or `s3://…`.
    pub fn location(&self) -> String {
        match self {
            Warehouse::Local(path) => format!("file://{}", path.display()),
            Warehouse::S3(s3) => s3.uri.clone(),
        }
    }

    /// What reads and writes table files here.
    pub fn storage_factory(&self) -> Arc<dyn StorageFactory> {
        match self {
            Warehouse::Local(_) => Arc::new(LocalFsStorageFactory),
            Warehouse::S3(_) => Arc::new(OpenDalStorageFactory::S3 { customized_credential_load: None }),
        }
    }

    /// `FileIO` properties (Iceberg's `s3.*` keys). They hold the credentials: never log them.
    pub fn file_io_properties(&self) -> HashMap<String, String> {
        let mut props = HashMap::new();
        if let Warehouse::S3(s3) = self {
            if let Some(endpoint) = &s3.endpoint {
                props.insert(iceberg::io::S3_ENDPOINT.to_string(), endpoint.clone());
            }
            if let Some(region) = &s3.region {
                props.insert(iceberg::io::S3_REGION.to_string(), region.clone());
            }
            props.insert(iceberg::io::S3_PATH_STYLE_ACCESS.to_string(), s3.path_style.to_string());
            if let Some(credentials) = &s3.credentials {
                props.insert(iceberg::io::S3_ACCESS_KEY_ID.to_string(), credentials.access_key_id.expose().to_string());
                props.insert(iceberg::io::S3_SECRET_ACCESS_KEY.to_string(), credentials.secret_access_key.expose().to_string());
                if let Some(token) = &credentials.session_token {
                    props.insert(iceberg::io::S3_SESSION_TOKEN.to_string(), token.expose().to_string());
                }
            }
        }
        props
    }

    /// Every file below `location` (a table's folder, as its metadata names it) with its last
    /// modification time, where the store reports one: local files as plain paths, objects as
    /// `s3://bucket/key`.
    pub async fn list_files(&self, location: &str) -> Result<Vec<(String, Option<SystemTime>)>> {
        match self {
            Warehouse::Local(_) => list_local(location),
            Warehouse::S3(s3) => list_s3(s3, location).await,
        }
    }
}

fn list_local(location: &str) -> Result<Vec<(String, Option<SystemTime>)>> {
    let root = location.strip_prefix("file://").unwrap_or(location);
    if !root.starts_with('/') {
        return Err(Error::Internal(format!("table location {location} is not in the local warehouse")));
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.map_err(|e| Error::Io {
            context: format!("listing {root}"),
            source: e.into_io_error().unwrap_or_else(|| std::io::Error::other("walking the table folder")),
        })?;
        if entry.file_type().is_file() {
            let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
            files.push((entry.path().display().to_string(), modified));
        }
    }
    Ok(files)
}

async fn list_s3(s3: &S3Warehouse, location: &str) -> Result<Vec<(String, Option<SystemTime>)>> {
    let (bucket, _) = s3.bucket_and_prefix()?;
    let bucket_root = format!("s3://{bucket}/");
    let Some(key_prefix) = location.strip_prefix(&bucket_root) else {
        return Err(Error::Internal(format!("table location {location} is not in bucket {bucket}")));
    };
    let folder = format!("{}/", key_prefix.trim_end_matches('/'));
    let operator = s3.operator()?;
    let entries = operator
        .list_with(&folder)
        .recursive(true)
        .await
        .map_err(|source| Error::ObjectStore { context: format!("listing {location}"), source })?;
    Ok(entries
        .into_iter()
        .filter(|entry| entry.metadata().is_file())
        .map(|entry| {
            let modified = entry.metadata().last_modified().map(SystemTime::from);
            (format!("{bucket_root}{}", entry.path()), modified)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        let secret = Secret::new("AKIA-very-secret".into());
        let credentials = S3Credentials { access_key_id: secret.clone(), secret_access_key: secret.clone(), session_token: Some(secret) };
        let shown = format!("{credentials:?} {}", credentials.secret_access_key);
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn an_s3_warehouse_splits_into_bucket_and_prefix() {
        let warehouse = |uri: &str| S3Warehouse { uri: uri.into(), endpoint: None, region: None, path_style: true, credentials: None };
        assert_eq!(warehouse("s3://lake/prod/tables").bucket_and_prefix().unwrap(), ("lake", "prod/tables"));
        assert_eq!(warehouse("s3://lake").bucket_and_prefix().unwrap(), ("lake", ""));
        assert!(warehouse("s3:///x").bucket_and_prefix().is_err());
        assert!(warehouse("gs://lake").bucket_and_prefix().is_err());
    }
}
