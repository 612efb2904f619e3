//! The whole-pipeline tests that can share one process, one module per area. They are one test
//! binary rather than eleven because each binary links the whole engine (~130 MB unoptimised):
//! eleven of them cost ~1.4 GB of disk and eleven links on every clean `make test`.
//!
//! Kept apart in their own binaries: `chaos` (it pauses the shared broker), `fuzz` (it installs a
//! counting global allocator) and `plugin_memory` (it reads the process's allocated bytes, which
//! another test allocating meanwhile would move).

mod bad_input;
mod checks;
mod cluster;
mod external_readers;
mod fetch;
mod maintenance;
mod movies;
mod object_storage;
mod pipeline;
mod plugins;
mod rest_catalog;
mod stream;
mod third_schema;
