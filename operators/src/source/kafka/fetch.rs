//! A consumer whose records are taken from librdkafka a batch at a time.
//!
//! rdkafka's `BaseConsumer::poll` hands over one message per call: librdkafka pops one op,
//! wraps it as an event, and the crate puts that event in a fresh `Arc`, reads the clock and frees
//! it all again. For a stream of small records that is most of the client's cost: the bare
//! consumer (`benches/bare_consume.rs`) used 0.74–0.93 CPU-seconds per million records that way,
//! and 0.36–0.51 taking them with librdkafka's `rd_kafka_consume_batch_queue` (benches/README).
//! rdkafka has no batch call, so this module makes it, through rdkafka's own bindings.
//!
//! How the queues are laid out:
//!
//! ```text
//!  partition p fetch queue ──forward──┐
//!  partition q fetch queue ──forward──┼──▶ records queue ──rd_kafka_consume_batch_queue──▶ read()
//!  partition r fetch queue ──forward──┘
//!  main queue (commit replies, errors, logs) ──▶ consumer queue ──BaseConsumer::poll──▶ served by read()
//! ```
//!
//! - The forwarding is set up before the partitions are assigned: librdkafka keeps a forwarding
//!   the application set when it starts fetching a partition, but replaces any other with the
//!   consumer queue, so records never start out on the consumer queue.
//! - Only fetched records and a partition's consumer errors reach the records queue; commit
//!   replies, client errors and logs stay on the consumer queue, which [`BatchConsumer::read`]
//!   serves with rdkafka's `poll` as before (and should a record still arrive there, it is handed
//!   over like the others).
//! - librdkafka advances each partition's position (what `position()` reports) as records are
//!   handed over, as with `poll`.

use std::ffi::CString;
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as native;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{Context, Error, Result};

/// One record as fetched: valid until the callback returns.
#[derive(Debug, Clone, Copy)]
pub struct Fetched<'a> {
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp (create or log-append time), if it has one.
    pub timestamp_ms: Option<i64>,
    pub payload: &'a [u8],
}

/// A librdkafka queue handle, destroyed when dropped.
struct Queue(NonNull<native::rd_kafka_queue_t>);

impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: the handle came from librdkafka and is destroyed once, here.
        unsafe { native::rd_kafka_queue_destroy(self.0.as_ptr()) };
    }
}

/// A consumer assigned a fixed set of partitions, read a batch of records at a time.
pub struct BatchConsumer {
    /// The partitions' fetch queues, held (never read) so their forwarding lasts as long as this
    /// value. The queues are declared before the consumer, so their handles are destroyed while
    /// the client still exists (a forwarding holds its own reference to the records queue).
    _partition_queues: Vec<Queue>,
    records: Queue,
    /// Room for the messages of one `rd_kafka_consume_batch_queue` call.
    messages: Vec<*mut native::rd_kafka_message_t>,
    consumer: BaseConsumer,
}

/// The most records one call to librdkafka hands over.
const BATCH: usize = 1024;

impl BatchConsumer {
    /// Assigns `consumer` the partitions of `topic`, each from its offset (`None`: the beginning),
    /// with their records forwarded to one queue read by [`Self::read`].
    pub fn assign(consumer: BaseConsumer, topic: &str, starts: &[(i32, Option<i64>)]) -> Result<BatchConsumer> {
        let client = consumer.client().native_ptr();
        // SAFETY: `client` is the consumer's live handle; the queue is destroyed before it.
        let records = NonNull::new(unsafe { native::rd_kafka_queue_new(client) })
            .map(Queue)
            .ok_or_else(|| Error::Internal("librdkafka did not create a queue".into()))?;
        let topic_name = CString::new(topic).map_err(|_| Error::User(format!("topic name {topic:?} holds a NUL byte")))?;
        let mut partition_queues = Vec::with_capacity(starts.len());
        let mut assignment = TopicPartitionList::new();
        for (partition, start) in starts {
            // SAFETY: as above; librdkafka creates the partition's state if it has none yet.
            let queue = NonNull::new(unsafe { native::rd_kafka_queue_get_partition(client, topic_name.as_ptr(), *partition) })
                .map(Queue)
                .ok_or_else(|| Error::User(format!("librdkafka has no queue for partition {partition} of {topic}")))?;
            // SAFETY: both handles are live; librdkafka keeps its own reference for the forwarding.
            unsafe { native::rd_kafka_queue_forward(queue.0.as_ptr(), records.0.as_ptr()) };
            partition_queues.push(queue);
            let offset = start.map(Offset::Offset).unwrap_or(Offset::Beginning);
            assignment.add_partition_offset(topic, *partition, offset).context(|| format!("assigning partition {partition}"))?;
        }
        let partitions: Vec<i32> = starts.iter().map(|(p, _)| *p).collect();
        consumer.assign(&assignment).context(|| format!("assigning partitions {partitions:?}"))?;
        Ok(BatchConsumer { _partition_queues: partition_queues, records, messages: vec![std::ptr::null_mut(); BATCH], consumer })
    }

    pub fn consumer(&self) -> &BaseConsumer {
        &self.consumer
    }

    /// Hands up to `max` records to `each`, in the order fetched (each partition's in offset
    /// order), waiting up to `wait` for the first if none is buffered; returns how many. A
    /// consumer error (librdkafka retries on its own) is logged, not handed over.
    pub fn read(&mut self, wait: Duration, max: usize, mut each: impl FnMut(Fetched<'_>)) -> usize {
        // Commit replies, client errors and logs: served as before, without waiting.
        let mut handed = self.serve_consumer_queue(max, &mut each);
        handed += self.take(Duration::ZERO, max - handed, &mut each);
        if handed == 0 && !wait.is_zero() {
            // librdkafka's batch call waits until it has `max` records or the time is up: wait
            // for one, then take what else is buffered.
            handed += self.take(wait, 1, &mut each);
            if handed > 0 {
                handed += self.take(Duration::ZERO, max - handed, &mut each);
            }
        }
        handed
    }

    fn serve_consumer_queue(&self, max: usize, each: &mut impl FnMut(Fetched<'_>)) -> usize {
        let mut handed = 0;
        while handed < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(error)) => tracing::warn!(%error, "Kafka consumer error; librdkafka retries on its own"),
                Some(Ok(message)) => {
                    each(Fetched {
                        partition: message.partition(),
                        offset: message.offset(),
                        timestamp_ms: message.timestamp().to_millis(),
                        payload: message.payload().unwrap_or_default(),
                    });
                    handed += 1;
                }
            }
        }
        handed
    }

    fn take(&mut self, wait: Duration, max: usize, each: &mut impl FnMut(Fetched<'_>)) -> usize {
        let room = max.min(self.messages.len());
        if room == 0 {
            return 0;
        }
        let timeout_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the queue is live and `messages` has room for `room` pointers.
        let count = unsafe { native::rd_kafka_consume_batch_queue(self.records.0.as_ptr(), timeout_ms, self.messages.as_mut_ptr(), room) };
        let count = usize::try_from(count).unwrap_or(0).min(room);
        // Every message is destroyed, even if `each` panics part way.
        let taken = Taken(&self.messages[..count]);
        let mut handed = 0;
        for &message in taken.0 {
            // SAFETY: librdkafka filled the first `count` entries with live messages.
            let record = unsafe { &*message };
            if record.err != native::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                // SAFETY: `rd_kafka_err2str` returns a static string.
                let error = unsafe { std::ffi::CStr::from_ptr(native::rd_kafka_err2str(record.err)) }.to_string_lossy();
                tracing::warn!(%error, partition = record.partition, "Kafka consumer error; librdkafka retries on its own");
                continue;
            }
            let payload = match NonNull::new(record.payload.cast::<u8>()) {
                // SAFETY: a message's payload is `len` bytes, alive until the message is destroyed.
                Some(bytes) => unsafe { std::slice::from_raw_parts(bytes.as_ptr(), record.len) },
                None => &[],
            };
            // SAFETY: the message is live; a null type pointer is allowed.
            let timestamp = unsafe { native::rd_kafka_message_timestamp(message, std::ptr::null_mut()) };
            each(Fetched { partition: record.partition, offset: record.offset, timestamp_ms: (timestamp >= 0).then_some(timestamp), payload });
            handed += 1;
        }
        handed
    }
}

/// Messages taken from librdkafka, destroyed when dropped.
struct Taken<'a>(&'a [*mut native::rd_kafka_message_t]);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for &message in self.0 {
            // SAFETY: each message was handed over by librdkafka and is destroyed once, here.
            unsafe { native::rd_kafka_message_destroy(message) };
        }
    }
}
