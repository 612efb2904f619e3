//! Benchmarks live in `replay.rs` (criterion) and `replay_10m.sh` (whole process); see README.md.
