//! The Kafka source of `--mode stream`.
//!
//! - **Partitions over workers**: the topic's partitions are listed from the broker's metadata and
//!   worker `i` of `n` consumes partitions `p` with `p % n == i`, each through its own consumer
//!   with a manual assignment (no group rebalancing: the assignment is a function of the topic and
//!   `-w`, and a rebalance could not move a partition's uncommitted epoch to another worker).
//! - **Positions live in the tables**: every commit stores the next offset of every partition it
//!   reflects in its snapshot summary (`ratings-flow.offsets`, JSON `{topic: {partition: next}}`).
//!   On start each table's position is read from its own latest snapshot that has one; consumption
//!   starts at the smallest of them per partition (the beginning for a partition no table has seen),
//!   and every table skips what it already holds. The consumer group's committed offsets are
//!   written after each epoch for lag monitoring only; they are never read.
//! - **Ingestion time** is the record's Kafka timestamp (create or log-append time, as the topic
//!   says); the raw table stores it, so a replay decides lateness exactly as the stream did.
//!   A record without a timestamp takes the wall clock when it is read.

pub mod columns;
pub mod confluent;
pub mod fetch;
pub mod native;
pub mod read_plan;
pub mod registry;

use std::collections::BTreeMap;
use std::time::Duration;

use iceberg::table::Table;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::error::{Context, Error, Result};

/// Snapshot summary property: the next Kafka offset per partition the snapshot reflects.
pub const OFFSETS_PROPERTY: &str = "ratings-flow.offsets";

/// Partition → next offset to read.
pub type Offsets = BTreeMap<i32, i64>;

/// Snapshot summary property of curated stream snapshots: per Kafka partition, the newest
/// ingestion date read from it so far (`{topic: {partition: "YYYY-MM-DD"}}`). The settled day
/// (the earliest of them) decides which rows can no longer change; a restart reads it back, so
/// a partition that lags the others keeps its rows updatable across restarts as in one run.
pub const PARTITION_DAYS_PROPERTY: &str = "ratings-flow.partition-days";

/// Partition → newest ingestion date (day number) read from it.
pub type PartitionDays = BTreeMap<i32, i32>;

/// Notes that `partition` delivered a record ingested on `day`: the newest date is kept.
pub fn note_day(days: &mut PartitionDays, partition: i32, day: i32) {
    let newest = days.entry(partition).or_insert(day);
    *newest = (*newest).max(day);
}

/// `{topic: {partition: "YYYY-MM-DD"}}` as stored in a snapshot summary.
pub fn format_partition_days(topic: &str, days: &PartitionDays) -> String {
    let partitions: BTreeMap<String, String> = days.iter().map(|(p, d)| (p.to_string(), crate::model::format_date(*d))).collect();
    serde_json::json!({ topic: partitions }).to_string()
}

/// The partition days of `topic` the table's newest snapshot with them records (empty if none).
pub fn committed_partition_days(table: &Table, topic: &str) -> Result<PartitionDays> {
    let Some(text) = crate::commit::newest_property(table, PARTITION_DAYS_PROPERTY) else { return Ok(PartitionDays::new()) };
    let bad = |detail: String| Error::User(format!("snapshot property {PARTITION_DAYS_PROPERTY} of {}: {detail}: {text}", table.identifier()));
    let all: BTreeMap<String, BTreeMap<String, String>> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let Some(partitions) = all.get(topic) else { return Ok(PartitionDays::new()) };
    partitions
        .iter()
        .map(|(p, d)| match (p.parse::<i32>(), crate::model::parse_date(d)) {
            (Ok(p), Some(d)) => Ok((p, d)),
            _ => Err(bad(format!("partition {p:?} with date {d:?}"))),
        })
        .collect()
}

/// Where and how to consume, from the graph file.
#[derive(Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    /// Which client fetches records ([`native`]).
    pub fetch: native::FetchClient,
    /// Further librdkafka client settings (security, fetch sizes, timeouts), passed as given.
    pub properties: BTreeMap<String, String>,
}

/// Whether a librdkafka setting holds a secret (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, …): never printed, never written in a graph.
pub fn is_secret_setting(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    lower.contains("password") || lower.contains("secret")
}

/// Prints every setting, the values of [secret ones](is_secret_setting) as `<hidden>`.
impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(key, value)| (key.as_str(), if is_secret_setting(key) { "<hidden>" } else { value.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("group_id", &self.group_id)
            .field("fetch", &self.fetch)
            .field("properties", &properties)
            .finish()
    }
}

/// librdkafka settings whose defaults the engine changes; a graph's `[source.kafka]` overrides them.
pub const CONSUMER_DEFAULTS: [(&str, &str); 2] = [
    // How long the broker may hold a fetch that finds no new data (default 500 ms). A broker that
    // answers such a fetch only at this deadline delivers a steady stream in bursts; the stream
    // takes a backlog as drained after 250 ms without records, which such gaps would fake.
    ("fetch.wait.max.ms", "100"),
    // Once a partition's local queue is full, librdkafka postpones its next fetch by this much
    // (default 1000 ms). A worker busy closing an epoch fills the queue, then would wait up to a
    // second for data once it reads again: with 10 ms, stream throughput doubled (benches/README).
    ("fetch.queue.backoff.ms", "10"),
];

impl KafkaSettings {
    /// Client settings for a consumer: every configured property.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// Client settings for a producer: only the connection and security ones (fetch sizes and
    /// other consumer settings would only draw librdkafka warnings).
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        let shared = ["security.", "sasl.", "ssl.", "client.", "socket.", "broker."];
        for (key, value) in self.properties.iter().filter(|(k, _)| shared.iter().any(|p| k.starts_with(p))) {
            config.set(key, value);
        }
        config
    }

    /// A consumer that only reads what it is assigned and never commits on its own.
    pub fn consumer(&self) -> Result<BaseConsumer> {
        let mut config = self.client_config();
        for (key, value) in CONSUMER_DEFAULTS {
            if !self.properties.contains_key(key) {
                config.set(key, value);
            }
        }
        config
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        config.create().context(|| format!("creating a Kafka consumer for {}", self.brokers))
    }

    /// The topic's partitions, from the broker's metadata.
    pub fn partitions(&self, consumer: &BaseConsumer, timeout: Duration) -> Result<Vec<i32>> {
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), timeout)
            .context(|| format!("reading metadata of topic {} from {}", self.topic, self.brokers))?;
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .ok_or_else(|| Error::User(format!("broker {} does not know topic {}", self.brokers, self.topic)))?;
        if let Some(error) = topic.error() {
            return Err(Error::User(format!("topic {} on {}: {error:?}", self.topic, self.brokers)));
        }
        let mut partitions: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        partitions.sort_unstable();
        if partitions.is_empty() {
            return Err(Error::User(format!("topic {} on {} has no partitions", self.topic, self.brokers)));
        }
        Ok(partitions)
    }
}

/// `{topic: {partition: next_offset}}` as stored in a snapshot summary.
pub fn format_offsets(topic: &str, offsets: &Offsets) -> String {
    let partitions: BTreeMap<String, i64> = offsets.iter().map(|(p, o)| (p.to_string(), *o)).collect();
    serde_json::json!({ topic: partitions }).to_string()
}

/// The offsets of `topic` in a summary value written by [`format_offsets`].
pub fn parse_offsets(topic: &str, text: &str) -> Result<Offsets> {
    let all: BTreeMap<String, BTreeMap<String, i64>> = serde_json::from_str(text)
        .map_err(|e| Error::User(format!("snapshot property {OFFSETS_PROPERTY} is not offsets JSON ({e}): {text}")))?;
    let Some(partitions) = all.get(topic) else { return Ok(Offsets::new()) };
    partitions
        .iter()
        .map(|(p, o)| {
            p.parse::<i32>()
                .map(|p| (p, *o))
                .map_err(|_| Error::User(format!("snapshot property {OFFSETS_PROPERTY} names partition {p:?}")))
        })
        .collect()
}

/// The offsets the table's newest snapshot with an offsets property reflects (empty for a table
/// no stream has committed to). Snapshots without the property (a replay's) are passed over:
/// they re-derive what earlier snapshots already reflected.
pub fn committed_offsets(table: &Table, topic: &str) -> Result<Offsets> {
    match crate::commit::newest_property(table, OFFSETS_PROPERTY) {
        Some(text) => parse_offsets(topic, &text),
        None => Ok(Offsets::new()),
    }
}

/// Per table, where the stream resumes.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    pub raw: Offsets,
    pub rejected: Offsets,
    pub curated: Offsets,
    /// What curated reflects: the newest ingestion date of each partition.
    pub partition_days: PartitionDays,
}

impl Resume {
    /// The settled day curated reflects: the earliest of the partitions' newest ingestion dates.
    pub fn settled_day(&self) -> Option<i32> {
        self.partition_days.values().min().copied()
    }
}

impl Resume {
    /// Where to start reading `partition`: the position of the table that is furthest behind.
    pub fn start(&self, partition: i32) -> Option<i64> {
        [&self.raw, &self.rejected, &self.curated]
            .iter()
            .map(|offsets| offsets.get(&partition).copied())
            .min()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_resume_from_the_table_behind() {
        let offsets = Offsets::from([(0, 10), (3, 7)]);
        let text = format_offsets("movie.ratings.v1", &offsets);
        assert_eq!(text, r#"{"movie.ratings.v1":{"0":10,"3":7}}"#);
        assert_eq!(parse_offsets("movie.ratings.v1", &text).unwrap(), offsets);
        assert!(parse_offsets("other", &text).unwrap().is_empty());
        assert!(parse_offsets("t", "not json").is_err());
        let days = PartitionDays::from([(0, 20_255), (3, 20_250)]);
        assert_eq!(format_partition_days("t", &days), r#"{"t":{"0":"2025-06-16","3":"2025-06-11"}}"#);

        let resume = Resume {
            raw: Offsets::from([(0, 10), (1, 5)]),
            rejected: Offsets::from([(0, 8), (1, 5)]),
            curated: Offsets::from([(0, 9)]),
            partition_days: PartitionDays::new(),
        };
        assert_eq!(resume.start(0), Some(8));
        // Curated never saw partition 1: read it from the beginning.
        assert_eq!(resume.start(1), None);
        assert_eq!(resume.start(2), None);
    }
}
