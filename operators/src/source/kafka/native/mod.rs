//! The native fetch path: Kafka's Fetch API spoken directly, record batches read in place.
//!
//! librdkafka allocates, queues and frees an op per record and copies nothing less; for the small
//! records of an event stream that is most of what consuming costs (benches/README: the bare
//! librdkafka batch reader used ~0.3–0.4 CPU-s per million records, reading the same fetch
//! responses in place ~0.04). Here a fetch thread per worker sends one Fetch request per partition
//! leader, keeps each response's bytes whole, and hands the worker a list of references into
//! them ([`batches`]); the worker decodes each value where it lies.
//!
//! ```text
//!  fetch thread ── Metadata (leaders) / ListOffsets (a start at the beginning) ──▶ brokers
//!     per round: Fetch to every leader of its partitions, then each response in turn
//!     └─ records (references into the responses) ──bounded channel (2)──▶ NativeFetcher::read
//! ```
//!
//! Semantics, kept from the librdkafka path ([`super::fetch`]):
//! - The assignment is fixed; each partition starts at its given offset, or at the beginning
//!   (`ListOffsets` earliest) when none is given or the offset is out of range (the engine's
//!   `auto.offset.reset = earliest`; the tables skip what they hold).
//! - `read_committed`: aborted transactions and markers are skipped ([`batches`]).
//! - Records reach the worker in offset order per partition; the channel holds at most two rounds,
//!   so a busy worker stops the fetching instead of buffering without bound.
//! - A broker that cannot be reached, stops answering (`socket.timeout.ms`), or answers a
//!   partition with a retriable error (leader moved, not yet available) is logged and retried with
//!   backoff after a fresh metadata request; the worker just sees no records meanwhile. A round
//!   (one Fetch per leader) that fails part way delivers nothing and moves no offset, so the retry
//!   reads the same records again: nothing is skipped, nothing handed twice. While one of a
//!   worker's partitions has no leader, its other partitions wait too (a leader election takes
//!   seconds). An error no retry can fix (authorization, a message format before v2, a broker too
//!   old) stops the run with a message saying what to change.
//! - Only plaintext connections: `fetch = "auto"` (the default) takes this path unless the graph
//!   sets a `security.protocol` other than `plaintext`, where librdkafka fetches (TLS, SASL).
//!
//! librdkafka settings read here, with librdkafka's meaning and defaults: `fetch.wait.max.ms`
//! (the engine's 100), `fetch.min.bytes`, `fetch.max.bytes`, `max.partition.fetch.bytes`,
//! `socket.timeout.ms`, `socket.connection.setup.timeout.ms`, `isolation.level`, `client.id`.

pub mod batches;
mod connection;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{BrokerId, FetchRequest, ListOffsetsRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use self::batches::{Records, read_partition};
use self::connection::Connection;
use super::KafkaSettings;
use super::fetch::Fetched;
use crate::error::{Error, Result};

/// What went wrong talking to the brokers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The network or a broker's state: retried after a backoff.
    #[error("{0}")]
    Retriable(String),
    /// Retrying the same request gets the same answer: the run stops with this.
    #[error("{0}")]
    Fatal(String),
}

/// Which client fetches records: the `[source] fetch` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FetchClient {
    /// Native unless the graph asks for TLS or SASL.
    #[default]
    Auto,
    Native,
    Librdkafka,
}

impl FetchClient {
    pub fn parse(text: &str) -> std::result::Result<FetchClient, String> {
        match text {
            "auto" => Ok(FetchClient::Auto),
            "native" => Ok(FetchClient::Native),
            "librdkafka" => Ok(FetchClient::Librdkafka),
            other => Err(format!("fetch = {other:?}: expected \"auto\", \"native\" or \"librdkafka\"")),
        }
    }
}

/// How the native path fetches, from the graph's librdkafka settings.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub bootstrap: Vec<String>,
    pub topic: String,
    pub client_id: String,
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
    pub isolation_level: i8,
    pub socket_timeout: Duration,
    pub connect_timeout: Duration,
}

impl FetchSettings {
    /// The native settings of `kafka`, or `None` if librdkafka must fetch (the graph chose it,
    /// or `auto` meets a security protocol other than plaintext).
    pub fn of(kafka: &KafkaSettings) -> Result<Option<FetchSettings>> {
        let protocol = kafka.properties.get("security.protocol").map(|p| p.to_ascii_lowercase());
        let plaintext = protocol.as_deref().is_none_or(|p| p == "plaintext");
        match (kafka.fetch, plaintext) {
            (FetchClient::Librdkafka, _) | (FetchClient::Auto, false) => return Ok(None),
            (FetchClient::Native, false) => {
                return Err(Error::User(format!(
                    "fetch = \"native\" speaks plaintext only, but security.protocol is {}: use fetch = \"auto\" or \"librdkafka\"",
                    protocol.unwrap_or_default()
                )));
            }
            _ => {}
        }
        let number = |key: &str, default: i64| -> Result<i64> {
            let value = kafka.properties.get(key).map(String::as_str).or_else(|| super::CONSUMER_DEFAULTS.iter().find(|(k, _)| *k == key).map(|(_, v)| *v));
            match value {
                None => Ok(default),
                Some(text) => text.trim().parse::<i64>().map_err(|_| Error::User(format!("source.kafka.{key} = {text:?} is not a whole number"))),
            }
        };
        let int = |key: &str, default: i64| -> Result<i32> { i32::try_from(number(key, default)?).map_err(|_| Error::User(format!("source.kafka.{key} is too large"))) };
        let millis = |key: &str, default: i64| -> Result<Duration> { Ok(Duration::from_millis(number(key, default)?.max(1) as u64)) };
        let isolation_level = match kafka.properties.get("isolation.level").map(|l| l.to_ascii_lowercase()).as_deref() {
            None | Some("read_committed") => 1,
            Some("read_uncommitted") => 0,
            Some(other) => return Err(Error::User(format!("source.kafka.isolation.level = {other:?}: expected read_committed or read_uncommitted"))),
        };
        Ok(Some(FetchSettings {
            bootstrap: kafka.brokers.split(',').map(|b| b.trim().to_string()).filter(|b| !b.is_empty()).collect(),
            topic: kafka.topic.clone(),
            client_id: kafka.properties.get("client.id").cloned().unwrap_or_else(|| "ratings-flow".to_string()),
            max_wait_ms: int("fetch.wait.max.ms", 500)?,
            min_bytes: int("fetch.min.bytes", 1)?,
            max_bytes: int("fetch.max.bytes", 52_428_800)?,
            partition_max_bytes: int("max.partition.fetch.bytes", 1_048_576)?,
            isolation_level,
            socket_timeout: millis("socket.timeout.ms", 60_000)?,
            connect_timeout: millis("socket.connection.setup.timeout.ms", 30_000)?,
        }))
    }
}

/// One worker's partitions, fetched natively by a thread of their own.
pub struct NativeFetcher {
    rounds: Receiver<std::result::Result<Records, String>>,
    current: Records,
    /// The next record of `current` to hand over.
    cursor: usize,
    /// Per partition: the offset after the last record handed over.
    positions: BTreeMap<i32, i64>,
    stop: Arc<AtomicBool>,
}

impl NativeFetcher {
    /// Starts fetching `starts` (partition, offset; `None`: the beginning).
    pub fn start(settings: FetchSettings, starts: &[(i32, Option<i64>)]) -> Result<NativeFetcher> {
        if settings.bootstrap.is_empty() {
            return Err(Error::User("source.brokers names no broker".into()));
        }
        let (sender, rounds) = std::sync::mpsc::sync_channel(2);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = FetchThread {
            settings,
            offsets: starts.iter().map(|(p, o)| (*p, *o)).collect(),
            leaders: BTreeMap::new(),
            brokers: BTreeMap::new(),
            connections: BTreeMap::new(),
            stop: stop.clone(),
        };
        std::thread::Builder::new()
            .name("kafka-fetch".into())
            .spawn(move || thread.run(sender))
            .map_err(|e| Error::Internal(format!("starting the fetch thread: {e}")))?;
        Ok(NativeFetcher { rounds, current: Records::default(), cursor: 0, positions: BTreeMap::new(), stop })
    }

    /// Hands up to `max` records to `each`, in fetch order, waiting up to `wait` for the first if
    /// none is buffered; returns how many. Fails only for an error no retry can fix.
    pub fn read(&mut self, wait: Duration, max: usize, mut each: impl FnMut(Fetched<'_>)) -> Result<usize> {
        let mut handed = 0;
        let mut wait = wait;
        while handed < max {
            if self.cursor == self.current.records.len() {
                let next = match wait.is_zero() {
                    true => self.rounds.try_recv().map_err(|e| matches!(e, std::sync::mpsc::TryRecvError::Disconnected)),
                    false => self.rounds.recv_timeout(wait).map_err(|e| matches!(e, RecvTimeoutError::Disconnected)),
                };
                match next {
                    Ok(Ok(records)) => (self.current, self.cursor) = (records, 0),
                    Ok(Err(message)) => return Err(Error::User(message)),
                    Err(true) => return Err(Error::Internal("the Kafka fetch thread ended".into())),
                    Err(false) => break,
                }
                // Once records came, take what else is buffered without waiting.
                wait = Duration::ZERO;
                continue;
            }
            let record = self.current.records[self.cursor];
            self.cursor += 1;
            self.positions.insert(record.partition, record.offset + 1);
            each(Fetched {
                partition: record.partition,
                offset: record.offset,
                timestamp_ms: (record.timestamp_ms >= 0).then_some(record.timestamp_ms),
                payload: self.current.payload(&record),
            });
            handed += 1;
        }
        Ok(handed)
    }

    /// The offset after the last record handed over from `partition`, if any was.
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.positions.get(&partition).copied()
    }
}

impl Drop for NativeFetcher {
    fn drop(&mut self) {
        // The thread sees this (or the closed channel) within one fetch wait.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The fetch thread's state.
struct FetchThread {
    settings: FetchSettings,
    /// Per partition: the next offset to fetch (`None`: ask for the beginning).
    offsets: BTreeMap<i32, Option<i64>>,
    /// Per partition: its leader's broker id, from the last metadata.
    leaders: BTreeMap<i32, i32>,
    /// Broker id → `host:port`.
    brokers: BTreeMap<i32, String>,
    connections: BTreeMap<i32, Connection>,
    stop: Arc<AtomicBool>,
}

/// Versions of the APIs used: Fetch v4 has isolation levels and aborted transactions, v12 is the
/// last to name topics (v13 uses topic ids); ListOffsets v2 has isolation levels.
const FETCH_VERSIONS: std::ops::RangeInclusive<i16> = 4..=12;
const METADATA_VERSIONS: std::ops::RangeInclusive<i16> = 1..=9;
const LIST_OFFSETS_VERSIONS: std::ops::RangeInclusive<i16> = 2..=7;
/// `ListOffsets` timestamp meaning "the earliest offset".
const EARLIEST: i64 = -2;

impl FetchThread {
    fn run(mut self, sender: SyncSender<std::result::Result<Records, String>>) {
        let mut backoff = Duration::from_millis(100);
        while !self.stop.load(Ordering::Relaxed) {
            match self.round() {
                Ok(records) => {
                    backoff = Duration::from_millis(100);
                    // Blocks while the worker has two rounds unread; fails once it is gone.
                    if !records.records.is_empty() && sender.send(Ok(records)).is_err() {
                        return;
                    }
                }
                Err(FetchError::Retriable(message)) => {
                    tracing::warn!(error = %message, retry_in = ?backoff, "Kafka fetch failed; retrying");
                    // Connections and leaders may be stale: both are asked for again.
                    self.connections.clear();
                    self.leaders.clear();
                    let until = std::time::Instant::now() + backoff;
                    while std::time::Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(FetchError::Fatal(message)) => {
                    let _ = sender.send(Err(message));
                    return;
                }
            }
        }
    }

    /// One Fetch to every leader of the assignment; the records that came back.
    fn round(&mut self) -> std::result::Result<Records, FetchError> {
        if self.offsets.keys().any(|p| !self.leaders.contains_key(p)) {
            self.refresh_metadata()?;
        }
        self.resolve_starts()?;
        let by_leader = self.partitions_by_leader();
        if by_leader.is_empty() {
            // Nothing to ask for (a worker with no partition): wait as a fetch would, not spin.
            std::thread::sleep(Duration::from_millis(self.settings.max_wait_ms.max(1) as u64));
            return Ok(Records::default());
        }
        let mut sent = Vec::with_capacity(by_leader.len());
        for (leader, partitions) in by_leader {
            let request = self.fetch_request(&partitions);
            let connection = self.connection(leader)?;
            let version = connection.version::<FetchRequest>(FETCH_VERSIONS)?;
            let correlation = connection.send(version, &request)?;
            sent.push((leader, version, correlation, partitions));
        }
        let mut records = Records::default();
        // Offsets move only once every response of the round is read: a round that fails part
        // way drops what it read, which the retry fetches again (moving them early would skip it).
        let mut advanced: Vec<(i32, i64)> = Vec::new();
        for (leader, version, correlation, partitions) in sent {
            let connection = self.connections.get_mut(&leader).expect("sent on this connection");
            let response = connection.receive::<FetchRequest>(version, correlation)?;
            let address = connection.address().to_string();
            if let Some(error) = ResponseError::try_from_code(response.error_code) {
                return Err(classify(error, format!("fetching from Kafka broker {address}")));
            }
            for topic in response.responses {
                for data in topic.partitions {
                    let partition = data.partition_index;
                    let Some(Some(fetch_offset)) = self.offsets.get(&partition).copied() else { continue };
                    if !partitions.contains(&partition) {
                        continue;
                    }
                    match ResponseError::try_from_code(data.error_code) {
                        None => {}
                        Some(ResponseError::OffsetOutOfRange) => {
                            tracing::warn!(partition, offset = fetch_offset, "Kafka offset out of range; reading the partition from its beginning (the tables skip what they hold)");
                            self.offsets.insert(partition, None);
                            continue;
                        }
                        Some(error) if error.is_retriable() => {
                            tracing::warn!(partition, %error, "Kafka partition not available from broker {address}; asking for its leader again");
                            self.leaders.remove(&partition);
                            continue;
                        }
                        Some(error) => return Err(classify(error, format!("fetching partition {partition} of {} from Kafka broker {address}", self.settings.topic))),
                    }
                    let Some(bytes) = data.records else { continue };
                    let aborted: Vec<(i64, i64)> = data.aborted_transactions.unwrap_or_default().iter().map(|a| (a.producer_id.0, a.first_offset)).collect();
                    let next = read_partition(partition, &bytes, fetch_offset, &aborted, &mut records)
                        .map_err(|e| FetchError::Fatal(format!("partition {partition} of {}: {e}", self.settings.topic)))?;
                    if let Some(next) = next.filter(|next| *next > fetch_offset) {
                        advanced.push((partition, next));
                    }
                }
            }
        }
        for (partition, next) in advanced {
            self.offsets.insert(partition, Some(next));
        }
        Ok(records)
    }

    fn fetch_request(&self, partitions: &[i32]) -> FetchRequest {
        let settings = &self.settings;
        let partitions = partitions
            .iter()
            .filter_map(|p| self.offsets.get(p).copied().flatten().map(|offset| (*p, offset)))
            .map(|(partition, offset)| {
                FetchPartition::default().with_partition(partition).with_fetch_offset(offset).with_partition_max_bytes(settings.partition_max_bytes)
            })
            .collect();
        FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(settings.max_wait_ms)
            .with_min_bytes(settings.min_bytes)
            .with_max_bytes(settings.max_bytes)
            .with_isolation_level(settings.isolation_level)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default().with_topic(self.topic_name()).with_partitions(partitions)])
    }

    fn topic_name(&self) -> TopicName {
        TopicName(StrBytes::from_string(self.settings.topic.clone()))
    }

    /// Leader → its partitions of the assignment that have a start offset.
    fn partitions_by_leader(&self) -> BTreeMap<i32, Vec<i32>> {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (partition, offset) in &self.offsets {
            if let (Some(leader), Some(_)) = (self.leaders.get(partition), offset) {
                by_leader.entry(*leader).or_default().push(*partition);
            }
        }
        by_leader
    }

    fn connection(&mut self, broker: i32) -> std::result::Result<&mut Connection, FetchError> {
        if !self.connections.contains_key(&broker) {
            let address = self.brokers.get(&broker).cloned().ok_or_else(|| FetchError::Retriable(format!("no address known for Kafka broker {broker}")))?;
            let connection = Connection::open(&address, &self.settings.client_id, self.settings.connect_timeout, self.io_timeout())?;
            self.connections.insert(broker, connection);
        }
        Ok(self.connections.get_mut(&broker).expect("inserted above"))
    }

    /// A read may take the broker's fetch wait on top of the socket timeout.
    fn io_timeout(&self) -> Duration {
        self.settings.socket_timeout + Duration::from_millis(self.settings.max_wait_ms.max(0) as u64)
    }

    /// Leaders of the assignment's partitions, from any bootstrap broker that answers.
    fn refresh_metadata(&mut self) -> std::result::Result<(), FetchError> {
        let mut last = FetchError::Retriable("no bootstrap broker".into());
        for address in self.settings.bootstrap.clone() {
            let mut connection = match Connection::open(&address, &self.settings.client_id, self.settings.connect_timeout, self.io_timeout()) {
                Ok(connection) => connection,
                Err(error @ FetchError::Retriable(_)) => {
                    last = error;
                    continue;
                }
                Err(fatal) => return Err(fatal),
            };
            let version = connection.version::<MetadataRequest>(METADATA_VERSIONS)?;
            let request = MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(self.topic_name()))]));
            let response = connection.call(version, &request)?;
            self.brokers = response.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
            let topic = response
                .topics
                .iter()
                .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == self.settings.topic))
                .ok_or_else(|| FetchError::Retriable(format!("Kafka broker {address} does not list topic {}", self.settings.topic)))?;
            if let Some(error) = ResponseError::try_from_code(topic.error_code) {
                return Err(classify(error, format!("metadata of topic {} from Kafka broker {address}", self.settings.topic)));
            }
            for partition in &topic.partitions {
                if partition.leader_id.0 >= 0 && ResponseError::try_from_code(partition.error_code).is_none() {
                    self.leaders.insert(partition.partition_index, partition.leader_id.0);
                }
            }
            let leaderless: Vec<i32> = self.offsets.keys().filter(|p| !self.leaders.contains_key(p)).copied().collect();
            if !leaderless.is_empty() {
                return Err(FetchError::Retriable(format!("partitions {leaderless:?} of {} have no leader yet", self.settings.topic)));
            }
            return Ok(());
        }
        Err(last)
    }

    /// Asks each leader for the earliest offset of its partitions that start at the beginning.
    fn resolve_starts(&mut self) -> std::result::Result<(), FetchError> {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (partition, offset) in &self.offsets {
            if let (None, Some(leader)) = (offset, self.leaders.get(partition)) {
                by_leader.entry(*leader).or_default().push(*partition);
            }
        }
        for (leader, partitions) in by_leader {
            let (topic, isolation_level) = (self.topic_name(), self.settings.isolation_level);
            let connection = self.connection(leader)?;
            let version = connection.version::<ListOffsetsRequest>(LIST_OFFSETS_VERSIONS)?;
            let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_isolation_level(isolation_level).with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic)
                    .with_partitions(partitions.iter().map(|p| ListOffsetsPartition::default().with_partition_index(*p).with_timestamp(EARLIEST)).collect()),
            ]);
            let address = connection.address().to_string();
            let response = connection.call(version, &request)?;
            for answer in response.topics.iter().flat_map(|t| &t.partitions) {
                match ResponseError::try_from_code(answer.error_code) {
                    None => {
                        self.offsets.insert(answer.partition_index, Some(answer.offset));
                    }
                    Some(error) if error.is_retriable() => {
                        self.leaders.remove(&answer.partition_index);
                    }
                    Some(error) => {
                        return Err(classify(error, format!("the first offset of partition {} from Kafka broker {address}", answer.partition_index)));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A broker's error code as retriable or not, with what was being done.
fn classify(error: ResponseError, doing: String) -> FetchError {
    match error.is_retriable() {
        true => FetchError::Retriable(format!("{doing}: {error}")),
        false => FetchError::Fatal(format!("{doing}: {error} (Kafka error code {})", error.code())),
    }
}

#[cfg(test)]
mod tests {
    //! The fetch thread against two scripted brokers (kafka-protocol encodes their answers): the
    //! cases a single real broker cannot show, such as one leader failing while another answered.

    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::AtomicUsize;

    use bytes::{Buf, BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic};
    use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, FetchResponse, MetadataResponse, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, decode_request_header_from_buffer};
    use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    use super::*;

    const TOPIC: &str = "t";
    /// Records per partition, served five per fetch.
    const RECORDS: i64 = 20;

    struct Broker {
        listener: TcpListener,
        /// Fetches this broker answers by closing the connection, before it answers any other.
        failures: AtomicUsize,
    }

    fn encode<T: Encodable + HeaderVersion>(correlation: i32, version: i16, response: &T) -> Vec<u8> {
        let mut body = BytesMut::new();
        ResponseHeader::default().with_correlation_id(correlation).encode(&mut body, T::header_version(version)).unwrap();
        response.encode(&mut body, version).unwrap();
        let mut framed = BytesMut::new();
        framed.put_i32(body.len() as i32);
        framed.put_slice(&body);
        framed.to_vec()
    }

    fn records(partition: i32, from: i64) -> Bytes {
        let until = (from + 5).min(RECORDS);
        let records: Vec<Record> = (from..until)
            .map(|offset| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset,
                sequence: -1,
                timestamp: 1_000 + offset,
                key: None,
                value: Some(Bytes::from(format!("p{partition}-{offset}"))),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        if !records.is_empty() {
            RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: Compression::None }).unwrap();
        }
        buf.freeze()
    }

    /// Serves one connection: ApiVersions, Metadata (partition 0 led by broker 1, partition 1 by
    /// broker 2), Fetch.
    fn serve(mut stream: TcpStream, broker: &Broker, addresses: &[String; 2]) {
        loop {
            let mut size = [0u8; 4];
            if stream.read_exact(&mut size).is_err() {
                return;
            }
            let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
            stream.read_exact(&mut body).unwrap();
            let mut body = Bytes::from(body);
            let header = decode_request_header_from_buffer(&mut body).unwrap();
            let (correlation, version) = (header.correlation_id, header.request_api_version);
            let answer = match ApiKey::try_from(header.request_api_key).unwrap() {
                ApiKey::ApiVersions => {
                    let keys = [(ApiKey::ApiVersions, 0, 3), (ApiKey::Metadata, 1, 9), (ApiKey::Fetch, 4, 12), (ApiKey::ListOffsets, 2, 7)];
                    let api_keys = keys.iter().map(|(key, min, max)| ApiVersion::default().with_api_key(*key as i16).with_min_version(*min).with_max_version(*max)).collect();
                    encode(correlation, version, &ApiVersionsResponse::default().with_api_keys(api_keys))
                }
                ApiKey::Metadata => {
                    let brokers = addresses
                        .iter()
                        .enumerate()
                        .map(|(i, address)| {
                            let (host, port) = address.rsplit_once(':').unwrap();
                            MetadataResponseBroker::default().with_node_id(BrokerId(i as i32 + 1)).with_host(StrBytes::from_string(host.into())).with_port(port.parse().unwrap())
                        })
                        .collect();
                    let partitions = (0..2).map(|p| MetadataResponsePartition::default().with_partition_index(p).with_leader_id(BrokerId(p + 1))).collect();
                    let topic = MetadataResponseTopic::default().with_name(Some(TopicName(StrBytes::from_static_str(TOPIC)))).with_partitions(partitions);
                    encode(correlation, version, &MetadataResponse::default().with_brokers(brokers).with_topics(vec![topic]))
                }
                ApiKey::Fetch => {
                    let request = FetchRequest::decode(&mut body, version).unwrap();
                    if broker.failures.load(Ordering::SeqCst) > 0 {
                        broker.failures.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    let partitions: Vec<PartitionData> = request.topics[0]
                        .partitions
                        .iter()
                        .map(|p| PartitionData::default().with_partition_index(p.partition).with_high_watermark(RECORDS).with_records(Some(records(p.partition, p.fetch_offset))))
                        .collect();
                    if partitions.iter().all(|p| p.records.as_ref().is_some_and(|r| !r.has_remaining())) {
                        // Nothing new: hold the fetch a little, as a broker does up to its wait.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let topic = FetchableTopicResponse::default().with_topic(TopicName(StrBytes::from_static_str(TOPIC))).with_partitions(partitions);
                    encode(correlation, version, &FetchResponse::default().with_responses(vec![topic]))
                }
                other => panic!("the test broker does not answer {other:?}"),
            };
            if stream.write_all(&answer).is_err() {
                return;
            }
        }
    }

    fn brokers(failures: [usize; 2]) -> [String; 2] {
        let brokers: Vec<&'static Broker> = failures
            .iter()
            .map(|f| &*Box::leak(Box::new(Broker { listener: TcpListener::bind("127.0.0.1:0").unwrap(), failures: AtomicUsize::new(*f) })))
            .collect();
        let addresses: [String; 2] = [brokers[0].listener.local_addr().unwrap().to_string(), brokers[1].listener.local_addr().unwrap().to_string()];
        for broker in brokers {
            let addresses = addresses.clone();
            std::thread::spawn(move || {
                for stream in broker.listener.incoming() {
                    let addresses = addresses.clone();
                    std::thread::spawn(move || serve(stream.unwrap(), broker, &addresses));
                }
            });
        }
        addresses
    }

    fn fetch_all(addresses: &[String; 2]) -> Vec<(i32, i64, i64, String)> {
        let settings = FetchSettings {
            bootstrap: vec![addresses[0].clone()],
            topic: TOPIC.into(),
            client_id: "test".into(),
            max_wait_ms: 20,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partition_max_bytes: 1 << 20,
            isolation_level: 1,
            socket_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        };
        let mut fetcher = NativeFetcher::start(settings, &[(0, Some(0)), (1, Some(0))]).unwrap();
        let mut read = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while read.len() < 2 * RECORDS as usize && std::time::Instant::now() < deadline {
            fetcher
                .read(Duration::from_millis(50), 100, |r| {
                    read.push((r.partition, r.offset, r.timestamp_ms.unwrap(), String::from_utf8(r.payload.to_vec()).unwrap()))
                })
                .unwrap();
        }
        // Nothing more comes after the last record.
        assert_eq!(fetcher.read(Duration::from_millis(200), 100, |r| panic!("handed {} {} again", r.partition, r.offset)).unwrap(), 0);
        assert_eq!(fetcher.position(0), Some(RECORDS));
        read
    }

    fn every_record_once() -> Vec<(i32, i64, i64, String)> {
        let mut expected: Vec<(i32, i64, i64, String)> = (0..2).flat_map(|p| (0..RECORDS).map(move |o| (p, o, 1_000 + o, format!("p{p}-{o}")))).collect();
        expected.sort();
        expected
    }

    #[test]
    fn each_leader_serves_its_partitions_and_every_record_comes_once_in_offset_order() {
        let mut read = fetch_all(&brokers([0, 0]));
        for partition in 0..2 {
            let offsets: Vec<i64> = read.iter().filter(|r| r.0 == partition).map(|r| r.1).collect();
            assert_eq!(offsets, (0..RECORDS).collect::<Vec<_>>(), "partition {partition} in offset order");
        }
        read.sort();
        assert_eq!(read, every_record_once());
    }

    #[test]
    fn a_round_whose_second_leader_fails_is_fetched_again_whole_and_skips_nothing() {
        // Broker 1 answers every fetch; broker 2 drops the connection on its first two. The round
        // that read broker 1's records must not move partition 0's offset past them.
        let mut read = fetch_all(&brokers([0, 2]));
        read.sort();
        assert_eq!(read, every_record_once());
    }
}
