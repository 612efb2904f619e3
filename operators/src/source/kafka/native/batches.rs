//! Kafka record batches (message format v2) read in place: a fetched partition's bytes become a
//! list of [`RecordRef`]s (partition, offset, timestamp, where the value lies), with no allocation
//! or copy per record.
//!
//! Semantics, as Kafka's own consumer reads a partition at `read_committed`:
//! - Records before the fetch offset are skipped: the broker answers with whole batches, and the
//!   first may start before the offset asked for.
//! - A batch the response cut short (the fetch's size limit) ends the partition's data; the next
//!   fetch asks for it again.
//! - Control batches (transaction markers) are never records.
//! - A transactional batch of a producer whose transaction was aborted is skipped: the broker lists
//!   the aborted transactions (producer, first offset) it returns data of, and a producer's records
//!   are skipped from its first aborted offset until its abort marker.
//! - A compressed batch (gzip, snappy, lz4, zstd) is decompressed once, into a buffer of its own
//!   that the references then point into.
//! - The timestamp is the record's create time, or the batch's append time when the topic stamps
//!   on append; a negative one is no timestamp.
//! - The next offset to fetch is past the last complete batch, control and aborted ones included.
//! - Message formats v0/v1 (brokers before 0.11 on disk, never converted up) are an error naming
//!   the librdkafka fetch path, which reads them.

use std::collections::BTreeSet;

use bytes::Bytes;
use kafka_protocol::compression::Decompressor;

/// Where one record's value lies: in a partition's fetched data, or in a decompressed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch; negative: none.
    pub timestamp_ms: i64,
    /// Which of [`Records::buffers`]: a partition's fetched data, or a decompressed batch.
    pub buffer: u32,
    pub start: u32,
    /// The value's length; a null value is empty, as librdkafka hands it.
    pub len: u32,
}

/// The records of one round of fetch responses, in fetch order (each partition's in offset
/// order), and the buffers their values lie in: each partition's fetched data (slices of the
/// responses, which they keep alive) and any decompressed batches.
#[derive(Debug, Default)]
pub struct Records {
    pub buffers: Vec<Bytes>,
    pub records: Vec<RecordRef>,
}

impl Records {
    pub fn payload(&self, record: &RecordRef) -> &[u8] {
        let start = record.start as usize;
        &self.buffers[record.buffer as usize][start..start + record.len as usize]
    }
}

/// What is wrong with a partition's fetched bytes. Not retriable: the same bytes come back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch at offset {offset} is message format v{magic}; only v2 (Kafka 0.11 and later) is read natively: set `fetch = \"librdkafka\"` under [source]")]
    OldFormat { offset: i64, magic: i8 },
    #[error("record batch at offset {offset} is malformed: {detail}")]
    Malformed { offset: i64, detail: String },
}

/// Fixed header of a v2 batch: base offset (8), length (4), leader epoch (4), magic (1), crc (4),
/// attributes (2), last offset delta (4), base and max timestamp (8 + 8), producer id (8),
/// producer epoch (2), base sequence (4), record count (4).
const HEADER: usize = 61;
/// The bytes before a batch's length counts: base offset and length.
const LOG_OVERHEAD: usize = 12;

const COMPRESSION_MASK: i16 = 0x07;
const LOG_APPEND_TIME: i16 = 0x08;
const TRANSACTIONAL: i16 = 0x10;
const CONTROL: i16 = 0x20;

/// Reads one partition's record set (`data`) into `out`, skipping records before `fetch_offset`.
/// `aborted` lists (producer id, first offset) of the aborted transactions the broker named for
/// this data. Returns the next offset to fetch, or `None` if the data holds no complete batch.
pub fn read_partition(partition: i32, data: &Bytes, fetch_offset: i64, aborted: &[(i64, i64)], out: &mut Records) -> Result<Option<i64>, BatchError> {
    let fetched = u32::try_from(out.buffers.len()).map_err(|_| BatchError::Malformed { offset: fetch_offset, detail: "too many buffers".into() })?;
    out.buffers.push(data.clone());
    let mut aborted: Vec<(i64, i64)> = aborted.to_vec();
    aborted.sort_unstable_by_key(|(_, first)| *first);
    let mut pending_aborts = aborted.into_iter().peekable();
    let mut aborting: BTreeSet<i64> = BTreeSet::new();
    let mut next = None;
    let mut at = 0usize;
    // A record takes some tens of bytes at least: room for them up front, not by doubling.
    out.records.reserve(data.len() / 64);
    while data.len() - at >= LOG_OVERHEAD {
        let batch_offset = be_i64(&data[at..]);
        let length = be_i32(&data[at + 8..]);
        let malformed = |detail: String| BatchError::Malformed { offset: batch_offset, detail };
        let length = usize::try_from(length).map_err(|_| malformed(format!("negative length {length}")))?;
        if data.len() - at - LOG_OVERHEAD < length {
            // Cut short by the fetch's size limit: fetched again next time.
            break;
        }
        let batch = &data[at..at + LOG_OVERHEAD + length];
        if batch.len() <= 16 {
            return Err(malformed(format!("length {length} leaves no room for the header")));
        }
        let magic = batch[16] as i8;
        if magic != 2 {
            return Err(BatchError::OldFormat { offset: batch_offset, magic });
        }
        if batch.len() < HEADER {
            return Err(malformed(format!("length {length} is shorter than a v2 header")));
        }
        let attributes = be_i16(&batch[21..]);
        let last_offset = batch_offset + i64::from(be_i32(&batch[23..]));
        let base_timestamp = be_i64(&batch[27..]);
        let max_timestamp = be_i64(&batch[35..]);
        let producer_id = be_i64(&batch[43..]);
        let count = be_i32(&batch[57..]);
        let body_start = at + HEADER;
        at += LOG_OVERHEAD + length;
        next = Some(last_offset + 1);
        while let Some((producer, _)) = pending_aborts.next_if(|(_, first)| *first <= last_offset) {
            aborting.insert(producer);
        }
        if attributes & CONTROL != 0 {
            // A marker ends its producer's transaction: an abort marker its aborted run.
            if is_abort_marker(&batch[HEADER..]) {
                aborting.remove(&producer_id);
            }
            continue;
        }
        if attributes & TRANSACTIONAL != 0 && aborting.contains(&producer_id) {
            continue;
        }
        if last_offset < fetch_offset {
            continue;
        }
        let log_append = attributes & LOG_APPEND_TIME != 0;
        let timestamp = |delta: i64| if log_append { max_timestamp } else { base_timestamp + delta };
        let (buffer, records, origin) = match attributes & COMPRESSION_MASK {
            0 => (fetched, data.slice(body_start..at), body_start),
            codec => {
                let compressed = data.slice(body_start..at);
                let plain = decompress(codec, compressed).map_err(malformed)?;
                out.buffers.push(plain.clone());
                ((out.buffers.len() - 1) as u32, plain, 0)
            }
        };
        let mut reader = Reader { data: &records, at: 0 };
        for _ in 0..count {
            let record = reader.record().ok_or_else(|| malformed("a record runs past the batch".into()))?;
            let offset = batch_offset + record.offset_delta;
            if offset < fetch_offset {
                continue;
            }
            let start = u32::try_from(origin + record.value_start).map_err(|_| malformed("a partition's data over 4 GiB".into()))?;
            out.records.push(RecordRef { partition, offset, timestamp_ms: timestamp(record.timestamp_delta), buffer, start, len: record.value_len });
        }
    }
    Ok(next)
}

fn decompress(codec: i16, mut compressed: Bytes) -> Result<Bytes, String> {
    use kafka_protocol::compression::{Gzip, Lz4, Snappy, Zstd};
    let keep = |plain: &mut Bytes| Ok(std::mem::take(plain));
    match codec {
        1 => Gzip::decompress(&mut compressed, keep),
        2 => Snappy::decompress(&mut compressed, keep),
        3 => Lz4::decompress(&mut compressed, keep),
        4 => Zstd::decompress(&mut compressed, keep),
        other => return Err(format!("unknown compression codec {other}")),
    }
    .map_err(|error| format!("decompressing: {error:#}"))
}

/// A control record's key: version (int16), then type (int16; 0 is an abort).
fn is_abort_marker(records: &[u8]) -> bool {
    let mut reader = Reader { data: records, at: 0 };
    (|| {
        let _length = reader.varint()?;
        let _attributes = reader.bytes(1)?;
        let _timestamp = reader.varint()?;
        let _offset = reader.varint()?;
        let key_length = usize::try_from(reader.varint()?).ok()?;
        let key = reader.bytes(key_length)?;
        (key.len() >= 4).then(|| be_i16(&key[2..]) == 0)
    })()
    .unwrap_or(false)
}

struct Record {
    timestamp_delta: i64,
    offset_delta: i64,
    value_start: usize,
    value_len: u32,
}

/// A cursor over a batch's records (zig-zag varints, as Kafka writes them).
struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    #[inline]
    fn record(&mut self) -> Option<Record> {
        let length = usize::try_from(self.varint()?).ok()?;
        let end = self.at.checked_add(length).filter(|end| *end <= self.data.len())?;
        let _attributes = self.bytes(1)?;
        let timestamp_delta = self.varint()?;
        let offset_delta = self.varint()?;
        let key_length = self.varint()?;
        if key_length > 0 {
            self.bytes(usize::try_from(key_length).ok()?)?;
        }
        let value_length = self.varint()?;
        let value_start = self.at;
        let value_len = match value_length {
            length if length >= 0 => {
                self.bytes(usize::try_from(length).ok()?)?;
                u32::try_from(length).ok()?
            }
            _ => 0,
        };
        // Headers are not read: the record's length says where the next one starts.
        if self.at > end {
            return None;
        }
        self.at = end;
        Some(Record { timestamp_delta, offset_delta, value_start, value_len })
    }

    #[inline]
    fn bytes(&mut self, count: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(count).filter(|end| *end <= self.data.len())?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Some(bytes)
    }

    /// A zig-zag varint of up to 64 bits.
    #[inline]
    fn varint(&mut self) -> Option<i64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.data.get(self.at)?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        None
    }
}

fn be_i16(bytes: &[u8]) -> i16 {
    i16::from_be_bytes([bytes[0], bytes[1]])
}

fn be_i32(bytes: &[u8]) -> i32 {
    i32::from_be_bytes(bytes[..4].try_into().expect("four bytes"))
}

fn be_i64(bytes: &[u8]) -> i64 {
    i64::from_be_bytes(bytes[..8].try_into().expect("eight bytes"))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    use rand::{Rng, SeedableRng};

    use super::*;

    fn record(offset: i64, value: Option<&[u8]>, producer_id: i64, transactional: bool, control: bool) -> Record {
        Record {
            transactional,
            control,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32,
            timestamp: 1_700_000_000_000 + offset * 7,
            key: Some(Bytes::from(format!("key-{offset}"))),
            value: value.map(Bytes::copy_from_slice),
            headers: [(StrBytes::from_static_str("h"), Some(Bytes::from_static(b"v")))].into_iter().collect(),
        }
    }

    /// A control record: key = version 0, type (0 abort, 1 commit).
    fn marker(offset: i64, producer_id: i64, abort: bool) -> Record {
        let mut record = record(offset, Some(&[0, 0, 0, 0, 0, 0]), producer_id, true, true);
        record.key = Some(Bytes::from(vec![0, 0, 0, if abort { 0 } else { 1 }]));
        record.headers = Default::default();
        record
    }

    fn encode(batches: &[(Vec<Record>, Compression)]) -> Bytes {
        let mut buf = BytesMut::new();
        for (records, compression) in batches {
            RecordBatchEncoder::encode(&mut buf, records, &RecordEncodeOptions { version: 2, compression: *compression }).unwrap();
        }
        buf.freeze()
    }

    fn read(data: &Bytes, fetch_offset: i64, aborted: &[(i64, i64)]) -> (Vec<(i64, i64, Vec<u8>)>, Option<i64>) {
        let mut fetched = Records::default();
        let next = read_partition(3, data, fetch_offset, aborted, &mut fetched).unwrap();
        assert!(fetched.records.iter().all(|r| r.partition == 3));
        (fetched.records.iter().map(|r| (r.offset, r.timestamp_ms, fetched.payload(r).to_vec())).collect(), next)
    }

    #[test]
    fn records_read_in_place_match_kafka_protocols_own_decoder_for_every_codec() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for compression in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let mut offset = 0;
            let mut batches = Vec::new();
            for _ in 0..20 {
                let size = rng.random_range(1..40);
                let records: Vec<Record> = (0..size)
                    .map(|_| {
                        offset += 1;
                        let value: Option<Vec<u8>> = (!rng.random_bool(0.05)).then(|| (0..rng.random_range(0..300)).map(|_| rng.random::<u8>()).collect());
                        record(offset - 1, value.as_deref(), -1, false, false)
                    })
                    .collect();
                batches.push((records, compression));
            }
            let data = encode(&batches);
            let mut oracle = Vec::new();
            let mut all = data.clone();
            for set in RecordBatchDecoder::decode_all(&mut all).unwrap() {
                for r in set.records {
                    oracle.push((r.offset, r.timestamp, r.value.map(|v| v.to_vec()).unwrap_or_default()));
                }
            }
            let (records, next) = read(&data, 0, &[]);
            assert_eq!(records, oracle, "{compression:?}");
            assert_eq!(next, Some(offset), "{compression:?}");
        }
    }

    #[test]
    fn records_before_the_fetch_offset_and_a_batch_cut_short_are_left_for_later() {
        let batch = |from: i64| ((from..from + 5).map(|o| record(o, Some(b"value"), -1, false, false)).collect::<Vec<_>>(), Compression::None);
        let data = encode(&[batch(10), batch(15)]);
        let (records, next) = read(&data, 12, &[]);
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), (12..20).collect::<Vec<_>>());
        assert_eq!(next, Some(20));
        // The second batch cut anywhere: only the first is read, and the next fetch starts at 15.
        for cut in 1..(data.len() - first_batch_len(&data)) {
            let short = data.slice(..data.len() - cut);
            let (records, next) = read(&short, 12, &[]);
            assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![12, 13, 14], "cut {cut}");
            assert_eq!(next, Some(15), "cut {cut}");
        }
        let (records, next) = read(&data.slice(..30), 12, &[]);
        assert!(records.is_empty());
        assert_eq!(next, None, "no complete batch: the same offset is fetched again");
    }

    fn first_batch_len(data: &Bytes) -> usize {
        LOG_OVERHEAD + be_i32(&data[8..]) as usize
    }

    #[test]
    fn aborted_transactions_and_control_batches_are_skipped_committed_ones_kept() {
        let txn = |from: i64, producer: i64| ((from..from + 3).map(|o| record(o, Some(b"t"), producer, true, false)).collect::<Vec<_>>(), Compression::None);
        let plain = |from: i64| ((from..from + 2).map(|o| record(o, Some(b"p"), -1, false, false)).collect::<Vec<_>>(), Compression::None);
        let data = encode(&[
            txn(0, 7),                            // 0..3 aborted (producer 7)
            txn(3, 8),                            // 3..6 committed (producer 8)
            plain(6),                             // 6..8
            (vec![marker(8, 7, true)], Compression::None),  // abort marker of 7
            (vec![marker(9, 8, false)], Compression::None), // commit marker of 8
            txn(10, 7),                           // 10..13 producer 7 again, committed later
            (vec![marker(13, 7, false)], Compression::None),
        ]);
        let (records, next) = read(&data, 0, &[(7, 0)]);
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![3, 4, 5, 6, 7, 10, 11, 12]);
        assert_eq!(next, Some(14), "past the last marker");
        // read_uncommitted-style (no aborted list): every data record, never a marker.
        let (records, _) = read(&data, 0, &[]);
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12]);
    }

    #[test]
    fn append_time_topics_stamp_every_record_with_the_batchs_time() {
        let records: Vec<Record> = (0..3).map(|o| record(o, Some(b"x"), -1, false, false)).collect();
        let mut data = encode(&[(records, Compression::None)]).to_vec();
        // kafka-protocol's encoder leaves the timestamp-type bit to the broker: a broker stamping
        // on append sets it (the CRC is not checked on reading).
        data[22] |= LOG_APPEND_TIME as u8;
        let (read_back, _) = read(&Bytes::from(data), 0, &[]);
        let newest = 1_700_000_000_000 + 2 * 7;
        assert_eq!(read_back.iter().map(|r| r.1).collect::<Vec<_>>(), vec![newest; 3]);
    }

    #[test]
    fn old_formats_and_garbage_are_errors_not_panics() {
        let data = encode(&[((0..2).map(|o| record(o, Some(b"x"), -1, false, false)).collect(), Compression::None)]);
        let mut old = data.to_vec();
        old[16] = 1;
        let old = Bytes::from(old);
        let mut fetched = Records::default();
        assert_eq!(read_partition(0, &old, 0, &[], &mut fetched), Err(BatchError::OldFormat { offset: 0, magic: 1 }));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for _ in 0..2000 {
            let mut bytes = data.to_vec();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] = rng.random();
            }
            let bytes = Bytes::from(bytes);
            let mut fetched = Records::default();
            // Any outcome but a panic; references always lie inside their buffer.
            if read_partition(0, &bytes, 0, &[], &mut fetched).is_ok() {
                for r in &fetched.records {
                    let _ = fetched.payload(r);
                }
            }
        }
    }
}
