//! `approval`: `is_approved = rating >= threshold` (inclusive).
//!
//! Config (the plugin's `config` table in the graph file):
//! - `threshold` (float, default 7.0, between 0 and 10).
//!
//! A null rating gives a null `is_approved`, which the engine refuses; the engine never sends one
//! (a record without a rating is rejected before the rules run).

use std::sync::Arc;

use ratings_plugin_sdk::arrow_array::{Array, BooleanArray, Float32Array, RecordBatch};
use ratings_plugin_sdk::arrow_schema::DataType;
use ratings_plugin_sdk::{Applied, Context, Description, Rule, export_rule};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    #[serde(default = "default_threshold")]
    pub threshold: f32,
}

fn default_threshold() -> f32 {
    7.0
}

impl Rule for Approval {
    fn describe() -> Description {
        Description::new("approval", env!("CARGO_PKG_VERSION"))
            .input("rating", DataType::Float32)
            .output("is_approved", DataType::Boolean)
    }

    fn prepare(&mut self, _context: &Context) -> Result<(), String> {
        if !(0.0..=10.0).contains(&self.threshold) {
            return Err(format!("threshold must be a rating between 0 and 10, found {}", self.threshold));
        }
        Ok(())
    }

    fn apply(&self, batch: &RecordBatch) -> Result<Applied, String> {
        let ratings = batch
            .column(0)
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| format!("rating is {}, expected Float32", batch.column(0).data_type()))?;
        let threshold = self.threshold;
        let approved = BooleanArray::from_unary(ratings, |rating| rating >= threshold);
        Ok(Applied::outputs(vec![Arc::new(approved)]))
    }
}

export_rule!(Approval);

#[cfg(test)]
mod tests {
    use super::*;
    use ratings_plugin_sdk::testing;

    #[test]
    fn threshold_is_inclusive_and_configurable() {
        let ratings = Float32Array::from(vec![0.0, 6.99, 7.0, 7.01, 10.0]);
        let batch = RecordBatch::try_from_iter([("rating", Arc::new(ratings) as _)]).unwrap();
        let (out, verdicts) = testing::apply::<Approval>("{}", &batch).unwrap();
        let approved = out.column(0).as_any().downcast_ref::<BooleanArray>().unwrap();
        assert_eq!(approved.iter().collect::<Vec<_>>(), [false, false, true, true, true].map(Some));
        assert!(verdicts.is_none());
        let (out, _) = testing::apply::<Approval>(r#"{"threshold": 10}"#, &batch).unwrap();
        let approved = out.column(0).as_any().downcast_ref::<BooleanArray>().unwrap();
        assert_eq!(approved.true_count(), 1);
    }

    #[test]
    fn bad_config_is_refused() {
        let batch = RecordBatch::try_from_iter([("rating", Arc::new(Float32Array::from(vec![1.0])) as _)]).unwrap();
        assert!(testing::apply::<Approval>(r#"{"threshold": 11}"#, &batch).unwrap_err().contains("between 0 and 10"));
        assert!(testing::apply::<Approval>(r#"{"treshold": 8}"#, &batch).unwrap_err().contains("unknown field"));
    }
}
