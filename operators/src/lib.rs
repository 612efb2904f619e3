//! Dataflow operators of ratings-flow, for any pipeline a graph declares ([`pipeline`]).
//!
//! ```text
//!  Kafka (stream) ─► Confluent frame ─► Avro → raw columns ─┐
//!  raw Iceberg partitions (replay) ─► Parquet → raw batches ─┤  (epoch = commit interval / ingestion days)
//!  curated rows in the window (epoch 0 seed) ────────────────┼───────────────────────────────┐
//!                                                            ▼                               │
//!   rules on batches: validate, derive, late cut, plugins ──rejected rows──┐                │
//!        │ candidates (curated columns, key, order, position) by owner     │                │
//!        ▼                                                                  ▼                ▼
//!   upsert arrangement: key → slot (no row) ──late updates──► committer ◄── curated writer ◄─┘
//!        │ per partition: keys leaving it, new rows as one batch   (worker 0, fenced,      ▲
//!        └──────────────────────────────────────────────────────── one snapshot per table) │
//!                                  exchange(partition) → curated writer: data files, position deletes
//! ```

pub mod canonical_uuid;
pub mod catalog;
pub mod catalog_server;
pub mod checks;
pub mod cluster;
pub mod commit;
pub mod dataflow;
pub mod error;
pub mod generate;
pub mod maintain;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod produce;
pub mod reader;
pub mod records;
pub mod replay;
pub mod rest_catalog;
pub mod rules;
pub mod sample;
pub mod schema;
pub mod sink;
pub mod source;
pub mod stash;
pub mod storage;
pub mod stream;
#[cfg(test)]
mod test_fixture;
pub mod upsert;
pub mod writer;

pub use error::{Error, Fault, Result};
