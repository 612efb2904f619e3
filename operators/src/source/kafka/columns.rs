//! Raw rows appended column by column as records are decoded: each value is copied once, into its
//! column's Arrow buffer, whatever the graph's reader schema is.
//!
//! The event columns follow the raw table's schema (the reader schema's fields, see
//! [`crate::pipeline::avro`]); a value arrives either from the read plan (a primitive as read
//! from the body, converted to the reader field's type) or from apache-avro's resolved record
//! (any type, nested ones included). A record that cannot be read appends nulls for its event
//! columns and keeps its reason, detail and bytes.

use std::sync::Arc;

use apache_avro::types::Value;
use arrow::array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    LargeBinaryBuilder, ListBuilder, MapBuilder, StringBuilder, StructBuilder, TimestampMicrosecondBuilder, make_builder,
};
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};

use crate::error::{Context, Error, Result};
use crate::model::{Undecodable, day_of_millis};

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

/// Builders for every column of the raw table.
pub struct RawColumns {
    schema: SchemaRef,
    events: Vec<Box<dyn ArrayBuilder>>,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    ingestion_ts_ms: Int64Builder,
    ingestion_date: Date32Builder,
    decode_error: StringBuilder,
    decode_detail: StringBuilder,
    payload: LargeBinaryBuilder,
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
        let events = fields[..fields.len() - COORDINATES].iter().map(|f| make_builder(f.data_type(), rows)).collect();
        Ok(RawColumns {
            schema: schema.clone(),
            events,
            topic: StringBuilder::with_capacity(rows, rows * 16),
            partition: Int32Builder::with_capacity(rows),
            offset: Int64Builder::with_capacity(rows),
            ingestion_ts_ms: Int64Builder::with_capacity(rows),
            ingestion_date: Date32Builder::with_capacity(rows),
            decode_error: StringBuilder::new(),
            decode_detail: StringBuilder::new(),
            payload: LargeBinaryBuilder::new(),
        })
    }

    fn coordinates(&mut self, at: Coordinates<'_>) {
        self.topic.append_value(at.topic);
        self.partition.append_value(at.partition);
        self.offset.append_value(at.offset);
        self.ingestion_ts_ms.append_value(at.ingestion_ts_ms);
        self.ingestion_date.append_value(day_of_millis(at.ingestion_ts_ms));
    }

    /// One record read by a plan: a value per event column, in column order.
    pub fn append_primitives(&mut self, values: &[Primitive<'_>], at: Coordinates<'_>) -> Result<()> {
        for (index, value) in values.iter().enumerate() {
            append_primitive(self.events[index].as_mut(), value).ok_or_else(|| {
                Error::Internal(format!("column {} does not take {value:?}", self.schema.field(index).name()))
            })?;
        }
        self.coordinates(at);
        self.decoded();
        Ok(())
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
            let ty = self.schema.field(index).data_type().clone();
            append_value(self.events[index].as_mut(), &ty, value).map_err(|problem| format!("field {name}: {problem}"))?;
        }
        self.coordinates(at);
        self.decoded();
        Ok(())
    }

    /// One record whose bytes could not be read.
    pub fn append_undecodable(&mut self, undecodable: &Undecodable, at: Coordinates<'_>) {
        for (index, builder) in self.events.iter_mut().enumerate() {
            append_null(builder.as_mut(), self.schema.field(index).data_type());
        }
        self.coordinates(at);
        self.decode_error.append_value(undecodable.reason.as_str());
        self.decode_detail.append_value(&undecodable.detail);
        self.payload.append_value(&undecodable.payload);
    }

    fn decoded(&mut self) {
        self.decode_error.append_null();
        self.decode_detail.append_null();
        self.payload.append_null();
    }

    /// The rows so far as a batch of the raw table's schema; the builders start again empty.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = self.events.iter_mut().map(|b| b.finish()).collect();
        columns.push(Arc::new(self.topic.finish()));
        columns.push(Arc::new(self.partition.finish()));
        columns.push(Arc::new(self.offset.finish()));
        columns.push(Arc::new(self.ingestion_ts_ms.finish()));
        columns.push(Arc::new(self.ingestion_date.finish()));
        columns.push(Arc::new(self.decode_error.finish()));
        columns.push(Arc::new(self.decode_detail.finish()));
        columns.push(Arc::new(self.payload.finish()));
        // Builders name list items and map entries their own way; the table's names win.
        let columns = columns
            .iter()
            .zip(self.schema.fields())
            .map(|(column, field)| crate::pipeline::types::conform(column, field.data_type()))
            .collect::<Result<Vec<_>>>()?;
        RecordBatch::try_new(self.schema.clone(), columns).context(|| "assembling raw rows".into())
    }
}

fn downcast<T: 'static>(builder: &mut dyn ArrayBuilder) -> Option<&mut T> {
    builder.as_any_mut().downcast_mut::<T>()
}

fn append_primitive(builder: &mut dyn ArrayBuilder, value: &Primitive<'_>) -> Option<()> {
    match value {
        Primitive::Null => {
            let ty = builder_type(builder)?;
            append_null(builder, &ty);
        }
        Primitive::Boolean(v) => downcast::<BooleanBuilder>(builder)?.append_value(*v),
        Primitive::Int(v) => downcast::<Int32Builder>(builder)?.append_value(*v),
        Primitive::Long(v) => downcast::<Int64Builder>(builder)?.append_value(*v),
        Primitive::Float(v) => downcast::<Float32Builder>(builder)?.append_value(*v),
        Primitive::Double(v) => downcast::<Float64Builder>(builder)?.append_value(*v),
        Primitive::String(v) => downcast::<StringBuilder>(builder)?.append_value(v),
        Primitive::Bytes(v) => match downcast::<LargeBinaryBuilder>(builder) {
            Some(b) => b.append_value(v),
            None => downcast::<BinaryBuilder>(builder)?.append_value(v),
        },
    }
    Some(())
}

/// The type a primitive builder builds (the plan only fills primitive columns).
fn builder_type(builder: &mut dyn ArrayBuilder) -> Option<DataType> {
    let any = builder.as_any();
    Some(if any.is::<BooleanBuilder>() {
        DataType::Boolean
    } else if any.is::<Int32Builder>() {
        DataType::Int32
    } else if any.is::<Int64Builder>() {
        DataType::Int64
    } else if any.is::<Float32Builder>() {
        DataType::Float32
    } else if any.is::<Float64Builder>() {
        DataType::Float64
    } else if any.is::<StringBuilder>() {
        DataType::Utf8
    } else if any.is::<LargeBinaryBuilder>() {
        DataType::LargeBinary
    } else if any.is::<BinaryBuilder>() {
        DataType::Binary
    } else {
        return None;
    })
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

    fn raw_schema() -> SchemaRef {
        let reader = apache_avro::Schema::parse_str(CLICK).unwrap();
        let mut next = 0;
        let columns = crate::pipeline::avro::event_columns(&reader, 1, &mut next).unwrap();
        let upsert = crate::pipeline::UpsertSection {
            key: crate::pipeline::KeyColumns::One("id".into()),
            key_type: Default::default(),
            order_by: "at".into(),
            partition_by: "day(at)".into(),
            lateness: "1d".into(),
        };
        assert_eq!(columns.len(), 6);
        let curated = crate::pipeline::CuratedSection { columns: vec!["id".into(), "at".into(), "at_day".into()] };
        let pipeline = crate::pipeline::Pipeline::new(&reader, &upsert, &[], Vec::new(), &curated).unwrap();
        crate::schema::arrow_schema(&pipeline.raw_layout().unwrap().schema).unwrap()
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
        columns.append_undecodable(&refused, at(1));
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
}
