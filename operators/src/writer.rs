//! Writing rows of one partition as Iceberg data files (Parquet), rolled at a target size, and
//! position delete files (the spec's `file_path`, `pos` rows) that mark rows of data files as
//! deleted without rewriting them. Both are compressed as the table's properties say
//! ([`table_compression`]).

use std::sync::Arc;

use iceberg::spec::{DataContentType, DataFile, DataFileFormat, Datum, Literal, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{DefaultFileNameGenerator, DefaultLocationGenerator};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
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
    let properties = parquet_properties(table)?;
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

/// The Parquet writer settings of `table`'s new data files: its codec ([`table_compression`]);
/// no dictionary for its distinct columns ([`crate::schema::PLAIN_COLUMNS_PROPERTY`]), which
/// would only be built to be thrown away once it outgrows its page; and those columns' encoding
/// ([`table_distinct_encoding`]).
pub fn parquet_properties(table: &Table) -> Result<WriterProperties> {
    let metadata = table.metadata();
    let encoding = table_distinct_encoding(table)?;
    let schema = metadata.current_schema();
    let mut properties = WriterProperties::builder().set_compression(table_compression(table)?);
    for column in table_plain_columns(table) {
        properties = properties.set_column_dictionary_enabled(column.into(), false);
        let field_type = schema.field_by_name(column).map(|field| field.field_type.as_ref());
        if let Some(parquet_encoding) = field_type.and_then(|ty| encoding.of(ty)) {
            properties = properties.set_column_encoding(column.into(), parquet_encoding);
        }
    }
    Ok(properties.build())
}

/// The columns `table` writes without a dictionary: its [`crate::schema::PLAIN_COLUMNS_PROPERTY`].
pub fn table_plain_columns(table: &Table) -> Vec<&str> {
    let plain = table.metadata().properties().get(crate::schema::PLAIN_COLUMNS_PROPERTY).map(String::as_str).unwrap_or_default();
    plain.split(',').map(str::trim).filter(|c| !c.is_empty()).collect()
}

/// The table property choosing how the distinct columns (those of
/// [`crate::schema::PLAIN_COLUMNS_PROPERTY`]) are encoded: `delta` or `plain`
/// ([`DistinctEncoding`]).
pub const DISTINCT_ENCODING_PROPERTY: &str = "ratings-flow.write.distinct-columns-encoding";

/// How the columns that hold a different value in (nearly) every row, the key, the order,
/// ingestion times and offsets, are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistinctEncoding {
    /// Parquet's delta encodings: DELTA_BINARY_PACKED for integer, date, time and timestamp
    /// columns, DELTA_LENGTH_BYTE_ARRAY for strings and binaries (other types stay PLAIN).
    /// Offsets and ingestion times, nearly sorted, shrink to a few bits per value before the
    /// codec sees them; strings reach the codec as one run of bytes instead of bytes broken by a
    /// 4-byte length each, which zstd otherwise spends its time matching. On the ratings columns
    /// this writes both tables ~30% faster for the same size (benches/README.md). Every current
    /// Parquet reader takes them (pyarrow, DuckDB, Trino, iceberg-rust, Spark's own reader);
    /// Iceberg Java's vectorized reader learnt DELTA_BINARY_PACKED in apache/iceberg#13391
    /// (2025) and DELTA_LENGTH_BYTE_ARRAY in #15362 (2026).
    Delta,
    /// PLAIN, as every Parquet reader ever written takes it.
    Plain,
}

impl DistinctEncoding {
    /// The name stored in [`DISTINCT_ENCODING_PROPERTY`] and written in a graph.
    pub fn name(self) -> &'static str {
        match self {
            DistinctEncoding::Delta => "delta",
            DistinctEncoding::Plain => "plain",
        }
    }

    /// The encoding of `name` (case-insensitive).
    pub fn parse(name: &str) -> std::result::Result<DistinctEncoding, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "delta" => Ok(DistinctEncoding::Delta),
            "plain" => Ok(DistinctEncoding::Plain),
            other => Err(format!("unknown encoding \"{other}\": expected delta or plain")),
        }
    }

    /// The Parquet encoding of a distinct column of Iceberg type `ty`; `None` leaves the
    /// writer's default (PLAIN).
    fn of(self, ty: &iceberg::spec::Type) -> Option<parquet::basic::Encoding> {
        use iceberg::spec::{PrimitiveType as P, Type};
        use parquet::basic::Encoding;
        match (self, ty) {
            (DistinctEncoding::Plain, _) => None,
            (DistinctEncoding::Delta, Type::Primitive(P::Int | P::Long | P::Date | P::Time | P::Timestamp | P::Timestamptz | P::TimestampNs | P::TimestamptzNs)) => {
                Some(Encoding::DELTA_BINARY_PACKED)
            }
            (DistinctEncoding::Delta, Type::Primitive(P::String | P::Binary)) => Some(Encoding::DELTA_LENGTH_BYTE_ARRAY),
            (DistinctEncoding::Delta, _) => None,
        }
    }
}

/// How `table` asks its distinct columns to be encoded: its [`DISTINCT_ENCODING_PROPERTY`].
/// A table without it (made before the property existed) keeps PLAIN, as its files so far.
pub fn table_distinct_encoding(table: &Table) -> Result<DistinctEncoding> {
    distinct_encoding_of(table.metadata().properties(), table.identifier())
}

/// [`table_distinct_encoding`] of a table with these properties.
fn distinct_encoding_of(properties: &std::collections::HashMap<String, String>, table: &iceberg::TableIdent) -> Result<DistinctEncoding> {
    match properties.get(DISTINCT_ENCODING_PROPERTY) {
        None => Ok(DistinctEncoding::Plain),
        Some(name) => DistinctEncoding::parse(name).map_err(|e| {
            crate::Error::User(format!(
                "table {table}: {e} (its property {DISTINCT_ENCODING_PROPERTY}; correct it with any Iceberg tool, a retry does not help)"
            ))
        }),
    }
}

/// Iceberg's table property naming the Parquet codec of new files.
pub const COMPRESSION_CODEC_PROPERTY: &str = "write.parquet.compression-codec";
/// Iceberg's table property giving the codec's level (zstd 1–22, gzip 0–9, brotli 0–11).
pub const COMPRESSION_LEVEL_PROPERTY: &str = "write.parquet.compression-level";

/// What a graph (or a table without the properties) gets: zstd at level 1, the cheapest zstd
/// level, which Iceberg readers everywhere decode.
pub fn default_compression() -> Compression {
    Compression::ZSTD(ZstdLevel::default())
}

/// How `table` asks its new Parquet files to be compressed: its [`COMPRESSION_CODEC_PROPERTY`]
/// and [`COMPRESSION_LEVEL_PROPERTY`], as every Iceberg writer reads them (so `ALTER TABLE ...
/// SET TBLPROPERTIES` from another engine changes what this one writes next). Without a codec:
/// [`default_compression`]; a codec without a level: zstd 1, gzip 6, brotli 1.
pub fn table_compression(table: &Table) -> Result<Compression> {
    compression_of(table.metadata().properties(), table.identifier())
}

/// [`table_compression`] of a table with these properties.
fn compression_of(properties: &std::collections::HashMap<String, String>, table: &iceberg::TableIdent) -> Result<Compression> {
    match properties.get(COMPRESSION_CODEC_PROPERTY) {
        None => Ok(default_compression()),
        Some(codec) => compression(codec, properties.get(COMPRESSION_LEVEL_PROPERTY).map(String::as_str)).map_err(|e| {
            crate::Error::User(format!(
                "table {table}: {e} (its properties {COMPRESSION_CODEC_PROPERTY} / {COMPRESSION_LEVEL_PROPERTY}; \
                 correct them with any Iceberg tool, a retry does not help)"
            ))
        }),
    }
}

/// A graph's `[tables] compression`: a codec, optionally with its level: `zstd`, `zstd(3)`,
/// `lz4`, `snappy`, `gzip(6)`, `brotli(4)`, `uncompressed`.
pub fn parse_compression(text: &str) -> std::result::Result<Compression, String> {
    let text = text.trim();
    match text.strip_suffix(')').and_then(|head| head.split_once('(')) {
        Some((codec, level)) => compression(codec.trim(), Some(level.trim())),
        None => compression(text, None),
    }
}

/// The table properties that ask for `compression` (see [`table_compression`]).
pub fn compression_properties(compression: Compression) -> Vec<(String, String)> {
    let (codec, level) = match compression {
        Compression::ZSTD(level) => ("zstd", Some(level.compression_level())),
        Compression::GZIP(level) => ("gzip", Some(level.compression_level() as i32)),
        Compression::BROTLI(level) => ("brotli", Some(level.compression_level() as i32)),
        Compression::SNAPPY => ("snappy", None),
        Compression::LZ4_RAW | Compression::LZ4 => ("lz4", None),
        _ => ("uncompressed", None),
    };
    let mut properties = vec![(COMPRESSION_CODEC_PROPERTY.to_string(), codec.to_string())];
    properties.extend(level.map(|level| (COMPRESSION_LEVEL_PROPERTY.to_string(), level.to_string())));
    properties
}

/// The Parquet compression of an Iceberg codec name (case-insensitive) and level. `lz4` is
/// Parquet's LZ4_RAW, the framing every current reader takes (the older LZ4 is deprecated).
fn compression(codec: &str, level: Option<&str>) -> std::result::Result<Compression, String> {
    let parsed_level = |max: u32| -> std::result::Result<Option<u32>, String> {
        match level {
            None => Ok(None),
            Some(text) => match text.parse::<u32>() {
                Ok(level) if level <= max => Ok(Some(level)),
                _ => Err(format!("compression level \"{text}\" for {codec}: expected a whole number up to {max}")),
            },
        }
    };
    let without_level = |compression: Compression| match level {
        None => Ok(compression),
        Some(text) => Err(format!("{codec} takes no compression level, found \"{text}\"")),
    };
    match codec.to_ascii_lowercase().as_str() {
        "zstd" => Ok(Compression::ZSTD(match parsed_level(22)? {
            Some(level) => ZstdLevel::try_new(level as i32).map_err(|e| format!("zstd level: {e}"))?,
            None => ZstdLevel::default(),
        })),
        "gzip" => Ok(Compression::GZIP(match parsed_level(9)? {
            Some(level) => GzipLevel::try_new(level).map_err(|e| format!("gzip level: {e}"))?,
            None => GzipLevel::default(),
        })),
        "brotli" => Ok(Compression::BROTLI(match parsed_level(11)? {
            Some(level) => BrotliLevel::try_new(level).map_err(|e| format!("brotli level: {e}"))?,
            None => BrotliLevel::default(),
        })),
        "snappy" => without_level(Compression::SNAPPY),
        "lz4" => without_level(Compression::LZ4_RAW),
        "uncompressed" | "none" => without_level(Compression::UNCOMPRESSED),
        other => Err(format!("unknown Parquet codec \"{other}\": expected zstd, lz4, snappy, gzip, brotli or uncompressed")),
    }
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
    let properties = WriterProperties::builder().set_compression(table_compression(table)?).build();
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

    #[test]
    fn a_graph_names_a_codec_with_or_without_its_level() {
        use parquet::basic::{BrotliLevel, Compression, GzipLevel, ZstdLevel};
        assert_eq!(super::parse_compression("zstd(1)"), Ok(Compression::ZSTD(ZstdLevel::try_new(1).unwrap())));
        assert_eq!(super::parse_compression(" ZSTD( 9 ) "), Ok(Compression::ZSTD(ZstdLevel::try_new(9).unwrap())));
        assert_eq!(super::parse_compression("zstd"), Ok(Compression::ZSTD(ZstdLevel::try_new(1).unwrap())));
        assert_eq!(super::parse_compression("lz4"), Ok(Compression::LZ4_RAW));
        assert_eq!(super::parse_compression("snappy"), Ok(Compression::SNAPPY));
        assert_eq!(super::parse_compression("gzip(9)"), Ok(Compression::GZIP(GzipLevel::try_new(9).unwrap())));
        assert_eq!(super::parse_compression("brotli"), Ok(Compression::BROTLI(BrotliLevel::try_new(1).unwrap())));
        assert_eq!(super::parse_compression("uncompressed"), Ok(Compression::UNCOMPRESSED));
        for (text, expected) in [
            ("zstd(23)", "expected a whole number up to 22"),
            ("zstd(-1)", "expected a whole number up to 22"),
            ("gzip(x)", "expected a whole number up to 9"),
            ("lz4(3)", "lz4 takes no compression level"),
            ("lzo", "unknown Parquet codec \"lzo\""),
        ] {
            let error = super::parse_compression(text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn the_properties_of_a_compression_read_back_as_that_compression() {
        use parquet::basic::{Compression, GzipLevel, ZstdLevel};
        for compression in [
            Compression::ZSTD(ZstdLevel::try_new(3).unwrap()),
            Compression::GZIP(GzipLevel::try_new(2).unwrap()),
            Compression::LZ4_RAW,
            Compression::SNAPPY,
            Compression::UNCOMPRESSED,
        ] {
            let properties: std::collections::HashMap<_, _> = super::compression_properties(compression).into_iter().collect();
            let codec = &properties[super::COMPRESSION_CODEC_PROPERTY];
            let level = properties.get(super::COMPRESSION_LEVEL_PROPERTY).map(String::as_str);
            assert_eq!(super::compression(codec, level), Ok(compression));
        }
    }

    /// Every column chunk of the Parquet file at `path` in `table`.
    async fn column_chunks_of(table: &iceberg::table::Table, path: &str) -> Vec<parquet::file::metadata::ColumnChunkMetaData> {
        use parquet::file::reader::FileReader;
        let bytes = table.file_io().new_input(path).unwrap().read().await.unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(bytes).unwrap();
        reader.metadata().row_groups().iter().flat_map(|group| group.columns().iter().cloned()).collect()
    }

    /// The codec of every column chunk of the Parquet file at `path` in `table`.
    async fn codecs_of(table: &iceberg::table::Table, path: &str) -> Vec<parquet::basic::Compression> {
        column_chunks_of(table, path).await.iter().map(|column| column.compression()).collect()
    }

    #[tokio::test]
    async fn files_are_compressed_as_the_table_properties_say() {
        use parquet::basic::{Compression, ZstdLevel};
        let f = fixture().await;
        // The fixture's table, created with the default: zstd level 1.
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        assert_eq!(table.metadata().properties().get(super::COMPRESSION_CODEC_PROPERTY).map(String::as_str), Some("zstd"));
        let rows = crate::test_fixture::curated_rows(&table, 0, 1, 50);
        let files = super::write_partition(&table, 0, [rows.clone()], 1 << 27, "t").await.unwrap();
        assert!(codecs_of(&table, files[0].file_path()).await.iter().all(|c| *c == Compression::ZSTD(ZstdLevel::try_new(1).unwrap())));
        // A table created with lz4: data and position delete files are LZ4_RAW.
        let mut layout = crate::test_fixture::ratings_pipeline().curated_layout().unwrap();
        layout.compression = Compression::LZ4_RAW;
        let lz4 = crate::catalog::parse_table_ident("curated.lz4_ratings").unwrap();
        let table = f.lakehouse.ensure_table(&lz4, &layout).await.unwrap();
        let files = super::write_partition(&table, 0, [rows], 1 << 27, "t").await.unwrap();
        let codecs = codecs_of(&table, files[0].file_path()).await;
        assert!(!codecs.is_empty() && codecs.iter().all(|c| *c == Compression::LZ4_RAW), "{codecs:?}");
        let deletes = super::write_position_deletes(&table, 0, &[(files[0].file_path().into(), 0)], "t").await.unwrap();
        assert!(codecs_of(&table, deletes.file_path()).await.iter().all(|c| *c == Compression::LZ4_RAW));
    }

    /// The encodings of each column of the Parquet file at `path` in `table`, by column name.
    async fn encodings_of(table: &iceberg::table::Table, path: &str) -> std::collections::HashMap<String, Vec<parquet::basic::Encoding>> {
        let mut encodings = std::collections::HashMap::<String, Vec<_>>::new();
        for column in column_chunks_of(table, path).await {
            encodings.entry(column.column_path().string()).or_default().extend(column.encodings());
        }
        encodings
    }

    #[tokio::test]
    async fn distinct_columns_are_delta_encoded_as_the_table_says_and_read_back_unchanged() {
        use parquet::basic::Encoding;
        let f = fixture().await;
        // The fixture's table, created with the default: delta.
        let table = f.lakehouse.load(&f.ident).await.unwrap();
        assert_eq!(super::table_distinct_encoding(&table).unwrap(), super::DistinctEncoding::Delta);
        let rows = crate::test_fixture::curated_rows(&table, 0, 1, 3000);
        let files = super::write_partition(&table, 0, [rows.clone()], 1 << 27, "t").await.unwrap();
        let encodings = encodings_of(&table, files[0].file_path()).await;
        for (column, expected) in [
            ("event_id", Encoding::DELTA_LENGTH_BYTE_ARRAY),
            ("rating_timestamp", Encoding::DELTA_BINARY_PACKED),
            ("ingestion_ts_ms", Encoding::DELTA_BINARY_PACKED),
            ("source_offset", Encoding::DELTA_BINARY_PACKED),
            // Not a distinct column: a dictionary, as before.
            ("user_id", Encoding::RLE_DICTIONARY),
        ] {
            assert!(encodings[column].contains(&expected), "{column}: {:?}", encodings[column]);
        }
        let read = super::read_parquet(&table, files[0].file_path()).await.unwrap();
        assert_eq!(arrow::compute::concat_batches(&rows.schema(), &read).unwrap(), rows);
        // A table created with plain: no delta encoding anywhere.
        let mut layout = crate::test_fixture::ratings_pipeline().curated_layout().unwrap();
        layout.distinct_encoding = super::DistinctEncoding::Plain;
        let plain = crate::catalog::parse_table_ident("curated.plain_ratings").unwrap();
        let table = f.lakehouse.ensure_table(&plain, &layout).await.unwrap();
        let files = super::write_partition(&table, 0, [rows.clone()], 1 << 27, "t").await.unwrap();
        let encodings = encodings_of(&table, files[0].file_path()).await;
        let delta = [Encoding::DELTA_BINARY_PACKED, Encoding::DELTA_LENGTH_BYTE_ARRAY, Encoding::DELTA_BYTE_ARRAY];
        assert!(encodings.values().flatten().all(|e| !delta.contains(e)), "{encodings:?}");
        assert!(encodings["event_id"].contains(&Encoding::PLAIN), "{encodings:?}");
        let read = super::read_parquet(&table, files[0].file_path()).await.unwrap();
        assert_eq!(arrow::compute::concat_batches(&rows.schema(), &read).unwrap(), rows);
        // A graph's `tables.without_dictionary` column: no dictionary, delta like the distinct ones.
        let mut pipeline = crate::test_fixture::ratings_pipeline();
        pipeline.without_dictionary = vec!["user_id".into()];
        let undictionaried = crate::catalog::parse_table_ident("curated.ids_without_dictionary").unwrap();
        let table = f.lakehouse.ensure_table(&undictionaried, &pipeline.curated_layout().unwrap()).await.unwrap();
        let files = super::write_partition(&table, 0, [rows.clone()], 1 << 27, "t").await.unwrap();
        let encodings = encodings_of(&table, files[0].file_path()).await;
        assert!(encodings["user_id"].contains(&Encoding::DELTA_LENGTH_BYTE_ARRAY), "{encodings:?}");
        assert!(!encodings["user_id"].contains(&Encoding::RLE_DICTIONARY), "{encodings:?}");
        assert!(encodings["movie_id"].contains(&Encoding::RLE_DICTIONARY), "{encodings:?}");
        let read = super::read_parquet(&table, files[0].file_path()).await.unwrap();
        assert_eq!(arrow::compute::concat_batches(&rows.schema(), &read).unwrap(), rows);
    }

    #[test]
    fn a_table_without_the_encoding_property_keeps_plain_and_an_unknown_one_is_refused() {
        let table = crate::catalog::parse_table_ident("curated.movie_ratings").unwrap();
        assert_eq!(super::distinct_encoding_of(&Default::default(), &table).unwrap(), super::DistinctEncoding::Plain);
        let with = |name: &str| std::collections::HashMap::from([(super::DISTINCT_ENCODING_PROPERTY.to_string(), name.to_string())]);
        assert_eq!(super::distinct_encoding_of(&with("DELTA"), &table).unwrap(), super::DistinctEncoding::Delta);
        let error = super::distinct_encoding_of(&with("rle"), &table).unwrap_err().to_string();
        assert!(error.contains("unknown encoding \"rle\"") && error.contains(super::DISTINCT_ENCODING_PROPERTY), "{error}");
        assert!(error.contains("curated.movie_ratings"), "{error}");
    }

    #[test]
    fn a_table_asking_for_an_unknown_codec_is_refused_with_the_property_named() {
        let table = crate::catalog::parse_table_ident("curated.movie_ratings").unwrap();
        let properties = std::collections::HashMap::from([(super::COMPRESSION_CODEC_PROPERTY.to_string(), "lzo".to_string())]);
        let error = super::compression_of(&properties, &table).unwrap_err().to_string();
        assert!(error.contains("unknown Parquet codec \"lzo\"") && error.contains(super::COMPRESSION_CODEC_PROPERTY), "{error}");
        assert!(error.contains("curated.movie_ratings"), "{error}");
        let properties = std::collections::HashMap::from([
            (super::COMPRESSION_CODEC_PROPERTY.to_string(), "gzip".to_string()),
            (super::COMPRESSION_LEVEL_PROPERTY.to_string(), "12".to_string()),
        ]);
        assert!(super::compression_of(&properties, &table).unwrap_err().to_string().contains("up to 9"));
        assert_eq!(super::compression_of(&Default::default(), &table).unwrap(), super::default_compression());
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
