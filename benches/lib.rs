//! Benchmarks live in `replay.rs`, `commit_cost.rs`, `plugin.rs` and `floor.rs` (criterion),
//! `replay_10m.sh` and `stream.sh` (whole process); see README.md.

use std::path::PathBuf;

use operators::rules::chain::RuleChain;
use operators::rules::plugin::PluginSpec;

/// The shipped approval plugin as `make plugins` builds it (release).
pub fn approval_plugin() -> PluginSpec {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("plugins/lib/libratings_approval.so");
    assert!(path.exists(), "{} is missing: run `make plugins` (or `make bench`) first", path.display());
    PluginSpec { label: None, path, config: serde_json::json!({ "threshold": 7.0 }), base_dir: root }
}

/// The rules chain of the shipped graph without the blocklist: approval at 7.
pub fn approval_chain() -> RuleChain {
    RuleChain::load(&[approval_plugin()], &shipped_graph().pipeline).expect("the approval plugin loads")
}

/// The shipped ratings graph (`graphs/ratings.toml`): its pipeline declares the tables.
pub fn shipped_graph() -> runtime::graph::Graph {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../graphs/ratings.toml");
    runtime::graph::Graph::load(&path).unwrap_or_else(|e| panic!("{e}"))
}
