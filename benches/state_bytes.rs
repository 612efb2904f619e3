//! Bytes per live key of the engine's per-key state, measured with a counting allocator (not
//! estimated from struct sizes):
//! - the upsert: its arrangement of [`Slot`]s, a spine per live partition day;
//! - the curated writer: where each live key's row sits (its files' sorted keys, a live flag each).
//!
//! `EPOCHS` epochs of `KEYS_PER_EPOCH` new keys each (days spread over ten, none frozen) go
//! through the upsert operator on one timely worker. After each epoch, once the arrangement has
//! no merge left to do (a day's spine finishes a merge it began between epochs), the bench prints
//! the heap the state holds per live key, and the peak heap during the epoch (the epoch's own
//! candidates, sorted copy and the spines' merges included).
//!
//!     cargo bench -p ratings-benches --bench state_bytes   (make bench-state)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use operators::model::{IngestPosition, Origin};
use operators::records::{Candidates, Slot};
use operators::sink::Failure;
use operators::sink::row_index::RowIndex;
use operators::upsert::{UpsertCounters, UpsertInput, upsert};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use timely::dataflow::InputHandle;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::probe::Handle as ProbeHandle;

/// The runtime's allocator, counting the bytes live on it.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const KEYS_PER_EPOCH: usize = 2_000_000;
const EPOCHS: u64 = 3;
const START_DAY: i32 = 20_209; // 2025-05-01

fn main() {
    let counters = Arc::new(UpsertCounters::default());
    let held = counters.clone();
    timely::execute_directly(move |worker| {
        let probe = ProbeHandle::new();
        let mut input = InputHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            // No seeds: no row is ever fingerprinted (its one column would be).
            upsert(input.to_stream(scope), 5, 1, |_| None, counters.clone(), Failure::default()).probe_with(&probe);
        });
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let schema = Arc::new(Schema::new(vec![Field::new("source_offset", DataType::Int64, false)]));
        let baseline = LIVE.load(Relaxed);
        println!("upsert state, {KEYS_PER_EPOCH} new keys per epoch, one worker");
        println!("{:>6} {:>11} {:>14} {:>16}", "epoch", "live keys", "bytes/key", "peak MB in epoch");
        let mut offset = 0i64;
        for epoch in 1..=EPOCHS {
            let keys: Vec<u128> = (0..KEYS_PER_EPOCH).map(|_| rng.random()).collect();
            let slots: Vec<Slot> = keys
                .iter()
                .map(|_| {
                    offset += 1;
                    let day = START_DAY + rng.random_range(0..10);
                    Slot {
                        position: IngestPosition { ingestion_ts_ms: i64::from(day) * 86_400_000, partition: 0, offset },
                        origin: Origin::Input,
                        order: rng.random(),
                        day,
                        fingerprint: rng.random(),
                    }
                })
                .collect();
            let rows = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(slots.iter().map(|s| s.position.offset)))]).unwrap();
            let ingested = RecordBatch::try_new_with_options(
                Arc::new(Schema::empty()),
                Vec::new(),
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(keys.len())),
            )
            .unwrap();
            PEAK.store(LIVE.load(Relaxed), Relaxed);
            input.send(UpsertInput::Rows { owner: 0, candidates: Candidates::new(rows, ingested, keys, slots) });
            input.advance_to(epoch + 1);
            worker.step_while(|| probe.less_than(input.time()));
            // Let the spine finish its merges: the state, not a merge in flight, is measured.
            for _ in 0..1_000 {
                worker.step();
            }
            let keys = held.held.load(Relaxed);
            let bytes = LIVE.load(Relaxed) - baseline;
            println!("{epoch:>6} {keys:>11} {:>14.1} {:>16.0}", bytes as f64 / keys as f64, (PEAK.load(Relaxed) - baseline) as f64 / 1e6);
        }
    });

    // The curated writer's index of live rows: per partition, each written file's keys in order.
    let keys = KEYS_PER_EPOCH * EPOCHS as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let before = LIVE.load(Relaxed);
    let mut partitions: Vec<RowIndex> = (0..10).map(|_| RowIndex::default()).collect();
    for (file, partition) in (0..EPOCHS as u32 * 10).zip((0..10).cycle()) {
        let mut written: Vec<u128> = (0..keys / (EPOCHS as usize * 10)).map(|_| rng.random()).collect();
        written.sort_unstable();
        partitions[partition].add_written(file, written);
    }
    println!("curated writer: {keys} live keys in 10 partitions, {:.1} bytes/key", (LIVE.load(Relaxed) - before) as f64 / keys as f64);
}
