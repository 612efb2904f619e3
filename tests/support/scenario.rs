//! A stream test's world: a topic on the project's broker, a registry process of its own, a
//! lake whose graph points at both, what was produced, and how to run and judge the engine.

use std::collections::{BTreeSet, HashMap};
use std::process::Child;
use std::time::{Duration, Instant};

use apache_avro::Schema;

use crate::kafka::{Registry, create_topic, read_topic, repo_root, schema};
use crate::oracle::{Expected, expected};
use crate::Lake;

pub const READER: &str = "graphs/schemas/movie_rating.avsc";
pub const MIX: &[&str] = &[
    "--users", "400", "--movies", "50", "--duplicates", "0.05", "--updates", "0.10", "--ties", "0.03", "--late", "0.02",
    "--invalid", "0.02", "--malformed", "0.01",
];
/// `--mode stream` with short epochs and a short idle stop unless `extra` sets them.
pub fn stream_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--mode", "stream", "--no-progress"];
    if !extra.contains(&"--commit-interval") {
        args.extend(["--commit-interval", "500ms"]);
    }
    if !extra.contains(&"--stop-when-idle") {
        args.extend(["--stop-when-idle", "2s"]);
    }
    args.extend_from_slice(extra);
    args
}

/// A topic, a registry, a lake, and what has been produced so far.
pub struct Scenario {
    _registry_state: tempfile::TempDir,
    pub lake: Lake,
    pub registry: Registry,
    pub topic: String,
    pub produced: usize,
    /// Schema id → writer schema, in registration order (the fixture hands out 1, 2, …).
    pub writers: HashMap<u32, Schema>,
}

impl Scenario {
    pub fn new(partitions: i32) -> Scenario {
        Scenario::with_lake(partitions, Lake::for_stream)
    }

    /// As [`Scenario::new`], the lake's warehouse on the test S3 server.
    pub fn on_s3(partitions: i32) -> Scenario {
        Scenario::with_lake(partitions, Lake::for_stream_on_s3)
    }

    /// A topic and registry, with the lake `make_lake` builds for them (topic, registry URL).
    fn with_lake(partitions: i32, make_lake: fn(&str, &str) -> Lake) -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::start(dir.path());
        let topic = create_topic("ratings-test", partitions);
        let lake = make_lake(&topic, &registry.url());
        Scenario { _registry_state: dir, lake, registry, topic, produced: 0, writers: HashMap::new() }
    }

    pub fn produce(&mut self, count: usize, days: u32, start: &str, seed: u64, writer: &str) {
        let writer_path = repo_root().join(writer);
        let writer_schema = schema(writer);
        let count_text = count.to_string();
        let days_text = days.to_string();
        let seed_text = seed.to_string();
        let mut args = vec![
            "produce", "--count", &count_text, "--days", &days_text, "--start", start, "--seed", &seed_text,
        ];
        args.extend_from_slice(MIX);
        let path_text = writer_path.display().to_string();
        args.extend(["--writer-schema", &path_text]);
        let run = self.lake.ok(&args);
        let id: u32 = run.stdout.split("schema id ").nth(1).and_then(|t| t.split(')').next()).unwrap().parse().unwrap();
        self.writers.insert(id, writer_schema);
        self.produced += count;
    }

    pub fn events(&self) -> Vec<operators::sample::RawEvent> {
        read_topic(&self.topic, self.produced, &self.writers, &schema(READER))
    }

    pub fn oracle(&self) -> Expected {
        expected(&self.events())
    }

    pub fn stream(&self, extra: &[&str]) -> String {
        self.lake.ok(&stream_args(extra)).stdout
    }

    pub fn spawn(&self, extra: &[&str], failpoints: Option<&str>) -> Child {
        let mut command = self.lake.command(&stream_args(extra));
        if let Some(failpoints) = failpoints {
            command.env("FAILPOINTS", failpoints);
        }
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("spawn runtime")
    }

    /// Raw holds every produced record exactly once.
    pub fn assert_raw_complete(&self) {
        let raw = self.lake.raw_events();
        let coordinates: BTreeSet<(i32, i64)> = raw.iter().map(|e| (e.source_partition, e.source_offset)).collect();
        assert_eq!(coordinates.len(), raw.len(), "a raw row appears twice");
        assert_eq!(raw.len(), self.produced, "raw rows vs records produced");
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A stream run whose stdout and stderr the test reads once it ends.
pub fn spawn_logged(s: &Scenario, extra: &[&str], failpoints: Option<&str>) -> Child {
    let mut command = s.lake.command(&stream_args(extra));
    if let Some(failpoints) = failpoints {
        command.env("FAILPOINTS", failpoints);
    }
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("spawn runtime")
}

pub const FENCED: &str = "another writer is committing to";

/// The engine gave way to another writer: exit 2 and the one line that says so.
pub fn assert_gave_way(output: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error (user error): another writer is committing to "), "{stderr}");
}

