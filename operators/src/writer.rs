//! Writing rows of one partition as Iceberg data files (Parquet, zstd), rolled at a target size.

use iceberg::spec::{DataFile, DataFileFormat, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use arrow_array::RecordBatch;

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
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("zstd level 1 is valid")))
        // Event ids are unique: a dictionary would only be built to be thrown away.
        .set_column_dictionary_enabled("event_id".into(), false)
        .build();
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
