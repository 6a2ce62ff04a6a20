//! `aside demo --scenario db-outage`: the database fails for part of the
//! run, with and without fail-safe.
//!
//! Owns the outage workload, its measures and its table. Readers read random keys back
//! to back; from `outage.start` to `outage.end` (counted from the start of
//! the run) every loader call fails at once, as a refused connection does,
//! and the short TTL makes entries expire during the outage. Modes: `plain`
//! (an expired key is a miss, and the failed load is the reader's error)
//! and `fail-safe` (`fail_safe(60 s, 1 s)`: entries are kept 60 s past their
//! TTL, served when the loader fails, and the loader is retried at most once
//! a second per key meanwhile).

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aside::Source;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::task::JoinSet;

use super::common::Setting;
use super::items::{Rows, fill_all};
use crate::error::{CliError, Result};
use crate::store::{StoreChoice, run_prefix};
use crate::table::render;

/// The modes, in report order.
pub const MODES: [&str; 2] = ["plain", "fail-safe"];

/// Fail-safe's settings in the `fail-safe` mode: how long past its TTL a
/// value is kept, and how long a failed load is not retried.
const MAX_STALE: Duration = Duration::from_secs(60);
const THROTTLE: Duration = Duration::from_secs(1);

/// Settings of one outage run.
#[derive(Debug, Clone)]
pub struct OutageOptions {
    /// Keys, `1..=keys`.
    pub keys: u64,
    /// Reader tasks.
    pub readers: usize,
    /// Entry TTL.
    pub ttl: Duration,
    /// How long the readers run.
    pub duration: Duration,
    /// When the database is down, from the start of the run.
    pub outage: Range<Duration>,
}

/// The outcome of one mode.
#[derive(Debug, Clone, Serialize)]
pub struct OutageResult {
    /// `plain` or `fail-safe`.
    pub mode: String,
    /// Reads made.
    pub requests: u64,
    /// Reads that returned a value rather than an error.
    pub answered: u64,
    /// `answered / requests`.
    pub answered_ratio: f64,
    /// Reads answered from the cache at once (`Source::Hit`; under
    /// fail-safe this includes a stale value re-sealed for the throttle).
    pub hits: u64,
    /// Reads answered with an expired value because the loader failed
    /// (`Source::Stale`).
    pub stale_served: u64,
    /// Reads that returned an error.
    pub errors: u64,
    /// Loader calls (database queries attempted, failed ones included).
    pub db_queries: u64,
    /// Loader calls that failed (made during the outage).
    pub db_errors: u64,
    /// Reads begun while the database was down.
    pub outage_requests: u64,
    /// Of those, reads that returned a value.
    pub outage_answered: u64,
    /// `outage_answered / outage_requests` (0 when there were none).
    pub outage_answered_ratio: f64,
}

/// The database as the loader sees it: [`Rows`], except that every call
/// fails during the outage.
struct FlakyDb {
    rows: Rows,
    started: Instant,
    outage: Range<Duration>,
    calls: AtomicU64,
    failures: AtomicU64,
}

impl FlakyDb {
    fn down(&self) -> bool {
        self.outage.contains(&self.started.elapsed())
    }

    /// The loader: the row's version, or an error while the database is down.
    async fn read(&self, id: u64) -> std::result::Result<Option<u64>, std::io::Error> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.down() {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "database unavailable (simulated outage)",
            ));
        }
        self.rows.read(id).await.map_err(std::io::Error::other)
    }
}

/// One reader's counts, merged at the end.
#[derive(Default)]
struct Tally {
    requests: u64,
    answered: u64,
    hits: u64,
    stale: u64,
    errors: u64,
    outage_requests: u64,
    outage_answered: u64,
}

impl Tally {
    fn merge(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.answered += other.answered;
        self.hits += other.hits;
        self.stale += other.stale;
        self.errors += other.errors;
        self.outage_requests += other.outage_requests;
        self.outage_answered += other.outage_answered;
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// Runs both modes, each on a new prefix, and prints the results.
///
/// # Errors
/// An outage that ends before it starts, connection failures, and reads
/// that failed for another reason than the outage.
pub async fn run(setting: &Setting, db: &Path) -> Result<()> {
    let (args, store) = (&setting.args, &setting.store);
    let start = Duration::from_secs_f64(args.outage_start_s);
    let end = Duration::from_secs_f64(args.outage_end_s);
    if end <= start {
        return Err(CliError::new(format!(
            "--outage-end-s ({}) must be after --outage-start-s ({})",
            args.outage_end_s, args.outage_start_s
        )));
    }
    let opts = OutageOptions {
        keys: args.keys.unwrap_or(100),
        readers: setting.concurrency,
        ttl: Duration::from_secs_f64(setting.ttl.unwrap_or(1.0)),
        duration: Duration::from_secs_f64(setting.duration.unwrap_or(10.0)),
        outage: start..end,
    };
    let delay = Duration::from_millis(args.db_read_delay_ms.unwrap_or(10));
    let rows = Rows::create(db, opts.keys, delay).await?;
    let mut results = Vec::new();
    for mode in MODES {
        if setting.chatty() {
            eprintln!(
                "db-outage: {mode}, {} readers of {} keys, ttl {:?}, database down from {:?} to {:?} of {:?} on {} ...",
                opts.readers,
                opts.keys,
                opts.ttl,
                opts.outage.start,
                opts.outage.end,
                opts.duration,
                store.name()
            );
        }
        results.push(run_mode(store, &rows, mode, &opts).await?);
    }
    setting.print("db-outage", &results, table)
}

/// Runs one mode.
///
/// # Errors
/// Connection failures, and a warm-up read that failed. Failed reads during
/// the run are what is measured, not errors.
pub async fn run_mode(store: &StoreChoice, rows: &Rows, mode: &str, opts: &OutageOptions) -> Result<OutageResult> {
    let cache = store.aside(&run_prefix("db-outage")).await?;
    let builder = cache.namespace::<u64, u64>("item").ttl(opts.ttl);
    let items = match mode {
        "plain" => builder,
        "fail-safe" => builder.fail_safe(MAX_STALE, THROTTLE),
        other => return Err(CliError::new(format!("unknown db-outage mode {other:?}"))),
    }
    .build()
    .map_err(|e| CliError::new(format!("cannot build the namespace: {e}")))?;
    fill_all(&items, rows, opts.keys).await?;
    rows.reset_queries();

    let db = Arc::new(FlakyDb {
        rows: rows.clone(),
        started: Instant::now(),
        outage: opts.outage.clone(),
        calls: AtomicU64::new(0),
        failures: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = JoinSet::new();
    for _ in 0..opts.readers {
        let (items, db, stop) = (items.clone(), db.clone(), stop.clone());
        let keys = opts.keys;
        readers.spawn(async move {
            let mut tally = Tally::default();
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            while !stop.load(Ordering::Relaxed) {
                let k = rng.random_range(1..=keys);
                let during_outage = db.down();
                let fetched = items.fetch(&k, || db.read(k)).await;
                tally.requests += 1;
                tally.outage_requests += u64::from(during_outage);
                match fetched {
                    Ok(fetched) => {
                        tally.answered += 1;
                        tally.outage_answered += u64::from(during_outage);
                        match fetched.source {
                            Source::Hit => tally.hits += 1,
                            Source::Stale => tally.stale += 1,
                            _ => {}
                        }
                    }
                    Err(_) => tally.errors += 1,
                }
                // An in-process hit completes without yielding; let the
                // timer (and the other readers) run.
                tokio::task::yield_now().await;
            }
            tally
        });
    }
    tokio::time::sleep(opts.duration.saturating_sub(db.started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    while let Some(joined) = readers.join_next().await {
        total.merge(&joined.map_err(|e| CliError::new(format!("a reader failed: {e}")))?);
    }

    Ok(OutageResult {
        mode: mode.to_owned(),
        requests: total.requests,
        answered: total.answered,
        answered_ratio: ratio(total.answered, total.requests),
        hits: total.hits,
        stale_served: total.stale,
        errors: total.errors,
        db_queries: db.calls.load(Ordering::Relaxed),
        db_errors: db.failures.load(Ordering::Relaxed),
        outage_requests: total.outage_requests,
        outage_answered: total.outage_answered,
        outage_answered_ratio: ratio(total.outage_answered, total.outage_requests),
    })
}

/// The results, one row per mode.
fn table(results: &[OutageResult]) -> String {
    let headers = [
        "mode",
        "requests",
        "answered",
        "answered%",
        "stale",
        "errors",
        "db_queries",
        "db_errors",
        "outage_reqs",
        "outage_answ%",
    ];
    let row = |r: &OutageResult| {
        vec![
            r.mode.clone(),
            r.requests.to_string(),
            r.answered.to_string(),
            format!("{:.2}", r.answered_ratio * 100.0),
            r.stale_served.to_string(),
            r.errors.to_string(),
            r.db_queries.to_string(),
            r.db_errors.to_string(),
            r.outage_requests.to_string(),
            format!("{:.2}", r.outage_answered_ratio * 100.0),
        ]
    };
    render(
        &headers,
        results,
        row,
        Some(
            "stale: reads answered with an expired value (Source::Stale); outage: reads begun while the database was down",
        ),
    )
}
