//! Dataflow operators of ratings-flow.
//!
//! ```text
//!  raw Iceberg partitions ──► source ──► rules (validate, derive, late cut) ──► exchange(event_id)
//!  (epoch = ingestion_date)      │                │ rejects                           │
//!  curated rows in window ───────┘ (epoch 0 seed) ▼                                   ▼
//!                                          rejected sink ◄── late updates ── upsert arrangement
//!                                                 │                                   │ ±rows per epoch
//!                                                 │                                   ▼
//!                                                 │                 curated writer (every worker: its keys
//!                                                 │                 new rows → data files, superseded rows →
//!                                                 │                 position delete files)
//!                                                 ▼                                   ▼
//!                                          commit (worker 0): Overwrite snapshot per table, CAS on the catalog
//! ```

pub mod batch;
pub mod catalog;
pub mod checks;
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
pub mod rules;
pub mod schema;
pub mod sink;
pub mod source;
pub mod stash;
pub mod stream;
#[cfg(test)]
mod test_fixture;
pub mod upsert;
pub mod writer;

pub use error::{Error, Fault, Result};
