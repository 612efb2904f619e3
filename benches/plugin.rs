//! What crossing the plugin boundary costs: the shipped approval rule on one 64k-row batch,
//! - `plugin_64k/in_engine`: its `Rule::apply` called directly, compiled into this binary;
//! - `plugin_64k/through_abi`: the same rule in `libratings_approval.so`, called through the
//!   engine's loader: export to the Arrow C Data Interface, the C call, import and full validation
//!   of the output.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use operators::rules::plugin::{Plugin, PluginInstance};
use ratings_approval::Approval;
use ratings_plugin_sdk::Rule;
use ratings_plugin_sdk::arrow_array::{ArrayRef, Float32Array, RecordBatch};

const ROWS: usize = 64 * 1024;

fn plugin_call(c: &mut Criterion) {
    let ratings: ArrayRef = Arc::new(Float32Array::from_iter_values((0..ROWS).map(|i| (i % 101) as f32 / 10.0)));
    let batch = RecordBatch::try_from_iter([("rating", ratings.clone())]).unwrap();
    let in_engine = Approval { threshold: 7.0 };
    let plugin = Plugin::load(&ratings_benches::approval_plugin()).unwrap();
    let mut instance = PluginInstance::new(&plugin).unwrap();

    let mut group = c.benchmark_group("plugin_64k");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("in_engine", |b| b.iter(|| in_engine.apply(std::hint::black_box(&batch)).unwrap()));
    group.bench_function("through_abi", |b| {
        b.iter(|| instance.apply(vec![std::hint::black_box(ratings.clone())], ROWS).unwrap())
    });
    group.finish();
}

criterion_group!(benches, plugin_call);
criterion_main!(benches);
