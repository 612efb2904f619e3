//! The records that flow through the dataflow.
//!
//! The engine's own vocabulary, the same for every pipeline: ingestion positions, where a row came
//! from, reject reasons, dates. Dates are Iceberg dates (days since 1970-01-01, UTC); timestamps
//! are epoch seconds or milliseconds as their names say.


use serde::{Deserialize, Serialize};

pub const SECONDS_PER_DAY: i64 = 86_400;

/// UTC day of an epoch-seconds timestamp.
pub fn day_of_seconds(seconds: i64) -> i32 {
    seconds.div_euclid(SECONDS_PER_DAY) as i32
}

/// UTC day of an epoch-milliseconds timestamp.
pub fn day_of_millis(millis: i64) -> i32 {
    day_of_seconds(millis.div_euclid(1000))
}

/// `2025-05-01` for day 20209.
pub fn format_date(day: i32) -> String {
    let date = chrono::DateTime::from_timestamp(day as i64 * SECONDS_PER_DAY, 0)
        .map(|t| t.date_naive().to_string());
    date.unwrap_or_else(|| format!("day {day}"))
}

/// Parses `YYYY-MM-DD` into a day number.
pub fn parse_date(text: &str) -> Option<i32> {
    let date = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    i32::try_from((date - epoch).num_days()).ok()
}

/// A record whose bytes could not be read as an event (bad framing, unknown schema id, a body the
/// Avro decoder refuses, a writer schema that does not resolve to the reader schema). The bytes are
/// kept as they came, so the raw table records it, replay rejects it again, and an operator can
/// re-read it once the cause is fixed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Undecodable {
    pub reason: RejectReason,
    pub detail: String,
    pub payload: Vec<u8>,
}

/// Where a record sits in ingestion order. Ordered by time first, then by source coordinates, which
/// makes "the later ingested record" a total order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IngestPosition {
    pub ingestion_ts_ms: i64,
    pub partition: i32,
    pub offset: i64,
}

impl IngestPosition {
    pub fn ingestion_date(&self) -> i32 {
        day_of_millis(self.ingestion_ts_ms)
    }
}

/// Whether a candidate came from the raw input or was reloaded from the curated table at start.
///
/// `Seed < Input`, so when the same raw record is processed again its fresh derivation (current
/// rules) replaces the reloaded row instead of tying with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Origin {
    Seed,
    Input,
}

/// A map keyed by a 128-bit key. Hot paths look a key up once or more per record;
/// foldhash (seeded per map) costs a fraction of the standard SipHash on a 16-byte key.
pub type KeyMap<V> = std::collections::HashMap<u128, V, foldhash::fast::RandomState>;

/// Why a record was kept out of the curated table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RejectReason {
    /// The value does not start with the Confluent magic byte 0 and a 4-byte schema id.
    BadFraming,
    /// The schema registry does not know the record's schema id.
    UnknownSchemaId,
    /// The writer schema cannot be resolved to the pipeline's reader schema.
    IncompatibleSchema,
    /// The Avro body does not decode with its writer schema.
    UndecodableBody,
    /// The order or partition column is null (graphs normally reject this earlier with a
    /// `present` rule, whose reason is also `missing_field`).
    MissingField,
    /// The record's own partition day is older than its ingestion date minus the lateness.
    Late,
    /// The record is for a key whose current row sits in a partition that can no longer change.
    LateUpdate,
    /// A rule plugin rejected the record; the detail names the plugin and gives its reason.
    RuleRejected,
    /// A data-quality check with policy `quarantine` refused the row about to be published; the
    /// detail names the check.
    CheckFailed,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadFraming => "bad_framing",
            RejectReason::UnknownSchemaId => "unknown_schema_id",
            RejectReason::IncompatibleSchema => "incompatible_schema",
            RejectReason::UndecodableBody => "undecodable_body",
            RejectReason::MissingField => "missing_field",
            RejectReason::Late => "late",
            RejectReason::LateUpdate => "late_update",
            RejectReason::RuleRejected => "rule_rejected",
            RejectReason::CheckFailed => "check_failed",
        }
    }

    pub const ALL: [RejectReason; 9] = [
        RejectReason::BadFraming,
        RejectReason::UnknownSchemaId,
        RejectReason::IncompatibleSchema,
        RejectReason::UndecodableBody,
        RejectReason::MissingField,
        RejectReason::Late,
        RejectReason::LateUpdate,
        RejectReason::RuleRejected,
        RejectReason::CheckFailed,
    ];

    /// The reason named by [`RejectReason::as_str`].
    pub fn parse(name: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|reason| reason.as_str() == name)
    }

    pub fn is_late(self) -> bool {
        matches!(self, RejectReason::Late | RejectReason::LateUpdate)
    }
}
