//! Bad input gives one clear line on stderr and a non-zero exit, never a panic.

use ratings_tests::{GRAPH_TEMPLATE, Lake, plugin_dir, without_plugin};

fn assert_one_line_error(run: &ratings_tests::Run, mentions: &str) {
    assert_ne!(run.status, 0, "should fail: {}", run.stdout);
    assert!(!run.stderr.contains("panicked"), "panic: {}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {}", run.stderr);
    assert!(lines[0].starts_with("error"), "{}", lines[0]);
    assert!(lines[0].contains(mentions), "{:?} should mention {mentions:?}", lines[0]);
}

#[test]
fn malformed_graph_file_names_file_and_key() {
    let lake = Lake::new();
    std::fs::write(&lake.graph, GRAPH_TEMPLATE.replace("tolerance = \"1h\"", "tolerance = 7")).unwrap();
    let run = lake.run(&["--mode", "replay", "--from", "2025-05-01"]);
    assert_one_line_error(&run, "validate[5].tolerance");
    assert!(run.stderr.contains("graph.toml"), "{}", run.stderr);
    assert_eq!(run.status, 2);

    std::fs::write(&lake.graph, "this is [not toml").unwrap();
    assert_one_line_error(&lake.run(&["show", "curated"]), "graph.toml");
}

#[test]
fn missing_catalog_folder_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("g.toml");
    let text = without_plugin(GRAPH_TEMPLATE.replace("../.lakehouse/", "nowhere/"), "blocklist")
        .replace("../plugins/lib/", &format!("{}/", plugin_dir().display()));
    std::fs::write(&graph, text).unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    std::fs::write(dir.path().join("schemas/movie_rating.avsc"), ratings_tests::READER_SCHEMA).unwrap();
    let run = Lake::command_for(&graph, &["--mode", "replay", "--from", "2025-05-01"]).output().unwrap();
    let run = ratings_tests::Run {
        status: run.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&run.stdout).into(),
        stderr: String::from_utf8_lossy(&run.stderr).into(),
    };
    assert_one_line_error(&run, "catalog folder");
    assert!(!dir.path().join("nowhere").exists(), "a missing catalog must not be created by a replay");
}

#[test]
fn from_after_to_and_bad_dates_are_rejected() {
    let lake = Lake::new();
    assert_one_line_error(&lake.run(&["--mode", "replay", "--from", "2025-05-09", "--to", "2025-05-01"]), "after --to");
    assert_one_line_error(&lake.run(&["--mode", "replay", "--from", "May 1st"]), "YYYY-MM-DD");
    assert_one_line_error(&lake.run(&["--mode", "replay"]), "--from");
}

#[test]
fn unknown_table_is_reported() {
    let lake = Lake::new();
    assert_one_line_error(&lake.run(&["show", "no_such_table"]), "unknown table");
    assert_one_line_error(&lake.run(&["history", "no_such_table"]), "unknown table");
    assert_one_line_error(&lake.run(&["show", "curated", "--where", "colour=blue"]), "no column colour");
    // A graph naming a table the catalog does not have.
    std::fs::write(&lake.graph, std::fs::read_to_string(&lake.graph).unwrap().replace("raw.movie_ratings_raw", "raw.elsewhere")).unwrap();
    assert_one_line_error(&lake.run(&["--mode", "replay", "--from", "2025-05-01"]), "raw.elsewhere does not exist");
}

#[test]
fn an_unreachable_broker_is_an_external_error_not_a_hang() {
    let lake = Lake::with_graph(|text| ratings_tests::set_line(text, "brokers", "\"127.0.0.1:1\""));
    let run = lake.run(&["--mode", "stream", "--stop-when-idle", "1s"]);
    assert_ne!(run.status, 0);
    assert!(!run.stderr.contains("panicked"), "panic: {}", run.stderr);
    // librdkafka logs its connection attempts as warnings first; the last line is ours.
    let last = run.stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(last.starts_with("error (external system error)"), "{last}");
    assert!(last.contains("movie.ratings.v1") && last.contains("127.0.0.1:1"), "{last}");
}
