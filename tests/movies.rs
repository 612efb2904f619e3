//! The movies pipeline (`graphs/movies.toml`) on the one engine, end to end through the `runtime`
//! binary: import of real Parquet exports into raw, replay per execution date, its checks, and the
//! curated table compared row by row with an oracle that pyarrow computes from the raw files
//! (`tests/python/movies.py`), read back by PyIceberg.

use std::path::{Path, PathBuf};
use std::process::Command;

use ratings_tests::{Lake, Run, python, python_script_json, workspace_root};

const GRAPH: &str = include_str!("../graphs/movies.toml");
const READER_SCHEMA: &str = include_str!("../graphs/schemas/movie_rating_film.avsc");
const CURATED: &str = "movies.movie_ratings_curated";

/// A temporary lakehouse with the shipped movies graph pointing at it.
struct Movies {
    dir: tempfile::TempDir,
    graph: PathBuf,
}

impl Movies {
    fn new() -> Movies {
        let dir = tempfile::tempdir().expect("temp dir");
        let graph = dir.path().join("movies.toml");
        let text = GRAPH.replace("../.lakehouse/movies/catalog.db", "lake/catalog.db").replace("../.lakehouse/movies/warehouse", "lake/warehouse");
        std::fs::write(&graph, text).expect("write graph");
        std::fs::create_dir(dir.path().join("schemas")).expect("schemas folder");
        std::fs::write(dir.path().join("schemas/movie_rating_film.avsc"), READER_SCHEMA).expect("write schema");
        let movies = Movies { dir, graph };
        movies.ok(&["init"]);
        movies
    }

    fn run(&self, args: &[&str]) -> Run {
        let output = Lake::command_for(&self.graph, args).output().expect("runtime runs");
        Run {
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.status, 0, "runtime {args:?} failed:\n{}\n{}", run.stdout, run.stderr);
        run
    }

    fn import(&self, files: &[&Path]) -> Run {
        let mut args = vec!["import".to_string()];
        args.extend(files.iter().map(|f| f.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&args)
    }

    fn python(&self, command: &str, raw: &[&Path]) -> serde_json::Value {
        let mut args = vec![std::ffi::OsStr::new(command)];
        args.extend(raw.iter().map(|path| path.as_os_str()));
        let lake = self.dir.path().join("lake");
        python_script_json("movies.py", &args, &lake.join("catalog.db"), &lake.join("warehouse"), CURATED)
    }

    fn snapshots(&self) -> usize {
        self.snapshots_of("curated")
    }

    fn snapshots_of(&self, table: &str) -> usize {
        let history = self.ok(&["history", table]).stdout;
        history.lines().filter(|line| line.starts_with(|c: char| c.is_ascii_digit())).count()
    }
}

/// The shipped sample export of one day: in the repository (`graphs/data/movies`), or under
/// `$MOVIES_DATA` (the variable `make demo-movies` takes too).
fn shipped_day(day: u32) -> PathBuf {
    let folder = std::env::var_os("MOVIES_DATA").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("graphs/data/movies"));
    let path = folder.join(format!("ingestion_date=2021-01-0{day}/part-0.parquet"));
    assert!(path.is_file(), "the movies sample data is missing: expected {} (set MOVIES_DATA to its folder)", path.display());
    path
}

fn crafted(dir: &Path) -> [PathBuf; 3] {
    let status = Command::new(python())
        .arg(workspace_root().join("tests/python/movies.py"))
        .args(["craft", "--out"])
        .arg(dir)
        .status()
        .expect("python runs");
    assert!(status.success(), "crafting raw files failed");
    ["day1", "day2", "day3_bad_language"].map(|name| dir.join(format!("{name}.parquet")))
}

#[test]
fn the_shipped_exports_become_the_curated_table_the_oracle_computes() {
    let movies = Movies::new();
    let (day1, day2) = (shipped_day(1), shipped_day(2));
    let imported = movies.import(&[&day1, &day2]).stdout;
    assert!(imported.contains("ingestion_date=2021-01-01: 44678 rows"), "{imported}");
    assert!(imported.contains("ingestion_date=2021-01-02: 20647 rows"), "{imported}");
    let again = movies.import(&[&day1]).stdout;
    assert!(again.contains("already imported") && again.contains("nothing new"), "importing a file twice adds nothing: {again}");

    let run = movies.ok(&["--mode", "replay", "--from", "2021-01-01", "--to", "2021-01-02"]).stdout;
    assert!(run.contains("failed: none (7 checks each)"), "{run}");

    let found = movies.python("compare", &[&day1, &day2]);
    assert_eq!(found["rows"], 65_325, "{found}");
    assert_eq!(found["per_partition"]["2021-01-01"], 44_678);
    assert_eq!(found["per_partition"]["2021-01-02"], 20_647);
    assert_eq!(found["duplicates"], serde_json::json!([]));
    assert_eq!(found["missing"], serde_json::json!([]));
    assert_eq!(found["mismatch_count"], 0, "rows differing from the oracle: {}", found["mismatches"]);
    assert_eq!(found["pyiceberg_rows"], 65_325);
    assert_eq!(found["pyiceberg_mismatches"], 0);
    let columns: Vec<&str> = found["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(
        columns,
        [
            "rating_id", "movie_id", "user_id", "rating", "timestamp", "original_title", "original_language", "budget", "is_adult",
            "is_multigenre", "genres", "ingestion_date", "ingestion_ts_ms", "source_partition", "source_offset"
        ],
        "the declared columns, then the engine's lineage"
    );
    // The data has single-genre and genre-less films, so the rule is exercised both ways.
    let multigenre = found["multigenre_true"].as_u64().unwrap();
    assert!(multigenre > 40_000 && multigenre < 65_325, "{multigenre}");

    // Re-running a day changes nothing.
    let before = movies.python("dump", &[]);
    movies.ok(&["--mode", "replay", "--from", "2021-01-02", "--to", "2021-01-02"]);
    assert!(movies.python("dump", &[]) == before, "re-running 2021-01-02 changed the table");

    // `runtime check` reports each declared check on one partition.
    let report = movies.run(&["check", "--table", "movie_ratings_curated", "--partition", "ingestion_date=2021-01-02", "--format", "json"]);
    assert_eq!(report.status, 0, "{}{}", report.stdout, report.stderr);
    let report: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    let checks = report["report"]["results"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["curated_schema", "not_empty", "rating_id_unique", "rating_in_range", "timestamp_present", "language_is_two_letters", "budget_not_negative"]
    );
    assert!(checks.iter().all(|c| c["passed"] == true), "{report}");
    assert_eq!(checks[1]["found"], "20647 rows");

    // One day at a time gives the table one run over both gives.
    let stepwise = Movies::new();
    stepwise.import(&[&day1, &day2]);
    stepwise.ok(&["--mode", "replay", "--from", "2021-01-01", "--to", "2021-01-01"]);
    stepwise.ok(&["--mode", "replay", "--from", "2021-01-02", "--to", "2021-01-02"]);
    assert!(stepwise.python("dump", &[]) == before, "running the days one at a time gave another table");
}

#[test]
fn crafted_rows_move_between_days_keep_null_genres_false_and_a_bad_language_stops_the_commit() {
    let movies = Movies::new();
    let [day1, day2, day3] = crafted(movies.dir.path());
    movies.import(&[&day1, &day2, &day3]);

    // Day 1 alone, then day 2: the newer "dup" moves from 2021-01-01 to 2021-01-02.
    movies.ok(&["--mode", "replay", "--from", "2021-01-01", "--to", "2021-01-01"]);
    let run = movies.ok(&["--mode", "replay", "--from", "2021-01-02", "--to", "2021-01-02"]).stdout;
    assert!(run.contains("(2 moved to another partition)"), "dup and tie leave 2021-01-01: {run}");
    let found = movies.python("compare", &[&day1, &day2]);
    assert_eq!(found["mismatch_count"], 0, "{}", found["mismatches"]);
    assert_eq!(found["pyiceberg_mismatches"], 0);
    assert_eq!(found["duplicates"], serde_json::json!([]));
    assert_eq!(found["rows"], 8);
    assert_eq!(found["per_partition"], serde_json::json!({"2021-01-01": 4, "2021-01-02": 4}), "no late cut: \"old\" is kept");
    let rows: Vec<serde_json::Value> =
        movies.python("dump", &[]).as_array().unwrap().iter().map(|r| serde_json::from_str(r.as_str().unwrap()).unwrap()).collect();
    let by_id = |id: &str| rows.iter().find(|r| r["rating_id"] == id).unwrap_or_else(|| panic!("no row {id}")).clone();
    assert_eq!(by_id("dup")["original_title"], "Second version");
    assert_eq!(by_id("dup")["ingestion_date"], "2021-01-02");
    assert_eq!(by_id("stays")["original_title"], "Newer than its day-2 copy", "an older record ingested later loses");
    assert_eq!(by_id("tie")["original_title"], "Tie, ingested later");
    assert_eq!(by_id("nullgenres")["is_multigenre"], false);
    assert_eq!(by_id("nullgenres")["genres"], serde_json::Value::Null, "genres pass through, null included");
    assert_eq!(by_id("emptygenres")["is_multigenre"], false);
    assert_eq!(by_id("twogenres")["is_multigenre"], true);
    assert_eq!(by_id("twogenres")["original_language"], "EN");

    // Day 3 holds a 3-letter language: the check fails and nothing is committed.
    let snapshots = movies.snapshots();
    let refused = movies.run(&["--mode", "replay", "--from", "2021-01-03", "--to", "2021-01-03"]);
    assert_eq!(refused.status, 2, "{}{}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("language_is_two_letters") && refused.stderr.contains("nothing was committed"), "{}", refused.stderr);
    assert_eq!(movies.snapshots(), snapshots, "a failed check must not commit");
    assert_eq!(movies.python("compare", &[&day1, &day2])["rows"], 8);
}

#[test]
fn with_a_lateness_setting_records_rated_too_long_before_their_ingestion_are_counted_and_left_out() {
    let movies = Movies::new();
    // How old a record may be when it arrives: a rule on the order column (lateness proper cuts by
    // partition day, and this graph partitions by the ingestion day).
    let rule = "[[validate]]\ncolumn = \"timestamp\"\nrule = \"not_before_ingestion\"\nunit = \"seconds\"\ntolerance = \"1d\"\nreason = \"late\"\n\n";
    let text = std::fs::read_to_string(&movies.graph).unwrap().replacen("[[stages]]", &format!("{rule}[[stages]]"), 1);
    std::fs::write(&movies.graph, text).unwrap();
    let [day1, day2, _] = crafted(movies.dir.path());
    movies.import(&[&day1, &day2]);
    let run = movies.ok(&["--mode", "replay", "--from", "2021-01-01", "--to", "2021-01-02"]).stdout;
    // "old" (rated 2020-12-30, ingested 2021-01-02) is the only record more than a day late; the
    // day-2 copy of "stays" (rated 2021-01-01) is within the day.
    assert!(run.contains("rejected:  1 late,"), "{run}");
    let rows = movies.python("dump", &[]);
    let ids: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r.as_str().unwrap()).unwrap()["rating_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 7, "{ids:?}");
    assert!(!ids.contains(&"old".to_string()), "{ids:?}");
}

#[test]
fn files_that_do_not_match_the_raw_table_are_refused_column_by_column() {
    let movies = Movies::new();
    let [day1, ..] = crafted(movies.dir.path());
    let other = movies.dir.path().join("other.toml");
    // The same graph reading another schema: the crafted file no longer matches its raw table.
    let mut schema: serde_json::Value = serde_json::from_str(READER_SCHEMA).unwrap();
    for field in schema["fields"].as_array_mut().unwrap() {
        match field["name"].as_str().unwrap() {
            "movie_id" => field["type"] = "int".into(),
            "genres" => field["type"] = serde_json::json!(["null", {"type": "array", "items": "long"}]),
            _ => {}
        }
    }
    std::fs::write(movies.dir.path().join("schemas/other.avsc"), schema.to_string()).unwrap();
    let text = std::fs::read_to_string(&movies.graph)
        .unwrap()
        .replace("schemas/movie_rating_film.avsc", "schemas/other.avsc")
        .replace("lake/", "other-lake/");
    std::fs::write(&other, text).unwrap();
    let output = Lake::command_for(&other, &["import", day1.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("column movie_id is Int64 in the file, the table has Int32"), "{stderr}");
    assert!(stderr.contains("column genres is List"), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    // A stage that names a column the raw table lacks is refused when the graph loads.
    let text = std::fs::read_to_string(&movies.graph).unwrap().replace("column = \"original_language\"\n\n", "column = \"language\"\n\n");
    std::fs::write(&other, text).unwrap();
    let output = Lake::command_for(&other, &["init"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("stages[1] (upper language): no column \"language\""), "{stderr}");
}

#[test]
fn the_crafted_exports_streamed_from_kafka_give_the_oracles_table_and_replay_reproduces_it() {
    use ratings_tests::kafka::{Registry, brokers, create_topic};
    let movies = Movies::new();
    let registry_state = tempfile::tempdir().unwrap();
    let registry = Registry::start(registry_state.path());
    let topic = create_topic("movies-test", 3);
    let text = std::fs::read_to_string(&movies.graph)
        .unwrap()
        .replace("topic = \"movie.ratings.films.v1\"", &format!("topic = \"{topic}\""))
        .replace("brokers = \"127.0.0.1:9092\"", &format!("brokers = \"{}\"", brokers()))
        .replace("url = \"http://127.0.0.1:8081\"", &format!("url = \"{}\"", registry.url()));
    std::fs::write(&movies.graph, &text).unwrap();
    let [day1, day2, _] = crafted(movies.dir.path());
    let produced = movies.ok(&["produce", "--malformed", "0", "--from", day1.to_str().unwrap(), day2.to_str().unwrap()]).stdout;
    assert!(produced.contains("produced 11 events"), "{produced}");
    let stream = ["--mode", "stream", "--no-progress", "--stop-when-idle", "2s", "--commit-interval", "500ms"];
    // Killed (SIGKILL) after its first raw commit, before curated and rejected: the restart
    // completes the epoch once.
    let mut parked = Lake::command_for(&movies.graph, &stream)
        .env("FAILPOINTS", "stream-after-raw-commit=sleep(60000)")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while movies.snapshots_of("raw") == 0 {
        assert!(std::time::Instant::now() < deadline, "the stream never committed raw");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    parked.kill().unwrap();
    parked.wait().unwrap();
    assert_eq!(movies.snapshots_of("curated"), 0, "parked before the curated commit");
    movies.ok(&stream);
    let raw = movies.ok(&["show", "raw", "--limit", "1000"]).stdout;
    assert_eq!(raw.lines().filter(|line| line.contains(&topic)).count(), 11, "raw holds every record once:\n{raw}");

    // The same table the oracle computes from the files (and the import + replay tests get).
    let found = movies.python("compare", &[&day1, &day2]);
    assert_eq!(found["mismatch_count"], 0, "{}", found["mismatches"]);
    assert_eq!(found["pyiceberg_mismatches"], 0);
    assert_eq!(found["rows"], 8);
    assert_eq!(found["per_partition"], serde_json::json!({"2021-01-01": 4, "2021-01-02": 4}));

    // Replay of the streamed raw table into fresh tables: the same rows, lineage included.
    let replay_graph = movies.dir.path().join("replay.toml");
    let replayed_table = "movies.movie_ratings_replayed";
    std::fs::write(
        &replay_graph,
        text.replace("curated = \"movies.movie_ratings_curated\"", &format!("curated = \"{replayed_table}\""))
            .replace("rejected = \"movies.movie_ratings_rejected\"", "rejected = \"movies.movie_ratings_replayed_rejected\""),
    )
    .unwrap();
    for args in [&["init"][..], &["--mode", "replay", "--from", "2021-01-01", "--no-progress"]] {
        let output = Lake::command_for(&replay_graph, args).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let lake = movies.dir.path().join("lake");
    let dump = |table: &str| python_script_json("movies.py", &[std::ffi::OsStr::new("dump")], &lake.join("catalog.db"), &lake.join("warehouse"), table);
    let streamed_rows = dump(CURATED);
    assert_eq!(streamed_rows.as_array().map(Vec::len), Some(8));
    assert!(dump(replayed_table) == streamed_rows, "replay of the streamed raw table gave another curated table");
}
