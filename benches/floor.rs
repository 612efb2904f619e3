//! What every streamed record costs at the least, stage by stage, on one thread: the work a
//! stream epoch cannot skip whatever the engine around it looks like. Set beside `bare-consume`
//! (the Kafka part) this bounds how close `--mode stream` can get to the bare consumer on a given
//! machine; benches/README.md has the figures and the arithmetic.
//!
//! On 1M generated events (realistic mix, 5 days):
//! - `stream_floor_1m/avro_read`: the Avro bodies read into the reader schema's fields (the
//!   engine's read plan, no framing or registry);
//! - `stream_floor_1m/raw_columns`: the bodies read and appended to the raw table's Arrow columns
//!   with their coordinates (the stream's decoding, without framing or registry);
//! - `stream_floor_1m/arrow_avro_columns`: the same records, Confluent-framed, through arrow-avro's
//!   streaming `Decoder` (schema id → schema in its `SchemaStore`, batches of 16k rows): the
//!   reader columns only, no coordinates. What adopting arrow-avro would buy (benches/README.md);
//! - `stream_floor_1m/raw_parquet`: those columns written as the raw table's Parquet files
//!   (the engine's writer and properties, local disk), one set per ingestion date;
//! - `stream_floor_1m/rules`: the graph's validation and derivation of the raw batches (keys,
//!   order values, partition days; no plugins);
//! - `stream_floor_1m/curated_parquet`: the accepted rows as curated Arrow columns and Parquet
//!   files, one set per `rating_date`, sorted by key as the curated writer writes them.
//! - `stream_floor_1m/{raw,curated}_parquet_arrow_writer`: the same columns through arrow-rs's
//!   `ArrowWriter` alone (same properties, local files), without the Iceberg data-file writer.
//!
//! Each Parquet bench deletes the files of a round once it is written (benches/README.md says why).
//!
//! The raw and curated columns are also left as Arrow IPC files in `target/floor-columns/` (with
//! the properties the engine writes them with) so `benches/floor_pyarrow.py` can time pyarrow's
//! C++ writer on exactly the same columns (`make bench-floor` runs both).

use std::collections::BTreeMap;
use std::time::Duration;

use arrow_avro::reader::ReaderBuilder;
use arrow_avro::schema::{AvroSchema, Fingerprint, FingerprintAlgorithm, SchemaStore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use operators::catalog::{CatalogSettings, Lakehouse, parse_table_ident};
use operators::generate::{GenerateSettings, Generator};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, Date32Array, RecordBatch, UInt32Array};
use operators::sample::RawEvent;
use operators::records::uuid_text;
use operators::schema::arrow_schema;
use operators::source::kafka::columns::{Coordinates, RawColumns};
use operators::source::kafka::read_plan::ReadPlan;
use operators::writer::write_partition;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

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
    let catalog = CatalogSettings::sql("bench", dir.path().join("catalog.db"), operators::storage::Warehouse::Local(dir.path().join("warehouse")));
    let (raw, curated) = runtime.block_on(async {
        let lakehouse = Lakehouse::open(&catalog, true).await.unwrap();
        let raw = parse_table_ident("raw.movie_ratings_raw").unwrap();
        let curated = parse_table_ident("curated.movie_ratings").unwrap();
        let pipeline = ratings_benches::shipped_graph().pipeline;
        let raw = lakehouse.ensure_table(&raw, &pipeline.raw_layout().unwrap()).await.unwrap();
        let curated = lakehouse.ensure_table(&curated, &pipeline.curated_layout().unwrap()).await.unwrap();
        (raw, curated)
    });
    let raw_schema = arrow_schema(raw.metadata().current_schema()).unwrap();
    let curated_schema = arrow_schema(curated.metadata().current_schema()).unwrap();
    // The decodable events, their bodies and coordinates, per ingestion date.
    let mut days: BTreeMap<i32, Vec<(&RawEvent, &Vec<u8>)>> = BTreeMap::new();
    for (event, body) in events.iter().filter(|e| e.undecodable.is_none()).zip(&bodies) {
        days.entry(event.ingestion_date()).or_default().push((event, body));
    }
    let raw_columns = || {
        days.iter()
            .map(|(day, records)| {
                let mut columns = RawColumns::new(&raw_schema, records.len()).unwrap();
                for (event, body) in records {
                    let at = Coordinates {
                        topic: &event.source_topic,
                        partition: event.source_partition,
                        offset: event.source_offset,
                        ingestion_ts_ms: event.ingestion_ts_ms,
                    };
                    assert!(columns.append_planned(&plan, body, at).unwrap());
                }
                (*day, columns.finish().unwrap())
            })
            .collect::<Vec<_>>()
    };
    let graph = ratings_benches::shipped_graph();
    let rules = graph.rules.clone();
    let raw_batches = raw_columns();
    // The accepted rows as the curated table's columns, per rating_date, sorted by key (the
    // approval rule written out: is_approved = rating >= 7).
    let mut by_day: BTreeMap<i32, Vec<(u128, RecordBatch)>> = BTreeMap::new();
    for (_, batch) in &raw_batches {
        let judged = rules.judge(batch).unwrap();
        let rows = arrow::compute::take_record_batch(batch, &UInt32Array::from(judged.accepted.clone())).unwrap();
        let rating = rows.column_by_name("rating").unwrap().as_primitive::<arrow::datatypes::Float32Type>();
        let approved: BooleanArray = rating.iter().map(|r| r.map(|r| r >= 7.0)).collect();
        let columns: Vec<ArrayRef> = curated_schema
            .fields()
            .iter()
            .map(|field| match field.name().as_str() {
                "event_id" => Arc::new(uuid_text(&judged.keys).unwrap()) as ArrayRef,
                "is_approved" => Arc::new(approved.clone()) as ArrayRef,
                "rating_date" => Arc::new(Date32Array::from(judged.days.clone())) as ArrayRef,
                name => rows.column_by_name(name).unwrap().clone(),
            })
            .collect();
        let curated_rows = RecordBatch::try_new(curated_schema.clone(), columns).unwrap();
        for (index, (key, day)) in judged.keys.iter().zip(&judged.days).enumerate() {
            by_day.entry(*day).or_default().push((*key, curated_rows.slice(index, 1)));
        }
    }
    let by_day: Vec<(i32, RecordBatch)> = by_day
        .into_iter()
        .map(|(day, mut rows)| {
            rows.sort_unstable_by_key(|(key, _)| *key);
            let batches: Vec<RecordBatch> = rows.into_iter().map(|(_, row)| row).collect();
            (day, arrow::compute::concat_batches(&curated_schema, &batches).unwrap())
        })
        .collect();

    let parquet_properties = |table: &iceberg::table::Table| operators::writer::parquet_properties(table).unwrap();
    let (raw_properties, curated_properties) = (parquet_properties(&raw), parquet_properties(&curated));
    export_columns(&root, "raw", &raw_batches, &raw);
    export_columns(&root, "curated", &by_day, &curated);
    // Every writer deletes what it wrote once a round is written, so the next round's files fill
    // page-cache pages freed a moment before, whoever writes them. The engine's writer names files
    // anew each round; without this its files took fresh pages the VM's balloon had given back to
    // the host while ArrowWriter's truncated its own, and the kernel's copy into the page cache
    // was 671 of its 4,296 samples against 25 of 3,794 (benches/README.md).
    let arrow_writer = |batches: &[(i32, RecordBatch)], properties: &WriterProperties| {
        for (day, batch) in batches {
            let path = dir.path().join(format!("arrow-writer-{day}.parquet"));
            let mut writer = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), Some(properties.clone())).unwrap();
            writer.write(batch).unwrap();
            writer.close().unwrap();
            std::fs::remove_file(path).unwrap();
        }
    };
    let engine_writer = |table: &iceberg::table::Table, batches: &[(i32, RecordBatch)]| {
        runtime.block_on(async {
            for (day, batch) in batches {
                for file in write_partition(table, *day, [batch.clone()], 128 << 20, "floor").await.unwrap() {
                    table.file_io().delete(file.file_path()).await.unwrap();
                }
            }
        })
    };

    let mut group = c.benchmark_group("stream_floor_1m");
    group.sample_size(10).measurement_time(Duration::from_secs(20)).throughput(Throughput::Elements(EVENTS));
    group.bench_function("avro_read", |b| {
        b.iter(|| bodies.iter().filter_map(|body| plan.read(body)).count())
    });
    group.bench_function("raw_columns", |b| b.iter(raw_columns));
    let framed: Vec<Vec<u8>> = bodies.iter().map(|body| operators::source::kafka::confluent::frame(1, body)).collect();
    group.bench_function("arrow_avro_columns", |b| {
        b.iter(|| {
            let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
            store.set(Fingerprint::Id(1), AvroSchema::new(avsc.clone())).unwrap();
            let mut decoder = ReaderBuilder::new().with_batch_size(16_384).with_writer_schema_store(store).build_decoder().unwrap();
            let mut rows = 0;
            for payload in &framed {
                assert_eq!(decoder.decode(payload).unwrap(), payload.len());
                if decoder.batch_is_full() {
                    rows += decoder.flush().unwrap().map_or(0, |batch| batch.num_rows());
                }
            }
            rows + decoder.flush().unwrap().map_or(0, |batch| batch.num_rows())
        })
    });
    group.bench_function("raw_parquet", |b| b.iter(|| engine_writer(&raw, &raw_batches)));
    group.bench_function("raw_parquet_arrow_writer", |b| b.iter(|| arrow_writer(&raw_batches, &raw_properties)));
    group.bench_function("rules", |b| b.iter(|| raw_batches.iter().map(|(_, batch)| rules.judge(batch).unwrap().accepted.len()).sum::<usize>()));
    group.bench_function("curated_parquet", |b| b.iter(|| engine_writer(&curated, &by_day)));
    group.bench_function("curated_parquet_arrow_writer", |b| b.iter(|| arrow_writer(&by_day, &curated_properties)));
    group.finish();
}

/// Leaves `batches` as `target/floor-columns/<name>-<day>.arrow`, the columns `table` writes
/// without a dictionary as `<name>.plain` and their encoding (`delta` or `plain`) as
/// `<name>.encoding`, for `benches/floor_pyarrow.py`.
fn export_columns(root: &std::path::Path, name: &str, batches: &[(i32, RecordBatch)], table: &iceberg::table::Table) {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| root.join("target"));
    let folder = target.join("floor-columns");
    std::fs::create_dir_all(&folder).unwrap();
    for (day, batch) in batches {
        let file = std::fs::File::create(folder.join(format!("{name}-{day}.arrow"))).unwrap();
        let mut writer = arrow::ipc::writer::FileWriter::try_new(file, &batch.schema()).unwrap();
        writer.write(batch).unwrap();
        writer.finish().unwrap();
    }
    std::fs::write(folder.join(format!("{name}.plain")), operators::writer::table_plain_columns(table).join("\n")).unwrap();
    let encoding = operators::writer::table_distinct_encoding(table).unwrap();
    std::fs::write(folder.join(format!("{name}.encoding")), encoding.name()).unwrap();
}

criterion_group!(benches, floor);
criterion_main!(benches);
