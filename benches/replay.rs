//! The replay path on 1M generated events (10 days, realistic mix):
//! - `replay_1m/end_to_end`: read raw Parquet → rules → upsert → write curated Parquet → commit,
//!   into fresh curated/rejected tables each iteration (2 workers);
//! - `replay_1m/rules_and_upsert`: the same records, as raw batches in memory, through the
//!   graph's rules (no plugins) and the upsert arrangement only, to separate dataflow cost from I/O.

use std::sync::Arc;

use arrow::array::RecordBatch;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use timely::dataflow::operators::Probe;
use iceberg::Catalog;
use operators::catalog::{CatalogSettings, Lakehouse, parse_table_ident};
use operators::generate::{GenerateSettings, Generator};
use operators::replay::{ProgressSink, ReplaySettings, replay};
use timely::dataflow::operators::probe::Handle as ProbeHandle;

const EVENTS: u64 = 1_000_000;
const START_DAY: i32 = 20_209; // 2025-05-01

struct Quiet;
impl ProgressSink for Quiet {
    fn start(&self, _: u64, _: usize) {}
    fn advance(&self, _: u64) {}
    fn epoch_committed(&self, _: i32) {}
}

fn settings() -> GenerateSettings {
    GenerateSettings { events: EVENTS, ..GenerateSettings::realistic(START_DAY) }
}

fn end_to_end(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = CatalogSettings::sql("bench", dir.path().join("catalog.db"), operators::storage::Warehouse::Local(dir.path().join("warehouse")));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (raw, curated, rejected) = (
        parse_table_ident("raw.movie_ratings_raw").unwrap(),
        parse_table_ident("curated.movie_ratings").unwrap(),
        parse_table_ident("curated.movie_ratings_rejected").unwrap(),
    );
    let lakehouse = runtime.block_on(async {
        let lakehouse = Lakehouse::open(&catalog, true).await.unwrap();
        lakehouse.ensure_table(&raw, &ratings_benches::shipped_graph().pipeline.raw_layout().unwrap()).await.unwrap();
        operators::generate::write_generated(&lakehouse, &raw, settings(), 128 << 20, |_, _| {}).await.unwrap();
        lakehouse
    });
    let reset = || {
        runtime.block_on(async {
            for (ident, layout) in [
                (&curated, ratings_benches::shipped_graph().pipeline.curated_layout().unwrap()),
                (&rejected, ratings_benches::shipped_graph().pipeline.rejected_layout().unwrap()),
            ] {
                if lakehouse.sql_catalog().unwrap().table_exists(ident).await.unwrap() {
                    lakehouse.sql_catalog().unwrap().drop_table(ident).await.unwrap();
                }
                lakehouse.ensure_table(ident, &layout).await.unwrap();
            }
        })
    };
    let replay_settings = ReplaySettings {
        catalog,
        raw: raw.clone(),
        curated: curated.clone(),
        rejected: rejected.clone(),
        topic: operators::generate::DEFAULT_TOPIC.to_string(),
        rules: ratings_benches::shipped_graph().rules.clone(),
        chain: ratings_benches::approval_chain(),
        // The engine alone; what the shipped checks add is measured by `make bench-replay`.
        checks: Default::default(),
        compact_after_files: Some(16),
        from: START_DAY,
        to: None,
        workers: 2,
        target_file_size: 128 << 20,
        commit: Default::default(),
        max_epoch_events: 4_000_000,
        cluster: operators::cluster::Cluster::single(),
        identity: operators::cluster::Identity::default(),
    };
    let mut group = c.benchmark_group("replay_1m");
    group.sample_size(10).measurement_time(Duration::from_secs(40)).throughput(Throughput::Elements(EVENTS));
    group.bench_function("end_to_end", |b| {
        b.iter_batched(
            reset,
            |()| {
                let summary = replay(replay_settings.clone(), Arc::new(Quiet)).unwrap();
                assert_eq!(summary.events_read, EVENTS);
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn rules_and_upsert(c: &mut Criterion) {
    let mut generator = Generator::new(settings());
    let rules = ratings_benches::shipped_graph().rules.clone();
    let schema = operators::schema::arrow_schema(&rules.pipeline.raw_layout().unwrap().schema).unwrap();
    // One raw batch per ingestion day, as replay reads them.
    let days: Vec<(i32, RecordBatch)> = std::iter::from_fn(|| generator.next_day())
        .map(|(day, rows)| (day, operators::sample::raw_to_batch(&schema, &rows).unwrap()))
        .collect();
    let days = Arc::new(days);
    let mut group = c.benchmark_group("replay_1m");
    group.sample_size(10).measurement_time(Duration::from_secs(30)).throughput(Throughput::Elements(EVENTS));
    group.bench_function("rules_and_upsert", |b| {
        b.iter(|| {
            let (days, rules) = (days.clone(), rules.clone());
            timely::execute(timely::Config::process(2), move |worker| {
                let probe = ProbeHandle::new();
                let mut input = timely::dataflow::InputHandle::new();
                worker.dataflow::<u64, _, _>(|scope| {
                    // Epoch e holds the events ingested on day START_DAY + e - 1, as replay's epochs do.
                    let settled_day = |epoch: u64| Some(START_DAY + epoch as i32 - 1);
                    let row_values = operators::records::fingerprinted_columns(&rules.pipeline).len();
                    operators::upsert::upsert(input.to_stream(scope), rules.lateness_days, row_values, settled_day, Default::default(), Default::default())
                        .probe_with(&probe);
                });
                let (index, peers) = (worker.index(), worker.peers());
                for (day, batch) in days.iter() {
                    input.advance_to((day - START_DAY) as u64 + 1);
                    let share = batch.slice(batch.num_rows() * index / peers, batch.num_rows() * (index + 1) / peers - batch.num_rows() * index / peers);
                    let judged = rules.judge(&share).unwrap();
                    let rows = arrow::compute::take_record_batch(&share, &arrow::array::UInt32Array::from(judged.accepted.clone())).unwrap();
                    let positions = operators::records::Positions::of(&rows).unwrap();
                    let slots = positions
                        .iter()
                        .zip(judged.orders.iter().zip(&judged.days))
                        .map(|(position, (order, day))| operators::records::Slot {
                            position,
                            origin: operators::model::Origin::Input,
                            order: *order,
                            day: *day,
                            fingerprint: 0,
                        })
                        .collect();
                    let candidates = operators::records::Candidates::new(rows.clone(), rows, judged.keys, slots);
                    // The exchange brings each key to its owner, as the engine's rules stage routes it.
                    for share in operators::dataflow::by_owner(candidates, peers).unwrap() {
                        input.send(share);
                    }
                }
                input.close();
                while worker.step() {}
            })
            .unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, rules_and_upsert, end_to_end);
criterion_main!(benches);
