//! A compiled reader for the common case: a flat writer record read into the reader schema's
//! fields, whatever they are called, as [`Value`](super::columns::Primitive)s for the raw columns.
//!
//! apache-avro decodes a body into a tree of `Value`s (an allocation per field and per record),
//! resolves that tree into the reader schema, and rebuilds its name lookup for every call. For a
//! record of primitive fields this is most of the cost of reading a Kafka record, so once per
//! writer schema the decoder compiles a [`ReadPlan`]: per writer field, per union branch, what to
//! read and which reader field the value goes to (or that it is skipped).
//!
//! The plan is a shortcut, never a second implementation of the rules:
//! - it is only built for a writer record whose fields are `null`, `boolean`, `int`, `long`,
//!   `float`, `double`, `bytes`, `string`, or unions of those, and a reader without aliases whose
//!   fields are of those types too;
//! - what each branch becomes is decided by apache-avro itself: a representative value of the
//!   branch's type is resolved into the reader field's schema once, and the values of reader fields
//!   the writer lacks (their defaults) come from resolving a representative writer record;
//! - any record the plan does not read cleanly (truncated, an invalid varint, union index or
//!   boolean, invalid UTF-8, bytes left over, a branch that would not resolve or fit a field)
//!   gets `None`, and the decoder reads that record the generic way, which then produces the
//!   same value or the same rejection as without a plan.
//!
//! The tests check plan against generic decoding on seeded random writer schemas and bodies.

use apache_avro::Schema;
use apache_avro::types::Value;

use super::columns::Primitive as Column;

/// The primitive types a plan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Primitive {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
}

impl Primitive {
    fn of(schema: &Schema) -> Option<Primitive> {
        Some(match schema {
            Schema::Null => Primitive::Null,
            Schema::Boolean => Primitive::Boolean,
            Schema::Int => Primitive::Int,
            Schema::Long => Primitive::Long,
            Schema::Float => Primitive::Float,
            Schema::Double => Primitive::Double,
            Schema::Bytes => Primitive::Bytes,
            Schema::String => Primitive::String,
            _ => return None,
        })
    }

    fn of_value(value: &Value) -> Option<Primitive> {
        Some(match value {
            Value::Null => Primitive::Null,
            Value::Boolean(_) => Primitive::Boolean,
            Value::Int(_) => Primitive::Int,
            Value::Long(_) => Primitive::Long,
            Value::Float(_) => Primitive::Float,
            Value::Double(_) => Primitive::Double,
            Value::Bytes(_) => Primitive::Bytes,
            Value::String(_) => Primitive::String,
            _ => return None,
        })
    }

    /// A value of this type, to ask apache-avro what it resolves into.
    fn representative(self) -> Value {
        match self {
            Primitive::Null => Value::Null,
            Primitive::Boolean => Value::Boolean(false),
            Primitive::Int => Value::Int(0),
            Primitive::Long => Value::Long(0),
            Primitive::Float => Value::Float(0.0),
            Primitive::Double => Value::Double(0.0),
            Primitive::Bytes => Value::Bytes(Vec::new()),
            Primitive::String => Value::String(String::new()),
        }
    }
}

/// What happens to a value read with one writer branch.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    /// Read (and check) it, keep nothing: the reader has no such field, or it resolves to null.
    Skip,
    /// Convert it to `resolved` (the reader's type, as apache-avro resolves it) and store it as
    /// reader field `field`.
    Store(usize, Primitive),
    /// Generic decoding decides (it fails to resolve, or the value does not fit the field).
    Generic,
}

/// A reader field's default, held by the plan for records whose writer lacks the field.
#[derive(Debug, Clone, PartialEq)]
enum FieldDefault {
    Null,
    Boolean(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Bytes(Vec<u8>),
    String(String),
}

impl FieldDefault {
    fn of(value: Value) -> Option<FieldDefault> {
        Some(match value {
            Value::Union(_, inner) => return FieldDefault::of(*inner),
            Value::Null => FieldDefault::Null,
            Value::Boolean(v) => FieldDefault::Boolean(v),
            Value::Int(v) => FieldDefault::Int(v),
            Value::Long(v) => FieldDefault::Long(v),
            Value::Float(v) => FieldDefault::Float(v),
            Value::Double(v) => FieldDefault::Double(v),
            Value::Bytes(v) => FieldDefault::Bytes(v),
            Value::String(v) => FieldDefault::String(v),
            _ => return None,
        })
    }

    fn value(&self) -> Column<'_> {
        match self {
            FieldDefault::Null => Column::Null,
            FieldDefault::Boolean(v) => Column::Boolean(*v),
            FieldDefault::Int(v) => Column::Int(*v),
            FieldDefault::Long(v) => Column::Long(*v),
            FieldDefault::Float(v) => Column::Float(*v),
            FieldDefault::Double(v) => Column::Double(*v),
            FieldDefault::Bytes(v) => Column::Bytes(v),
            FieldDefault::String(v) => Column::String(v),
        }
    }
}

#[derive(Debug, Clone)]
struct FieldPlan {
    /// What to read and do, per union branch, or for the field's single type.
    branches: Vec<(Primitive, Action)>,
    /// The body holds a branch index before the value.
    union: bool,
}

/// How to read the bodies of one writer schema into the reader schema's fields.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    fields: Vec<FieldPlan>,
    /// Per reader field, the value of a record whose writer lacks it (its default, resolved).
    defaults: Vec<FieldDefault>,
    /// Every body this plan reads cleanly stores a value in every reader field: each is written by
    /// a field of one type (no union, so never null) stored as it. [`Self::default_of`] is then
    /// never needed.
    fills_every_field: bool,
}

impl ReadPlan {
    /// The plan for bodies written with `writer`, read as `reader` (resolved unless `resolve` is
    /// false: the schemas are the same). `None` when the writer is not a flat record of
    /// primitives, or anything about the pair is unusual: generic decoding handles those.
    pub fn new(writer: &Schema, reader: &Schema, resolve: bool) -> Option<ReadPlan> {
        let reader_schema = reader;
        let (Schema::Record(writer), Schema::Record(reader)) = (writer, reader) else { return None };
        if reader.aliases.is_some() || reader.fields.iter().any(|f| f.aliases.is_some()) {
            return None;
        }
        // Every reader field a primitive (or a nullable one): the plan fills primitive columns.
        for field in &reader.fields {
            match &field.schema {
                Schema::Union(union) => union.variants().iter().map(Primitive::of).collect::<Option<Vec<_>>>().map(drop)?,
                single => Primitive::of(single).map(drop)?,
            }
        }
        let mut fields = Vec::with_capacity(writer.fields.len());
        let mut representative = Vec::with_capacity(writer.fields.len());
        for field in &writer.fields {
            let (types, union) = match &field.schema {
                Schema::Union(union) => (union.variants().iter().map(Primitive::of).collect::<Option<Vec<_>>>()?, true),
                single => (vec![Primitive::of(single)?], false),
            };
            let target = reader.fields.iter().position(|r| r.name == field.name);
            let target_schema = match (resolve, target) {
                (true, Some(index)) => Some(&reader.fields[index].schema),
                (false, Some(_)) => Some(&field.schema),
                (_, None) => None,
            };
            let branches: Vec<(Primitive, Action)> = types
                .iter()
                .map(|&read| {
                    let action = match (target, target_schema) {
                        (Some(index), Some(schema)) => match read.representative().resolve(schema) {
                            Err(_) => Action::Generic,
                            Ok(resolved) => {
                                let resolved = match resolved {
                                    Value::Union(_, inner) => *inner,
                                    other => other,
                                };
                                match Primitive::of_value(&resolved) {
                                    Some(Primitive::Null) => Action::Skip,
                                    Some(resolved) => Action::Store(index, resolved),
                                    None => Action::Generic,
                                }
                            }
                        },
                        _ => Action::Skip,
                    };
                    (read, action)
                })
                .collect();
            // For the defaults below: a branch whose values resolve (any, when the reader lacks the
            // field; a field none resolves makes every body fail, and no plan is needed).
            let usable = branches.iter().position(|(_, action)| *action != Action::Generic)?;
            let value = types[usable].representative();
            representative.push((field.name.clone(), if union { Value::Union(usable as u32, Box::new(value)) } else { value }));
            fields.push(FieldPlan { branches, union });
        }
        let mut defaults = vec![FieldDefault::Null; reader.fields.len()];
        if resolve {
            let Ok(Value::Record(resolved)) = Value::Record(representative).resolve(reader_schema) else { return None };
            for (index, (name, value)) in resolved.into_iter().enumerate() {
                if !writer.fields.iter().any(|f| f.name == name) {
                    defaults[index] = FieldDefault::of(value)?;
                }
            }
        }
        let stored: Vec<usize> = fields
            .iter()
            .filter(|field| !field.union)
            .filter_map(|field| match field.branches[0].1 {
                Action::Store(index, _) => Some(index),
                Action::Skip | Action::Generic => None,
            })
            .collect();
        let fills_every_field = (0..reader.fields.len()).all(|index| stored.contains(&index));
        Some(ReadPlan { fields, defaults, fills_every_field })
    }

    /// Whether every body this plan reads cleanly stores a value in every reader field, so that
    /// [`Self::default_of`] is never needed.
    pub fn fills_every_field(&self) -> bool {
        self.fills_every_field
    }

    /// Reads one body, handing each value the writer holds to `store` with its reader field, as
    /// it is read. Reader fields the writer lacks, or holds as null, get nothing: theirs is
    /// [`Self::default_of`]. `None`: not a body this plan reads cleanly (`store` may have had some
    /// of its values); decode it the generic way.
    pub fn read_into<'a>(&'a self, mut body: &'a [u8], mut store: impl FnMut(usize, Column<'a>)) -> Option<()> {
        for field in &self.fields {
            let (read, action) = if field.union {
                let index = usize::try_from(read_long(&mut body)?).ok()?;
                *field.branches.get(index)?
            } else {
                field.branches[0]
            };
            let value = read_value(read, &mut body)?;
            match action {
                Action::Skip => {}
                Action::Generic => return None,
                Action::Store(index, resolved) => store(index, convert(resolved, value)?),
            }
        }
        body.is_empty().then_some(())
    }

    /// The value of reader field `index` in a record that does not store one: its default if the
    /// writer lacks the field, else null.
    pub fn default_of(&self, index: usize) -> Column<'_> {
        self.defaults.get(index).map_or(Column::Null, FieldDefault::value)
    }

    /// Reads one body: a value per reader field, in the reader's order ([`Self::read_into`] as a
    /// list). `None`: not a body this plan reads cleanly; decode it the generic way.
    pub fn read<'a>(&'a self, body: &'a [u8]) -> Option<Vec<Column<'a>>> {
        let mut out: Vec<Column<'a>> = self.defaults.iter().map(FieldDefault::value).collect();
        self.read_into(body, |index, value| out[index] = value)?;
        Some(out)
    }
}

/// A value as read from the body (strings checked for UTF-8, as apache-avro does).
enum Read<'a> {
    Nothing,
    Boolean(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Bytes(&'a [u8]),
    String(&'a str),
}

#[inline(always)]
fn read_value<'a>(read: Primitive, body: &mut &'a [u8]) -> Option<Read<'a>> {
    Some(match read {
        Primitive::Null => Read::Nothing,
        Primitive::Boolean => {
            let (&byte, rest) = body.split_first()?;
            *body = rest;
            if byte > 1 {
                return None;
            }
            Read::Boolean(byte == 1)
        }
        Primitive::Int => Read::Int(i32::try_from(read_long(body)?).ok()?),
        Primitive::Long => Read::Long(read_long(body)?),
        Primitive::Float => Read::Float(f32::from_le_bytes(take(body, 4)?.try_into().ok()?)),
        Primitive::Double => Read::Double(f64::from_le_bytes(take(body, 8)?.try_into().ok()?)),
        Primitive::Bytes => Read::Bytes(read_bytes(body)?),
        Primitive::String => Read::String(text(read_bytes(body)?)?),
    })
}

/// `bytes` as text, if they are UTF-8 (a record whose string is not is refused alone).
///
/// Nearly every string a record carries is ASCII (ids, UUIDs, codes), which `is_ascii` checks a
/// word at a time, inlined; `from_utf8` costs a call and its setup per value, 2.5x as much on
/// ids and UUIDs (benches/README.md). Other text goes through `from_utf8`.
#[inline(always)]
fn text(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

/// `value` converted the way apache-avro resolves it into `resolved` (the reader field's type).
#[inline(always)]
fn convert(resolved: Primitive, value: Read<'_>) -> Option<Column<'_>> {
    Some(match (resolved, value) {
        (Primitive::Boolean, Read::Boolean(v)) => Column::Boolean(v),
        (Primitive::Int, Read::Int(n)) => Column::Int(n),
        (Primitive::Long, Read::Int(n)) => Column::Long(i64::from(n)),
        (Primitive::Long, Read::Long(n)) => Column::Long(n),
        (Primitive::Float, Read::Int(n)) => Column::Float(n as f32),
        (Primitive::Float, Read::Long(n)) => Column::Float(n as f32),
        (Primitive::Float, Read::Float(x)) => Column::Float(x),
        (Primitive::Double, Read::Int(n)) => Column::Double(f64::from(n)),
        (Primitive::Double, Read::Long(n)) => Column::Double(n as f64),
        (Primitive::Double, Read::Float(x)) => Column::Double(f64::from(x)),
        (Primitive::Double, Read::Double(x)) => Column::Double(x),
        (Primitive::String, Read::String(text)) => Column::String(text),
        (Primitive::String, Read::Bytes(bytes)) => Column::String(text(bytes)?),
        (Primitive::Bytes, Read::Bytes(bytes)) => Column::Bytes(bytes),
        (Primitive::Bytes, Read::String(text)) => Column::Bytes(text.as_bytes()),
        _ => return None,
    })
}

#[inline(always)]
fn take<'a>(body: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if body.len() < len {
        return None;
    }
    let (head, rest) = body.split_at(len);
    *body = rest;
    Some(head)
}

#[inline(always)]
fn read_bytes<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(read_long(body)?).ok()?;
    take(body, len)
}

/// A zig-zag varint `long`, up to 10 bytes (apache-avro refuses longer ones).
#[inline(always)]
fn read_long(body: &mut &[u8]) -> Option<i64> {
    let mut value = 0u64;
    for (index, &byte) in body.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (index * 7);
        if byte & 0x80 == 0 {
            *body = &body[index + 1..];
            return Some(if value & 1 == 0 { (value >> 1) as i64 } else { !(value >> 1) as i64 });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use apache_avro::to_avro_datum;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::source::kafka::confluent::{decode_generic, named_types};

    /// The generic decoding as the plan's values: a value per reader field (`Err`: refused).
    fn generic(writer: &Schema, resolve: bool, reader: &Schema, body: &[u8]) -> Result<Vec<String>, String> {
        let names = named_types(writer)?;
        let Value::Record(fields) = decode_generic(writer, &names, resolve, reader, body)? else { unreachable!("a record") };
        Ok(fields
            .into_iter()
            .map(|(_, value)| {
                let value = match value {
                    Value::Union(_, inner) => *inner,
                    other => other,
                };
                shown(match &value {
                    Value::Null => Column::Null,
                    Value::Boolean(v) => Column::Boolean(*v),
                    Value::Int(v) => Column::Int(*v),
                    Value::Long(v) => Column::Long(*v),
                    Value::Float(v) => Column::Float(*v),
                    Value::Double(v) => Column::Double(*v),
                    Value::Bytes(v) => Column::Bytes(v),
                    Value::String(v) => Column::String(v),
                    other => unreachable!("not a primitive: {other:?}"),
                })
            })
            .collect())
    }

    /// A value with its type, floats by their bits (so NaN equals itself and -0.0 is not 0.0).
    fn shown(value: Column<'_>) -> String {
        match value {
            Column::Float(x) => format!("Float({:#x})", x.to_bits()),
            Column::Double(x) => format!("Double({:#x})", x.to_bits()),
            other => format!("{other:?}"),
        }
    }

    fn planned(plan: &ReadPlan, body: &[u8]) -> Option<Vec<String>> {
        plan.read(body).map(|values| values.into_iter().map(shown).collect())
    }

    /// The pipeline's reader schema.
    const READER: &str = include_str!("../../../../graphs/schemas/movie_rating.avsc");

    /// A reader with defaults (and a nullable field), so writers may leave fields out.
    const LENIENT_READER: &str = r#"{"type": "record", "name": "MovieRating", "namespace": "io.movies", "fields": [
        {"name": "event_id", "type": "string"}, {"name": "user_id", "type": ["null", "string"], "default": null},
        {"name": "movie_id", "type": "string", "default": "m0"}, {"name": "rating", "type": "float", "default": 0.5},
        {"name": "rating_timestamp", "type": "long", "default": 7}]}"#;

    const TYPES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

    /// A random writer schema around the event's fields: each may be missing, retyped, nullable;
    /// extra fields of any primitive or union type come in anywhere.
    fn random_writer(rng: &mut ChaCha8Rng) -> String {
        let mut fields = Vec::new();
        for (name, usual) in [("event_id", "string"), ("user_id", "string"), ("movie_id", "string"), ("rating", "float"), ("rating_timestamp", "long")] {
            let ty = match rng.random_range(0..16) {
                0 => continue,
                1 | 2 => format!("\"{}\"", TYPES[rng.random_range(0..TYPES.len())]),
                3 => format!("[\"null\", \"{usual}\"]"),
                4 => format!("[\"{usual}\", \"null\"]"),
                _ => format!("\"{usual}\""),
            };
            fields.push(format!(r#"{{"name": "{name}", "type": {ty}}}"#));
        }
        for extra in 0..rng.random_range(0..4) {
            let ty = if rng.random_bool(0.5) {
                format!("\"{}\"", TYPES[rng.random_range(0..TYPES.len())])
            } else {
                let mut branches: Vec<&str> = TYPES.to_vec();
                branches.shuffle(rng);
                let branches: Vec<String> = branches[..rng.random_range(1..4)].iter().map(|t| format!("\"{t}\"")).collect();
                format!("[{}]", branches.join(", "))
            };
            fields.push(format!(r#"{{"name": "extra{extra}", "type": {ty}}}"#));
        }
        fields.shuffle(rng);
        format!(r#"{{"type": "record", "name": "MovieRating", "namespace": "io.movies", "fields": [{}]}}"#, fields.join(", "))
    }

    fn random_value(rng: &mut ChaCha8Rng, schema: &Schema) -> Value {
        match schema {
            Schema::Null => Value::Null,
            Schema::Boolean => Value::Boolean(rng.random_bool(0.5)),
            Schema::Int => Value::Int(rng.random_range(-1_000_000..1_000_000)),
            Schema::Long => Value::Long(rng.random_range(-5_000_000_000i64..5_000_000_000)),
            Schema::Float => Value::Float(rng.random_range(-20.0..20.0)),
            Schema::Double => Value::Double(rng.random_range(-20.0..20.0)),
            Schema::Bytes => {
                let len = rng.random_range(0..6);
                Value::Bytes((0..len).map(|_| if rng.random_bool(0.9) { b'a' } else { 0xff }).collect())
            }
            Schema::String => Value::String(["", "u-1", "héllo", "550e8400-e29b-41d4-a716-446655440000"][rng.random_range(0..4)].into()),
            Schema::Union(union) => {
                let index = rng.random_range(0..union.variants().len());
                Value::Union(index as u32, Box::new(random_value(rng, &union.variants()[index])))
            }
            Schema::Record(record) => {
                Value::Record(record.fields.iter().map(|f| (f.name.clone(), random_value(rng, &f.schema))).collect())
            }
            other => unreachable!("no random values for {other:?}"),
        }
    }

    #[test]
    fn text_is_what_from_utf8_accepts_ascii_or_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let pieces: [&[u8]; 9] = [b"u1234", b"", b"0123abcd-0000-4000-8000-00000000beef", "é".as_bytes(), "日本".as_bytes(), b"\xff", b"\xc3", b"\x80abc", b"\x7f"];
        for _ in 0..5_000 {
            let bytes: Vec<u8> = (0..rng.random_range(0..4)).flat_map(|_| pieces[rng.random_range(0..pieces.len())].iter().copied()).collect();
            assert_eq!(text(&bytes), std::str::from_utf8(&bytes).ok(), "{bytes:?}");
        }
        assert_eq!(text("日本".as_bytes()), Some("日本"), "text beyond ASCII is read");
        assert_eq!(text(&"日本".as_bytes()[..4]), None, "a cut character is refused");
    }

    #[test]
    fn plans_read_what_generic_decoding_reads() {
        let readers = [Schema::parse_str(READER).unwrap(), Schema::parse_str(LENIENT_READER).unwrap()];
        let (mut plans, mut read_by_plan, mut filling) = (0, 0, 0);
        for seed in 0..400u64 {
            let reader = &readers[seed as usize % 2];
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let writer = Schema::parse_str(&random_writer(&mut rng)).unwrap();
            let resolve = writer.canonical_form() != reader.canonical_form();
            let Some(plan) = ReadPlan::new(&writer, reader, resolve) else { continue };
            plans += 1;
            for _ in 0..40 {
                let mut body = to_avro_datum(&writer, random_value(&mut rng, &writer)).unwrap();
                // Some bodies are damaged: cut short, a byte changed, or a byte too many.
                match rng.random_range(0..8) {
                    0 if !body.is_empty() => body.truncate(rng.random_range(0..body.len())),
                    1 if !body.is_empty() => {
                        let at = rng.random_range(0..body.len());
                        body[at] = rng.random();
                    }
                    2 => body.push(rng.random()),
                    _ => {}
                }
                let generic = generic(&writer, resolve, reader, &body);
                if let Some(values) = planned(&plan, &body) {
                    read_by_plan += 1;
                    assert_eq!(Ok(values), generic, "seed {seed}, writer {}, body {body:?}", writer.canonical_form());
                    // A plan that says it fills every field stores each one (columns skip the defaults).
                    let mut stored = vec![false; plan.defaults.len()];
                    plan.read_into(&body, |index, _| stored[index] = true).unwrap();
                    if plan.fills_every_field() {
                        filling += 1;
                        assert!(stored.iter().all(|s| *s), "seed {seed}: a field was left to its default");
                    }
                }
            }
        }
        assert!(filling > 500, "only {filling} bodies were read by plans that fill every field");
        // The test means something only if most schemas and bodies take the plan.
        assert!(plans > 150, "only {plans} of 400 writer schemas got a plan");
        assert!(read_by_plan > 3000, "only {read_by_plan} bodies were read by a plan");
    }

    #[test]
    fn the_pipeline_schema_and_its_evolutions_get_a_plan() {
        let reader = Schema::parse_str(READER).unwrap();
        assert!(ReadPlan::new(&reader, &reader, false).is_some());
        let v2 = Schema::parse_str(include_str!("../../../../tests/schemas/movie_rating_v2.avsc")).unwrap();
        assert!(ReadPlan::new(&v2, &reader, true).is_some());
        let nested = Schema::parse_str(
            r#"{"type": "record", "name": "R", "fields": [{"name": "event_id", "type": "string"},
                {"name": "tags", "type": {"type": "array", "items": "string"}}]}"#,
        )
        .unwrap();
        assert!(ReadPlan::new(&nested, &reader, true).is_none(), "arrays are read the generic way");
    }

    #[test]
    fn bodies_apache_avro_refuses_are_left_to_it() {
        let reader = Schema::parse_str(READER).unwrap();
        let writer = Schema::parse_str(
            r#"{"type": "record", "name": "MovieRating", "namespace": "io.movies", "fields": [
                {"name": "flag", "type": "boolean"}, {"name": "note", "type": ["null", "string"]},
                {"name": "event_id", "type": "string"}, {"name": "user_id", "type": "string"},
                {"name": "movie_id", "type": "string"}, {"name": "rating", "type": "float"},
                {"name": "rating_timestamp", "type": "long"}]}"#,
        )
        .unwrap();
        let plan = ReadPlan::new(&writer, &reader, true).unwrap();
        // flag, note = null, "e", "u", "m", 8.0, 42
        let good: Vec<u8> = [&[1u8, 0, 2, b'e', 2, b'u', 2, b'm'][..], &8.0f32.to_le_bytes(), &[84]].concat();
        let expected = vec![Column::String("e"), Column::String("u"), Column::String("m"), Column::Float(8.0), Column::Long(42)];
        assert_eq!(plan.read(&good), Some(expected.clone()));
        assert_eq!(generic(&writer, true, &reader, &good), Ok(expected.into_iter().map(shown).collect()));
        let damaged = |at: usize, byte: u8| {
            let mut body = good.clone();
            body[at] = byte;
            body
        };
        for (what, body) in [
            ("a boolean that is neither 0 nor 1", damaged(0, 2)),
            ("a union index past the branches", damaged(1, 4)),
            ("a string that is not UTF-8", damaged(3, 0xff)),
            ("a varint longer than 10 bytes", [&[1u8, 0, 2, b'e', 2, b'u', 2, b'm'][..], &8.0f32.to_le_bytes(), &[0xff; 11]].concat()),
            ("a byte left over", [&good[..], &[0]].concat()),
            ("a body cut short", good[..good.len() - 2].to_vec()),
        ] {
            assert_eq!(plan.read(&body), None, "{what}");
        }
    }

    #[test]
    fn a_missing_field_takes_the_reader_default() {
        let reader = Schema::parse_str(
            r#"{"type": "record", "name": "MovieRating", "fields": [
                {"name": "event_id", "type": "string"}, {"name": "rating", "type": "float", "default": 5.5},
                {"name": "user_id", "type": ["null", "string"], "default": null}]}"#,
        )
        .unwrap();
        let writer = Schema::parse_str(r#"{"type": "record", "name": "MovieRating", "fields": [{"name": "event_id", "type": "string"}]}"#).unwrap();
        let plan = ReadPlan::new(&writer, &reader, true).unwrap();
        let body = to_avro_datum(&writer, Value::Record(vec![("event_id".into(), Value::String("e".into()))])).unwrap();
        assert_eq!(plan.read(&body).unwrap(), vec![Column::String("e"), Column::Float(5.5), Column::Null]);
        assert_eq!(Ok(planned(&plan, &body).unwrap()), generic(&writer, true, &reader, &body));
    }
}
