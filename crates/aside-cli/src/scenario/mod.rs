//! The demo's scenarios beyond the main workload: `race`, `stampede`,
//! `expiry`, `db-outage` and `chaos`.
//!
//! Owns what the scenarios share: a table of versioned rows in an SQLite
//! file (each write bumps a row's version, so a read can tell how old its
//! answer is), the slow read of the article's race ("the row is read, the
//! answer comes later"), building caches on either store, the scenarios'
//! flags and their tables. Each scenario lives in its own module and only
//! reports; only [`run`] prints.

pub mod chaos;
pub mod db_outage;
pub mod expiry;
pub mod race;
pub mod stampede;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aside::bus::redis::RedisBus;
use aside::store::memcached::MemcachedStore;
use aside::store::redis::RedisStore;
use aside::{Aside, AsideBuilder, MemoryStore, Namespace, Store, Strategy};
use aside_testkit::fault::MemoryBus;
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

use crate::demo::DemoArgs;
use crate::error::{CliError, Context, Result};

/// The store flags every subcommand that caches takes.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Use the Redis server at this URL instead of the in-process store.
    #[arg(long, value_name = "URL", conflicts_with = "memcached")]
    pub redis: Option<String>,

    /// Use memcached (1.6+) at this address instead of the in-process
    /// store; several servers separated by commas share the keys by
    /// consistent hashing.
    #[arg(long, value_name = "ADDR[,ADDR...]")]
    pub memcached: Option<String>,
}

impl StoreArgs {
    /// The store these flags name.
    pub fn choice(&self) -> StoreChoice {
        StoreChoice::choose(self.redis.as_deref(), self.memcached.as_deref())
    }
}

/// Where the scenarios keep their cache.
#[derive(Clone)]
pub enum StoreChoice {
    /// One in-process store, shared by the scenario's `Aside`s as one Redis would be.
    Memory(Arc<dyn Store>),
    /// A Redis server; every `Aside` gets its own connection, as another service would.
    Redis(String),
    /// memcached at these addresses (comma-separated); every `Aside` gets its
    /// own connection pool. memcached has no pub/sub, so engines with an L1
    /// share the in-process bus (they all live in this process).
    Memcached(String),
}

impl StoreChoice {
    /// In-process, or Redis at `url`.
    pub fn new(redis: Option<&str>) -> Self {
        match redis {
            Some(url) => StoreChoice::Redis(url.to_owned()),
            None => StoreChoice::Memory(Arc::new(MemoryStore::new())),
        }
    }

    /// memcached at `memcached` if given, else as [`StoreChoice::new`].
    pub fn choose(redis: Option<&str>, memcached: Option<&str>) -> Self {
        match memcached {
            Some(addrs) => StoreChoice::Memcached(addrs.to_owned()),
            None => Self::new(redis),
        }
    }

    /// The store's name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            StoreChoice::Memory(_) => "memory",
            StoreChoice::Redis(_) => "redis",
            StoreChoice::Memcached(_) => "memcached",
        }
    }

    /// A new `Aside` on this store, with its own connection for Redis
    /// (its own pool for memcached).
    ///
    /// # Errors
    /// When Redis or memcached cannot be reached.
    pub async fn aside(&self, prefix: &str) -> Result<Aside> {
        Ok(self.builder(prefix).await?.build())
    }

    /// A new `Aside` on this store that publishes its invalidations on a bus
    /// and evicts its L1 copies on everyone else's: `local` for the
    /// in-process store and memcached, or a `RedisBus` of its own on the
    /// channel `{prefix}invalidations` (so only this run's engines meet there).
    ///
    /// # Errors
    /// When Redis or memcached cannot be reached.
    pub async fn aside_on_bus(&self, prefix: &str, local: &MemoryBus) -> Result<Aside> {
        let builder = self.builder(prefix).await?;
        Ok(match self {
            StoreChoice::Memory(_) | StoreChoice::Memcached(_) => builder.bus(local.clone()).build(),
            StoreChoice::Redis(url) => {
                let channel = format!("{prefix}invalidations");
                let bus = RedisBus::connect_on(url, &channel)
                    .await
                    .context(format_args!("cannot connect the invalidation bus to Redis at {url}"))?;
                builder.bus(bus).build()
            }
        })
    }

    /// A builder of an `Aside` on this store under `prefix`, for callers
    /// that add more (a bus) before building.
    ///
    /// # Errors
    /// When Redis or memcached cannot be reached.
    pub async fn builder(&self, prefix: &str) -> Result<AsideBuilder> {
        let builder = Aside::builder().prefix(prefix);
        Ok(match self {
            StoreChoice::Memory(store) => builder.shared_store(store.clone()),
            StoreChoice::Redis(url) => builder.store(
                RedisStore::connect(url)
                    .await
                    .context(format_args!("cannot connect to Redis at {url}"))?,
            ),
            StoreChoice::Memcached(addrs) => builder.store(
                MemcachedStore::connect(addrs)
                    .await
                    .context(format_args!("cannot connect to memcached at {addrs}"))?,
            ),
        })
    }
}

/// A unique key prefix, so runs never meet each other's keys (and nothing is flushed).
pub fn run_prefix(scenario: &str) -> String {
    format!("aside-{scenario}:{:08x}:", rand::random::<u32>())
}

/// Rows `1..=n` of `(id, version)` in an SQLite file, with a read delay.
#[derive(Debug, Clone)]
pub struct Rows {
    pool: SqlitePool,
    read_delay: Duration,
    queries: Arc<AtomicU64>,
}

impl Rows {
    /// Creates the table in the file at `path` with `n` rows at version 0.
    ///
    /// # Errors
    /// The SQLite error, with what was being done.
    pub async fn create(path: &Path, n: u64, read_delay: Duration) -> Result<Rows> {
        let options = crate::db::connect_options(path);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .context(format_args!("cannot open the database {}", path.display()))?;
        sqlx::query("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .context("cannot create the items table")?;
        sqlx::query("DELETE FROM items")
            .execute(&pool)
            .await
            .context("cannot clear items")?;
        for id in 1..=n {
            sqlx::query("INSERT INTO items (id, version) VALUES (?, 0)")
                .bind(id as i64)
                .execute(&pool)
                .await
                .context("cannot seed items")?;
        }
        Ok(Rows {
            pool,
            read_delay,
            queries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The loader: reads the row now, answers after the read delay (the
    /// article's slow read, which is what opens the race).
    ///
    /// # Errors
    /// The SQLite error.
    pub async fn read(&self, id: u64) -> Result<Option<u64>, sqlx::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let version: Option<(i64,)> = sqlx::query_as("SELECT version FROM items WHERE id = ?")
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?;
        if !self.read_delay.is_zero() {
            tokio::time::sleep(self.read_delay).await;
        }
        Ok(version.map(|(v,)| v as u64))
    }

    /// The version in the database now, uncounted (for the final check).
    ///
    /// # Errors
    /// The SQLite error.
    pub async fn current(&self, id: u64) -> Result<u64> {
        let (v,): (i64,) = sqlx::query_as("SELECT version FROM items WHERE id = ?")
            .bind(id as i64)
            .fetch_one(&self.pool)
            .await
            .context("cannot read an item")?;
        Ok(v as u64)
    }

    /// Bumps the row's version; returns the new one.
    ///
    /// # Errors
    /// The SQLite error.
    pub async fn write(&self, id: u64) -> Result<u64> {
        let (v,): (i64,) = sqlx::query_as("UPDATE items SET version = version + 1 WHERE id = ? RETURNING version")
            .bind(id as i64)
            .fetch_one(&self.pool)
            .await
            .context("cannot update an item")?;
        Ok(v as u64)
    }

    /// Loader calls so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Resets the query count.
    pub fn reset_queries(&self) {
        self.queries.store(0, Ordering::Relaxed);
    }
}

/// Fills keys `1..=keys` of `ns` from `rows`, all loads at once, before a
/// run starts (so the run begins warm).
///
/// # Errors
/// The first failed read.
pub async fn fill_all(ns: &Namespace<u64, u64>, rows: &Rows, keys: u64) -> Result<()> {
    let mut fills = tokio::task::JoinSet::new();
    for k in 1..=keys {
        let (ns, rows) = (ns.clone(), rows.clone());
        fills.spawn(async move { ns.fetch(&k, || rows.read(k)).await.map(|_| ()) });
    }
    while let Some(filled) = fills.join_next().await {
        filled
            .map_err(|e| CliError::new(format!("a warm-up task failed: {e}")))?
            .map_err(|e| CliError::new(format!("a warm-up read failed: {e}")))?;
    }
    Ok(())
}

/// Percentile of sorted samples, 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Flags of the `race` and `stampede` scenarios.
#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// Keys the readers work on (default 10 hot keys for `race` and
    /// `expiry`, 100 for `db-outage`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub keys: Option<u64>,

    /// Delay between reading a row and answering, in ms (default 20 for
    /// `race`, 50 for `stampede` and `expiry`, 10 for `db-outage`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub db_read_delay_ms: Option<u64>,

    /// When the database of `db-outage` starts failing, in seconds from the
    /// start of the run.
    #[arg(long, default_value_t = 3.0, value_parser = parse_offset)]
    pub outage_start_s: f64,

    /// When the database of `db-outage` answers again, in seconds from the
    /// start of the run.
    #[arg(long, default_value_t = 7.0, value_parser = parse_offset)]
    pub outage_end_s: f64,

    /// Concurrent readers of the stampede's hot key.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub clients: u64,

    /// Writer tasks of the race. Four writers on ten keys write each key
    /// about every 30 ms, so most writes meet a load in flight: the race
    /// the strategies differ on happens in every run.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub writers: u64,

    /// Pause between one race writer's writes, in ms.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub write_interval_ms: u64,

    /// How many times to run the whole scenario.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub runs: u32,

    /// Race strategies to run, comma-separated (default: all four).
    #[arg(long, value_delimiter = ',', value_parser = parse_strategy)]
    pub strategies: Vec<Strategy>,

    /// `chaos`: at most this many programs per run (the run also stops
    /// after `--duration`).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub programs: u64,

    /// `chaos`: replay one program by its seed (decimal or 0x hex), as a
    /// failing run prints it.
    #[arg(long, value_parser = parse_seed)]
    pub seed: Option<u64>,

    /// Race with an in-process first tier (L1) on the readers' and the
    /// writers' engines, kept coherent by an invalidation bus (Redis
    /// pub/sub with `--redis`, an in-process channel otherwise, memcached
    /// included).
    #[arg(long)]
    pub l1: bool,
}

fn parse_seed(s: &str) -> std::result::Result<u64, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("not a seed: {e}"))
}

fn parse_strategy(s: &str) -> std::result::Result<Strategy, String> {
    s.parse::<Strategy>().map_err(|e| e.to_string())
}

fn parse_offset(s: &str) -> std::result::Result<f64, String> {
    let seconds: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if seconds.is_finite() && (0.0..=1e9).contains(&seconds) {
        Ok(seconds)
    } else {
        Err("expected a number of seconds, 0 or more".to_owned())
    }
}

#[derive(Debug, serde::Serialize)]
struct Report<T> {
    scenario: &'static str,
    store: &'static str,
    results: Vec<T>,
}

/// Runs `--scenario race`, `stampede`, `expiry` or `db-outage` and prints
/// its table (or its JSON with `--json`).
///
/// # Errors
/// Redis or memcached unreachable, database failures, or failed reads.
pub async fn run(args: &DemoArgs) -> Result<()> {
    let store = args.store.choice();
    let dir = tempfile::Builder::new()
        .prefix("aside-scenario-")
        .tempdir()
        .context("cannot create a temporary directory for the database")?;
    let path = args.db.clone().unwrap_or_else(|| dir.path().join("items.db"));
    let opts = &args.scenario_args;
    let chatty = !args.json;
    match args.scenario.as_str() {
        "race" => {
            let delay = Duration::from_millis(opts.db_read_delay_ms.unwrap_or(20));
            let keys = opts.keys.unwrap_or(10);
            let rows = Rows::create(&path, keys, delay).await?;
            let race = race::RaceOptions {
                keys,
                readers: args.concurrency as usize,
                writers: opts.writers as usize,
                write_interval: Duration::from_millis(opts.write_interval_ms),
                duration: Duration::from_secs_f64(args.duration.unwrap_or(3.0)),
                l1: opts.l1,
            };
            let strategies = if opts.strategies.is_empty() {
                Strategy::all().to_vec()
            } else {
                opts.strategies.clone()
            };
            let mut results = Vec::new();
            for run in 1..=opts.runs {
                for &strategy in &strategies {
                    if chatty {
                        eprintln!(
                            "race run {run}/{}: {strategy} on {}{} ...",
                            opts.runs,
                            store.name(),
                            if opts.l1 { " behind an L1 on both engines" } else { "" }
                        );
                    }
                    results.push(race::run_strategy(&store, &rows, strategy, run, &race).await?);
                }
            }
            print_report(
                Report {
                    scenario: "race",
                    store: store.name(),
                    results,
                },
                args.json,
                race_table,
            )
        }
        "chaos" => {
            let chaos = chaos::ChaosOptions {
                duration: Duration::from_secs_f64(args.duration.unwrap_or(20.0)),
                programs: opts.programs as usize,
                chatty,
                seed: opts.seed,
            };
            let mut results = Vec::new();
            for run in 1..=opts.runs {
                if chatty {
                    eprintln!(
                        "chaos run {run}/{}: 3 instances with an L1 and a bus on {}, faults injected, {:?} ...",
                        opts.runs,
                        store.name(),
                        chaos.duration
                    );
                }
                results.push(chaos::run_chaos(&store, run, &chaos).await?);
            }
            let failed: Vec<u64> = results.iter().flat_map(|r| r.failing_seeds.clone()).collect();
            print_report(
                Report {
                    scenario: "chaos",
                    store: store.name(),
                    results,
                },
                args.json,
                chaos_table,
            )?;
            if failed.is_empty() {
                Ok(())
            } else {
                Err(CliError::new(format!(
                    "the checker found broken promises; replay with --seed: {failed:#x?}"
                )))
            }
        }
        "stampede" => {
            let delay = Duration::from_millis(opts.db_read_delay_ms.unwrap_or(50));
            let rows = Rows::create(&path, 1, delay).await?;
            let mut results = Vec::new();
            for _ in 1..=opts.runs {
                for mode in stampede::MODES {
                    if chatty {
                        eprintln!("stampede: {mode}, {} readers on {} ...", opts.clients, store.name());
                    }
                    results.push(stampede::run_mode(&store, &rows, mode, opts.clients as usize).await?);
                }
            }
            print_report(
                Report {
                    scenario: "stampede",
                    store: store.name(),
                    results,
                },
                args.json,
                stampede_table,
            )
        }
        "expiry" => {
            let opts = expiry::ExpiryOptions {
                keys: opts.keys.unwrap_or(10),
                readers: args.concurrency as usize,
                ttl: Duration::from_secs_f64(args.ttl.unwrap_or(2.0)),
                read_delay: Duration::from_millis(opts.db_read_delay_ms.unwrap_or(50)),
                duration: Duration::from_secs_f64(args.duration.unwrap_or(10.0)),
            };
            let rows = Rows::create(&path, opts.keys, opts.read_delay).await?;
            let mut results = Vec::new();
            for mode in expiry::MODES {
                if chatty {
                    eprintln!(
                        "expiry: early refresh {mode}, {} readers of {} keys, ttl {:?}, {:?} on {} ...",
                        opts.readers,
                        opts.keys,
                        opts.ttl,
                        opts.duration,
                        store.name()
                    );
                }
                results.push(expiry::run_mode(&store, &rows, mode, &opts).await?);
            }
            print_report(
                Report {
                    scenario: "expiry",
                    store: store.name(),
                    results,
                },
                args.json,
                expiry_table,
            )
        }
        "db-outage" => {
            let start = Duration::from_secs_f64(opts.outage_start_s);
            let end = Duration::from_secs_f64(opts.outage_end_s);
            if end <= start {
                return Err(CliError::new(format!(
                    "--outage-end-s ({}) must be after --outage-start-s ({})",
                    opts.outage_end_s, opts.outage_start_s
                )));
            }
            let opts = db_outage::OutageOptions {
                keys: opts.keys.unwrap_or(100),
                readers: args.concurrency as usize,
                ttl: Duration::from_secs_f64(args.ttl.unwrap_or(1.0)),
                duration: Duration::from_secs_f64(args.duration.unwrap_or(10.0)),
                outage: start..end,
            };
            let delay = Duration::from_millis(args.scenario_args.db_read_delay_ms.unwrap_or(10));
            let rows = Rows::create(&path, opts.keys, delay).await?;
            let mut results = Vec::new();
            for mode in db_outage::MODES {
                if chatty {
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
                results.push(db_outage::run_mode(&store, &rows, mode, &opts).await?);
            }
            print_report(
                Report {
                    scenario: "db-outage",
                    store: store.name(),
                    results,
                },
                args.json,
                outage_table,
            )
        }
        other => Err(CliError::new(format!("unknown scenario {other:?}"))),
    }
}

fn print_report<T: serde::Serialize>(report: Report<T>, json: bool, table: fn(&[T]) -> String) -> Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).context("cannot encode the report")?
        );
    } else {
        println!("scenario {} on the {} store", report.scenario, report.store);
        print!("{}", table(&report.results));
    }
    Ok(())
}

/// Renders rows under headers, each column as wide as its widest cell:
/// the first column left-aligned, the others right-aligned.
fn render(headers: &[&str], rows: Vec<Vec<String>>, footnote: Option<&str>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                out.push_str(&format!("{cell:<w$}"));
            } else {
                out.push_str(&format!("  {cell:>w$}"));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    if let Some(note) = footnote {
        out.push_str(note);
        out.push('\n');
    }
    out
}

fn chaos_table(results: &[chaos::ChaosResult]) -> String {
    let headers = [
        "run",
        "instances",
        "programs",
        "operations",
        "faults",
        "stale reads",
        "stale entries",
        "load overlaps",
        "hangs",
        "db reads / calls",
        "measured (delete)",
    ];
    let rows = results
        .iter()
        .map(|r| {
            vec![
                r.run.to_string(),
                r.instances.to_string(),
                r.programs.to_string(),
                r.operations.to_string(),
                r.faults.to_string(),
                r.stale_reads.to_string(),
                r.stale_entries.to_string(),
                r.load_overlaps.to_string(),
                r.liveness.to_string(),
                format!("{} / {}", r.db_reads, r.calls),
                format!(
                    "{} stale reads, {} entries",
                    r.measured_stale_reads, r.measured_stale_entries
                ),
            ]
        })
        .collect();
    render(
        &headers,
        rows,
        Some(
            "stale reads, stale entries, load overlaps and hangs count broken promises of lease and versioned; \
             delete and double-delete promise nothing and are measured",
        ),
    )
}

fn race_table(results: &[race::RaceResult]) -> String {
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
    let rows = results
        .iter()
        .map(|r| {
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
        })
        .collect();
    render(
        &headers,
        rows,
        l1.then_some(
            "with an L1: stale_entries counts keys stale in the L1 or the store after the bus went quiet; \
             stale_reads include L1 hits read before another engine's invalidation reached this one over the bus",
        ),
    )
}

fn stampede_table(results: &[stampede::StampedeResult]) -> String {
    let headers = ["mode", "clients", "db_queries", "p50_ms", "p99_ms", "max_ms"];
    let rows = results
        .iter()
        .map(|r| {
            vec![
                r.mode.clone(),
                r.clients.to_string(),
                r.db_queries.to_string(),
                format!("{:.1}", r.p50_ms),
                format!("{:.1}", r.p99_ms),
                format!("{:.1}", r.max_ms),
            ]
        })
        .collect();
    render(&headers, rows, None)
}

fn expiry_table(results: &[expiry::ExpiryResult]) -> String {
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
    let rows = results
        .iter()
        .map(|r| {
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
        })
        .collect();
    render(
        &headers,
        rows,
        Some(
            "per_ttl: database queries per key per TTL; refused: fills refused (lease lost); waited: reads that were not hits",
        ),
    )
}

fn outage_table(results: &[db_outage::OutageResult]) -> String {
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
    let rows = results
        .iter()
        .map(|r| {
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
        })
        .collect();
    render(
        &headers,
        rows,
        Some(
            "stale: reads answered with an expired value (Source::Stale); outage: reads begun while the database was down",
        ),
    )
}
