use std::process::ExitCode;

// Timely and differential allocate and free many large, short-lived batches. mimalloc (built
// without transparent huge pages, `no_thp`) reuses them instead of having the kernel zero fresh
// 2 MiB pages for every epoch; see benches/README.md for the measurements.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    runtime::cli::main()
}
