//! The reliability campaign against the real broker, registry and catalog: SIGKILL at seeded
//! random instants while a producer keeps sending, a broker paused mid-stream, a catalog another
//! process holds locked, a warehouse whose disk fills mid-epoch. Each ends, after a plain restart
//! where the fault stopped the engine, with raw holding every record exactly once and curated and
//! rejected equal to the oracle (and, for the kills, to an uninterrupted run of the same topic).
//!
//! `make test` runs a short seeded kill schedule; `make chaos` the long one
//! (`CHAOS_KILLS`, `CHAOS_SEED`, `CHAOS_BROKER_PAUSE`) and prints the figures
//! (lines starting `chaos:`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ratings_tests::kafka::{repo_root, schema};
use ratings_tests::scenario::{MIX, READER, Scenario, stream_args, wait_until};
use ratings_tests::{Lake, assert_matches_oracle, python_json};

/// The tests here share the one broker and pause it: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a pid this test started (or the project's broker).
    let status = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(status, 0, "kill({pid}, {signal})");
}

/// Failpoints that stretch each step of a commit (files written, pointer swapped, the next table).
const SLOW_COMMITS: &str = "commit-before-swap=sleep(150);stream-after-raw-commit=sleep(150);stream-after-rejected-commit=sleep(150)";

/// A stream run logging at info into `log`.
fn spawn_stream(s: &Scenario, extra: &[&str], log: &Path, failpoints: Option<&str>) -> Child {
    let file = std::fs::File::create(log).unwrap();
    let mut command = s.lake.command(&stream_args(extra));
    if let Some(failpoints) = failpoints {
        command.env("FAILPOINTS", failpoints);
    }
    command.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(file).spawn().expect("spawn runtime")
}

/// `runtime produce` of `count` records of the mix, as a command a thread can run.
fn produce_command(s: &Scenario, count: usize, start: &str, seed: u64, rate: u32) -> Command {
    let writer = repo_root().join(READER).display().to_string();
    let (count, seed, rate) = (count.to_string(), seed.to_string(), rate.to_string());
    let mut args = vec!["produce", "--count", &count, "--days", "2", "--start", start, "--seed", &seed, "--rate", &rate];
    args.extend_from_slice(MIX);
    args.extend(["--writer-schema", &writer]);
    s.lake.command(&args)
}

fn offsets(lake: &Lake, table: &str, topic: &str) -> BTreeMap<i32, i64> {
    operators::source::kafka::committed_offsets(&lake.table(table), topic).unwrap()
}

/// Raw rows against records produced: (lost, duplicated).
fn lost_and_duplicated(s: &Scenario) -> (usize, usize) {
    let raw = s.lake.raw_events();
    let distinct: BTreeSet<(i32, i64)> = raw.iter().map(|e| (e.source_partition, e.source_offset)).collect();
    (s.produced.saturating_sub(distinct.len()), raw.len() - distinct.len())
}

#[test]
fn sigkill_at_seeded_random_instants_while_a_producer_sends_loses_and_duplicates_nothing() {
    let _serial = serial();
    let kills: usize = env_or("CHAOS_KILLS", 8);
    let seed: u64 = env_or("CHAOS_SEED", 2026);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut s = Scenario::new(4);
    // The producer sends a batch per kill at a bounded rate: it keeps sending while the kills go
    // on. Each batch covers the two days after the previous one, so Kafka timestamps only grow.
    let batches = kills.max(2);
    let first_day = operators::model::parse_date("2025-05-01").unwrap();
    let producers: Vec<Command> = (0..batches)
        .map(|batch| {
            let start = operators::model::format_date(first_day + 2 * batch as i32);
            produce_command(&s, 2_000, &start, 500 + batch as u64, 1_000)
        })
        .collect();
    let producer = std::thread::spawn(move || {
        producers.into_iter().map(|mut command| command.output().expect("produce runs")).collect::<Vec<_>>()
    });
    let logs = tempfile::tempdir().unwrap();
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    for kill in 0..kills {
        let log = logs.path().join(format!("run-{kill}.log"));
        // Every other run (by the seed) has slow commits, so more kills land inside one.
        let slow_commits = rng.random_bool(0.5).then_some(SLOW_COMMITS);
        let mut child = spawn_stream(&s, &["-w", "2", "--commit-interval", "300ms", "--stop-when-idle", "10m"], &log, slow_commits);
        std::thread::sleep(Duration::from_millis(rng.random_range(50..3_000)));
        signal(child.id(), libc::SIGKILL);
        child.wait().unwrap();
        // Where the kill hit, as far as the tables and the log tell (nothing moves after it).
        let logged = std::fs::read_to_string(&log).unwrap();
        let phase = if !logged.contains("starting stream") {
            "start-up"
        } else if offsets(&s.lake, "raw.movie_ratings_raw", &s.topic) != offsets(&s.lake, "curated.movie_ratings", &s.topic) {
            "between an epoch's raw and curated commits"
        } else if slow_commits.is_some() {
            "reading or writing an epoch (slow commits)"
        } else {
            "reading or writing an epoch"
        };
        *phases.entry(phase).or_default() += 1;
        assert!(!logged.contains("panicked"), "run {kill} panicked:\n{logged}");
    }
    for output in producer.join().unwrap() {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let id: u32 = String::from_utf8_lossy(&output.stdout).split("schema id ").nth(1).and_then(|t| t.split(')').next()).unwrap().parse().unwrap();
        s.writers.insert(id, schema(READER));
        s.produced += 2_000;
    }
    // A plain restart finishes the job.
    s.stream(&["-w", "2"]);
    let (lost, duplicated) = lost_and_duplicated(&s);
    println!(
        "chaos: {kills} SIGKILLs (seed {seed}) in {:.0}s while {} records were produced; phases: {phases:?}; lost {lost}, duplicated {duplicated}",
        started.elapsed().as_secs_f64(),
        s.produced
    );
    assert_eq!((lost, duplicated), (0, 0));
    s.assert_raw_complete();
    assert_matches_oracle(&s.lake, &s.oracle());
    // The same topic through one uninterrupted run gives the same tables, every rejected column.
    let calm = Lake::for_stream(&s.topic, &s.registry.url());
    calm.ok(&stream_args(&["-w", "2"]));
    assert_eq!(calm.curated_rows(), s.lake.curated_rows());
    assert_eq!(
        calm.rejected_rows_of("curated.movie_ratings_rejected"),
        s.lake.rejected_rows_of("curated.movie_ratings_rejected")
    );
    assert_eq!(calm.raw_events().len(), s.lake.raw_events().len());
}

/// The broker `scripts/kafka.sh up` started, resumed when the test ends whatever happens.
struct PausedBroker(u32);

impl PausedBroker {
    fn pause() -> PausedBroker {
        let pid_file = repo_root().join(".kafka/broker.pid");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e} (the suite's broker is started by scripts/kafka.sh)", pid_file.display()))
            .trim()
            .parse()
            .unwrap();
        signal(pid, libc::SIGSTOP);
        PausedBroker(pid)
    }
}

impl Drop for PausedBroker {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

#[test]
fn a_broker_paused_mid_stream_makes_the_stream_wait_and_loses_nothing() {
    let _serial = serial();
    let pause = Duration::from_secs(env_or("CHAOS_BROKER_PAUSE", 20));
    let mut s = Scenario::new(3);
    s.produce(5_000, 2, "2025-05-01", 71, READER);
    let logs = tempfile::tempdir().unwrap();
    let mut child = spawn_stream(&s, &["-w", "2", "--stop-when-idle", "10m"], &logs.path().join("stream.log"), None);
    wait_until("the first records are committed", Duration::from_secs(60), || s.lake.raw_events().len() == 5_000);
    {
        let _paused = PausedBroker::pause();
        std::thread::sleep(pause);
        assert!(child.try_wait().unwrap().is_none(), "the stream gave up while the broker was paused");
    }
    let resumed = Instant::now();
    s.produce(5_000, 2, "2025-05-03", 72, READER);
    wait_until("the records sent after the pause are committed", Duration::from_secs(120), || {
        s.lake.raw_events().len() == 10_000
    });
    let caught_up = resumed.elapsed();
    signal(child.id(), libc::SIGTERM);
    assert!(child.wait().unwrap().success(), "{}", std::fs::read_to_string(logs.path().join("stream.log")).unwrap());
    let (lost, duplicated) = lost_and_duplicated(&s);
    println!(
        "chaos: broker paused {}s mid-stream; after SIGCONT the next 5000 records were produced and landed in {:.1}s; lost {lost}, duplicated {duplicated}",
        pause.as_secs(),
        caught_up.as_secs_f64()
    );
    s.assert_raw_complete();
    assert_matches_oracle(&s.lake, &s.oracle());
}

/// Another process holding the SQLite catalog locked (`BEGIN EXCLUSIVE`) for `hold`.
fn lock_catalog(database: &Path, hold: Duration) -> Child {
    let script = format!(
        "import sqlite3, time\nc = sqlite3.connect({:?}, isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\ntime.sleep({})\nc.execute('COMMIT')\n",
        database.display().to_string(),
        hold.as_secs_f64()
    );
    let mut child = Command::new(ratings_tests::python()).arg("-c").arg(script).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

#[test]
fn a_catalog_held_locked_by_another_process_delays_commits_and_loses_nothing() {
    let _serial = serial();
    let mut s = Scenario::new(2);
    s.produce(3_000, 2, "2025-05-01", 81, READER);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("stream.log");
    let mut child = spawn_stream(&s, &["-w", "2", "--commit-interval", "300ms", "--stop-when-idle", "10m"], &log, None);
    wait_until("the first records are committed", Duration::from_secs(60), || s.lake.raw_events().len() == 3_000);
    // Longer than SQLite's own busy wait of the catalog's connections.
    let hold = Duration::from_secs(12);
    let locker = lock_catalog(&s.lake.database(), hold);
    s.produce(3_000, 2, "2025-05-03", 82, READER);
    assert!(locker.wait_with_output().unwrap().status.success());
    wait_until("the records sent while the catalog was locked are committed", Duration::from_secs(90), || {
        s.lake.raw_events().len() == 6_000
    });
    signal(child.id(), libc::SIGTERM);
    let status = child.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{logged}");
    assert!(logged.contains("catalog is busy"), "the wait is logged:\n{logged}");
    s.assert_raw_complete();
    assert_matches_oracle(&s.lake, &s.oracle());
    println!("chaos: catalog locked {}s by another process during commits; lost 0, duplicated 0", hold.as_secs());
}

/// A small tmpfs mounted over a folder, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status().unwrap();
        assert!(status.success(), "mounting a tmpfs at {} (the test runs as root, as make test does in CI)", at.display());
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_run_with_a_clear_error_and_a_restart_completes() {
    let _serial = serial();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("chaos: disk-full test skipped: mounting a tmpfs needs root (make test in CI runs as root)");
        return;
    }
    let mut s = Scenario::new(2);
    // The warehouse moves onto a 24 MiB tmpfs, its tables with it.
    let warehouse = s.lake.dir.path().join("lake/warehouse");
    let saved = s.lake.dir.path().join("warehouse.saved");
    std::fs::rename(&warehouse, &saved).unwrap();
    std::fs::create_dir(&warehouse).unwrap();
    let _disk = SmallDisk::mount(&warehouse, "24m");
    assert!(Command::new("cp").arg("-a").arg(saved.join(".")).arg(&warehouse).status().unwrap().success());
    s.produce(4_000, 2, "2025-05-01", 91, READER);
    s.stream(&["-w", "2"]);
    let before = python_json(&s.lake, "check_tables.py", "curated.movie_ratings");
    // Fill the disk but for a little room: the next epoch's files do not fit.
    let filler = warehouse.join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", "bs=1M", "count=64"]).arg(format!("of={}", filler.display())).stderr(Stdio::null()).status();
    assert!(Command::new("truncate").args(["-s", "-200K"]).arg(&filler).status().unwrap().success());
    s.produce(30_000, 2, "2025-05-03", 92, READER);
    let run = s.lake.run(&stream_args(&["-w", "2"]));
    assert_eq!(run.status, 1, "a full disk is an external error:\n{}", run.stderr);
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error (external system error): ") && last.contains("No space left on device"), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    // What readers see is a whole snapshot: the one before the failed epoch (nothing of it is
    // visible) or, had its commit completed, one with all of it.
    let after = python_json(&s.lake, "check_tables.py", "curated.movie_ratings");
    assert_eq!(after["rows"], before["rows"], "a partial epoch is visible");
    // Space freed, a plain restart completes: nothing lost, every referenced file readable.
    std::fs::remove_file(&filler).unwrap();
    s.stream(&["-w", "2"]);
    s.assert_raw_complete();
    assert_matches_oracle(&s.lake, &s.oracle());
    let reread = python_json(&s.lake, "check_tables.py", "curated.movie_ratings");
    assert_eq!(reread["rows"].as_u64().unwrap() as usize, s.lake.curated_rows().len());
    println!("chaos: the warehouse's disk filled mid-epoch: the run stopped with one line, readers saw the last whole snapshot, a restart completed; lost 0, duplicated 0");
}
