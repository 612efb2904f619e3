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
//! process wrote them. The task hands its result over a channel and then wakes the operator
//! (woken before the result is there, the operator would sleep on with the epoch held open).

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

/// A write in flight: its result arrives on the channel, then the operator is woken.
type Write = std::sync::mpsc::Receiver<crate::Result<Vec<DataFile>>>;

impl RawWriter {
    pub fn build<'scope>(self, rows: StreamVec<'scope, u64, RawRows>) -> StreamVec<'scope, u64, SinkMessage> {
        let scope = rows.scope();
        rows.unary_frontier(Pipeline, "RawWriter", move |_capability, info| {
            let activator = scope.worker().sync_activator_for(info.address.to_vec());
            let mut writing: Vec<(Capability<u64>, Write)> = Vec::new();
            move |(input, _frontier), output| {
                input.for_each_time(|time, data| {
                    for days in data.flat_map(|rows| rows.drain(..)) {
                        let (table, size, prefix, activator) = (self.table.clone(), self.target_file_size, format!("w{}", self.worker), activator.clone());
                        let (done, result) = std::sync::mpsc::channel();
                        self.runtime.spawn(async move {
                            let mut files = Vec::new();
                            let mut failed = None;
                            for (day, batches) in days {
                                match write_partition(&table, day, batches, size, &prefix).await {
                                    Ok(written) => files.extend(written),
                                    Err(error) => {
                                        failed = Some(error);
                                        break;
                                    }
                                }
                            }
                            // The result first, then the wake-up: woken, the operator finds it.
                            // Either fails only when the run has stopped and the operator is gone.
                            let _ = done.send(failed.map_or(Ok(files), Err));
                            let _ = activator.activate();
                        });
                        writing.push((time.retain(0), result));
                    }
                });
                let mut index = 0;
                while index < writing.len() {
                    let written = match writing[index].1.try_recv() {
                        Err(std::sync::mpsc::TryRecvError::Empty) => {
                            index += 1;
                            continue;
                        }
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(crate::Error::Internal("the raw write task panicked".into())),
                        Ok(written) => written,
                    };
                    let (capability, _) = writing.swap_remove(index);
                    let described = written.and_then(|files| files.into_iter().map(|file| FileDescription::of(file, &self.table)).collect::<crate::Result<Vec<_>>>());
                    let message = match described {
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
