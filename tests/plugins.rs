//! Rule plugins: a plugin crate built outside the workspace, the shipped blocklist, and every way a
//! plugin can be broken, each giving its error without a crash and without a commit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use arrow_array::{Array, BooleanArray, Float32Array, StringArray};
use operators::rules::plugin::{Plugin, PluginInstance, PluginSpec};
use ratings_tests::oracle::{Business, expected, expected_with};
use ratings_tests::{EDGY, Lake, Run, assert_matches_oracle, set_line, target_dir, workspace_root};

/// Plugin crates built by the tests share one target folder, outside the workspace's own.
fn fixture_target() -> PathBuf {
    target_dir().join("plugin-fixtures")
}

/// Builds the plugin crate at `manifest` (with `features`) and copies its library into `into`.
fn build_plugin(manifest: &Path, features: &str, library: &str, into: &Path) -> PathBuf {
    // One build at a time: builds of one crate with different features write the same file.
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(manifest)
        .args(["--features", features])
        .env("CARGO_TARGET_DIR", fixture_target())
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "building {}: {}", manifest.display(), String::from_utf8_lossy(&output.stderr));
    let built = fixture_target().join("debug").join(format!("lib{library}.so"));
    let copy = into.join(format!("lib{library}-{}.so", features.replace(',', "-")));
    std::fs::copy(&built, &copy).expect("copy the plugin");
    copy
}

fn broken_plugin(feature: &str, into: &Path) -> PathBuf {
    let manifest = workspace_root().join("tests/fixtures/broken-plugin/Cargo.toml");
    build_plugin(&manifest, feature, "broken_plugin", into)
}

/// The shipped graph with the approval plugin's entry pointing at `path` with `config`.
fn with_approval_plugin(text: String, path: &Path, config: &str) -> String {
    let text = set_line(text, "path", &format!("{:?}", path.display().to_string()));
    set_line(text, "config", config)
}

const SMALL: &[&str] = &["generate", "--events", "3000", "--days", "3", "--start", "2025-05-01", "--seed", "3"];

fn replay(lake: &Lake) -> Run {
    lake.run(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"])
}

fn assert_fails_without_commit(lake: &Lake, run: &Run, mentions: &[&str]) {
    assert!(run.status == 1 || run.status == 2, "a clean failure exit expected, got {}: {}", run.status, run.stderr);
    let last = run.stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(last.starts_with("error"), "{}", run.stderr);
    for text in mentions {
        assert!(last.contains(text), "{last:?} should mention {text:?}");
    }
    assert_eq!(lake.snapshot_count("curated.movie_ratings"), 0, "nothing may be committed");
    assert_eq!(lake.snapshot_count("curated.movie_ratings_rejected"), 0, "nothing may be committed");
}

const EXTERNAL_MANIFEST: &str = r#"[package]
name = "strict-approval"
version = "0.3.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[workspace]

[dependencies]
ratings-plugin-sdk = { path = "SDK" }
serde = { version = "1", features = ["derive"] }
"#;

const EXTERNAL_RULE: &str = r#"
use std::sync::Arc;
use ratings_plugin_sdk::arrow_array::{Array, BooleanArray, Float32Array, RecordBatch, StringArray};
use ratings_plugin_sdk::arrow_schema::DataType;
use ratings_plugin_sdk::{Applied, Description, Rule, export_rule};

#[derive(serde::Deserialize)]
pub struct StrictApproval {
    threshold: f32,
    #[serde(default)]
    withdrawn: Vec<String>,
}

impl Rule for StrictApproval {
    fn describe() -> Description {
        Description::new("strict-approval", "0.3.0")
            .input("rating", DataType::Float32)
            .input("movie_id", DataType::Utf8)
            .output("is_approved", DataType::Boolean)
    }

    fn apply(&self, batch: &RecordBatch) -> Result<Applied, String> {
        let ratings = batch.column(0).as_any().downcast_ref::<Float32Array>().ok_or("rating")?;
        let movies = batch.column(1).as_any().downcast_ref::<StringArray>().ok_or("movie_id")?;
        let approved = BooleanArray::from_unary(ratings, |r| r >= self.threshold);
        let verdicts: StringArray = movies
            .iter()
            .map(|m| m.filter(|m| self.withdrawn.iter().any(|w| w == m)).map(|m| format!("movie {m} is withdrawn")))
            .collect();
        Ok(Applied::outputs(vec![Arc::new(approved)]).with_verdicts(verdicts))
    }
}

export_rule!(StrictApproval);
"#;

#[test]
fn a_plugin_crate_built_outside_the_workspace_is_loaded_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = workspace_root().join("plugins/sdk");
    std::fs::write(dir.path().join("Cargo.toml"), EXTERNAL_MANIFEST.replace("SDK", &sdk.display().to_string())).unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/lib.rs"), EXTERNAL_RULE).unwrap();
    // Pin the same dependency versions the engine was tested with.
    std::fs::copy(workspace_root().join("tests/fixtures/broken-plugin/Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
    let library = build_plugin(&dir.path().join("Cargo.toml"), "", "strict_approval", dir.path());

    // Through the engine's loader, on a batch made here: the output is the rule computed here.
    let spec = PluginSpec {
        label: None,
        path: library.clone(),
        config: serde_json::json!({"threshold": 8.5, "withdrawn": ["m1", "m7"]}),
        base_dir: dir.path().to_path_buf(),
    };
    let plugin = Plugin::load(&spec).unwrap();
    assert_eq!(plugin.label, "strict-approval");
    let mut instance = PluginInstance::new(&plugin).unwrap();
    let ratings: Vec<f32> = (0..=100).map(|i| i as f32 / 10.0).collect();
    let movies: Vec<String> = (0..ratings.len()).map(|i| format!("m{}", i % 9)).collect();
    let (outputs, verdicts) = instance
        .apply(
            vec![Arc::new(Float32Array::from(ratings.clone())), Arc::new(StringArray::from(movies.clone()))],
            ratings.len(),
        )
        .unwrap();
    let approved = outputs[0].as_any().downcast_ref::<BooleanArray>().unwrap();
    let verdicts = verdicts.expect("verdicts");
    for (row, (rating, movie)) in ratings.iter().zip(&movies).enumerate() {
        assert_eq!(approved.value(row), *rating >= 8.5, "row {row}");
        let withdrawn = movie == "m1" || movie == "m7";
        assert_eq!(verdicts.is_valid(row), withdrawn, "row {row}");
        if withdrawn {
            assert_eq!(verdicts.value(row), format!("movie {movie} is withdrawn"));
        }
    }

    // In the engine, in place of the shipped approval plugin: curated equals the oracle with the
    // plugin's rule written out here.
    let lake = Lake::with_graph(|text| with_approval_plugin(text, &library, "{ threshold = 8.5 }"));
    lake.ok(EDGY);
    lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"]);
    let oracle = expected_with(&lake.raw_events(), &Business { approval_threshold: 8.5, reject: &|_| None });
    assert!(oracle.rows.values().any(|r| r.rating >= 7.0 && r.rating < 8.5), "the two thresholds differ on some row");
    assert_matches_oracle(&lake, &oracle);
}

#[test]
fn the_shipped_blocklist_rejects_listed_users_with_its_reason() {
    let lake = Lake::with_full_graph(|text| text);
    lake.ok(EDGY);
    let run = lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"]);
    let blocked = |e: &operators::sample::RawEvent| {
        matches!(e.user_id.as_deref(), Some("u13" | "u4242")).then(|| "blocklisted".to_string())
    };
    let oracle = expected_with(&lake.raw_events(), &Business { approval_threshold: 7.0, reject: &blocked });
    let rejected_by_rule = oracle.rejected.iter().filter(|r| r.2 == "rule_rejected").count();
    assert!(rejected_by_rule > 10, "the generated data has ratings by u13: {rejected_by_rule}");
    assert_matches_oracle(&lake, &oracle);
    assert!(run.stdout.contains(&format!("rule_rejected={rejected_by_rule}")), "{}", run.stdout);
    let shown = lake.ok(&["show", "rejected", "--where", "reason=rule_rejected", "--limit", "1"]).stdout;
    assert!(shown.contains("blocklist: blocklisted user_id u13 (blocklists/users.txt)"), "{shown}");
}

#[test]
fn a_plugin_that_cannot_be_loaded_stops_the_engine_at_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("libnotes.so");
    std::fs::write(&text_file, "not a library").unwrap();
    let not_a_plugin = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("libm is on the machine");
    let cases: Vec<(PathBuf, &str, Vec<&str>)> = vec![
        (dir.path().join("libmissing.so"), "{}", vec!["file not found"]),
        (text_file, "{}", vec!["not a loadable shared library"]),
        (not_a_plugin, "{}", vec!["not a ratings-flow plugin", "ratings_flow_abi_version"]),
        (broken_plugin("wrong_abi", dir.path()), "{}", vec!["ABI version 99", "speaks version 1"]),
        (broken_plugin("missing_symbol", dir.path()), "{}", vec!["does not export `ratings_flow_destroy`"]),
        (broken_plugin("bad_input_type", dir.path()), "{}", vec!["needs column `rating` as Utf8, but it is Float32"]),
        (ratings_tests::plugin_dir().join("libratings_approval.so"), "{ threshold = 11.0 }", vec!["invalid config", "between 0 and 10"]),
        (ratings_tests::plugin_dir().join("libratings_approval.so"), "{ treshold = 8.0 }", vec!["invalid config", "unknown field `treshold`"]),
    ];
    for (path, config, mentions) in cases {
        let lake = Lake::with_graph(|text| with_approval_plugin(text, &path, config));
        lake.ok(SMALL);
        let run = replay(&lake);
        assert_fails_without_commit(&lake, &run, &mentions);
        assert!(run.stderr.contains("plugin `approval`"), "names the plugin: {}", run.stderr);
        assert_eq!(run.stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "one line: {}", run.stderr);
    }

    // Without a plugin that adds is_approved the curated table cannot be written.
    let lake = Lake::with_graph(|text| ratings_tests::without_plugin(text, "approval"));
    lake.ok(SMALL);
    assert_fails_without_commit(&lake, &replay(&lake), &["no rule plugin adds `is_approved`"]);
}

#[test]
fn a_plugin_that_panicked_is_never_called_again_and_the_panic_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = broken_plugin("panics", dir.path());
    let lake = Lake::with_graph(|text| with_approval_plugin(text, &path, "{}"));
    // Many batches on three workers, one epoch per day: plenty of calls a run that went on would make.
    lake.ok(&["generate", "--events", "50000", "--days", "5", "--start", "2025-05-01", "--seed", "3"]);
    let calls = dir.path().join("calls.log");
    let run = Lake::command_for(&lake.graph, &["--mode", "replay", "--from", "2025-05-01", "--no-progress", "-w", "3"])
        .env("RUST_BACKTRACE", "1")
        .env("BROKEN_PLUGIN_CALL_LOG", &calls)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let run = Run { status: run.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&run.stdout).into_owned(), stderr: stderr.to_string() };
    assert_fails_without_commit(&lake, &run, &["plugin `approval`", "panicked: rule exploded on a batch of", "(at src/lib.rs:"]);
    // The error line is the only report: no panic message or backtrace printed per call.
    assert_eq!(stderr.matches("rule exploded").count(), 1, "{stderr}");
    assert!(!stderr.contains("stack backtrace") && !stderr.contains("thread '"), "{stderr}");
    assert!(stderr.lines().count() < 10, "{stderr}");
    // Each worker may be inside a call when the first panic happens; none calls after that.
    let calls = std::fs::read_to_string(&calls).unwrap().lines().count();
    assert!((1..=3).contains(&calls), "{calls} calls to a plugin that had panicked");
}

#[test]
fn a_plugin_that_fails_on_a_batch_stops_the_run_before_any_commit() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("panics", vec!["plugin `approval`", "panicked: rule exploded on a batch of"]),
        ("wrong_length", vec!["plugin `approval`", "rows for an input of"]),
        ("wrong_schema", vec!["plugin `approval`", "returned columns [is_approved Int32]", "declares [is_approved Boolean]"]),
    ];
    for (feature, mentions) in cases {
        let path = broken_plugin(feature, dir.path());
        let lake = Lake::with_graph(|text| with_approval_plugin(text, &path, "{}"));
        lake.ok(SMALL);
        let run = replay(&lake);
        assert_fails_without_commit(&lake, &run, &mentions);
    }
    // The same data with the shipped plugin commits: the failures above were the plugins'.
    let lake = Lake::new();
    lake.ok(SMALL);
    lake.ok(&["--mode", "replay", "--from", "2025-05-01", "--no-progress"]);
    assert_matches_oracle(&lake, &expected(&lake.raw_events()));
}
