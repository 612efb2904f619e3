//! The ratings sample: the typed record `runtime generate` writes and `runtime produce` sends
//! (a movie rating as the shipped graph's reader schema describes it), and typed curated rows for
//! tests and benches to read the shipped pipeline's tables back with. The engine itself never uses
//! these types: it moves Arrow batches of whatever columns a graph declares.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Date32Builder, Float32Builder, Int32Builder, Int64Builder, LargeBinaryBuilder, StringBuilder,
};
use arrow_array::{Array, ArrayRef, BooleanArray, Date32Array, Float32Array, Int32Array, Int64Array, LargeBinaryArray, RecordBatch, StringArray};
use arrow_schema::SchemaRef as ArrowSchemaRef;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};
use crate::model::{IngestPosition, Origin, RejectReason, Undecodable, day_of_millis};

fn batch(schema: &ArrowSchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(schema.clone(), columns).context(|| "assembling record batch".into())
}

pub fn format_event_id(key: u128) -> String {
    uuid::Uuid::from_u128(key).hyphenated().to_string()
}

/// One event as it sits in the raw table: the event fields exactly as ingested (any of them may be
/// missing or wrong) and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    pub event_id: Option<String>,
    pub user_id: Option<String>,
    pub movie_id: Option<String>,
    pub rating: Option<f32>,
    pub rating_timestamp: Option<i64>,
    /// Shared: every record of a topic points at one copy of its name.
    pub source_topic: std::sync::Arc<str>,
    pub source_partition: i32,
    pub source_offset: i64,
    pub ingestion_ts_ms: i64,
    /// Set when the record's bytes could not be read as an event; the event fields are then empty.
    pub undecodable: Option<Box<Undecodable>>,
}

impl RawEvent {
    pub fn ingestion_date(&self) -> i32 {
        day_of_millis(self.ingestion_ts_ms)
    }

    pub fn position(&self) -> IngestPosition {
        IngestPosition {
            ingestion_ts_ms: self.ingestion_ts_ms,
            partition: self.source_partition,
            offset: self.source_offset,
        }
    }
}

/// A rating with a total order (`f32::total_cmp`), so rows can live in ordered collections.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Rating(pub f32);

impl PartialEq for Rating {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Rating {}
impl PartialOrd for Rating {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Rating {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A curated row plus the lineage that decides upserts. `Ord` is ingestion order, which is the order
/// the upsert folds candidates in; [`Candidate::beats`] is the "latest wins" order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Candidate {
    pub position: IngestPosition,
    pub origin: Origin,
    pub rating_timestamp: i64,
    pub rating_date: i32,
    /// Ids are short: `CompactString` keeps up to 24 bytes inline, without an allocation.
    pub user_id: CompactString,
    pub movie_id: CompactString,
    pub rating: Rating,
    pub is_approved: bool,
}

impl Candidate {
    /// Total "latest wins" order: greatest `rating_timestamp`, ties to the later ingested record,
    /// and a re-processed record over its reloaded copy.
    pub fn winner_order(&self) -> (i64, IngestPosition, Origin) {
        (self.rating_timestamp, self.position, self.origin)
    }

    pub fn beats(&self, other: &Candidate) -> bool {
        self.winner_order() > other.winner_order()
    }
}

/// Raw events as a batch of the raw table's schema.
pub fn raw_to_batch(schema: &ArrowSchemaRef, events: &[RawEvent]) -> Result<RecordBatch> {
    let mut builder = RawBatchBuilder::with_capacity(events.len());
    for event in events {
        builder.push(event);
    }
    builder.finish(schema)
}

/// Raw rows appended column by column as they arrive: each value is copied once, into the
/// column's buffer, and the batch is ready without another pass over the events.
pub struct RawBatchBuilder {
    event_id: StringBuilder,
    user_id: StringBuilder,
    movie_id: StringBuilder,
    rating: Float32Builder,
    rating_timestamp: Int64Builder,
    source_topic: StringBuilder,
    source_partition: Int32Builder,
    source_offset: Int64Builder,
    ingestion_ts_ms: Int64Builder,
    ingestion_date: Date32Builder,
    decode_error: StringBuilder,
    decode_detail: StringBuilder,
    payload: LargeBinaryBuilder,
}

impl RawBatchBuilder {
    /// Room for `rows` rows of typical size without growing.
    pub fn with_capacity(rows: usize) -> Self {
        let strings = |bytes_per_row: usize| StringBuilder::with_capacity(rows, rows * bytes_per_row);
        RawBatchBuilder {
            event_id: strings(36),
            user_id: strings(8),
            movie_id: strings(8),
            rating: Float32Builder::with_capacity(rows),
            rating_timestamp: Int64Builder::with_capacity(rows),
            source_topic: strings(16),
            source_partition: Int32Builder::with_capacity(rows),
            source_offset: Int64Builder::with_capacity(rows),
            ingestion_ts_ms: Int64Builder::with_capacity(rows),
            ingestion_date: Date32Builder::with_capacity(rows),
            decode_error: StringBuilder::new(),
            decode_detail: StringBuilder::new(),
            payload: LargeBinaryBuilder::new(),
        }
    }

    pub fn push(&mut self, e: &RawEvent) {
        self.event_id.append_option(e.event_id.as_deref());
        self.user_id.append_option(e.user_id.as_deref());
        self.movie_id.append_option(e.movie_id.as_deref());
        self.rating.append_option(e.rating);
        self.rating_timestamp.append_option(e.rating_timestamp);
        self.source_topic.append_value(&*e.source_topic);
        self.source_partition.append_value(e.source_partition);
        self.source_offset.append_value(e.source_offset);
        self.ingestion_ts_ms.append_value(e.ingestion_ts_ms);
        self.ingestion_date.append_value(e.ingestion_date());
        let undecodable = e.undecodable.as_deref();
        self.decode_error.append_option(undecodable.map(|u| u.reason.as_str()));
        self.decode_detail.append_option(undecodable.map(|u| u.detail.as_str()));
        self.payload.append_option(undecodable.map(|u| u.payload.as_slice()));
    }

    pub fn len(&self) -> usize {
        self.source_offset.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn finish(mut self, schema: &ArrowSchemaRef) -> Result<RecordBatch> {
        batch(
            schema,
            vec![
                Arc::new(self.event_id.finish()),
                Arc::new(self.user_id.finish()),
                Arc::new(self.movie_id.finish()),
                Arc::new(self.rating.finish()),
                Arc::new(self.rating_timestamp.finish()),
                Arc::new(self.source_topic.finish()),
                Arc::new(self.source_partition.finish()),
                Arc::new(self.source_offset.finish()),
                Arc::new(self.ingestion_ts_ms.finish()),
                Arc::new(self.ingestion_date.finish()),
                Arc::new(self.decode_error.finish()),
                Arc::new(self.decode_detail.finish()),
                Arc::new(self.payload.finish()),
            ],
        )
    }
}

fn opt_string(array: &StringArray, row: usize) -> Option<String> {
    array.is_valid(row).then(|| array.value(row).to_owned())
}

pub fn raw_from_batch(batch: &RecordBatch, out: &mut Vec<RawEvent>) -> Result<()> {
    let c = crate::schema::Columns(batch);
    let (event_id, user_id, movie_id) =
        (c.get::<StringArray>("event_id")?, c.get::<StringArray>("user_id")?, c.get::<StringArray>("movie_id")?);
    let rating = c.get::<Float32Array>("rating")?;
    let rating_timestamp = c.get::<Int64Array>("rating_timestamp")?;
    let topic = c.get::<StringArray>("source_topic")?;
    let partition = c.get::<Int32Array>("source_partition")?;
    let offset = c.get::<Int64Array>("source_offset")?;
    let ingestion = c.get::<Int64Array>("ingestion_ts_ms")?;
    let (decode_error, decode_detail) = (c.get::<StringArray>("decode_error")?, c.get::<StringArray>("decode_detail")?);
    let payload = c.get::<LargeBinaryArray>("payload")?;
    out.reserve(batch.num_rows());
    for row in 0..batch.num_rows() {
        let undecodable = if decode_error.is_valid(row) {
            let name = decode_error.value(row);
            let reason = RejectReason::parse(name)
                .ok_or_else(|| Error::User(format!("raw table holds decode_error {name:?}, which is not a reject reason")))?;
            Some(Box::new(Undecodable {
                reason,
                detail: opt_string(decode_detail, row).unwrap_or_default(),
                payload: if payload.is_valid(row) { payload.value(row).to_vec() } else { Vec::new() },
            }))
        } else {
            None
        };
        out.push(RawEvent {
            event_id: opt_string(event_id, row),
            user_id: opt_string(user_id, row),
            movie_id: opt_string(movie_id, row),
            rating: rating.is_valid(row).then(|| rating.value(row)),
            rating_timestamp: rating_timestamp.is_valid(row).then(|| rating_timestamp.value(row)),
            source_topic: match out.last() {
                // Consecutive rows almost always share a topic: share its name too.
                Some(previous) if *previous.source_topic == *topic.value(row) => previous.source_topic.clone(),
                _ => topic.value(row).into(),
            },
            source_partition: partition.value(row),
            source_offset: offset.value(row),
            ingestion_ts_ms: ingestion.value(row),
            undecodable,
        });
    }
    Ok(())
}

/// Curated rows as a batch of the curated table's schema.
pub fn curated_to_batch<'a>(
    schema: &ArrowSchemaRef,
    rows: impl ExactSizeIterator<Item = (&'a u128, &'a Candidate)>,
) -> Result<RecordBatch> {
    let n = rows.len();
    let mut event_id = StringBuilder::with_capacity(n, n * 36);
    let mut user_id = StringBuilder::with_capacity(n, n * 8);
    let mut movie_id = StringBuilder::with_capacity(n, n * 8);
    let mut rating = Float32Builder::with_capacity(n);
    let mut approved = BooleanBuilder::with_capacity(n);
    let mut rating_ts = Int64Builder::with_capacity(n);
    let mut rating_date = Date32Builder::with_capacity(n);
    let mut ingestion = Int64Builder::with_capacity(n);
    let mut partition = Int32Builder::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut uuid_text = uuid::Uuid::encode_buffer();
    for (key, row) in rows {
        event_id.append_value(uuid::Uuid::from_u128(*key).hyphenated().encode_lower(&mut uuid_text));
        user_id.append_value(&row.user_id);
        movie_id.append_value(&row.movie_id);
        rating.append_value(row.rating.0);
        approved.append_value(row.is_approved);
        rating_ts.append_value(row.rating_timestamp);
        rating_date.append_value(row.rating_date);
        ingestion.append_value(row.position.ingestion_ts_ms);
        partition.append_value(row.position.partition);
        offset.append_value(row.position.offset);
    }
    batch(
        schema,
        vec![
            Arc::new(event_id.finish()),
            Arc::new(user_id.finish()),
            Arc::new(movie_id.finish()),
            Arc::new(rating.finish()),
            Arc::new(approved.finish()),
            Arc::new(rating_ts.finish()),
            Arc::new(rating_date.finish()),
            Arc::new(ingestion.finish()),
            Arc::new(partition.finish()),
            Arc::new(offset.finish()),
        ],
    )
}

/// Curated rows read back as seeds of the upsert.
pub fn curated_from_batch(batch: &RecordBatch, out: &mut Vec<(u128, Candidate)>) -> Result<()> {
    let c = crate::schema::Columns(batch);
    let event_id = c.get::<StringArray>("event_id")?;
    let (user_id, movie_id) = (c.get::<StringArray>("user_id")?, c.get::<StringArray>("movie_id")?);
    let rating = c.get::<Float32Array>("rating")?;
    let approved = c.get::<BooleanArray>("is_approved")?;
    let rating_ts = c.get::<Int64Array>("rating_timestamp")?;
    let rating_date = c.get::<Date32Array>("rating_date")?;
    let ingestion = c.get::<Int64Array>("ingestion_ts_ms")?;
    let partition = c.get::<Int32Array>("source_partition")?;
    let offset = c.get::<Int64Array>("source_offset")?;
    out.reserve(batch.num_rows());
    for row in 0..batch.num_rows() {
        let key = uuid::Uuid::try_parse(event_id.value(row).trim()).map(|u| u.as_u128()).ok().ok_or_else(|| {
            Error::User(format!("curated table holds event_id {:?}, which is not a UUID", event_id.value(row)))
        })?;
        out.push((
            key,
            Candidate {
                position: IngestPosition {
                    ingestion_ts_ms: ingestion.value(row),
                    partition: partition.value(row),
                    offset: offset.value(row),
                },
                origin: Origin::Seed,
                rating_timestamp: rating_ts.value(row),
                rating_date: rating_date.value(row),
                user_id: user_id.value(row).into(),
                movie_id: movie_id.value(row).into(),
                rating: Rating(rating.value(row)),
                is_approved: approved.value(row),
            },
        ));
    }
    Ok(())
}
