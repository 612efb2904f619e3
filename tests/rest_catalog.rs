//! The REST catalog, both sides.
//!
//! `runtime catalog serve` checked by independent clients: PyIceberg's `RestCatalog` lists,
//! loads and scans what the engine wrote, creates a namespace and a table and commits appends
//! through the endpoint, and two of its writers race: one wins, the other gets 409, re-validates
//! and commits after it. The engine then commits beside the server, and the REST view follows;
//! DuckDB's iceberg extension attaches the endpoint and reads the same rows.
//!
//! The engine as a REST client (`catalog.kind = "rest"`) against that server, with a token:
//! two streams started at once race through it (one gives way, nothing is written twice),
//! commits whose answer is refused (503) or lost after being applied (502) land exactly once,
//! maintenance commits through it with OAuth2 client credentials, and the tables equal the oracle.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ratings_tests::scenario::{FENCED, READER, Scenario, assert_gave_way, spawn_logged};
use ratings_tests::{EDGY, Lake, assert_matches_oracle, python, workspace_root};

/// A running catalog server, stopped when dropped (also when the test fails).
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The catalog server on a free port, and its address.
fn serve(lake: &Lake) -> (Served, String) {
    serve_with(lake.command(&["catalog", "serve", "--addr", "127.0.0.1:0"]))
}

/// The catalog server `command` starts, once it says where it listens.
fn serve_with(mut command: Command) -> (Served, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn the catalog server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.split("http://").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or_else(|| panic!("{line}"));
    let uri = format!("http://{address}");
    (Served(child), uri)
}

fn pyiceberg(uri: &str, table: &str) -> serde_json::Value {
    let output = Command::new(python())
        .arg(workspace_root().join("tests/python/rest_client.py"))
        .args(["--uri", uri, "--table", table])
        .output()
        .expect("python runs");
    assert!(output.status.success(), "rest_client.py: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

#[test]
fn pyiceberg_and_duckdb_read_through_the_rest_endpoint_pyiceberg_commits_and_a_stale_writer_gets_409_then_retries() {
    let lake = Lake::new();
    lake.ok(EDGY);
    lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--to", "2025-05-04", "--no-progress"]);
    let (_server, uri) = serve(&lake);

    let seen = pyiceberg(&uri, "curated.movie_ratings");
    assert_eq!(seen["engine_table_rows"].as_u64().unwrap() as usize, lake.curated_rows().len(), "{seen}");
    assert_eq!(seen["engine_table_snapshots"].as_u64().unwrap() as usize, lake.snapshot_count("curated.movie_ratings"));
    assert_eq!(seen["namespaces"], serde_json::json!(["curated", "raw"]), "{seen}");
    assert_eq!(seen["missing_table"], "NoSuchTableError");
    assert_eq!(seen["tables_in_notes"], serde_json::json!(["notes.from_pyiceberg"]));
    assert_eq!(seen["notes_rows_after_append"], 3);
    // The stale writer got 409 once, re-validated on the new table and committed after the winner.
    assert_eq!((seen["race_conflicts"].as_u64(), seen["race_attempts"].as_u64()), (Some(1), Some(2)), "{seen}");
    assert_eq!(seen["notes_rows_after_race"], 9, "three appends, each once");
    assert_eq!(seen["notes_snapshots"], 3);
    // The table PyIceberg made over REST is an ordinary table of the embedded catalog.
    assert_eq!(lake.snapshot_count("notes.from_pyiceberg"), 3);

    // The engine commits beside the server (the same compare-and-swap); REST readers see it.
    lake.ok(&["--mode", "replay", "--from", "2025-05-05", "--no-progress"]);
    let output = Command::new(python())
        .args(["-c", "import sys; from pyiceberg.catalog.rest import RestCatalog; \
                print(RestCatalog('c', uri=sys.argv[1]).load_table('curated.movie_ratings').scan().to_arrow().num_rows)"])
        .arg(&uri)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: usize = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
    assert_eq!(rows, lake.curated_rows().len());

    // DuckDB attaches the endpoint too (its iceberg extension's REST catalog) and reads the same rows.
    let output = Command::new(python())
        .arg(workspace_root().join("tests/python/duckdb_rest.py"))
        .args(["--uri", &uri, "--table", "curated.movie_ratings"])
        .output()
        .expect("python runs");
    assert!(output.status.success(), "duckdb_rest.py: {}", String::from_utf8_lossy(&output.stderr));
    let duck: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(duck["rows"].as_u64().unwrap() as usize, lake.curated_rows().len(), "{duck}");
    let rating_sum: f64 = lake.curated_rows().iter().map(|(_, row)| row.rating.0 as f64).sum();
    assert!((duck["rating_sum"].as_f64().unwrap() - rating_sum).abs() < 1e-3, "{duck} vs {rating_sum}");
    for table in ["curated.movie_ratings", "curated.movie_ratings_rejected", "raw.movie_ratings_raw", "notes.from_pyiceberg"] {
        assert!(duck["tables"].as_array().unwrap().iter().any(|t| t == table), "{duck}");
    }

    // Unknown endpoints and refused bodies answer with the spec's error model, never a hang.
    let client = |method: &str, path: &str, body: &str| -> (u16, serde_json::Value) {
        let output = Command::new(python())
            .args(["-c", "import sys, json, urllib.request, urllib.error\n\
req = urllib.request.Request(sys.argv[1] + sys.argv[2], data=sys.argv[4].encode() or None, method=sys.argv[3])\n\
try:\n    r = urllib.request.urlopen(req); print(r.status); print(r.read().decode() or 'null')\n\
except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode() or 'null')"])
            .args([&uri, path, method, body])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let mut lines = text.lines();
        (lines.next().unwrap().parse().unwrap(), serde_json::from_str(lines.next().unwrap()).unwrap())
    };
    let (status, body) = client("POST", "/v1/namespaces/curated/tables/movie_ratings", "{not json");
    assert_eq!((status, body["error"]["type"].as_str().unwrap()), (400, "BadRequestException"), "{body}");
    let (status, body) = client("GET", "/v1/namespaces/curated/tables/nothing_here", "");
    assert_eq!(status, 404, "{body}");
    let (status, _) = client("DELETE", "/v1/namespaces/curated/tables/movie_ratings", "");
    assert_eq!(status, 501);}


/// The server on `lake`'s embedded catalog, requiring `token`, with `failpoints` set.
fn serve_guarded(graph: &Path, token: &str, failpoints: &str) -> (Served, String) {
    let mut command = Lake::command_for(graph, &["catalog", "serve", "--addr", "127.0.0.1:0", "--token-env", "CATALOG_TOKEN"]);
    command.env("CATALOG_TOKEN", token).env("FAILPOINTS", failpoints);
    serve_with(command)
}

/// A copy of the graph at `graph` whose catalog is the REST catalog at `uri`, authenticated by
/// `auth` (lines of the `[catalog]` section); the files stay in the same warehouse.
fn rest_graph(graph: &Path, name: &str, uri: &str, auth: &str) -> PathBuf {
    let text = std::fs::read_to_string(graph).unwrap();
    let database_line = text.lines().find(|l| l.starts_with("database = ")).unwrap().to_string();
    let text = text
        .replacen("kind = \"sql\"", "kind = \"rest\"", 1)
        .replacen(&database_line, &format!("uri = {uri:?}\n{auth}"), 1);
    let path = graph.with_file_name(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn engines_commit_through_the_rest_catalog_exactly_once_when_racing_and_when_answers_are_lost() {
    let mut s = Scenario::new(2);
    let sql_graph = s.lake.graph.clone();
    let token = format!("catalog-token-{}", uuid::Uuid::new_v4().simple());
    let secret_file = s.lake.dir.path().join("catalog.secret");
    std::fs::write(&secret_file, format!("{token}\n")).unwrap();
    let (server, uri) = serve_guarded(&sql_graph, &token, "");
    s.lake.graph = rest_graph(&sql_graph, "rest-token.toml", &uri, "token_file = \"catalog.secret\"");
    let mut outputs = Vec::new();

    // A double deploy through REST: both read the empty tables before either commits.
    s.produce(6_000, 3, "2025-05-01", 91, READER);
    let slow_start = Some("stream-before-raw-commit=1*sleep(3000)");
    let (a, b) = (spawn_logged(&s, &[], slow_start), spawn_logged(&s, &[], slow_start));
    let raced = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let fenced = raced.iter().filter(|o| String::from_utf8_lossy(&o.stderr).contains(FENCED)).count();
    let succeeded = raced.iter().filter(|o| o.status.success()).count();
    assert!(fenced >= 1 && fenced + succeeded == 2, "one engine gives way, none fails otherwise: {fenced} fenced, {succeeded} ok");
    for output in raced.iter().filter(|o| !o.status.success()) {
        assert_gave_way(output);
    }
    outputs.extend(raced.iter().map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))));
    outputs.push(s.stream(&[]));
    s.assert_raw_complete();
    assert_matches_oracle(&s.lake, &s.oracle());
    // An independent client with the same token sees the engine's rows through the endpoint.
    let output = Command::new(python())
        .args(["-c", "import sys; from pyiceberg.catalog.rest import RestCatalog; \
                print(RestCatalog('c', uri=sys.argv[1], token=sys.argv[2]).load_table('curated.movie_ratings').scan().to_arrow().num_rows)"])
        .args([&uri, &token])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), s.lake.curated_rows().len().to_string());

    // The server refuses the next commit (503, not applied), then applies the one after and loses
    // its answer (502): the engine retries the first and finds the second in the table.
    drop(server);
    let (server, uri) =
        serve_guarded(&sql_graph, &token, "catalog-serve-refuse-commit=1*return;catalog-serve-lose-commit-answer=1*return");
    s.lake.graph = rest_graph(&sql_graph, "rest-token.toml", &uri, "token_file = \"catalog.secret\"");
    s.produce(3_000, 2, "2025-05-03", 92, READER);
    let run = s.lake.ok(&ratings_tests::scenario::stream_args(&[]));
    assert_eq!(run.stderr.matches("the catalog did not say whether the commit landed").count(), 2, "{}", run.stderr);
    assert!(run.stderr.contains("503") && run.stderr.contains("502"), "{}", run.stderr);
    outputs.push(format!("{}{}", run.stdout, run.stderr));
    s.assert_raw_complete();
    assert_matches_oracle(&s.lake, &s.oracle());

    // Maintenance through REST with OAuth2 client credentials: compaction and expiry commit there.
    let client_graph = rest_graph(
        &sql_graph,
        "rest-client.toml",
        &uri,
        "client_id = \"maintenance\"\nclient_secret_file = \"catalog.secret\"",
    );
    let text = std::fs::read_to_string(&client_graph).unwrap();
    let text = ratings_tests::set_line(ratings_tests::set_line(text, "snapshot_retention", "\"0s\""), "keep_snapshots", "1");
    std::fs::write(&client_graph, text).unwrap();
    let before = s.lake.snapshot_count("raw.movie_ratings_raw");
    let maintain = Lake::command_for(&client_graph, &["maintain"]).output().unwrap();
    let maintained = format!("{}{}", String::from_utf8_lossy(&maintain.stdout), String::from_utf8_lossy(&maintain.stderr));
    assert!(maintain.status.success(), "{maintained}");
    // Compaction and expiry committed through REST: every snapshot the stream made is expired
    // (retention 0s), the compactions' are left.
    let raw_report = maintained.split("curated.movie_ratings").next().unwrap();
    let compactions = raw_report.matches(": compacted (snapshot").count();
    assert!(before >= 2 && compactions >= 1, "{maintained}");
    assert!(raw_report.contains(&format!("expiry:     {before} snapshots expired")), "{maintained}");
    assert_eq!(s.lake.snapshot_count("raw.movie_ratings_raw"), compactions, "{maintained}");
    outputs.push(maintained);
    assert_matches_oracle(&s.lake, &s.oracle());

    // A wrong secret is the user's to fix: one line with the server's answer, nothing retried.
    std::fs::write(&secret_file, "not-the-token").unwrap();
    let refused = Lake::command_for(&s.lake.graph, &["history", "movie_ratings"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("401") && stderr.contains("check the token or client credentials"), "{stderr}");
    outputs.push(stderr.to_string());
    drop(server);

    // The token is never printed, and no table file or catalog row holds it.
    for output in &outputs {
        assert!(!output.contains(&token), "the token leaked into an output:\n{output}");
    }
    let files = s.lake.block_on(s.lake.warehouse.list_files(&s.lake.warehouse.location())).expect("list the warehouse");
    assert!(files.iter().any(|(path, _)| path.ends_with(".metadata.json")), "{files:?}");
    let needle = token.as_bytes();
    for path in files.iter().map(|(path, _)| PathBuf::from(path)).chain([s.lake.database()]) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "the token is in {}", path.display());
    }
}
