//! `--mode stream` against the real broker (Tansu) and a registry process: the curated and
//! rejected tables equal the oracle computed from the topic read back independently; replay of
//! the raw table reproduces them; SIGKILL at any point loses and duplicates nothing; a v2 writer
//! schema is read with the v1 reader schema; a registry outage makes the stream wait.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ratings_tests::kafka::{Crafted, repo_root, schema, send_events};
use ratings_tests::scenario::{FENCED, MIX, READER, Scenario, assert_gave_way, spawn_logged, stream_args, wait_until};
use ratings_tests::{Lake, assert_matches_oracle, python_json, set_line};

const V2: &str = "tests/schemas/movie_rating_v2.avsc";
const INCOMPATIBLE: &str = "tests/schemas/movie_rating_no_rating.avsc";
#[test]
fn stream_equals_the_oracle_and_replay_reproduces_it_with_either_fetch_client() {
    let mut s = Scenario::new(4);
    s.produce(12_000, 5, "2025-05-01", 7, READER);
    let first = s.stream(&["-w", "2"]);
    assert!(first.contains("12000 records"), "{first}");
    // A second run resumes where the first (native fetch, the default) committed, with state
    // seeded from curated, and fetches through librdkafka.
    edit_graph(&s.lake, |graph| {
        assert!(graph.contains("[source]\n"), "{graph}");
        graph.replacen("[source]\n", "[source]\nfetch = \"librdkafka\"\n", 1)
    });
    s.produce(6_000, 3, "2025-05-06", 8, READER);
    let second = s.stream(&["-w", "3"]);
    assert!(second.contains("6000 records"), "{second}");
    assert!(!second.contains("0 curated rows reloaded"), "{second}");

    let oracle = s.oracle();
    let count = |reason: &str| oracle.rejected.iter().filter(|r| r.2 == reason).count();
    for reason in ["bad_framing", "unknown_schema_id", "undecodable_body", "late", "missing_event_id", "rating_out_of_range"] {
        assert!(count(reason) > 0, "produced data has no {reason} record");
    }
    assert_matches_oracle(&s.lake, &oracle);
    s.assert_raw_complete();

    // Nothing new: a third run commits nothing.
    let snapshots = s.lake.snapshot_count("curated.movie_ratings");
    let idle = s.stream(&[]);
    assert!(idle.contains(" 0 records"), "{idle}");
    assert_eq!(s.lake.snapshot_count("curated.movie_ratings"), snapshots);

    // Replay of the raw table into fresh curated and rejected tables reproduces the stream's.
    let graph = std::fs::read_to_string(&s.lake.graph).unwrap();
    let graph = set_line(graph, "curated", "\"curated.movie_ratings_replayed\"");
    let graph = set_line(graph, "rejected", "\"curated.movie_ratings_rejected_replayed\"");
    let replay_graph = s.lake.dir.path().join("replay.toml");
    std::fs::write(&replay_graph, graph).unwrap();
    let replay_graph = replay_graph.display().to_string();
    let replay = Lake::command_for(std::path::Path::new(&replay_graph), &["init"]).status().unwrap();
    assert!(replay.success());
    let replay = Lake::command_for(
        std::path::Path::new(&replay_graph),
        &["--mode", "replay", "--from", "2025-05-01", "--no-progress"],
    )
    .output()
    .unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert_eq!(s.lake.curated_rows_of("curated.movie_ratings_replayed"), s.lake.curated_rows());
    assert_eq!(s.lake.rejected_of("curated.movie_ratings_rejected_replayed"), s.lake.rejected());
}

#[test]
fn a_sigkill_at_any_point_loses_and_duplicates_nothing() {
    let mut s = Scenario::new(3);
    let tables = ["raw.movie_ratings_raw", "curated.movie_ratings_rejected", "curated.movie_ratings"];
    let counts = |s: &Scenario| tables.map(|t| s.lake.snapshot_count(t));
    // Metadata files on disk: a commit parked before its swap has written one the catalog does not name.
    let metadata_files = |s: &Scenario| -> usize {
        ["raw/movie_ratings_raw", "curated/movie_ratings_rejected", "curated/movie_ratings"]
            .iter()
            .map(|t| {
                let dir = s.lake.dir.path().join("lake/warehouse").join(t).join("metadata");
                std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().path().to_string_lossy().ends_with(".metadata.json")).count()
            })
            .sum()
    };
    type Parked = fn([usize; 3], [usize; 3], usize, usize) -> bool;
    // (failpoint, where the process is parked, how to tell from the tables and the files on disk)
    let points: [(&str, &str, Parked); 4] = [
        ("stream-after-raw-commit=sleep(60000)", "raw committed, rejected and curated not", |before, now, _, _| {
            now[0] == before[0] + 1 && now[1..] == before[1..]
        }),
        ("stream-after-curated-commit=sleep(60000)", "all three committed, the epoch not yet confirmed", |before, now, _, _| {
            now.iter().zip(before).all(|(now, before)| *now == before + 1)
        }),
        ("stream-after-rejected-commit=sleep(60000)", "rejected committed, curated not", |before, now, _, _| {
            now[1] == before[1] + 1 && now[2] == before[2]
        }),
        ("commit-before-swap=sleep(60000)", "a commit's files written, its pointer not swapped", |before, now, files_before, files| {
            now == before && files == files_before + 1
        }),
    ];
    for (round, (failpoint, what, parked)) in points.into_iter().enumerate() {
        s.produce(3_000, 2, &format!("2025-06-{:02}", 2 * round + 1), 21 + round as u64, READER);
        let (before, files_before) = (counts(&s), metadata_files(&s));
        let mut child = s.spawn(&["-w", "2"], Some(failpoint));
        wait_until(what, Duration::from_secs(60), || parked(before, counts(&s), files_before, metadata_files(&s)));
        // A parked commit has finished writing before it parks; give the file system a moment.
        std::thread::sleep(Duration::from_millis(300));
        let at_kill = counts(&s);
        assert!(parked(before, at_kill, files_before, metadata_files(&s)), "{failpoint}: moved on before the kill");
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(counts(&s), at_kill, "{failpoint}: tables moved after the kill");
    }
    // Parked before the raw commit: records read and written to raw files, no snapshot yet.
    s.produce(3_000, 2, "2025-06-20", 39, READER);
    let before = counts(&s);
    let mut child = s.spawn(&["-w", "2"], Some("stream-before-raw-commit=sleep(60000)"));
    std::thread::sleep(Duration::from_secs(5));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(counts(&s), before, "committed past stream-before-raw-commit");
    // Mid-epoch: records read, nothing committed yet.
    s.produce(3_000, 2, "2025-06-10", 40, READER);
    let before = counts(&s);
    // Neither the interval nor the idle stop (which closes the open epoch) ends the epoch before the kill.
    let mut child = s.spawn(&["--commit-interval", "60s", "--stop-when-idle", "60s"], None);
    std::thread::sleep(Duration::from_secs(3));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(counts(&s), before, "the mid-epoch kill happened after a commit");

    s.stream(&["-w", "2"]);
    assert_matches_oracle(&s.lake, &s.oracle());
    s.assert_raw_complete();
}

#[test]
fn a_zombie_that_wakes_after_another_engine_took_over_is_fenced_and_loses_nothing() {
    let mut s = Scenario::new(3);
    s.produce(6_000, 3, "2025-05-01", 61, READER);
    // The zombie reads the records, then sleeps before its first commit (a GC pause, SIGSTOP).
    // Long enough for the second engine to start, read and commit even on a loaded machine.
    let zombie = spawn_logged(&s, &["-w", "2"], Some("stream-before-raw-commit=1*sleep(20000)"));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(s.lake.snapshot_count("raw.movie_ratings_raw"), 0, "the zombie committed before it slept");
    // Meanwhile a second engine takes over and commits everything.
    let taker = s.stream(&["-w", "2"]);
    assert!(taker.contains("6000 records"), "{taker}");
    let snapshots = ["raw.movie_ratings_raw", "curated.movie_ratings_rejected", "curated.movie_ratings"].map(|t| s.lake.snapshot_count(t));
    // The zombie wakes up: its epoch was computed from the empty tables, so it is refused.
    let output = zombie.wait_with_output().unwrap();
    assert_gave_way(&output);
    assert_eq!(
        ["raw.movie_ratings_raw", "curated.movie_ratings_rejected", "curated.movie_ratings"].map(|t| s.lake.snapshot_count(t)),
        snapshots,
        "the zombie committed to a table"
    );
    s.assert_raw_complete();
    assert_matches_oracle(&s.lake, &s.oracle());
    // A plain restart afterwards: nothing to do, nothing duplicated.
    s.produce(1_000, 1, "2025-05-04", 62, READER);
    s.stream(&[]);
    s.assert_raw_complete();
    assert_matches_oracle(&s.lake, &s.oracle());
}

#[test]
fn two_engines_started_on_one_graph_commit_each_record_once() {
    let mut s = Scenario::new(4);
    s.produce(20_000, 4, "2025-05-01", 63, READER);
    // A double deploy: both start at once from the same (empty) tables and read everything. The
    // first commit waits a moment, so both have read the tables before either commits, however
    // slowly one of them starts.
    let slow_start = Some("stream-before-raw-commit=1*sleep(3000)");
    let (a, b) = (spawn_logged(&s, &["-w", "2"], slow_start), spawn_logged(&s, &["-w", "2"], slow_start));
    let outputs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let fenced = outputs.iter().filter(|o| String::from_utf8_lossy(&o.stderr).contains(FENCED)).count();
    let succeeded = outputs.iter().filter(|o| o.status.success()).count();
    // Usually one commits and the other gives way at its first commit; in a narrow window both
    // can lose a table each (A wins raw, B read curated before A's curated commit). Never neither.
    assert!(fenced >= 1 && fenced + succeeded == 2, "one engine gives way, none fails otherwise: {fenced} fenced, {succeeded} ok");
    for output in outputs.iter().filter(|o| !o.status.success()) {
        assert_gave_way(output);
    }
    // The engine that gave way may have committed some epochs first: a plain restart finishes.
    s.stream(&[]);
    s.assert_raw_complete();
    assert_matches_oracle(&s.lake, &s.oracle());
    let raw = s.lake.table("raw.movie_ratings_raw");
    let writers: BTreeSet<String> = raw
        .metadata()
        .snapshots()
        .map(|snapshot| snapshot.summary().additional_properties["ratings-flow.writer"].clone())
        .collect();
    assert!(!writers.is_empty() && writers.len() <= 3, "{writers:?}");
}

#[test]
fn a_replay_while_a_stream_runs_fences_the_stream_and_a_restart_completes() {
    let mut s = Scenario::new(2);
    s.produce(4_000, 2, "2025-05-01", 64, READER);
    s.stream(&[]);
    s.produce(4_000, 2, "2025-05-03", 65, READER);
    // The stream commits raw and rejected, then pauses before curated ...
    let stream = spawn_logged(&s, &[], Some("stream-after-rejected-commit=1*sleep(30000)"));
    let raw_snapshots = s.lake.snapshot_count("curated.movie_ratings_rejected");
    wait_until("the stream committed rejected", Duration::from_secs(60), || {
        s.lake.snapshot_count("curated.movie_ratings_rejected") > raw_snapshots
    });
    // ... while a replay of the same raw rows commits curated and rejected.
    s.lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"]);
    let output = stream.wait_with_output().unwrap();
    assert_gave_way(&output);
    assert!(String::from_utf8_lossy(&output.stderr).contains("curated.movie_ratings"), "fenced on curated");
    // A replay that read the tables before the stream committed is refused the same way.
    s.produce(2_000, 1, "2025-05-05", 66, READER);
    let replay = s.lake.command(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"])
        .env("FAILPOINTS", "commit-before-swap=1*sleep(20000)")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    s.stream(&[]);
    assert_gave_way(&replay.wait_with_output().unwrap());
    // Restarted, the stream finishes the job: nothing lost, nothing twice.
    s.stream(&[]);
    s.assert_raw_complete();
    assert_matches_oracle(&s.lake, &s.oracle());
}

#[test]
fn a_v2_writer_schema_is_read_with_the_v1_reader_schema() {
    let mut s = Scenario::new(2);
    s.produce(2_000, 2, "2025-07-01", 3, V2);
    s.produce(300, 1, "2025-07-03", 4, INCOMPATIBLE);
    let out = s.stream(&[]);
    assert!(out.contains("2300 records"), "{out}");
    let oracle = s.oracle();
    let incompatible = oracle.rejected.iter().filter(|r| r.2 == "incompatible_schema").count();
    // Every record of the incompatible batch but the ones produced unreadable on purpose.
    assert!(incompatible >= 290, "incompatible {incompatible}");
    assert_matches_oracle(&s.lake, &oracle);
}

#[test]
fn a_registry_outage_makes_the_stream_wait_and_drops_nothing() {
    let mut s = Scenario::new(2);
    // Down when the stream starts: the first lookup waits.
    s.produce(3_000, 2, "2025-08-01", 5, READER);
    s.registry.stop();
    let child = s.spawn(&["--stop-when-idle", "6s"], None);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(s.lake.snapshot_count("raw.movie_ratings_raw"), 0, "committed without the registry");
    s.registry.restart();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_matches_oracle(&s.lake, &s.oracle());

    // Down in the middle of a run, when records with a schema id the engine has not seen arrive.
    let child = s.spawn(&["--stop-when-idle", "8s"], None);
    s.produce(0, 1, "2025-08-03", 6, V2); // registers v2, sends nothing
    let v2_id = *s.writers.keys().max().unwrap();
    s.registry.stop();
    let raw_snapshots = s.lake.snapshot_count("raw.movie_ratings_raw");
    let id_text = v2_id.to_string();
    let mut args = vec!["produce", "--count", "2000", "--days", "1", "--start", "2025-08-03", "--seed", "6"];
    args.extend_from_slice(MIX);
    let v2_path = repo_root().join(V2).display().to_string();
    args.extend(["--writer-schema", &v2_path, "--schema-id", &id_text]);
    s.lake.ok(&args);
    s.produced += 2000;
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(s.lake.snapshot_count("raw.movie_ratings_raw"), raw_snapshots, "committed without the registry");
    s.registry.restart();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    // The oracle knows v2's id: had the engine rejected those records for the outage, curated
    // would miss their rows and rejected would hold extra unknown_schema_id entries.
    assert_matches_oracle(&s.lake, &s.oracle());
    s.assert_raw_complete();
}

#[test]
fn new_keys_append_files_and_superseded_rows_become_position_deletes() {
    let mut s = Scenario::new(2);
    let only_new = ["--duplicates", "0", "--updates", "0", "--ties", "0", "--late", "0", "--invalid", "0", "--malformed", "0"];
    let produce = |s: &mut Scenario, seed: &str| {
        let mut args = vec!["produce", "--count", "2000", "--days", "2", "--start", "2025-09-01", "--seed", seed];
        args.extend(only_new);
        s.lake.ok(&args);
        s.produced += 2000;
    };
    s.writers.insert(1, schema(READER));
    produce(&mut s, "1");
    s.stream(&[]);
    let first = s.lake.live_files("curated.movie_ratings");

    // New keys in the same two partitions: an append; every earlier file stays.
    produce(&mut s, "2");
    s.stream(&[]);
    let curated = s.lake.table("curated.movie_ratings");
    let snapshot = curated.metadata().current_snapshot().unwrap();
    assert_eq!(snapshot.summary().operation, iceberg::spec::Operation::Append);
    let second = s.lake.live_files("curated.movie_ratings");
    assert!(first.iter().all(|f| second.contains(f)), "a file of the first run was rewritten");
    assert!(second.len() > first.len());

    // The first batch again: each record ties with its earlier copy and, ingested later, wins (its
    // lineage moves). No data file is rewritten: the superseded rows are marked by position
    // deletes, one delete file per changed partition.
    assert!(s.lake.live_delete_files("curated.movie_ratings").is_empty());
    produce(&mut s, "1");
    s.stream(&[]);
    let third = s.lake.live_files("curated.movie_ratings");
    assert!(second.iter().all(|f| third.contains(f)), "a data file was rewritten");
    let deletes = s.lake.live_delete_files("curated.movie_ratings");
    let folder = |path: &String| path.rsplit_once('/').unwrap().0.to_string();
    let first_partitions: BTreeSet<String> = first.iter().map(folder).collect();
    assert_eq!(deletes.iter().map(folder).collect::<BTreeSet<_>>(), first_partitions, "one delete file per changed partition");
    assert_eq!(deletes.len(), first_partitions.len());
    let curated = s.lake.table("curated.movie_ratings");
    let summary = &curated.metadata().current_snapshot().unwrap().summary().additional_properties;
    assert_eq!(summary["total-position-deletes"], "2000", "every row of the first batch superseded once");
    assert!(summary.get("deleted-data-files").is_none_or(|n| n == "0"), "{summary:?}");
    assert_matches_oracle(&s.lake, &s.oracle());
}

/// Day 0 (2025-09-01) in Kafka milliseconds, and one day.
const DAY0_MS: i64 = 20_332 * 86_400_000;
const DAY_MS: i64 = 86_400_000;

/// Partition 1 lags: `lagging` is ingested there on day 0 while 20 events (ids
/// `00000000-0000-4000-8000-{prefix}000000000NN`) on partition 0 are ten days further. Returns
/// their ids.
fn send_lagging_partition(s: &mut Scenario, lagging: &str, prefix: char) -> Vec<String> {
    let ahead: Vec<String> = (0..20).map(|i| format!("00000000-0000-4000-8000-{prefix}000000000{i:02}")).collect();
    let mut events =
        vec![Crafted { partition: 1, timestamp_ms: DAY0_MS + 3_600_000, event_id: lagging, rating: 5.0, rating_timestamp: DAY0_MS / 1000 + 60 }];
    events.extend(ahead.iter().zip(0i64..).map(|(event_id, i)| {
        let at = DAY0_MS + 10 * DAY_MS + i * 60_000;
        Crafted { partition: 0, timestamp_ms: at, event_id, rating: 8.0, rating_timestamp: at / 1000 }
    }));
    send_events(&s.topic, &schema(READER), 1, &events);
    s.produced += events.len();
    ahead
}

/// Two days later on partition 1, the lagging event's update: inside the lateness window of its row.
fn send_lagging_update(s: &mut Scenario, lagging: &str) {
    let at = DAY0_MS + 2 * DAY_MS;
    send_events(&s.topic, &schema(READER), 1, &[Crafted { partition: 1, timestamp_ms: at, event_id: lagging, rating: 9.0, rating_timestamp: at / 1000 }]);
    s.produced += 1;
}

/// The lagging event's update replaced its row: one row, moved to day 2.
fn assert_lagging_row_moved(s: &Scenario, lagging: &str) {
    assert_matches_oracle(&s.lake, &s.oracle());
    let rows: Vec<_> = s.lake.curated_rows().into_iter().filter(|(key, _)| uuid::Uuid::from_u128(*key).to_string() == lagging).collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1.rating_date, 20_334);
}

#[test]
fn an_update_from_a_partition_days_behind_the_others_still_replaces_the_row() {
    // Partition 1 lags: its event is ingested on day 0 while partition 0 is already ten days
    // further. The writer must not let day 0 leave memory while partition 1 can still send an
    // update that moves the row out of it; otherwise the old row stays and the key has two rows.
    let mut s = Scenario::new(2);
    s.produce(1, 1, "2025-09-01", 7, READER);
    let lagging = "00000000-0000-4000-8000-000000000001";
    let ahead = send_lagging_partition(&mut s, lagging, '1');
    let mut stream = s.spawn(&["--stop-when-idle", "4s"], None);
    wait_until("partition 0's events and the lagging one are committed", Duration::from_secs(60), || {
        let keys: BTreeSet<String> = s.lake.curated_rows().iter().map(|(key, _)| uuid::Uuid::from_u128(*key).to_string()).collect();
        keys.contains(lagging) && ahead.iter().all(|key| keys.contains(key))
    });
    send_lagging_update(&mut s, lagging);
    assert!(stream.wait().unwrap().success());
    assert_lagging_row_moved(&s, lagging);
}

#[test]
fn a_restart_keeps_the_rows_of_a_lagging_partition_updatable_as_one_run_does() {
    // As above, but the engine stops between the lagging partition's event and its update: the
    // restart must settle days by the lagging partition (read back from curated), not by the
    // newest ingestion date curated reflects, or the update would be rejected as a late update.
    let mut s = Scenario::new(2);
    s.produce(1, 1, "2025-09-01", 7, READER);
    let lagging = "00000000-0000-4000-8000-000000000002";
    send_lagging_partition(&mut s, lagging, '2');
    s.stream(&[]);
    let curated = s.lake.table("curated.movie_ratings");
    let summary = &curated.metadata().current_snapshot().unwrap().summary().additional_properties;
    assert!(summary["ratings-flow.partition-days"].contains(r#""1":"2025-09-01""#), "{summary:?}");
    // The update, after the restart.
    send_lagging_update(&mut s, lagging);
    s.stream(&[]);
    assert_lagging_row_moved(&s, lagging);
}

#[test]
fn a_backlog_is_read_in_bounded_epochs_and_the_last_one_lands_before_the_interval_ends() {
    let mut s = Scenario::new(3);
    edit_graph(&s.lake, |g| set_line(g, "stream_epoch_events", "1000"));
    s.produce(6_500, 3, "2025-05-01", 11, READER);
    let run = s.stream(&["-w", "2", "--commit-interval", "10m", "--stop-when-idle", "8s"]);
    // Every epoch closed full or when the backlog was drained: the last one landed right after
    // the last record, not when the run stopped for being idle (nor when the interval ended).
    let seconds = |after: &str, before: &str| -> f64 {
        run.split(after).nth(1).and_then(|t| t.split(before).next()).unwrap().trim().trim_end_matches('s').parse().unwrap()
    };
    let (landed, ran) = (seconds("committed ", "after the start"), seconds("partitions in ", "("));
    assert!(landed + 5.0 < ran, "the last epoch waited for the idle stop (landed {landed}s, ran {ran}s):\n{run}");
    let raw = s.lake.table("raw.movie_ratings_raw");
    let added: Vec<u64> = raw
        .metadata()
        .snapshots()
        .map(|snapshot| snapshot.summary().additional_properties["added-records"].parse().unwrap())
        .collect();
    // Each worker closes after its share (500 of 1000), so an epoch holds at most 1000 records.
    assert!(added.len() >= 7, "6500 records in epochs of at most 1000: {added:?}");
    assert!(added.iter().all(|n| *n <= 1000), "an epoch held more than stream_epoch_events: {added:?}");
    assert_eq!(added.iter().sum::<u64>(), 6_500);
    assert_matches_oracle(&s.lake, &s.oracle());
    s.assert_raw_complete();
}

/// Live data files per partition folder of `table`.
fn files_per_partition(lake: &Lake, table: &str) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for file in lake.live_files(table) {
        *counts.entry(file.split('/').rev().nth(1).unwrap().to_string()).or_default() += 1;
    }
    counts
}

fn edit_graph(lake: &Lake, edit: impl FnOnce(String) -> String) {
    let graph = std::fs::read_to_string(&lake.graph).unwrap();
    std::fs::write(&lake.graph, edit(graph)).unwrap();
}

#[test]
fn maintain_compacts_what_many_small_stream_epochs_left_and_the_stream_goes_on() {
    const CURATED: &str = "curated.movie_ratings";
    let mut s = Scenario::new(2);
    // The writer leaves small files alone here, so `runtime maintain` finds them.
    edit_graph(&s.lake, |g| set_line(g, "compact_after_files", "0"));
    for round in 0..4 {
        s.produce(1500, 2, "2025-05-01", 30 + round, READER);
        s.stream(&[]);
    }
    let most = |table: &str| files_per_partition(&s.lake, table).values().copied().max().unwrap();
    assert!(most(CURATED) >= 3 && most("raw.movie_ratings_raw") >= 3, "many small epochs leave many files");
    let before = python_json(&s.lake, "check_tables.py", CURATED);
    let old_snapshot = s.lake.table(CURATED).metadata().current_snapshot_id().unwrap().to_string();
    let rows_then = python_json(&s.lake, "table_files.py", CURATED)["rows"][&old_snapshot].clone();

    let run = s.lake.ok(&["maintain", "--compact"]);
    assert!(run.stdout.contains("compacted"), "{}", run.stdout);
    for table in ["raw.movie_ratings_raw", CURATED, "curated.movie_ratings_rejected"] {
        assert!(files_per_partition(&s.lake, table).values().all(|n| *n == 1), "{table}: one file per partition");
    }
    let after = python_json(&s.lake, "check_tables.py", CURATED);
    for key in ["rows", "per_partition", "checksum", "duckdb_rows", "duckdb_checksum"] {
        assert_eq!(after[key], before[key], "{key}");
    }
    let rows_now = python_json(&s.lake, "table_files.py", CURATED)["rows"][&old_snapshot].clone();
    assert_eq!(rows_now, rows_then, "time travel to the snapshot before compaction still reads it");
    assert_matches_oracle(&s.lake, &s.oracle());
    s.assert_raw_complete();

    // The stream resumes on the compacted tables (its state is reloaded from the new files).
    s.produce(1000, 1, "2025-05-02", 40, READER);
    s.stream(&[]);
    assert_matches_oracle(&s.lake, &s.oracle());
    s.assert_raw_complete();
}

#[test]
fn the_stream_compacts_curated_in_its_writer_and_runs_scheduled_maintenance() {
    let mut s = Scenario::new(2);
    edit_graph(&s.lake, |g| {
        let g = set_line(g, "compact_after_files", "3");
        let g = set_line(g, "schedule", "\"1s\"");
        let g = set_line(g, "snapshot_retention", "\"0s\"");
        set_line(g, "keep_snapshots", "4")
    });
    let mut logs = String::new();
    for round in 0..5 {
        s.produce(1000, 2, "2025-05-01", 50 + round, READER);
        let run = s.lake.command(&stream_args(&["--stop-when-idle", "3s"])).env("RUST_LOG", "info").output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        logs.push_str(&String::from_utf8_lossy(&run.stderr));
        let curated = files_per_partition(&s.lake, "curated.movie_ratings");
        assert!(curated.values().all(|n| *n <= 3), "round {round}: the writer keeps partitions under 3 files: {curated:?}");
    }
    assert!(logs.contains("compaction") && logs.contains("Compacted"), "scheduled compaction ran: {logs}");
    assert!(logs.contains("snapshot expiry"), "scheduled expiry ran");
    assert!(s.lake.snapshot_count("raw.movie_ratings_raw") < 10, "old snapshots were expired while streaming");
    assert_matches_oracle(&s.lake, &s.oracle());
    s.assert_raw_complete();
}

fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut connection = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    connection.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    connection.read_to_string(&mut text).ok()?;
    Some(text)
}

fn metric(text: &str, name_and_labels: &str) -> Option<u64> {
    text.lines()
        .find(|line| line.starts_with(name_and_labels) && line[name_and_labels.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map(|value| value as u64)
}

#[test]
fn metrics_count_what_the_run_did() {
    let mut s = Scenario::new(2);
    // Eight ingestion days: rows of the first days freeze and leave the upsert arrangement.
    s.produce(3_000, 8, "2025-10-01", 11, READER);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let child = s.spawn(&["--metrics-addr", &address, "--stop-when-idle", "8s"], None);
    let oracle = s.oracle();
    let mut text = String::new();
    wait_until("the metrics show the committed epoch", Duration::from_secs(30), || {
        text = scrape(port).unwrap_or_default();
        metric(&text, r#"ratings_flow_records_total{stage="source"}"#) == Some(3_000)
            && metric(&text, r#"ratings_flow_records_total{stage="inserted"}"#) == Some(oracle.rows.len() as u64)
    });
    for reason in ["bad_framing", "late", "missing_event_id"] {
        let expected = oracle.rejected.iter().filter(|r| r.2 == reason).count() as u64;
        assert_eq!(metric(&text, &format!(r#"ratings_flow_rejected_total{{reason="{reason}"}}"#)), Some(expected), "{reason}\n{text}");
    }
    assert_eq!(metric(&text, "ratings_flow_upsert_keys"), Some(oracle.rows.len() as u64), "{text}");
    // Rows behind the settled day (the earliest of the partitions' newest ingestion dates) by
    // more than the lateness have left the arrangement.
    let mut newest_day: BTreeMap<i32, i32> = BTreeMap::new();
    for event in s.events() {
        let newest = newest_day.entry(event.source_partition).or_insert(i32::MIN);
        *newest = (*newest).max(operators::model::day_of_millis(event.ingestion_ts_ms));
    }
    let frozen_before = newest_day.values().min().unwrap() - 5;
    let held = oracle.rows.values().filter(|row| row.rating_date >= frozen_before).count();
    assert!(held < oracle.rows.len(), "no row froze: the check below would not tell held rows from keys");
    assert_eq!(metric(&text, "ratings_flow_upsert_rows"), Some(held as u64), "{text}");
    assert!(text.contains("ratings_flow_epoch_commit_seconds_count"), "{text}");
    assert!(child.wait_with_output().unwrap().status.success());
}
