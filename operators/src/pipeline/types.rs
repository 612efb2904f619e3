//! Column types as graph files write them, and making Arrow data carry exactly a table's types.
//!
//! A column is declared as `"name type"` with Iceberg's type names: `boolean`, `int`, `long`,
//! `float`, `double`, `date`, `timestamp` (no zone), `timestamptz` (UTC), `string`, `binary`,
//! `list<T>` and `struct<name T, ...>`, nested freely, e.g.
//! `"tags list<struct<id long, name string>>"`. Every declared column is optional (a raw table
//! keeps data as it came, nulls included). Field ids are assigned the way Iceberg writers do:
//! top-level columns 1..n in order, then nested fields depth-first.
//!
//! Parquet files and scans label nested fields differently (`element` or `item` for list items,
//! field-id metadata or none); [`conform`] relabels an array whose layout is the table's with the
//! table's exact type, and [`same_layout`] says whether that is possible, so a type mismatch can
//! be reported per column instead of failing deep inside a writer.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, make_array};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::array::ArrayData;
use iceberg::spec::{ListType, NestedField, PrimitiveType, Schema, StructType, Type};

use crate::error::{Error, Result};

/// A type as parsed, before field ids are assigned.
#[derive(Debug, Clone, PartialEq)]
enum Declared {
    Primitive(PrimitiveType),
    List(Box<Declared>),
    Struct(Vec<(String, Declared)>),
}

struct Parser<'a> {
    text: &'a str,
    rest: &'a str,
}

impl<'a> Parser<'a> {
    fn error(&self, expected: &str) -> String {
        let at = self.text.len() - self.rest.len();
        format!("type {:?}: expected {expected} at position {at}", self.text)
    }

    fn word(&mut self) -> Option<&'a str> {
        self.rest = self.rest.trim_start();
        let end = self.rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(word)
    }

    fn symbol(&mut self, symbol: char) -> bool {
        self.rest = self.rest.trim_start();
        match self.rest.strip_prefix(symbol) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn parse(&mut self) -> std::result::Result<Declared, String> {
        let word = self.word().ok_or_else(|| self.error("a type name"))?;
        if let Some(primitive) = primitive_named(word) {
            return Ok(Declared::Primitive(primitive));
        }
        match word.to_ascii_lowercase().as_str() {
            "list" => {
                if !self.symbol('<') {
                    return Err(self.error("`<` after list"));
                }
                let element = self.parse()?;
                if !self.symbol('>') {
                    return Err(self.error("`>` closing list<"));
                }
                Ok(Declared::List(Box::new(element)))
            }
            "struct" => {
                if !self.symbol('<') {
                    return Err(self.error("`<` after struct"));
                }
                let mut fields = Vec::new();
                loop {
                    let name = self.word().ok_or_else(|| self.error("a field name"))?;
                    if fields.iter().any(|(existing, _)| existing == name) {
                        return Err(format!("type {:?}: field {name} appears twice", self.text));
                    }
                    fields.push((name.to_string(), self.parse()?));
                    if self.symbol('>') {
                        return Ok(Declared::Struct(fields));
                    }
                    if !self.symbol(',') {
                        return Err(self.error("`,` or `>` in struct<"));
                    }
                }
            }
            other => Err(format!(
                "type {:?}: unknown type {other:?} (expected boolean, int, long, float, double, date, timestamp, timestamptz, string, binary, list<T> or struct<name T, ...>)",
                self.text
            )),
        }
    }
}

/// The Iceberg primitive type a graph file names (case-insensitive), e.g. `long`, `timestamptz`.
pub fn primitive_named(name: &str) -> Option<PrimitiveType> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "boolean" => PrimitiveType::Boolean,
        "int" => PrimitiveType::Int,
        "long" => PrimitiveType::Long,
        "float" => PrimitiveType::Float,
        "double" => PrimitiveType::Double,
        "date" => PrimitiveType::Date,
        "timestamp" => PrimitiveType::Timestamp,
        "timestamptz" => PrimitiveType::Timestamptz,
        "string" => PrimitiveType::String,
        "binary" => PrimitiveType::Binary,
        _ => return None,
    })
}

fn parse_type(text: &str) -> std::result::Result<Declared, String> {
    let mut parser = Parser { text, rest: text };
    let declared = parser.parse()?;
    if !parser.rest.trim().is_empty() {
        return Err(parser.error("the end of the type"));
    }
    Ok(declared)
}

/// The Iceberg type a graph file names, e.g. `boolean` or `list<struct<id long, name string>>`
/// (nested field ids from 1: a table renumbers them where it places the column).
pub fn type_named(text: &str) -> std::result::Result<Type, String> {
    let declared = parse_type(text)?;
    Ok(build(&declared, &mut 1))
}

/// Builds nested types, taking ids for nested fields from `next_id`.
fn build(declared: &Declared, next_id: &mut i32) -> Type {
    match declared {
        Declared::Primitive(primitive) => Type::Primitive(primitive.clone()),
        Declared::List(element) => {
            let id = take(next_id);
            Type::List(ListType::new(Arc::new(NestedField::list_element(id, build(element, next_id), false))))
        }
        Declared::Struct(fields) => {
            let ids: Vec<i32> = fields.iter().map(|_| take(next_id)).collect();
            let fields = fields
                .iter()
                .zip(ids)
                .map(|((name, declared), id)| Arc::new(NestedField::optional(id, name, build(declared, next_id))))
                .collect();
            Type::Struct(StructType::new(fields))
        }
    }
}

fn take(next_id: &mut i32) -> i32 {
    let id = *next_id;
    *next_id += 1;
    id
}

/// The Iceberg schema of `"name type"` declarations, in order. Errors name the declaration.
pub fn schema_of(declarations: &[String]) -> std::result::Result<Schema, String> {
    let mut columns = Vec::new();
    for text in declarations {
        let (name, type_text) = text
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{text:?}: expected \"name type\", e.g. \"rating float\""))?;
        if columns.iter().any(|(existing, _)| existing == name) {
            return Err(format!("column {name} is declared twice"));
        }
        columns.push((name.to_string(), parse_type(type_text.trim())?));
    }
    if columns.is_empty() {
        return Err("no columns declared".into());
    }
    let mut next_id = columns.len() as i32 + 1;
    let fields: Vec<Arc<NestedField>> = columns
        .iter()
        .enumerate()
        .map(|(index, (name, declared))| Arc::new(NestedField::optional(index as i32 + 1, name, build(declared, &mut next_id))))
        .collect();
    Schema::builder().with_fields(fields).build().map_err(|e| e.to_string())
}

/// Whether `found` can be relabelled as `expected`: the same types all the way down, struct
/// fields with the same names in the same order; the names of list items, field metadata and
/// nullability flags may differ.
pub fn same_layout(found: &DataType, expected: &DataType) -> bool {
    match (found, expected) {
        (DataType::List(a), DataType::List(b)) | (DataType::LargeList(a), DataType::LargeList(b)) | (DataType::Map(a, _), DataType::Map(b, _)) => {
            same_layout(a.data_type(), b.data_type())
        }
        (DataType::Struct(a), DataType::Struct(b)) => {
            a.len() == b.len() && a.iter().zip(b.iter()).all(|(a, b)| a.name() == b.name() && same_layout(a.data_type(), b.data_type()))
        }
        _ => found == expected,
    }
}

fn relabel(data: ArrayData, expected: &DataType) -> std::result::Result<ArrayData, arrow::error::ArrowError> {
    let children = match expected {
        DataType::List(field) | DataType::LargeList(field) | DataType::Map(field, _) => vec![relabel(data.child_data()[0].clone(), field.data_type())?],
        DataType::Struct(fields) => {
            data.child_data().iter().zip(fields.iter()).map(|(child, field)| relabel(child.clone(), field.data_type())).collect::<Result<_, _>>()?
        }
        _ => return Ok(data),
    };
    data.into_builder().data_type(expected.clone()).child_data(children).build()
}

/// `array` with exactly type `expected`; the caller has checked [`same_layout`].
pub fn conform(array: &ArrayRef, expected: &DataType) -> Result<ArrayRef> {
    if array.data_type() == expected {
        return Ok(array.clone());
    }
    if !same_layout(array.data_type(), expected) {
        return Err(Error::Internal(format!("cannot relabel a {} array as {expected}", array.data_type())));
    }
    let data = relabel(array.to_data(), expected).map_err(|e| Error::Internal(format!("relabelling a {} array as {expected}: {e}", array.data_type())))?;
    Ok(make_array(data))
}

/// `batch`'s columns named by `schema`, in its order and with its exact types.
pub fn conform_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let column = batch
                .column_by_name(field.name())
                .ok_or_else(|| Error::Internal(format!("a batch without column {} reached the writer", field.name())))?;
            conform(column, field.data_type())
        })
        .collect::<Result<Vec<_>>>()?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options).map_err(|e| Error::Internal(format!("building a batch of {schema}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    #[test]
    fn nested_declarations_get_iceberg_style_ids() {
        let schema = schema_of(&["id string".into(), "tags list<struct<id long, name string>>".into(), "day date".into()]).unwrap();
        let tags = schema.field_by_name("tags").unwrap();
        assert_eq!(tags.id, 2);
        let Type::List(list) = &*tags.field_type else { panic!("{tags:?}") };
        assert_eq!(list.element_field.id, 4);
        let Type::Struct(element) = &*list.element_field.field_type else { panic!() };
        let ids: Vec<i32> = element.fields().iter().map(|f| f.id).collect();
        assert_eq!(ids, vec![5, 6]);
        assert_eq!(schema.field_by_name("day").unwrap().id, 3);
    }

    #[test]
    fn bad_declarations_say_what_is_wrong() {
        let error = |text: &str| schema_of(&[text.to_string()]).unwrap_err();
        assert!(error("rating").contains("expected \"name type\""));
        assert!(error("rating number").contains("unknown type \"number\""));
        assert!(error("g list<long").contains("`>` closing list<"));
        assert!(error("s struct<a long, a int>").contains("field a appears twice"));
        assert!(error("x long long").contains("the end of the type"));
        assert!(schema_of(&["a long".into(), "a int".into()]).unwrap_err().contains("declared twice"));
    }

    #[test]
    fn list_item_names_and_metadata_are_relabelled_not_types() {
        let item = |name: &str| Arc::new(Field::new(name, DataType::Int64, true));
        let found = DataType::List(item("element"));
        let expected = DataType::List(item("item"));
        assert!(same_layout(&found, &expected));
        assert!(!same_layout(&DataType::List(Arc::new(Field::new("element", DataType::Int32, true))), &expected));
        let array: ArrayRef = Arc::new(arrow::array::ListArray::new(
            item("element"),
            arrow::buffer::OffsetBuffer::from_lengths([2, 0]),
            Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
            None,
        ));
        let relabelled = conform(&array, &expected).unwrap();
        assert_eq!(relabelled.data_type(), &expected);
        assert_eq!(relabelled.len(), 2);
    }
}
