//! The stream's raw writer: each worker's rows of a closed epoch become raw data files.
//!
//! ```text
//!  driver (per worker): at an epoch's close, its rows per ingestion date
//!        │ RawRows (stays on the worker: no exchange)
//!        ▼
//!  RawWriter: writes them on the I/O runtime while the driver reads the next epoch,
//!  holding the epoch open until the write is done
//!        │ RawFiles (descriptions) ── or Failed, when the write failed
//!        ▼
//!  committer (worker 0, any process): the raw commit adds every worker's files
//! ```
//!
//! The write runs off the worker thread, so a worker keeps reading Kafka while its last epoch is
//! written. The epoch stays open (the operator keeps its capability) until the write is done, so
//! the committer sees the epoch complete only with every worker's raw files in hand, whichever
//! process wrote them. The task wakes the operator when it is done.

use std::sync::Arc;

use arrow::array::RecordBatch;
use iceberg::spec::DataFile;
use iceberg::table::Table;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use crate::sink::{Failure, FileDescription, SinkMessage};
use crate::writer::write_partition;

/// One worker's rows of one epoch, per ingestion date.
pub type RawRows = Vec<(i32, Vec<RecordBatch>)>;

pub struct RawWriter {
    pub table: Table,
    pub runtime: tokio::runtime::Handle,
    pub target_file_size: usize,
    pub worker: usize,
    pub process: usize,
    pub failure: Failure,
}

type Write = tokio::task::JoinHandle<crate::Result<Vec<DataFile>>>;

impl RawWriter {
    pub fn build<'scope>(self, rows: StreamVec<'scope, u64, RawRows>) -> StreamVec<'scope, u64, SinkMessage> {
        let scope = rows.scope();
        rows.unary_frontier(Pipeline, "RawWriter", move |_capability, info| {
            let activator = Arc::new(scope.worker().sync_activator_for(info.address.to_vec()));
            let mut writing: Vec<(Capability<u64>, Write)> = Vec::new();
            move |(input, _frontier), output| {
                input.for_each_time(|time, data| {
                    for days in data.flat_map(|rows| rows.drain(..)) {
                        let (table, size, prefix, activator) = (self.table.clone(), self.target_file_size, format!("w{}", self.worker), activator.clone());
                        let write = self.runtime.spawn(async move {
                            let mut files = Vec::new();
                            for (day, batches) in days {
                                match write_partition(&table, day, batches, size, &prefix).await {
                                    Ok(written) => files.extend(written),
                                    Err(error) => {
                                        let _ = activator.activate();
                                        return Err(error);
                                    }
                                }
                            }
                            // The operator may already be gone when the run stopped: nothing to wake.
                            let _ = activator.activate();
                            Ok(files)
                        });
                        writing.push((time.retain(0), write));
                    }
                });
                let mut index = 0;
                while index < writing.len() {
                    if !writing[index].1.is_finished() {
                        index += 1;
                        continue;
                    }
                    let (capability, mut write) = writing.swap_remove(index);
                    let written = self
                        .runtime
                        .block_on(&mut write)
                        .map_err(|error| crate::Error::Internal(format!("the raw write task failed: {error}")))
                        .and_then(|written| written)
                        .and_then(|files| files.into_iter().map(|file| FileDescription::of(file, &self.table)).collect::<crate::Result<Vec<_>>>());
                    let message = match written {
                        Ok(files) => SinkMessage::RawFiles(files),
                        Err(error) => {
                            let message = SinkMessage::Failed { process: self.process, message: error.to_string() };
                            self.failure.set(error);
                            message
                        }
                    };
                    output.session(&capability).give(message);
                }
            }
        })
    }
}
