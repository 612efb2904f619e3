//! The arrangement of current slots, cut by partition day: one differential spine per live
//! partition, holding the slots of the rows in it.
//!
//! ```text
//!  epoch t's pass ── get(key), keys ascending ──► SlotReader: a forward position per batch of every day
//!        │ per changed key: (key, old slot, -1) into the old row's day, (key, winner, +1) into the winner's
//!        ▼
//!  DayChanges ── a batch per changed day, [its spine's upper, t + 1) ──► spines: day → OrdValSpine
//!                                                                             │ days before frozen_before
//!                                                                             ▼
//!                                          read once in key order, dropped ──► frozen keys (sorted)
//! ```
//!
//! Why cut by day: a partition freezes whole (once the settled ingestion date passes it by the
//! lateness its rows can no longer change), and then its slots leave the state. In one spine for
//! every day a slot can only leave by a retraction: a cursor seek to find it, the retraction in the
//! epoch's batch, and a merge that cancels the pair, for every key of the freezing days at once (in
//! a 4M-event replay epoch, ~3.75M keys). With a spine per day the frozen day's spine is read once,
//! in key order, which is the order the frozen set wants its keys in, and dropped. The price: a
//! lookup visits the batches of every live day's spine, not of one spine; in the event streams this
//! engine is for, a day's rows arrive within an epoch or two, so a day's spine holds a batch or two.
//!
//! Edge cases:
//! - With `lateness = "off"` nothing ever freezes, so cutting by day would only make lookups
//!   visit more batches (and more every day the engine runs): all days then share one spine.
//! - A lookup visits every live day's spine. With a lateness, the live days are the window plus
//!   any partitions ahead of the settled date, a handful for a day transform; a graph partitioned
//!   by `identity` of a column that is not a date has as many spines as live partition values.
//! - A key has at most one current slot over all days: a row that moves to another partition is
//!   retracted from its old day's spine in the epoch that inserts it into the new day's. A lookup
//!   sums a slot's counts over every batch it appears in, so that retraction and the insertion it
//!   cancels may sit in different batches of the day's spine.
//! - A day's spine is made by the first epoch that places a row in it. A day an epoch does not
//!   change gets no batch: its spine's upper stays where it was and its next batch starts there.
//! - Every update of epoch `t` is at time `t`, and the spines are compacted to the operator's
//!   frontier, so merges within a day cancel retractions against the slots they retract.

use std::collections::BTreeMap;
use std::sync::Arc;

use differential_dataflow::logging::Logger;
use differential_dataflow::trace::{Builder, Cursor, Description, Navigable, Trace, TraceReader};
use timely::dataflow::operators::generic::OperatorInfo;
use timely::progress::Antichain;
use timely::progress::frontier::AntichainRef;
use timely::scheduling::Activator;

use super::frozen::first_at_least;
use super::{UpsertBuilder, UpsertSpine};
use crate::records::Slot;

/// An update of a day's spine: the key's slot in or out at an epoch.
type Update = ((u128, Slot), u64, isize);

/// One live partition's slots.
struct DaySpine {
    spine: UpsertSpine,
    /// The spine's upper: one past the last epoch that changed the day.
    upper: u64,
}

/// The current slots of the live partitions, a spine per partition day.
pub struct LiveDays {
    /// By partition day; all under [`ONE_SPINE`] when days do not freeze.
    days: BTreeMap<i32, DaySpine>,
    /// Whether days freeze, and so have a spine each.
    cut_by_day: bool,
    /// What a new day's spine is made with: the operator's, as one spine for all days had.
    info: OperatorInfo,
    logger: Option<Logger>,
    activator: Activator,
}

impl LiveDays {
    /// `cut_by_day`: whether partitions ever freeze (a lateness is set).
    pub fn new(info: OperatorInfo, logger: Option<Logger>, activator: Activator, cut_by_day: bool) -> LiveDays {
        LiveDays { days: BTreeMap::new(), cut_by_day, info, logger, activator }
    }

    /// A list for an epoch's changes; `candidates`: per day, how many of the epoch's candidates
    /// are rated on it.
    pub fn changes(&self, candidates: Vec<(i32, usize)>) -> DayChanges {
        let candidates = match self.cut_by_day {
            true => candidates,
            false => vec![(ONE_SPINE, candidates.iter().map(|(_, count)| count).sum())],
        };
        DayChanges { days: Vec::new(), candidates, cut_by_day: self.cut_by_day }
    }

    /// A reader of the current slots as they are now (later inserts are not seen by it).
    pub fn reader(&self) -> SlotReader {
        let mut batches = Vec::new();
        for day in self.days.values() {
            day.spine.map_batches(|batch| batches.push(batch.clone()));
        }
        let cursors = batches.iter().map(Navigable::cursor).collect();
        let next = vec![0; batches.len()];
        SlotReader { batches, cursors, next, counts: Vec::new() }
    }

    /// Adds epoch `time`'s changes: one batch per day they touch.
    pub fn insert(&mut self, changes: DayChanges, time: u64) {
        for (day, mut chunk, mut builder) in changes.days {
            builder.push(&mut chunk);
            let day = self.days.entry(day).or_insert_with(|| {
                let mut spine = UpsertSpine::new(self.info.clone(), self.logger.clone(), Some(self.activator.clone()));
                spine.set_exert_logic(Arc::new(finish_merges));
                DaySpine { spine, upper: 0 }
            });
            let lower = std::mem::replace(&mut day.upper, time + 1);
            let description = Description::new(Antichain::from_elem(lower), Antichain::from_elem(time + 1), Antichain::from_elem(0));
            day.spine.insert(builder.done(description));
        }
    }

    /// Removes the days before `before` (they freeze) and returns each with its keys that have a
    /// slot in it, ascending.
    pub fn take_before(&mut self, before: i32) -> Vec<(i32, Vec<u128>)> {
        if !self.cut_by_day {
            return Vec::new();
        }
        let later = self.days.split_off(&before);
        let frozen = std::mem::replace(&mut self.days, later);
        frozen.into_iter().map(|(day, mut spine)| (day, spine.keys_with_a_slot())).collect()
    }

    /// Lets every day's spine merge what the operator's frontier has passed.
    pub fn compact(&mut self, frontier: AntichainRef<'_, u64>) {
        for day in self.days.values_mut() {
            day.spine.set_logical_compaction(frontier);
            day.spine.set_physical_compaction(frontier);
            day.spine.exert();
        }
    }
}

/// Updates of merge work a spine is given per activation while a merge is in progress.
const MERGE_EFFORT: usize = 1 << 20;

/// A day's spine finishes a merge it has begun between epochs, not only when later batches bring
/// it fuel: a day may receive no batch for the rest of its life, and a merge in flight keeps both
/// its inputs and its partial output, which lookups visit as separate batches. Layers are
/// `(level, batches, updates)`; nothing is asked of a spine without a merge in flight, so a
/// settled spine is never merged further on its own.
fn finish_merges(layers: &[(usize, usize, usize)]) -> Option<usize> {
    layers.iter().any(|(_, batches, _)| *batches > 1).then_some(MERGE_EFFORT)
}

impl DaySpine {
    /// The keys whose slot counts add up to one, ascending: one pass over the spine in key order.
    fn keys_with_a_slot(&mut self) -> Vec<u128> {
        let (mut cursor, storage) = self.spine.cursor();
        let mut keys = Vec::with_capacity(self.spine_len());
        while let Some(key) = cursor.get_key(&storage) {
            let key = *key;
            let mut live = false;
            while cursor.get_val(&storage).is_some() {
                let mut count = 0;
                cursor.map_times(&storage, |_, diff| count += *diff);
                live |= count > 0;
                cursor.step_val(&storage);
            }
            if live {
                keys.push(key);
            }
            cursor.step_key(&storage);
        }
        keys
    }

    /// Keys in the spine's batches, counted with repeats: an upper bound of its live keys.
    fn spine_len(&self) -> usize {
        let mut len = 0;
        self.spine.map_batches(|batch| len += differential_dataflow::trace::BatchReader::len(batch));
        len
    }
}

/// The epoch's changes, a batch builder per day, each fed in (key, slot) order: the pass meets
/// keys in ascending order, and a key's two updates in one day (an update within the partition)
/// are pushed in slot order. Updates reach a builder in chunks as they come: a list of the whole
/// epoch's changes beside the builders' copies of them would be the pass's largest allocation.
pub struct DayChanges {
    /// Per day: its pending chunk and its builder. Few days per epoch: a list beats a map.
    days: Vec<(i32, Vec<Update>, UpsertBuilder)>,
    /// Per day, the epoch's candidates rated on it: the most slots the day can gain.
    candidates: Vec<(i32, usize)>,
    /// Whether each day has a spine; if not, every change goes to [`ONE_SPINE`].
    cut_by_day: bool,
}

/// Where every day's slots live when days do not freeze.
const ONE_SPINE: i32 = 0;

impl DayChanges {
    const CHUNK: usize = 4096;

    pub fn push(&mut self, day: i32, update: Update) {
        let day = if self.cut_by_day { day } else { ONE_SPINE };
        let index = match self.days.iter().rposition(|(d, _, _)| *d == day) {
            Some(index) => index,
            None => {
                self.days.push((day, Vec::with_capacity(Self::CHUNK), self.builder_for(day)));
                self.days.len() - 1
            }
        };
        let (_, chunk, builder) = &mut self.days[index];
        chunk.push(update);
        if chunk.len() == Self::CHUNK {
            builder.push(chunk);
        }
    }

    /// A builder with room for a slot per candidate rated on `day` and an eighth more. A batch
    /// keeps whatever room it was given for as long as its spine holds it, so the room is what the
    /// day can gain: a key gains at most one slot a day, from one of its candidates. Retractions
    /// of rows that moved out of the day (or were replaced in it) are few in an event stream; the
    /// eighth is for them, and only a day with more of them grows its lists (by doubling). Equal
    /// (time, diff) pairs in a row are stored once, so the pairs need a fraction of the slots.
    fn builder_for(&self, day: i32) -> UpsertBuilder {
        let gains = self.candidates.iter().find(|(d, _)| *d == day).map_or(0, |(_, count)| *count);
        let slots = gains + gains / 8;
        UpsertBuilder::with_capacity(slots, slots, slots / 8)
    }
}

/// Reads keys' current slots (the value with a positive count), keys asked in ascending order.
///
/// One forward position per batch of every day's spine. A key is looked for in a batch's sorted
/// key list by galloping from where the last key left off (in an event stream most keys asked are
/// new, so most batches do not hold them, and differential's cursor would also place itself on
/// the values of whatever key it lands on); only a batch that holds the key is read through its
/// cursor, for the key's values and their counts. Counts are summed across batches: a later batch
/// may retract a slot an earlier one holds. (A spine's own cursor, a `CursorList`, re-ranks every
/// batch's current key and value after each step to present one merged order, which a lookup of
/// one key does not need.)
pub struct SlotReader {
    batches: Vec<<UpsertSpine as TraceReader>::Batch>,
    cursors: Vec<<<UpsertSpine as TraceReader>::Batch as Navigable>::Cursor>,
    /// Per batch, the index of the first key not below the last key asked.
    next: Vec<usize>,
    /// The asked key's values and their summed counts.
    counts: Vec<(Slot, isize)>,
}

impl SlotReader {
    /// The key's slot. Keys must be asked in ascending order: the positions only move forward.
    pub fn get(&mut self, key: u128) -> Option<Slot> {
        self.counts.clear();
        for ((cursor, batch), next) in self.cursors.iter_mut().zip(&self.batches).zip(&mut self.next) {
            let keys = &batch.storage.keys;
            *next = first_at_least(keys, *next, key);
            if keys.get(*next) != Some(&key) {
                continue;
            }
            cursor.seek_key(batch, &key);
            while let Some(slot) = cursor.get_val(batch) {
                let mut count = 0;
                cursor.map_times(batch, |_, diff| count += *diff);
                match self.counts.iter_mut().find(|(seen, _)| seen == slot) {
                    Some((_, total)) => *total += count,
                    None => self.counts.push((*slot, count)),
                }
                cursor.step_val(batch);
            }
        }
        self.counts.iter().filter(|(_, count)| *count > 0).map(|(slot, _)| *slot).max()
    }
}
