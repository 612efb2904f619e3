//! Memory across the plugin boundary: 10k calls into each shipped plugin leave the process's
//! allocated bytes where they were. glibc's own counter (`mallinfo2`) sees both sides: the engine
//! and the plugins all allocate through malloc. Its own test binary, so no other test allocates
//! meanwhile.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float32Array, StringArray};
use operators::rules::plugin::{Plugin, PluginInstance, PluginSpec};
use ratings_tests::plugin_dir;

fn allocated_bytes() -> usize {
    unsafe { libc::mallinfo2() }.uordblks
}

fn instance(library: &str, config: serde_json::Value, base_dir: &std::path::Path) -> PluginInstance {
    let spec = PluginSpec { label: None, path: plugin_dir().join(library), config, base_dir: base_dir.to_path_buf() };
    PluginInstance::new(&Plugin::load(&spec).unwrap()).unwrap()
}

#[test]
fn ten_thousand_calls_leak_nothing_on_either_side() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.txt"), "u3\nu7\n").unwrap();
    let mut approval = instance("libratings_approval.so", serde_json::json!({}), dir.path());
    let mut blocklist = instance("libratings_blocklist.so", serde_json::json!({"users": "users.txt"}), dir.path());
    let rows = 1024;
    let ratings: ArrayRef = Arc::new(Float32Array::from_iter_values((0..rows).map(|i| (i % 101) as f32 / 10.0)));
    let users: ArrayRef = Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("u{}", i % 10))));
    let movies: ArrayRef = Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("m{i}"))));
    let mut call = || {
        let (outputs, verdicts) = approval.apply(vec![ratings.clone()], rows).unwrap();
        assert_eq!(outputs[0].len(), rows);
        assert!(verdicts.is_none());
        let (outputs, verdicts) = blocklist.apply(vec![users.clone(), movies.clone()], rows).unwrap();
        assert!(outputs.is_empty());
        let verdicts = verdicts.unwrap();
        assert_eq!((verdicts.len(), verdicts.len() - verdicts.null_count()), (rows, 205), "u3 and u7 are blocked");
    };
    // Warm up: first calls fill caches and thread-local pools on both sides.
    for _ in 0..100 {
        call();
    }
    let before = allocated_bytes();
    for _ in 0..10_000 {
        call();
    }
    let after = allocated_bytes();
    // A leak of even one 16-byte allocation per call would be 160 KB here.
    let grown = after.saturating_sub(before);
    assert!(grown < 64 * 1024, "allocated bytes grew by {grown} over 10k calls ({before} → {after})");
}
