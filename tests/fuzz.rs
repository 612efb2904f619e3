//! Fuzzing what comes from outside: Kafka record values (mutated Confluent frames and hostile Avro
//! bodies) through the stream's decoder against the real registry process, graph files through
//! the graph loader, and `--where` arguments through its parser. Seeded and bounded
//! (`FUZZ_CASES`, `FUZZ_SEED`), so `make test` runs it on stable Rust: never a panic, never an
//! allocation blow-up, every unreadable record refused with a reason and its bytes kept.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use apache_avro::Schema;
use operators::generate::{GenerateSettings, Generator};
use operators::model::RejectReason;
use operators::produce::encode_event;
use operators::source::kafka::columns::{Coordinates, RawColumns};
use operators::source::kafka::confluent::{Backoff, Decoder, frame};
use operators::source::kafka::registry::RegistryClient;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ratings_tests::kafka::Registry;
use ratings_tests::{GRAPH_TEMPLATE, Lake, READER_SCHEMA, workspace_root};

/// Counts the largest single allocation, so a hostile length that makes the decoder reserve
/// gigabytes fails the test even where the memory is never touched.
struct LargestAllocation;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Avro's zig-zag varint of `n`.
fn varint(n: i64) -> Vec<u8> {
    let mut value = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A body whose first string (`event_id`) declares `length` bytes, followed by `tail`.
fn declared_string(length: i64, tail: &[u8]) -> Vec<u8> {
    let mut body = varint(length);
    body.extend_from_slice(tail);
    body
}

/// One mutation of a valid frame, chosen by `rng`.
fn mutate(rng: &mut ChaCha8Rng, valid: &[u8], schema_id: u32) -> (&'static str, Vec<u8>) {
    let mut bytes = valid.to_vec();
    match rng.random_range(0..9) {
        0 => {
            for _ in 0..rng.random_range(1..=4) {
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << rng.random_range(0..8);
            }
            ("bit flips", bytes)
        }
        1 => {
            bytes.truncate(rng.random_range(0..bytes.len()));
            ("truncation", bytes)
        }
        2 => {
            let extra: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            bytes.extend(extra);
            ("trailing garbage", bytes)
        }
        3 => {
            // Ids the registry does not know (and a few it does not either: 0, huge).
            let id = [0, 2, 3, 17, 999, u32::MAX][rng.random_range(0..6)];
            bytes[1..5].copy_from_slice(&id.to_be_bytes());
            ("wrong schema id", bytes)
        }
        4 => {
            let length = [-1, -5, i64::MIN, 1 << 31, 3_000_000_000, 400 << 20, 100 << 20, i64::MAX][rng.random_range(0..8)];
            ("hostile string length", frame(schema_id, &declared_string(length, &bytes[5..])))
        }
        5 => {
            // A varint that never ends, or longer than ten bytes.
            let run = rng.random_range(5..40);
            let mut body = vec![0xff; run];
            body.extend_from_slice(&bytes[5..]);
            ("endless varint", frame(schema_id, &body))
        }
        6 => {
            // A valid event_id, then a hostile length in a later field.
            let body = &bytes[5..];
            let first = 1 + usize::from(body[0] >> 1);
            let mut hostile = body[..first.min(body.len())].to_vec();
            hostile.extend(varint([-3, 2_000_000_000, 600 << 20][rng.random_range(0..3)]));
            ("hostile later length", frame(schema_id, &hostile))
        }
        7 => {
            let random: Vec<u8> = (0..rng.random_range(0..80)).map(|_| rng.random()).collect();
            ("random bytes", random)
        }
        _ => {
            // Valid header and a body of random bytes.
            let random: Vec<u8> = (0..rng.random_range(0..80)).map(|_| rng.random()).collect();
            ("random body", frame(schema_id, &random))
        }
    }
}

#[test]
fn mutated_and_hostile_frames_are_refused_with_a_reason_and_their_bytes_never_a_panic() {
    let cases: usize = env_or("FUZZ_CASES", 100_000);
    let seed: u64 = env_or("FUZZ_SEED", 1);
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client = RegistryClient::new(&registry.url(), Duration::from_secs(5)).unwrap();
    let reader = Schema::parse_str(READER_SCHEMA).unwrap();
    let schema_id = runtime.block_on(client.register("fuzz-value", READER_SCHEMA)).unwrap();
    let mut decoder = Decoder::new(reader.clone(), client, runtime.handle().clone(), Backoff::default(), Arc::new(AtomicBool::new(false)), Box::new(|| {}));

    let mut generator = Generator::new(GenerateSettings { events: 2_000, days: 1, ..GenerateSettings::realistic(20_000) });
    let valid: Vec<Vec<u8>> =
        generator.next_day().unwrap().1.iter().map(|event| frame(schema_id, &encode_event(&reader, event).unwrap())).collect();
    let graph = runtime::graph::Graph::load(&workspace_root().join("graphs/ratings.toml")).unwrap();
    let raw_schema = operators::schema::arrow_schema(&graph.pipeline.raw_layout().unwrap().schema).unwrap();
    let mut columns = RawColumns::new(&raw_schema, 1024).unwrap();
    let at = Coordinates { topic: "fuzz", partition: 0, offset: 0, ingestion_ts_ms: 0 };
    for frame in &valid {
        assert!(matches!(decoder.decode(frame, &mut columns, at), Ok(Ok(()))), "a valid frame is read");
    }
    assert_eq!(columns.finish().unwrap().num_rows(), valid.len());
    LARGEST.store(0, Ordering::Relaxed);

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut outcomes: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for case in 0..cases {
        let (kind, bytes) = mutate(&mut rng, &valid[case % valid.len()], schema_id);
        if case % 1000 == 0 {
            // Whatever was read, the columns make a batch of the raw table's schema.
            columns.finish().unwrap_or_else(|error| panic!("case {case}: the columns do not make a batch: {error}"));
        }
        let decoded = catch_unwind(AssertUnwindSafe(|| decoder.decode(&bytes, &mut columns, at)))
            .unwrap_or_else(|_| panic!("case {case} ({kind}) panicked the decoder: {bytes:?}"))
            .unwrap_or_else(|error| panic!("case {case} ({kind}): {error}"));
        let outcome = match decoded {
            Ok(_) => "read",
            Err(refused) => {
                assert_eq!(refused.payload, bytes, "case {case} ({kind}): the bytes are kept as they came");
                assert!(!refused.detail.is_empty());
                let outcome = match refused.reason {
                    RejectReason::BadFraming => "bad_framing",
                    RejectReason::UnknownSchemaId => "unknown_schema_id",
                    RejectReason::UndecodableBody => "undecodable_body",
                    RejectReason::IncompatibleSchema => "incompatible_schema",
                    other => panic!("case {case} ({kind}): refused as {other:?}"),
                };
                // As the stream does; a body the decoder gave up on halfway left nothing behind,
                // or the columns would no longer make a batch.
                columns.append_undecodable(refused, at);
                outcome
            }
        };
        *outcomes.entry((kind, outcome)).or_default() += 1;
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    println!("fuzz: {cases} mutated frames (seed {seed}), largest single allocation {largest} bytes; outcomes {outcomes:?}");
    assert!(largest <= operators::source::kafka::confluent::MAX_AVRO_ALLOCATION, "a hostile frame made the decoder allocate {largest} bytes");
    for kind in ["hostile string length", "endless varint", "hostile later length", "wrong schema id"] {
        assert!(outcomes.keys().any(|(k, o)| *k == kind && *o != "read"), "no {kind} case was refused");
    }
}

/// One random edit of a text: a byte changed, a line dropped or doubled, a value swapped for
/// another type, a cut.
fn mutate_text(rng: &mut ChaCha8Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match rng.random_range(0..6) {
        0 => {
            let mut bytes = text.as_bytes().to_vec();
            let at = rng.random_range(0..bytes.len());
            bytes[at] = [b'"', b'[', b']', b'=', b'\n', b'{', b'0', b'-', b'x', 0xff][rng.random_range(0..10)];
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        1 => {
            let at = rng.random_range(0..lines.len());
            lines.remove(at);
        }
        2 => {
            let at = rng.random_range(0..lines.len());
            let line = lines[at].clone();
            lines.insert(at, line);
        }
        3 => {
            let at = rng.random_range(0..lines.len());
            if let Some((key, _)) = lines[at].split_once('=') {
                let value = ["-1", "0", "\"\"", "1e309", "\"-5d\"", "[]", "{}", "true", "\"0s\"", "18446744073709551616", "\"../../etc\""]
                    [rng.random_range(0..11)];
                lines[at] = format!("{key}= {value}");
            }
        }
        4 => {
            let cut = rng.random_range(0..text.len());
            return text.get(..cut).unwrap_or(text).to_string();
        }
        _ => {
            let at = rng.random_range(0..lines.len());
            lines.insert(at, ["[unknown]", "x = 1", "[[checks.curated]]", "[rules]", "kind = \"batch\""][rng.random_range(0..5)].to_string());
        }
    }
    lines.join("\n")
}

#[test]
fn mutated_graph_files_load_or_fail_with_an_error_never_a_panic() {
    let cases: usize = env_or("FUZZ_GRAPH_CASES", 2_000);
    let mut rng = ChaCha8Rng::seed_from_u64(env_or("FUZZ_SEED", 1));
    // A folder like graphs/: the schema and blocklist the graph names resolve beside it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    std::fs::create_dir_all(dir.path().join("blocklists")).unwrap();
    std::fs::write(dir.path().join("schemas/movie_rating.avsc"), READER_SCHEMA).unwrap();
    std::fs::copy(workspace_root().join("graphs/schemas/movie_rating_film.avsc"), dir.path().join("schemas/movie_rating_film.avsc")).unwrap();
    std::fs::copy(workspace_root().join("graphs/blocklists/users.txt"), dir.path().join("blocklists/users.txt")).unwrap();
    let movies = std::fs::read_to_string(workspace_root().join("graphs/movies.toml")).unwrap();
    let path = dir.path().join("graph.toml");
    let (mut loaded, mut refused) = (0, 0);
    for case in 0..cases {
        let template = if case % 4 == 3 { movies.as_str() } else { GRAPH_TEMPLATE };
        let mut text = mutate_text(&mut rng, template);
        if rng.random_bool(0.3) {
            text = mutate_text(&mut rng, &text);
        }
        std::fs::write(&path, &text).unwrap();
        let outcome = catch_unwind(|| runtime::graph::Graph::load(&path).map(|_| ()).map_err(|e| e.to_string()))
        .unwrap_or_else(|_| panic!("case {case}: loading this graph panicked:\n{text}"));
        match outcome {
            Ok(()) => loaded += 1,
            Err(message) => {
                assert!(!message.trim().is_empty(), "case {case}: an empty error");
                refused += 1;
            }
        }
    }
    println!("fuzz: {cases} mutated graph files: {loaded} loaded, {refused} refused with an error, 0 panics");
    assert!(refused > cases / 4, "the mutations were too mild to test anything");
}

#[test]
fn random_where_arguments_are_parsed_or_refused_never_a_panic() {
    let lake = Lake::new();
    let mut rng = ChaCha8Rng::seed_from_u64(env_or("FUZZ_SEED", 1));
    let pieces = [
        "rating_date", "event_id", "rating", "user_id", "is_approved", "rating_timestamp", "source_partition", "payload",
        "nope", "=", "==", " ", "2025-05-01", "2025-13-40", "-1", "9223372036854775808", "NaN", "inf", "true", "ü", "\0", "'",
        "\"", "1e40", "",
    ];
    let tables = ["curated.movie_ratings", "raw.movie_ratings_raw", "curated.movie_ratings_rejected"].map(|t| lake.table(t));
    let (mut parsed, mut refused) = (0, 0);
    for case in 0..5_000 {
        let text: String = (0..rng.random_range(0..5)).map(|_| pieces[rng.random_range(0..pieces.len())]).collect();
        let table = &tables[case % 3];
        match catch_unwind(AssertUnwindSafe(|| runtime::inspect::parse_where(table, &text)))
            .unwrap_or_else(|_| panic!("--where {text:?} panicked"))
        {
            Ok(_) => parsed += 1,
            Err(error) => {
                assert!(error.to_string().contains("--where"), "{error}");
                refused += 1;
            }
        }
    }
    println!("fuzz: 5000 --where arguments: {parsed} parsed, {refused} refused, 0 panics");
    assert!(parsed > 0 && refused > 0);
}
