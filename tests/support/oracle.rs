//! The reference: the ratings rules as a plain sequential loop over raw rows in ingestion order.
//! Written from the rules' text, sharing no code with the engine.

use std::collections::BTreeMap;

use operators::sample::RawEvent;

#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedRow {
    pub user_id: String,
    pub movie_id: String,
    pub rating: f32,
    pub is_approved: bool,
    pub rating_timestamp: i64,
    pub rating_date: i32,
    /// Where the winning record came from: (ingestion ms, partition, offset).
    pub source: (i64, i32, i64),
}

#[derive(Debug, Default)]
pub struct Expected {
    /// By event_id (lowercase hyphenated UUID text).
    pub rows: BTreeMap<String, ExpectedRow>,
    /// (partition, offset, reason), sorted.
    pub rejected: Vec<(i32, i64, String)>,
}

const DAY: i64 = 86_400;
const LATENESS_DAYS: i64 = 5;
const FUTURE_TOLERANCE: i64 = 3_600;

fn canonical_uuid(text: &str) -> Option<String> {
    // The spellings RFC 9562 tools write: plain, braced, or as a URN.
    let text = text.trim();
    let text = text.strip_prefix("urn:uuid:").unwrap_or(text);
    let text = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')).unwrap_or(text);
    let hex: String = text.chars().filter(|c| *c != '-').collect::<String>().to_ascii_lowercase();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
}

fn reject_reason(e: &RawEvent) -> Option<&'static str> {
    if let Some(undecodable) = &e.undecodable {
        return Some(undecodable.reason.as_str());
    }
    let id = e.event_id.as_deref().unwrap_or("").trim();
    if id.is_empty() {
        return Some("missing_event_id");
    }
    if canonical_uuid(id).is_none() {
        return Some("invalid_event_id");
    }
    if e.user_id.as_deref().unwrap_or("").is_empty() || e.movie_id.as_deref().unwrap_or("").is_empty() {
        return Some("missing_field");
    }
    let Some(rating) = e.rating else { return Some("missing_field") };
    if !(0.0..=10.0).contains(&rating) {
        return Some("rating_out_of_range");
    }
    let Some(ts) = e.rating_timestamp else { return Some("missing_field") };
    if ts > e.ingestion_ts_ms.div_euclid(1000) + FUTURE_TOLERANCE {
        return Some("future_timestamp");
    }
    None
}

/// The business rules the graph's plugins implement, written out for the oracle.
pub struct Business<'a> {
    pub approval_threshold: f32,
    /// A record that passed the engine's checks and that the plugins reject: `Some(reason)`.
    pub reject: &'a dyn Fn(&RawEvent) -> Option<String>,
}

/// The shipped graph's business rules without the blocklist: approval at 7.
pub const APPROVAL_ONLY: Business<'static> = Business { approval_threshold: 7.0, reject: &|_| None };

/// Applies the rules to `raw` (in any order) on top of an empty table, with approval at 7.
pub fn expected(raw: &[RawEvent]) -> Expected {
    expected_with(raw, &APPROVAL_ONLY)
}

/// Applies the rules to `raw` with `business` as the plugin chain. Rejected entries of the
/// business rules carry `rule_rejected`.
pub fn expected_with(raw: &[RawEvent], business: &Business) -> Expected {
    let mut ordered: Vec<&RawEvent> = raw.iter().collect();
    ordered.sort_by_key(|e| (e.ingestion_ts_ms, e.source_partition, e.source_offset));
    let mut out = Expected::default();
    for e in ordered {
        let coordinates = (e.source_partition, e.source_offset);
        if let Some(reason) = reject_reason(e) {
            out.rejected.push((coordinates.0, coordinates.1, reason.to_string()));
            continue;
        }
        let id = canonical_uuid(e.event_id.as_deref().unwrap()).unwrap();
        let ts = e.rating_timestamp.unwrap();
        let rating_date = ts.div_euclid(DAY);
        let ingestion_date = e.ingestion_ts_ms.div_euclid(1000).div_euclid(DAY);
        if rating_date < ingestion_date - LATENESS_DAYS {
            out.rejected.push((coordinates.0, coordinates.1, "late".into()));
            continue;
        }
        let source = (e.ingestion_ts_ms, e.source_partition, e.source_offset);
        if let Some(current) = out.rows.get(&id)
            && (current.rating_date as i64) < ingestion_date - LATENESS_DAYS
        {
            out.rejected.push((coordinates.0, coordinates.1, "late_update".into()));
            continue;
        }
        if (business.reject)(e).is_some() {
            out.rejected.push((coordinates.0, coordinates.1, "rule_rejected".into()));
            continue;
        }
        if let Some(current) = out.rows.get(&id)
            && (ts, source) < (current.rating_timestamp, current.source)
        {
            continue;
        }
        let rating = e.rating.unwrap();
        out.rows.insert(
            id,
            ExpectedRow {
                user_id: e.user_id.clone().unwrap(),
                movie_id: e.movie_id.clone().unwrap(),
                rating,
                is_approved: rating >= business.approval_threshold,
                rating_timestamp: ts,
                rating_date: rating_date as i32,
                source,
            },
        );
    }
    out.rejected.sort();
    out
}
