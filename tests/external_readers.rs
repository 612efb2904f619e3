//! Independent readers: PyIceberg (through its SqlCatalog on our SQLite catalog) and DuckDB's
//! iceberg extension must see exactly the curated table we committed, Overwrite deletions included.
//! The Python environment is created by `scripts/python-env.sh` (pinned versions).

use std::collections::BTreeMap;
use std::process::Command;

use operators::model::format_date;
use operators::sample::format_event_id;
use ratings_tests::{EDGY, Lake, python_json};

fn sha256_hex(text: &str) -> String {
    let output = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("sha256sum runs");
    String::from_utf8(output.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// PyIceberg's and DuckDB's view of curated equals the engine's: rows, per-partition counts and a
/// checksum over every column, and the same live data files.
fn assert_readers_agree(lake: &Lake) -> serde_json::Value {
    let seen = python_json(lake, "check_tables.py", "curated.movie_ratings");
    let rows = lake.curated_rows();
    assert!(rows.len() > 15_000);
    let mut per_partition: BTreeMap<String, u64> = BTreeMap::new();
    let mut lines: Vec<String> = rows
        .iter()
        .map(|(key, row)| {
            *per_partition.entry(format_date(row.rating_date)).or_default() += 1;
            format!(
                "{}|{}|{}|{:.3}|{}|{}|{}\n",
                format_event_id(*key),
                row.user_id,
                row.movie_id,
                row.rating.0 as f64,
                row.is_approved,
                row.rating_timestamp,
                format_date(row.rating_date)
            )
        })
        .collect();
    lines.sort();
    let checksum = sha256_hex(&lines.concat());

    assert_eq!(seen["rows"], rows.len() as u64);
    assert_eq!(seen["duckdb_rows"], rows.len() as u64);
    assert_eq!(seen["checksum"], checksum.as_str());
    assert_eq!(seen["duckdb_checksum"], checksum.as_str());
    assert_eq!(seen["per_partition"], serde_json::to_value(&per_partition).unwrap());
    let theirs: Vec<String> = serde_json::from_value(seen["live_files"].clone()).unwrap();
    assert_eq!(theirs, lake.live_files("curated.movie_ratings"));
    seen
}

#[test]
fn pyiceberg_and_duckdb_read_what_we_committed() {
    let lake = Lake::with_epoch_events(Some(1));
    lake.ok(EDGY);
    lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--to", "2025-05-05", "--no-progress"]);
    lake.ok(&["--mode", "replay", "--from", "2025-05-06", "--no-progress"]);

    // Updates are position deletes on the files holding the superseded rows: both readers apply them.
    let seen = assert_readers_agree(&lake);
    let ours = lake.live_delete_files("curated.movie_ratings");
    assert!(!ours.is_empty(), "the edge-case data has updates");
    let theirs: Vec<String> = serde_json::from_value(seen["position_delete_files"].clone()).unwrap();
    assert_eq!(theirs, ours, "PyIceberg attaches every position delete file to a data file it scans");

    // Compaction removes data and delete files (Overwrite with DELETED entries): still the same rows.
    lake.ok(&["maintain", "--compact", "--table", "curated"]);
    assert!(lake.live_delete_files("curated.movie_ratings").is_empty());
    let seen = assert_readers_agree(&lake);
    let live = lake.live_files("curated.movie_ratings");
    let deleted: Vec<String> = serde_json::from_value(seen["deleted_files"].clone()).unwrap();
    assert!(!deleted.is_empty(), "Overwrite snapshots must have DELETED entries");
    assert!(deleted.iter().all(|path| !live.contains(path)), "a DELETED file is still live for PyIceberg");
    let operations: Vec<String> = serde_json::from_value(seen["operations"].clone()).unwrap();
    assert_eq!(operations.first().map(String::as_str), Some("append"));
    assert!(operations.iter().skip(1).any(|op| op == "overwrite"));
}

#[test]
fn pyiceberg_and_duckdb_read_tables_written_with_lz4() {
    let lake = Lake::with_graph(|text| {
        assert!(text.contains("compression = \"zstd(1)\""), "the shipped graph states its compression");
        text.replace("compression = \"zstd(1)\"", "compression = \"lz4\"")
    });
    lake.ok(EDGY);
    lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"]);
    let seen = assert_readers_agree(&lake);
    let codecs: Vec<String> = serde_json::from_value(seen["duckdb_codecs"].clone()).unwrap();
    assert_eq!(codecs, ["LZ4_RAW"], "every column chunk of curated is LZ4_RAW");
}
