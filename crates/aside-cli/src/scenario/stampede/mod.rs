//! `aside demo --scenario stampede`: many readers of one missing hot key.
//!
//! Owns the stampede's runs, results and table: `clients` readers released
//! together (a barrier, not a sleep) ask for a key that is not cached while
//! the loader takes `db-read-delay-ms`. Modes: `none` (every miss loads),
//! `lock-sleep` (the article's `SET NX EX 5` lock with 100 ms sleeps) and
//! `aside` (single-flight and a lease). The readers are in [`readers`].

pub mod readers;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use self::readers::{MODES, Readers, Readings, hot_namespace};
use super::common::{Setting, percentile};
use super::items::Rows;
use crate::error::Result;
use crate::store::{StoreChoice, run_prefix};
use crate::table::render;

/// The outcome of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct StampedeResult {
    /// `none`, `lock-sleep` or `aside`.
    pub mode: String,
    /// Loader calls for all the readers.
    pub db_queries: u64,
    /// Median reader latency, ms.
    pub p50_ms: f64,
    /// 99th-percentile reader latency, ms.
    pub p99_ms: f64,
    /// Slowest reader, ms.
    pub max_ms: f64,
    /// Readers.
    pub clients: usize,
}

impl StampedeResult {
    fn new(mode: &str, clients: usize, mut readings: Readings) -> Self {
        readings.latencies_ms.sort_by(f64::total_cmp);
        let latencies = &readings.latencies_ms;
        StampedeResult {
            mode: mode.to_owned(),
            db_queries: readings.db_queries,
            p50_ms: percentile(latencies, 50.0),
            p99_ms: percentile(latencies, 99.0),
            max_ms: latencies.last().copied().unwrap_or(0.0),
            clients,
        }
    }
}

/// Runs every mode `--runs` times, each on a new prefix, and prints the results.
///
/// # Errors
/// Connection failures and failed reads.
pub async fn run(setting: &Setting, db: &Path) -> Result<()> {
    let (args, store) = (&setting.args, &setting.store);
    let clients = usize::try_from(args.clients).unwrap_or(usize::MAX);
    let delay = Duration::from_millis(args.db_read_delay_ms.unwrap_or(50));
    let rows = Rows::create(db, 1, delay).await?;
    let mut results = Vec::new();
    for _ in 1..=args.runs {
        for mode in MODES {
            if setting.chatty() {
                eprintln!("stampede: {mode}, {clients} readers on {} ...", store.name());
            }
            let readings = run_mode(store, &rows, mode, clients).await?;
            results.push(StampedeResult::new(mode, clients, readings));
        }
    }
    setting.print("stampede", &results, table)
}

/// Runs one mode with every reader in this process.
///
/// # Errors
/// Connection failures and failed reads.
pub async fn run_mode(store: &StoreChoice, rows: &Rows, mode: &str, clients: usize) -> Result<Readings> {
    let cache = store.aside(&run_prefix("stampede")).await?;
    let hot = hot_namespace(&cache, mode)?;
    rows.reset_queries();
    Readers::spawn(&hot, rows, clients).release().await
}

/// The results, one row per mode and run.
fn table(results: &[StampedeResult]) -> String {
    let headers = ["mode", "clients", "db_queries", "p50_ms", "p99_ms", "max_ms"];
    let row = |r: &StampedeResult| {
        vec![
            r.mode.clone(),
            r.clients.to_string(),
            r.db_queries.to_string(),
            format!("{:.1}", r.p50_ms),
            format!("{:.1}", r.p99_ms),
            format!("{:.1}", r.max_ms),
        ]
    };
    render(&headers, results, row, None)
}
