//! The rules stage: the engine's validation, derivation and late cut of one raw record
//! ([`Rules`]), then the business rules of the graph's plugins over a batch ([`chain`]).
//!
//! Semantics of the engine's part (each rule reads only the record itself, never the wall clock,
//! so a replay of the raw table reproduces exactly what the stream decided):
//! - `event_id` must be present and a UUID (any case, with or without hyphens); it is keyed by its
//!   128-bit value and written back in canonical lowercase form.
//! - `user_id`, `movie_id`, `rating` and `rating_timestamp` must be present; ids must be non-empty.
//! - `rating` must be a number in `0..=10` (NaN is out of range).
//! - `rating_timestamp` may not lie more than `future_tolerance_secs` after the record's ingestion
//!   time (a clock that runs ahead is tolerated up to that bound).
//! - `is_approved` is left to the plugin chain (the shipped `approval` plugin:
//!   `rating >= threshold`, inclusive); until the chain ran it is `false`.
//! - `rating_date` = UTC day of `rating_timestamp`.
//! - Late cut: a record whose `rating_date` is more than `lateness_days` before its ingestion date
//!   is rejected as [`RejectReason::Late`]. Exactly `lateness_days` before is still on time.

pub mod chain;
pub mod plugin;

use crate::model::{Candidate, Origin, Rating, RawEvent, RejectReason, Rejection, day_of_seconds};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub lateness_days: i32,
    pub future_tolerance_secs: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { lateness_days: 5, future_tolerance_secs: 3600 }
    }
}

pub const MIN_RATING: f32 = 0.0;
pub const MAX_RATING: f32 = 10.0;

/// Parses a UUID in any of its usual text forms into the key the engine uses.
pub fn parse_event_id(text: &str) -> Option<u128> {
    uuid::Uuid::try_parse(text.trim()).ok().map(|u| u.as_u128())
}

impl Rules {
    /// The day before which a row's partition can no longer change for records ingested on
    /// `ingestion_date`.
    pub fn window_start(&self, ingestion_date: i32) -> i32 {
        ingestion_date - self.lateness_days
    }

    /// Applies validation, derivation and the late cut to one raw record.
    pub fn evaluate(&self, event: &RawEvent) -> Result<(u128, Candidate), Box<Rejection>> {
        let reject = |reason: RejectReason, detail: String| Box::new(Rejection { reason, detail, event: event.clone() });
        if let Some(undecodable) = &event.undecodable {
            return Err(reject(undecodable.reason, undecodable.detail.clone()));
        }
        let event_id = match event.event_id.as_deref().map(str::trim) {
            None | Some("") => return Err(reject(RejectReason::MissingEventId, "event_id is missing".into())),
            Some(text) => parse_event_id(text)
                .ok_or_else(|| reject(RejectReason::InvalidEventId, format!("event_id {text:?} is not a UUID")))?,
        };
        let user_id = match event.user_id.as_deref() {
            Some(id) if !id.is_empty() => id,
            _ => return Err(reject(RejectReason::MissingField, "user_id is missing".into())),
        };
        let movie_id = match event.movie_id.as_deref() {
            Some(id) if !id.is_empty() => id,
            _ => return Err(reject(RejectReason::MissingField, "movie_id is missing".into())),
        };
        let Some(rating) = event.rating else {
            return Err(reject(RejectReason::MissingField, "rating is missing".into()));
        };
        if !(MIN_RATING..=MAX_RATING).contains(&rating) {
            return Err(reject(
                RejectReason::RatingOutOfRange,
                format!("rating {rating} is outside {MIN_RATING}..={MAX_RATING}"),
            ));
        }
        let Some(rating_timestamp) = event.rating_timestamp else {
            return Err(reject(RejectReason::MissingField, "rating_timestamp is missing".into()));
        };
        let ingestion_secs = event.ingestion_ts_ms.div_euclid(1000);
        if rating_timestamp > ingestion_secs + self.future_tolerance_secs {
            return Err(reject(
                RejectReason::FutureTimestamp,
                format!(
                    "rating_timestamp {rating_timestamp} is {}s after ingestion (tolerance {}s)",
                    rating_timestamp - ingestion_secs,
                    self.future_tolerance_secs
                ),
            ));
        }
        let rating_date = day_of_seconds(rating_timestamp);
        let ingestion_date = event.ingestion_date();
        if rating_date < self.window_start(ingestion_date) {
            return Err(reject(
                RejectReason::Late,
                format!(
                    "rating_date {} is {} days before ingestion date {} (lateness {} days)",
                    crate::model::format_date(rating_date),
                    ingestion_date - rating_date,
                    crate::model::format_date(ingestion_date),
                    self.lateness_days
                ),
            ));
        }
        Ok((
            event_id,
            Candidate {
                position: event.position(),
                origin: Origin::Input,
                rating_timestamp,
                rating_date,
                user_id: user_id.into(),
                movie_id: movie_id.into(),
                rating: Rating(rating),
                is_approved: false,
                as_ingested: None,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rating: Option<f32>, rating_timestamp: i64, ingestion_ts_ms: i64) -> RawEvent {
        RawEvent {
            event_id: Some("6F9619FF-8B86-D011-B42D-00C04FC964FF".into()),
            user_id: Some("u1".into()),
            movie_id: Some("m1".into()),
            rating,
            rating_timestamp: Some(rating_timestamp),
            source_topic: "t".into(),
            source_partition: 0,
            source_offset: 7,
            ingestion_ts_ms,
            undecodable: None,
        }
    }

    const DAY: i64 = 86_400;

    #[test]
    fn key_is_canonical_and_date_is_utc_day() {
        let rules = Rules::default();
        let (key, c) = rules.evaluate(&event(Some(7.0), 10 * DAY + 5, (10 * DAY + 60) * 1000)).unwrap();
        assert_eq!(crate::model::format_event_id(key), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
        assert_eq!(c.rating_date, 10);
        let (_, c) = rules.evaluate(&event(Some(6.99), 10 * DAY - 1, 10 * DAY * 1000)).unwrap();
        assert_eq!(c.rating_date, 9);
    }

    #[test]
    fn lateness_boundary_is_exact() {
        let rules = Rules::default();
        let ingest = 20 * DAY * 1000;
        assert!(rules.evaluate(&event(Some(5.0), 15 * DAY, ingest)).is_ok());
        let err = rules.evaluate(&event(Some(5.0), 15 * DAY - 1, ingest)).unwrap_err();
        assert_eq!(err.reason, RejectReason::Late);
    }

    #[test]
    fn invalid_values_are_rejected_with_their_reason() {
        let rules = Rules::default();
        let ingest = 20 * DAY * 1000;
        let cases = [
            (event(Some(10.5), 20 * DAY, ingest), RejectReason::RatingOutOfRange),
            (event(Some(-0.1), 20 * DAY, ingest), RejectReason::RatingOutOfRange),
            (event(Some(f32::NAN), 20 * DAY, ingest), RejectReason::RatingOutOfRange),
            (event(None, 20 * DAY, ingest), RejectReason::MissingField),
            (event(Some(5.0), 20 * DAY + 3601, ingest), RejectReason::FutureTimestamp),
            (RawEvent { event_id: Some(" ".into()), ..event(Some(5.0), 20 * DAY, ingest) }, RejectReason::MissingEventId),
            (RawEvent { event_id: Some("nope".into()), ..event(Some(5.0), 20 * DAY, ingest) }, RejectReason::InvalidEventId),
            (RawEvent { user_id: Some(String::new()), ..event(Some(5.0), 20 * DAY, ingest) }, RejectReason::MissingField),
        ];
        for (raw, reason) in cases {
            assert_eq!(rules.evaluate(&raw).unwrap_err().reason, reason, "{raw:?}");
        }
        assert!(rules.evaluate(&event(Some(5.0), 20 * DAY + 3600, ingest)).is_ok());
    }
}
