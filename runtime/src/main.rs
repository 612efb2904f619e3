use std::process::ExitCode;

use clap::Parser;
use runtime::cli::Cli;

// The engine runs on the system allocator (glibc's malloc on Linux). mimalloc v3, which it ran on
// before with a purge delay tuned per mode, cost more on the columnar engine in alternated runs on
// the 2-core VM of 2026-12-03: 13 pairs of 10M-event replays, median 1.9 CPU-s (~12%) more and
// 100–150 MB more resident memory; 13 pairs of 2M-record streams, median 0.17 CPU-s (~3.5%) more
// and ~100 MB more (benches/README.md, "The system allocator"). The engine's large, short-lived
// buffers are columns and Parquet pages now: glibc serves the largest from fresh mappings and
// raises its mapping threshold to the sizes it sees freed, so later epochs' buffers of those sizes
// come from its heap and reuse its pages.
fn main() -> ExitCode {
    let cli = Cli::parse();
    operators::source::kafka::confluent::bound_avro_allocations();
    runtime::cli::main(cli)
}
