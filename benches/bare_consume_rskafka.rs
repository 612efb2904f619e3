//! The same ceiling as `bare-consume`, with another Kafka client: rskafka (pure Rust, one fetch
//! request per partition at a time, a record's value as its own `Vec`). It reads a topic from the
//! beginning and does nothing with the records but touching their payload, so the two clients'
//! CPU per record can be compared in one run (benches/stream.sh).
//!
//! Usage: bare-consume-rskafka BROKERS TOPIC RECORDS [THREADS]
//! Prints: `bare consume (rskafka): N records in S s (R records/s)`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rskafka::client::ClientBuilder;
use rskafka::client::partition::UnknownTopicHandling;

/// The engine's `max.partition.fetch.bytes`.
const PARTITION_FETCH_BYTES: i32 = 10_485_760;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, records, rest @ ..] = args.as_slice() else {
        eprintln!("usage: bare-consume-rskafka BROKERS TOPIC RECORDS [THREADS]");
        std::process::exit(2);
    };
    let records: u64 = records.parse().expect("RECORDS is a number");
    let threads: usize = rest.first().map(|c| c.parse().expect("THREADS is a number")).unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().expect("runtime");
    let started = Instant::now();
    let total = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let client = Arc::new(ClientBuilder::new(brokers.split(',').map(String::from).collect()).build().await.expect("client"));
        let partitions = client
            .list_topics()
            .await
            .expect("metadata")
            .into_iter()
            .find(|t| &t.name == topic)
            .unwrap_or_else(|| panic!("no topic {topic}"))
            .partitions;
        let readers: Vec<_> = partitions
            .into_iter()
            .map(|partition| {
                let (client, topic, total) = (client.clone(), topic.clone(), total.clone());
                tokio::spawn(async move {
                    let reader = client.partition_client(topic, partition, UnknownTopicHandling::Retry).await.expect("partition client");
                    let (mut offset, mut bytes) = (0i64, 0u64);
                    while total.load(Ordering::Relaxed) < records {
                        let (fetched, high_watermark) = reader.fetch_records(offset, 1..PARTITION_FETCH_BYTES, 100).await.expect("fetch");
                        for record in &fetched {
                            bytes += record.record.value.as_ref().map_or(0, |value| value.len() as u64);
                            offset = record.offset + 1;
                        }
                        total.fetch_add(fetched.len() as u64, Ordering::Relaxed);
                        if fetched.is_empty() && offset >= high_watermark {
                            // This partition is read; the others may not be yet.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    std::hint::black_box(bytes);
                })
            })
            .collect();
        for reader in readers {
            reader.await.expect("reader");
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let n = total.load(Ordering::Relaxed);
    println!("bare consume (rskafka): {n} records in {seconds:.2} s ({:.0} records/s)", n as f64 / seconds);
}
