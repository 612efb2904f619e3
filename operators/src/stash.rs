//! Holding an operator's input back per epoch until the input frontier has passed the epoch, for
//! operators that act on whole epochs (the upsert, the curated writer).

use std::collections::BTreeMap;

use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::AntichainRef;

/// Each open epoch's batches as they arrived (never copied into one vector), with a capability to
/// emit that epoch's output.
pub struct EpochStash<D> {
    pending: BTreeMap<u64, (Capability<u64>, Vec<Vec<D>>)>,
}

impl<D> Default for EpochStash<D> {
    fn default() -> Self {
        EpochStash { pending: BTreeMap::new() }
    }
}

impl<D> EpochStash<D> {
    /// Takes `batches`, which arrived at `time`.
    pub fn stash<'a>(&mut self, time: &InputCapability<u64>, batches: impl IntoIterator<Item = &'a mut Vec<D>>)
    where
        D: 'a,
    {
        let entry = self.pending.entry(*time.time()).or_insert_with(|| (time.retain(0), Vec::new()));
        entry.1.extend(batches.into_iter().map(std::mem::take));
    }

    /// The earliest held epoch once `frontier` has passed it: its time, capability and batches.
    pub fn pop_complete(&mut self, frontier: AntichainRef<u64>) -> Option<(u64, Capability<u64>, Vec<Vec<D>>)> {
        let (&time, _) = self.pending.first_key_value()?;
        if frontier.less_equal(&time) {
            return None;
        }
        let (capability, batches) = self.pending.pop_first()?.1;
        Some((time, capability, batches))
    }
}
