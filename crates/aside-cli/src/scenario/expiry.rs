//! `aside demo --scenario expiry`: a hot set whose TTL runs out under load,
//! with and without early refresh.
//!
//! Owns the expiry workload, its measures and its table. The hot keys are filled
//! together before the clock starts (so every mode starts warm and no cold
//! miss is counted), then `readers` tasks read random hot keys back to back
//! while the short TTL runs out, again and again. Modes: `none` (a key is
//! reloaded only once it has expired, and the readers that ask for it
//! meanwhile wait for that load), `xfetch` ([`EarlyRefresh::XFetch`] with
//! beta 1) and `fraction` ([`EarlyRefresh::AfterFraction`] at 0.8). Every
//! mode uses the default lease strategy with single-flight, so a reload is
//! one database query whoever asks; what early refresh changes is who waits
//! for it: only the reader that drew the refresh (the library reloads in
//! that reader's call), not every reader of the key. `xfetch-background`
//! reads through `Namespace::fetch_owned`, whose refresh is spawned, so
//! that no reader waits at all.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aside::{EarlyRefresh, Source};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::task::JoinSet;

use super::common::Setting;
use super::items::{Rows, fill_all};
use crate::error::{CliError, Context, Result};
use crate::store::{StoreChoice, run_prefix};
use crate::table::render;

/// The modes, in report order.
pub const MODES: [&str; 4] = ["none", "xfetch", "fraction", "xfetch-background"];

/// Highest latency the histogram holds: one minute, in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Settings of one expiry run.
#[derive(Debug, Clone)]
pub struct ExpiryOptions {
    /// Hot keys, `1..=keys`.
    pub keys: u64,
    /// Reader tasks.
    pub readers: usize,
    /// Entry TTL (no jitter: keys filled together expire together).
    pub ttl: Duration,
    /// How long a database read takes.
    pub read_delay: Duration,
    /// How long the readers run.
    pub duration: Duration,
}

/// The outcome of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct ExpiryResult {
    /// `none`, `xfetch`, `fraction` or `xfetch-background`.
    pub mode: String,
    /// Loader calls during the run (the warm-up fill is not counted).
    pub db_queries: u64,
    /// `db_queries` per key per TTL of run time: 1 is one reload per expiry.
    pub queries_per_key_per_ttl: f64,
    /// Fills refused because the lease was gone: a reload that began on an
    /// entry just past its logical expiry took a refresh lease on it, the
    /// store then dropped the entry (and the lease) at its physical expiry,
    /// and another reader loaded the key again. Each is one extra query.
    pub fills_refused: u64,
    /// Reads made.
    pub reads: u64,
    /// Reads answered from the cache at once (`Source::Hit`).
    pub hits: u64,
    /// `hits / reads`.
    pub hit_ratio: f64,
    /// Reads that were not hits: they waited for a load (their own, or
    /// another reader's).
    pub waited: u64,
    /// Median read latency, ms.
    pub p50_ms: f64,
    /// 99th-percentile read latency, ms.
    pub p99_ms: f64,
    /// 99.9th-percentile read latency, ms.
    pub p999_ms: f64,
    /// Slowest read, ms.
    pub max_ms: f64,
}

/// The early-refresh policy of a mode.
fn policy(mode: &str) -> Result<Option<EarlyRefresh>> {
    match mode {
        "none" => Ok(None),
        "xfetch" | "xfetch-background" => Ok(Some(EarlyRefresh::XFetch { beta: 1.0 })),
        "fraction" => Ok(Some(EarlyRefresh::AfterFraction(0.8))),
        other => Err(CliError::new(format!("unknown expiry mode {other:?}"))),
    }
}

/// One reader's measurements, merged at the end.
struct Tally {
    latency: Histogram<u64>,
    max_ns: u64,
    reads: u64,
    hits: u64,
}

impl Tally {
    fn new() -> Result<Self> {
        Ok(Tally {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).context("cannot create a latency histogram")?,
            max_ns: 0,
            reads: 0,
            hits: 0,
        })
    }

    fn merge(&mut self, other: &Tally) -> Result<()> {
        self.latency
            .add(&other.latency)
            .context("cannot merge latency histograms")?;
        self.max_ns = self.max_ns.max(other.max_ns);
        self.reads += other.reads;
        self.hits += other.hits;
        Ok(())
    }

    /// A latency quantile in ms, to a tenth of a microsecond.
    fn quantile_ms(&self, quantile: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        ns_to_ms(self.latency.value_at_quantile(quantile))
    }
}

fn ns_to_ms(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10_000.0
}

/// Runs every mode, each on a new prefix, and prints the results.
///
/// # Errors
/// Connection failures and failed reads.
pub async fn run(setting: &Setting, db: &Path) -> Result<()> {
    let (args, store) = (&setting.args, &setting.store);
    let opts = ExpiryOptions {
        keys: args.keys.unwrap_or(10),
        readers: setting.concurrency,
        ttl: Duration::from_secs_f64(setting.ttl.unwrap_or(2.0)),
        read_delay: Duration::from_millis(args.db_read_delay_ms.unwrap_or(50)),
        duration: Duration::from_secs_f64(setting.duration.unwrap_or(10.0)),
    };
    let rows = Rows::create(db, opts.keys, opts.read_delay).await?;
    let mut results = Vec::new();
    for mode in MODES {
        if setting.chatty() {
            eprintln!(
                "expiry: early refresh {mode}, {} readers of {} keys, ttl {:?}, {:?} on {} ...",
                opts.readers,
                opts.keys,
                opts.ttl,
                opts.duration,
                store.name()
            );
        }
        results.push(run_mode(store, &rows, mode, &opts).await?);
    }
    setting.print("expiry", &results, table)
}

/// Runs one mode.
///
/// # Errors
/// Connection failures and failed reads.
pub async fn run_mode(store: &StoreChoice, rows: &Rows, mode: &str, opts: &ExpiryOptions) -> Result<ExpiryResult> {
    let cache = store.aside(&run_prefix("expiry")).await?;
    let builder = cache.namespace::<u64, u64>("hot").ttl(opts.ttl);
    let hot = match policy(mode)? {
        Some(policy) => builder.early_refresh(policy),
        None => builder,
    }
    .build()
    .map_err(|e| CliError::new(format!("cannot build the namespace: {e}")))?;

    // Every key filled together, so that they also expire together.
    fill_all(&hot, rows, opts.keys).await?;
    rows.reset_queries();
    let refused_before = cache.stats().fills_refused;

    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = JoinSet::new();
    for _ in 0..opts.readers {
        let (hot, rows, stop) = (hot.clone(), rows.clone(), stop.clone());
        let keys = opts.keys;
        let background = mode == "xfetch-background";
        readers.spawn(async move {
            let mut tally = Tally::new()?;
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            while !stop.load(Ordering::Relaxed) {
                let k = rng.random_range(1..=keys);
                let started = Instant::now();
                let fetched = if background {
                    let rows = rows.clone();
                    hot.fetch_owned(&k, move || {
                        let rows = rows.clone();
                        async move { rows.read(k).await }
                    })
                    .await
                } else {
                    hot.fetch(&k, || rows.read(k)).await
                }
                .map_err(|e| CliError::new(format!("a read failed: {e}")))?;
                let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(ns.max(1));
                tally.max_ns = tally.max_ns.max(ns);
                tally.reads += 1;
                if fetched.source == Source::Hit {
                    tally.hits += 1;
                }
                // An in-process hit completes without yielding; let the
                // timer (and the other readers) run.
                tokio::task::yield_now().await;
            }
            Ok::<_, CliError>(tally)
        });
    }
    let started = Instant::now();
    tokio::time::sleep(opts.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::new()?;
    while let Some(joined) = readers.join_next().await {
        let tally = joined.map_err(|e| CliError::new(format!("a reader failed: {e}")))??;
        total.merge(&tally)?;
    }
    let ran = started.elapsed();

    let db_queries = rows.queries();
    let fills_refused = cache.stats().fills_refused - refused_before;
    let ttls = ran.as_secs_f64() / opts.ttl.as_secs_f64();
    Ok(ExpiryResult {
        mode: mode.to_owned(),
        db_queries,
        queries_per_key_per_ttl: (db_queries as f64 / opts.keys as f64 / ttls * 100.0).round() / 100.0,
        fills_refused,
        reads: total.reads,
        hits: total.hits,
        hit_ratio: if total.reads == 0 {
            0.0
        } else {
            total.hits as f64 / total.reads as f64
        },
        waited: total.reads - total.hits,
        p50_ms: total.quantile_ms(0.50),
        p99_ms: total.quantile_ms(0.99),
        p999_ms: total.quantile_ms(0.999),
        max_ms: ns_to_ms(total.max_ns),
    })
}

/// The results, one row per mode.
fn table(results: &[ExpiryResult]) -> String {
    let headers = [
        "mode",
        "db_queries",
        "per_ttl",
        "refused",
        "reads",
        "hit_ratio",
        "waited",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
    ];
    let row = |r: &ExpiryResult| {
        vec![
            r.mode.clone(),
            r.db_queries.to_string(),
            format!("{:.2}", r.queries_per_key_per_ttl),
            r.fills_refused.to_string(),
            r.reads.to_string(),
            format!("{:.5}", r.hit_ratio),
            r.waited.to_string(),
            format!("{:.3}", r.p50_ms),
            format!("{:.3}", r.p99_ms),
            format!("{:.3}", r.p999_ms),
            format!("{:.1}", r.max_ms),
        ]
    };
    render(
        &headers,
        results,
        row,
        Some(
            "per_ttl: database queries per key per TTL; refused: fills refused (lease lost); waited: reads that were not hits",
        ),
    )
}
