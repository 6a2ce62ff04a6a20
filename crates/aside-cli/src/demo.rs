//! `aside demo`: a read-heavy workload of user profiles, cached by aside in
//! front of SQLite, with a report of what the cache saved.
//!
//! Owns the demo's flags and its set-up and tear-down: the database file
//! (temporary unless `--db`), the store (in-process unless `--redis` or
//! `--memcached`), a namespace under a key prefix unique to the run (so runs
//! sharing a server never collide and nothing needs flushing), then the run itself through
//! [`crate::workload::run_workload`] and the output through [`crate::report`].
//!
//! With `--tiers`, the namespace gets an in-process first tier (L1, up to
//! [`L1_ENTRIES`] profiles) in front of the store, and the report splits the
//! hit ratio into L1 and L2 (store) hits. With `--redis` too, the `Aside`
//! also publishes its invalidations on a [`RedisBus`] on the same server,
//! as it would beside other processes with their own L1 (memcached has no
//! pub/sub: with `--memcached` there is no bus).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aside::bus::redis::DEFAULT_CHANNEL;
use aside::{Aside, Strategy};
use clap::Args;

use crate::db::{Db, MAX_DB_READERS, MAX_USERS};
use crate::error::{Context, Result};
use crate::parse;
use crate::report;
use crate::scenario::{ScenarioArgs, Setting};
use crate::store::StoreArgs;
use crate::workload::{Summary, Target, Workload, run_workload};
/// Capacity of the L1 of `--tiers`, in profiles.
pub const L1_ENTRIES: u64 = 100_000;

/// Flags of `aside demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// What to run: `main` (the user-profile workload), `race` (the
    /// read-write race, once per strategy), `stampede` (many readers of
    /// one missing hot key, per protection mode), `expiry` (a hot set whose
    /// TTL runs out under load, without and with early refresh) or
    /// `db-outage` (the database fails for part of the run, without and
    /// with fail-safe) or `chaos` (the history checker: three engines with
    /// an L1 and a bus, random operations, faults injected, every read
    /// checked against the database's history) or `patterns` (one
    /// read-heavy workload with its writes made through cache-aside,
    /// read-through, write-through and the linearizable update).
    #[arg(
        long,
        default_value = "main",
        value_parser = ["main", "race", "stampede", "expiry", "db-outage", "chaos", "patterns"]
    )]
    pub scenario: String,

    /// Seconds to run the workload (default 10; for `race`, 3 per
    /// strategy; for `expiry` and `db-outage`, 10 per mode; for `chaos`,
    /// 20 per run).
    #[arg(long, value_parser = parse::seconds)]
    pub duration: Option<f64>,

    /// User profiles in the database.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=MAX_USERS))]
    pub users: u64,

    /// Zipf exponent of key popularity (0 is uniform; larger is more skewed).
    #[arg(long, default_value_t = 0.99, value_parser = parse::exponent)]
    pub zipf: f64,

    /// Fraction of operations that are writes (0.1667 is reads:writes 5:1).
    #[arg(long, default_value_t = 0.1667, value_parser = parse::fraction)]
    pub write_ratio: f64,

    /// Concurrent tasks issuing operations.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Where the cache lives (`--redis`, `--memcached`; in process by default).
    #[command(flatten)]
    pub store: StoreArgs,

    /// Invalidation strategy: delete, double-delete, versioned or lease.
    #[arg(long, default_value = "lease", value_parser = parse::strategy)]
    pub strategy: Strategy,

    /// Cache entry TTL in seconds (default 600; 2 for `expiry`, 1 for `db-outage`).
    #[arg(long, value_parser = parse::seconds)]
    pub ttl: Option<f64>,

    /// SQLite file to use (created and seeded if needed, kept afterwards);
    /// by default a temporary file deleted at the end.
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// Print the summary as one JSON object on stdout (and no progress bar).
    #[arg(long)]
    pub json: bool,

    /// Put an in-process first tier (L1) in front of the store and report
    /// L1 and L2 hit ratios; with `--redis`, invalidations also go out on a
    /// Redis bus.
    #[arg(long)]
    pub tiers: bool,

    /// Also write the results as one self-contained HTML page with charts
    /// (for `main`, hit ratio and latency over time).
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,

    #[command(flatten)]
    pub scenario_args: ScenarioArgs,
}

/// Runs the demo and prints its summary (a table, or JSON with `--json`).
///
/// # Errors
/// Redis or memcached unreachable, the database cannot be created or seeded, or a
/// database error during the run.
pub async fn run(args: DemoArgs) -> Result<()> {
    if args.scenario != "main" {
        let setting = Setting {
            store: args.store.choice(),
            db: args.db.clone(),
            duration: args.duration,
            ttl: args.ttl,
            concurrency: args.concurrency as usize,
            json: args.json,
            report: args.report.clone(),
            args: args.scenario_args.clone(),
        };
        return crate::scenario::run(&args.scenario, &setting).await;
    }
    let duration = args.duration.unwrap_or(10.0);
    let chatty = !args.json;
    let say = |line: String| {
        if chatty {
            eprintln!("{line}");
        }
    };

    let cache = build_cache(&args).await?;
    let ttl = Duration::from_secs_f64(args.ttl.unwrap_or(600.0));
    let mut users = cache
        .namespace::<u64, crate::db::User>("user:profile")
        .ttl(ttl)
        .jitter(0.10)
        .strategy(args.strategy);
    if args.tiers {
        users = users.l1(L1_ENTRIES, ttl);
    }
    let users = users.build().context("cannot configure the cache namespace")?;

    // The temporary directory (database, WAL and shared-memory files) is
    // removed when `_scratch` drops, after the pool is closed.
    let (path, _scratch) = crate::db::database_path(args.db.as_deref())?;
    let readers = args.concurrency.min(MAX_DB_READERS);
    let seeding = Instant::now();
    let (db, inserted) = Db::open_seeded(&path, readers, args.users).await?;
    say(format!(
        "database {}: {} profiles ready ({} inserted in {} ms)",
        path.display(),
        args.users,
        inserted,
        seeding.elapsed().as_millis()
    ));
    say(format!(
        "running for {} s on the {} store{}, strategy {}...",
        duration,
        cache.store().name(),
        match (args.tiers, args.store.redis_target().is_some()) {
            (false, _) => "",
            (true, false) => " behind an L1",
            (true, true) => " behind an L1 with a Redis invalidation bus",
        },
        args.strategy
    ));

    let workload = Workload {
        duration: Duration::from_secs_f64(duration),
        concurrency: args.concurrency as usize,
        write_ratio: args.write_ratio,
        zipf_exponent: args.zipf,
        users: args.users,
        progress: chatty && std::io::stderr().is_terminal(),
        tiers: args.tiers,
    };
    let target = Target {
        cache,
        users,
        db: db.clone(),
    };
    let summary = run_workload(&workload, &target).await;
    db.close().await;
    let summary = summary?;
    if let Some(path) = &args.report {
        let json = serde_json::to_value(&summary).context("cannot encode the summary as JSON")?;
        crate::html::demo::summary_page(&summary, &json).write(path)?;
    }
    print_summary(&summary, args.json)
}

/// The `Aside` of this run: the chosen store, under a prefix unique to the
/// run, with a Redis invalidation bus for `--tiers --redis`.
async fn build_cache(args: &DemoArgs) -> Result<Aside> {
    let prefix = format!("aside-demo:{:016x}:", rand::random::<u64>());
    let builder = args.store.choice().builder(&prefix).await?;
    Ok(match (args.store.redis_target(), args.tiers) {
        // The bus's error names the server, its password masked.
        (Some(target), true) => builder.bus(target.bus(DEFAULT_CHANNEL).await?).build(),
        _ => builder.build(),
    })
}

fn print_summary(summary: &Summary, json: bool) -> Result<()> {
    if json {
        println!("{}", report::json(summary)?);
    } else {
        print!("{}", report::table("aside demo", summary));
    }
    Ok(())
}
