//! The plugin chain: the business rules the graph file lists, applied in order to the records
//! that passed the engine's own validation.
//!
//! Semantics:
//! - The chain starts with the engine's columns ([`OFFERED`]); each plugin gets exactly its
//!   declared inputs and returns its declared outputs, which add a column or replace one for the
//!   plugins after it. Checked at start: every input exists at the plugin's place with its type;
//!   no plugin replaces an engine-owned column (the key, the ordering and partition columns,
//!   lineage); a plugin that replaces `user_id`, `movie_id` or `rating` keeps its type; some
//!   plugin adds `is_approved` (Boolean), which the curated table needs.
//! - A row a plugin rejects goes to the rejected table as `rule_rejected`, with the plugin's name
//!   and reason as detail; later plugins never see it.
//! - After the chain, `user_id`, `movie_id`, `rating` and `is_approved` are read back (when some
//!   plugin wrote them). A null there, or a rating outside 0..=10, is the plugin's error.
//! - Any plugin error (a refusal, a panic, a batch of the wrong length or schema) fails the
//!   batch: the engine stops before committing the epoch, and a restart retries it.
//! - Seeds (rows reloaded from the curated table) never pass through the chain: they are the
//!   chain's earlier output.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float32Array, Int32Array, Int64Array, StringArray,
};
use arrow::compute::filter;
use arrow::datatypes::DataType;

use super::plugin::{Plugin, PluginInstance, PluginSpec};
use crate::error::{Error, Result};
use crate::model::{Candidate, RawEvent, Rating, RejectReason, Rejection, format_event_id};
use crate::rules::{MAX_RATING, MIN_RATING};

/// The columns the engine offers the first plugin, and whether a plugin may replace them.
pub const OFFERED: [(&str, DataType, bool); 9] = [
    ("event_id", DataType::Utf8, false),
    ("user_id", DataType::Utf8, true),
    ("movie_id", DataType::Utf8, true),
    ("rating", DataType::Float32, true),
    ("rating_timestamp", DataType::Int64, false),
    ("rating_date", DataType::Date32, false),
    ("ingestion_ts_ms", DataType::Int64, false),
    ("source_partition", DataType::Int32, false),
    ("source_offset", DataType::Int64, false),
];

/// The column the curated table needs from the chain.
pub const APPROVAL_COLUMN: &str = "is_approved";

/// The loaded, checked plugins of a graph.
#[derive(Debug, Clone, Default)]
pub struct RuleChain {
    plugins: Vec<Arc<Plugin>>,
}

impl RuleChain {
    pub fn load(specs: &[PluginSpec]) -> Result<RuleChain> {
        let mut columns: BTreeMap<String, DataType> = OFFERED.iter().map(|(n, t, _)| (n.to_string(), t.clone())).collect();
        let mut plugins = Vec::with_capacity(specs.len());
        for spec in specs {
            let plugin = Plugin::load(spec)?;
            let problem = |text: String| plugin.error(text);
            for (name, wanted) in &plugin.inputs {
                match columns.get(name) {
                    None => {
                        let have: Vec<String> = columns.iter().map(|(n, t)| format!("{n} {t}")).collect();
                        return Err(problem(format!(
                            "needs column `{name}` ({wanted}), which does not exist at its place in the chain (there: {})",
                            have.join(", ")
                        )));
                    }
                    Some(found) if found != wanted => {
                        return Err(problem(format!("needs column `{name}` as {wanted}, but it is {found}")));
                    }
                    Some(_) => {}
                }
            }
            for (name, produced) in &plugin.outputs {
                if let Some((_, offered, replaceable)) = OFFERED.iter().find(|(n, _, _)| n == name) {
                    if !replaceable {
                        return Err(problem(format!("may not replace `{name}`: the engine owns that column")));
                    }
                    if offered != produced {
                        return Err(problem(format!("replaces `{name}` ({offered}) with a {produced} column")));
                    }
                }
                if name == APPROVAL_COLUMN && produced != &DataType::Boolean {
                    return Err(problem(format!("produces `{APPROVAL_COLUMN}` as {produced}; the curated table needs Boolean")));
                }
                columns.insert(name.clone(), produced.clone());
            }
            plugins.push(plugin);
        }
        if !columns.contains_key(APPROVAL_COLUMN) {
            return Err(Error::User(format!(
                "no rule plugin adds `{APPROVAL_COLUMN}`, which the curated table needs: list the approval plugin under [[rules.plugins]]"
            )));
        }
        Ok(RuleChain { plugins })
    }

    /// `name version` of each plugin, in order.
    pub fn names(&self) -> Vec<String> {
        self.plugins.iter().map(|p| format!("{} {}", p.label, p.description.version)).collect()
    }

    /// Instances for one worker.
    pub fn instantiate(&self) -> Result<ChainInstance> {
        let stages = self.plugins.iter().map(PluginInstance::new).collect::<Result<_>>()?;
        Ok(ChainInstance { stages })
    }
}

/// One worker's instances of the chain.
pub struct ChainInstance {
    stages: Vec<PluginInstance>,
}

/// A record that passed the engine's validation, waiting for the chain.
pub struct Pending {
    pub key: u128,
    pub candidate: Candidate,
    pub event: RawEvent,
}

/// An engine column over the rows `rows` of `pending`.
fn offered_column(name: &str, pending: &[Pending], rows: &[usize]) -> Option<ArrayRef> {
    let each = || rows.iter().map(|row| &pending[*row]);
    Some(match name {
        "event_id" => Arc::new(each().map(|p| Some(format_event_id(p.key))).collect::<StringArray>()),
        "user_id" => Arc::new(each().map(|p| Some(p.candidate.user_id.as_str())).collect::<StringArray>()),
        "movie_id" => Arc::new(each().map(|p| Some(p.candidate.movie_id.as_str())).collect::<StringArray>()),
        "rating" => Arc::new(Float32Array::from_iter_values(each().map(|p| p.candidate.rating.0))),
        "rating_timestamp" => Arc::new(Int64Array::from_iter_values(each().map(|p| p.candidate.rating_timestamp))),
        "rating_date" => Arc::new(Date32Array::from_iter_values(each().map(|p| p.candidate.rating_date))),
        "ingestion_ts_ms" => Arc::new(Int64Array::from_iter_values(each().map(|p| p.candidate.position.ingestion_ts_ms))),
        "source_partition" => Arc::new(Int32Array::from_iter_values(each().map(|p| p.candidate.position.partition))),
        "source_offset" => Arc::new(Int64Array::from_iter_values(each().map(|p| p.candidate.position.offset))),
        _ => return None,
    })
}

/// A row the chain accepted: its key and its curated row.
pub type Accepted = (u128, Candidate);

impl ChainInstance {
    /// Runs the chain over `pending`: the accepted rows with the rules' columns applied, and the
    /// rows a plugin rejected.
    pub fn apply(&mut self, pending: Vec<Pending>) -> Result<(Vec<Accepted>, Vec<Rejection>)> {
        let mut rejections = Vec::new();
        if pending.is_empty() {
            return Ok((Vec::new(), rejections));
        }
        // The surviving rows (indices into `pending`) and the columns built or produced so far,
        // each over exactly those rows; `written` names the plugin that last wrote a column.
        let mut rows: Vec<usize> = (0..pending.len()).collect();
        let mut columns: BTreeMap<String, ArrayRef> = BTreeMap::new();
        let mut written: BTreeMap<String, usize> = BTreeMap::new();
        for (stage_index, stage) in self.stages.iter_mut().enumerate() {
            if rows.is_empty() {
                break;
            }
            let mut inputs = Vec::with_capacity(stage.plugin().inputs.len());
            for (name, _) in &stage.plugin().inputs {
                let column = match columns.get(name) {
                    Some(column) => column.clone(),
                    None => {
                        let column = offered_column(name, &pending, &rows)
                            .ok_or_else(|| Error::Internal(format!("column {name} checked at load is missing")))?;
                        columns.insert(name.clone(), column.clone());
                        column
                    }
                };
                inputs.push(column);
            }
            let (outputs, verdicts) = stage.apply(inputs, rows.len())?;
            for ((name, _), column) in stage.plugin().outputs.iter().zip(outputs) {
                columns.insert(name.clone(), column);
                written.insert(name.clone(), stage_index);
            }
            let Some(verdicts) = verdicts.filter(|v| v.null_count() < v.len()) else { continue };
            let label = &stage.plugin().label;
            let keep: BooleanArray = verdicts.iter().map(|v| Some(v.is_none())).collect();
            for (index, verdict) in verdicts.iter().enumerate() {
                if let Some(reason) = verdict {
                    let event = pending[rows[index]].event.clone();
                    rejections.push(Rejection { reason: RejectReason::RuleRejected, detail: format!("{label}: {reason}"), event });
                }
            }
            rows = rows.iter().zip(keep.values().iter()).filter(|(_, keep)| *keep).map(|(row, _)| *row).collect();
            for column in columns.values_mut() {
                *column = filter(column.as_ref(), &keep)
                    .map_err(|e| Error::Internal(format!("filtering rows rejected by plugin `{label}`: {e}")))?;
            }
        }
        let blame = |column: &str, problem: String| self.stages[written[column]].plugin().error(problem);
        let read_back = |name: &str| -> Result<Option<&ArrayRef>> {
            match (written.contains_key(name), columns.get(name)) {
                (true, Some(column)) if column.null_count() > 0 => {
                    Err(blame(name, format!("returned {} nulls in `{name}`, which may not be null", column.null_count())))
                }
                (true, Some(column)) => Ok(Some(column)),
                _ => Ok(None),
            }
        };
        let strings = |name: &str| -> Result<Option<&StringArray>> {
            Ok(read_back(name)?.and_then(|c| c.as_any().downcast_ref::<StringArray>()))
        };
        let user_ids = strings("user_id")?;
        let movie_ids = strings("movie_id")?;
        let ratings = read_back("rating")?.and_then(|c| c.as_any().downcast_ref::<Float32Array>());
        let approved = read_back(APPROVAL_COLUMN)?
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
            .ok_or_else(|| Error::Internal(format!("`{APPROVAL_COLUMN}` checked at load is missing")))?;
        if let Some(bad) = ratings.and_then(|r| r.values().iter().find(|r| !(MIN_RATING..=MAX_RATING).contains(*r))) {
            return Err(blame("rating", format!("returned rating {bad}, outside {MIN_RATING}..={MAX_RATING}")));
        }
        let mut accepted = Vec::with_capacity(rows.len());
        // `rows` ascends (filtering keeps the order), so one pass over `pending` finds them all.
        let mut surviving = pending.into_iter().enumerate();
        for (index, row) in rows.iter().enumerate() {
            let Some((_, Pending { key, mut candidate, .. })) = surviving.find(|(at, _)| at == row) else {
                return Err(Error::Internal(format!("surviving row {row} is not among the pending rows")));
            };
            candidate.is_approved = approved.value(index);
            if let Some(ids) = user_ids {
                candidate.user_id = ids.value(index).into();
            }
            if let Some(ids) = movie_ids {
                candidate.movie_id = ids.value(index).into();
            }
            if let Some(ratings) = ratings {
                candidate.rating = Rating(ratings.value(index));
            }
            accepted.push((key, candidate));
        }
        Ok((accepted, rejections))
    }
}
