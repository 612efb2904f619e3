//! The real parts stream tests talk to: the project's broker (Tansu, started by
//! `scripts/kafka.sh up`, address in `RATINGS_FLOW_TEST_BROKERS`), a schema registry process per
//! test (tests/python/registry.py, so a test can stop and restart it), and an independent reader
//! of a topic that turns its records back into the events the oracle expects.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value;
use operators::model::{RejectReason, Undecodable};
use operators::sample::RawEvent;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The broker `make test` started.
pub fn brokers() -> String {
    std::env::var("RATINGS_FLOW_TEST_BROKERS").unwrap_or_else(|_| {
        panic!("RATINGS_FLOW_TEST_BROKERS is not set: run the suite with `make test` (it starts the broker), or `make kafka-up` and export RATINGS_FLOW_TEST_BROKERS=127.0.0.1:9092")
    })
}

/// A fresh topic with a unique name.
pub fn create_topic(prefix: &str, partitions: i32) -> String {
    let name = format!("{prefix}.{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
    let results = runtime
        .block_on(admin.create_topics([&topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))))
        .expect("create topic");
    for result in results {
        result.expect("topic created");
    }
    name
}

/// A schema registry process of this test's own.
pub struct Registry {
    pub port: u16,
    state: PathBuf,
    child: Option<Child>,
}

fn python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        let mut registry = Registry { port: 0, state: dir.join("registry.json"), child: None };
        registry.restart();
        registry
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it again (same port, same registered schemas).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "registry already running");
        let mut child = Command::new(python())
            .arg(repo_root().join("tests/python/registry.py"))
            .args(["--port", &self.port.to_string(), "--state"])
            .arg(&self.state)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the registry (run scripts/python-env.sh first)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("registry prints its address");
        let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).expect("registry port");
        self.port = port;
        self.child = Some(child);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads `count` records of `topic` from the beginning (never trusting the high watermark) and
/// turns them into raw events with their real coordinates. Values are decoded here, with the
/// writer schema the test registered under each id, independently of the engine's decoder.
pub fn read_topic(topic: &str, count: usize, writers: &HashMap<u32, Schema>, reader: &Schema) -> Vec<RawEvent> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("oracle-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        assert!(Instant::now() < deadline, "read {} of {count} records of {topic}", events.len());
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.expect("consume");
        let payload = message.payload().unwrap_or_default().to_vec();
        let mut event = RawEvent {
            event_id: None,
            user_id: None,
            movie_id: None,
            rating: None,
            rating_timestamp: None,
            source_topic: topic.into(),
            source_partition: message.partition(),
            source_offset: message.offset(),
            ingestion_ts_ms: message.timestamp().to_millis().expect("record timestamp"),
            undecodable: None,
        };
        let refuse = |reason| Some(Box::new(Undecodable { reason, detail: String::new(), payload: payload.clone() }));
        if payload.len() < 5 || payload[0] != 0 {
            event.undecodable = refuse(RejectReason::BadFraming);
        } else {
            let id = u32::from_be_bytes(payload[1..5].try_into().unwrap());
            match writers.get(&id) {
                None => event.undecodable = refuse(RejectReason::UnknownSchemaId),
                Some(writer) if apache_avro::schema_compatibility::SchemaCompatibility::can_read(writer, reader).is_err() => {
                    event.undecodable = refuse(RejectReason::IncompatibleSchema)
                }
                Some(writer) => match apache_avro::from_avro_datum(writer, &mut &payload[5..], Some(reader)) {
                    Ok(Value::Record(fields)) => {
                        for (name, value) in fields {
                            match (name.as_str(), value) {
                                ("event_id", Value::String(s)) => event.event_id = Some(s),
                                ("user_id", Value::String(s)) => event.user_id = Some(s),
                                ("movie_id", Value::String(s)) => event.movie_id = Some(s),
                                ("rating", Value::Float(f)) => event.rating = Some(f),
                                ("rating_timestamp", Value::Long(n)) => event.rating_timestamp = Some(n),
                                _ => {}
                            }
                        }
                    }
                    _ => event.undecodable = refuse(RejectReason::UndecodableBody),
                },
            }
        }
        events.push(event);
    }
    events
}

pub fn schema(path: &str) -> Schema {
    Schema::parse_str(&std::fs::read_to_string(repo_root().join(path)).expect("schema file")).expect("schema")
}

/// An event to send with a chosen partition and Kafka timestamp.
pub struct Crafted<'a> {
    pub partition: i32,
    pub timestamp_ms: i64,
    pub event_id: &'a str,
    pub rating: f32,
    pub rating_timestamp: i64,
}

/// Sends `events` to `topic` in order, Avro-encoded with `schema` and framed with `schema_id`,
/// keyed by their event_id (as `runtime produce` does).
pub fn send_events(topic: &str, schema: &Schema, schema_id: u32, events: &[Crafted]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("producer");
    for event in events {
        let record = Value::Record(vec![
            ("event_id".into(), Value::String(event.event_id.into())),
            ("user_id".into(), Value::String("u1".into())),
            ("movie_id".into(), Value::String("m1".into())),
            ("rating".into(), Value::Float(event.rating)),
            ("rating_timestamp".into(), Value::Long(event.rating_timestamp)),
        ]);
        let mut payload = vec![0u8];
        payload.extend(schema_id.to_be_bytes());
        payload.extend(apache_avro::to_avro_datum(schema, record).expect("an event of the schema"));
        let message = BaseRecord::to(topic).partition(event.partition).timestamp(event.timestamp_ms).key(event.event_id).payload(&payload);
        producer.send(message).map_err(|(error, _)| error).expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}
