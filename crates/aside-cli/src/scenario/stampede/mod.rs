//! `aside demo --scenario stampede`: many readers of one missing hot key.
//!
//! Owns the stampede's runs, results and table: `clients` readers released
//! together (a barrier, not a sleep) ask for a key that is not cached while
//! the loader takes `db-read-delay-ms`. Modes: `none` (every miss loads),
//! `lock-sleep` (the article's 5 s lock with 100 ms sleeps) and
//! `aside` (single-flight and a lease). The readers run in this process
//! ([`readers`]), or with `--processes N` in N worker processes sharing the
//! store ([`workers`]), whose queries and latencies are merged: there a
//! reader can only join a load of its own process, and learns of another
//! process's load through the store.

pub mod readers;
pub mod workers;

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use self::readers::{MODES, Readers, Readings, hot_namespace};
use self::workers::Spread;
use super::common::{Setting, percentile};
use super::items::Rows;
use crate::error::{CliError, Result};
use crate::store::{StoreChoice, run_prefix};
use crate::table::render;

/// The outcome of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct StampedeResult {
    /// Run number (1-based) when several runs were asked for.
    pub run: u32,
    /// `none`, `lock-sleep` or `aside`.
    pub mode: String,
    /// Loader calls for all the readers, summed over the processes.
    pub db_queries: u64,
    /// Median reader latency, ms, over every reader of every process.
    pub p50_ms: f64,
    /// 99th-percentile reader latency, ms.
    pub p99_ms: f64,
    /// Slowest reader, ms.
    pub max_ms: f64,
    /// Readers.
    pub clients: usize,
    /// OS processes the readers were spread over (1: all in the demo's).
    pub processes: usize,
    /// Readers that got their answer (all of them, or the run fails).
    pub answered: usize,
    /// How long one loader call takes (the database's read delay), ms: a
    /// waiter's latency cannot be below it, and should not be far above.
    pub loader_ms: f64,
}

impl StampedeResult {
    fn new(run: u32, mode: &str, clients: usize, processes: usize, loader: Duration, mut readings: Readings) -> Self {
        readings.latencies_ms.sort_by(f64::total_cmp);
        let latencies = &readings.latencies_ms;
        StampedeResult {
            run,
            mode: mode.to_owned(),
            db_queries: readings.db_queries,
            p50_ms: percentile(latencies, 50.0),
            p99_ms: percentile(latencies, 99.0),
            max_ms: latencies.last().copied().unwrap_or(0.0),
            clients,
            processes,
            answered: latencies.len(),
            loader_ms: loader.as_secs_f64() * 1000.0,
        }
    }
}

/// Runs every mode `--runs` times, each on a new prefix, and prints the results.
///
/// # Errors
/// `--processes` above 1 on the in-process store or above `--clients`,
/// connection failures, failed reads, and workers that fail.
pub async fn run(setting: &Setting, db: &Path) -> Result<()> {
    let (args, store) = (&setting.args, &setting.store);
    let clients = usize::try_from(args.clients).unwrap_or(usize::MAX);
    let processes = usize::try_from(args.processes).unwrap_or(usize::MAX);
    let delay_ms = args.db_read_delay_ms.unwrap_or(50);
    let delay = Duration::from_millis(delay_ms);
    let spread = if processes > 1 {
        if matches!(store, StoreChoice::Memory(_)) {
            return Err(CliError::new(format!(
                "--processes {processes} needs a store the processes share: add --redis URL or --memcached ADDR \
                 (the in-process store lives in one process)"
            )));
        }
        Some(Spread::new(store, db, delay_ms, clients, processes)?)
    } else {
        None
    };
    let rows = Rows::create(db, 1, delay).await?;
    let mut results = Vec::new();
    for run in 1..=args.runs {
        for mode in MODES {
            if setting.chatty() {
                eprintln!(
                    "stampede: {mode}, {clients} readers{} on {} ...",
                    if processes > 1 {
                        format!(" in {processes} processes")
                    } else {
                        String::new()
                    },
                    store.name()
                );
            }
            let readings = match &spread {
                Some(spread) => spread.run_mode(mode).await?,
                None => run_mode(store, &rows, mode, clients).await?,
            };
            if readings.latencies_ms.len() != clients {
                return Err(CliError::new(format!(
                    "{} of {clients} stampede readers answered",
                    readings.latencies_ms.len()
                )));
            }
            results.push(StampedeResult::new(run, mode, clients, processes, delay, readings));
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
    let headers = [
        "mode",
        "run",
        "clients",
        "processes",
        "db_queries",
        "loader_ms",
        "p50_ms",
        "p99_ms",
        "max_ms",
    ];
    let row = |r: &StampedeResult| {
        vec![
            r.mode.clone(),
            r.run.to_string(),
            r.clients.to_string(),
            r.processes.to_string(),
            r.db_queries.to_string(),
            format!("{:.1}", r.loader_ms),
            format!("{:.1}", r.p50_ms),
            format!("{:.1}", r.p99_ms),
            format!("{:.1}", r.max_ms),
        ]
    };
    render(&headers, results, row, None)
}
