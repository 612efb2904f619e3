//! Writing rows of one partition as Iceberg data files (Parquet, zstd), rolled at a target size,
//! and position delete files (the spec's `file_path`, `pos` rows) that mark rows of data files as
//! deleted without rewriting them.

use std::sync::Arc;

use iceberg::spec::{DataContentType, DataFile, DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
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
    let rolling = RollingFileWriterBuilder::new(
        parquet,
        target_file_size,
        table.file_io().clone(),
        DefaultLocationGenerator::new(metadata).context(context)?,
        DefaultFileNameGenerator::new(
            format!("{name_prefix}-{}", uuid::Uuid::new_v4().simple()),
            None,
            DataFileFormat::Parquet,
        ),
    );
    let key = PartitionKey::new(
        metadata.default_partition_spec().as_ref().clone(),
        metadata.current_schema().clone(),
        Struct::from_iter([Some(Literal::date(day))]),
    );
    let mut writer = DataFileWriterBuilder::new(rolling).build(Some(key)).await.context(context)?;
    for batch in batches {
        writer.write(batch).await.context(context)?;
    }
    writer.close().await.context(context)
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
    let key = PartitionKey::new(
        metadata.default_partition_spec().as_ref().clone(),
        metadata.current_schema().clone(),
        Struct::from_iter([Some(Literal::date(day))]),
    );
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
