//! Whole-pipeline tests of `--mode replay`: the binary against a real embedded lakehouse,
//! compared with the oracle row for row.

use std::collections::BTreeMap;

use ratings_tests::oracle::expected;
use ratings_tests::{EDGY, Lake, assert_matches_oracle};

#[test]
fn replay_equals_the_oracle_on_every_edge_case() {
    // One epoch (one commit) per raw partition: every edge case crosses commits.
    let lake = Lake::with_epoch_events(Some(1));
    lake.ok(EDGY);
    let raw = lake.raw_events();
    let oracle = expected(&raw);

    // The data really exercises every edge the rules have.
    let count = |reason: &str| oracle.rejected.iter().filter(|r| r.2 == reason).count();
    for reason in ["late", "late_update", "missing_event_id", "rating_out_of_range", "future_timestamp"] {
        assert!(count(reason) > 0, "generated data has no {reason} record");
    }
    let mut per_id: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for e in &raw {
        per_id.entry(e.event_id.as_deref().unwrap_or("")).or_default().push(e);
    }
    let ties = per_id.values().filter(|v| v.iter().map(|e| e.rating_timestamp).collect::<std::collections::HashSet<_>>().len() < v.len()).count();
    let moved = per_id.values().filter(|v| v.iter().filter_map(|e| e.rating_timestamp).map(|t| t.div_euclid(86_400)).collect::<std::collections::HashSet<_>>().len() > 1).count();
    assert!(ties > 100 && moved > 100, "ties {ties}, moved {moved}");

    let run = lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"]);
    assert!(run.stdout.contains("replay 2025-05-01..2025-05-09: 9 partitions in 9 epochs, 24000 events"), "{}", run.stdout);
    assert_matches_oracle(&lake, &oracle);

    // Every curated snapshot after the first replaced partitions (Overwrite), none lost rows.
    let history = lake.ok(&["history", "curated"]).stdout;
    assert!(history.contains("overwrite"), "{history}");
    // Rows that moved or were replaced in files of earlier commits are marked by position
    // deletes, and history shows how many.
    let counter = |name: &str| -> u64 {
        history.split_whitespace().filter_map(|w| w.strip_prefix(name)).map(|v| v.parse::<u64>().unwrap()).sum()
    };
    assert!(counter("added-delete-files=") > 0, "{history}");
    assert!(counter("added-position-deletes=") >= counter("added-delete-files="), "{history}");

    // A log written to a pipe, not a terminal, carries no colour escape sequences.
    let maintain = lake.command(&["maintain", "--dry-run"]).env("RUST_LOG", "info").output().unwrap();
    let log = String::from_utf8_lossy(&maintain.stderr);
    assert!(log.contains("INFO") && !log.contains('\u{1b}'), "{log}");
}

#[test]
fn replaying_again_changes_nothing_and_commits_nothing_to_curated() {
    let lake = Lake::with_epoch_events(Some(5000));
    lake.ok(EDGY);
    lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"]);
    let before = lake.curated_rows();
    assert!(before.len() > 15_000, "the first replay filled curated");
    let snapshots = lake.snapshot_count("curated.movie_ratings");
    let rejected = lake.rejected();

    let again = lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"]);
    assert_eq!(lake.curated_rows(), before);
    assert_eq!(lake.rejected(), rejected, "re-replaying records rejections once, not twice");
    assert_eq!(lake.snapshot_count("curated.movie_ratings"), snapshots, "{}", again.stdout);
    assert!(again.stdout.contains("0 new rows, 0 updated rows"), "{}", again.stdout);

    // A partial re-replay in the middle is just as idempotent.
    lake.ok(&["--mode", "replay", "--from", "2025-05-04", "--to", "2025-05-06", "--no-progress", "-w", "1"]);
    assert_eq!(lake.curated_rows(), before);
    assert_eq!(lake.rejected(), rejected);
}

#[test]
fn replaying_again_under_changed_rules_updates_exactly_the_rows_they_now_derive_otherwise() {
    let lake = Lake::with_epoch_events(Some(5000));
    lake.ok(EDGY);
    lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"]);
    let before = lake.curated_rows();
    // Approval from 8 instead of 7, then the last day replayed again: the current rows whose record
    // was ingested that day are derived again, and those rated in [7, 8) are no longer approved.
    let graph = std::fs::read_to_string(&lake.graph).unwrap();
    std::fs::write(&lake.graph, ratings_tests::set_line(graph, "config", "{ threshold = 8.0 }")).unwrap();
    let again = lake.ok(&["--mode", "replay", "--from", "2025-05-09", "--no-progress"]);

    let last_day = operators::model::parse_date("2025-05-09").unwrap();
    let expected: Vec<_> = before
        .iter()
        .map(|(key, row)| {
            let mut row = row.clone();
            if row.position.ingestion_date() == last_day && (7.0..8.0).contains(&row.rating.0) {
                row.is_approved = false;
            }
            (*key, row)
        })
        .collect();
    let changed = before.iter().zip(&expected).filter(|(was, now)| was != now).count();
    assert!(changed > 10, "the scenario re-derives rows: {changed}");
    assert_eq!(lake.curated_rows(), expected);
    assert!(again.stdout.contains(&format!("0 new rows, {changed} updated rows")), "{}", again.stdout);
}

/// EDGY, plus event ids in other UUID spellings, generated under another topic than the graph's.
fn edgy_respelled() -> Vec<&'static str> {
    let mut args = EDGY.to_vec();
    args.extend(["--id-spellings", "0.5"]);
    args
}

/// A lake with EDGY's raw rows (ids respelled) whose graph then names another topic: raw rows
/// keep the topic they were ingested from.
fn generated_then_topic_renamed(epoch_events: Option<u64>) -> Lake {
    let lake = Lake::with_epoch_events(epoch_events);
    lake.ok(&edgy_respelled());
    let graph = std::fs::read_to_string(&lake.graph).unwrap();
    std::fs::write(&lake.graph, ratings_tests::set_line(graph, "topic", "\"movie.ratings.renamed\"")).unwrap();
    lake
}

#[test]
fn replay_in_pieces_equals_replay_in_one_go_for_any_worker_count_and_epoch_size() {
    // In one go: all nine days in a single epoch.
    let whole = generated_then_topic_renamed(None);
    let run = whole.ok(&["--mode", "replay", "--from", "2025-05-01", "--to", "2025-05-09", "--no-progress", "-w", "2"]);
    assert!(run.stdout.contains("9 partitions in 1 epochs"), "{}", run.stdout);

    // In pieces, one epoch per day.
    let pieces = generated_then_topic_renamed(Some(1));
    pieces.ok(&["--mode", "replay", "--from", "2025-05-01", "--to", "2025-05-03", "--no-progress", "-w", "1"]);
    let middle = pieces.ok(&["--mode", "replay", "--from", "2025-05-04", "--to", "2025-05-08", "--no-progress", "-w", "3"]);
    assert!(!middle.stdout.contains(" 0 curated rows reloaded"), "second piece must seed from curated: {}", middle.stdout);
    pieces.ok(&["--mode", "replay", "--from", "2025-05-09", "--no-progress"]);

    assert!(whole.curated_rows().len() > 15_000);
    assert_eq!(pieces.curated_rows(), whole.curated_rows());
    assert_eq!(pieces.rejected(), whole.rejected());
    // Every column of every rejected row, late updates included: the record as ingested (its
    // own id spelling and topic) and the same detail, whichever way the replay was cut.
    let (rows, whole_rows) = (pieces.rejected_rows_of("curated.movie_ratings_rejected"), whole.rejected_rows_of("curated.movie_ratings_rejected"));
    let late_updates: Vec<&String> = rows.iter().filter(|r| r.starts_with("late_update |")).collect();
    assert!(late_updates.len() >= 3, "the data has late updates: {}", late_updates.len());
    let respelled = |row: &&&String| row.split(" | ").nth(2).is_some_and(|id| uuid::Uuid::try_parse(id).is_ok_and(|u| u.hyphenated().to_string() != id));
    assert!(late_updates.iter().any(|r| respelled(&r)), "a late update keeps its respelled id: {late_updates:#?}");
    assert!(late_updates.iter().all(|r| r.contains("| movie.ratings.v1 |")), "late updates keep the record's topic");
    assert_eq!(rows, whole_rows);
    assert_matches_oracle(&pieces, &expected(&pieces.raw_events()));
    // The curated table holds each event once, in canonical form, whatever spelling it came in.
    assert!(pieces.scan("curated.movie_ratings").iter().all(|batch| {
        let ids = operators::schema::Columns(batch).get::<arrow_array::StringArray>("event_id").unwrap().clone();
        ids.iter().flatten().all(|id| uuid::Uuid::try_parse(id).is_ok_and(|u| u.hyphenated().to_string() == id))
    }));
}
