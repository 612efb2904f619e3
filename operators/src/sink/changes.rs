//! Net change per key and epoch, from the upsert's output.
//!
//! Per completed epoch and key: the row that left (`-1`) and the row that arrived (`+1`). Rows equal
//! in every stored column (they differ only in `Origin`) cancel: a seed replaced by its own
//! re-processed record with the same derived values is no change. Late updates (`+1`) become
//! rejections.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::StreamVec;

use crate::model::Candidate;
use crate::schema::late_update_rejection;
use crate::sink::SinkMessage;
use crate::upsert::UpsertOutput;

/// One key's change in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyChange {
    pub key: u128,
    pub old: Option<Candidate>,
    pub new: Option<Candidate>,
}

/// What this stage emits: key changes for the writer, rejections for the commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Change {
    Key(KeyChange),
    Sink(SinkMessage),
}

/// Counters of what the upsert did, summed over workers.
#[derive(Debug, Default)]
pub struct UpsertCounters {
    pub inserted: std::sync::atomic::AtomicU64,
    pub updated: std::sync::atomic::AtomicU64,
    pub moved: std::sync::atomic::AtomicU64,
}

fn same_row(a: &Candidate, b: &Candidate) -> bool {
    Candidate { origin: b.origin, ..a.clone() } == *b
}

pub fn net_changes<'scope>(
    upserted: StreamVec<'scope, u64, ((u128, UpsertOutput), u64, isize)>,
    topic: Arc<str>,
    counters: Arc<UpsertCounters>,
) -> StreamVec<'scope, u64, Change> {
    upserted.unary_frontier(Pipeline, "NetChanges", move |_capability, _info| {
        let mut pending: BTreeMap<u64, (Capability<u64>, Vec<((u128, UpsertOutput), isize)>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each_time(|time, data| {
                let entry = pending.entry(*time.time()).or_insert_with(|| (time.retain(0), Vec::new()));
                for batch in data {
                    entry.1.extend(batch.drain(..).map(|(record, _time, diff)| (record, diff)));
                }
            });
            while let Some((&time, _)) = pending.first_key_value() {
                if frontier.less_equal(&time) {
                    break;
                }
                let (capability, mut updates) = pending.pop_first().expect("first entry exists").1;
                let mut session = output.session(&capability);
                // Group by key by sorting in place: no per-epoch hash map of millions of entries.
                updates.sort_unstable_by_key(|((key, _), _)| *key);
                let mut updates = updates.into_iter().peekable();
                while let Some(((key, first), diff)) = updates.next() {
                    let (mut old, mut new) = (None, None);
                    let mut value = Some((first, diff));
                    while let Some((output_value, diff)) = value.take() {
                        match output_value {
                            UpsertOutput::Current(row) if diff < 0 => old = Some(row),
                            UpsertOutput::Current(row) => new = Some(row),
                            UpsertOutput::LateUpdate(record) if diff > 0 => {
                                let detail = "the event's current row is older than the lateness window of this record".to_string();
                                session.give(Change::Sink(SinkMessage::Rejected(late_update_rejection(key, &record, &topic, detail))));
                            }
                            UpsertOutput::LateUpdate(_) => {}
                        }
                        if updates.peek().is_some_and(|((next, _), _)| *next == key) {
                            value = updates.next().map(|((_, v), d)| (v, d));
                        }
                    }
                    match (&old, &new) {
                        (None, None) => continue, // only late updates for this key
                        (Some(old), Some(new)) if same_row(old, new) => continue,
                        _ => {}
                    }
                    if time > 0 {
                        use std::sync::atomic::Ordering::Relaxed;
                        match (&old, &new) {
                            (None, Some(_)) => counters.inserted.fetch_add(1, Relaxed),
                            (Some(old), Some(new)) if old.rating_date != new.rating_date => {
                                counters.moved.fetch_add(1, Relaxed);
                                counters.updated.fetch_add(1, Relaxed)
                            }
                            _ => counters.updated.fetch_add(1, Relaxed),
                        };
                    }
                    session.give(Change::Key(KeyChange { key, old, new }));
                }
            }
        }
    })
}
