//! Test fixture shared by the commit and maintenance tests: a curated table in a temporary SQL
//! catalog, and data files of known keys.

use iceberg::TableIdent;
use iceberg::spec::DataFile;

use crate::catalog::{CatalogSettings, Lakehouse, parse_table_ident};
use crate::model::{IngestPosition, Origin};
use crate::sample::{Candidate, Rating};
use crate::pipeline::{CuratedSection, KeyColumns, KeyKind, Pipeline, UpsertSection, ValidationSection};
use crate::schema::arrow_schema;
use crate::sample::curated_to_batch;

/// The shipped ratings pipeline's rules (lateness 5 days), for tests of this crate.
pub fn ratings_rules() -> crate::rules::Rules {
    crate::rules::Rules::new(std::sync::Arc::new(ratings_pipeline()), 5)
}

/// The shipped ratings pipeline's declarations (graphs/ratings.toml), for tests of this crate.
pub fn ratings_pipeline() -> Pipeline {
    let reader = apache_avro::Schema::parse_str(include_str!("../../graphs/schemas/movie_rating.avsc")).unwrap();
    let upsert = UpsertSection {
        key: KeyColumns::One("event_id".into()),
        key_type: KeyKind::Uuid,
        order_by: "rating_timestamp".into(),
        partition_by: "day(rating_timestamp, seconds) as rating_date".into(),
        lateness: "5d".into(),
    };
    let rule = |column: &str, rule: &str| ValidationSection {
        column: column.into(),
        rule: rule.into(),
        min: None,
        max: None,
        unit: None,
        tolerance: None,
        reason: None,
    };
    let validate = [
        rule("user_id", "present"),
        rule("movie_id", "present"),
        rule("rating", "present"),
        ValidationSection { min: Some(0.0), max: Some(10.0), ..rule("rating", "range") },
        rule("rating_timestamp", "present"),
        ValidationSection {
            unit: Some("seconds".into()),
            tolerance: Some("1h".into()),
            reason: Some("future_timestamp".into()),
            ..rule("rating_timestamp", "not_after_ingestion")
        },
    ];
    let curated = ["event_id", "user_id", "movie_id", "rating", "is_approved boolean", "rating_timestamp", "rating_date"];
    Pipeline::new(&reader, &upsert, &validate, Vec::new(), &CuratedSection { columns: curated.map(String::from).to_vec() }).unwrap()
}

pub struct Fixture {
    _dir: tempfile::TempDir,
    pub lakehouse: Lakehouse,
    pub ident: TableIdent,
}

pub async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let settings = CatalogSettings::sql("test", dir.path().join("catalog/catalog.db"), crate::storage::Warehouse::Local(dir.path().join("warehouse")));
    let lakehouse = Lakehouse::open(&settings, true).await.unwrap();
    let ident = parse_table_ident("curated.movie_ratings").unwrap();
    lakehouse.ensure_table(&ident, &ratings_pipeline().curated_layout().unwrap()).await.unwrap();
    Fixture { _dir: dir, lakehouse, ident }
}

/// A data file of `rows` rows (keys `first..first+rows`) in partition `day`.
pub async fn data_file(f: &Fixture, day: i32, first: u128, rows: u128) -> DataFile {
    let table = f.lakehouse.load(&f.ident).await.unwrap();
    let batch = curated_rows(&table, day, first, rows);
    let mut files = crate::writer::write_partition(&table, day, [batch], 1 << 27, "t").await.unwrap();
    assert_eq!(files.len(), 1);
    files.pop().unwrap()
}

/// `rows` curated rows of `table` (keys `first..first+rows`) in partition `day`.
pub fn curated_rows(table: &iceberg::table::Table, day: i32, first: u128, rows: u128) -> arrow::array::RecordBatch {
    let candidates: Vec<(u128, Candidate)> = (first..first + rows)
        .map(|key| {
            (key, Candidate {
                position: IngestPosition { ingestion_ts_ms: day as i64 * 86_400_000, partition: 0, offset: key as i64 },
                origin: Origin::Input,
                rating_timestamp: day as i64 * 86_400,
                rating_date: day,
                user_id: "u".into(),
                movie_id: "m".into(),
                rating: Rating(7.5),
                is_approved: true,
            })
        })
        .collect();
    let schema = arrow_schema(table.metadata().current_schema()).unwrap();
    curated_to_batch(&schema, candidates.iter().map(|(k, c)| (k, c))).unwrap()
}
