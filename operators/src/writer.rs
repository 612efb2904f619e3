//! Writing rows of one partition as Iceberg data files (Parquet, zstd), rolled at a target size,
//! and position delete files (the spec's `file_path`, `pos` rows) that mark rows of data files as
//! deleted without rewriting them.

use std::sync::Arc;

use iceberg::spec::{DataContentType, DataFile, DataFileFormat, Datum, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use arrow_array::{Int64Array, RecordBatch, StringArray};

use crate::error::{Context, Result};

/// Writes `batches` (all rows of partition `day`) into new data files of `table`. `name_prefix`
/// keeps names of concurrent writers apart; a UUID inside the generated names keeps runs apart.
pub async fn write_partition(
    table: &Table,
    day: i32,
    batches: impl IntoIterator<Item = RecordBatch>,
    target_file_size: usize,
    name_prefix: &str,
) -> Result<Vec<DataFile>> {
    let metadata = table.metadata();
    let context = || format!("writing partition {} of {}", crate::model::format_date(day), table.identifier());
    let mut properties = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("zstd level 1 is valid")));
    // Columns whose values are (nearly) all distinct (the table says which): a dictionary would
    // only be built to be thrown away once it outgrows its page.
    let plain = metadata.properties().get(crate::schema::PLAIN_COLUMNS_PROPERTY).map(String::as_str).unwrap_or_default();
    for column in plain.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        properties = properties.set_column_dictionary_enabled(column.into(), false);
    }
    let properties = properties.build();
    let parquet = ParquetWriterBuilder::new(properties, metadata.current_schema().clone());
    let mut writer = RollingFileWriterBuilder::new(
        parquet,
        target_file_size,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata).context(context)?,
        DefaultFileNameGenerator::new(
            format!("{name_prefix}-{}", uuid::Uuid::new_v4().simple()),
            None,
            DataFileFormat::Parquet,
        ),
    )
    .build();
    let key = day_partition(metadata, day);
    let mut zeros = ZeroBounds::new(metadata.current_schema());
    for batch in batches {
        zeros.observe(&batch);
        writer
            .write(&Some(key.clone()), &batch)
            .await
            .context(context)?;
    }
    let mut files = Vec::new();
    for mut file in writer.close().await.context(context)? {
        file.content(DataContentType::Data)
            .partition(key.data().clone())
            .partition_spec_id(key.spec().spec_id());
        let built = file
            .build()
            .map_err(|e| crate::Error::Internal(format!("{}: {e}", context())))?;
        files.push(match zeros.corrected(&built) {
            Some(bounds) => file
                .lower_bounds(bounds)
                .build()
                .map_err(|e| crate::Error::Internal(format!("{}: {e}", context())))?,
            None => built,
        });
    }
    Ok(files)
}

/// The key of partition `day` in the table's (one-field, by day) partition spec.
fn day_partition(metadata: &iceberg::spec::TableMetadata, day: i32) -> PartitionKey {
    PartitionKey::new(
        metadata.default_partition_spec().as_ref().clone(),
        metadata.current_schema().clone(),
        Struct::from_iter([Some(Literal::date(day))]),
    )
}

/// Parquet writes the minimum of a float column whose smallest value is a zero as `-0.0` (the
/// format's rule, so old readers that order -0.0 before 0.0 never skip a page wrongly), and
/// Iceberg's writer copies that into the data file's `lower_bounds`: Spark then answers
/// `min(rating)` from metadata as -0.0 although no row holds it. This notes which top-level
/// float and double columns really hold a negative zero, so a file's -0.0 bound is put back to
/// 0.0 unless it does.
struct ZeroBounds {
    /// (field id, column name, whether a row held -0.0) per float/double column.
    columns: Vec<(i32, String, bool)>,
}

impl ZeroBounds {
    fn new(schema: &iceberg::spec::Schema) -> ZeroBounds {
        use iceberg::spec::{PrimitiveType, Type};
        let columns = schema
            .as_struct()
            .fields()
            .iter()
            .filter(|f| {
                matches!(
                    *f.field_type,
                    Type::Primitive(PrimitiveType::Float | PrimitiveType::Double)
                )
            })
            .map(|f| (f.id, f.name.clone(), false))
            .collect();
        ZeroBounds { columns }
    }

    fn observe(&mut self, batch: &RecordBatch) {
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Float32Type, Float64Type};
        for (_, name, seen) in self.columns.iter_mut().filter(|(_, _, seen)| !*seen) {
            let Some(column) = batch.column_by_name(name) else {
                continue;
            };
            *seen = match column.data_type() {
                arrow_schema::DataType::Float32 => column
                    .as_primitive::<Float32Type>()
                    .iter()
                    .flatten()
                    .any(|v| v == 0.0 && v.is_sign_negative()),
                arrow_schema::DataType::Float64 => column
                    .as_primitive::<Float64Type>()
                    .iter()
                    .flatten()
                    .any(|v| v == 0.0 && v.is_sign_negative()),
                _ => false,
            };
        }
    }

    /// The file's lower bounds with each unwarranted -0.0 replaced by 0.0, or None if none is.
    fn corrected(&self, file: &DataFile) -> Option<std::collections::HashMap<i32, Datum>> {
        use iceberg::spec::PrimitiveLiteral;
        let mut bounds = file.lower_bounds().clone();
        let mut changed = false;
        for (id, _, _) in self.columns.iter().filter(|(_, _, seen)| !*seen) {
            let zero = match bounds.get(id).map(|d| d.literal()) {
                Some(PrimitiveLiteral::Float(v)) if v.0 == 0.0 && v.0.is_sign_negative() => {
                    Datum::float(0.0)
                }
                Some(PrimitiveLiteral::Double(v)) if v.0 == 0.0 && v.0.is_sign_negative() => {
                    Datum::double(0.0)
                }
                _ => continue,
            };
            bounds.insert(*id, zero);
            changed = true;
        }
        changed.then_some(bounds)
    }
}

/// The spec's position delete schema: `file_path` (field id 2147483546) and `pos` (2147483545).
fn position_delete_schema() -> Result<iceberg::spec::Schema> {
    use iceberg::spec::{NestedField, PrimitiveType, Type};
    iceberg::spec::Schema::builder()
        .with_fields(vec![
            Arc::new(NestedField::required(2_147_483_546, "file_path", Type::Primitive(PrimitiveType::String))),
            Arc::new(NestedField::required(2_147_483_545, "pos", Type::Primitive(PrimitiveType::Long))),
        ])
        .build()
        .context(|| "building the position delete schema".into())
}

/// Writes one position delete file for partition `day` marking `deletes` (data file path, row
/// position). `deletes` must be sorted by path, then position (the spec's order).
pub async fn write_position_deletes(table: &Table, day: i32, deletes: &[(Arc<str>, i64)], name_prefix: &str) -> Result<DataFile> {
    let metadata = table.metadata();
    let context = || format!("writing position deletes of {} in {}", crate::model::format_date(day), table.identifier());
    let schema = Arc::new(position_delete_schema()?);
    let arrow = Arc::new(iceberg::arrow::schema_to_arrow_schema(&schema).context(context)?);
    let batch = RecordBatch::try_new(
        arrow,
        vec![
            Arc::new(StringArray::from_iter_values(deletes.iter().map(|(path, _)| &**path))),
            Arc::new(Int64Array::from_iter_values(deletes.iter().map(|(_, pos)| *pos))),
        ],
    )
    .context(context)?;
    let properties = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("zstd level 1 is valid"))).build();
    let mut writer = RollingFileWriterBuilder::new(
        ParquetWriterBuilder::new(properties, schema),
        usize::MAX,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata).context(context)?,
        DefaultFileNameGenerator::new(format!("{name_prefix}-deletes-{}", uuid::Uuid::new_v4().simple()), None, DataFileFormat::Parquet),
    )
    .build();
    let key = day_partition(metadata, day);
    writer.write(&Some(key.clone()), &batch).await.context(context)?;
    let mut built = Vec::new();
    for mut file in writer.close().await.context(context)? {
        file.content(DataContentType::PositionDeletes).partition(key.data().clone()).partition_spec_id(key.spec().spec_id());
        built.push(file.build().map_err(|e| crate::Error::Internal(format!("{}: {e}", context())))?);
    }
    match <[DataFile; 1]>::try_from(built) {
        Ok([file]) => Ok(file),
        Err(files) => Err(crate::Error::Internal(format!("{}: expected one file, wrote {}", context(), files.len()))),
    }
}

/// The record batches of the Parquet file at `path` of `table`, every row in file order.
pub async fn read_parquet(table: &Table, path: &str) -> Result<Vec<RecordBatch>> {
    let context = || format!("reading {path}");
    let bytes = table.file_io().new_input(path).context(context)?.read().await.context(context)?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| crate::Error::Internal(format!("{}: {e}", context())))?
        .build()
        .map_err(|e| crate::Error::Internal(format!("{}: {e}", context())))?;
    reader.map(|batch| batch.context(context)).collect()
}

/// The positions each position delete file at `paths` marks, by data file path.
pub async fn read_position_deletes(table: &Table, paths: &[String]) -> Result<std::collections::HashMap<String, Vec<i64>>> {
    use arrow_array::cast::AsArray;
    let mut deleted: std::collections::HashMap<String, Vec<i64>> = std::collections::HashMap::new();
    for path in paths {
        for batch in read_parquet(table, path).await? {
            let (Some(files), Some(positions)) = (batch.column_by_name("file_path"), batch.column_by_name("pos")) else {
                return Err(crate::Error::Internal(format!("position delete file {path}: no file_path/pos columns")));
            };
            let files = files.as_string::<i32>();
            let positions = positions.as_primitive::<arrow_array::types::Int64Type>();
            for row in 0..batch.num_rows() {
                deleted.entry(files.value(row).to_string()).or_default().push(positions.value(row));
            }
        }
    }
    for positions in deleted.values_mut() {
        positions.sort_unstable();
        positions.dedup();
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use iceberg::spec::PrimitiveLiteral;

    use crate::model::{IngestPosition, Origin};
    use crate::sample::{Candidate, Rating, curated_to_batch};
    use crate::schema::arrow_schema;
    use crate::test_fixture::fixture;

    /// The rating column's lower bound in the file written for rows of these ratings.
    async fn rating_lower_bound(ratings: &[f32]) -> f32 {
        let f = fixture().await;
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        let candidates: Vec<(u128, Candidate)> = ratings
            .iter()
            .enumerate()
            .map(|(i, rating)| {
                (
                    i as u128 + 1,
                    Candidate {
                        position: IngestPosition {
                            ingestion_ts_ms: 0,
                            partition: 0,
                            offset: i as i64,
                        },
                        origin: Origin::Input,
                        rating_timestamp: 0,
                        rating_date: 0,
                        user_id: "u".into(),
                        movie_id: "m".into(),
                        rating: Rating(*rating),
                        is_approved: false,
                    },
                )
            })
            .collect();
        let schema = arrow_schema(table.metadata().current_schema()).unwrap();
        let batch = curated_to_batch(&schema, candidates.iter().map(|(k, c)| (k, c))).unwrap();
        let files = super::write_partition(&table, 0, [batch], 1 << 27, "t")
            .await
            .unwrap();
        let rating_id = table
            .metadata()
            .current_schema()
            .field_by_name("rating")
            .unwrap()
            .id;
        match files[0].lower_bounds()[&rating_id].literal() {
            PrimitiveLiteral::Float(v) => v.0,
            other => panic!("rating bound is not a float: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_float_column_whose_minimum_is_zero_has_lower_bound_positive_zero() {
        let bound = rating_lower_bound(&[3.0, 0.0, 9.5]).await;
        assert_eq!(bound, 0.0);
        assert!(bound.is_sign_positive(), "lower bound written as {bound:?}");
    }

    #[tokio::test]
    async fn a_float_column_holding_negative_zero_keeps_lower_bound_negative_zero() {
        let bound = rating_lower_bound(&[3.0, -0.0, 0.0]).await;
        assert!(
            bound == 0.0 && bound.is_sign_negative(),
            "lower bound written as {bound:?}"
        );
    }

    #[tokio::test]
    async fn a_float_column_with_a_positive_minimum_keeps_its_bound() {
        assert_eq!(rating_lower_bound(&[3.0, 1.25]).await, 1.25);
    }
}
