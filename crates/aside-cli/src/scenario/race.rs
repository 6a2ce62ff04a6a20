//! `aside demo --scenario race`: the article's read-write race, per strategy.
//!
//! Owns the race workload and its two measures. Readers and writers work a
//! small hot set whose database reads are slow; writers go through a second
//! `Aside` with its own connections, as another service would. A *stale
//! read* returned an older version than one whose invalidation had already
//! returned before the read began; a *stale entry* is a cache entry that
//! disagrees with the database after writers stop and work drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aside::{Namespace, Source, Strategy};
use serde::Serialize;

use super::{Rows, StoreChoice, run_prefix};
use crate::error::{CliError, Result};

/// Settings of one race run.
#[derive(Debug, Clone)]
pub struct RaceOptions {
    /// Hot keys.
    pub keys: u64,
    /// Reader tasks.
    pub readers: usize,
    /// Writer tasks.
    pub writers: usize,
    /// Pause between one writer's writes.
    pub write_interval: Duration,
    /// How long readers and writers run.
    pub duration: Duration,
}

/// The outcome of one strategy's run.
#[derive(Debug, Clone, Serialize)]
pub struct RaceResult {
    /// Run number (1-based) when several runs were asked for.
    pub run: u32,
    /// `delete`, `double-delete`, `versioned` or `lease`.
    pub strategy: String,
    /// Cache entries disagreeing with the database after quiescence.
    pub stale_entries: u64,
    /// Reads older than an invalidation that returned before they began.
    pub stale_reads: u64,
    /// Reads served from the cache, without waiting for a load, over all reads.
    pub hit_ratio: f64,
    /// Hits that were not stale reads, over all reads: what the cache
    /// served correctly.
    pub fresh_hit_ratio: f64,
    /// Loader calls (database reads).
    pub db_queries: u64,
    /// Reads made.
    pub reads: u64,
    /// Writes made.
    pub writes: u64,
    /// Fills refused because an invalidation revoked their lease.
    pub fills_refused: u64,
    /// Readers served by another reader's load (counted as misses).
    pub coalesced: u64,
    /// Median latency of reads that were not hits, ms.
    pub miss_p50_ms: f64,
    /// 99th-percentile latency of reads that were not hits, ms.
    pub miss_p99_ms: f64,
}

/// One run of the race with `strategy`.
///
/// # Errors
/// Database or connection failures, and reads that failed.
pub async fn run_strategy(
    store: &StoreChoice,
    rows: &Rows,
    strategy: Strategy,
    run: u32,
    opts: &RaceOptions,
) -> Result<RaceResult> {
    let prefix = run_prefix("race");
    let reader_cache = store.aside(&prefix).await?;
    let writer_cache = store.aside(&prefix).await?;
    let build = |cache: &aside::Aside| -> Result<Namespace<u64, u64>> {
        cache
            .namespace::<u64, u64>("item")
            .strategy(strategy)
            .build()
            .map_err(|e| CliError::new(format!("cannot build the namespace: {e}")))
    };
    let readers_ns = build(&reader_cache)?;
    let writers_ns = build(&writer_cache)?;
    rows.reset_queries();

    // committed[k]: the newest version whose invalidation has returned.
    let committed: Arc<Vec<AtomicU64>> = Arc::new((0..=opts.keys).map(|_| AtomicU64::new(0)).collect());
    for k in 1..=opts.keys {
        committed[k as usize].store(rows.current(k).await?, Ordering::SeqCst);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counter = || Arc::new(AtomicU64::new(0));
    let (reads, hits, stale_reads, stale_hits, writes) = (counter(), counter(), counter(), counter(), counter());

    let mut writers = Vec::new();
    for w in 0..opts.writers {
        let (ns, rows, committed, stop, writes) = (
            writers_ns.clone(),
            rows.clone(),
            committed.clone(),
            stop.clone(),
            writes.clone(),
        );
        let (keys, interval) = (opts.keys, opts.write_interval);
        writers.push(tokio::spawn(async move {
            let mut i = w as u64;
            while !stop.load(Ordering::Relaxed) {
                let k = (i * 7 + rand::random::<u64>()) % keys + 1;
                let version = rows.write(k).await?;
                // An invalidation that fails is queued by aside; the version
                // is only "committed" once the invalidation returned.
                if ns.invalidate(&k).await.is_ok() {
                    committed[k as usize].fetch_max(version, Ordering::SeqCst);
                }
                writes.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(interval).await;
            }
            Ok::<_, CliError>(())
        }));
    }
    let mut readers = Vec::new();
    for _ in 0..opts.readers {
        let (ns, rows, committed, stop) = (readers_ns.clone(), rows.clone(), committed.clone(), stop.clone());
        let (reads, hits, stale_reads, stale_hits) =
            (reads.clone(), hits.clone(), stale_reads.clone(), stale_hits.clone());
        let keys = opts.keys;
        readers.push(tokio::spawn(async move {
            let mut miss_ms = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let k = rand::random::<u64>() % keys + 1;
                let floor = committed[k as usize].load(Ordering::SeqCst);
                let fetched = ns
                    .fetch(&k, || rows.read(k))
                    .await
                    .map_err(|e| CliError::new(format!("a read failed: {e}")))?;
                reads.fetch_add(1, Ordering::Relaxed);
                if fetched.source == Source::Hit {
                    hits.fetch_add(1, Ordering::Relaxed);
                } else {
                    miss_ms.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                if fetched.value.unwrap_or(0) < floor {
                    stale_reads.fetch_add(1, Ordering::Relaxed);
                    if fetched.source == Source::Hit {
                        stale_hits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // An in-process hit completes without yielding; let the
                // timer and the writers run.
                tokio::task::yield_now().await;
            }
            Ok::<_, CliError>(miss_ms)
        }));
    }
    tokio::time::sleep(opts.duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in writers {
        task.await
            .map_err(|e| CliError::new(format!("a writer failed: {e}")))??;
    }
    let mut miss_ms = Vec::new();
    for task in readers {
        miss_ms.extend(
            task.await
                .map_err(|e| CliError::new(format!("a reader failed: {e}")))??,
        );
    }
    miss_ms.sort_by(f64::total_cmp);
    // Work drains: double-delete's second deletes are still scheduled.
    if let Strategy::DoubleDelete { delay } = strategy {
        tokio::time::sleep(delay + Duration::from_millis(100)).await;
    }
    let mut stale_entries = 0;
    for k in 1..=opts.keys {
        let cached = readers_ns.get(&k).await.map_err(|e| CliError::new(e.to_string()))?;
        let truth = rows.current(k).await?;
        if cached.is_some_and(|v| v != truth) {
            stale_entries += 1;
        }
    }
    let reads = reads.load(Ordering::Relaxed);
    let ratio = |n: u64| if reads == 0 { 0.0 } else { n as f64 / reads as f64 };
    let hits = hits.load(Ordering::Relaxed);
    Ok(RaceResult {
        run,
        strategy: strategy.name().to_owned(),
        stale_entries,
        stale_reads: stale_reads.load(Ordering::Relaxed),
        hit_ratio: ratio(hits),
        fresh_hit_ratio: ratio(hits - stale_hits.load(Ordering::Relaxed)),
        db_queries: rows.queries(),
        reads,
        writes: writes.load(Ordering::Relaxed),
        fills_refused: reader_cache.stats().fills_refused,
        coalesced: reader_cache.stats().coalesced,
        miss_p50_ms: super::percentile(&miss_ms, 50.0),
        miss_p99_ms: super::percentile(&miss_ms, 99.0),
    })
}
