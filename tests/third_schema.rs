//! A schema the engine has never seen, declared only here: a clickstream event with a 64-bit
//! integer key, a `timestamp-millis` order column, an optional enum, a nested record, an array and
//! a map. The test writes its own Avro schema and graph (key, order, a `day(...)` partition,
//! lateness, validation, two derivation stages, one check), registers the schema, produces
//! records with every edge the rules have (duplicates, ties, updates moving days, late records,
//! late updates, invalid and malformed records, a row the check quarantines, seeded random
//! traffic), streams them, replays the raw table into a fresh curated and rejected table, and
//! compares both with an oracle written here from the rules' text, sharing no code with the
//! engine.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::types::Value;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Date32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use ratings_tests::kafka::{Registry, brokers, create_topic};
use ratings_tests::{Lake, runtime_bin};

const CLICK_SCHEMA: &str = r#"{"type":"record","name":"Click","namespace":"io.example.web","fields":[
  {"name":"click_id","type":"long"},
  {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"kind","type":["null",{"type":"enum","name":"Kind","symbols":["view","click","buy"]}],"default":null},
  {"name":"page","type":{"type":"record","name":"Page","fields":[
    {"name":"url","type":"string"},
    {"name":"section","type":["null","string"],"default":null}]}},
  {"name":"tags","type":{"type":"array","items":"string"}},
  {"name":"attrs","type":{"type":"map","values":"long"}},
  {"name":"amount","type":["null","double"],"default":null}
]}"#;

const PARTITIONS: i32 = 3;
const LATENESS_DAYS: i64 = 2;
const MAX_TAGS: i32 = 4;
const DAY_MS: i64 = 86_400_000;
/// 2025-03-01T00:00:00Z.
const START_MS: i64 = 1_740_787_200_000;

fn graph(topic: &str, registry: &str, curated: &str, rejected: &str) -> String {
    format!(
        r#"[pipeline]
name = "clicks"

[catalog]
kind = "sql"
name = "ratings_flow"
database = "lake/catalog.db"
warehouse = "lake/warehouse"

[source]
topic = "{topic}"
brokers = "{brokers}"
group_id = "clicks"
reader_schema = "click.avsc"

[source.registry]
url = "{registry}"

[tables]
raw = "web.clicks_raw"
curated = "{curated}"
rejected = "{rejected}"

[upsert]
key = "click_id"
order_by = "at"
partition_by = "day(at) as click_date"
lateness = "{LATENESS_DAYS}d"

[curated]
columns = ["click_id", "at", "click_date", "kind", "page", "tags", "tag_count", "attrs", "amount"]

[[validate]]
column = "amount"
rule = "range"
min = 0.0

[[stages]]
kind = "upper"
column = "kind"

[[stages]]
kind = "list_length"
column = "tags"
into = "tag_count"

[commit]
interval = "500ms"
replay_epoch_events = 1

[[checks.curated]]
name = "few_tags"
kind = "range"
column = "tag_count"
max = {MAX_TAGS}.0
policy = "quarantine"
"#,
        brokers = brokers()
    )
}

/// A click as the test produces it.
#[derive(Debug, Clone, PartialEq)]
struct Click {
    click_id: i64,
    at_ms: i64,
    kind: Option<&'static str>,
    url: String,
    section: Option<String>,
    tags: Vec<String>,
    attrs: BTreeMap<String, i64>,
    amount: Option<f64>,
}

impl Click {
    fn new(click_id: i64, at_ms: i64) -> Click {
        Click {
            click_id,
            at_ms,
            kind: Some("view"),
            url: format!("/p/{click_id}"),
            section: None,
            tags: vec!["a".into()],
            attrs: BTreeMap::new(),
            amount: None,
        }
    }

    fn avro(&self, schema: &Schema) -> Vec<u8> {
        let union = |value: Option<Value>| match value {
            None => Value::Union(0, Box::new(Value::Null)),
            Some(value) => Value::Union(1, Box::new(value)),
        };
        let kind = self.kind.map(|k| Value::Enum(["view", "click", "buy"].iter().position(|s| *s == k).unwrap() as u32, k.into()));
        let record = Value::Record(vec![
            ("click_id".into(), Value::Long(self.click_id)),
            ("at".into(), Value::TimestampMillis(self.at_ms)),
            ("kind".into(), union(kind)),
            (
                "page".into(),
                Value::Record(vec![
                    ("url".into(), Value::String(self.url.clone())),
                    ("section".into(), union(self.section.clone().map(Value::String))),
                ]),
            ),
            ("tags".into(), Value::Array(self.tags.iter().map(|t| Value::String(t.clone())).collect())),
            ("attrs".into(), Value::Map(self.attrs.iter().map(|(k, v)| (k.clone(), Value::Long(*v))).collect())),
            ("amount".into(), union(self.amount.map(Value::Double))),
        ]);
        apache_avro::to_avro_datum(schema, record).expect("a click of the schema")
    }
}

/// What goes on the topic: a click (framed with the registered id) or bytes that are not one.
#[derive(Debug, Clone)]
enum Payload {
    Click(Click),
    /// Not Confluent framing at all.
    NotFramed,
    /// Framed with an id the registry does not know.
    UnknownId,
    /// Framed with the real id, the body cut short.
    Truncated(Click),
}

struct Sent {
    partition: i32,
    ingestion_ms: i64,
    payload: Payload,
}

/// Registers `schema` under `subject` with the registry's REST API (the test's own client).
fn register(registry: &Registry, subject: &str, schema: &str) -> u32 {
    let body = serde_json::json!({ "schema": schema }).to_string();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", registry.port)).expect("registry reachable");
    write!(
        stream,
        "POST /subjects/{subject}/versions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let json = response.split("\r\n\r\n").nth(1).expect("a response body");
    let parsed: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {response}"));
    parsed["id"].as_u64().unwrap_or_else(|| panic!("no id in {response}")) as u32
}

/// The records: crafted edge cases, then seeded random traffic, in ingestion order.
fn records() -> Vec<Sent> {
    let day = |d: i64| START_MS + d * DAY_MS;
    let hour = 3_600_000;
    let mut sent: Vec<(i64, Payload)> = Vec::new();
    let mut click = |ingestion_ms: i64, click: Click| sent.push((ingestion_ms, Payload::Click(click)));
    // 1: an update that moves the row from day 0 to day 1.
    click(day(0) + hour, Click::new(1, day(0) + 10));
    click(day(1) + hour, Click { kind: Some("buy"), amount: Some(9.5), ..Click::new(1, day(1) + 20) });
    // 2: an exact duplicate (the later copy's coordinates win).
    let twice = Click { tags: vec![], section: Some("home".into()), ..Click::new(2, day(0) + 30) };
    click(day(0) + 2 * hour, twice.clone());
    click(day(0) + 3 * hour, twice);
    // 3: a tie on `at`: the later ingested record wins.
    click(day(0) + 4 * hour, Click { url: "/first".into(), ..Click::new(3, day(0) + 40) });
    click(day(0) + 5 * hour, Click { url: "/second".into(), ..Click::new(3, day(0) + 40) });
    // 4: an older record ingested later loses, and leaves the row where it was.
    click(day(0) + 6 * hour, Click { url: "/newer".into(), ..Click::new(4, day(0) + 50) });
    click(day(1) + 2 * hour, Click { url: "/older".into(), ..Click::new(4, day(0) + 5) });
    // 5: late (three days before its ingestion date); 6: exactly the lateness, still on time.
    click(day(4) + hour, Click::new(5, day(1) + 60));
    click(day(4) + 2 * hour, Click::new(6, day(2) + 70));
    // 7: its row's day falls out of the window, so a later update is a late update.
    click(day(0) + 7 * hour, Click::new(7, day(0) + 80));
    click(day(4) + 3 * hour, Click { url: "/too-late".into(), ..Click::new(7, day(4) + 90) });
    // 8: invalid (negative amount), then a valid version; 9: no kind, no tags, a map.
    click(day(1) + 3 * hour, Click { amount: Some(-1.0), ..Click::new(8, day(1) + 100) });
    click(day(1) + 4 * hour, Click { amount: Some(0.0), ..Click::new(8, day(1) + 110) });
    let attrs = BTreeMap::from([("x".to_string(), 1), ("y".to_string(), -7)]);
    click(day(1) + 5 * hour, Click { kind: None, tags: vec![], attrs, ..Click::new(9, day(1) + 120) });
    // 10: five tags: the check quarantines its only record.
    let tags = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
    click(day(2) + hour, Click { tags, ..Click::new(10, day(2) + 130) });
    // Random traffic over days 2..5 on 300 keys (100..400): updates, moves between days, ties
    // (a key's previous `at` again), late records, late updates, invalid amounts.
    let mut rng = ChaCha8Rng::seed_from_u64(20261130);
    let mut last_at: BTreeMap<i64, i64> = BTreeMap::new();
    for n in 0..3000 {
        let ingestion_ms = day(2) + 5 * hour + n * 100_000;
        let key = rng.random_range(100..400);
        let at_ms = match last_at.get(&key) {
            Some(previous) if rng.random_bool(0.1) => *previous,
            _ => ingestion_ms - rng.random_range(0..4 * DAY_MS),
        };
        last_at.insert(key, at_ms);
        let kinds = [None, Some("view"), Some("click"), Some("buy")];
        let kind = kinds[rng.random_range(0..4)];
        let tags = (0..rng.random_range(0..4)).map(|t| format!("t{t}")).collect();
        let amount = match rng.random_range(0..10) {
            0 => Some(-rng.random_range(1.0..5.0)),
            1..=4 => None,
            _ => Some(rng.random_range(0.0..100.0)),
        };
        let section = rng.random_bool(0.5).then(|| format!("s{}", rng.random_range(0..5)));
        let attrs = (0..rng.random_range(0..3)).map(|a| (format!("k{a}"), rng.random_range(-5..5))).collect();
        click(ingestion_ms, Click { kind, section, tags, attrs, amount, url: format!("/r/{n}"), ..Click::new(key, at_ms) });
    }
    // Malformed: not framed, an unknown schema id, a truncated body.
    sent.push((day(2) + 2 * hour, Payload::NotFramed));
    sent.push((day(2) + 3 * hour, Payload::UnknownId));
    sent.push((day(2) + 4 * hour, Payload::Truncated(Click::new(11, day(2)))));
    sent.sort_by_key(|(ingestion_ms, _)| *ingestion_ms);
    sent.into_iter()
        .map(|(ingestion_ms, payload)| {
            let key = match &payload {
                Payload::Click(c) | Payload::Truncated(c) => c.click_id,
                Payload::NotFramed | Payload::UnknownId => 0,
            };
            Sent { partition: (key % PARTITIONS as i64) as i32, ingestion_ms, payload }
        })
        .collect()
}

/// Sends `sent` in order, each to its partition with its ingestion time as the Kafka timestamp.
fn produce(topic: &str, schema: &Schema, schema_id: u32, sent: &[Sent]) {
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("producer");
    let framed = |id: u32, body: Vec<u8>| {
        let mut bytes = vec![0u8];
        bytes.extend(id.to_be_bytes());
        bytes.extend(body);
        bytes
    };
    for record in sent {
        let bytes = match &record.payload {
            Payload::Click(click) => framed(schema_id, click.avro(schema)),
            Payload::NotFramed => b"{\"click_id\": 12}".to_vec(),
            Payload::UnknownId => framed(schema_id + 1000, Click::new(12, START_MS).avro(schema)),
            Payload::Truncated(click) => {
                let body = click.avro(schema);
                framed(schema_id, body[..body.len() / 2].to_vec())
            }
        };
        loop {
            let message = BaseRecord::<(), Vec<u8>>::to(topic).partition(record.partition).timestamp(record.ingestion_ms).payload(&bytes);
            match producer.send(message) {
                Ok(()) => break,
                Err((error, _)) => {
                    assert!(format!("{error}").contains("Queue full"), "send: {error}");
                    producer.poll(Duration::from_millis(50));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// The records as the broker stored them: (partition, offset) → (ingestion ms, payload), read back
/// with a consumer of the test's own and matched to what was sent by their order per partition.
fn coordinates(topic: &str, sent: &[Sent]) -> Vec<((i32, i64), i64, Payload)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("clicks-oracle-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut found: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while found.values().map(Vec::len).sum::<usize>() < sent.len() {
        assert!(std::time::Instant::now() < deadline, "the topic holds fewer records than were sent");
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("a record");
            found.entry(message.partition()).or_default().push((message.offset(), message.timestamp().to_millis().unwrap()));
        }
    }
    let mut next: BTreeMap<i32, usize> = BTreeMap::new();
    sent.iter()
        .map(|record| {
            let index = next.entry(record.partition).or_default();
            let (offset, timestamp) = found[&record.partition][*index];
            *index += 1;
            assert_eq!(timestamp, record.ingestion_ms, "the broker keeps the producer's timestamp");
            ((record.partition, offset), record.ingestion_ms, record.payload.clone())
        })
        .collect()
}

/// A curated row as the oracle states it (and as the test reads it back).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    at_micros: i64,
    click_date: i32,
    kind: Option<String>,
    url: String,
    section: Option<String>,
    tags: Vec<String>,
    tag_count: i32,
    attrs: BTreeMap<String, i64>,
    amount: Option<f64>,
    /// The winning record's (ingestion ms, partition, offset).
    lineage: (i64, i32, i64),
}

#[derive(Debug, Default, PartialEq)]
struct Expected {
    rows: BTreeMap<i64, Row>,
    /// (partition, offset, reason), sorted.
    rejected: Vec<(i32, i64, String)>,
}

/// The rules of the graph above as a sequential loop over the records in ingestion order.
fn oracle(records: &[((i32, i64), i64, Payload)]) -> Expected {
    let mut ordered: Vec<&((i32, i64), i64, Payload)> = records.iter().collect();
    ordered.sort_by_key(|(coordinates, ingestion_ms, _)| (*ingestion_ms, *coordinates));
    let mut expected = Expected::default();
    // Every key's latest record, even one the check keeps out of the table (it still wins).
    let mut latest: BTreeMap<i64, Row> = BTreeMap::new();
    for ((partition, offset), ingestion_ms, payload) in ordered {
        let mut reject = |reason: &str| expected.rejected.push((*partition, *offset, reason.to_string()));
        let click = match payload {
            Payload::Click(click) => click,
            Payload::NotFramed => {
                reject("bad_framing");
                continue;
            }
            Payload::UnknownId => {
                reject("unknown_schema_id");
                continue;
            }
            Payload::Truncated(_) => {
                reject("undecodable_body");
                continue;
            }
        };
        if click.amount.is_some_and(|amount| amount < 0.0) {
            reject("amount_out_of_range");
            continue;
        }
        let click_date = click.at_ms.div_euclid(DAY_MS) as i32;
        let ingestion_date = ingestion_ms.div_euclid(DAY_MS) as i32;
        let window_start = ingestion_date - LATENESS_DAYS as i32;
        if click_date < window_start {
            reject("late");
            continue;
        }
        let current = latest.get(&click.click_id);
        if current.is_some_and(|row| row.click_date < window_start) {
            reject("late_update");
            continue;
        }
        let lineage = (*ingestion_ms, *partition, *offset);
        if current.is_some_and(|row| (click.at_ms * 1000, lineage) < (row.at_micros, row.lineage)) {
            continue;
        }
        latest.insert(
            click.click_id,
            Row {
                at_micros: click.at_ms * 1000,
                click_date,
                kind: click.kind.map(str::to_uppercase),
                url: click.url.clone(),
                section: click.section.clone(),
                tags: click.tags.clone(),
                tag_count: click.tags.len() as i32,
                attrs: click.attrs.clone(),
                amount: click.amount,
                lineage,
            },
        );
    }
    for (key, row) in latest {
        if row.tag_count > MAX_TAGS {
            expected.rejected.push((row.lineage.1, row.lineage.2, "check_failed".into()));
        } else {
            expected.rows.insert(key, row);
        }
    }
    expected.rejected.sort();
    expected
}

fn scan(lake: &Lake, table: &str) -> Vec<RecordBatch> {
    lake.scan(table)
}

fn curated(lake: &Lake, table: &str) -> BTreeMap<i64, Row> {
    let mut rows = BTreeMap::new();
    for batch in scan(lake, table) {
        let column = |name: &str| batch.column_by_name(name).unwrap_or_else(|| panic!("curated has no {name}"));
        let click_id = column("click_id").as_primitive::<Int64Type>();
        let at = column("at").as_primitive::<TimestampMicrosecondType>();
        let click_date = column("click_date").as_primitive::<Date32Type>();
        let kind = column("kind").as_string::<i32>();
        let page = column("page").as_struct();
        let (url, section) = (page.column_by_name("url").unwrap().as_string::<i32>(), page.column_by_name("section").unwrap().as_string::<i32>());
        let tags = column("tags").as_list::<i32>();
        let tag_count = column("tag_count").as_primitive::<Int32Type>();
        let attrs = column("attrs").as_map();
        let amount = column("amount").as_primitive::<Float64Type>();
        let ingestion = column("ingestion_ts_ms").as_primitive::<Int64Type>();
        let partition = column("source_partition").as_primitive::<Int32Type>();
        let offset = column("source_offset").as_primitive::<Int64Type>();
        let text = |array: &arrow::array::StringArray, row: usize| array.is_valid(row).then(|| array.value(row).to_string());
        for row in 0..batch.num_rows() {
            let tag_values = tags.value(row);
            let tag_values = tag_values.as_string::<i32>();
            let entries = attrs.value(row);
            let (keys, values) = (entries.column(0).as_string::<i32>(), entries.column(1).as_primitive::<Int64Type>());
            let found = Row {
                at_micros: at.value(row),
                click_date: click_date.value(row),
                kind: text(kind, row),
                url: url.value(row).to_string(),
                section: text(section, row),
                tags: (0..tag_values.len()).map(|t| tag_values.value(t).to_string()).collect(),
                tag_count: tag_count.value(row),
                attrs: (0..keys.len()).map(|e| (keys.value(e).to_string(), values.value(e))).collect(),
                amount: amount.is_valid(row).then(|| amount.value(row)),
                lineage: (ingestion.value(row), partition.value(row), offset.value(row)),
            };
            assert!(rows.insert(click_id.value(row), found).is_none(), "click {} appears twice in {table}", click_id.value(row));
        }
    }
    rows
}

fn assert_equals_oracle(lake: &Lake, curated_table: &str, rejected_table: &str, expected: &Expected) {
    let rows = curated(lake, curated_table);
    let missing: Vec<_> = expected.rows.keys().filter(|k| !rows.contains_key(k)).collect();
    let extra: Vec<_> = rows.keys().filter(|k| !expected.rows.contains_key(k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{curated_table}: missing {missing:?}, extra {extra:?}");
    for (key, row) in &expected.rows {
        assert_eq!(&rows[key], row, "{curated_table}: click {key}");
    }
    assert_eq!(lake.rejected_of(rejected_table), expected.rejected, "{rejected_table}");
}

#[test]
fn a_clickstream_schema_streams_and_replays_to_what_the_oracle_computes() {
    let registry_dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(registry_dir.path());
    let topic = create_topic("clicks", PARTITIONS);
    let lake = Lake::new();
    let folder = lake.dir.path();
    std::fs::write(folder.join("click.avsc"), CLICK_SCHEMA).unwrap();
    let stream_graph = folder.join("clicks.toml");
    std::fs::write(&stream_graph, graph(&topic, &registry.url(), "web.clicks", "web.clicks_rejected")).unwrap();
    let replay_graph = folder.join("clicks_replay.toml");
    std::fs::write(&replay_graph, graph(&topic, &registry.url(), "web.clicks_replayed", "web.clicks_replayed_rejected")).unwrap();
    let run = |graph: &Path, args: &[&str]| {
        let output = Lake::command_for(graph, args).output().expect("runtime runs");
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned());
        assert!(output.status.success(), "runtime {args:?}:\n{stdout}\n{stderr}");
        stdout
    };
    assert!(runtime_bin().is_file());
    run(&stream_graph, &["init"]);

    let schema = Schema::parse_str(CLICK_SCHEMA).unwrap();
    let schema_id = register(&registry, &format!("{topic}-value"), CLICK_SCHEMA);
    let sent = records();
    produce(&topic, &schema, schema_id, &sent);
    let stored = coordinates(&topic, &sent);
    let expected = oracle(&stored);

    // The data reaches every edge of the rules.
    let reasons: BTreeSet<&str> = expected.rejected.iter().map(|r| r.2.as_str()).collect();
    for reason in ["bad_framing", "unknown_schema_id", "undecodable_body", "amount_out_of_range", "late", "late_update", "check_failed"] {
        assert!(reasons.contains(reason), "no {reason} in {reasons:?}");
    }
    let days: BTreeSet<i32> = expected.rows.values().map(|r| r.click_date).collect();
    assert!(days.len() >= 5 && expected.rows.len() > 250, "{} rows over {days:?}", expected.rows.len());
    assert_eq!(expected.rows[&1].click_date, expected.rows[&4].click_date + 1, "click 1 moved to the next day");
    assert_eq!(expected.rows[&3].url, "/second");
    assert_eq!(expected.rows[&4].url, "/newer");
    assert!(expected.rows.contains_key(&6) && !expected.rows.contains_key(&5) && !expected.rows.contains_key(&10));

    let streamed = run(&stream_graph, &["--mode", "stream", "--no-progress", "--stop-when-idle", "3s", "-w", "2"]);
    assert!(streamed.contains(&format!("{} records", sent.len())), "{streamed}");
    assert_equals_oracle(&lake, "web.clicks", "web.clicks_rejected", &expected);
    let raw: usize = scan(&lake, "web.clicks_raw").iter().map(RecordBatch::num_rows).sum();
    assert_eq!(raw, sent.len(), "raw holds every record once");

    // Replay of the raw table, one epoch per ingestion day, into fresh tables: the same rows.
    run(&replay_graph, &["init"]);
    let replayed = run(&replay_graph, &["--mode", "replay", "--from", "2025-03-01", "--no-progress", "-w", "2"]);
    assert!(replayed.contains(&format!("{} events", sent.len())), "{replayed}");
    assert_equals_oracle(&lake, "web.clicks_replayed", "web.clicks_replayed_rejected", &expected);
    assert_eq!(
        lake.rejected_rows_of("web.clicks_replayed_rejected"),
        lake.rejected_rows_of("web.clicks_rejected"),
        "replay rejects what the stream rejected, with the same reasons, details and bytes"
    );
}
