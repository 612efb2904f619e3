//! The records that flow through the dataflow.
//!
//! Dates are Iceberg dates (days since 1970-01-01, UTC); timestamps are epoch seconds or milliseconds
//! as their names say. Event ids travel as the 128-bit value of their UUID: 16 bytes to hash, compare
//! and store instead of a 36-byte string, and the canonical lowercase text form is restored on write.

use std::cmp::Ordering;

use compact_str::CompactString;
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

pub fn format_event_id(key: u128) -> String {
    uuid::Uuid::from_u128(key).hyphenated().to_string()
}

/// One event as it sits in the raw table: the event fields exactly as ingested (any of them may be
/// missing or wrong) and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    pub event_id: Option<String>,
    pub user_id: Option<String>,
    pub movie_id: Option<String>,
    pub rating: Option<f32>,
    pub rating_timestamp: Option<i64>,
    /// Shared: every record of a topic points at one copy of its name.
    pub source_topic: std::sync::Arc<str>,
    pub source_partition: i32,
    pub source_offset: i64,
    pub ingestion_ts_ms: i64,
    /// Set when the record's bytes could not be read as an event; the event fields are then empty.
    pub undecodable: Option<Box<Undecodable>>,
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

impl RawEvent {
    pub fn ingestion_date(&self) -> i32 {
        day_of_millis(self.ingestion_ts_ms)
    }

    pub fn position(&self) -> IngestPosition {
        IngestPosition {
            ingestion_ts_ms: self.ingestion_ts_ms,
            partition: self.source_partition,
            offset: self.source_offset,
        }
    }
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

/// A rating with a total order (`f32::total_cmp`), so rows can live in ordered collections.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Rating(pub f32);

impl PartialEq for Rating {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Rating {}
impl PartialOrd for Rating {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Rating {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
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

/// A map keyed by `event_id` (as its 128 bits). Hot paths look a key up once or more per record;
/// foldhash (seeded per map) costs a fraction of the standard SipHash on a 16-byte key.
pub type KeyMap<V> = std::collections::HashMap<u128, V, foldhash::fast::RandomState>;

/// A curated row plus the lineage that decides upserts. `Ord` is ingestion order, which is the order
/// the upsert folds candidates in; [`Candidate::beats`] is the "latest wins" order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Candidate {
    pub position: IngestPosition,
    pub origin: Origin,
    pub rating_timestamp: i64,
    pub rating_date: i32,
    /// Ids are short: `CompactString` keeps up to 24 bytes inline, without an allocation.
    pub user_id: CompactString,
    pub movie_id: CompactString,
    pub rating: Rating,
    pub is_approved: bool,
    /// What the record said that the fields above do not keep, for the rare record that differs:
    /// so a late update is written to the rejected table exactly as it was ingested.
    pub as_ingested: Option<Box<AsIngested>>,
}

/// The parts of a raw record a [`Candidate`] does not keep: its `event_id` in another UUID
/// spelling than the canonical one the key is written back as (uppercase, braces, `urn:uuid:`,
/// no hyphens), and its topic when it is not the graph's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AsIngested {
    pub event_id: String,
    pub topic: std::sync::Arc<str>,
}

impl Candidate {
    /// Total "latest wins" order: greatest `rating_timestamp`, ties to the later ingested record,
    /// and a re-processed record over its reloaded copy.
    pub fn winner_order(&self) -> (i64, IngestPosition, Origin) {
        (self.rating_timestamp, self.position, self.origin)
    }

    pub fn beats(&self, other: &Candidate) -> bool {
        self.winner_order() > other.winner_order()
    }
}

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
    MissingEventId,
    InvalidEventId,
    MissingField,
    RatingOutOfRange,
    FutureTimestamp,
    /// The record's own `rating_date` is older than its ingestion date minus the lateness.
    Late,
    /// The record is for an event whose current row sits in a partition that can no longer change.
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
            RejectReason::MissingEventId => "missing_event_id",
            RejectReason::InvalidEventId => "invalid_event_id",
            RejectReason::MissingField => "missing_field",
            RejectReason::RatingOutOfRange => "rating_out_of_range",
            RejectReason::FutureTimestamp => "future_timestamp",
            RejectReason::Late => "late",
            RejectReason::LateUpdate => "late_update",
            RejectReason::RuleRejected => "rule_rejected",
            RejectReason::CheckFailed => "check_failed",
        }
    }

    pub const ALL: [RejectReason; 13] = [
        RejectReason::BadFraming,
        RejectReason::UnknownSchemaId,
        RejectReason::IncompatibleSchema,
        RejectReason::UndecodableBody,
        RejectReason::MissingEventId,
        RejectReason::InvalidEventId,
        RejectReason::MissingField,
        RejectReason::RatingOutOfRange,
        RejectReason::FutureTimestamp,
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

/// A record kept out of the curated table, with everything needed to find and fix it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
    pub event: RawEvent,
}
