//! `aside demo --scenario race`: the article's read-write race, per strategy.
//!
//! Owns the race workload, its two measures and its table. Readers and writers work a
//! small hot set whose database reads are slow; writers go through a second
//! `Aside` with its own connections, as another service would. A *stale
//! read* returned an older version than one whose invalidation had already
//! returned before the read began; a *stale entry* is a cache entry that
//! disagrees with the database after writers stop and work drains.
//!
//! With `--l1`, both engines put an L1 in front of the store and join an
//! invalidation bus (a `RedisBus` each on Redis, one shared
//! [`MemoryBus`] on the in-process store). A writer's invalidation evicts
//! its own L1 at once but reaches the readers' L1 asynchronously, so a read
//! that begins after the invalidation returned may still hit the old L1
//! copy for as long as the bus takes: `stale_reads` can be above 0 with
//! any strategy, bounded by the bus latency. Once the bus has delivered
//! everything, no copy may be stale: the run waits for that (a sentinel
//! invalidation published after the last write reaches the readers' engine,
//! then no message for [`QUIET`]) before counting stale entries in either
//! tier: `readers_ns.get` reads the L1 then the store, and a namespace
//! without L1 on the same prefix reads the store alone.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aside::bus::Invalidation;
use aside::{Aside, Namespace, Source, Strategy};
use serde::Serialize;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::{Instant, timeout};

use aside_testkit::fault::MemoryBus;

use super::common::{Setting, percentile};
use super::items::Rows;
use crate::error::{CliError, Result};
use crate::store::{StoreChoice, run_prefix};
use crate::table::render;

/// Capacity of each engine's L1 with `--l1` (far above the hot set).
const L1_ENTRIES: u64 = 10_000;
/// L1 TTL with `--l1`: longer than any run, so only the bus keeps it coherent.
const L1_TTL: Duration = Duration::from_secs(600);
/// The bus is quiet once no message arrived for this long.
const QUIET: Duration = Duration::from_millis(200);
/// Bound on waiting for the bus (to come up, or to go quiet).
const BUS_WAIT: Duration = Duration::from_secs(10);
/// The key the bus probes invalidate: outside the hot set `1..=keys`.
const PROBE_KEY: u64 = 0;

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
    /// An L1 on both engines, kept coherent by an invalidation bus.
    pub l1: bool,
}

/// The outcome of one strategy's run.
#[derive(Debug, Clone, Serialize)]
pub struct RaceResult {
    /// Run number (1-based) when several runs were asked for.
    pub run: u32,
    /// `delete`, `double-delete`, `versioned` or `lease`.
    pub strategy: String,
    /// The engines had an L1 (and a bus).
    pub l1: bool,
    /// Keys whose cached value, in the readers' L1 or in the store,
    /// disagrees with the database after quiescence.
    pub stale_entries: u64,
    /// Of those, keys whose store (L2) entry disagrees (0 without an L1
    /// means the same as `stale_entries`).
    pub stale_l2_entries: u64,
    /// Reads older than an invalidation that returned before they began.
    pub stale_reads: u64,
    /// Reads served from the cache, without waiting for a load, over all reads.
    pub hit_ratio: f64,
    /// Hits that were not stale reads, over all reads: what the cache
    /// served correctly.
    pub fresh_hit_ratio: f64,
    /// Reads the readers' L1 answered, over all reads (0 without an L1).
    pub l1_hit_ratio: f64,
    /// Loader calls (database reads).
    pub db_queries: u64,
    /// Reads made.
    pub reads: u64,
    /// Reads completed (the same count as `reads`, under the name the
    /// cross-library harness uses).
    pub calls: u64,
    /// Database reads per completed read: below 1.0 when the cache takes
    /// load off the database, above it when it adds load.
    pub db_reads_per_call: f64,
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

/// Runs the race `--runs` times with each strategy asked for (default: all
/// four) and prints the results.
///
/// # Errors
/// Database or connection failures, and reads that failed.
pub async fn run(setting: &Setting, db: &Path) -> Result<()> {
    let (args, store) = (&setting.args, &setting.store);
    let delay = Duration::from_millis(args.db_read_delay_ms.unwrap_or(20));
    let keys = args.keys.unwrap_or(10);
    let rows = Rows::create(db, keys, delay).await?;
    let race = RaceOptions {
        keys,
        readers: setting.concurrency,
        writers: args.writers as usize,
        write_interval: Duration::from_millis(args.write_interval_ms),
        duration: Duration::from_secs_f64(setting.duration.unwrap_or(3.0)),
        l1: args.l1,
    };
    let strategies = if args.strategies.is_empty() {
        Strategy::all().to_vec()
    } else {
        args.strategies.clone()
    };
    let mut results = Vec::new();
    for run in 1..=args.runs {
        for &strategy in &strategies {
            if setting.chatty() {
                eprintln!(
                    "race run {run}/{}: {strategy} on {}{} ...",
                    args.runs,
                    store.name(),
                    if args.l1 { " behind an L1 on both engines" } else { "" }
                );
            }
            results.push(run_strategy(store, &rows, strategy, run, &race).await?);
        }
    }
    setting.print("race", &results, table)
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
    let (reader_cache, writer_cache) = if opts.l1 {
        let bus = MemoryBus::new();
        (
            store.aside_on_bus(&prefix, &bus).await?,
            store.aside_on_bus(&prefix, &bus).await?,
        )
    } else {
        (store.aside(&prefix).await?, store.aside(&prefix).await?)
    };
    let build = |cache: &Aside, l1: bool| -> Result<Namespace<u64, u64>> {
        let mut builder = cache.namespace::<u64, u64>("item").strategy(strategy);
        if l1 {
            builder = builder.l1(L1_ENTRIES, L1_TTL);
        }
        builder
            .build()
            .map_err(|e| CliError::new(format!("cannot build the namespace: {e}")))
    };
    let readers_ns = build(&reader_cache, opts.l1)?;
    let writers_ns = build(&writer_cache, opts.l1)?;
    // The readers' engine's view of the bus, kept to wait for quiescence.
    let mut reader_events = None;
    if opts.l1 {
        let (Some(mut heard_by_readers), Some(mut heard_by_writers)) =
            (reader_cache.invalidations(), writer_cache.invalidations())
        else {
            return Err(CliError::new("the race's engines have no invalidation bus"));
        };
        // Both subscriptions must be up before the race starts, or the
        // first invalidations could be missed (pub/sub keeps nothing).
        bus_carries(&writers_ns, &mut heard_by_readers).await?;
        bus_carries(&writers_ns, &mut heard_by_writers).await?;
        reader_events = Some(heard_by_readers);
    }
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
    // Taken before the check below, whose L1 reads count as L1 hits.
    let l1_hits = reader_cache.stats().l1_hits;
    if let Some(events) = reader_events.as_mut() {
        settle(&writers_ns, events).await?;
    }
    // The store alone: an engine without L1 on the same prefix.
    let l2_ns = if opts.l1 {
        Some(build(&store.aside(&prefix).await?, false)?)
    } else {
        None
    };
    let (mut stale_entries, mut stale_l2_entries) = (0, 0);
    for k in 1..=opts.keys {
        let truth = rows.current(k).await?;
        let stale = |cached: Option<u64>| cached.is_some_and(|v| v != truth);
        let either = stale(readers_ns.get(&k).await.map_err(|e| CliError::new(e.to_string()))?);
        let l2 = match &l2_ns {
            Some(ns) => stale(ns.get(&k).await.map_err(|e| CliError::new(e.to_string()))?),
            None => either,
        };
        stale_entries += u64::from(either || l2);
        stale_l2_entries += u64::from(l2);
    }
    let reads = reads.load(Ordering::Relaxed);
    let ratio = |n: u64| if reads == 0 { 0.0 } else { n as f64 / reads as f64 };
    let hits = hits.load(Ordering::Relaxed);
    Ok(RaceResult {
        run,
        strategy: strategy.name().to_owned(),
        l1: opts.l1,
        stale_entries,
        stale_l2_entries,
        stale_reads: stale_reads.load(Ordering::Relaxed),
        hit_ratio: ratio(hits),
        fresh_hit_ratio: ratio(hits - stale_hits.load(Ordering::Relaxed)),
        l1_hit_ratio: ratio(l1_hits.min(hits)),
        db_queries: rows.queries(),
        reads,
        calls: reads,
        db_reads_per_call: ratio(rows.queries()),
        writes: writes.load(Ordering::Relaxed),
        fills_refused: reader_cache.stats().fills_refused,
        coalesced: reader_cache.stats().coalesced,
        miss_p50_ms: percentile(&miss_ms, 50.0),
        miss_p99_ms: percentile(&miss_ms, 99.0),
    })
}

/// Waits until `events` carries a message, publishing probe invalidations
/// through `from` until one arrives (an engine's subscription is up once
/// anything reaches it), then drains what else came.
///
/// # Errors
/// When nothing arrived within [`BUS_WAIT`].
async fn bus_carries(from: &Namespace<u64, u64>, events: &mut broadcast::Receiver<Invalidation>) -> Result<()> {
    let deadline = Instant::now() + BUS_WAIT;
    loop {
        // A probe the store did not take is still published.
        let _ = from.invalidate(&PROBE_KEY).await;
        if timeout(Duration::from_millis(100), events.recv()).await.is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(CliError::new("the invalidation bus never delivered a message"));
        }
    }
    while events.try_recv().is_ok() {}
    Ok(())
}

/// Waits until the bus has delivered every invalidation made so far to the
/// engine `events` belongs to: a sentinel invalidation published through
/// `from` after the last write must arrive (the bus keeps one publisher's
/// order, and an engine evicts before it reports a message), then no
/// message for [`QUIET`]. Both bounded by [`BUS_WAIT`].
///
/// # Errors
/// When the sentinel did not arrive in time.
async fn settle(from: &Namespace<u64, u64>, events: &mut broadcast::Receiver<Invalidation>) -> Result<()> {
    let sentinel = from
        .store_key(&PROBE_KEY)
        .map_err(|e| CliError::new(format!("cannot name the sentinel key: {e}")))?;
    let deadline = Instant::now() + BUS_WAIT;
    let _ = from.invalidate(&PROBE_KEY).await;
    let mut sentinel_seen = false;
    while Instant::now() < deadline {
        match timeout(QUIET, events.recv()).await {
            Ok(Ok(message)) => sentinel_seen |= message.keys.contains(&sentinel),
            // Missed messages were delivered (and evicted) all the same;
            // only this receiver fell behind.
            Ok(Err(RecvError::Lagged(_))) => {}
            Ok(Err(RecvError::Closed)) => break,
            Err(_quiet) if sentinel_seen => return Ok(()),
            Err(_quiet) => {}
        }
    }
    if sentinel_seen {
        Ok(())
    } else {
        Err(CliError::new(
            "the invalidation bus did not deliver the end-of-run sentinel in time",
        ))
    }
}

/// The results, one row per strategy and run.
fn table(results: &[RaceResult]) -> String {
    let l1 = results.iter().any(|r| r.l1);
    let mut headers = vec![
        "strategy",
        "run",
        "stale_entries",
        "stale_reads",
        "hit_ratio",
        "fresh_hit_ratio",
        "db_queries",
        "reads",
        "db_reads_per_call",
        "writes",
        "fills_refused",
    ];
    if l1 {
        headers.extend(["l1_hit_ratio", "stale_l2_entries"]);
    }
    let row = |r: &RaceResult| {
        let mut row = vec![
            r.strategy.clone(),
            r.run.to_string(),
            r.stale_entries.to_string(),
            r.stale_reads.to_string(),
            format!("{:.3}", r.hit_ratio),
            format!("{:.3}", r.fresh_hit_ratio),
            r.db_queries.to_string(),
            r.reads.to_string(),
            format!("{:.3}", r.db_reads_per_call),
            r.writes.to_string(),
            r.fills_refused.to_string(),
        ];
        if l1 {
            row.extend([format!("{:.3}", r.l1_hit_ratio), r.stale_l2_entries.to_string()]);
        }
        row
    };
    render(
        &headers,
        results,
        row,
        l1.then_some(
            "with an L1: stale_entries counts keys stale in the L1 or the store after the bus went quiet; \
             stale_reads include L1 hits read before another engine's invalidation reached this one over the bus",
        ),
    )
}
