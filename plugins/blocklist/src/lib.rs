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

use ratings_plugin_sdk::arrow_array::builder::StringBuilder;
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
    blocked: [(String, Ids); 2],
}

/// A list's ids. Every record's ids are looked up, so they hash with foldhash rather than std's
/// SipHash; a lookup cannot be slowed by crafted ids, since the set is fixed when it is read.
type Ids = HashSet<String, foldhash::fast::RandomState>;

fn read_list(path: &Path) -> Result<Ids, String> {
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
        let verdict = |row: usize| {
            columns.iter().zip(&self.blocked).find_map(|((name, ids), (list, blocked))| {
                let id = ids.is_valid(row).then(|| ids.value(row))?;
                blocked.contains(id).then(|| format!("blocklisted {name} {id} ({list})"))
            })
        };
        // Nearly every batch blocks no row: find those that are first, and build a column of
        // verdicts only when there are some.
        let rows = batch.num_rows();
        let blocked: Vec<(usize, String)> = (0..rows).filter_map(|row| verdict(row).map(|text| (row, text))).collect();
        let verdicts = match blocked.is_empty() {
            true => StringArray::new_null(rows),
            false => {
                let mut verdicts = StringBuilder::with_capacity(rows, blocked.iter().map(|(_, text)| text.len()).sum());
                let mut next = blocked.iter().peekable();
                for row in 0..rows {
                    match next.next_if(|(blocked_row, _)| *blocked_row == row) {
                        Some((_, text)) => verdicts.append_value(text),
                        None => verdicts.append_null(),
                    }
                }
                verdicts.finish()
            }
        };
        Ok(Applied::verdicts(verdicts))
    }
}

export_rule!(Blocklist);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ratings_plugin_sdk::testing;

    use super::*;

    fn batch(users: &[Option<&str>], movies: &[Option<&str>]) -> RecordBatch {
        let column = |ids: &[Option<&str>]| Arc::new(StringArray::from(ids.to_vec())) as _;
        RecordBatch::try_from_iter([("user_id", column(users)), ("movie_id", column(movies))]).unwrap()
    }

    fn verdicts(config: &str, batch: &RecordBatch) -> Vec<Option<String>> {
        let (_, verdicts) = testing::apply::<Blocklist>(config, batch).unwrap();
        verdicts.unwrap().iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn blocked_rows_get_the_first_list_that_names_them_and_others_none() {
        let dir = std::env::temp_dir().join(format!("blocklist-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("users.txt"), "u1  # a comment\n\n u2\n").unwrap();
        std::fs::write(dir.join("movies.txt"), "m9\n").unwrap();
        let config = format!(r#"{{"users": "{0}/users.txt", "movies": "{0}/movies.txt"}}"#, dir.display());
        let rows = batch(&[Some("u1"), Some("u3"), None, Some("u2"), Some("u4"), Some("u1 ")], &[Some("m9"), Some("m9"), Some("m9"), None, Some("m1"), None]);
        let users = format!("({}/users.txt)", dir.display());
        let movies = format!("({}/movies.txt)", dir.display());
        assert_eq!(
            verdicts(&config, &rows),
            [
                Some(format!("blocklisted user_id u1 {users}")),
                Some(format!("blocklisted movie_id m9 {movies}")),
                Some(format!("blocklisted movie_id m9 {movies}")),
                Some(format!("blocklisted user_id u2 {users}")),
                None,
                None,
            ]
        );
        // A batch that blocks nothing: every verdict null, none as an empty string.
        let clean = batch(&[Some("u3"), Some("u4")], &[Some("m1"), None]);
        assert_eq!(verdicts(&config, &clean), [None, None]);
        assert!(verdicts(&config, &batch(&[], &[])).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
