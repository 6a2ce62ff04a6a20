//! The stampede's readers, wherever they run: in the demo's process, or in
//! a worker process of `--processes N`.
//!
//! Owns what a mode means for the namespace, starting the readers of the
//! one hot key held at a barrier (so they all ask at once: no sleep), and
//! what they measured ([`Readings`]), which is also what a worker prints
//! for its parent and what the parent merges.

use std::sync::Arc;
use std::time::Instant;

use aside::{Aside, Namespace, Stampede, Strategy};
use serde::{Deserialize, Serialize};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use crate::error::{CliError, Result};
use crate::scenario::items::Rows;

/// The modes, in report order.
pub const MODES: [&str; 3] = ["none", "lock-sleep", "aside"];

/// The key every reader asks for (the only row of the stampede's table).
const HOT_KEY: u64 = 1;

/// The namespace the readers of `mode` read through on `cache`: `none`
/// (every miss loads), `lock-sleep` (the article's 5 s lock with
/// 100 ms sleeps) or `aside` (single-flight and a lease).
///
/// # Errors
/// An unknown mode.
pub fn hot_namespace(cache: &Aside, mode: &str) -> Result<Namespace<u64, u64>> {
    let (strategy, stampede) = match mode {
        "none" => (Strategy::Delete, Stampede::None),
        "lock-sleep" => (Strategy::Delete, Stampede::LockSleep),
        "aside" => (Strategy::Lease, Stampede::Coalesce),
        other => return Err(CliError::new(format!("unknown stampede mode {other:?}"))),
    };
    cache
        .namespace::<u64, u64>("hot")
        .strategy(strategy)
        .stampede(stampede)
        .build()
        .map_err(|e| CliError::new(format!("cannot build the stampede's namespace: {e}")))
}

/// What readers measured: loader calls and every reader's latency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Readings {
    /// Loader calls (database reads) the readers' loads made.
    pub db_queries: u64,
    /// One latency per reader that got its answer, ms.
    pub latencies_ms: Vec<f64>,
}

impl Readings {
    /// Adds `other`'s queries and latencies to these.
    pub fn merge(&mut self, other: Readings) {
        self.db_queries += other.db_queries;
        self.latencies_ms.extend(other.latencies_ms);
    }
}

/// Readers of the hot key, spawned and waiting at a barrier for [`Readers::release`].
pub struct Readers {
    start: Arc<Barrier>,
    tasks: Vec<JoinHandle<Result<f64>>>,
    rows: Rows,
}

impl Readers {
    /// Spawns `clients` readers of the hot key through `hot`, loading from
    /// `rows`; none asks before [`Readers::release`].
    pub fn spawn(hot: &Namespace<u64, u64>, rows: &Rows, clients: usize) -> Readers {
        // One place more than readers: the releasing caller's own.
        let start = Arc::new(Barrier::new(clients + 1));
        let tasks = (0..clients)
            .map(|_| {
                let (hot, rows, start) = (hot.clone(), rows.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    let started = Instant::now();
                    hot.get_or_load(&HOT_KEY, || rows.read(HOT_KEY))
                        .await
                        .map_err(|e| CliError::new(format!("a stampede reader failed: {e}")))?;
                    Ok(started.elapsed().as_secs_f64() * 1000.0)
                })
            })
            .collect();
        Readers {
            start,
            tasks,
            rows: rows.clone(),
        }
    }

    /// Lets every reader ask at once and waits for their answers; the
    /// queries counted are those of `rows` since it was last reset.
    ///
    /// # Errors
    /// The first reader that failed.
    pub async fn release(self) -> Result<Readings> {
        self.start.wait().await;
        let mut latencies_ms = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            latencies_ms.push(
                task.await
                    .map_err(|e| CliError::new(format!("a stampede reader task failed: {e}")))??,
            );
        }
        Ok(Readings {
            db_queries: self.rows.queries(),
            latencies_ms,
        })
    }
}
