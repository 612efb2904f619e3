//! `runtime produce`: a test and demo producer. It sends either the events of [`Generator`] (the
//! ratings graph's seeded mix, as `runtime generate` writes them: duplicates, updates, ties, late,
//! invalid) or the rows of Parquet files (any graph: an export such as the movies sample), as
//! Confluent-framed Avro, and replaces a fraction of them with bytes no consumer can read, in
//! turn: a wrong magic byte, a schema id the registry does not know, and an Avro body cut short.
//!
//! - The writer schema is registered under `{topic}-value` on first use (registering an
//!   already registered schema returns its id).
//! - Generated events: the key is the `event_id`, the partition the generator's (a stable hash of
//!   the `event_id`). File rows: the key is the text of the graph's key columns, the partition a
//!   stable hash of it (xxh3) over the topic's partitions. Either way all records of one key land
//!   in one partition, in order (`max.in.flight.requests.per.connection = 1`).
//! - The Kafka timestamp (create time) is the generator's ingestion time, or a file row's
//!   `ingestion_ts_ms` or midnight UTC of its `ingestion_date` (as `runtime import` reads them), so
//!   a run's lateness decisions do not depend on when it was produced (`stamp_now` uses the send
//!   time instead, to measure freshness).
//! - A file row is encoded field by field of the writer schema, by column name (nested records,
//!   arrays, maps, enums, `["null", T]` unions, dates and timestamps included); a null where the
//!   schema has no null, or a column the file lacks, is an error naming the row and the field.
//! - `rate` paces sending (events per second); without it the producer sends as fast as the
//!   broker takes them.

use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value;
use rdkafka::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::DataType;

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
    pub records: Records,
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

/// What to send.
#[derive(Clone)]
pub enum Records {
    /// The generator's seeded events (the ratings graph's schema).
    Generated(GenerateSettings),
    /// The rows of Parquet files or folders of them (files in name order, rows in file order),
    /// keyed by the text of `key` (the graph's key columns).
    Files { paths: Vec<std::path::PathBuf>, key: Vec<String> },
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

/// Sends records one by one: malformed ones in turn, pacing, progress.
struct Sender<'a, P: FnMut(u64)> {
    producer: &'a ThreadedProducer<DeliveryCounter>,
    summary: ProduceSummary,
    malformed_every: u64,
    malformed_turn: u32,
    settings: &'a ProduceSettings,
    started: Instant,
    progress: &'a mut P,
}

impl<P: FnMut(u64)> Sender<'_, P> {
    fn send(&mut self, key: &str, partition: i32, ingestion_ts_ms: i64, body: &[u8]) -> Result<()> {
        let schema_id = self.summary.schema_id;
        let mut value = frame(schema_id, body);
        let position = self.summary.sent + 1;
        if self.malformed_every > 0 && position.is_multiple_of(self.malformed_every) {
            self.malformed_turn += 1;
            value = match self.malformed_turn % 3 {
                0 => {
                    value[0] = 0x01;
                    value
                }
                1 => frame(UNKNOWN_SCHEMA_ID, body),
                _ => {
                    value.truncate(5 + body.len() / 2);
                    value
                }
            };
            self.summary.malformed += 1;
        }
        let timestamp = if self.settings.stamp_now { chrono::Utc::now().timestamp_millis() } else { ingestion_ts_ms };
        let topic = &self.settings.kafka.topic;
        let mut record = BaseRecord::to(topic).key(key).payload(&value).partition(partition).timestamp(timestamp);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => return Err(Error::Kafka { context: format!("producing to {topic}"), source: error }),
            }
        }
        self.summary.sent += 1;
        if self.summary.sent.is_multiple_of(10_000) {
            (self.progress)(self.summary.sent);
        }
        if let Some(rate) = self.settings.rate {
            let due = Duration::from_secs_f64(self.summary.sent as f64 / rate);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }
}

/// The text of each row's key: the key columns' values as text, joined by `|` when several.
fn key_texts(batch: &RecordBatch, key: &[String]) -> Result<Vec<String>> {
    let mut texts = vec![String::new(); batch.num_rows()];
    for (index, name) in key.iter().enumerate() {
        let column = batch.column_by_name(name).ok_or_else(|| Error::User(format!("no key column {name}")))?;
        let column = arrow::compute::cast(column, &DataType::Utf8).context(|| format!("key column {name} as text"))?;
        for (text, value) in texts.iter_mut().zip(column.as_string::<i32>().iter()) {
            if index > 0 {
                text.push('|');
            }
            text.push_str(value.unwrap_or(""));
        }
    }
    Ok(texts)
}

/// The Avro body of every row of `batch`, written with `schema` (a record; fields by column name).
pub fn encode_rows(schema: &Schema, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    let Schema::Record(record) = schema else {
        return Err(Error::User("the writer schema is not a record".into()));
    };
    let mut fields: Vec<Vec<Value>> = Vec::with_capacity(record.fields.len());
    for field in &record.fields {
        let column = batch
            .column_by_name(&field.name)
            .ok_or_else(|| Error::User(format!("no column {} for the writer schema's field of that name", field.name)))?;
        fields.push(avro_values(column, &field.schema, &field.name)?);
    }
    let mut bodies = Vec::with_capacity(batch.num_rows());
    let mut fields: Vec<std::vec::IntoIter<Value>> = fields.into_iter().map(Vec::into_iter).collect();
    for row in 0..batch.num_rows() {
        let values = record.fields.iter().zip(fields.iter_mut()).map(|(f, values)| (f.name.clone(), values.next().unwrap_or(Value::Null))).collect();
        let body = apache_avro::to_avro_datum(schema, Value::Record(values)).map_err(|e| Error::User(format!("row {row}: {e}")))?;
        bodies.push(body);
    }
    Ok(bodies)
}

/// The values of `array` as Avro values of `schema`; `path` names the field in errors. A null is
/// written as the null branch of a `["null", T]` union, and refused where the schema has none.
fn avro_values(array: &ArrayRef, schema: &Schema, path: &str) -> Result<Vec<Value>> {
    let null_at = |row: usize| Error::User(format!("row {row}: {path} is null, and the writer schema has no null for it"));
    if let Schema::Union(union) = schema {
        let null_branch = union.variants().iter().position(|v| matches!(v, Schema::Null));
        let (branch, inner) = union
            .variants()
            .iter()
            .enumerate()
            .find(|(_, v)| !matches!(v, Schema::Null))
            .ok_or_else(|| Error::User(format!("{path}: a union of null alone")))?;
        return present_values(array, inner, path)?
            .into_iter()
            .enumerate()
            .map(|(row, value)| match (array.is_null(row), null_branch) {
                (true, Some(null)) => Ok(Value::Union(null as u32, Box::new(Value::Null))),
                (true, None) => Err(null_at(row)),
                (false, _) => Ok(Value::Union(branch as u32, Box::new(value))),
            })
            .collect();
    }
    match (0..array.len()).find(|&row| array.is_null(row)) {
        Some(row) => Err(null_at(row)),
        None => present_values(array, schema, path),
    }
}

/// The values of `array` as `schema` (not a union), `Value::Null` standing in for null rows.
fn present_values(array: &ArrayRef, schema: &Schema, path: &str) -> Result<Vec<Value>> {
    use arrow::datatypes::{Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, TimeUnit};
    let mismatch = || Error::User(format!("{path}: a {} column cannot be written as Avro {}", array.data_type(), schema_kind(schema)));
    let cast = |to: DataType| arrow::compute::cast(array, &to).map_err(|_| mismatch());
    let each = |column: ArrayRef, value: &dyn Fn(&ArrayRef, usize) -> Value| -> Vec<Value> {
        (0..column.len()).map(|row| if column.is_null(row) { Value::Null } else { value(&column, row) }).collect()
    };
    let integers = |unit: TimeUnit| -> Result<ArrayRef> {
        match array.data_type() {
            DataType::Timestamp(..) => cast(DataType::Timestamp(unit, None)).and_then(|c| arrow::compute::cast(&c, &DataType::Int64).map_err(|_| mismatch())),
            _ => cast(DataType::Int64),
        }
    };
    Ok(match schema {
        Schema::Boolean => each(cast(DataType::Boolean)?, &|c, row| Value::Boolean(c.as_boolean().value(row))),
        Schema::Int => each(cast(DataType::Int32)?, &|c, row| Value::Int(c.as_primitive::<Int32Type>().value(row))),
        Schema::Long => each(cast(DataType::Int64)?, &|c, row| Value::Long(c.as_primitive::<Int64Type>().value(row))),
        Schema::Float => each(cast(DataType::Float32)?, &|c, row| Value::Float(c.as_primitive::<Float32Type>().value(row))),
        Schema::Double => each(cast(DataType::Float64)?, &|c, row| Value::Double(c.as_primitive::<Float64Type>().value(row))),
        Schema::String | Schema::Uuid => each(cast(DataType::Utf8)?, &|c, row| Value::String(c.as_string::<i32>().value(row).to_string())),
        Schema::Bytes => each(cast(DataType::Binary)?, &|c, row| Value::Bytes(c.as_binary::<i32>().value(row).to_vec())),
        Schema::Date => each(cast(DataType::Date32)?, &|c, row| Value::Date(c.as_primitive::<Date32Type>().value(row))),
        Schema::TimestampMillis => each(integers(TimeUnit::Millisecond)?, &|c, row| Value::TimestampMillis(c.as_primitive::<Int64Type>().value(row))),
        Schema::TimestampMicros => each(integers(TimeUnit::Microsecond)?, &|c, row| Value::TimestampMicros(c.as_primitive::<Int64Type>().value(row))),
        Schema::Enum(enumeration) => {
            let texts = cast(DataType::Utf8)?;
            let texts = texts.as_string::<i32>();
            (0..texts.len())
                .map(|row| {
                    if texts.is_null(row) {
                        return Ok(Value::Null);
                    }
                    let symbol = texts.value(row);
                    let index = enumeration.symbols.iter().position(|s| s == symbol).ok_or_else(|| {
                        Error::User(format!("row {row}: {path} is {symbol:?}, not a symbol of enum {}", enumeration.name.fullname(None)))
                    })?;
                    Ok(Value::Enum(index as u32, symbol.to_string()))
                })
                .collect::<Result<_>>()?
        }
        Schema::Array(items) => {
            let list = array.as_list_opt::<i32>().ok_or_else(mismatch)?;
            let mut values = avro_values(list.values(), &items.items, &format!("{path}[]"))?.into_iter();
            let offsets = list.value_offsets();
            (0..list.len())
                .map(|row| {
                    let items: Vec<Value> = values.by_ref().take((offsets[row + 1] - offsets[row]) as usize).collect();
                    if list.is_null(row) { Value::Null } else { Value::Array(items) }
                })
                .collect()
        }
        Schema::Map(map) => {
            let entries = array.as_map_opt().ok_or_else(mismatch)?;
            let keys = arrow::compute::cast(entries.keys(), &DataType::Utf8).map_err(|_| mismatch())?;
            let keys = keys.as_string::<i32>();
            let mut values = avro_values(entries.values(), &map.types, &format!("{path}{{}}"))?.into_iter();
            let offsets = entries.value_offsets();
            (0..entries.len())
                .map(|row| {
                    let range = offsets[row] as usize..offsets[row + 1] as usize;
                    let pairs: std::collections::HashMap<String, Value> =
                        range.map(|entry| (keys.value(entry).to_string(), values.next().unwrap_or(Value::Null))).collect();
                    if entries.is_null(row) { Value::Null } else { Value::Map(pairs) }
                })
                .collect()
        }
        Schema::Record(record) => {
            let fields = array.as_struct_opt().ok_or_else(mismatch)?;
            let mut columns = Vec::with_capacity(record.fields.len());
            for field in &record.fields {
                let child = fields.column_by_name(&field.name).ok_or_else(|| Error::User(format!("{path}: no field {} in the column", field.name)))?;
                columns.push(avro_values(child, &field.schema, &format!("{path}.{}", field.name))?.into_iter());
            }
            (0..fields.len())
                .map(|row| {
                    let values = record.fields.iter().zip(columns.iter_mut()).map(|(f, c)| (f.name.clone(), c.next().unwrap_or(Value::Null))).collect();
                    if fields.is_null(row) { Value::Null } else { Value::Record(values) }
                })
                .collect()
        }
        _ => return Err(mismatch()),
    })
}

fn schema_kind(schema: &Schema) -> String {
    format!("{:?}", apache_avro::schema::SchemaKind::from(schema)).to_lowercase()
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

    let mut sender = Sender {
        producer: &producer,
        summary: ProduceSummary { schema_id, partitions, ..Default::default() },
        malformed_every: if settings.malformed > 0.0 { (1.0 / settings.malformed).round().max(1.0) as u64 } else { 0 },
        malformed_turn: 0,
        settings: &settings,
        started,
        progress: &mut progress,
    };
    match &settings.records {
        Records::Generated(generate) => {
            let mut generator = Generator::new(GenerateSettings { partitions: partitions as i32, ..generate.clone() });
            while let Some((_, events)) = generator.next_day() {
                for event in events {
                    let body = encode_event(&settings.writer_schema, &event)?;
                    let key = event.event_id.clone().unwrap_or_default();
                    sender.send(&key, event.source_partition, event.ingestion_ts_ms, &body)?;
                }
            }
        }
        Records::Files { paths, key } => {
            for path in crate::source::import::parquet_files(paths)? {
                let batches = crate::source::import::reader(&path)?.build().map_err(|e| Error::User(format!("{}: {e}", path.display())))?;
                for batch in batches {
                    let batch = batch.map_err(|e| Error::User(format!("{}: reading rows: {e}", path.display())))?;
                    let at = |e: Error| Error::User(format!("{}: {e}", path.display()));
                    let bodies = encode_rows(&settings.writer_schema, &batch).map_err(at)?;
                    let keys = key_texts(&batch, key).map_err(at)?;
                    let times = crate::source::import::ingestion_times(&batch).map_err(at)?;
                    for ((body, key), time) in bodies.iter().zip(&keys).zip(times) {
                        let time = time.ok_or_else(|| Error::User(format!("{}: a row has no ingestion_date or ingestion_ts_ms", path.display())))?;
                        let partition = (twox_hash::XxHash3_64::oneshot(key.as_bytes()) % partitions as u64) as i32;
                        sender.send(key, partition, time, body)?;
                    }
                }
            }
        }
    }
    let mut summary = sender.summary;
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
