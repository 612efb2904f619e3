//! `-n/-p/-h`: one pipeline over several processes on this machine (loopback). Tables equal a
//! single process's on the same input, row for row in every column; a process started with
//! another graph is refused at start; a killed process stops the others, and a restarted
//! cluster completes the tables exactly once.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
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

/// A process of a cluster, its stdout and stderr going to files (a pipe nobody reads while the
/// test waits for the other processes could fill up and stall it).
struct Process {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    fn ended(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    fn finish(mut self) -> Output {
        let status = self.child.wait().unwrap();
        Output { status, stdout: std::fs::read(&self.stdout).unwrap(), stderr: std::fs::read(&self.stderr).unwrap() }
    }
}

/// Starts process `process` of `processes` on `graph` with `args`.
fn start(graph: &Path, hosts: &Path, processes: usize, process: usize, args: &[&str]) -> Process {
    let (n, p) = (processes.to_string(), process.to_string());
    let mut cluster = vec!["-n", &n, "-p", &p, "-h", hosts.to_str().unwrap(), "--cluster-wait", "30s"];
    cluster.extend_from_slice(args);
    let dir = hosts.parent().unwrap();
    let (stdout, stderr) = (dir.join(format!("p{process}-{}.out", rand::random::<u32>())), dir.join(format!("p{process}-{}.err", rand::random::<u32>())));
    let child = Lake::command_for(graph, &cluster)
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("spawn runtime");
    Process { child, stdout, stderr }
}

/// Runs every process of a cluster to its end; fails the test if they are not done in 3 minutes.
fn run_cluster(graphs: &[&Path], dir: &Path, args: &[&str]) -> Vec<Output> {
    let hosts = hostfile(dir, graphs.len());
    let mut processes: Vec<Process> = graphs.iter().enumerate().map(|(p, graph)| start(graph, &hosts, graphs.len(), p, args)).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !processes.iter_mut().all(Process::ended) {
        if Instant::now() > deadline {
            let logs: Vec<String> = processes
                .into_iter()
                .map(|mut process| {
                    let _ = process.child.kill();
                    String::from_utf8_lossy(&process.finish().stderr).into_owned()
                })
                .collect();
            panic!("the cluster did not finish in 3 minutes:\n{}", logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    processes.into_iter().map(Process::finish).collect()
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
    // Rows meet the plugins where they are read: the blocklist's rejections, equal to one
    // process's, came from both processes' shares. The committer judged every epoch's checks
    // on the evaluations of both.
    let refused = cluster.rejected().iter().filter(|r| r.2 == "rule_rejected").count();
    assert!(refused > 0, "the blocklist plugin refused nothing");
    let committer = String::from_utf8_lossy(&outputs[0].stdout);
    assert!(committer.contains("epochs judged before commit; failed: none"), "{committer}");
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
        let mut processes: Vec<Process> = (0..2).map(|p| start(&s.lake.graph, &hosts, 2, p, &args)).collect();
        wait_until("a commit of the cluster", Duration::from_secs(120), || {
            if let Some(ended) = processes.iter_mut().position(Process::ended) {
                let output = processes.remove(ended).finish();
                panic!("process {ended} ended before any commit:\n{}", String::from_utf8_lossy(&output.stderr));
            }
            curated(&s) > before
        });
        // A random instant within the next epochs.
        let delay = Duration::from_millis(rand::random_range(0..1_000));
        eprintln!("killing process {victim} {delay:?} after a commit");
        std::thread::sleep(delay);
        processes[victim].child.kill().unwrap();
        let killed_at = Instant::now();
        let mut survivor = processes.remove(1 - victim);
        wait_until("the survivor stops", Duration::from_secs(20), || survivor.ended());
        eprintln!("the survivor stopped {:?} after the kill", killed_at.elapsed());
        let output = survivor.finish();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.contains("cluster: lost the connection to another process"), "{stderr}");
        processes.remove(0).finish();
    }
    // The kills landed mid-stream: records were left for the restart.
    assert!(s.lake.raw_events().len() < s.produced, "the kills landed after everything was committed");
    // The whole cluster again: it resumes from the tables and ends with every record once.
    let outputs = run_cluster(&[&s.lake.graph, &s.lake.graph], s.lake.dir.path(), &stream_args(&["-w", "1"]));
    assert_all_succeeded(&outputs);
    assert_matches_oracle(&s.lake, &s.oracle());
    s.assert_raw_complete();
}
