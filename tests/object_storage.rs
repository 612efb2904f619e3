//! Warehouses on S3-compatible object storage, against the project's S3 server (s3s-fs, started by
//! `scripts/s3.sh up`, address in `RATINGS_FLOW_TEST_S3`): a stream killed mid-epoch and
//! restarted, and a replay, give on S3 exactly what the same runs give on local disk, as PyIceberg
//! reads them through its own S3 FileIO; no secret reaches any output or any file of the lake.

use std::time::Duration;

use ratings_tests::scenario::{READER, Scenario, stream_args, wait_until};
use ratings_tests::{Lake, assert_matches_oracle, pyiceberg_digest, set_line};

const TABLES: [&str; 3] = ["raw.movie_ratings_raw", "curated.movie_ratings", "curated.movie_ratings_rejected"];

#[test]
fn a_stream_killed_and_restarted_and_a_replay_on_s3_equal_the_same_runs_on_local_disk() {
    let mut s = Scenario::on_s3(3);
    // The same topic, read by a second lake on local disk (offsets live in each lake's tables).
    let local = Lake::for_stream(&s.topic, &s.registry.url());
    s.produce(6_000, 3, "2025-05-01", 7, READER);

    // On S3: killed right after its first raw commit, then restarted until idle.
    let raw_snapshots = s.lake.snapshot_count(TABLES[0]);
    let mut child = s.spawn(&["-w", "2"], Some("stream-after-raw-commit=sleep(60000)"));
    wait_until("the raw table committed on S3", Duration::from_secs(120), || s.lake.snapshot_count(TABLES[0]) > raw_snapshots);
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = s.stream(&["-w", "2"]);
    assert!(resumed.contains("records"), "{resumed}");
    s.produce(2_000, 2, "2025-05-03", 8, READER);
    s.stream(&["-w", "2"]);
    assert_matches_oracle(&s.lake, &s.oracle());
    s.assert_raw_complete();

    // On local disk: one uninterrupted run over the same records.
    local.ok(&stream_args(&["-w", "2"]));

    for table in TABLES {
        let on_s3 = pyiceberg_digest(&s.lake, table);
        let on_disk = pyiceberg_digest(&local, table);
        assert_eq!(on_s3["file_schemes"], serde_json::json!(["s3"]), "{table}: {on_s3}");
        assert_eq!(on_disk["file_schemes"], serde_json::json!(["file"]), "{table}: {on_disk}");
        assert!(on_s3["rows"].as_u64().unwrap() > 0, "{table}: {on_s3}");
        for key in ["rows", "partitions", "checksum"] {
            assert_eq!(on_s3[key], on_disk[key], "{table}: {key} on S3 vs on local disk");
        }
    }

    // Replay of the S3 raw table into fresh tables on S3 reproduces the local stream's tables.
    let graph = std::fs::read_to_string(&s.lake.graph).unwrap();
    let graph = set_line(graph, "curated", "\"curated.movie_ratings_replayed\"");
    let graph = set_line(graph, "rejected", "\"curated.movie_ratings_rejected_replayed\"");
    let replay_graph = s.lake.dir.path().join("replay.toml");
    std::fs::write(&replay_graph, graph).unwrap();
    for args in [&["init"][..], &["--mode", "replay", "--from", "2025-05-01", "--no-progress"]] {
        let run = Lake::command_for(&replay_graph, args).output().unwrap();
        assert!(run.status.success(), "{args:?}: {}", String::from_utf8_lossy(&run.stderr));
    }
    for (replayed, streamed) in
        [("curated.movie_ratings_replayed", TABLES[1]), ("curated.movie_ratings_rejected_replayed", TABLES[2])]
    {
        let on_s3 = pyiceberg_digest(&s.lake, replayed);
        let on_disk = pyiceberg_digest(&local, streamed);
        for key in ["rows", "partitions", "checksum"] {
            assert_eq!(on_s3[key], on_disk[key], "{replayed} replayed on S3 vs {streamed} streamed on local disk: {key}");
        }
    }

    // Maintenance on S3 lists the bucket: a stray old object is an orphan, the tables' files are not.
    let maintain = s.lake.ok(&["maintain", "--dry-run"]);
    assert!(maintain.stdout.contains("orphans:    0 files to delete"), "{}", maintain.stdout);
}

/// Every byte `run` printed.
fn printed(run: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr))
}

#[test]
fn no_secret_reaches_any_output_log_or_file_of_the_lake() {
    // The server's secret key, as `make test` exported it; the graph names the variables.
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").expect("make test exports the S3 server's key pair");
    assert!(secret.len() >= 12, "a recognisable secret");
    let lake = Lake::on_s3(|text| {
        text.replace(
            "path_style = true",
            "path_style = true\naccess_key_id_env = \"AWS_ACCESS_KEY_ID\"\nsecret_access_key_env = \"AWS_SECRET_ACCESS_KEY\"",
        )
    });
    let mut outputs = Vec::new();
    let commands: [&[&str]; 7] = [
        &["generate", "--events", "4000", "--days", "2", "--start", "2025-05-01"],
        &["--mode", "replay", "--from", "2025-05-01"],
        &["maintain"],
        &["history", "curated"],
        &["show", "curated", "--limit", "3"],
        &["check", "--table", "movie_ratings", "--partition", "rating_date=2025-05-01", "--as-of", "2025-05-02T00:00:00Z"],
        &["history", "raw"],
    ];
    for args in commands {
        let run = lake.command(args).env("RUST_LOG", "debug").output().unwrap();
        assert!(run.status.success(), "{args:?}: {}", printed(&run));
        outputs.push(printed(&run));
    }

    // The secret from a file instead; a wrong one is refused with one line that does not echo it.
    let secret_file = lake.dir.path().join("s3-secret");
    let graph = std::fs::read_to_string(&lake.graph).unwrap();
    let from_file = graph.replace("secret_access_key_env = \"AWS_SECRET_ACCESS_KEY\"", "secret_access_key_file = \"s3-secret\"");
    std::fs::write(&lake.graph, from_file).unwrap();
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let run = lake.command(&["history", "curated"]).env("RUST_LOG", "debug").output().unwrap();
    assert!(run.status.success(), "{}", printed(&run));
    outputs.push(printed(&run));
    let wrong = "wrong-secret-0f9e8d7c6b5a";
    std::fs::write(&secret_file, wrong).unwrap();
    let refused = lake.command(&["show", "curated"]).env("RUST_LOG", "debug").output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "a user error: {}", printed(&refused));
    assert!(printed(&refused).contains("the object store refused the request (403 Forbidden)"), "{}", printed(&refused));
    assert!(!printed(&refused).contains(wrong), "the wrong secret was echoed: {}", printed(&refused));
    outputs.push(printed(&refused));

    // No credentials anywhere: one line that says where they are looked for.
    let graph = std::fs::read_to_string(&lake.graph).unwrap();
    let without = graph
        .replace("access_key_id_env = \"AWS_ACCESS_KEY_ID\"\n", "")
        .replace("secret_access_key_file = \"s3-secret\"\n", "");
    std::fs::write(&lake.graph, without).unwrap();
    let missing = lake
        .command(&["show", "curated"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", lake.dir.path().join("no-such-file"))
        .env("AWS_CONFIG_FILE", lake.dir.path().join("no-such-file"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "{}", printed(&missing));
    assert!(printed(&missing).contains("no S3 credentials were found"), "{}", printed(&missing));

    for output in &outputs {
        assert!(!output.contains(&secret), "an output holds the secret:\n{output}");
    }
    // Every object of the lake (metadata, manifests, manifest lists, data and delete files) and
    // the catalog database.
    let table = lake.table("curated.movie_ratings");
    let objects = lake.block_on(async {
        let prefix = match &lake.warehouse {
            operators::storage::Warehouse::S3(s3) => s3.uri.clone(),
            other => panic!("the lake is on S3, not {other:?}"),
        };
        let listed = lake.warehouse.list_files(&prefix).await.expect("list the lake's prefix");
        let mut objects = Vec::new();
        for (path, _) in listed {
            let bytes = table.file_io().new_input(&path).unwrap().read().await.unwrap();
            objects.push((path, bytes));
        }
        objects
    });
    assert!(objects.iter().any(|(p, _)| p.ends_with(".metadata.json")) && objects.iter().any(|(p, _)| p.ends_with(".parquet")));
    let needle = secret.as_bytes();
    for (path, bytes) in objects {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{path} holds the secret");
    }
    let database = std::fs::read(lake.database()).unwrap();
    assert!(!database.windows(needle.len()).any(|w| w == needle), "the catalog database holds the secret");
}
