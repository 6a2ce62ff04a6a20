//! The workload runner: concurrent reads and writes of user profiles
//! through a cache namespace, measured.
//!
//! Owns the shape of a run ([`Workload`]), the loop each task runs, the
//! live progress bar, and what a run measured ([`Summary`]). It knows
//! nothing of command-line flags or output formats, so every scenario
//! (`demo`, and later others) builds a [`Workload`] and a [`Target`], calls
//! [`run_workload`] and renders the [`Summary`] as it likes.
//!
//! A read is `users.fetch(&id, || db.load_user(id))`: it is a hit when the
//! cache answered (`Source::Hit`) and a miss otherwise (loaded, coalesced
//! with another caller's load, or served stale). A write is the database
//! `UPDATE` followed by `users.invalidate(&id)`, the cache-aside order.
//!
//! The run is also cut into intervals of equal length (see [`interval_for`]):
//! each task counts its reads and hits and records their latencies for the
//! interval it is in, and hands them over to the shared [`Timeline`] when it
//! enters the next one, so the hot path takes no lock. The summary's
//! `timeline` is the hit ratio and latency percentiles of each interval.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use aside::{Aside, Namespace, Source};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::db::{Db, User};
use crate::error::{CliError, Context, Result};
use crate::zipf::Zipf;

/// Highest latency the histograms hold: one minute, in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(100);
/// The shortest interval of the timeline.
const MIN_INTERVAL: Duration = Duration::from_millis(250);
/// The most intervals in a timeline: a long run gets longer intervals, so
/// the timeline's memory (one histogram each) stays bounded.
const MAX_INTERVALS: u32 = 120;

/// The shape of a run: how long, how parallel, how skewed, how write-heavy.
#[derive(Debug, Clone)]
pub struct Workload {
    /// How long the tasks issue operations.
    pub duration: Duration,
    /// Concurrent tasks, each issuing one operation at a time.
    pub concurrency: usize,
    /// Fraction of operations that are writes, in `[0, 1]`.
    pub write_ratio: f64,
    /// Zipf exponent of the key popularity (0 is uniform).
    pub zipf_exponent: f64,
    /// Keys are user ids `1..=users`; rank 1 (the hottest) is id 1.
    pub users: u64,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The namespace has an L1 in front of its store (reported as such).
    pub tiers: bool,
}

/// What a workload runs against: the cache, the namespace of user profiles
/// and the database behind it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The cache (for its store name and counters).
    pub cache: Aside,
    /// The namespace the reads and invalidations go through.
    pub users: Namespace<u64, User>,
    /// The database the loader and the writes hit.
    pub db: Db,
}

/// What a run measured. Rates and ratios are computed, so renderers only format.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Store name (`memory`, `redis`).
    pub store: String,
    /// Invalidation strategy of the namespace.
    pub strategy: String,
    /// Number of distinct keys (user profiles).
    pub users: u64,
    /// Concurrent tasks.
    pub concurrency: usize,
    /// Zipf exponent of key popularity.
    pub zipf_exponent: f64,
    /// Configured fraction of operations that are writes.
    pub write_ratio: f64,
    /// Measured length of the run, seconds.
    pub duration_s: f64,
    /// The run was cut short by Ctrl-C.
    pub interrupted: bool,
    /// Reads (cache requests).
    pub requests: u64,
    /// Writes (database update, then invalidation).
    pub writes: u64,
    /// Reads the cache answered.
    pub hits: u64,
    /// Reads it did not (`requests - hits`).
    pub misses: u64,
    /// `hits / requests`.
    pub hit_ratio: f64,
    /// The namespace had an in-process first tier (L1) in front of the store.
    pub tiers: bool,
    /// Hits the L1 answered (0 without one).
    pub l1_hits: u64,
    /// `l1_hits / requests`.
    pub l1_hit_ratio: f64,
    /// `(hits - l1_hits) / requests`: hits the store (L2) answered.
    pub l2_hit_ratio: f64,
    /// Misses that ran the loader in this call.
    pub loaded: u64,
    /// Misses served by another caller's load.
    pub coalesced: u64,
    /// Misses served a stale value.
    pub stale: u64,
    /// Reads whose user did not exist.
    pub not_found: u64,
    /// Loader `SELECT`s that reached the database.
    pub db_queries: u64,
    /// `db_queries / requests`.
    pub db_query_ratio: f64,
    /// Reads per second.
    pub throughput_rps: f64,
    /// Median latency of a hit, microseconds.
    pub hit_p50_us: f64,
    /// 99th percentile latency of a hit, microseconds.
    pub hit_p99_us: f64,
    /// Median latency of a miss, microseconds.
    pub miss_p50_us: f64,
    /// 99th percentile latency of a miss, microseconds.
    pub miss_p99_us: f64,
    /// Store calls that failed or timed out (read as misses).
    pub store_errors: u64,
    /// Store calls skipped by the open circuit breaker.
    pub store_skipped: u64,
    /// Fills refused because a write revoked the lease while loading.
    pub fills_refused: u64,
    /// Invalidations the store did not take (queued for replay by aside).
    pub invalidation_errors: u64,
    /// The run interval by interval (intervals without a read left out).
    pub timeline: Vec<Interval>,
}

/// One interval of a run: its reads, hit ratio and read latencies (hits and
/// misses together).
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    /// Start of the interval, seconds from the start of the run.
    pub start_s: f64,
    /// End of the interval, seconds from the start of the run.
    pub end_s: f64,
    /// Reads completed in the interval.
    pub reads: u64,
    /// Of them, the hits.
    pub hits: u64,
    /// `hits / reads`.
    pub hit_ratio: f64,
    /// Median read latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile read latency, microseconds.
    pub p99_us: f64,
}

/// The length of one interval of the timeline of a run of `duration`:
/// [`MIN_INTERVAL`], or longer so that there are at most [`MAX_INTERVALS`].
pub fn interval_for(duration: Duration) -> Duration {
    (duration / MAX_INTERVALS).max(MIN_INTERVAL)
}

/// Reads, hits and read latencies of one interval.
struct Bucket {
    reads: u64,
    hits: u64,
    latency: Histogram<u64>,
}

impl Bucket {
    fn new() -> Result<Self> {
        // Two significant digits: a tenth of the memory of the summary's
        // histograms, and plenty for a chart.
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_NS, 2).context("cannot create a latency histogram")?;
        Ok(Bucket {
            reads: 0,
            hits: 0,
            latency,
        })
    }
}

/// The intervals of a run, filled by the tasks as they leave each one.
struct Timeline {
    interval: Duration,
    /// How many intervals (`buckets.len()`, read without the lock).
    count: usize,
    buckets: std::sync::Mutex<Vec<Option<Bucket>>>,
}

impl Timeline {
    fn new(duration: Duration) -> Self {
        let interval = interval_for(duration);
        let count = duration.as_nanos().div_ceil(interval.as_nanos()).max(1);
        let count = usize::try_from(count).unwrap_or(MAX_INTERVALS as usize);
        Timeline {
            interval,
            count,
            buckets: std::sync::Mutex::new((0..count).map(|_| None).collect()),
        }
    }

    /// The interval `elapsed` falls in; a read that ends after the deadline
    /// counts in the last one.
    fn index(&self, elapsed: Duration) -> usize {
        let index = elapsed.as_nanos() / self.interval.as_nanos();
        let last = self.count - 1;
        usize::try_from(index).map_or(last, |i| i.min(last))
    }

    /// Adds one task's `bucket` of interval `index` to the run's.
    fn add(&self, index: usize, bucket: &Bucket) -> Result<()> {
        if bucket.reads == 0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = match buckets.get_mut(index) {
            Some(Some(slot)) => slot,
            Some(empty) => empty.insert(Bucket::new()?),
            None => return Err(CliError::new(format!("no timeline interval {index}"))),
        };
        slot.reads += bucket.reads;
        slot.hits += bucket.hits;
        slot.latency
            .add(&bucket.latency)
            .context("cannot merge latency histograms")
    }

    /// The intervals with reads, the last one ending at `elapsed`.
    fn intervals(&self, elapsed: Duration) -> Vec<Interval> {
        let width = self.interval.as_secs_f64();
        let end = elapsed.as_secs_f64();
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let last = buckets.len() - 1;
        buckets
            .iter()
            .enumerate()
            .filter_map(|(i, bucket)| {
                let bucket = bucket.as_ref()?;
                let start_s = i as f64 * width;
                Some(Interval {
                    start_s,
                    end_s: if i == last {
                        end.max(start_s)
                    } else {
                        (start_s + width).min(end.max(start_s))
                    },
                    reads: bucket.reads,
                    hits: bucket.hits,
                    hit_ratio: ratio(bucket.hits, bucket.reads),
                    p50_us: quantile_us(&bucket.latency, 0.50),
                    p99_us: quantile_us(&bucket.latency, 0.99),
                })
            })
            .collect()
    }
}

/// A task's interval in progress, handed to the [`Timeline`] when the task
/// enters the next one.
struct Current {
    index: usize,
    bucket: Bucket,
}

impl Current {
    /// Counts one read that ended `elapsed` into the run.
    fn record(&mut self, timeline: &Timeline, elapsed: Duration, hit: bool, latency_ns: u64) -> Result<()> {
        let index = timeline.index(elapsed);
        if index != self.index {
            self.flush(timeline)?;
            self.index = index;
        }
        self.bucket.reads += 1;
        self.bucket.hits += u64::from(hit);
        self.bucket.latency.saturating_record(latency_ns);
        Ok(())
    }

    fn flush(&mut self, timeline: &Timeline) -> Result<()> {
        timeline.add(self.index, &self.bucket)?;
        self.bucket.reads = 0;
        self.bucket.hits = 0;
        self.bucket.latency.reset();
        Ok(())
    }
}

/// Live counters shared by the tasks, read by the progress bar.
#[derive(Default)]
struct Live {
    requests: AtomicU64,
    hits: AtomicU64,
    stop: AtomicBool,
}

/// One task's measurements, merged at the end (no contention on the hot path).
struct Tally {
    hit_latency: Histogram<u64>,
    miss_latency: Histogram<u64>,
    writes: u64,
    loaded: u64,
    coalesced: u64,
    stale: u64,
    not_found: u64,
    invalidation_errors: u64,
}

impl Tally {
    fn new() -> Result<Self> {
        let histogram =
            || Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).context("cannot create a latency histogram");
        Ok(Tally {
            hit_latency: histogram()?,
            miss_latency: histogram()?,
            writes: 0,
            loaded: 0,
            coalesced: 0,
            stale: 0,
            not_found: 0,
            invalidation_errors: 0,
        })
    }

    fn merge(&mut self, other: &Tally) -> Result<()> {
        self.hit_latency
            .add(&other.hit_latency)
            .context("cannot merge latency histograms")?;
        self.miss_latency
            .add(&other.miss_latency)
            .context("cannot merge latency histograms")?;
        self.writes += other.writes;
        self.loaded += other.loaded;
        self.coalesced += other.coalesced;
        self.stale += other.stale;
        self.not_found += other.not_found;
        self.invalidation_errors += other.invalidation_errors;
        Ok(())
    }
}

/// Checks a workload before anything runs.
fn validate(workload: &Workload) -> Result<Zipf> {
    if workload.concurrency == 0 {
        return Err(CliError::new("concurrency must be at least 1"));
    }
    if workload.duration.is_zero() {
        return Err(CliError::new("duration must be greater than zero"));
    }
    if !(0.0..=1.0).contains(&workload.write_ratio) {
        return Err(CliError::new(format!(
            "write ratio must be between 0 and 1, not {}",
            workload.write_ratio
        )));
    }
    Zipf::new(workload.users, workload.zipf_exponent).context("invalid key distribution")
}

/// Runs `workload` against `target` and returns what it measured.
///
/// Stops at the end of the duration or on Ctrl-C (the summary then covers
/// the time actually run).
///
/// # Errors
/// An invalid workload, or the first database error of any task (the run
/// stops there). Store errors are not errors here: aside reads them as
/// misses and they are counted in the summary.
pub async fn run_workload(workload: &Workload, target: &Target) -> Result<Summary> {
    let zipf = Arc::new(validate(workload)?);
    let live = Arc::new(Live::default());
    let failure = Arc::new(Mutex::new(None::<CliError>));
    let stats_before = target.cache.stats();
    let queries_before = target.db.queries();
    let timeline = Arc::new(Timeline::new(workload.duration));
    let started = Instant::now();
    let deadline = started + workload.duration;

    let mut tasks = JoinSet::new();
    for _ in 0..workload.concurrency {
        let ctx = TaskContext {
            target: target.clone(),
            zipf: zipf.clone(),
            live: live.clone(),
            failure: failure.clone(),
            write_ratio: workload.write_ratio,
            started,
            deadline,
            timeline: timeline.clone(),
        };
        tasks.spawn(run_task(ctx));
    }

    let bar = elapsed_bar(workload.duration, workload.progress);
    let mut ticker = tokio::time::interval(PROGRESS_TICK);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut listening = true;
    let mut interrupted = false;
    let mut total = Tally::new()?;
    let outcome: Result<()> = loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(Ok(tally))) => {
                    if let Err(e) = total.merge(&tally) {
                        break Err(e);
                    }
                }
                Some(Ok(Err(e))) => break Err(e),
                Some(Err(e)) => break Err(CliError::new(format!("a workload task failed: {e}"))),
                None => break Ok(()),
            },
            _ = ticker.tick() => update_progress(&bar, &live, started, workload.duration),
            signal = &mut ctrl_c, if listening => {
                listening = false;
                // An error means no Ctrl-C handler could be installed: run on.
                if signal.is_ok() {
                    interrupted = true;
                    live.stop.store(true, Ordering::Relaxed);
                    bar.println("interrupted: stopping");
                }
            }
        }
    };
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    // Returning early drops the JoinSet, which aborts any task still running.
    outcome?;
    if let Some(e) = failure.lock().await.take() {
        return Err(e);
    }

    let stats = target.cache.stats();
    let requests = live.requests.load(Ordering::Relaxed);
    let hits = live.hits.load(Ordering::Relaxed);
    // Only this run's fetches read the namespace, so the counter's growth
    // is theirs; an L1 hit is always a `Source::Hit`.
    let l1_hits = (stats.l1_hits - stats_before.l1_hits).min(hits);
    let db_queries = target.db.queries() - queries_before;
    let seconds = elapsed.as_secs_f64();
    Ok(Summary {
        store: target.cache.store().name().to_owned(),
        strategy: target.users.strategy().name().to_owned(),
        users: zipf.ranks(),
        concurrency: workload.concurrency,
        zipf_exponent: workload.zipf_exponent,
        write_ratio: workload.write_ratio,
        duration_s: seconds,
        interrupted,
        requests,
        writes: total.writes,
        hits,
        misses: requests - hits,
        hit_ratio: ratio(hits, requests),
        tiers: workload.tiers,
        l1_hits,
        l1_hit_ratio: ratio(l1_hits, requests),
        l2_hit_ratio: ratio(hits - l1_hits, requests),
        loaded: total.loaded,
        coalesced: total.coalesced,
        stale: total.stale,
        not_found: total.not_found,
        db_queries,
        db_query_ratio: ratio(db_queries, requests),
        throughput_rps: if seconds > 0.0 { requests as f64 / seconds } else { 0.0 },
        hit_p50_us: quantile_us(&total.hit_latency, 0.50),
        hit_p99_us: quantile_us(&total.hit_latency, 0.99),
        miss_p50_us: quantile_us(&total.miss_latency, 0.50),
        miss_p99_us: quantile_us(&total.miss_latency, 0.99),
        store_errors: stats.store_errors - stats_before.store_errors,
        store_skipped: stats.store_skipped - stats_before.store_skipped,
        fills_refused: stats.fills_refused - stats_before.fills_refused,
        invalidation_errors: total.invalidation_errors,
        timeline: timeline.intervals(elapsed),
    })
}

/// `part / whole`, 0 when `whole` is 0.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// A quantile of a nanosecond histogram, in microseconds (0 when empty).
fn quantile_us(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    let ns = histogram.value_at_quantile(quantile);
    // Whole nanoseconds: avoids printing float noise such as 2.0469999.
    (ns as f64).round() / 1_000.0
}

/// What one task needs; owned, so the task is `'static`.
struct TaskContext {
    target: Target,
    zipf: Arc<Zipf>,
    live: Arc<Live>,
    failure: Arc<Mutex<Option<CliError>>>,
    write_ratio: f64,
    started: Instant,
    deadline: Instant,
    timeline: Arc<Timeline>,
}

impl TaskContext {
    /// Records the first failure of the run and stops every task.
    async fn fail(&self, error: CliError) {
        self.live.stop.store(true, Ordering::Relaxed);
        self.failure.lock().await.get_or_insert(error);
    }
}

/// One task: operations back to back until the deadline or a stop.
async fn run_task(ctx: TaskContext) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let mut current = Current {
        index: 0,
        bucket: Bucket::new()?,
    };
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let Target { users, db, .. } = &ctx.target;
    while !ctx.live.stop.load(Ordering::Relaxed) && Instant::now() < ctx.deadline {
        let id = ctx.zipf.sample(&mut rng);
        if rng.random_bool(ctx.write_ratio) {
            if let Err(e) = db.update_user(id, rng.random()).await {
                ctx.fail(CliError::new(format!("database update of user {id} failed: {e}")))
                    .await;
                break;
            }
            // Fail-open: an invalidation the store did not take is queued
            // and replayed by aside; the run goes on and counts it.
            if users.invalidate(&id).await.is_err() {
                tally.invalidation_errors += 1;
            }
            tally.writes += 1;
            continue;
        }

        let started = Instant::now();
        let fetched = users.fetch(&id, || db.load_user(id)).await;
        let latency = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let hit = matches!(&fetched, Ok(f) if f.source == Source::Hit);
        if fetched.is_ok() {
            current.record(&ctx.timeline, ctx.started.elapsed(), hit, latency)?;
        }
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(e) => {
                ctx.fail(CliError::new(format!("read of user {id} failed: {e}"))).await;
                break;
            }
        };
        ctx.live.requests.fetch_add(1, Ordering::Relaxed);
        if fetched.value.is_none() {
            tally.not_found += 1;
        }
        if fetched.source == Source::Hit {
            ctx.live.hits.fetch_add(1, Ordering::Relaxed);
            tally.hit_latency.saturating_record(latency);
        } else {
            tally.miss_latency.saturating_record(latency);
            match fetched.source {
                Source::Coalesced => tally.coalesced += 1,
                Source::Stale => tally.stale += 1,
                _ => tally.loaded += 1,
            }
        }
    }
    current.flush(&ctx.timeline)?;
    Ok(tally)
}

/// A bar on stderr measuring elapsed time against `duration`, or a hidden
/// one when not `visible` (the workload's and `aside soak`'s).
pub(crate) fn elapsed_bar(duration: Duration, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let length = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner:.green} [{bar:30.cyan/blue}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn update_progress(bar: &ProgressBar, live: &Live, started: Instant, duration: Duration) {
    if bar.is_hidden() {
        return;
    }
    let elapsed = started.elapsed().min(duration);
    let requests = live.requests.load(Ordering::Relaxed);
    let hits = live.hits.load(Ordering::Relaxed);
    bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
    bar.set_message(format!(
        "{:.1}s / {}s  {} requests  hit ratio {:.1}%",
        elapsed.as_secs_f64(),
        duration.as_secs_f64(),
        crate::table::count(requests),
        ratio(hits, requests) * 100.0
    ));
}
