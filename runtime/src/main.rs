use std::process::ExitCode;

// Timely and differential allocate and free many short-lived batches; mimalloc keeps them off
// the page-fault path that glibc's allocator hits for large buffers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    runtime::cli::main()
}
