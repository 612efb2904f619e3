//! The three tables of the ratings pipeline, and Arrow conversions for their rows.
//!
//! - **raw**: every record as ingested (fields nullable: bad data is kept as it came) plus its source
//!   coordinates; partitioned by `identity(ingestion_date)`. A record whose bytes could not be
//!   decoded keeps them in `payload`, with `decode_error` (the reject reason) and `decode_detail`.
//! - **curated** (`movie_ratings`): one row per `event_id`; partitioned by `identity(rating_date)`.
//!   After the seven contract columns it carries the winning record's ingestion position
//!   (`ingestion_ts_ms`, `source_partition`, `source_offset`): ties and re-processing are decided
//!   by it, so a restart needs it to decide them the same way as a run that never stopped.
//! - **rejected**: every record kept out of curated, with reason, detail, original values and
//!   coordinates, and the original bytes when they could not be decoded; partitioned by
//!   `identity(ingestion_date)`.

use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BooleanBuilder, Date32Builder, Float32Builder, Int32Builder, Int64Builder, LargeBinaryBuilder, StringBuilder,
};
use arrow_array::{Array, ArrayRef, BooleanArray, LargeBinaryArray, Date32Array, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::SchemaRef as ArrowSchemaRef;
use iceberg::spec::{Schema, Transform, UnboundPartitionSpec};

use crate::error::{Context, Error, Result};
use crate::model::{
    Candidate, IngestPosition, Origin, RawEvent, Rating, RejectReason, Rejection, Undecodable, day_of_millis, format_event_id,
};

/// A table's Iceberg schema and partition spec (identity on one date column).
pub struct TableLayout {
    pub schema: Schema,
    pub partition_column: String,
}

impl TableLayout {
    pub fn partition_spec(&self) -> Result<UnboundPartitionSpec> {
        let source = self
            .schema
            .field_by_name(&self.partition_column)
            .ok_or_else(|| Error::Internal(format!("no partition column {}", self.partition_column)))?;
        UnboundPartitionSpec::builder()
            .add_partition_field(source.id, self.partition_column.clone(), Transform::Identity)
            .map(|b| b.build())
            .context(|| "building partition spec".into())
    }
}

pub fn arrow_schema(schema: &Schema) -> Result<ArrowSchemaRef> {
    iceberg::arrow::schema_to_arrow_schema(schema)
        .map(Arc::new)
        .context(|| "converting Iceberg schema to Arrow".into())
}

fn batch(schema: &ArrowSchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
    RecordBatch::try_new(schema.clone(), columns).context(|| "assembling record batch".into())
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

/// Typed access to a batch's columns by name, with errors that name the column.
pub struct Columns<'a>(pub &'a RecordBatch);

impl<'a> Columns<'a> {
    pub fn get<T: Array + 'static>(&self, name: &str) -> Result<&'a T> {
        let column = self
            .0
            .column_by_name(name)
            .ok_or_else(|| Error::User(format!("column {name} is missing from the table")))?;
        column.as_any().downcast_ref::<T>().ok_or_else(|| {
            Error::User(format!("column {name} has type {}, which this pipeline does not read", column.data_type()))
        })
    }
}

fn opt_string(array: &StringArray, row: usize) -> Option<String> {
    array.is_valid(row).then(|| array.value(row).to_owned())
}

pub fn raw_from_batch(batch: &RecordBatch, out: &mut Vec<RawEvent>) -> Result<()> {
    let c = Columns(batch);
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
    let c = Columns(batch);
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
                as_ingested: None,
            },
        ));
    }
    Ok(())
}

/// Rejections as a batch of the rejected table's schema.
pub fn rejected_to_batch(schema: &ArrowSchemaRef, rejections: &[Rejection]) -> Result<RecordBatch> {
    let strings = |f: fn(&Rejection) -> Option<&str>| -> ArrayRef {
        Arc::new(rejections.iter().map(f).collect::<StringArray>())
    };
    batch(
        schema,
        vec![
            strings(|r| Some(r.reason.as_str())),
            strings(|r| Some(r.detail.as_str())),
            strings(|r| r.event.event_id.as_deref()),
            strings(|r| r.event.user_id.as_deref()),
            strings(|r| r.event.movie_id.as_deref()),
            Arc::new(rejections.iter().map(|r| r.event.rating).collect::<Float32Array>()),
            Arc::new(rejections.iter().map(|r| r.event.rating_timestamp).collect::<Int64Array>()),
            strings(|r| Some(&*r.event.source_topic)),
            Arc::new(rejections.iter().map(|r| Some(r.event.source_partition)).collect::<Int32Array>()),
            Arc::new(rejections.iter().map(|r| Some(r.event.source_offset)).collect::<Int64Array>()),
            Arc::new(rejections.iter().map(|r| Some(r.event.ingestion_ts_ms)).collect::<Int64Array>()),
            Arc::new(rejections.iter().map(|r| Some(day_of_millis(r.event.ingestion_ts_ms))).collect::<Date32Array>()),
            Arc::new(
                rejections
                    .iter()
                    .map(|r| r.event.undecodable.as_ref().map(|u| u.payload.as_slice()))
                    .collect::<LargeBinaryArray>(),
            ),
        ],
    )
}

/// A late update, as the rejected table records it: the record's values and coordinates as they
/// were ingested (its own event id spelling and topic, where they differ from the canonical id and
/// the graph's topic), whichever path found it late, so a replay writes the same row however it
/// is cut into runs.
pub fn late_update_rejection(key: u128, candidate: &Candidate, topic: &Arc<str>, frozen_day: i32) -> Rejection {
    let (event_id, source_topic) = match &candidate.as_ingested {
        Some(original) => (original.event_id.clone(), original.topic.clone()),
        None => (format_event_id(key), topic.clone()),
    };
    Rejection {
        reason: crate::model::RejectReason::LateUpdate,
        detail: late_update_detail(frozen_day),
        event: RawEvent {
            event_id: Some(event_id),
            user_id: Some(candidate.user_id.to_string()),
            movie_id: Some(candidate.movie_id.to_string()),
            rating: Some(candidate.rating.0),
            rating_timestamp: Some(candidate.rating_timestamp),
            source_topic,
            source_partition: candidate.position.partition,
            source_offset: candidate.position.offset,
            ingestion_ts_ms: candidate.position.ingestion_ts_ms,
            undecodable: None,
        },
    }
}

/// The detail of every late update: where the event's row sits, frozen.
pub fn late_update_detail(frozen_day: i32) -> String {
    format!("the event's current row is in frozen partition rating_date={}", crate::model::format_date(frozen_day))
}
