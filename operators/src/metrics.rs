//! Prometheus metrics of a stream run, served as OpenMetrics text on `--metrics-addr`.
//!
//! | metric                                   | type      | labels      | meaning                                   |
//! |------------------------------------------|-----------|-------------|-------------------------------------------|
//! | `ratings_flow_records_total`             | counter   | `stage`     | records through `source`, `raw`, `accepted`, `inserted`, `updated` |
//! | `ratings_flow_rejected_total`            | counter   | `reason`    | records kept out of curated, per reason   |
//! | `ratings_flow_consumer_lag`              | gauge     | `partition` | high watermark minus next offset to read  |
//! | `ratings_flow_epoch_commit_seconds`      | histogram |             | all commits of one epoch                  |
//! | `ratings_flow_table_commit_seconds`      | histogram | `table`     | one table's commit                        |
//! | `ratings_flow_upsert_keys`               | gauge     |             | keys in the upsert state                  |
//! | `ratings_flow_upsert_rows`               | gauge     |             | rows in the upsert arrangement (keys whose row froze have left it) |
//! | `ratings_flow_registry_retries_total`    | counter   |             | failed schema registry attempts           |
//! | `ratings_flow_epochs_total`              | counter   |             | epochs committed                          |
//! | `ratings_flow_checks_total`              | counter   | `check`, `result` | data-quality check runs per epoch, `passed` or `failed` |

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::{Error, Result};

type Labels = Vec<(&'static str, String)>;

fn seconds_histogram() -> Histogram {
    // 5 ms .. ~80 s
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    records: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    consumer_lag: Family<Labels, Gauge>,
    pub epoch_commit_seconds: Histogram,
    table_commit_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    pub upsert_keys: Gauge,
    pub upsert_rows: Gauge,
    pub registry_retries: Counter,
    pub epochs: Counter,
    checks: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("ratings_flow");
        let metrics = Metrics {
            records: Family::default(),
            rejected: Family::default(),
            consumer_lag: Family::default(),
            epoch_commit_seconds: seconds_histogram(),
            table_commit_seconds: Family::new_with_constructor(seconds_histogram),
            upsert_keys: Gauge::default(),
            upsert_rows: Gauge::default(),
            registry_retries: Counter::default(),
            epochs: Counter::default(),
            checks: Family::default(),
            registry: Registry::default(),
        };
        registry.register("records", "Records through each stage", metrics.records.clone());
        registry.register("rejected", "Records kept out of the curated table, per reason", metrics.rejected.clone());
        registry.register("consumer_lag", "High watermark minus the next offset to read, per partition", metrics.consumer_lag.clone());
        registry.register("epoch_commit_seconds", "Time to commit one epoch to all tables", metrics.epoch_commit_seconds.clone());
        registry.register("table_commit_seconds", "Time of one table's commit", metrics.table_commit_seconds.clone());
        registry.register("upsert_keys", "Keys held in the upsert state", metrics.upsert_keys.clone());
        registry.register("upsert_rows", "Rows held in the upsert arrangement (keys whose row froze have left it)", metrics.upsert_rows.clone());
        registry.register("registry_retries", "Failed schema registry attempts", metrics.registry_retries.clone());
        registry.register("epochs", "Epochs committed", metrics.epochs.clone());
        registry.register("checks", "Data-quality check runs, per check and result", metrics.checks.clone());
        Arc::new(Metrics { registry, ..metrics })
    }

    pub fn records(&self, stage: &'static str) -> Counter {
        self.records.get_or_create(&vec![("stage", stage.to_string())]).clone()
    }

    pub fn check(&self, check: &str, passed: bool) -> Counter {
        let result = if passed { "passed" } else { "failed" };
        self.checks.get_or_create(&vec![("check", check.to_string()), ("result", result.to_string())]).clone()
    }

    pub fn rejected(&self, reason: &str) -> Counter {
        self.rejected.get_or_create(&vec![("reason", reason.to_string())]).clone()
    }

    pub fn consumer_lag(&self, partition: i32) -> Gauge {
        self.consumer_lag.get_or_create(&vec![("partition", partition.to_string())]).clone()
    }

    pub fn table_commit_seconds(&self, table: &'static str) -> Histogram {
        self.table_commit_seconds.get_or_create(&vec![("table", table.to_string())]).clone()
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Serves [`Metrics::render`] on `addr` from a background thread, for the life of the process.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> Result<()> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| Error::User(format!("cannot serve metrics on {addr}: {e}")))?;
        let metrics = self.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                let content_type = tiny_http::Header::from_bytes(
                    "Content-Type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .expect("a valid header");
                for request in server.incoming_requests() {
                    let response = tiny_http::Response::from_string(metrics.render()).with_header(content_type.clone());
                    if let Err(error) = request.respond(response) {
                        tracing::debug!(%error, "metrics client went away");
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("starting the metrics thread: {e}")))?;
        tracing::info!(%addr, "serving metrics");
        Ok(())
    }
}
