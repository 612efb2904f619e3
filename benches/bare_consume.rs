//! The physical ceiling of `--mode stream` on this machine: a bare librdkafka consumer (the same
//! client, version and fetch settings as the engine) reading a topic from the beginning and doing
//! nothing with the records but touching their payload.
//!
//! Usage: bare-consume BROKERS TOPIC RECORDS [CONSUMERS] [native|batch|poll]
//! - `native`: the engine's native fetch path (`operators::source::kafka::native`), Kafka's Fetch
//!   API spoken directly and record batches read in place (the engine's default on plaintext);
//! - `batch` (default): the engine's librdkafka reader (`operators::source::kafka::fetch`), which
//!   takes records from librdkafka a batch at a time;
//! - `poll`: rdkafka's `BaseConsumer::poll`, a record per call (what the engine did before
//!   2026-12-01, kept to show the difference).
//! Prints: `bare consume: N records in S s (R records/s); T s from the first record (R' records/s)`
//! (from the consumers' creation, and from the first record on, as the runtime's `landed` line
//! reports both).

use std::time::{Duration, Instant};

use operators::source::kafka::KafkaSettings;
use operators::source::kafka::fetch::BatchConsumer;
use operators::source::kafka::native::{FetchClient, FetchSettings, NativeFetcher};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, records, rest @ ..] = args.as_slice() else {
        eprintln!("usage: bare-consume BROKERS TOPIC RECORDS [CONSUMERS] [native|batch|poll]");
        std::process::exit(2);
    };
    let records: u64 = records.parse().expect("RECORDS is a number");
    let consumers: usize = rest.first().map(|c| c.parse().expect("CONSUMERS is a number")).unwrap_or(2);
    let mode = rest.get(1).map(String::as_str).unwrap_or("batch");
    if !["native", "batch", "poll"].contains(&mode) {
        eprintln!("bare-consume: read mode {mode:?} is not native, batch or poll");
        std::process::exit(2);
    }
    // The engine's settings for its native fetch path, with the same fetch sizes.
    let kafka = KafkaSettings {
        brokers: brokers.clone(),
        topic: topic.clone(),
        group_id: "bare-consume".into(),
        fetch: FetchClient::Native,
        properties: [("fetch.max.bytes", "52428800"), ("max.partition.fetch.bytes", "10485760")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    let config = || {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("group.id", "bare-consume")
            .set("enable.auto.commit", "false")
            .set("fetch.max.bytes", "52428800")
            .set("max.partition.fetch.bytes", "10485760");
        config
    };
    let probe: BaseConsumer = config().create().expect("consumer");
    let metadata = probe.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let started = Instant::now();
    let total = std::sync::atomic::AtomicU64::new(0);
    let first_record = std::sync::OnceLock::new();
    std::thread::scope(|scope| {
        for index in 0..consumers {
            let (total, partitions, config, first_record, kafka) = (&total, &partitions, &config, &first_record, &kafka);
            scope.spawn(move || {
                let consumer: BaseConsumer = config().create().expect("consumer");
                // As the engine does: leaders known before the assignment, or librdkafka's first
                // offset query finds none and retries 500 ms later.
                consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
                let mine: Vec<i32> = partitions.iter().copied().filter(|p| *p as usize % consumers == index).collect();
                let mut bytes = 0u64;
                // Reads until every consumer together has `records`, through the engine's reader.
                let mut drain = |mut read: Box<dyn FnMut(&mut u64) -> usize + '_>| {
                    while total.load(std::sync::atomic::Ordering::Relaxed) < records {
                        let read = read(&mut bytes);
                        if read > 0 {
                            first_record.get_or_init(Instant::now);
                            total.fetch_add(read as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                };
                let starts: Vec<(i32, Option<i64>)> = mine.iter().map(|p| (*p, None)).collect();
                if mode == "native" {
                    let settings = FetchSettings::of(kafka).expect("settings").expect("native");
                    let mut reader = NativeFetcher::start(settings, &starts).expect("fetcher");
                    drain(Box::new(|bytes| reader.read(Duration::from_millis(100), 256, |record| *bytes += record.payload.len() as u64).expect("fetch")));
                    std::hint::black_box(bytes);
                    return;
                }
                if mode == "batch" {
                    let mut reader = BatchConsumer::assign(consumer, topic, &starts).expect("assignment");
                    drain(Box::new(|bytes| reader.read(Duration::from_millis(100), 256, |record| *bytes += record.payload.len() as u64)));
                    std::hint::black_box(bytes);
                    return;
                }
                let mut assignment = TopicPartitionList::new();
                for p in mine {
                    assignment.add_partition_offset(topic, p, Offset::Beginning).unwrap();
                }
                consumer.assign(&assignment).unwrap();
                while total.load(std::sync::atomic::Ordering::Relaxed) < records {
                    if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                        first_record.get_or_init(Instant::now);
                        bytes += message.payload().map(|p| p.len() as u64).unwrap_or(0);
                        total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                std::hint::black_box(bytes);
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let reading = first_record.get().map(|first| first.elapsed().as_secs_f64()).unwrap_or(seconds);
    let n = total.into_inner();
    println!(
        "bare consume ({mode}): {n} records in {seconds:.2} s ({:.0} records/s); {reading:.2} s from the first record ({:.0} records/s)",
        n as f64 / seconds,
        n as f64 / reading
    );
}
