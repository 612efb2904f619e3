//! `runtime produce`: the test-event producer. It sends the events of [`Generator`] (the same
//! seeded mix as `runtime generate`: duplicates, updates, ties, late, invalid) as Confluent-framed
//! Avro, and replaces a fraction of them with bytes no consumer can read, in turn:
//! a wrong magic byte, a schema id the registry does not know, and an Avro body cut short.
//!
//! - The writer schema is registered under `{topic}-value` on first use (registering an
//!   already registered schema returns its id).
//! - The key is the `event_id`; the partition is the generator's (a stable hash of the
//!   `event_id`), so all records of one event land in one partition, in order
//!   (`max.in.flight.requests.per.connection = 1`).
//! - The Kafka timestamp (create time) is the generator's ingestion time, so a run's lateness
//!   decisions do not depend on when it was produced (`stamp_now` uses the send time instead, to
//!   measure freshness).
//! - `rate` paces sending (events per second); without it the producer sends as fast as the
//!   broker takes them.

use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value;
use rdkafka::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Context, Error, Result};
use crate::generate::{GenerateSettings, Generator};
use crate::sample::RawEvent;
use crate::source::kafka::KafkaSettings;
use crate::source::kafka::confluent::frame;
use crate::source::kafka::registry::RegistryClient;

/// A schema id no registry hands out in tests or demos: the "unknown schema id" records use it.
pub const UNKNOWN_SCHEMA_ID: u32 = 0x7fff_fff0;

#[derive(Clone)]
pub struct ProduceSettings {
    pub kafka: KafkaSettings,
    pub registry_url: String,
    pub writer_schema: Schema,
    pub generate: GenerateSettings,
    /// Fraction of records replaced by unreadable bytes.
    pub malformed: f64,
    pub rate: Option<f64>,
    /// Stamp records with the time they are sent instead of the generator's ingestion time
    /// (for measuring freshness).
    pub stamp_now: bool,
    /// Frame with this registered schema id instead of registering the writer schema (works
    /// while the registry is down).
    pub schema_id: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct ProduceSummary {
    pub sent: u64,
    pub malformed: u64,
    pub schema_id: u32,
    pub partitions: usize,
    pub elapsed: Duration,
}

/// The Avro body of an event, written with `schema` (fields the event does not have take the
/// schema's defaults).
pub fn encode_event(schema: &Schema, event: &RawEvent) -> Result<Vec<u8>> {
    let record = Value::Record(vec![
        ("event_id".into(), Value::String(event.event_id.clone().unwrap_or_default())),
        ("user_id".into(), Value::String(event.user_id.clone().unwrap_or_default())),
        ("movie_id".into(), Value::String(event.movie_id.clone().unwrap_or_default())),
        ("rating".into(), Value::Float(event.rating.unwrap_or_default())),
        ("rating_timestamp".into(), Value::Long(event.rating_timestamp.unwrap_or_default())),
    ]);
    let value = record
        .resolve(schema)
        .map_err(|e| Error::User(format!("the writer schema cannot hold a rating event: {e}")))?;
    apache_avro::to_avro_datum(schema, value).map_err(|e| Error::Internal(format!("encoding an event as Avro: {e}")))
}

/// Counts records the broker did not take, so none is lost silently.
#[derive(Default)]
struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((error, _)) = result
            && self.failed.fetch_add(1, Ordering::Relaxed) == 0
        {
            tracing::error!(%error, "the broker did not take a record");
        }
    }
}

pub fn produce(settings: ProduceSettings, mut progress: impl FnMut(u64)) -> Result<ProduceSummary> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context(|| "starting the I/O runtime".into())?;
    let schema_id = match settings.schema_id {
        Some(id) => id,
        None => {
            let registry = RegistryClient::new(&settings.registry_url, Duration::from_secs(10))?;
            let subject = format!("{}-value", settings.kafka.topic);
            runtime.block_on(registry.register(&subject, &settings.writer_schema.canonical_form()))?
        }
    };

    let mut config = settings.kafka.producer_config();
    config
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    let producer: ThreadedProducer<DeliveryCounter> =
        config.create_with_context(DeliveryCounter::default()).context(|| format!("creating a Kafka producer for {}", settings.kafka.brokers))?;
    let metadata = producer
        .client()
        .fetch_metadata(Some(&settings.kafka.topic), Duration::from_secs(15))
        .context(|| format!("reading metadata of topic {}", settings.kafka.topic))?;
    let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0);
    if partitions == 0 {
        return Err(Error::User(format!(
            "topic {} does not exist on {} (create it first)",
            settings.kafka.topic, settings.kafka.brokers
        )));
    }

    let mut generator = Generator::new(GenerateSettings { partitions: partitions as i32, ..settings.generate.clone() });
    let mut summary = ProduceSummary { schema_id, partitions, ..Default::default() };
    let mut malformed_turn = 0u32;
    let malformed_every = if settings.malformed > 0.0 { (1.0 / settings.malformed).round().max(1.0) as u64 } else { 0 };
    while let Some((_, events)) = generator.next_day() {
        for event in events {
            let body = encode_event(&settings.writer_schema, &event)?;
            let mut value = frame(schema_id, &body);
            let position = summary.sent + 1;
            if malformed_every > 0 && position.is_multiple_of(malformed_every) {
                malformed_turn += 1;
                value = match malformed_turn % 3 {
                    0 => {
                        value[0] = 0x01;
                        value
                    }
                    1 => frame(UNKNOWN_SCHEMA_ID, &body),
                    _ => {
                        value.truncate(5 + body.len() / 2);
                        value
                    }
                };
                summary.malformed += 1;
            }
            let key = event.event_id.clone().unwrap_or_default();
            let mut record = BaseRecord::to(&settings.kafka.topic)
                .key(&key)
                .payload(&value)
                .partition(event.source_partition)
                .timestamp(if settings.stamp_now { chrono::Utc::now().timestamp_millis() } else { event.ingestion_ts_ms });
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((error, _)) => {
                        return Err(Error::Kafka { context: format!("producing to {}", settings.kafka.topic), source: error });
                    }
                }
            }
            summary.sent += 1;
            if summary.sent.is_multiple_of(10_000) {
                progress(summary.sent);
            }
            if let Some(rate) = settings.rate {
                let due = Duration::from_secs_f64(summary.sent as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).context(|| "waiting for the broker to take every record".into())?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(Error::Kafka {
            context: format!("{failed} of {} records were not delivered to {}", summary.sent, settings.kafka.topic),
            source: rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut),
        });
    }
    progress(summary.sent);
    summary.elapsed = started.elapsed();
    Ok(summary)
}
