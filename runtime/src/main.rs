use std::process::ExitCode;

// Timely and differential allocate and free many large, short-lived batches. mimalloc (built
// without transparent huge pages, `no_thp`) reuses them instead of having the kernel zero fresh
// 2 MiB pages for every epoch; see benches/README.md for the measurements.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long memory the engine freed stays with mimalloc before it goes back to the OS. mimalloc's
/// default (10 ms) returns an epoch's buffers between two of its own steps, and every reuse then
/// has the kernel zero fresh pages: a third of a stream run's CPU time was system time. With two
/// seconds the buffers are reused within and across short epochs, and an idle engine still gives
/// its memory back (1M records through `--mode stream`: 144k → ~205k records/s, system time
/// 3.4 s → 1.2 s; benches/README.md). `MIMALLOC_PURGE_DELAY` in the environment overrides it.
const PURGE_DELAY_MS: std::ffi::c_long = 2000;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called before any other thread exists (the function is not thread safe).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    operators::source::kafka::confluent::bound_avro_allocations();
    runtime::cli::main()
}
