//! `-n/-p/-h`: one pipeline over several processes on this machine (loopback). Tables equal a
//! single process's on the same input, row for row in every column; a process started with
//! another graph is refused at start; a killed process stops the others, and a restarted
//! cluster completes the tables exactly once.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use ratings_tests::scenario::{READER, Scenario, stream_args, wait_until};
use ratings_tests::{EDGY, Lake, assert_matches_oracle, set_line};

const TABLES: [&str; 3] = ["raw.movie_ratings_raw", "curated.movie_ratings", "curated.movie_ratings_rejected"];

/// A hostfile of `processes` free loopback ports.
fn hostfile(dir: &Path, processes: usize) -> PathBuf {
    let listeners: Vec<std::net::TcpListener> = (0..processes).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let lines: Vec<String> = listeners.iter().map(|l| format!("127.0.0.1:{}", l.local_addr().unwrap().port())).collect();
    let path = dir.join(format!("hosts-{}.txt", lines.join("-").replace(['.', ':'], "")));
    std::fs::write(&path, format!("# one host:port per process\n{}\n", lines.join("\n"))).unwrap();
    path
}

/// Starts process `process` of `processes` on `graph` with `args`.
fn start(graph: &Path, hosts: &Path, processes: usize, process: usize, args: &[&str]) -> Child {
    let (n, p) = (processes.to_string(), process.to_string());
    let mut cluster = vec!["-n", &n, "-p", &p, "-h", hosts.to_str().unwrap(), "--cluster-wait", "30s"];
    cluster.extend_from_slice(args);
    Lake::command_for(graph, &cluster).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn runtime")
}

/// Runs every process of a cluster to its end.
fn run_cluster(graphs: &[&Path], dir: &Path, args: &[&str]) -> Vec<Output> {
    let hosts = hostfile(dir, graphs.len());
    let children: Vec<Child> = graphs.iter().enumerate().map(|(p, graph)| start(graph, &hosts, graphs.len(), p, args)).collect();
    children.into_iter().map(|child| child.wait_with_output().unwrap()).collect()
}

fn assert_all_succeeded(outputs: &[Output]) {
    for (process, output) in outputs.iter().enumerate() {
        assert!(
            output.status.success(),
            "process {process}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn assert_same_tables(cluster: &Lake, single: &Lake) {
    for table in TABLES {
        let (ours, theirs) = (cluster.rows_of(table), single.rows_of(table));
        assert!(!theirs.is_empty(), "{table} is empty");
        assert_eq!(ours.len(), theirs.len(), "{table}: rows");
        assert!(ours == theirs, "{table}: the cluster's rows differ from one process's");
    }
}

#[test]
fn a_replay_on_two_processes_writes_the_tables_one_process_writes() {
    let replay = ["--mode", "replay", "--from", "2025-05-01", "--no-progress", "-w", "1"];
    let single = Lake::with_full_graph(|text| set_line(text, "replay_epoch_events", "6000"));
    single.ok(EDGY);
    single.ok(&replay);
    let cluster = Lake::with_full_graph(|text| set_line(text, "replay_epoch_events", "6000"));
    cluster.ok(EDGY);
    let outputs = run_cluster(&[&cluster.graph, &cluster.graph], cluster.dir.path(), &replay);
    assert_all_succeeded(&outputs);
    let stdout = String::from_utf8_lossy(&outputs[1].stdout);
    assert!(stdout.contains("bytes sent to the other processes"), "{stdout}");
    // Each process read its share of the raw files.
    let read = |output: &Output| -> u64 {
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        text.split(" events in ").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(read(&outputs[0]) > 0 && read(&outputs[1]) > 0, "{outputs:?}");
    assert_eq!(read(&outputs[0]) + read(&outputs[1]), 24_000);
    assert_same_tables(&cluster, &single);
    // Both processes ran the graph's checks and the plugins on their share.
    let history = cluster.ok(&["history", "curated"]).stdout;
    assert!(history.contains("overwrite"), "{history}");
}

#[test]
fn a_process_started_with_another_graph_is_refused_at_start_with_one_line() {
    let lake = Lake::with_full_graph(|text| text);
    lake.ok(EDGY);
    let other = lake.dir.path().join("other.toml");
    let text = std::fs::read_to_string(&lake.graph).unwrap();
    std::fs::write(&other, set_line(text, "lateness", "\"6d\"")).unwrap();
    let started = Instant::now();
    let outputs = run_cluster(&[&lake.graph, &other], lake.dir.path(), &["--mode", "replay", "--from", "2025-05-01", "--no-progress", "-w", "1"]);
    assert!(started.elapsed() < Duration::from_secs(25), "the refusal took {:?}", started.elapsed());
    for output in &outputs {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.contains("runs a different graph file"), "{stderr}");
    }
    // Nothing was committed.
    assert_eq!(lake.snapshot_count("curated.movie_ratings"), 0);
}

#[test]
fn a_stream_on_two_processes_writes_the_tables_one_process_writes() {
    let mut s = Scenario::new(4);
    s.produce(12_000, 5, "2025-05-01", 7, READER);
    let args = stream_args(&["-w", "2"]);
    let outputs = run_cluster(&[&s.lake.graph, &s.lake.graph], s.lake.dir.path(), &args);
    assert_all_succeeded(&outputs);
    assert_matches_oracle(&s.lake, &s.oracle());
    s.assert_raw_complete();
    // The same topic through one process into another lake.
    let single = Lake::for_stream(&s.topic, &s.registry.url());
    single.ok(&stream_args(&["-w", "2"]));
    assert_same_tables(&s.lake, &single);
}

#[test]
fn a_killed_process_stops_the_others_and_a_restarted_cluster_completes_exactly_once() {
    let mut s = Scenario::new(4);
    // Small epochs: a backlog takes many commits, and the kill lands between two of them.
    let graph = std::fs::read_to_string(&s.lake.graph).unwrap();
    std::fs::write(&s.lake.graph, set_line(graph, "stream_epoch_events", "3000")).unwrap();
    let args = stream_args(&["-w", "1", "--commit-interval", "300ms"]);
    let curated = |s: &Scenario| s.lake.snapshot_count("curated.movie_ratings");
    // Round 0 kills the committer's process, round 1 the other, each after a commit.
    for victim in [0usize, 1] {
        s.produce(30_000, 5, &format!("2025-05-{:02}", 1 + 5 * victim), 11 + victim as u64, READER);
        let hosts = hostfile(s.lake.dir.path(), 2);
        let before = curated(&s);
        let mut children: Vec<Child> = (0..2).map(|p| start(&s.lake.graph, &hosts, 2, p, &args)).collect();
        wait_until("a commit of the cluster", Duration::from_secs(120), || {
            if let Some(ended) = children.iter_mut().position(|child| child.try_wait().unwrap().is_some()) {
                let output = children.remove(ended).wait_with_output().unwrap();
                panic!("process {ended} ended before any commit:\n{}", String::from_utf8_lossy(&output.stderr));
            }
            curated(&s) > before
        });
        std::thread::sleep(Duration::from_millis(150 + 350 * victim as u64));
        children[victim].kill().unwrap();
        let survivor = children.remove(1 - victim);
        let killed_at = Instant::now();
        let output = survivor.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(killed_at.elapsed() < Duration::from_secs(20), "the survivor took {:?} to stop", killed_at.elapsed());
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains("cluster:"), "{stderr}");
        children[0].wait().unwrap();
    }
    // The kills landed mid-stream: records were left for the restart.
    assert!(s.lake.raw_events().len() < s.produced, "the kills landed after everything was committed");
    // The whole cluster again: it resumes from the tables and ends with every record once.
    let outputs = run_cluster(&[&s.lake.graph, &s.lake.graph], s.lake.dir.path(), &stream_args(&["-w", "1"]));
    assert_all_succeeded(&outputs);
    assert_matches_oracle(&s.lake, &s.oracle());
    s.assert_raw_complete();
}
