//! The native fetch path against the real broker, with librdkafka as the oracle: both clients read
//! the same records (partition, offset, timestamp, payload) from a topic written by producers of
//! every codec librdkafka is built with, from the beginning and from offsets inside partitions.
//! (An offset past a partition's end is not covered: Tansu answers it with no records rather than
//! Kafka's OFFSET_OUT_OF_RANGE, so neither client resets there.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use operators::source::kafka::KafkaSettings;
use operators::source::kafka::fetch::BatchConsumer;
use operators::source::kafka::native::{FetchClient, FetchSettings, NativeFetcher};
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use ratings_tests::kafka::{brokers, create_topic};

/// (partition, offset) → (timestamp, payload).
type Read = BTreeMap<(i32, i64), (Option<i64>, Vec<u8>)>;

const PARTITIONS: i32 = 3;

fn settings(topic: &str, fetch: FetchClient, properties: &[(&str, &str)]) -> KafkaSettings {
    KafkaSettings {
        brokers: brokers(),
        topic: topic.to_string(),
        group_id: "fetch-test".into(),
        fetch,
        properties: properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// Writes `count` records per codec, spread over the partitions, with random payloads (some
/// empty, some large enough to cross batch boundaries) and explicit timestamps.
fn produce(topic: &str, count: usize) -> usize {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut total = 0;
    for codec in ["none", "gzip", "snappy", "lz4"] {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("compression.codec", codec)
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        for i in 0..count {
            let size = if rng.random_bool(0.02) { 0 } else { rng.random_range(1..400) };
            let payload: Vec<u8> = (0..size).map(|_| rng.random::<u8>()).collect();
            let partition = rng.random_range(0..PARTITIONS);
            let record = BaseRecord::<(), _>::to(topic).partition(partition).timestamp(1_750_000_000_000 + i as i64).payload(&payload);
            producer.send(record).map_err(|(error, _)| error).expect("send");
            producer.poll(Duration::ZERO);
            total += 1;
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
    }
    total
}

/// Reads until `expected` records came (or 30 s passed), with either client.
fn read(topic: &str, fetch: FetchClient, starts: &[(i32, Option<i64>)], expected: usize) -> Read {
    let mut read = Read::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut note = |partition: i32, offset: i64, timestamp: Option<i64>, payload: &[u8]| {
        assert!(read.insert((partition, offset), (timestamp, payload.to_vec())).is_none(), "{fetch:?} handed partition {partition} offset {offset} twice");
    };
    match fetch {
        FetchClient::Native => {
            let native = FetchSettings::of(&settings(topic, FetchClient::Native, &[])).unwrap().expect("plaintext is native");
            let mut fetcher = NativeFetcher::start(native, starts).unwrap();
            let mut handed = 0;
            while handed < expected && Instant::now() < deadline {
                handed += fetcher.read(Duration::from_millis(100), 1000, |r| note(r.partition, r.offset, r.timestamp_ms, r.payload)).unwrap();
            }
        }
        _ => {
            let consumer = settings(topic, FetchClient::Librdkafka, &[]).consumer().unwrap();
            let mut reader = BatchConsumer::assign(consumer, topic, starts).unwrap();
            let mut handed = 0;
            while handed < expected && Instant::now() < deadline {
                handed += reader.read(Duration::from_millis(100), 1000, |r| note(r.partition, r.offset, r.timestamp_ms, r.payload));
            }
        }
    }
    read
}

#[test]
fn the_native_fetch_reads_exactly_what_librdkafka_reads() {
    let topic = create_topic("fetch", PARTITIONS);
    let total = produce(&topic, 1500);
    let from_start: Vec<(i32, Option<i64>)> = (0..PARTITIONS).map(|p| (p, None)).collect();
    let oracle = read(&topic, FetchClient::Librdkafka, &from_start, total);
    assert_eq!(oracle.len(), total, "librdkafka read every record");
    let native = read(&topic, FetchClient::Native, &from_start, total);
    assert_eq!(native.len(), oracle.len());
    assert!(native == oracle, "the native fetch differs from librdkafka");
    assert!(native.values().any(|(_, payload)| payload.is_empty()), "empty payloads are covered");

    // From offsets inside the partitions: mid-batch for the compressed ones, whose first records
    // the native path must skip itself.
    let ends: BTreeMap<i32, i64> = oracle.keys().fold(BTreeMap::new(), |mut ends, (p, o)| {
        ends.insert(*p, (*o + 1).max(ends.get(p).copied().unwrap_or(0)));
        ends
    });
    let starts: Vec<(i32, Option<i64>)> =
        vec![(0, Some(ends[&0] / 3)), (1, Some(ends[&1] * 2 / 3 + 1)), (2, Some(ends[&2] - 7))];
    let start_of = |partition: i32| starts.iter().find(|(p, _)| *p == partition).and_then(|(_, o)| *o).expect("a start per partition");
    let expected = oracle.keys().filter(|(p, o)| *o >= start_of(*p)).count();
    let oracle = read(&topic, FetchClient::Librdkafka, &starts, expected);
    assert_eq!(oracle.len(), expected);
    let native = read(&topic, FetchClient::Native, &starts, expected);
    assert!(native == oracle, "from given offsets the native fetch differs from librdkafka");
}

#[test]
fn an_unreachable_broker_is_retried_and_settings_the_native_path_cannot_honour_are_refused() {
    // Nothing listens on port 9 (discard): the fetch thread retries, the reader sees no records.
    let unreachable = KafkaSettings { brokers: "127.0.0.1:9".into(), ..settings("nowhere", FetchClient::Native, &[]) };
    let mut fetcher = NativeFetcher::start(FetchSettings::of(&unreachable).unwrap().unwrap(), &[(0, None)]).unwrap();
    assert_eq!(fetcher.read(Duration::from_millis(500), 10, |_| panic!("no record can come")).unwrap(), 0);
    // A security protocol the native path does not speak: `auto` hands over to librdkafka,
    // `native` refuses with a message saying what to change.
    let secure = settings("t", FetchClient::Auto, &[("security.protocol", "SASL_SSL")]);
    assert!(FetchSettings::of(&secure).unwrap().is_none());
    let forced = settings("t", FetchClient::Native, &[("security.protocol", "SSL")]);
    let error = FetchSettings::of(&forced).unwrap_err().to_string();
    assert!(error.contains("plaintext only"), "{error}");
    let bad = settings("t", FetchClient::Native, &[("fetch.max.bytes", "lots")]);
    assert!(FetchSettings::of(&bad).unwrap_err().to_string().contains("fetch.max.bytes"));
}
