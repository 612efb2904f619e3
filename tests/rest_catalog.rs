//! `runtime catalog serve` checked by an independent client: PyIceberg's `RestCatalog` lists,
//! loads and scans what the engine wrote, creates a namespace and a table and commits appends
//! through the endpoint, and two of its writers race: one wins, the other gets 409, re-validates
//! and commits after it. The engine then commits beside the server, and the REST view follows.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use ratings_tests::{EDGY, Lake, python, workspace_root};

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
    let mut child = lake
        .command(&["catalog", "serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the catalog server");
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
fn pyiceberg_reads_creates_and_commits_through_the_rest_endpoint_and_a_stale_writer_gets_409_then_retries() {
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
