use std::process::ExitCode;

use clap::Parser;
use runtime::cli::{Cli, Mode};

// Timely and differential allocate and free many large, short-lived batches. mimalloc (built
// without transparent huge pages, `no_thp`) reuses them instead of having the kernel zero fresh
// 2 MiB pages for every epoch; see benches/README.md for the measurements.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long memory the engine freed stays with mimalloc before it goes back to the OS, by mode.
/// mimalloc's default (10 ms) returns an epoch's buffers between two of its own steps, and every
/// reuse then has the kernel zero fresh pages: a third of a stream run's CPU time was system time.
/// - The stream keeps freed memory 5 s, so buffers are reused within and across its epochs (a
///   backlog's epochs are ~2 s apart) and an idle engine still gives memory back. Against 10 ms:
///   1M records 144k → ~205k records/s, system time 3.4 s → 1.2 s; 1 s cost ~10% more CPU than
///   2 s; 2 s still returned memory between back-to-back epochs: 4M records, 5 alternated pairs,
///   2 s gave 424–455k page faults and 11.3–13.3 CPU-s, 5 s 320–350k and 10.5–12.9 CPU-s, for
///   40–130 MB more peak resident memory (10 s: no fewer faults than 5 s).
/// - The replay keeps it 2 s: its epochs are seconds long, so freed memory is reused within and
///   across them. It kept 0.5 s while the 2 GB goal of a 10M replay bound (10M events,
///   alternated: 2 s gave max RSS 2050–2142 MiB; 1 s 1935–1989 MiB; 0.5 s 1828–1889 MiB, wall about
///   3% longer). Since the upsert's arrangement is cut by partition day, the same replay peaks at
///   ~1.3–1.4 GB: 2 s took 7.32 s at 1407 MiB against 0.5 s's 7.67 s at 1339 MiB in one
///   `make bench-peers` session, and 8.1 s against 8.8 s (means of 3 pairs) on 12M events.
///
/// Figures in benches/README.md. `MIMALLOC_PURGE_DELAY` in the environment overrides both.
fn purge_delay_ms(mode: Option<Mode>) -> std::ffi::c_long {
    match mode {
        Some(Mode::Replay) => 2000,
        Some(Mode::Stream) | None => 5000,
    }
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called before any other thread exists (the function is not thread safe);
        // parsing the command line starts none.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, purge_delay_ms(cli.run.mode)) };
    }
    operators::source::kafka::confluent::bound_avro_allocations();
    runtime::cli::main(cli)
}
