use std::process::ExitCode;

use clap::Parser;
use runtime::cli::Cli;

// The engine runs on the system allocator (glibc's malloc on Linux). mimalloc v3, which it ran on
// before with a purge delay tuned per mode, cost more on the columnar engine in alternated runs on
// the 2-core VM of 2026-12-03: a 10M-event replay took ~12% more CPU and ~100 MB more resident
// memory, a 2M-record stream ~3% more CPU and ~120 MB more (benches/README.md, "The system
// allocator"). The engine's large, short-lived buffers are columns and Parquet pages now; glibc
// maps the largest and raises its mapping threshold to the sizes it sees freed, so the rest are
// reused from its heap.
fn main() -> ExitCode {
    let cli = Cli::parse();
    operators::source::kafka::confluent::bound_avro_allocations();
    runtime::cli::main(cli)
}
