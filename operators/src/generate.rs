//! `runtime generate`: seeded, deterministic synthetic raw partitions.
//!
//! Stands in for ingestion: it writes raw rows exactly as the stream's ingestion would (event
//! fields plus topic, partition, offset and ingestion time). The same settings always produce the
//! same rows. Per event, one roll decides its kind:
//! - **invalid** (`invalid`): rating outside 0..10, an empty `event_id`, or a `rating_timestamp`
//!   two days in the future, in turn;
//! - **late** (`late`): a new event rated 6 to 20 days before its ingestion;
//! - **duplicate** (`duplicates`): an earlier event delivered again, unchanged;
//! - **update** (`updates`): an earlier event with a new rating and a newer timestamp near its
//!   ingestion time, which moves the row to today when the original was rated on an earlier day;
//!   the original is picked with an exponential bias towards recent events (mean one day back),
//!   so a few updates reach rows older than the lateness window;
//! - **tie** (`ties`): an earlier event with the same timestamp and a different rating;
//! - otherwise a **new** event rated up to 30 minutes before ingestion (so some land on the
//!   previous UTC day).
//!
//! Ingestion times are spread evenly over each day; a record's partition is its `event_id`'s hash
//! modulo `partitions`, and offsets increase per partition, as a keyed Kafka topic would have it.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::SECONDS_PER_DAY;
use crate::sample::RawEvent;

pub const DEFAULT_TOPIC: &str = "movie.ratings.v1";

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSettings {
    pub events: u64,
    pub days: u32,
    pub start_day: i32,
    pub users: u32,
    pub movies: u32,
    pub duplicates: f64,
    pub updates: f64,
    pub ties: f64,
    pub late: f64,
    pub invalid: f64,
    /// Fraction of records whose `event_id` is spelled other than canonically (uppercase, in
    /// braces, as `urn:uuid:`, without hyphens): still the same event.
    pub id_spellings: f64,
    pub seed: u64,
    pub partitions: i32,
    pub topic: String,
}

impl GenerateSettings {
    /// A realistic day: mostly new events, a few percent duplicates and updates, under 1% late
    /// and invalid.
    pub fn realistic(start_day: i32) -> Self {
        GenerateSettings {
            events: 300_000,
            days: 10,
            start_day,
            users: 50_000,
            movies: 5_000,
            duplicates: 0.02,
            updates: 0.03,
            ties: 0.005,
            late: 0.004,
            invalid: 0.003,
            id_spellings: 0.0,
            seed: 42,
            partitions: 6,
            topic: DEFAULT_TOPIC.to_string(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let fractions = [self.duplicates, self.updates, self.ties, self.late, self.invalid];
        if fractions.iter().chain([&self.id_spellings]).any(|f| !(0.0..=1.0).contains(f)) {
            return Err("fractions must be between 0 and 1".into());
        }
        if fractions.iter().sum::<f64>() > 1.0 {
            return Err("the fractions of duplicates, updates, ties, late and invalid add up to more than 1".into());
        }
        if self.days == 0 || self.users == 0 || self.movies == 0 || self.partitions <= 0 {
            return Err("--days, --users, --movies and --partitions must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Emitted {
    event_id: String,
    user_id: String,
    movie_id: String,
    rating: f32,
    rating_timestamp: i64,
}

/// The generator's state between days.
pub struct Generator {
    settings: GenerateSettings,
    rng: ChaCha8Rng,
    history: VecDeque<Emitted>,
    offsets: Vec<i64>,
    day_index: u32,
    invalid_turn: u32,
}

const HISTORY_LIMIT: usize = 4_000_000;

impl Generator {
    pub fn new(settings: GenerateSettings) -> Self {
        let partitions = settings.partitions as usize;
        Generator {
            rng: ChaCha8Rng::seed_from_u64(settings.seed),
            settings,
            history: VecDeque::new(),
            offsets: vec![0; partitions],
            day_index: 0,
            invalid_turn: 0,
        }
    }

    fn events_on(&self, day_index: u32) -> u64 {
        let days = self.settings.days as u64;
        self.settings.events / days + u64::from((day_index as u64) < self.settings.events % days)
    }

    fn rating(&mut self) -> f32 {
        self.rng.random_range(0..=100u32) as f32 / 10.0
    }

    /// An earlier event, biased towards recent ones (exponential, mean one day of events back).
    fn earlier(&mut self, per_day: u64) -> Option<Emitted> {
        if self.history.is_empty() {
            return None;
        }
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let back = ((-u.ln()) * per_day as f64) as usize;
        let index = self.history.len() - 1 - back.min(self.history.len() - 1);
        self.history.get(index).cloned()
    }

    fn partition_of(&self, event_id: &str) -> i32 {
        // FNV-1a: stable across runs and platforms, unlike std's hasher.
        let hash = event_id.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        (hash % self.settings.partitions as u64) as i32
    }

    /// The next day's raw rows, or `None` after the last day.
    pub fn next_day(&mut self) -> Option<(i32, Vec<RawEvent>)> {
        if self.day_index >= self.settings.days {
            return None;
        }
        let day = self.settings.start_day + self.day_index as i32;
        let count = self.events_on(self.day_index);
        let per_day = (self.settings.events / self.settings.days as u64).max(1);
        let s = self.settings.clone();
        let topic: std::sync::Arc<str> = s.topic.as_str().into();
        let mut rows = Vec::with_capacity(count as usize);
        for i in 0..count {
            let ingestion_ts_ms = day as i64 * SECONDS_PER_DAY * 1000 + (i as i64 * SECONDS_PER_DAY * 1000) / count as i64;
            let now = ingestion_ts_ms / 1000;
            let roll: f64 = self.rng.random();
            let kind = [s.invalid, s.late, s.duplicates, s.updates, s.ties]
                .into_iter()
                .scan(0.0, |limit, fraction| {
                    *limit += fraction;
                    Some(*limit)
                })
                .position(|limit| roll < limit)
                .unwrap_or(5);
            let earlier = if (2..=4).contains(&kind) { self.earlier(per_day) } else { None };
            let event = match (kind, earlier) {
                (0, _) => {
                    self.invalid_turn += 1;
                    let mut event = self.fresh(now, 0..1800);
                    match self.invalid_turn % 3 {
                        0 => event.rating = if self.rng.random() { 10.5 + event.rating } else { -1.0 - event.rating },
                        1 => event.event_id = String::new(),
                        _ => event.rating_timestamp = now + 2 * SECONDS_PER_DAY,
                    }
                    event
                }
                (1, _) => self.fresh(now, 6 * SECONDS_PER_DAY..20 * SECONDS_PER_DAY),
                (2, Some(original)) => original,
                (3, Some(original)) => Emitted {
                    rating_timestamp: (now - self.rng.random_range(0..600)).max(original.rating_timestamp + 1),
                    rating: self.rating(),
                    ..original
                },
                (4, Some(original)) => Emitted { rating: self.rating(), ..original },
                _ => {
                    let event = self.fresh(now, 0..1800);
                    if self.history.len() == HISTORY_LIMIT {
                        self.history.pop_front();
                    }
                    self.history.push_back(event.clone());
                    event
                }
            };
            let partition = self.partition_of(&event.event_id);
            let offset = self.offsets[partition as usize];
            self.offsets[partition as usize] += 1;
            // No draw at all without respelling, so the default mix keeps its rows.
            let event_id = if s.id_spellings > 0.0 && !event.event_id.is_empty() && self.rng.random::<f64>() < s.id_spellings {
                respell(&event.event_id, self.rng.random_range(0..4))
            } else {
                event.event_id
            };
            rows.push(RawEvent {
                event_id: Some(event_id),
                user_id: Some(event.user_id),
                movie_id: Some(event.movie_id),
                rating: Some(event.rating),
                rating_timestamp: Some(event.rating_timestamp),
                source_topic: topic.clone(),
                source_partition: partition,
                source_offset: offset,
                ingestion_ts_ms,
                undecodable: None,
            });
        }
        self.day_index += 1;
        Some((day, rows))
    }

    /// A new event rated `before` seconds before `now`.
    fn fresh(&mut self, now: i64, before: std::ops::Range<i64>) -> Emitted {
        let rating_timestamp = now - self.rng.random_range(before);
        let bytes: [u8; 16] = self.rng.random();
        Emitted {
            event_id: uuid::Builder::from_random_bytes(bytes).into_uuid().hyphenated().to_string(),
            user_id: format!("u{}", self.rng.random_range(0..self.settings.users)),
            movie_id: format!("m{}", self.rng.random_range(0..self.settings.movies)),
            rating: self.rating(),
            rating_timestamp,
        }
    }
}

/// A canonical UUID in one of its other accepted spellings.
fn respell(canonical: &str, how: u32) -> String {
    match how {
        0 => canonical.to_uppercase(),
        1 => format!("{{{canonical}}}"),
        2 => format!("urn:uuid:{canonical}"),
        _ => canonical.replace('-', ""),
    }
}

/// Generates every day and appends them to the raw table in one snapshot.
pub async fn write_generated(
    lakehouse: &crate::catalog::Lakehouse,
    raw: &iceberg::TableIdent,
    settings: GenerateSettings,
    target_file_size: usize,
    mut on_day: impl FnMut(i32, usize),
) -> crate::Result<u64> {
    let table = lakehouse.load(raw).await?;
    let schema = crate::schema::arrow_schema(table.metadata().current_schema())?;
    let seed = settings.seed;
    let mut generator = Generator::new(settings);
    let mut files = Vec::new();
    let mut total = 0u64;
    while let Some((day, rows)) = generator.next_day() {
        // Ingestion writes one file per topic partition and day; so does the generator, which
        // also lets replay spread a day's files over its workers.
        let mut by_partition: std::collections::BTreeMap<i32, Vec<RawEvent>> = Default::default();
        for row in &rows {
            by_partition.entry(row.source_partition).or_default().push(row.clone());
        }
        for (partition, events) in by_partition {
            let batch = crate::sample::raw_to_batch(&schema, &events)?;
            let prefix = format!("gen-p{partition}");
            files.extend(crate::writer::write_partition(&table, day, [batch], target_file_size, &prefix).await?);
        }
        total += rows.len() as u64;
        on_day(day, rows.len());
    }
    let change = crate::commit::FileChange {
        add: files,
        properties: [("ratings-flow.generated-seed".to_string(), seed.to_string())].into(),
        ..Default::default()
    };
    crate::commit::commit(lakehouse, table, change, crate::commit::CommitOptions::default()).await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_rows_and_the_mix_is_realistic() {
        let settings = GenerateSettings { events: 20_000, days: 4, ..GenerateSettings::realistic(20_000) };
        let run = |s: &GenerateSettings| {
            let mut g = Generator::new(s.clone());
            std::iter::from_fn(|| g.next_day()).flat_map(|(_, rows)| rows).collect::<Vec<_>>()
        };
        let rows = run(&settings);
        assert_eq!(rows, run(&settings));
        assert_ne!(rows, run(&GenerateSettings { seed: 7, ..settings.clone() }));
        assert_eq!(rows.len(), 20_000);
        let rules = crate::test_fixture::ratings_rules();
        let schema = crate::schema::arrow_schema(&rules.pipeline.raw_layout().unwrap().schema).unwrap();
        let judged = rules.judge(&crate::sample::raw_to_batch(&schema, &rows).unwrap()).unwrap();
        let rejected = judged.rejected.len() as f64 / rows.len() as f64;
        assert!(rejected > 0.002 && rejected < 0.01, "rejected fraction {rejected}");
        let distinct: std::collections::HashSet<_> = rows.iter().map(|r| r.event_id.clone()).collect();
        let repeated = 1.0 - distinct.len() as f64 / rows.len() as f64;
        assert!(repeated > 0.03 && repeated < 0.08, "repeated fraction {repeated}");
    }
}
