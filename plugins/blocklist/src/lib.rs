//! `blocklist`: rejects ratings by blocklisted users or for blocklisted movies.
//!
//! Config (the plugin's `config` table in the graph file):
//! - `users` (path, optional): a text file of `user_id`s, one per line;
//! - `movies` (path, optional): a text file of `movie_id`s, one per line.
//!
//! At least one list must be given. Paths are relative to the graph file's folder. In the files,
//! blank lines and everything after a `#` are ignored; surrounding spaces are trimmed. A rejected
//! row's reason names the list and the id (`blocklisted user_id u42 (lists/users.txt)`). The lists
//! are read once when the engine starts: changing them takes a restart, which keeps a run
//! deterministic (a replay of the same raw data with the same files decides the same way).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ratings_plugin_sdk::arrow_array::{Array, RecordBatch, StringArray};
use ratings_plugin_sdk::arrow_schema::DataType;
use ratings_plugin_sdk::{Applied, Context, Description, Rule, export_rule};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blocklist {
    users: Option<PathBuf>,
    movies: Option<PathBuf>,
    #[serde(skip)]
    blocked: [(String, HashSet<String>); 2],
}

fn read_list(path: &Path) -> Result<HashSet<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect())
}

impl Rule for Blocklist {
    fn describe() -> Description {
        Description::new("blocklist", env!("CARGO_PKG_VERSION"))
            .input("user_id", DataType::Utf8)
            .input("movie_id", DataType::Utf8)
    }

    fn prepare(&mut self, context: &Context) -> Result<(), String> {
        if self.users.is_none() && self.movies.is_none() {
            return Err("give at least one of `users` and `movies` (files of ids, one per line)".into());
        }
        for (slot, path) in [(0, &self.users), (1, &self.movies)] {
            if let Some(path) = path {
                self.blocked[slot] = (path.display().to_string(), read_list(&context.resolve(path))?);
            }
        }
        Ok(())
    }

    fn apply(&self, batch: &RecordBatch) -> Result<Applied, String> {
        let column = |index: usize| {
            batch.column(index).as_any().downcast_ref::<StringArray>().ok_or_else(|| format!("column {index} is not Utf8"))
        };
        let columns = [("user_id", column(0)?), ("movie_id", column(1)?)];
        let verdicts: StringArray = (0..batch.num_rows())
            .map(|row| {
                columns.iter().zip(&self.blocked).find_map(|((name, ids), (list, blocked))| {
                    let id = ids.is_valid(row).then(|| ids.value(row))?;
                    blocked.contains(id).then(|| format!("blocklisted {name} {id} ({list})"))
                })
            })
            .collect();
        Ok(Applied::verdicts(verdicts))
    }
}

export_rule!(Blocklist);
