//! Confluent wire format: a record value is magic byte `0`, the writer schema's id as 4 bytes big
//! endian, then the Avro binary body written with that schema.
//!
//! The decoder looks each writer schema up in the registry once (ids are immutable) and reads the
//! body with Avro schema resolution into the pipeline's reader schema (the graph's `.avsc`): a
//! writer with an extra field drops it, a writer without a field the reader gives a default gets
//! the default. What cannot be read becomes an [`Undecodable`] with its reason and the original
//! bytes:
//!
//! | what is wrong                                         | reason                |
//! |-------------------------------------------------------|-----------------------|
//! | shorter than 5 bytes, or first byte not 0             | `bad_framing`         |
//! | the registry answers 404 for the id                   | `unknown_schema_id`   |
//! | the registry's schema is not Avro we can parse        | `incompatible_schema` |
//! | writer schema does not resolve to the reader schema   | `incompatible_schema` |
//! | the body does not decode with the writer schema       | `undecodable_body`    |
//!
//! A registry that cannot be reached is not the record's fault: the decoder retries with capped
//! exponential backoff and the stream waits, until the registry answers or the run is stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;

use crate::error::{Error, Result};
use crate::model::{RejectReason, Undecodable};
use crate::source::kafka::columns::{Coordinates, RawColumns};
use crate::source::kafka::read_plan::ReadPlan;
use crate::source::kafka::registry::{Lookup, RegistryClient};

pub const MAGIC_BYTE: u8 = 0;

/// The longest string, bytes, array or map a record may declare, and so the most Avro decoding
/// allocates at once: 16 MiB (Kafka's default record limit is 1 MiB). A hostile body declaring
/// gigabytes is refused as `undecodable_body` before anything is reserved; apache-avro's own
/// default would reserve up to 512 MiB per such record.
pub const MAX_AVRO_ALLOCATION: usize = 16 << 20;

/// Caps apache-avro's allocations at [`MAX_AVRO_ALLOCATION`] for the whole process. The cap is
/// set once, by whoever decodes Avro first (manifests are Avro too), so the runtime calls this
/// at start; the stream's decoder calls it as well.
pub fn bound_avro_allocations() {
    let cap = apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
    if cap != MAX_AVRO_ALLOCATION {
        tracing::warn!(cap, "Avro decoding was used before its allocation cap was set; the cap stays at {cap} bytes");
    }
}

/// Splits a Confluent-framed value into its schema id and Avro body.
pub fn split_frame(payload: &[u8]) -> std::result::Result<(u32, &[u8]), String> {
    match payload {
        [MAGIC_BYTE, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [] => Err("the value is empty".into()),
        [first, ..] if *first != MAGIC_BYTE => Err(format!("first byte is {first:#04x}, not the magic byte 0")),
        _ => Err(format!("the value is {} bytes, shorter than the 5-byte header", payload.len())),
    }
}

/// Frames an Avro body the Confluent way.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[expect(clippy::large_enum_variant, reason = "one per writer schema id, held in the decoder's cache")]
enum Writer {
    /// Decode with `schema`; resolve into the reader schema unless both are the same. Bodies the
    /// plan (if any) reads cleanly skip the generic decoding.
    Readable { schema: Schema, names: Names, resolve: bool, plan: Option<ReadPlan> },
    Refused { reason: RejectReason, detail: String },
}

/// How long to wait between attempts while the registry cannot be reached.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5) }
    }
}

pub struct Decoder {
    reader: Schema,
    reader_form: String,
    registry: RegistryClient,
    runtime: tokio::runtime::Handle,
    writers: HashMap<u32, Writer, foldhash::fast::RandomState>,
    backoff: Backoff,
    stop: Arc<AtomicBool>,
    /// Called once per failed registry attempt (for the metrics).
    on_retry: Box<dyn Fn() + Send>,
}

impl Decoder {
    pub fn new(
        reader: Schema,
        registry: RegistryClient,
        runtime: tokio::runtime::Handle,
        backoff: Backoff,
        stop: Arc<AtomicBool>,
        on_retry: Box<dyn Fn() + Send>,
    ) -> Self {
        bound_avro_allocations();
        let reader_form = reader.canonical_form();
        Decoder { reader, reader_form, registry, runtime, writers: HashMap::default(), backoff, stop, on_retry }
    }

    /// Decodes one record value into `columns`, with its coordinates. `Ok(Err(_))`: the record
    /// cannot be read (why, and its bytes); nothing was appended. `Err` when the run was stopped
    /// while the registry was down, or the columns do not follow the reader schema (a bug).
    pub fn decode(&mut self, payload: &[u8], columns: &mut RawColumns, at: Coordinates<'_>) -> Result<std::result::Result<(), Undecodable>> {
        let refuse = |reason: RejectReason, detail: String| Ok(Err(Undecodable { reason, detail, payload: payload.to_vec() }));
        let (id, body) = match split_frame(payload) {
            Ok(split) => split,
            Err(detail) => return refuse(RejectReason::BadFraming, detail),
        };
        if !self.writers.contains_key(&id) {
            let writer = self.fetch(id)?;
            self.writers.insert(id, writer);
        }
        let (schema, names, resolve, plan) = match &self.writers[&id] {
            Writer::Readable { schema, names, resolve, plan } => (schema, names, *resolve, plan),
            Writer::Refused { reason, detail } => return refuse(*reason, detail.clone()),
        };
        if let Some(plan) = plan
            && columns.append_planned(plan, body, at)?
        {
            return Ok(Ok(()));
        }
        match decode_generic(schema, names, resolve, &self.reader, body) {
            Ok(record) => columns.append_record(record, at).map(Ok).map_err(|problem| {
                Error::Internal(format!("a record resolved into the reader schema does not fit its columns: {problem}"))
            }),
            Err(detail) => refuse(RejectReason::UndecodableBody, format!("schema id {id}: {detail}")),
        }
    }

    fn fetch(&self, id: u32) -> Result<Writer> {
        let mut wait = self.backoff.initial;
        let mut attempt = 1u32;
        loop {
            match self.runtime.block_on(self.registry.schema_by_id(id)) {
                Ok(Lookup::Found(text)) => return Ok(self.writer(id, &text)),
                Ok(Lookup::NotFound(message)) => {
                    return Ok(Writer::Refused {
                        reason: RejectReason::UnknownSchemaId,
                        detail: format!("schema id {id} is not in the registry: {message}"),
                    });
                }
                Err(error) if error.retryable() => {
                    (self.on_retry)();
                    tracing::warn!(schema_id = id, attempt, retry_in = ?wait, "{error}; the stream waits for the registry");
                }
                Err(error) => return Err(error),
            }
            if self.stop.load(Ordering::Relaxed) {
                return Err(Error::Registry(format!(
                    "stopped while waiting for the schema registry at {} (schema id {id})",
                    self.registry.url()
                )));
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(self.backoff.max);
            attempt += 1;
        }
    }

    fn writer(&self, id: u32, text: &str) -> Writer {
        let schema = match Schema::parse_str(text) {
            Ok(schema) => schema,
            Err(e) => {
                return Writer::Refused {
                    reason: RejectReason::IncompatibleSchema,
                    detail: format!("schema id {id} is not an Avro schema this engine reads: {e}"),
                };
            }
        };
        let resolve = schema.canonical_form() != self.reader_form;
        if resolve && let Err(e) = SchemaCompatibility::can_read(&schema, &self.reader) {
            return Writer::Refused {
                reason: RejectReason::IncompatibleSchema,
                detail: format!("schema id {id} cannot be read as the pipeline's reader schema: {e}"),
            };
        }
        let names = match named_types(&schema) {
            Ok(names) => names,
            Err(e) => {
                return Writer::Refused { reason: RejectReason::IncompatibleSchema, detail: format!("schema id {id}: {e}") };
            }
        };
        let plan = ReadPlan::new(&schema, &self.reader, resolve);
        Writer::Readable { schema, names, resolve, plan }
    }
}

/// Reads a body with apache-avro: decoded with the writer schema, resolved into the reader schema
/// (unless `resolve` is false: they are the same). `Err`: why it cannot be read.
/// `names` are the writer's named types ([`named_types`]).
pub(crate) fn decode_generic(writer: &Schema, names: &Names, resolve: bool, reader: &Schema, mut body: &[u8]) -> std::result::Result<Value, String> {
    // apache-avro 0.21 reads a value the body has run out before (a union, string or boolean
    // field) as null, so a body cut at a field boundary would decode with its last fields null.
    // Walking the body with the writer schema first refuses it.
    complete_body(writer, names, body)?;
    let value = apache_avro::from_avro_datum(writer, &mut body, None)
        .and_then(|value| if resolve { value.resolve(reader) } else { Ok(value) })
        .map_err(|e| e.to_string())?;
    if !body.is_empty() {
        return Err(format!("{} bytes left over after the record", body.len()));
    }
    if !matches!(value, Value::Record(_)) {
        return Err("the body is not a record".into());
    }
    Ok(value)
}

/// A schema's named types by full name, for the references inside it: resolved once per writer
/// schema, not per body.
pub(crate) type Names = HashMap<apache_avro::schema::Name, Schema>;

pub(crate) fn named_types(schema: &Schema) -> std::result::Result<Names, String> {
    let resolved = apache_avro::schema::ResolvedSchema::try_from(schema).map_err(|e| format!("the writer schema's named types: {e}"))?;
    Ok(resolved.get_names().iter().map(|(name, schema)| (name.clone(), (*schema).clone())).collect())
}

/// Checks that `body` holds exactly one whole value of `schema`: every length, count, union
/// index and fixed-size value is there, and nothing is left over. Values are skipped, not built.
fn complete_body(schema: &Schema, names: &Names, mut body: &[u8]) -> Walked {
    walk(schema, names, &mut body)?;
    match body.len() {
        0 => Ok(()),
        left => Err(format!("{left} bytes left over after the record")),
    }
}

type Walked = std::result::Result<(), String>;

fn short() -> String {
    "the body ends in the middle of the record".to_string()
}

fn skip(body: &mut &[u8], n: usize) -> Walked {
    *body = body.get(n..).ok_or_else(short)?;
    Ok(())
}

/// A zigzag variable-length integer.
fn varint(body: &mut &[u8]) -> std::result::Result<i64, String> {
    let (mut value, mut shift) = (0u64, 0u32);
    loop {
        let (&byte, rest) = body.split_first().ok_or_else(short)?;
        *body = rest;
        if shift > 63 {
            return Err("a variable-length integer longer than 10 bytes".into());
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
        shift += 7;
    }
}

fn length(body: &mut &[u8]) -> std::result::Result<usize, String> {
    usize::try_from(varint(body)?).map_err(|_| "a negative length".to_string())
}

/// Array or map items: blocks until a count of 0; a negative count is followed by the block's size.
fn blocks(body: &mut &[u8], item: &mut dyn FnMut(&mut &[u8]) -> Walked) -> Walked {
    loop {
        let count = varint(body)?;
        if count == 0 {
            return Ok(());
        }
        if count < 0 {
            length(body)?;
        }
        for _ in 0..count.unsigned_abs() {
            item(body)?;
        }
    }
}

fn walk(schema: &Schema, names: &Names, body: &mut &[u8]) -> Walked {
    match schema {
        Schema::Null => Ok(()),
        Schema::Boolean => skip(body, 1),
        Schema::Int | Schema::Long | Schema::Date | Schema::TimeMillis | Schema::TimeMicros | Schema::TimestampMillis
        | Schema::TimestampMicros | Schema::TimestampNanos | Schema::LocalTimestampMillis | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos | Schema::Enum(_) => varint(body).map(drop),
        Schema::Float => skip(body, 4),
        Schema::Double => skip(body, 8),
        Schema::Bytes | Schema::String | Schema::Uuid | Schema::BigDecimal => {
            let n = length(body)?;
            skip(body, n)
        }
        Schema::Fixed(fixed) => skip(body, fixed.size),
        Schema::Duration => skip(body, 12),
        Schema::Decimal(decimal) => walk(&decimal.inner, names, body),
        Schema::Union(union) => {
            let index = usize::try_from(varint(body)?).map_err(|_| "a negative union index".to_string())?;
            let branch = union.variants().get(index).ok_or_else(|| format!("union index {index} of {} branches", union.variants().len()))?;
            walk(branch, names, body)
        }
        Schema::Record(record) => record.fields.iter().try_for_each(|field| walk(&field.schema, names, body)),
        Schema::Array(array) => blocks(body, &mut |body| walk(&array.items, names, body)),
        Schema::Map(map) => blocks(body, &mut |body| {
            let n = length(body)?;
            skip(body, n)?;
            walk(&map.types, names, body)
        }),
        Schema::Ref { name } => walk(names.get(name).ok_or_else(|| format!("unknown named type {name}"))?, names, body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_refuse() {
        let framed = frame(7, b"body");
        assert_eq!(split_frame(&framed), Ok((7, &b"body"[..])));
        assert!(split_frame(&[]).unwrap_err().contains("empty"));
        assert!(split_frame(&[1, 0, 0, 0, 7]).unwrap_err().contains("0x01"));
        assert!(split_frame(&[0, 0, 0]).unwrap_err().contains("shorter"));
    }

    #[test]
    fn a_body_cut_anywhere_is_not_read_as_a_record() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[
                {"name":"id","type":"string"},{"name":"n","type":"long"},
                {"name":"title","type":["null","string"],"default":null},
                {"name":"budget","type":["null","long"],"default":null},
                {"name":"tags","type":["null",{"type":"array","items":{"type":"record","name":"T","fields":[{"name":"id","type":"long"},{"name":"name","type":"string"}]}}],"default":null}
            ]}"#,
        )
        .unwrap();
        let tag = |id: i64| Value::Record(vec![("id".into(), Value::Long(id)), ("name".into(), Value::String("Drama".into()))]);
        let record = Value::Record(vec![
            ("id".into(), Value::String("bc0f7567-4e65-4c9c-a4cd-e51c2fe62d4d".into())),
            ("n".into(), Value::Long(1_609_470_880)),
            ("title".into(), Value::Union(1, Box::new(Value::String("The 13th Warrior".into())))),
            ("budget".into(), Value::Union(1, Box::new(Value::Long(160_000_000)))),
            ("tags".into(), Value::Union(1, Box::new(Value::Array(vec![tag(12), tag(14)])))),
        ]);
        let body = apache_avro::to_avro_datum(&schema, record).unwrap();
        let names = named_types(&schema).unwrap();
        assert!(decode_generic(&schema, &names, false, &schema, &body).is_ok());
        for cut in 0..body.len() {
            let decoded = decode_generic(&schema, &names, false, &schema, &body[..cut]);
            assert!(decoded.is_err(), "a body cut at {cut} of {} bytes was read: {decoded:?}", body.len());
        }
    }
}
