//! The measuring loop of `aside bench`: a fixed number of operations
//! spread over `concurrency` tasks, timed as a whole or one by one.
//!
//! Throughput and latency come from two passes over the same operations.
//! Reading the clock twice per operation costs tens of nanoseconds, as much
//! as a whole in-process hit; a throughput pass without per-operation timing
//! keeps that cost out of the ratios, and a second pass records each
//! operation's latency in an HDR histogram (per task, merged at the end, so
//! tasks never share a lock).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::error::{CliError, Result};

/// One operation of a bench subject: read the profile of `id` and check it.
///
/// Each subject is its own type, so the loop is monomorphised per subject
/// and no subject pays for a boxed future the others do not.
pub trait Op: Clone + Send + Sync + 'static {
    /// Reads `id`, failing if the answer is missing or not `id`'s.
    fn call(&self, id: u64) -> impl Future<Output = Result<()>> + Send;
}

/// What one pass measured.
#[derive(Debug)]
pub struct Pass {
    /// Operations made (`ops` rounded up to a multiple of the concurrency).
    pub ops: u64,
    /// Wall time from the first task's start to the last task's end.
    pub elapsed: Duration,
    /// Per-operation latency in nanoseconds (latency passes only).
    pub latency: Option<Histogram<u64>>,
}

/// Runs `ops` calls of `op` over `ids` (cycled) on `concurrency` tasks.
///
/// # Errors
/// The first failed operation, or a task that panicked.
pub async fn drive<O: Op>(op: &O, ids: &Arc<[u64]>, concurrency: usize, ops: u64, timed: bool) -> Result<Pass> {
    let concurrency = concurrency.max(1);
    let per_task = ops.div_ceil(concurrency as u64);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for task in 0..concurrency {
        let (op, ids) = (op.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram = if timed { Some(new_histogram()?) } else { None };
            // Tasks start at different offsets, so they do not read the
            // same key at the same time.
            let offset = task * ids.len() / concurrency;
            for i in 0..per_task as usize {
                let id = ids[(offset + i) % ids.len()];
                match histogram.as_mut() {
                    Some(h) => {
                        let t = Instant::now();
                        op.call(id).await?;
                        h.saturating_record(t.elapsed().as_nanos().try_into().unwrap_or(u64::MAX));
                    }
                    None => op.call(id).await?,
                }
            }
            Ok::<_, CliError>(histogram)
        }));
    }
    let mut merged: Option<Histogram<u64>> = None;
    for task in tasks {
        let histogram = task
            .await
            .map_err(|e| CliError::new(format!("a bench task failed: {e}")))??;
        if let Some(h) = histogram {
            match merged.as_mut() {
                Some(m) => m
                    .add(&h)
                    .map_err(|e| CliError::new(format!("cannot merge latencies: {e}")))?,
                None => merged = Some(h),
            }
        }
    }
    Ok(Pass {
        ops: per_task * concurrency as u64,
        elapsed: started.elapsed(),
        latency: merged,
    })
}

/// Nanoseconds from 1 to 60 s, 3 significant digits.
fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| CliError::new(format!("cannot make a histogram: {e}")))
}
