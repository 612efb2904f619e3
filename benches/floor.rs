//! What every streamed record costs at the least, stage by stage, on one thread: the work a
//! stream epoch cannot skip whatever the engine around it looks like. Set beside `bare-consume`
//! (the Kafka part) this bounds how close `--mode stream` can get to the bare consumer on a given
//! machine; benches/README.md has the figures and the arithmetic.
//!
//! On 1M generated events (realistic mix, 5 days):
//! - `stream_floor_1m/avro_read`: the Avro bodies read into event fields (the engine's read plan,
//!   no framing or registry);
//! - `stream_floor_1m/raw_columns`: the events appended to the raw table's Arrow columns;
//! - `stream_floor_1m/raw_parquet`: those columns written as the raw table's Parquet files
//!   (the engine's writer and properties, local disk), one set per ingestion date;
//! - `stream_floor_1m/rules`: validation and derivation of each event (no plugins);
//! - `stream_floor_1m/curated_parquet`: the derived rows as curated Arrow columns and Parquet
//!   files, one set per `rating_date`, sorted by key as the curated writer writes them.

use std::collections::BTreeMap;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use operators::catalog::{CatalogSettings, Lakehouse, parse_table_ident};
use operators::generate::{GenerateSettings, Generator};
use operators::model::{Candidate, RawEvent};
use operators::rules::Rules;
use operators::schema::{RawBatchBuilder, arrow_schema, curated_to_batch};
use operators::source::kafka::read_plan::ReadPlan;
use operators::writer::write_partition;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: u64 = 1_000_000;
const START_DAY: i32 = 20_209; // 2025-05-01

fn floor(c: &mut Criterion) {
    let mut generator = Generator::new(GenerateSettings { events: EVENTS, days: 5, ..GenerateSettings::realistic(START_DAY) });
    let events: Vec<RawEvent> = std::iter::from_fn(|| generator.next_day()).flat_map(|(_, rows)| rows).collect();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let avsc = std::fs::read_to_string(root.join("graphs/schemas/movie_rating.avsc")).unwrap();
    let schema = apache_avro::Schema::parse_str(&avsc).unwrap();
    let bodies: Vec<Vec<u8>> = events
        .iter()
        .filter(|e| e.undecodable.is_none())
        .map(|e| operators::produce::encode_event(&schema, e).unwrap())
        .collect();
    let plan = ReadPlan::new(&schema, &schema, false).expect("the shipped schema has a read plan");

    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let catalog = CatalogSettings { name: "bench".into(), database: dir.path().join("catalog.db"), warehouse: dir.path().join("warehouse") };
    let (raw, curated) = runtime.block_on(async {
        let lakehouse = Lakehouse::open(&catalog, true).await.unwrap();
        let raw = parse_table_ident("raw.movie_ratings_raw").unwrap();
        let curated = parse_table_ident("curated.movie_ratings").unwrap();
        let raw = lakehouse.ensure_table(&raw, &ratings_benches::shipped_graph().pipeline.raw_layout().unwrap()).await.unwrap();
        let curated = lakehouse.ensure_table(&curated, &ratings_benches::shipped_graph().pipeline.curated_layout().unwrap()).await.unwrap();
        (raw, curated)
    });
    let raw_schema = arrow_schema(raw.metadata().current_schema()).unwrap();
    let curated_schema = arrow_schema(curated.metadata().current_schema()).unwrap();
    let raw_columns = || {
        let mut days: BTreeMap<i32, RawBatchBuilder> = BTreeMap::new();
        for event in &events {
            days.entry(event.ingestion_date()).or_insert_with(|| RawBatchBuilder::with_capacity(1 << 18)).push(event);
        }
        days.into_iter().map(|(day, builder)| (day, builder.finish(&raw_schema).unwrap())).collect::<Vec<_>>()
    };
    let rules = Rules::default();
    let mut rows: Vec<(u128, Candidate)> = events.iter().filter_map(|e| rules.evaluate(e).ok()).collect();
    rows.sort_unstable_by_key(|(key, _)| *key);
    let mut by_day: BTreeMap<i32, Vec<(u128, Candidate)>> = BTreeMap::new();
    for (key, row) in rows {
        by_day.entry(row.rating_date).or_default().push((key, row));
    }

    let mut group = c.benchmark_group("stream_floor_1m");
    group.sample_size(10).measurement_time(Duration::from_secs(20)).throughput(Throughput::Elements(EVENTS));
    group.bench_function("avro_read", |b| {
        b.iter(|| bodies.iter().filter_map(|body| plan.read(body)).count())
    });
    group.bench_function("raw_columns", |b| b.iter(raw_columns));
    let raw_batches = raw_columns();
    group.bench_function("raw_parquet", |b| {
        b.iter(|| {
            runtime.block_on(async {
                for (day, batch) in &raw_batches {
                    write_partition(&raw, *day, [batch.clone()], 128 << 20, "floor").await.unwrap();
                }
            })
        })
    });
    group.bench_function("rules", |b| b.iter(|| events.iter().filter_map(|e| rules.evaluate(e).ok()).count()));
    group.bench_function("curated_parquet", |b| {
        b.iter(|| {
            runtime.block_on(async {
                for (day, rows) in &by_day {
                    let batch = curated_to_batch(&curated_schema, rows.iter().map(|(key, row)| (key, row))).unwrap();
                    write_partition(&curated, *day, [batch], 128 << 20, "floor").await.unwrap();
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);
