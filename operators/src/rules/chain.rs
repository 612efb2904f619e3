//! The plugin chain: the business rules the graph file lists, applied in order to the records
//! that passed the engine's own validation, as Arrow batches.
//!
//! Semantics:
//! - The chain starts with the engine's columns ([`offered`]): the event columns (a `uuid` key in
//!   canonical form), the partition column and the lineage. Each plugin gets exactly its declared
//!   inputs and returns its declared outputs, which add a column or replace one for the plugins
//!   after it. Checked at start: every input exists at the plugin's place with its type; no plugin
//!   replaces an engine-owned column (the key, the order and partition columns, lineage); a plugin
//!   that replaces a column keeps its type; every curated column the engine does not derive is
//!   added by some plugin with the type the graph declares.
//! - A row a plugin rejects goes to the rejected table as `rule_rejected`, with the plugin's name
//!   and reason as detail; later plugins never see it.
//! - After the chain, a curated column a plugin wrote may hold no null, and a replaced column must
//!   still pass the graph's `range` rules on it; otherwise it is the plugin's error.
//! - Any plugin error (a refusal, a panic, a batch of the wrong length or schema) fails the
//!   batch: the engine stops before committing the epoch, and a restart retries it.
//! - Rows reloaded from the curated table never pass through the chain: they are its earlier
//!   output.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::collections::BTreeSet;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter;
use arrow::datatypes::DataType;

use super::plugin::{Plugin, PluginInstance, PluginSpec};
use crate::error::{Context, Error, Result};
use crate::pipeline::{LINEAGE, Pipeline, Rule};

/// The columns the engine offers the first plugin, with their types, and whether a plugin may
/// replace them.
pub fn offered(pipeline: &Pipeline) -> Result<Vec<(String, DataType, bool)>> {
    let owned: BTreeSet<&str> = pipeline
        .key
        .iter()
        .map(String::as_str)
        .chain([pipeline.order_by.as_str(), pipeline.partitioning.source.as_str(), pipeline.partitioning.column.as_str()])
        .chain(LINEAGE.iter().map(|(name, _)| *name))
        .collect();
    Ok(pipeline.working.fields().iter().map(|f| (f.name().clone(), f.data_type().clone(), !owned.contains(f.name().as_str()))).collect())
}

/// The loaded, checked plugins of a graph.
#[derive(Debug, Clone, Default)]
pub struct RuleChain {
    plugins: Vec<Arc<Plugin>>,
    /// The graph's range rules (column, min, max): a plugin's replacement must pass them too.
    ranges: Vec<(String, Option<f64>, Option<f64>)>,
    /// Curated columns that may hold no null.
    required: BTreeSet<String>,
}

impl RuleChain {
    pub fn load(specs: &[PluginSpec], pipeline: &Pipeline) -> Result<RuleChain> {
        let offered = offered(pipeline)?;
        let mut columns: BTreeMap<String, DataType> = offered.iter().map(|(n, t, _)| (n.clone(), t.clone())).collect();
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
                if let Some((_, engine_type, replaceable)) = offered.iter().find(|(n, _, _)| n == name) {
                    if !replaceable {
                        return Err(problem(format!("may not replace `{name}`: the engine owns that column")));
                    }
                    if engine_type != produced {
                        return Err(problem(format!("replaces `{name}` ({engine_type}) with a {produced} column")));
                    }
                }
                if let Some((_, declared)) = pipeline.curated.iter().find(|(n, _)| n == name) {
                    let declared = iceberg::arrow::type_to_arrow_type(declared).context(|| format!("the Arrow type of {name}"))?;
                    if &declared != produced {
                        return Err(problem(format!("produces `{name}` as {produced}; the graph's curated.columns declare it {declared}")));
                    }
                }
                columns.insert(name.clone(), produced.clone());
            }
            plugins.push(plugin);
        }
        for (name, _) in &pipeline.curated {
            if !columns.contains_key(name) {
                return Err(Error::User(format!(
                    "no rule plugin adds `{name}`, which the curated table needs (it is neither an event column nor derived): list the plugin that does under [[rules.plugins]]"
                )));
            }
        }
        let ranges = pipeline
            .validations
            .iter()
            .filter_map(|v| match v.rule {
                Rule::Range { min, max } => Some((v.column.clone(), min, max)),
                _ => None,
            })
            .collect();
        let required = pipeline.required.iter().cloned().collect();
        Ok(RuleChain { plugins, ranges, required })
    }

    /// The plugin ABI and `name version` of each plugin, in order: what every process of a
    /// cluster run must share.
    pub fn identity(&self) -> String {
        format!("ABI {}: {}", ratings_plugin_sdk::abi::ABI_VERSION, self.names().join(", "))
    }

    /// `name version` of each plugin, in order.
    pub fn names(&self) -> Vec<String> {
        self.plugins.iter().map(|p| format!("{} {}", p.label, p.description.version)).collect()
    }

    /// Instances for one worker.
    pub fn instantiate(&self) -> Result<ChainInstance> {
        let stages = self.plugins.iter().map(PluginInstance::new).collect::<Result<_>>()?;
        Ok(ChainInstance { stages, ranges: self.ranges.clone(), required: self.required.clone() })
    }
}

/// One worker's instances of the chain.
pub struct ChainInstance {
    stages: Vec<PluginInstance>,
    ranges: Vec<(String, Option<f64>, Option<f64>)>,
    required: BTreeSet<String>,
}

/// What the chain made of a batch: the rows it kept (indices into the input batch, ascending), the
/// batch over exactly those rows with the plugins' columns, the rows a plugin rejected with the
/// detail (`plugin: reason`), and the columns some plugin wrote (every other column is the input's,
/// cut to the kept rows).
pub struct Applied {
    pub kept: Vec<u32>,
    pub batch: RecordBatch,
    pub rejected: Vec<(u32, String)>,
    pub written: BTreeSet<String>,
}

impl ChainInstance {
    /// Runs the chain over `working` (the offered columns of the rows that passed validation).
    pub fn apply(&mut self, working: RecordBatch) -> Result<Applied> {
        let mut rejected = Vec::new();
        let mut kept: Vec<u32> = (0..working.num_rows() as u32).collect();
        let mut columns: BTreeMap<String, ArrayRef> =
            working.schema().fields().iter().zip(working.columns()).map(|(f, c)| (f.name().clone(), c.clone())).collect();
        let order: Vec<String> = working.schema().fields().iter().map(|f| f.name().clone()).collect();
        let mut written: BTreeMap<String, usize> = BTreeMap::new();
        for (stage_index, stage) in self.stages.iter_mut().enumerate() {
            if kept.is_empty() {
                break;
            }
            let inputs = stage
                .plugin()
                .inputs
                .iter()
                .map(|(name, _)| columns.get(name).cloned().ok_or_else(|| Error::Internal(format!("column {name} checked at load is missing"))))
                .collect::<Result<Vec<_>>>()?;
            let (outputs, verdicts) = stage.apply(inputs, kept.len())?;
            for ((name, _), column) in stage.plugin().outputs.iter().zip(outputs) {
                columns.insert(name.clone(), column);
                written.insert(name.clone(), stage_index);
            }
            let Some(verdicts) = verdicts.filter(|v| v.null_count() < v.len()) else { continue };
            let label = &stage.plugin().label;
            let keep: BooleanArray = verdicts.iter().map(|v| Some(v.is_none())).collect();
            for (index, verdict) in verdicts.iter().enumerate() {
                if let Some(reason) = verdict {
                    rejected.push((kept[index], format!("{label}: {reason}")));
                }
            }
            kept = kept.iter().zip(keep.values().iter()).filter(|(_, keep)| *keep).map(|(row, _)| *row).collect();
            for column in columns.values_mut() {
                *column = filter(column.as_ref(), &keep)
                    .map_err(|e| Error::Internal(format!("filtering rows rejected by plugin `{label}`: {e}")))?;
            }
        }
        for (name, stage) in &written {
            let blame = |problem: String| self.stages[*stage].plugin().error(problem);
            let column = &columns[name];
            if self.required.contains(name) && column.null_count() > 0 {
                return Err(blame(format!("returned {} nulls in `{name}`, which may not be null", column.null_count())));
            }
            for (_, min, max) in self.ranges.iter().filter(|(column, _, _)| column == name) {
                let as_f64 = arrow::compute::cast(column, &DataType::Float64).map_err(|e| Error::Internal(format!("reading back `{name}`: {e}")))?;
                let outside = as_f64.as_primitive::<arrow::datatypes::Float64Type>().iter().flatten().find(|v| {
                    v.is_nan() || min.is_some_and(|min| *v < min) || max.is_some_and(|max| *v > max)
                });
                if let Some(bad) = outside {
                    let bounds = format!("{}..={}", min.map(|m| m.to_string()).unwrap_or_default(), max.map(|m| m.to_string()).unwrap_or_default());
                    return Err(blame(format!("returned {name} {bad}, outside {bounds}")));
                }
            }
        }
        let mut names: Vec<String> = order;
        names.extend(columns.keys().filter(|name| !names.contains(name)).cloned().collect::<Vec<_>>());
        let fields: Vec<arrow::datatypes::Field> =
            names.iter().map(|name| arrow::datatypes::Field::new(name, columns[name].data_type().clone(), true)).collect();
        let arrays: Vec<ArrayRef> = names.iter().map(|name| columns[name].clone()).collect();
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(kept.len()));
        let batch = RecordBatch::try_new_with_options(Arc::new(arrow::datatypes::Schema::new(fields)), arrays, &options)
            .map_err(|e| Error::Internal(format!("assembling the chain's output: {e}")))?;
        Ok(Applied { kept, batch, rejected, written: written.into_keys().collect() })
    }
}
