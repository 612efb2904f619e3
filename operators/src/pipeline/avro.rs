//! The raw table's event columns, read off the graph's Avro reader schema.
//!
//! Every top-level field of the reader record becomes an optional column of the same name (the
//! raw table keeps bad data as it came, so nothing is required there). Avro types map to Iceberg
//! types as Iceberg's own Avro conversion does:
//!
//! | Avro | Iceberg |
//! |---|---|
//! | `boolean`, `int`, `long`, `float`, `double` | the same |
//! | `string`, `enum` (its symbol) | `string` |
//! | `bytes`, `fixed` | `binary` |
//! | `int` + `date` | `date` |
//! | `long` + `timestamp-millis` / `timestamp-micros` | `timestamptz` (microseconds, UTC) |
//! | `long` + `local-timestamp-millis` / `-micros` | `timestamp` |
//! | `string` + `uuid` | `string` (the text as sent) |
//! | `["null", T]` (either order) | `T` |
//! | `array<T>` | `list<T>` |
//! | `map<T>` | `map<string, T>` |
//! | record | `struct` |
//!
//! Anything else (a union of two non-null types, `decimal`, `duration`, a recursive record) is
//! refused when the graph loads, naming the field. Field ids follow Iceberg writers: top-level
//! columns first (from `first_id`), then nested fields depth-first.

use std::sync::Arc;

use apache_avro::Schema as Avro;
use apache_avro::schema::{RecordField, UnionSchema};
use iceberg::spec::{ListType, MapType, NestedField, PrimitiveType, StructType, Type};

/// The event columns of `reader` (a record schema), numbered from `first_id`; `next_id` comes back
/// as the first id not used (nested fields take ids after every top-level column).
pub fn event_columns(reader: &Avro, first_id: i32, next_id: &mut i32) -> Result<Vec<Arc<NestedField>>, String> {
    let Avro::Record(record) = reader else {
        return Err(format!("the reader schema must be a record, found {}", kind(reader)));
    };
    if record.fields.is_empty() {
        return Err(format!("the reader schema's record {} has no fields", record.name.fullname(None)));
    }
    let top: Vec<i32> = (0..record.fields.len() as i32).map(|i| first_id + i).collect();
    *next_id = (*next_id).max(first_id + record.fields.len() as i32);
    record
        .fields
        .iter()
        .zip(top)
        .map(|(field, id)| Ok(Arc::new(NestedField::optional(id, &field.name, column_type(field, next_id)?))))
        .collect()
}

fn column_type(field: &RecordField, next_id: &mut i32) -> Result<Type, String> {
    type_of(&field.schema, next_id).map_err(|problem| format!("field {}: {problem}", field.name))
}

fn kind(schema: &Avro) -> String {
    format!("{:?}", apache_avro::schema::SchemaKind::from(schema)).to_lowercase()
}

fn take(next_id: &mut i32) -> i32 {
    let id = *next_id;
    *next_id += 1;
    id
}

fn type_of(schema: &Avro, next_id: &mut i32) -> Result<Type, String> {
    use PrimitiveType as P;
    Ok(Type::Primitive(match schema {
        Avro::Boolean => P::Boolean,
        Avro::Int => P::Int,
        Avro::Long => P::Long,
        Avro::Float => P::Float,
        Avro::Double => P::Double,
        Avro::String | Avro::Uuid | Avro::Enum(_) => P::String,
        Avro::Bytes | Avro::Fixed(_) => P::Binary,
        Avro::Date => P::Date,
        Avro::TimestampMillis | Avro::TimestampMicros => P::Timestamptz,
        Avro::LocalTimestampMillis | Avro::LocalTimestampMicros => P::Timestamp,
        Avro::Union(union) => return type_of(nullable(union)?, next_id),
        Avro::Array(array) => {
            let id = take(next_id);
            let element = type_of(&array.items, next_id)?;
            return Ok(Type::List(ListType::new(Arc::new(NestedField::list_element(id, element, false)))));
        }
        Avro::Map(map) => {
            let (key_id, value_id) = (take(next_id), take(next_id));
            let value = type_of(&map.types, next_id)?;
            return Ok(Type::Map(MapType::new(
                Arc::new(NestedField::map_key_element(key_id, Type::Primitive(P::String))),
                Arc::new(NestedField::map_value_element(value_id, value, false)),
            )));
        }
        Avro::Record(record) => {
            let ids: Vec<i32> = record.fields.iter().map(|_| take(next_id)).collect();
            let fields = record
                .fields
                .iter()
                .zip(ids)
                .map(|(field, id)| Ok(Arc::new(NestedField::optional(id, &field.name, column_type(field, next_id)?))))
                .collect::<Result<Vec<_>, String>>()?;
            return Ok(Type::Struct(StructType::new(fields)));
        }
        Avro::Ref { name } => return Err(format!("refers to {} (recursive records have no table type)", name.fullname(None))),
        other => return Err(format!("Avro type {} has no raw column type (see the table in README \"Writing a graph\")", kind(other))),
    }))
}

/// The one non-null branch of a `["null", T]` union.
fn nullable(union: &UnionSchema) -> Result<&Avro, String> {
    let branches: Vec<&Avro> = union.variants().iter().filter(|v| !matches!(v, Avro::Null)).collect();
    match branches.as_slice() {
        [one] => Ok(one),
        _ => Err(format!("a union of {} non-null types; a column takes one type (or null)", branches.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(schema: &str) -> Result<Vec<Arc<NestedField>>, String> {
        let mut next = 0;
        event_columns(&Avro::parse_str(schema).unwrap(), 1, &mut next)
    }

    #[test]
    fn primitive_logical_and_nested_fields_map_to_iceberg_types_with_writer_style_ids() {
        let cols = columns(
            r#"{"type":"record","name":"E","fields":[
                {"name":"id","type":"long"},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"kind","type":["null",{"type":"enum","name":"K","symbols":["A","B"]}]},
                {"name":"page","type":{"type":"record","name":"P","fields":[{"name":"url","type":"string"},{"name":"n","type":"int"}]}},
                {"name":"tags","type":{"type":"array","items":"string"}},
                {"name":"attrs","type":{"type":"map","values":"double"}}
            ]}"#,
        )
        .unwrap();
        let shown: Vec<String> = cols.iter().map(|f| format!("{} {} {}", f.id, f.name, f.field_type)).collect();
        assert_eq!(shown[..3], ["1 id long", "2 at timestamptz", "3 kind string"]);
        let Type::Struct(page) = cols[3].field_type.as_ref() else { panic!("struct expected") };
        assert_eq!(page.fields().iter().map(|f| f.id).collect::<Vec<_>>(), [7, 8], "nested ids follow the six top-level ones");
        let Type::List(tags) = cols[4].field_type.as_ref() else { panic!("list expected") };
        assert_eq!(tags.element_field.id, 9);
        let Type::Map(attrs) = cols[5].field_type.as_ref() else { panic!("map expected") };
        assert_eq!((attrs.key_field.id, attrs.value_field.id), (10, 11));
        assert!(cols.iter().all(|f| !f.required), "raw columns keep bad data: all optional");
    }

    #[test]
    fn types_without_a_column_type_are_refused_naming_the_field() {
        let two = columns(r#"{"type":"record","name":"E","fields":[{"name":"v","type":["int","string"]}]}"#).unwrap_err();
        assert!(two.contains("field v: a union of 2 non-null types"), "{two}");
        let not_record = columns(r#""string""#).unwrap_err();
        assert!(not_record.contains("must be a record"), "{not_record}");
    }
}
