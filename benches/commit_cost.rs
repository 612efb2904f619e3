//! Does an epoch's cost follow the change or the table? One epoch of 10k mixed events (new keys,
//! updates of rows inside the lateness window, in-epoch duplicates, late events, late updates of
//! frozen rows) replayed on top of a curated table of 20M rows, against the same epoch on an
//! empty table. The figure is the epoch alone (`ReplaySummary::epoch_times`: reading its raw
//! partition, rules, upsert, writing, the commit), not the start-up that reloads the window's
//! rows; the goal is at most 2x.
//!
//! Every iteration starts from the same table: the curated and rejected metadata pointers are
//! swapped back to the base snapshot (files an iteration wrote stay as orphans in the temp dir).
//!
//! `ROWS` (default 20M) sets the big table's size, e.g. `ROWS=2000000 cargo bench --bench
//! commit_cost` for a quick look.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use iceberg::TableIdent;
use operators::catalog::{CatalogSettings, Lakehouse, parse_table_ident};
use operators::commit::{CommitOptions, FileChange, commit};
use operators::model::{IngestPosition, Origin};
use operators::sample::{Candidate, RawEvent, Rating};
use operators::replay::{ProgressSink, ReplaySettings, replay};
use operators::schema::arrow_schema;
use operators::sample::{curated_to_batch, raw_to_batch};
use operators::writer::write_partition;

/// The epoch's ingestion date, 2025-06-10; the big table's rows are rated in the 40 days before.
const DAY: i32 = 20_249;
const TABLE_DAYS: i32 = 40;
const EPOCH_EVENTS: usize = 10_000;

struct Quiet;
impl ProgressSink for Quiet {
    fn start(&self, _: u64, _: usize) {}
    fn advance(&self, _: u64) {}
    fn epoch_committed(&self, _: i32) {}
}

/// A well-spread 128-bit key for row `i` (splitmix64 on both halves).
fn key(i: u64) -> u128 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    // Version-4 style bits keep the text a canonical UUID.
    let value = (u128::from(mix(i)) << 64) | u128::from(mix(i ^ 0xDEAD_BEEF));
    (value & !(0xF000u128 << 64)) | (0x4000u128 << 64)
}

/// Row `i` of the big table: rated on day `DAY - TABLE_DAYS + i % TABLE_DAYS`.
fn stored(i: u64) -> (u128, Candidate) {
    let day = DAY - TABLE_DAYS + (i % TABLE_DAYS as u64) as i32;
    let rated = i64::from(day) * 86_400 + (i % 86_400) as i64;
    let candidate = Candidate {
        position: IngestPosition { ingestion_ts_ms: (rated + 60) * 1000, partition: (i % 6) as i32, offset: i as i64 },
        origin: Origin::Input,
        rating_timestamp: rated,
        rating_date: day,
        user_id: format!("u{}", i % 50_000).into(),
        movie_id: format!("m{}", i % 5_000).into(),
        rating: Rating((i % 101) as f32 / 10.0),
        is_approved: (i % 101) >= 70,
    };
    (key(i), candidate)
}

/// The rows of table day `day` among the first `rows`.
fn rows_of_day(rows: u64, day: i32) -> impl Iterator<Item = u64> {
    let offset = (day - (DAY - TABLE_DAYS)) as u64;
    (offset..rows).step_by(TABLE_DAYS as usize)
}

/// The epoch: 10k raw events ingested on `DAY`.
fn epoch_events(rows: u64) -> Vec<RawEvent> {
    let ingested = i64::from(DAY) * 86_400_000 + 3_600_000;
    let mut events = Vec::with_capacity(EPOCH_EVENTS);
    let mut push = |id: u128, rated: i64, rating: f32| {
        let offset = events.len() as i64;
        events.push(RawEvent {
            event_id: Some(operators::sample::format_event_id(id)),
            user_id: Some(format!("u{}", offset % 50_000)),
            movie_id: Some(format!("m{}", offset % 5_000)),
            rating: Some(rating),
            rating_timestamp: Some(rated),
            source_topic: "movie.ratings.v1".into(),
            source_partition: (offset % 6) as i32,
            source_offset: 1_000_000_000 + offset,
            ingestion_ts_ms: ingested + offset,
            undecodable: None,
        });
    };
    let now = i64::from(DAY) * 86_400;
    for n in 0..6_500u64 {
        push(key(u64::MAX - n), now - 600 + (n % 600) as i64, (n % 101) as f32 / 10.0);
    }
    // Updates of rows rated in the lateness window (the 4 days before DAY), spread over its files.
    let step = (rows / TABLE_DAYS as u64 / 625).max(1) as usize;
    let window: Vec<u64> = (1..=4).flat_map(|back| rows_of_day(rows, DAY - back).step_by(step).take(625)).collect();
    assert_eq!(window.len(), 2_500, "the table needs at least 625 rows per day");
    for (n, i) in window.iter().enumerate() {
        let (id, row) = stored(*i);
        push(id, row.rating_timestamp + 3_600, ((n + 3) % 101) as f32 / 10.0);
    }
    // In-epoch duplicates: the same event twice (the later copy wins the tie).
    for n in 0..250u64 {
        let id = key(u64::MAX - 10_000 - n);
        push(id, now - 30, 5.0);
        push(id, now - 30, 6.0);
    }
    // Late events (rated 10 days before) and late updates of frozen rows.
    for n in 0..250u64 {
        push(key(u64::MAX - 20_000 - n), now - 10 * 86_400, 4.0);
    }
    for i in rows_of_day(rows, DAY - 20).step_by(101).take(250) {
        let (id, row) = stored(i);
        push(id, row.rating_timestamp + 60, 2.0);
    }
    events
}

struct Lake {
    _dir: tempfile::TempDir,
    catalog: CatalogSettings,
    raw: TableIdent,
    curated: TableIdent,
    rejected: TableIdent,
    /// Base metadata locations of curated and rejected, restored before every iteration.
    base: Vec<(TableIdent, String)>,
}

/// A lake whose raw table holds the epoch for a table of `rows` rows, and whose curated table holds
/// those rows when `with_table`.
async fn lake(rows: u64, with_table: bool) -> Lake {
    let dir = tempfile::tempdir().unwrap();
    let catalog = CatalogSettings::sql("bench", dir.path().join("catalog.db"), operators::storage::Warehouse::Local(dir.path().join("warehouse")));
    let lakehouse = Lakehouse::open(&catalog, true).await.unwrap();
    let (raw, curated, rejected) = (
        parse_table_ident("raw.movie_ratings_raw").unwrap(),
        parse_table_ident("curated.movie_ratings").unwrap(),
        parse_table_ident("curated.movie_ratings_rejected").unwrap(),
    );
    lakehouse.ensure_table(&raw, &ratings_benches::shipped_graph().pipeline.raw_layout().unwrap()).await.unwrap();
    lakehouse.ensure_table(&curated, &ratings_benches::shipped_graph().pipeline.curated_layout().unwrap()).await.unwrap();
    lakehouse.ensure_table(&rejected, &ratings_benches::shipped_graph().pipeline.rejected_layout().unwrap()).await.unwrap();

    let table = lakehouse.load(&curated).await.unwrap();
    let schema = arrow_schema(table.metadata().current_schema()).unwrap();
    let mut files = Vec::new();
    for day in (DAY - TABLE_DAYS..DAY).filter(|_| with_table) {
        let mut day_rows: Vec<(u128, Candidate)> = rows_of_day(rows, day).map(stored).collect();
        if day_rows.is_empty() {
            continue;
        }
        day_rows.sort_unstable_by_key(|(k, _)| *k);
        let batch = curated_to_batch(&schema, day_rows.iter().map(|(k, c)| (k, c))).unwrap();
        files.extend(write_partition(&table, day, [batch], 128 << 20, "base").await.unwrap());
    }
    if !files.is_empty() {
        commit(&lakehouse, table, FileChange { add: files, ..Default::default() }, CommitOptions::default()).await.unwrap();
    }

    let raw_table = lakehouse.load(&raw).await.unwrap();
    let raw_schema = arrow_schema(raw_table.metadata().current_schema()).unwrap();
    let batch = raw_to_batch(&raw_schema, &epoch_events(rows)).unwrap();
    let raw_files = write_partition(&raw_table, DAY, [batch], 128 << 20, "raw").await.unwrap();
    commit(&lakehouse, raw_table, FileChange { add: raw_files, ..Default::default() }, CommitOptions::default()).await.unwrap();

    let mut base = Vec::new();
    for ident in [&curated, &rejected] {
        let location = lakehouse.load(ident).await.unwrap().metadata_location().unwrap().to_string();
        base.push((ident.clone(), location));
    }
    Lake { _dir: dir, catalog, raw, curated, rejected, base }
}

impl Lake {
    async fn reset(&self) {
        let lakehouse = Lakehouse::open(&self.catalog, false).await.unwrap();
        for (ident, base) in &self.base {
            let now = lakehouse.load(ident).await.unwrap().metadata_location().unwrap().to_string();
            if &now != base {
                assert!(lakehouse.swap_metadata_pointer(ident, &now, base).await.unwrap());
            }
        }
    }

    /// Replays the epoch and returns its time.
    fn epoch(&self) -> Duration {
        let settings = ReplaySettings {
            catalog: self.catalog.clone(),
            raw: self.raw.clone(),
            curated: self.curated.clone(),
            rejected: self.rejected.clone(),
            topic: "movie.ratings.v1".into(),
            rules: ratings_benches::shipped_graph().rules.clone(),
            chain: ratings_benches::approval_chain(),
            checks: Default::default(),
            compact_after_files: Some(16),
            from: DAY,
            to: Some(DAY),
            workers: 2,
            target_file_size: 128 << 20,
            commit: Default::default(),
            max_epoch_events: 4_000_000,
        cluster: operators::cluster::Cluster::single(),
        identity: operators::cluster::Identity::default(),
        };
        let summary = replay(settings, Arc::new(Quiet)).unwrap();
        assert_eq!(summary.events_read, EPOCH_EVENTS as u64);
        summary.epoch_times[0]
    }
}

fn commit_cost(c: &mut Criterion) {
    let rows: u64 = std::env::var("ROWS").ok().and_then(|r| r.parse().ok()).unwrap_or(20_000_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("epoch_10k");
    group.sample_size(10).measurement_time(Duration::from_secs(60)).warm_up_time(Duration::from_millis(1));
    for (name, with_table) in [("empty_table", false), ("big_table", true)] {
        let lake = runtime.block_on(lake(rows, with_table));
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    runtime.block_on(lake.reset());
                    total += lake.epoch();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, commit_cost);
criterion_main!(benches);
