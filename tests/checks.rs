//! Data-quality gates before publish, and `runtime check` on what a table holds: each policy on data
//! crafted to break a check, compared with the oracle, and the standalone report's exit status,
//! counts and samples.

use ratings_tests::oracle::expected;
use ratings_tests::{EDGY, Lake, assert_matches_oracle};

const REPLAY: &[&str] = &["--mode", "replay", "--from", "2025-05-01", "--no-progress"];

/// The shipped graph with its `rating_in_range` check stricter than the validation (0..=9).
fn range_check_up_to_nine(text: String) -> String {
    let check = "max = 10.0\npolicy = \"quarantine\"";
    assert!(text.contains(check), "the shipped graph's rating_in_range check");
    text.replacen(check, "max = 9.0\npolicy = \"quarantine\"", 1)
}

/// A check appended to the shipped graph's curated checks.
fn with_check(text: String, entry: &str) -> String {
    format!("{text}\n[[checks.curated]]\n{entry}\n")
}

#[test]
fn quarantine_moves_exactly_the_offending_rows_and_the_rest_commits() {
    // The engine accepts ratings up to 10; the check only up to 9, so the winners above 9 are
    // refused at the gate.
    let lake = Lake::with_graph(range_check_up_to_nine);
    lake.ok(EDGY);
    let run = lake.ok(REPLAY);

    let mut oracle = expected(&lake.raw_events());
    let refused: Vec<String> = oracle.rows.iter().filter(|(_, row)| row.rating > 9.0).map(|(id, _)| id.clone()).collect();
    assert!(refused.len() > 20, "the generated data has winners above 9: {}", refused.len());
    for id in &refused {
        let row = oracle.rows.remove(id).expect("listed above");
        oracle.rejected.push((row.source.1, row.source.2, "check_failed".to_string()));
    }
    oracle.rejected.sort();
    assert_matches_oracle(&lake, &oracle);
    assert!(run.stdout.contains(&format!("check_failed={}", refused.len())), "{}", run.stdout);
    assert!(run.stdout.contains("failed: rating_in_range in 1"), "{}", run.stdout);
    let shown = lake.ok(&["show", "rejected", "--where", "reason=check_failed", "--limit", "1"]).stdout;
    assert!(shown.contains("check `rating_in_range`: rating in 0..=9"), "{shown}");
}

#[test]
fn a_failing_fail_check_commits_nothing_stops_with_the_report_and_a_fixed_graph_retries() {
    let lake = Lake::with_graph(|text| {
        with_check(text, "name = \"big_epoch\"\nkind = \"row_count\"\nmin = 1000000000\npolicy = \"fail\"")
    });
    lake.ok(EDGY);
    let run = lake.run(REPLAY);
    assert_eq!(run.status, 2, "a data problem is the user's to fix: {}", run.stderr);
    for text in ["data-quality checks failed on curated.movie_ratings", "big_epoch", "at least 1000000000 rows", "nothing was committed"] {
        assert!(run.stderr.contains(text), "stderr should mention {text:?}: {}", run.stderr);
    }
    assert_eq!(lake.snapshot_count("curated.movie_ratings"), 0, "the epoch is not committed");
    assert_eq!(lake.snapshot_count("curated.movie_ratings_rejected"), 0, "the epoch is not committed");

    // The same check as a warning: logged and counted, everything commits.
    let graph = std::fs::read_to_string(&lake.graph).unwrap();
    std::fs::write(&lake.graph, graph.replace("min = 1000000000\npolicy = \"fail\"", "min = 1000000000\npolicy = \"warn\"")).unwrap();
    let run = lake.ok(REPLAY);
    assert!(run.stdout.contains("checks:    1 epochs judged before commit; failed: big_epoch in 1"), "{}", run.stdout);
    assert!(run.stderr.contains("big_epoch (warn)"), "the epoch's log line names the failed check: {}", run.stderr);
    assert_matches_oracle(&lake, &expected(&lake.raw_events()));
}

#[test]
fn every_shipped_check_stays_quiet_on_clean_data() {
    let lake = Lake::new();
    lake.ok(EDGY);
    let run = lake.ok(REPLAY);
    assert!(run.stdout.contains("failed: none"), "{}", run.stdout);
    assert!(!run.stdout.contains("check_failed"), "{}", run.stdout);
    assert_matches_oracle(&lake, &expected(&lake.raw_events()));

    let report = lake.ok(&["check", "--table", "curated", "--as-of", "2025-05-10T00:00:00Z"]).stdout;
    for check in
        ["event_id_is_uuid", "rating_in_range", "user_id_present", "event_id_unique", "curated_schema", "recent_ratings", "epoch_not_empty"]
    {
        let line = report.lines().find(|l| l.starts_with(check)).unwrap_or_else(|| panic!("{check} missing: {report}"));
        assert!(line.contains(" ok "), "{line}");
    }
    let rows = lake.curated_rows().len();
    assert!(report.contains(&format!("{rows} rows checked")), "{report}");
}

#[test]
fn runtime_check_reports_failing_checks_with_counts_samples_and_exit_status() {
    let lake = Lake::new();
    lake.ok(EDGY);
    lake.ok(REPLAY);
    // A stricter graph over the same tables: ratings above 9 now fail, and the data is stale a
    // year later.
    let graph = std::fs::read_to_string(&lake.graph).unwrap();
    std::fs::write(&lake.graph, range_check_up_to_nine(graph)).unwrap();

    let rows = lake.curated_rows();
    let above_nine = rows.iter().filter(|(_, row)| row.rating.0 > 9.0).count();
    let run = lake.run(&["check", "--table", "movie_ratings", "--as-of", "2026-05-10T00:00:00Z", "--format", "json"]);
    assert_eq!(run.status, 3, "failing checks exit with 3: {}", run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("the report is JSON");
    assert_eq!(json["table"], "curated.movie_ratings");
    assert_eq!(json["passed"], false);
    assert_eq!(json["report"]["rows"], rows.len() as u64);
    let result = |name: &str| json["report"]["results"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap().clone();
    let range = result("rating_in_range");
    assert_eq!(range["passed"], false);
    assert_eq!(range["failing_rows"], above_nine as u64);
    assert_eq!(range["expected"], "rating in 0..=9");
    let sample = range["sample"].as_array().unwrap();
    assert_eq!(sample.len(), 5.min(above_nine));
    for row in sample {
        let rating: f32 = row.as_str().unwrap().split("rating=").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
        assert!(rating > 9.0, "{row}");
    }
    assert_eq!(result("recent_ratings")["passed"], false);
    assert_eq!(result("event_id_unique")["passed"], true);

    // One partition: only its rows are judged.
    let day = rows[0].1.rating_date;
    let date = operators::model::format_date(day);
    let in_day: Vec<_> = rows.iter().filter(|(_, row)| row.rating_date == day).collect();
    let text = lake.run(&["check", "--partition", &format!("rating_date={date}"), "--as-of", "2025-05-10T00:00:00Z"]);
    let failing = in_day.iter().filter(|(_, row)| row.rating.0 > 9.0).count();
    assert_eq!(text.status, if failing > 0 { 3 } else { 0 }, "{}", text.stdout);
    assert!(text.stdout.contains(&format!("{} rows checked", in_day.len())), "{}", text.stdout);
    assert!(text.stdout.contains(&format!("{failing} failing rows")), "{}", text.stdout);

    // Bad arguments are one line and exit 2.
    let bad = lake.run(&["check", "--as-of", "yesterday"]);
    assert_eq!(bad.status, 2);
    assert!(bad.stderr.contains("--as-of \"yesterday\""), "{}", bad.stderr);
}

#[test]
fn declarations_are_checked_when_the_graph_loads() {
    let cases = [
        ("name = \"u\"\nkind = \"unique\"\ncolumn = \"event_id\"\npolicy = \"quarantine\"", "quarantine needs a row check"),
        ("name = \"r\"\nkind = \"range\"\ncolumn = \"ratin\"\nmax = 1.0\npolicy = \"warn\"", "no column \"ratin\""),
        ("name = \"r\"\nkind = \"range\"\ncolumn = \"rating\"\npolicy = \"warn\"", "needs `min`, `max` or both"),
        ("name = \"n\"\nkind = \"not_null\"\ncolumn = \"rating\"\nmax = 3.0\npolicy = \"warn\"", "does not take `max`"),
        ("name = \"x\"\nkind = \"sometimes\"\npolicy = \"warn\"", "unknown kind \"sometimes\""),
        ("name = \"x\"\nkind = \"uuid\"\ncolumn = \"event_id\"\npolicy = \"maybe\"", "unknown variant `maybe`"),
        ("name = \"event_id_unique\"\nkind = \"unique\"\ncolumn = \"user_id\"\npolicy = \"warn\"", "declared twice"),
    ];
    for (entry, expected) in cases {
        let lake = Lake::new();
        let graph = std::fs::read_to_string(&lake.graph).unwrap();
        std::fs::write(&lake.graph, with_check(graph, entry)).unwrap();
        let run = lake.run(&["check"]);
        assert_eq!(run.status, 2, "{entry}: {}", run.stderr);
        let last = run.stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
        assert!(last.contains(expected), "{last:?} should mention {expected:?}");
        assert!(last.contains("checks.curated"), "{last:?} should name the key");
    }
}
