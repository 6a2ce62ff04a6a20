//! `aside demo --scenario patterns`: one read-heavy workload, its writes
//! made through each caching pattern of the article, measured side by side.
//!
//! Owns the patterns workload, its measures and its table. Readers read
//! random keys back to back while writers update random rows; per pattern:
//!
//! - `cache-aside`: reads `get_or_load`; a write updates the row, then
//!   `invalidate`s the key.
//! - `read-through`: the namespace registers its loader
//!   (`NamespaceBuilder::loader`) and reads are plain `get`s; writes as
//!   cache-aside.
//! - `write-through`: a write updates the row, then caches it with its
//!   version (`write_through`), so the next read is a hit.
//! - `update`: a write runs inside `Namespace::update` (the key fenced for
//!   the database write: linearizable).
//! - `write-back` (with `--redis` only: the log is a Redis Stream): a write
//!   is logged and cached (`Namespace::write_back`) and acknowledged; a
//!   flusher in the same process writes the rows in batches, and is
//!   drained before the rows are compared.
//!
//! Every read is checked against the writes acknowledged before it began:
//! a read returning an older version than one of them is a stale read. At
//! the end every row is compared with the last version a write
//! acknowledged: a row behind it is a lost write.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aside::Namespace;
use aside::writeback::{Flusher, FlusherConfig, LoggedWrite, WriteBackSink};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::task::JoinSet;

use super::common::Setting;
use super::items::Rows;
use crate::error::{CliError, Context, Result};
use crate::store::{StoreChoice, run_prefix};
use crate::table::render;

/// The patterns, in report order.
pub const PATTERNS: [&str; 5] = ["cache-aside", "read-through", "write-through", "update", "write-back"];

/// Highest latency the histograms hold: one minute, in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Settings of one patterns run.
#[derive(Debug, Clone)]
pub struct PatternsOptions {
    /// Keys, `1..=keys`.
    pub keys: u64,
    /// Reader tasks.
    pub readers: usize,
    /// Writer tasks.
    pub writers: u64,
    /// Pause between one writer's writes.
    pub write_interval: Duration,
    /// How long a database read takes.
    pub read_delay: Duration,
    /// Entry TTL.
    pub ttl: Duration,
    /// How long the run lasts.
    pub duration: Duration,
}

/// The outcome of one pattern (the JSON of `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct PatternResult {
    /// `cache-aside`, `read-through`, `write-through`, `update` or `write-back`.
    pub pattern: String,
    /// Reads made.
    pub reads: u64,
    /// Writes made (each acknowledged).
    pub writes: u64,
    /// Database reads (loader calls).
    pub db_reads: u64,
    /// Database writes (for write-back, the writes the flusher applied,
    /// counted after it drained the log).
    pub db_writes: u64,
    /// Reads older than a write acknowledged before they began.
    pub stale_reads: u64,
    /// Median read latency, µs.
    pub read_p50_us: f64,
    /// Median write latency (database and cache), µs.
    pub write_p50_us: f64,
    /// 99th-percentile write latency, µs.
    pub write_p99_us: f64,
    /// Rows behind the last version a write acknowledged, at the end.
    pub lost_writes: u64,
}

/// Runs every pattern, each on a new prefix and a fresh table, and prints
/// the results.
///
/// # Errors
/// Connection failures, failed reads or writes.
pub async fn run(setting: &Setting, db: &Path) -> Result<()> {
    let (args, store) = (&setting.args, &setting.store);
    let opts = PatternsOptions {
        keys: args.keys.unwrap_or(100),
        readers: setting.concurrency,
        writers: args.writers,
        write_interval: Duration::from_millis(args.write_interval_ms),
        read_delay: Duration::from_millis(args.db_read_delay_ms.unwrap_or(1)),
        ttl: Duration::from_secs_f64(setting.ttl.unwrap_or(60.0)),
        duration: Duration::from_secs_f64(setting.duration.unwrap_or(5.0)),
    };
    let mut results = Vec::new();
    for pattern in PATTERNS {
        if pattern == "write-back" && !matches!(store, StoreChoice::Redis(_)) {
            if setting.chatty() {
                eprintln!("patterns: write-back needs --redis (its log is a Redis Stream): skipped");
            }
            continue;
        }
        if setting.chatty() {
            eprintln!(
                "patterns: {pattern}, {} readers and {} writers on {} keys, {:?} on {} ...",
                opts.readers,
                opts.writers,
                opts.keys,
                opts.duration,
                store.name()
            );
        }
        let rows = Rows::create(db, opts.keys, opts.read_delay).await?;
        results.push(run_pattern(store, &rows, pattern, &opts).await?);
    }
    setting.print("patterns", &results, table)
}

/// What every task of one pattern's run shares.
struct Run {
    ns: Namespace<u64, u64>,
    rows: Rows,
    pattern: &'static str,
    /// Per key, the highest version a write acknowledged.
    acked: Vec<AtomicU64>,
    /// Per key, the last version a write-back writer took (the
    /// application's row version: the database is written later).
    taken: Vec<AtomicU64>,
    db_writes: AtomicU64,
    stale_reads: AtomicU64,
    stop: AtomicBool,
}

impl Run {
    fn acked(&self, key: u64) -> &AtomicU64 {
        &self.acked[(key - 1) as usize]
    }

    async fn read(&self, key: u64) -> Result<Option<u64>> {
        let rows = &self.rows;
        let read = match self.pattern {
            "read-through" => self.ns.get(&key).await,
            _ => self.ns.get_or_load(&key, || rows.read(key)).await,
        };
        read.map_err(|e| CliError::new(format!("a read failed: {e}")))
    }

    /// Writes the next version of `key`'s row through the pattern; returns it.
    async fn write(&self, key: u64) -> Result<u64> {
        let failed = |e: aside::Error| CliError::new(format!("a write failed: {e}"));
        let version = match self.pattern {
            "write-through" => {
                let version = self.rows.write(key).await?;
                self.ns.write_through(&key, &version, version).await.map_err(failed)?;
                version
            }
            "write-back" => {
                let version = self.taken[(key - 1) as usize].fetch_add(1, Ordering::SeqCst) + 1;
                self.ns.write_back(&key, &version, version).await.map_err(failed)?;
                // The flusher counts the database writes.
                return Ok(version);
            }
            "update" => {
                let rows = &self.rows;
                let written = self
                    .ns
                    .update(&key, || async move { rows.write(key).await.map(Some) })
                    .await
                    .map_err(failed)?;
                written.ok_or_else(|| CliError::new("an update wrote no row"))?
            }
            _ => {
                let version = self.rows.write(key).await?;
                self.ns.invalidate(&key).await.map_err(failed)?;
                version
            }
        };
        self.db_writes.fetch_add(1, Ordering::Relaxed);
        Ok(version)
    }
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("cannot create a latency histogram")
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Runs one pattern.
///
/// # Errors
/// Connection failures, failed reads or writes.
pub async fn run_pattern(
    store: &StoreChoice,
    rows: &Rows,
    pattern: &'static str,
    opts: &PatternsOptions,
) -> Result<PatternResult> {
    let prefix = run_prefix("patterns");
    let cache = store.aside(&prefix).await?;
    let builder = cache.namespace::<u64, u64>("item").ttl(opts.ttl);
    let builder = if pattern == "read-through" {
        let loader_rows = rows.clone();
        builder.loader(move |key: &u64| {
            let (rows, key) = (loader_rows.clone(), *key);
            async move { rows.read(key).await }
        })
    } else {
        builder
    };
    let (builder, flusher) = match (pattern, store) {
        ("write-back", StoreChoice::Redis(target)) => {
            let log = aside::writeback::WriteBackLog::connect(&target.url)
                .await
                .map_err(|e| CliError::new(format!("cannot connect the write-back log: {e}")))?;
            let stream = log.stream_for(&prefix, "item");
            let sink = RowsSink {
                rows: rows.clone(),
                applied: Arc::new(AtomicU64::new(0)),
            };
            let flusher = Flusher::connect(&target.url, FlusherConfig::new(&stream), sink.clone())
                .await
                .map_err(|e| CliError::new(format!("cannot start the flusher: {e}")))?;
            (builder.write_back(log), Some((flusher, sink, stream)))
        }
        _ => (builder, None),
    };
    let ns = builder
        .build()
        .map_err(|e| CliError::new(format!("cannot build the namespace: {e}")))?;
    let run = Arc::new(Run {
        ns,
        rows: rows.clone(),
        pattern,
        acked: (0..opts.keys).map(|_| AtomicU64::new(0)).collect(),
        taken: (0..opts.keys).map(|_| AtomicU64::new(0)).collect(),
        db_writes: AtomicU64::new(0),
        stale_reads: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    rows.reset_queries();
    let stop_flusher = Arc::new(tokio::sync::Notify::new());
    let flushing = flusher.map(|(mut flusher, sink, stream)| {
        let stop = stop_flusher.clone();
        let task = tokio::spawn(async move {
            flusher.run_until(stop.notified()).await?;
            // What was logged but not yet flushed when the run stopped.
            flusher.flush_available().await?;
            Ok::<_, aside::Error>(())
        });
        (task, sink, stream)
    });

    let mut readers = JoinSet::new();
    for _ in 0..opts.readers {
        let (run, keys) = (run.clone(), opts.keys);
        readers.spawn(async move {
            let mut latency = histogram()?;
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            while !run.stop.load(Ordering::Relaxed) {
                let key = rng.random_range(1..=keys);
                let acked = run.acked(key).load(Ordering::SeqCst);
                let started = Instant::now();
                let got = run.read(key).await?;
                latency.saturating_record(micros(started));
                if got.unwrap_or(0) < acked {
                    run.stale_reads.fetch_add(1, Ordering::Relaxed);
                }
                // An in-process hit completes without yielding.
                tokio::task::yield_now().await;
            }
            Ok::<_, CliError>(latency)
        });
    }
    let mut writers = JoinSet::new();
    for _ in 0..opts.writers {
        let (run, keys, pause) = (run.clone(), opts.keys, opts.write_interval);
        writers.spawn(async move {
            let mut latency = histogram()?;
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            while !run.stop.load(Ordering::Relaxed) {
                let key = rng.random_range(1..=keys);
                let started = Instant::now();
                let version = run.write(key).await?;
                latency.saturating_record(micros(started));
                run.acked(key).fetch_max(version, Ordering::SeqCst);
                tokio::time::sleep(pause).await;
            }
            Ok::<_, CliError>(latency)
        });
    }
    tokio::time::sleep(opts.duration).await;
    run.stop.store(true, Ordering::Relaxed);
    let reads = merged(&mut readers).await?;
    let writes = merged(&mut writers).await?;
    let mut db_writes = run.db_writes.load(Ordering::Relaxed);
    if let Some((task, sink, stream)) = flushing {
        stop_flusher.notify_one();
        task.await
            .map_err(|e| CliError::new(format!("the flusher failed: {e}")))?
            .map_err(|e| CliError::new(format!("the flusher failed: {e}")))?;
        db_writes = sink.applied.load(Ordering::Relaxed);
        drop_stream(store, &stream).await;
    }

    let mut lost_writes = 0;
    for key in 1..=opts.keys {
        if rows.current(key).await? < run.acked(key).load(Ordering::SeqCst) {
            lost_writes += 1;
        }
    }
    let quantile = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64
        }
    };
    Ok(PatternResult {
        pattern: pattern.to_owned(),
        reads: reads.len(),
        writes: writes.len(),
        db_reads: rows.queries(),
        db_writes,
        stale_reads: run.stale_reads.load(Ordering::Relaxed),
        read_p50_us: quantile(&reads, 0.50),
        write_p50_us: quantile(&writes, 0.50),
        write_p99_us: quantile(&writes, 0.99),
        lost_writes,
    })
}

/// The write-back flusher's database: versioned upserts of the rows,
/// counted.
#[derive(Clone)]
struct RowsSink {
    rows: Rows,
    /// Writes the flusher handed over (each an upsert).
    applied: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl WriteBackSink<u64, u64> for RowsSink {
    type Error = sqlx::Error;

    async fn upsert(&self, batch: &[LoggedWrite<u64, u64>]) -> std::result::Result<(), sqlx::Error> {
        for write in batch {
            self.rows.upsert(write.key, write.version).await?;
        }
        self.applied.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Removes the run's write-back stream (empty once drained) and its
/// dead-letter stream from the Redis of `store`: the run's own keys.
async fn drop_stream(store: &StoreChoice, stream: &str) {
    let StoreChoice::Redis(target) = store else { return };
    let Ok(client) = redis::Client::open(target.url.as_str()) else {
        return;
    };
    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(stream)
            .arg(format!("{stream}:dead"))
            .query_async(&mut conn)
            .await;
    }
}

/// Joins every task and merges their histograms.
async fn merged(tasks: &mut JoinSet<Result<Histogram<u64>>>) -> Result<Histogram<u64>> {
    let mut total = histogram()?;
    while let Some(joined) = tasks.join_next().await {
        let latency = joined.map_err(|e| CliError::new(format!("a task failed: {e}")))??;
        total.add(&latency).context("cannot merge latency histograms")?;
    }
    Ok(total)
}

/// The results, one row per pattern.
fn table(results: &[PatternResult]) -> String {
    let headers = [
        "pattern",
        "reads",
        "writes",
        "db_reads",
        "db_writes",
        "stale_reads",
        "read_p50_us",
        "write_p50_us",
        "write_p99_us",
        "lost_writes",
    ];
    let row = |r: &PatternResult| {
        vec![
            r.pattern.clone(),
            r.reads.to_string(),
            r.writes.to_string(),
            r.db_reads.to_string(),
            r.db_writes.to_string(),
            r.stale_reads.to_string(),
            format!("{:.0}", r.read_p50_us),
            format!("{:.0}", r.write_p50_us),
            format!("{:.0}", r.write_p99_us),
            r.lost_writes.to_string(),
        ]
    };
    render(
        &headers,
        results,
        row,
        Some(
            "stale_reads: older than a write acknowledged before the read began; lost_writes: rows behind an acknowledged write",
        ),
    )
}
