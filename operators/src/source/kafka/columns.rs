//! Raw rows appended column by column as records are decoded: each value is copied once, into its
//! column's Arrow buffer, whatever the graph's reader schema is.
//!
//! The event columns follow the raw table's schema (the reader schema's fields, see
//! [`crate::pipeline::avro`]); a value arrives either from the read plan (a primitive as read
//! from the body, converted to the reader field's type) or from apache-avro's resolved record
//! (any type, nested ones included). A record that cannot be read appends nulls for its event
//! columns and keeps its reason, detail and bytes.
//!
//! This runs once per Kafka record, so it is built for that:
//! - a primitive column is a typed buffer ([`EventColumn`]): a planned value goes in by a `match`,
//!   with no dynamic dispatch, and the plan writes each value straight into its column as it reads
//!   it. A body the plan gives up on halfway is cut back out of the columns (typed buffers can
//!   be truncated, Arrow's builders cannot) before generic decoding reads it again;
//! - `decode_error`, `decode_detail` and `payload`, null for almost every row, are built when
//!   the batch finishes, from the few undecodable records.

use std::sync::Arc;

use apache_avro::types::Value;
use arrow::array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBufferBuilder, BooleanBuilder, NullBufferBuilder, Date32Builder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, LargeBinaryBuilder, ListBuilder, MapBuilder, StringBuilder, StructBuilder, TimestampMicrosecondBuilder, make_builder,
};
use arrow::array::{ArrayRef, BooleanArray, Date32Array, GenericBinaryArray, PrimitiveArray, RecordBatch, StringArray};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{ArrowPrimitiveType, DataType, Float32Type, Float64Type, Int32Type, Int64Type, SchemaRef, TimeUnit};
use arrow_array::OffsetSizeTrait;

use crate::error::{Context, Error, Result};
use crate::model::{Undecodable, day_of_millis};
use crate::source::kafka::read_plan::ReadPlan;

/// A value the read plan took from a body, already converted to its reader field's type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Primitive<'a> {
    Null,
    Boolean(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Bytes(&'a [u8]),
    String(&'a str),
}

/// Where a record came from.
#[derive(Debug, Clone, Copy)]
pub struct Coordinates<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub ingestion_ts_ms: i64,
}

/// A primitive column being built: values and validity, cut back to a row count at will.
struct Values<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
    nulls: NullBufferBuilder,
    /// The rows a batch is expected to reach: every batch's buffer is reserved for this many.
    capacity: usize,
}

impl<T: ArrowPrimitiveType> Values<T> {
    fn new(rows: usize) -> Self {
        Values { values: Vec::with_capacity(rows), nulls: NullBufferBuilder::new(rows), capacity: rows }
    }

    fn push(&mut self, value: T::Native) {
        self.values.push(value);
        self.nulls.append_non_null();
    }

    fn push_null(&mut self) {
        self.values.push(T::Native::default());
        self.nulls.append_null();
    }

    fn truncate(&mut self, rows: usize) {
        self.values.truncate(rows);
        self.nulls.truncate(rows);
    }

    fn finish(&mut self) -> ArrayRef {
        Arc::new(self.finish_typed())
    }

    fn finish_typed(&mut self) -> PrimitiveArray<T> {
        let rows = self.values.len();
        // A buffer sized for the last batch would double (a copy, and twice the fresh pages) in
        // the next one whenever it is a row longer.
        let values = std::mem::replace(&mut self.values, Vec::with_capacity(rows.max(self.capacity)));
        PrimitiveArray::<T>::new(ScalarBuffer::from(values), self.nulls.finish())
    }
}

/// A boolean column being built.
struct Flags {
    values: BooleanBufferBuilder,
    nulls: NullBufferBuilder,
    capacity: usize,
}

impl Flags {
    fn new(rows: usize) -> Self {
        Flags { values: BooleanBufferBuilder::new(rows), nulls: NullBufferBuilder::new(rows), capacity: rows }
    }

    fn push(&mut self, value: bool) {
        self.values.append(value);
        self.nulls.append_non_null();
    }

    fn push_null(&mut self) {
        self.values.append(false);
        self.nulls.append_null();
    }

    fn truncate(&mut self, rows: usize) {
        self.values.truncate(rows);
        self.nulls.truncate(rows);
    }

    fn finish(&mut self) -> ArrayRef {
        // Arrow's builder starts again with no room at all.
        let values = std::mem::replace(&mut self.values, BooleanBufferBuilder::new(self.capacity)).finish();
        Arc::new(BooleanArray::new(values, self.nulls.finish()))
    }
}

/// A string or binary column being built: offsets into one data buffer.
struct Bytes<O: OffsetSizeTrait> {
    offsets: Vec<O>,
    data: Vec<u8>,
    nulls: NullBufferBuilder,
    /// The rows a batch is expected to reach (see [`Values::capacity`]).
    capacity: usize,
}

impl<O: OffsetSizeTrait> Bytes<O> {
    fn new(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(O::usize_as(0));
        Bytes { offsets, data: Vec::with_capacity(rows * 16), nulls: NullBufferBuilder::new(rows), capacity: rows }
    }

    fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    /// `false` when the data would outgrow the offset type (2 GiB for `i32` offsets).
    fn push(&mut self, value: &[u8]) -> bool {
        let Some(end) = O::from_usize(self.data.len() + value.len()) else { return false };
        self.data.extend_from_slice(value);
        self.offsets.push(end);
        self.nulls.append_non_null();
        true
    }

    fn push_null(&mut self) {
        self.offsets.push(*self.offsets.last().expect("offsets start with 0"));
        self.nulls.append_null();
    }

    fn truncate(&mut self, rows: usize) {
        self.offsets.truncate(rows + 1);
        self.data.truncate(self.offsets[rows].as_usize());
        self.nulls.truncate(rows);
    }

    /// The offsets, data and validity so far; the buffers start again empty, with room for a
    /// batch of `capacity` rows as long on average as these plus a quarter: a buffer that
    /// overflows doubles (a copy and twice the fresh pages), while room never written costs no
    /// memory.
    fn take(&mut self) -> (OffsetBuffer<O>, arrow::buffer::Buffer, Option<arrow::buffer::NullBuffer>) {
        let rows = self.rows();
        let mut offsets = Vec::with_capacity(self.offsets.capacity());
        offsets.push(O::usize_as(0));
        let offsets = std::mem::replace(&mut self.offsets, offsets);
        let bytes = self.data.len();
        let room = match rows {
            0 => self.data.capacity(),
            rows => bytes.div_ceil(rows) * rows.max(self.capacity) / 4 * 5,
        };
        let data = std::mem::replace(&mut self.data, Vec::with_capacity(room));
        // Offsets start at 0 and only grow (`push` appends the data's new end, `push_null` repeats
        // the last), so they are valid for the data.
        (OffsetBuffer::new(ScalarBuffer::from(offsets)), data.into(), self.nulls.finish())
    }
}

/// An event column being built: typed for the primitive types a read plan fills, so a planned
/// value goes in by a `match`; any other type (records, lists, maps, timestamps) as the builder
/// Arrow makes for it, filled from apache-avro's values.
enum EventColumn {
    Boolean(Flags),
    Int(Values<Int32Type>),
    Long(Values<Int64Type>),
    Float(Values<Float32Type>),
    Double(Values<Float64Type>),
    String(Bytes<i32>),
    Binary(Bytes<i32>),
    LargeBinary(Bytes<i64>),
    Other(Box<dyn ArrayBuilder>),
}

impl EventColumn {
    fn new(ty: &DataType, rows: usize) -> EventColumn {
        match ty {
            DataType::Boolean => EventColumn::Boolean(Flags::new(rows)),
            DataType::Int32 => EventColumn::Int(Values::new(rows)),
            DataType::Int64 => EventColumn::Long(Values::new(rows)),
            DataType::Float32 => EventColumn::Float(Values::new(rows)),
            DataType::Float64 => EventColumn::Double(Values::new(rows)),
            DataType::Utf8 => EventColumn::String(Bytes::new(rows)),
            DataType::Binary => EventColumn::Binary(Bytes::new(rows)),
            DataType::LargeBinary => EventColumn::LargeBinary(Bytes::new(rows)),
            other => EventColumn::Other(make_builder(other, rows)),
        }
    }

    fn rows(&self) -> usize {
        match self {
            EventColumn::Boolean(c) => c.nulls.len(),
            EventColumn::Int(c) => c.values.len(),
            EventColumn::Long(c) => c.values.len(),
            EventColumn::Float(c) => c.values.len(),
            EventColumn::Double(c) => c.values.len(),
            EventColumn::String(c) | EventColumn::Binary(c) => c.rows(),
            EventColumn::LargeBinary(c) => c.rows(),
            EventColumn::Other(b) => b.len(),
        }
    }

    /// Appends a planned value; `false` if the column does not take it (the plan was made for the
    /// reader schema these columns follow, so that is a bug the caller reports).
    #[inline]
    fn push(&mut self, value: Primitive<'_>) -> bool {
        match (self, value) {
            (EventColumn::Boolean(c), Primitive::Boolean(v)) => c.push(v),
            (EventColumn::Int(c), Primitive::Int(v)) => c.push(v),
            (EventColumn::Long(c), Primitive::Long(v)) => c.push(v),
            (EventColumn::Float(c), Primitive::Float(v)) => c.push(v),
            (EventColumn::Double(c), Primitive::Double(v)) => c.push(v),
            (EventColumn::String(c), Primitive::String(v)) => return c.push(v.as_bytes()),
            (EventColumn::Binary(c), Primitive::Bytes(v)) => return c.push(v),
            (EventColumn::LargeBinary(c), Primitive::Bytes(v)) => return c.push(v),
            (column, Primitive::Null) => return column.push_typed_null(),
            _ => return false,
        }
        true
    }

    /// Appends a null to a typed column; `false` for any other.
    fn push_typed_null(&mut self) -> bool {
        match self {
            EventColumn::Boolean(c) => c.push_null(),
            EventColumn::Int(c) => c.push_null(),
            EventColumn::Long(c) => c.push_null(),
            EventColumn::Float(c) => c.push_null(),
            EventColumn::Double(c) => c.push_null(),
            EventColumn::String(c) | EventColumn::Binary(c) => c.push_null(),
            EventColumn::LargeBinary(c) => c.push_null(),
            EventColumn::Other(_) => return false,
        }
        true
    }

    /// Appends a null (for a struct: a null struct with null children).
    fn push_null(&mut self, ty: &DataType) {
        match self {
            EventColumn::Other(b) => append_null(b.as_mut(), ty),
            typed => {
                typed.push_typed_null();
            }
        }
    }

    /// Appends an apache-avro value resolved into the reader schema (so of the column's type).
    fn push_value(&mut self, ty: &DataType, value: Value) -> std::result::Result<(), String> {
        let value = match value {
            Value::Union(_, inner) => *inner,
            other => other,
        };
        let taken = match (&mut *self, value) {
            (EventColumn::Other(builder), value) => return append_value(builder.as_mut(), ty, value),
            (column, Value::Null) => column.push_typed_null(),
            (EventColumn::Long(c), Value::Int(v)) => {
                c.push(v.into());
                true
            }
            (EventColumn::Double(c), Value::Float(v)) => {
                c.push(v.into());
                true
            }
            (EventColumn::String(c), Value::Enum(_, symbol)) => c.push(symbol.as_bytes()),
            (EventColumn::String(c), Value::Uuid(v)) => c.push(v.to_string().as_bytes()),
            (EventColumn::String(c), Value::String(v)) => c.push(v.as_bytes()),
            (EventColumn::Binary(c), Value::Bytes(v) | Value::Fixed(_, v)) => c.push(&v),
            (EventColumn::LargeBinary(c), Value::Bytes(v) | Value::Fixed(_, v)) => c.push(&v),
            (column, Value::Boolean(v)) => column.push(Primitive::Boolean(v)),
            (column, Value::Int(v)) => column.push(Primitive::Int(v)),
            (column, Value::Long(v)) => column.push(Primitive::Long(v)),
            (column, Value::Float(v)) => column.push(Primitive::Float(v)),
            (column, Value::Double(v)) => column.push(Primitive::Double(v)),
            (_, other) => return Err(format!("the value {other:?} does not fit a {ty} column")),
        };
        if taken { Ok(()) } else { Err(format!("a {ty} column does not take this value (or outgrew its offsets)")) }
    }

    /// Cuts the column back to `rows` rows (an Arrow builder cannot be: plans never fill those).
    fn truncate(&mut self, rows: usize) {
        match self {
            EventColumn::Boolean(c) => c.truncate(rows),
            EventColumn::Int(c) => c.truncate(rows),
            EventColumn::Long(c) => c.truncate(rows),
            EventColumn::Float(c) => c.truncate(rows),
            EventColumn::Double(c) => c.truncate(rows),
            EventColumn::String(c) | EventColumn::Binary(c) => c.truncate(rows),
            EventColumn::LargeBinary(c) => c.truncate(rows),
            EventColumn::Other(_) => {}
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            EventColumn::Boolean(c) => c.finish(),
            EventColumn::Int(c) => c.finish(),
            EventColumn::Long(c) => c.finish(),
            EventColumn::Float(c) => c.finish(),
            EventColumn::Double(c) => c.finish(),
            EventColumn::String(c) => {
                let (offsets, data, nulls) = c.take();
                // SAFETY: every value pushed into a string column came as a `&str` (the plan and
                // apache-avro check UTF-8), and the offsets only fall on their boundaries.
                Arc::new(unsafe { StringArray::new_unchecked(offsets, data, nulls) })
            }
            EventColumn::Binary(c) => {
                let (offsets, data, nulls) = c.take();
                Arc::new(GenericBinaryArray::<i32>::new(offsets, data, nulls))
            }
            EventColumn::LargeBinary(c) => {
                let (offsets, data, nulls) = c.take();
                Arc::new(GenericBinaryArray::<i64>::new(offsets, data, nulls))
            }
            EventColumn::Other(b) => b.finish(),
        }
    }
}

/// Builders for every column of the raw table.
pub struct RawColumns {
    schema: SchemaRef,
    events: Vec<EventColumn>,
    /// The topic of the rows so far, as runs of (topic, rows): a consumer reads one topic, so this
    /// is one run, where a string per row cost a copy and three appends per record.
    topics: Vec<(Box<str>, usize)>,
    partition: Values<Int32Type>,
    offset: Values<Int64Type>,
    ingestion_ts_ms: Values<Int64Type>,
    /// The undecodable records among them: their row, reason, detail and bytes.
    undecodable: Vec<(usize, Undecodable)>,
}

/// The raw table's columns after the event's own.
const COORDINATES: usize = 8;

impl RawColumns {
    /// Builders for `schema` (the raw table's), with room for `rows` rows.
    pub fn new(schema: &SchemaRef, rows: usize) -> Result<RawColumns> {
        let fields = schema.fields();
        if fields.len() < COORDINATES {
            return Err(Error::Internal("the raw table has no coordinate columns".into()));
        }
        let events = fields[..fields.len() - COORDINATES].iter().map(|f| EventColumn::new(f.data_type(), rows)).collect();
        Ok(RawColumns {
            schema: schema.clone(),
            events,
            topics: Vec::new(),
            partition: Values::new(rows),
            offset: Values::new(rows),
            ingestion_ts_ms: Values::new(rows),
            undecodable: Vec::new(),
        })
    }

    fn coordinates(&mut self, at: Coordinates<'_>) {
        match self.topics.last_mut() {
            Some((topic, rows)) if **topic == *at.topic => *rows += 1,
            _ => self.topics.push((at.topic.into(), 1)),
        }
        self.partition.push(at.partition);
        self.offset.push(at.offset);
        self.ingestion_ts_ms.push(at.ingestion_ts_ms);
    }

    /// One record read by `plan` (made for the reader schema these columns follow) straight into
    /// the columns. `Ok(false)`: the plan does not read this body cleanly, nothing was appended;
    /// decode it the generic way.
    pub fn append_planned(&mut self, plan: &ReadPlan, body: &[u8], at: Coordinates<'_>) -> Result<bool> {
        let rows = self.rows();
        let events = &mut self.events;
        let mut misfit = None;
        let read = plan.read_into(body, |index, value| {
            if !events.get_mut(index).is_some_and(|column| column.push(value)) {
                misfit.get_or_insert_with(|| format!("reader field {index} does not take {value:?}"));
            }
        });
        if let Some(misfit) = misfit {
            return Err(Error::Internal(format!("a read plan does not fit the raw columns: {misfit}")));
        }
        if read.is_none() {
            events.iter_mut().for_each(|column| column.truncate(rows));
            return Ok(false);
        }
        // Fields the writer lacks, or holds as null, take the plan's value for them (a plan whose
        // writer always gives every field a value leaves none).
        if !plan.fills_every_field() {
            for (index, column) in events.iter_mut().enumerate() {
                if column.rows() == rows && !column.push(plan.default_of(index)) {
                    return Err(Error::Internal(format!("reader field {index} does not take its default {:?}", plan.default_of(index))));
                }
            }
        }
        self.coordinates(at);
        Ok(true)
    }

    /// One record decoded by apache-avro and resolved into the reader schema.
    pub fn append_record(&mut self, record: Value, at: Coordinates<'_>) -> std::result::Result<(), String> {
        let Value::Record(fields) = record else {
            return Err("the body is not a record".into());
        };
        if fields.len() != self.events.len() {
            return Err(format!("the record has {} fields, the reader schema {}", fields.len(), self.events.len()));
        }
        for (index, (name, value)) in fields.into_iter().enumerate() {
            let ty = self.schema.field(index).data_type();
            self.events[index].push_value(ty, value).map_err(|problem| format!("field {name}: {problem}"))?;
        }
        self.coordinates(at);
        Ok(())
    }

    /// One record whose bytes could not be read.
    pub fn append_undecodable(&mut self, undecodable: Undecodable, at: Coordinates<'_>) {
        for (index, column) in self.events.iter_mut().enumerate() {
            column.push_null(self.schema.field(index).data_type());
        }
        self.undecodable.push((self.rows(), undecodable));
        self.coordinates(at);
    }

    /// The rows so far as a batch of the raw table's schema; the builders start again empty.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let undecodable = self.undecodable_columns();
        let mut columns: Vec<ArrayRef> = self.events.iter_mut().map(EventColumn::finish).collect();
        columns.push(Arc::new(topic_column(std::mem::take(&mut self.topics))));
        columns.push(self.partition.finish());
        columns.push(self.offset.finish());
        let ingestion_ts_ms = self.ingestion_ts_ms.finish_typed();
        // The date of each ingestion time, in one pass over the column instead of per record.
        let ingestion_date: Date32Array = arrow::compute::unary(&ingestion_ts_ms, day_of_millis);
        columns.push(Arc::new(ingestion_ts_ms));
        columns.push(Arc::new(ingestion_date));
        columns.extend(undecodable);
        self.undecodable.clear();
        // Builders name list items and map entries their own way; the table's names win.
        let columns = columns
            .iter()
            .zip(self.schema.fields())
            .map(|(column, field)| crate::pipeline::types::conform(column, field.data_type()))
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.schema.clone(), columns).context(|| "assembling raw rows".into())
    }

    /// Rows appended since the last batch (each appends its coordinates once).
    fn rows(&self) -> usize {
        self.offset.values.len()
    }

    /// `decode_error`, `decode_detail` and `payload` of the rows so far: null but for the
    /// undecodable records.
    fn undecodable_columns(&self) -> [ArrayRef; 3] {
        let rows = self.rows();
        let mut errors = StringBuilder::with_capacity(rows, 0);
        let mut details = StringBuilder::with_capacity(rows, 0);
        let mut payloads = LargeBinaryBuilder::with_capacity(rows, 0);
        let mut next = 0;
        for (row, undecodable) in &self.undecodable {
            let gap = row - next;
            errors.append_nulls(gap);
            details.append_nulls(gap);
            payloads.append_nulls(gap);
            errors.append_value(undecodable.reason.as_str());
            details.append_value(&undecodable.detail);
            payloads.append_value(&undecodable.payload);
            next = row + 1;
        }
        let rest = rows - next;
        errors.append_nulls(rest);
        details.append_nulls(rest);
        payloads.append_nulls(rest);
        [Arc::new(errors.finish()), Arc::new(details.finish()), Arc::new(payloads.finish())]
    }
}

/// The topic column of runs of (topic, rows): each run's text repeated at once.
fn topic_column(runs: Vec<(Box<str>, usize)>) -> StringArray {
    let offsets = OffsetBuffer::<i32>::from_lengths(runs.iter().flat_map(|(topic, rows)| std::iter::repeat_n(topic.len(), *rows)));
    let text: String = runs.iter().map(|(topic, rows)| topic.repeat(*rows)).collect();
    // SAFETY: the text is whole topics (`str`s) one after another, and each offset ends one.
    unsafe { StringArray::new_unchecked(offsets, text.into_bytes().into(), None) }
}

fn downcast<T: 'static>(builder: &mut dyn ArrayBuilder) -> Option<&mut T> {
    builder.as_any_mut().downcast_mut::<T>()
}

/// Appends a null of `ty` (for a struct: a null struct with null children).
fn append_null(builder: &mut dyn ArrayBuilder, ty: &DataType) {
    match ty {
        DataType::Boolean => downcast::<BooleanBuilder>(builder).map(|b| b.append_null()),
        DataType::Int32 => downcast::<Int32Builder>(builder).map(|b| b.append_null()),
        DataType::Int64 => downcast::<Int64Builder>(builder).map(|b| b.append_null()),
        DataType::Float32 => downcast::<Float32Builder>(builder).map(|b| b.append_null()),
        DataType::Float64 => downcast::<Float64Builder>(builder).map(|b| b.append_null()),
        DataType::Utf8 => downcast::<StringBuilder>(builder).map(|b| b.append_null()),
        DataType::Binary => downcast::<BinaryBuilder>(builder).map(|b| b.append_null()),
        DataType::LargeBinary => downcast::<LargeBinaryBuilder>(builder).map(|b| b.append_null()),
        DataType::Date32 => downcast::<Date32Builder>(builder).map(|b| b.append_null()),
        DataType::Timestamp(TimeUnit::Microsecond, _) => downcast::<TimestampMicrosecondBuilder>(builder).map(|b| b.append_null()),
        DataType::List(_) => downcast::<ListBuilder<Box<dyn ArrayBuilder>>>(builder).map(|b| b.append(false)),
        DataType::Map(_, _) => downcast::<MapBuilder<Box<dyn ArrayBuilder>, Box<dyn ArrayBuilder>>>(builder).map(|b| {
            let _ = b.append(false);
        }),
        DataType::Struct(fields) => downcast::<StructBuilder>(builder).map(|b| {
            for (index, field) in fields.iter().enumerate() {
                if let Some(child) = b.field_builders_mut().get_mut(index) {
                    append_null(child.as_mut(), field.data_type());
                }
            }
            b.append(false)
        }),
        _ => None,
    };
}

/// Appends an apache-avro value (resolved into the reader schema, so of the column's type).
fn append_value(builder: &mut dyn ArrayBuilder, ty: &DataType, value: Value) -> std::result::Result<(), String> {
    let value = match value {
        Value::Union(_, inner) => *inner,
        other => other,
    };
    let mismatch = |value: &Value| format!("the value {value:?} does not fit a {ty} column");
    let missing = || format!("no builder for a {ty} column");
    match (ty, value) {
        (_, Value::Null) => append_null(builder, ty),
        (DataType::Boolean, Value::Boolean(v)) => downcast::<BooleanBuilder>(builder).ok_or_else(missing)?.append_value(v),
        (DataType::Int32, Value::Int(v)) => downcast::<Int32Builder>(builder).ok_or_else(missing)?.append_value(v),
        (DataType::Int64, Value::Long(v)) => downcast::<Int64Builder>(builder).ok_or_else(missing)?.append_value(v),
        (DataType::Int64, Value::Int(v)) => downcast::<Int64Builder>(builder).ok_or_else(missing)?.append_value(v.into()),
        (DataType::Float32, Value::Float(v)) => downcast::<Float32Builder>(builder).ok_or_else(missing)?.append_value(v),
        (DataType::Float64, Value::Double(v)) => downcast::<Float64Builder>(builder).ok_or_else(missing)?.append_value(v),
        (DataType::Float64, Value::Float(v)) => downcast::<Float64Builder>(builder).ok_or_else(missing)?.append_value(v.into()),
        (DataType::Utf8, Value::String(v)) => downcast::<StringBuilder>(builder).ok_or_else(missing)?.append_value(v),
        (DataType::Utf8, Value::Enum(_, symbol)) => downcast::<StringBuilder>(builder).ok_or_else(missing)?.append_value(symbol),
        (DataType::Utf8, Value::Uuid(v)) => downcast::<StringBuilder>(builder).ok_or_else(missing)?.append_value(v.to_string()),
        (DataType::LargeBinary, Value::Bytes(v) | Value::Fixed(_, v)) => downcast::<LargeBinaryBuilder>(builder).ok_or_else(missing)?.append_value(v),
        (DataType::Binary, Value::Bytes(v) | Value::Fixed(_, v)) => downcast::<BinaryBuilder>(builder).ok_or_else(missing)?.append_value(v),
        (DataType::Date32, Value::Date(v)) => downcast::<Date32Builder>(builder).ok_or_else(missing)?.append_value(v),
        (DataType::Timestamp(TimeUnit::Microsecond, _), Value::TimestampMillis(v) | Value::LocalTimestampMillis(v)) => {
            let micros = v.checked_mul(1000).ok_or_else(|| format!("timestamp {v} ms is out of range"))?;
            downcast::<TimestampMicrosecondBuilder>(builder).ok_or_else(missing)?.append_value(micros)
        }
        (DataType::Timestamp(TimeUnit::Microsecond, _), Value::TimestampMicros(v) | Value::LocalTimestampMicros(v)) => {
            downcast::<TimestampMicrosecondBuilder>(builder).ok_or_else(missing)?.append_value(v)
        }
        (DataType::List(item), Value::Array(values)) => {
            let list = downcast::<ListBuilder<Box<dyn ArrayBuilder>>>(builder).ok_or_else(missing)?;
            for value in values {
                append_value(list.values().as_mut(), item.data_type(), value)?;
            }
            list.append(true)
        }
        (DataType::Map(entries, _), Value::Map(values)) => {
            let DataType::Struct(kv) = entries.data_type() else { return Err(missing()) };
            let value_type = kv[1].data_type().clone();
            let map = downcast::<MapBuilder<Box<dyn ArrayBuilder>, Box<dyn ArrayBuilder>>>(builder).ok_or_else(missing)?;
            let mut entries: Vec<(String, Value)> = values.into_iter().collect();
            // Avro maps have no order; the table gets one, so equal maps are equal rows.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, value) in entries {
                downcast::<StringBuilder>(map.keys().as_mut()).ok_or_else(missing)?.append_value(key);
                append_value(map.values().as_mut(), &value_type, value)?;
            }
            map.append(true).map_err(|e| e.to_string())?
        }
        (DataType::Struct(fields), Value::Record(values)) => {
            let record = downcast::<StructBuilder>(builder).ok_or_else(missing)?;
            if values.len() != fields.len() {
                return Err(format!("a record of {} fields for a struct of {}", values.len(), fields.len()));
            }
            for (index, ((_, value), field)) in values.into_iter().zip(fields.iter()).enumerate() {
                let child = record.field_builders_mut().get_mut(index).ok_or_else(missing)?;
                append_value(child.as_mut(), field.data_type(), value)?;
            }
            record.append(true)
        }
        (_, other) => return Err(mismatch(&other)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};

    use super::*;
    use crate::model::RejectReason;

    const CLICK: &str = r#"{"type":"record","name":"Click","fields":[
        {"name":"id","type":"long"},
        {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"kind","type":["null",{"type":"enum","name":"K","symbols":["VIEW","BUY"]}]},
        {"name":"page","type":{"type":"record","name":"P","fields":[{"name":"url","type":"string"}]}},
        {"name":"tags","type":{"type":"array","items":"string"}},
        {"name":"attrs","type":{"type":"map","values":"double"}}
    ]}"#;

    /// The raw table's schema for `reader`, keyed by `key`, ordered and partitioned by `at`.
    fn raw_schema_of(reader: &apache_avro::Schema, key: &str, partition_by: &str) -> SchemaRef {
        let upsert = crate::pipeline::UpsertSection {
            key: crate::pipeline::KeyColumns::One(key.into()),
            key_type: Default::default(),
            order_by: "at".into(),
            partition_by: partition_by.into(),
            lateness: "1d".into(),
        };
        let curated = crate::pipeline::CuratedSection { columns: vec![key.into(), "at".into(), "at_day".into()] };
        let pipeline = crate::pipeline::Pipeline::new(reader, &upsert, &[], Vec::new(), &curated).unwrap();
        crate::schema::arrow_schema(&pipeline.raw_layout().unwrap().schema).unwrap()
    }

    fn raw_schema() -> SchemaRef {
        let reader = apache_avro::Schema::parse_str(CLICK).unwrap();
        let mut next = 0;
        assert_eq!(crate::pipeline::avro::event_columns(&reader, 1, &mut next).unwrap().len(), 6);
        raw_schema_of(&reader, "id", "day(at)")
    }

    /// A reader of every primitive type, with defaults, so writers may leave fields out.
    const FLAT: &str = r#"{"type":"record","name":"Flat","fields":[
        {"name":"id","type":"string"},
        {"name":"note","type":["null","string"],"default":null},
        {"name":"score","type":"float","default":0.5},
        {"name":"at","type":"long","default":7},
        {"name":"blob","type":["null","bytes"],"default":null},
        {"name":"flag","type":"boolean","default":true},
        {"name":"n","type":"int","default":3},
        {"name":"x","type":"double","default":1.5}
    ]}"#;

    /// A writer that leaves fields out, promotes others, has one the reader lacks and a nullable
    /// `note` where the reader's is too.
    const FLAT_WRITER: &str = r#"{"type":"record","name":"Flat","fields":[
        {"name":"junk","type":["null","string"]},
        {"name":"id","type":"string"},
        {"name":"at","type":"int"},
        {"name":"score","type":"long"},
        {"name":"note","type":["string","null"]},
        {"name":"flag","type":"boolean"}
    ]}"#;

    #[test]
    fn planned_records_make_the_same_batch_as_generic_decoding_and_a_failed_plan_leaves_nothing() {
        use apache_avro::Schema;
        use rand::{Rng, SeedableRng};

        use crate::source::kafka::confluent::{decode_generic, named_types};
        use crate::source::kafka::read_plan::ReadPlan;

        let reader = Schema::parse_str(FLAT).unwrap();
        let schema = raw_schema_of(&reader, "id", "day(at, seconds)");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let at = |offset| Coordinates { topic: "flat", partition: 0, offset, ingestion_ts_ms: 0 };
        for (writer, resolve) in [(Schema::parse_str(FLAT).unwrap(), false), (Schema::parse_str(FLAT_WRITER).unwrap(), true)] {
            let plan = ReadPlan::new(&writer, &reader, resolve).expect("flat records get a plan");
            let names = named_types(&writer).unwrap();
            let (mut planned, mut generic) = (RawColumns::new(&schema, 8).unwrap(), RawColumns::new(&schema, 8).unwrap());
            let (mut by_plan, mut refused) = (0, 0);
            for offset in 0..400 {
                let Schema::Record(record) = &writer else { unreachable!("a record") };
                let values = record.fields.iter().map(|field| {
                    let value = match &field.schema {
                        Schema::String => Value::String(["", "e-1", "héllo"][rng.random_range(0..3)].into()),
                        Schema::Long => Value::Long(rng.random_range(-5_000_000_000i64..5_000_000_000)),
                        Schema::Int => Value::Int(rng.random_range(-1000..1000)),
                        Schema::Float => Value::Float(rng.random_range(-2.0..2.0)),
                        Schema::Double => Value::Double(rng.random_range(-2.0..2.0)),
                        Schema::Boolean => Value::Boolean(rng.random_bool(0.5)),
                        Schema::Union(union) => {
                            let branch = rng.random_range(0..union.variants().len());
                            let inner = match &union.variants()[branch] {
                                Schema::Null => Value::Null,
                                Schema::Bytes => Value::Bytes(vec![1, 2, 3]),
                                _ => Value::String("n".into()),
                            };
                            Value::Union(branch as u32, Box::new(inner))
                        }
                        other => unreachable!("no values for {other:?}"),
                    };
                    (field.name.clone(), value)
                });
                let mut body = apache_avro::to_avro_datum(&writer, Value::Record(values.collect())).unwrap();
                // A third of the bodies are cut short, so plans give up halfway through.
                if rng.random_bool(0.33) {
                    body.truncate(rng.random_range(0..body.len()));
                }
                let generic_value = decode_generic(&writer, &names, resolve, &reader, &body);
                if planned.append_planned(&plan, &body, at(offset)).unwrap() {
                    by_plan += 1;
                } else if let Ok(value) = &generic_value {
                    planned.append_record(value.clone(), at(offset)).unwrap();
                }
                match generic_value {
                    Ok(value) => generic.append_record(value, at(offset)).unwrap(),
                    Err(_) => refused += 1,
                }
            }
            assert!(by_plan > 200 && refused > 50, "by plan {by_plan}, refused {refused}: the test needs both");
            assert_eq!(planned.finish().unwrap(), generic.finish().unwrap(), "writer {}", writer.canonical_form());
        }
    }

    #[test]
    fn nested_records_enums_maps_and_timestamps_land_in_their_columns() {
        let mut columns = RawColumns::new(&raw_schema(), 4).unwrap();
        let at = |offset| Coordinates { topic: "clicks", partition: 1, offset, ingestion_ts_ms: 86_400_000 };
        let record = Value::Record(vec![
            ("id".into(), Value::Long(7)),
            ("at".into(), Value::TimestampMillis(1_500)),
            ("kind".into(), Value::Union(1, Box::new(Value::Enum(1, "BUY".into())))),
            ("page".into(), Value::Record(vec![("url".into(), Value::String("/a".into()))])),
            ("tags".into(), Value::Array(vec![Value::String("x".into()), Value::String("y".into())])),
            ("attrs".into(), Value::Map([("b".to_string(), Value::Double(2.0)), ("a".to_string(), Value::Double(1.0))].into())),
        ]);
        columns.append_record(record, at(0)).unwrap();
        let refused = Undecodable { reason: RejectReason::BadFraming, detail: "short".into(), payload: vec![1, 2] };
        columns.append_undecodable(refused, at(1));
        let batch = columns.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 7);
        assert_eq!(batch.column(1).as_primitive::<TimestampMicrosecondType>().value(0), 1_500_000, "millis become micros");
        assert_eq!(batch.column(2).as_string::<i32>().value(0), "BUY");
        let page = batch.column(3).as_struct();
        assert_eq!(page.column(0).as_string::<i32>().value(0), "/a");
        assert!(page.is_null(1), "an undecodable record has null event columns");
        let tags = batch.column(4).as_list::<i32>();
        assert_eq!(tags.value(0).as_string::<i32>().iter().flatten().collect::<Vec<_>>(), ["x", "y"]);
        let attrs = batch.column(5).as_map();
        assert_eq!(attrs.keys().as_string::<i32>().iter().flatten().collect::<Vec<_>>(), ["a", "b"], "map entries in key order");
        let schema = batch.schema();
        let error = batch.column(schema.index_of("decode_error").unwrap()).as_string::<i32>();
        assert!(error.is_null(0));
        assert_eq!(error.value(1), "bad_framing");
        assert_eq!(batch.column(schema.index_of("source_offset").unwrap()).as_primitive::<Int64Type>().values().to_vec(), vec![0, 1]);
    }

    #[test]
    fn coordinates_keep_each_records_topic_and_ingestion_date_across_batches() {
        let mut columns = RawColumns::new(&raw_schema(), 4).unwrap();
        let refused = || Undecodable { reason: RejectReason::BadFraming, detail: String::new(), payload: Vec::new() };
        let day = 86_400_000;
        let topics = ["a", "a", "bb", "a", "", ""];
        for (offset, topic) in topics.iter().enumerate() {
            let at = Coordinates { topic, partition: 0, offset: offset as i64, ingestion_ts_ms: offset as i64 * day / 2 - 1 };
            columns.append_undecodable(refused(), at);
        }
        let column = |batch: &RecordBatch, name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
        let first = columns.finish().unwrap();
        assert_eq!(column(&first, "source_topic").as_string::<i32>().iter().flatten().collect::<Vec<_>>(), topics);
        let dates = column(&first, "ingestion_date");
        assert_eq!(dates.as_primitive::<arrow::datatypes::Date32Type>().values().to_vec(), [-1, 0, 0, 1, 1, 2], "the UTC day, before 1970 too");
        columns.append_undecodable(refused(), Coordinates { topic: "c", partition: 0, offset: 9, ingestion_ts_ms: 0 });
        let second = columns.finish().unwrap();
        assert_eq!(column(&second, "source_topic").as_string::<i32>().iter().flatten().collect::<Vec<_>>(), ["c"], "a batch starts with no topic");
    }
}
