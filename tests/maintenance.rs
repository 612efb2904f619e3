//! `runtime maintain` on real tables, checked with PyIceberg: expiry and orphan cleanup delete
//! exactly the files no metadata references (counted on disk) and never one a kept snapshot
//! reads; compaction keeps every row. (Compaction racing a writer is tested in
//! `operators::maintain`; compaction after a stream in `stream.rs`.)

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use ratings_tests::oracle::expected;
use ratings_tests::{EDGY, Lake, assert_matches_oracle, python_json, set_line};

const TABLE: &str = "curated.movie_ratings";

fn files_under(root: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.insert(path.display().to_string());
            }
        }
    }
    files
}

fn strings(value: &serde_json::Value) -> BTreeSet<String> {
    value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

#[test]
fn expiry_and_orphan_cleanup_delete_exactly_the_unreferenced_files() {
    let lake = Lake::with_graph(|text| {
        let text = set_line(text, "replay_epoch_events", "1");
        let text = set_line(text, "snapshot_retention", "\"0s\"");
        let text = set_line(text, "keep_snapshots", "3");
        set_line(text, "orphan_age", "\"1h\"")
    });
    lake.ok(EDGY);
    lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"]);
    // Compaction replaces data and delete files (one snapshot per partition): the snapshots
    // before it are the only ones that read the replaced files.
    lake.ok(&["maintain", "--compact", "--table", TABLE]);
    let before = python_json(&lake, "table_files.py", TABLE);
    let root = Path::new(before["location"].as_str().unwrap()).to_path_buf();
    let snapshots_before = before["rows"].as_object().unwrap().clone();
    assert!(snapshots_before.len() >= 9, "one curated snapshot per day: {}", snapshots_before.len());

    // Two files nobody references: one from long ago, one that could be a commit in flight.
    let old_stray = root.join("data/stray-from-a-crashed-writer.parquet");
    let young_stray = root.join("data/being-written-right-now.parquet");
    std::fs::write(&old_stray, b"old").unwrap();
    std::fs::write(&young_stray, b"young").unwrap();
    let touched = Command::new("touch").args(["-d", "2 hours ago"]).arg(&old_stray).status().unwrap();
    assert!(touched.success());
    let disk_before = files_under(&root);

    let dry = lake.ok(&["maintain", "--table", TABLE, "--expire", "--orphans", "--dry-run", "--format", "json"]);
    let dry: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(files_under(&root), disk_before, "a dry run deletes nothing");
    assert_eq!(lake.snapshot_count(TABLE), snapshots_before.len(), "a dry run expires nothing");
    assert_eq!(strings(&dry[0]["orphans"]["deleted_files"]), BTreeSet::from([old_stray.display().to_string()]));

    let run = lake.ok(&["maintain", "--table", TABLE, "--expire", "--orphans", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report[0]["expiry"], dry[0]["expiry"], "the dry run listed what the run did");
    assert_eq!(report[0]["expiry"]["kept_snapshots"], 3);

    let after = python_json(&lake, "table_files.py", TABLE);
    let snapshots_after = after["rows"].as_object().unwrap();
    assert_eq!(snapshots_after.len(), 3);
    for (id, rows) in snapshots_after {
        assert_eq!(Some(rows), snapshots_before.get(id), "time travel to kept snapshot {id} reads what it read before");
    }
    let disk_after = files_under(&root);
    let mut expected_on_disk = strings(&after["referenced"]);
    expected_on_disk.insert(young_stray.display().to_string());
    assert_eq!(disk_after, expected_on_disk, "on disk: exactly what the metadata references, plus the young stray");

    let deleted: BTreeSet<String> = disk_before.difference(&disk_after).cloned().collect();
    let mut reported = strings(&report[0]["expiry"]["deleted_files"]);
    reported = reported.into_iter().map(|p| p.trim_start_matches("file://").to_string()).collect();
    reported.extend(strings(&report[0]["orphans"]["deleted_files"]));
    assert_eq!(deleted, reported, "the report names every deleted file");
    assert!(deleted.iter().any(|p| p.contains("/metadata/snap-")), "expired manifest lists are deleted");
    assert!(
        deleted.iter().any(|p| p.contains("/data/") && !p.contains("stray")),
        "data or delete files only expired snapshots read are deleted: {deleted:?}"
    );
    assert_matches_oracle(&lake, &expected(&lake.raw_events()));
}

#[test]
fn compaction_keeps_every_row_and_leaves_one_file_per_partition() {
    let lake = Lake::with_graph(|text| set_line(text, "replay_epoch_events", "1"));
    lake.ok(EDGY);
    lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"]);
    let raw = || {
        let mut events = lake.raw_events();
        events.sort_by_key(|e| (e.source_partition, e.source_offset));
        events
    };
    let raw_before = raw();
    let curated_before = python_json(&lake, "check_tables.py", TABLE);
    let raw_files_before = lake.live_files("raw.movie_ratings_raw").len();

    let run = lake.ok(&["maintain", "--compact"]);
    assert!(run.stdout.contains("compacted"), "{}", run.stdout);
    let partitions = |table: &str| {
        let files = lake.live_files(table);
        let days: BTreeSet<String> = files.iter().map(|f| f.split('/').rev().nth(1).unwrap().to_string()).collect();
        (files.len(), days.len())
    };
    for table in ["raw.movie_ratings_raw", TABLE, "curated.movie_ratings_rejected"] {
        let (files, days) = partitions(table);
        assert_eq!(files, days, "{table}: one file per partition after compaction");
    }
    assert!(partitions("raw.movie_ratings_raw").0 < raw_files_before, "raw had several files per partition");
    assert_eq!(raw(), raw_before, "raw holds the same events");
    let curated_after = python_json(&lake, "check_tables.py", TABLE);
    for key in ["rows", "per_partition", "checksum", "duckdb_rows", "duckdb_checksum"] {
        assert_eq!(curated_after[key], curated_before[key], "{key} as PyIceberg and DuckDB read it");
    }
    let again = lake.ok(&["maintain", "--compact"]);
    assert_eq!(again.stdout.matches("every partition is compact").count(), 3, "{}", again.stdout);
}
