//! `aside demo --scenario stampede`: many readers of one missing hot key.
//!
//! Owns the stampede workload: `clients` readers released together (a
//! barrier, not a sleep) ask for a key that is not cached while the loader
//! takes `db-read-delay-ms`. Modes: `none` (every miss loads), `lock-sleep`
//! (the article's `SET NX EX 5` lock with 100 ms sleeps) and `aside`
//! (single-flight and a lease).

use std::sync::Arc;
use std::time::Instant;

use aside::{Stampede, Strategy};
use serde::Serialize;

use super::{Rows, StoreChoice, percentile, run_prefix};
use crate::error::{CliError, Result};

/// The modes, in report order.
pub const MODES: [&str; 3] = ["none", "lock-sleep", "aside"];

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

/// Runs one mode.
///
/// # Errors
/// Connection failures and failed reads.
pub async fn run_mode(store: &StoreChoice, rows: &Rows, mode: &str, clients: usize) -> Result<StampedeResult> {
    let (strategy, stampede) = match mode {
        "none" => (Strategy::Delete, Stampede::None),
        "lock-sleep" => (Strategy::Delete, Stampede::LockSleep),
        "aside" => (Strategy::Lease, Stampede::Coalesce),
        other => return Err(CliError::new(format!("unknown stampede mode {other:?}"))),
    };
    let cache = store.aside(&run_prefix("stampede")).await?;
    let hot = cache
        .namespace::<u64, u64>("hot")
        .strategy(strategy)
        .stampede(stampede)
        .build()
        .map_err(|e| CliError::new(e.to_string()))?;
    rows.reset_queries();
    let barrier = Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (hot, rows, barrier) = (hot.clone(), rows.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let started = Instant::now();
            hot.get_or_load(&1, || rows.read(1))
                .await
                .map_err(|e| CliError::new(e.to_string()))?;
            Ok::<_, CliError>(started.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut latencies = Vec::with_capacity(clients);
    for t in tasks {
        latencies.push(t.await.map_err(|e| CliError::new(e.to_string()))??);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(StampedeResult {
        mode: mode.to_owned(),
        db_queries: rows.queries(),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        clients,
    })
}
