//! `aside bench`: the cost of a cache hit, aside against its floors and its
//! peers, in one run.
//!
//! Owns the command's flags, the schedule of passes and the report. Every
//! subject reads the same user profiles, all cached before timing starts:
//!
//! | subject | tier | floor |
//! |---|---|---|
//! | `redis-rs-get`: redis-rs `GET` + `serde_json` decode | redis | itself |
//! | `aside-redis`: `get_or_load` on a `RedisStore` | redis | `redis-rs-get` |
//! | `article`: the article's `get_user_profile`, ported | redis | `redis-rs-get` |
//! | `cached-redis`: the `cached` crate's `AsyncRedisCache` (feature `peers`) | redis | `redis-rs-get` |
//! | `amalgam-redis`: `amalgam-cache`, memory level skipped (feature `peers`) | redis | `redis-rs-get` |
//! | `moka-get`: moka `get` of a decoded profile (same capacity and TTL as the L1) | in-process | itself |
//! | `aside-memory`: `get_or_load` on a `MemoryStore` | in-process | `moka-get` |
//! | `aside-l1`: `get_or_load` with an L1 over Redis | in-process | `moka-get` |
//! | `amalgam-l1`: `amalgam-cache`'s memory hit (feature `peers`) | in-process | `moka-get` |
//!
//! For each concurrency, every subject runs a throughput pass and then a
//! latency pass of `--ops` reads each; rounds repeat the whole schedule
//! (`--repeat`), so machine noise spreads over all subjects alike. The report
//! gives the median throughput over rounds with its range, median p50 and
//! p99, and the ratio of the median throughput to its floor's, measured in
//! the same rounds. `redis-benchmark -t get`, when installed, runs at the
//! same concurrencies and is printed beside: what the server does for a C
//! client that decodes nothing.
//!
//! The bench works under a random key prefix on the given Redis and deletes
//! its keys at the end; it never flushes anything.
//!
//! `--scenario memory` measures resident memory per cached entry instead
//! (see [`memory`]); the default, `--scenario hits`, is the above.

mod drive;
pub mod memory;
mod outage;
#[cfg(feature = "peers")]
mod peers;
mod subjects;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rand::seq::SliceRandom;
use serde::Serialize;

use self::drive::{Pass, drive};
use self::subjects::{Article, AsideGet, AsideTier, MokaGet, RawGet};
use crate::db::Db;
use crate::error::{CliError, Context, Result};
use crate::store::{RedisTarget, RedisTlsArgs};

/// Flags of `aside bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The Redis the Redis subjects use (keys under a random prefix, deleted at the end).
    /// `rediss://user:password@host:port` for TLS and an ACL user.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,

    /// TLS files for a `rediss://` Redis (the peers take none).
    #[command(flatten)]
    pub redis_tls: RedisTlsArgs,

    /// Reads per subject, per concurrency, per pass.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub ops: u64,

    /// Concurrent tasks, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64])]
    pub concurrency: Vec<usize>,

    /// Distinct profiles read (uniformly).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub keys: u64,

    /// Rounds over every subject; figures are medians over rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,

    /// Subjects to run, comma-separated (default: all that were built).
    #[arg(long, value_delimiter = ',')]
    pub subjects: Vec<SubjectId>,

    /// Do not run `redis-benchmark` even if it is installed.
    #[arg(long)]
    pub no_redis_benchmark: bool,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Also write the report as one self-contained HTML page with charts.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,

    /// What to measure: `hits` (every subject's cache hit against its
    /// floor), `memory` (resident bytes per cached entry: moka, the
    /// `MemoryStore`, the L1; needs no Redis) or `outage` (Redis
    /// blackholed behind a fault proxy, the breaker open: what aside adds
    /// to a read of the database alone).
    #[arg(long, value_enum, default_value_t = BenchScenario::Hits)]
    pub scenario: BenchScenario,

    /// Entries each subject holds (`--scenario memory`).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub entries: u64,
}

/// What `aside bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchScenario {
    /// The cost of a cache hit per tier, against its floor and peers.
    Hits,
    /// Resident memory per cached entry: moka, the `MemoryStore`, the L1
    /// (see `bench::memory`).
    Memory,
    /// Redis blackholed, the breaker open: the added latency over the database alone.
    Outage,
}

/// A bench subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum SubjectId {
    /// redis-rs `GET` + decode: the Redis floor.
    #[value(name = "redis-rs-get")]
    RedisGet,
    /// aside on a `RedisStore`.
    #[value(name = "aside-redis")]
    AsideRedis,
    /// The article's `get_user_profile`, ported.
    #[value(name = "article")]
    Article,
    /// The `cached` crate's `AsyncRedisCache`.
    #[value(name = "cached-redis")]
    CachedRedis,
    /// `amalgam-cache` reading Redis only.
    #[value(name = "amalgam-redis")]
    AmalgamRedis,
    /// moka `get`: the in-process floor.
    #[value(name = "moka-get")]
    MokaGet,
    /// aside on a `MemoryStore`.
    #[value(name = "aside-memory")]
    AsideMemory,
    /// aside's L1 over a `RedisStore`.
    #[value(name = "aside-l1")]
    AsideL1,
    /// `amalgam-cache`'s memory level.
    #[value(name = "amalgam-l1")]
    AmalgamL1,
}

impl SubjectId {
    const ALL: [SubjectId; 9] = [
        SubjectId::RedisGet,
        SubjectId::AsideRedis,
        SubjectId::Article,
        SubjectId::CachedRedis,
        SubjectId::AmalgamRedis,
        SubjectId::MokaGet,
        SubjectId::AsideMemory,
        SubjectId::AsideL1,
        SubjectId::AmalgamL1,
    ];

    fn name(self) -> &'static str {
        match self {
            SubjectId::RedisGet => "redis-rs-get",
            SubjectId::AsideRedis => "aside-redis",
            SubjectId::Article => "article",
            SubjectId::CachedRedis => "cached-redis",
            SubjectId::AmalgamRedis => "amalgam-redis",
            SubjectId::MokaGet => "moka-get",
            SubjectId::AsideMemory => "aside-memory",
            SubjectId::AsideL1 => "aside-l1",
            SubjectId::AmalgamL1 => "amalgam-l1",
        }
    }

    fn is_peer(self) -> bool {
        matches!(
            self,
            SubjectId::CachedRedis | SubjectId::AmalgamRedis | SubjectId::AmalgamL1
        )
    }

    fn tier(self) -> &'static str {
        match self.floor() {
            SubjectId::RedisGet => "redis",
            _ => "in-process",
        }
    }

    /// The subject whose throughput this one's is compared with.
    fn floor(self) -> SubjectId {
        match self {
            SubjectId::RedisGet
            | SubjectId::AsideRedis
            | SubjectId::Article
            | SubjectId::CachedRedis
            | SubjectId::AmalgamRedis => SubjectId::RedisGet,
            SubjectId::MokaGet | SubjectId::AsideMemory | SubjectId::AsideL1 | SubjectId::AmalgamL1 => {
                SubjectId::MokaGet
            }
        }
    }
}

/// A subject, set up and with every profile cached.
enum Prepared {
    RawGet(RawGet),
    Article(Article),
    Moka(MokaGet),
    Aside(AsideGet),
    #[cfg(feature = "peers")]
    Cached(peers::CachedRedis),
    #[cfg(feature = "peers")]
    Amalgam(peers::Amalgam),
}

impl Prepared {
    async fn new(id: SubjectId, redis: &RedisTarget, prefix: &str, db: &Db, ids: &[u64]) -> Result<Self> {
        let peer = matches!(
            id,
            SubjectId::CachedRedis | SubjectId::AmalgamRedis | SubjectId::AmalgamL1
        );
        if peer && redis.has_tls_files() {
            return Err(CliError::new(format!(
                "{} is a peer and takes no --redis-ca, --redis-cert or --redis-key",
                id.name()
            )));
        }
        let url = redis;
        Ok(match id {
            SubjectId::RedisGet => Prepared::RawGet(RawGet::prepare(url, prefix, db, ids).await?),
            SubjectId::Article => Prepared::Article(Article::prepare(url, prefix, db, ids).await?),
            SubjectId::MokaGet => Prepared::Moka(MokaGet::prepare(db, ids).await?),
            SubjectId::AsideRedis => Prepared::Aside(AsideGet::prepare(AsideTier::Redis, url, prefix, db, ids).await?),
            SubjectId::AsideMemory => {
                Prepared::Aside(AsideGet::prepare(AsideTier::Memory, url, prefix, db, ids).await?)
            }
            SubjectId::AsideL1 => Prepared::Aside(AsideGet::prepare(AsideTier::L1, url, prefix, db, ids).await?),
            #[cfg(feature = "peers")]
            SubjectId::CachedRedis => Prepared::Cached(peers::CachedRedis::prepare(&url.url, prefix, db, ids).await?),
            #[cfg(feature = "peers")]
            SubjectId::AmalgamRedis => {
                Prepared::Amalgam(peers::Amalgam::prepare(false, &url.url, prefix, db, ids).await?)
            }
            #[cfg(feature = "peers")]
            SubjectId::AmalgamL1 => Prepared::Amalgam(peers::Amalgam::prepare(true, &url.url, prefix, db, ids).await?),
            #[cfg(not(feature = "peers"))]
            SubjectId::CachedRedis | SubjectId::AmalgamRedis | SubjectId::AmalgamL1 => {
                return Err(CliError::new(format!(
                    "{} is a peer: rebuild with `--features peers`",
                    id.name()
                )));
            }
        })
    }

    async fn pass(&self, ids: &Arc<[u64]>, concurrency: usize, ops: u64, timed: bool) -> Result<Pass> {
        match self {
            Prepared::RawGet(op) => drive(op, ids, concurrency, ops, timed).await,
            Prepared::Article(op) => drive(op, ids, concurrency, ops, timed).await,
            Prepared::Moka(op) => drive(op, ids, concurrency, ops, timed).await,
            Prepared::Aside(op) => drive(op, ids, concurrency, ops, timed).await,
            #[cfg(feature = "peers")]
            Prepared::Cached(op) => drive(op, ids, concurrency, ops, timed).await,
            #[cfg(feature = "peers")]
            Prepared::Amalgam(op) => drive(op, ids, concurrency, ops, timed).await,
        }
    }
}

/// One subject at one concurrency, over every round.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// The subject's name, such as `aside-redis`.
    pub subject: &'static str,
    /// `redis` or `in-process`.
    pub tier: &'static str,
    /// Concurrent tasks.
    pub concurrency: usize,
    /// Median over rounds of reads per second (throughput passes).
    pub ops_per_sec: f64,
    /// Lowest round.
    pub ops_per_sec_min: f64,
    /// Highest round.
    pub ops_per_sec_max: f64,
    /// Median over rounds of the latency pass's median, µs.
    pub p50_us: f64,
    /// Median over rounds of the latency pass's 99th percentile, µs.
    pub p99_us: f64,
    /// The subject compared with (`redis-rs-get` or `moka-get`).
    pub floor: &'static str,
    /// Median throughput over the floor's median throughput at the same
    /// concurrency: 1.0 is as fast as the floor, 0.5 half as fast.
    pub ratio_to_floor: f64,
    /// Lowest ratio of one round's throughput to the floor's in that round.
    pub ratio_to_floor_min: f64,
    /// Highest such ratio.
    pub ratio_to_floor_max: f64,
    /// Database queries during timed passes: 0 when every read was a hit.
    pub db_queries: u64,
}

/// `redis-benchmark -t get` at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct RedisBenchmark {
    /// Its `-c`.
    pub concurrency: usize,
    /// Requests per second it reported.
    pub ops_per_sec: f64,
    /// Its p50, µs.
    pub p50_us: f64,
    /// Its p99, µs.
    pub p99_us: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    redis: String,
    ops: u64,
    keys: u64,
    repeat: u32,
    peers: bool,
    results: Vec<BenchResult>,
    redis_benchmark: Vec<RedisBenchmark>,
}

#[derive(Default)]
struct Samples {
    throughput: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    db_queries: u64,
}

/// Runs `aside bench` and prints its table, or its JSON with `--json`.
///
/// # Errors
/// Redis unreachable, database failures, a subject that answered wrongly,
/// or a peer asked for without the `peers` feature.
pub async fn run(args: BenchArgs) -> Result<()> {
    if args.scenario != BenchScenario::Hits && args.report.is_some() {
        return Err(CliError::new("--report is available with --scenario hits only"));
    }
    if args.scenario == BenchScenario::Memory {
        return memory::run(args.entries, args.repeat, args.json).await;
    }
    if args.scenario == BenchScenario::Outage {
        return outage::run(&args).await;
    }
    let subjects = chosen_subjects(&args)?;
    let dir = tempfile::Builder::new()
        .prefix("aside-bench-")
        .tempdir()
        .context("cannot create a temporary directory for the database")?;
    let path: PathBuf = dir.path().join("users.db");
    let (db, _) = Db::open_seeded(&path, 4, args.keys).await?;
    let mut ids: Vec<u64> = (1..=args.keys).collect();
    ids.shuffle(&mut rand::rng());
    let ids: Arc<[u64]> = ids.into();
    // The run's tag holds no `:`, which `cached` percent-encodes in its keys.
    let tag = format!("aside-bench-{:08x}", rand::random::<u32>());
    let prefix = format!("{tag}:");

    let redis = RedisTarget {
        url: args.redis.clone(),
        tls: args.redis_tls.clone(),
    };
    let chatty = !args.json;
    let mut prepared = Vec::new();
    for &id in &subjects {
        if chatty {
            eprintln!("preparing {} ...", id.name());
        }
        prepared.push((id, Prepared::new(id, &redis, &prefix, &db, &ids).await?));
    }
    let mut samples: BTreeMap<(usize, SubjectId), Samples> = BTreeMap::new();
    for round in 1..=args.repeat {
        for &c in &args.concurrency {
            if chatty {
                eprintln!("round {round}/{}: concurrency {c} ...", args.repeat);
            }
            for (id, subject) in &prepared {
                let before = db.queries();
                let throughput = subject.pass(&ids, c, args.ops, false).await?;
                let latency = subject.pass(&ids, c, args.ops, true).await?;
                let s = samples.entry((c, *id)).or_default();
                s.db_queries += db.queries() - before;
                s.throughput
                    .push(throughput.ops as f64 / throughput.elapsed.as_secs_f64().max(1e-9));
                if let Some(h) = latency.latency {
                    s.p50_us.push(h.value_at_quantile(0.50) as f64 / 1000.0);
                    s.p99_us.push(h.value_at_quantile(0.99) as f64 / 1000.0);
                }
            }
        }
    }
    let redis_benchmark = if args.no_redis_benchmark || !subjects.iter().any(|s| s.tier() == "redis") {
        Vec::new()
    } else {
        run_redis_benchmark(&args).await
    };
    delete_keys(&redis, &tag).await?;
    db.close().await;

    let report = Report {
        bench: "hit",
        redis: redis.masked(),
        ops: args.ops,
        keys: args.keys,
        repeat: args.repeat,
        peers: cfg!(feature = "peers"),
        results: summarize(&samples),
        redis_benchmark,
    };
    if let Some(path) = &args.report {
        let json = serde_json::to_value(&report).context("cannot encode the report")?;
        crate::html::bench::page(&report.results, &json).write(path)?;
    }
    print_report(args.json, &report, table)
}

/// Prints `report` as JSON, or as the table `table` renders.
fn print_report<R: Serialize>(json: bool, report: &R, table: impl Fn(&R) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report).context("cannot encode the report")?);
    } else {
        print!("{}", table(report));
    }
    Ok(())
}

fn chosen_subjects(args: &BenchArgs) -> Result<Vec<SubjectId>> {
    let tls_files = args.redis_tls.redis_ca.is_some() || args.redis_tls.redis_cert.is_some();
    let mut subjects = if args.subjects.is_empty() {
        // The peers cannot take TLS files: with them, the default leaves
        // the peers out (naming one with --subjects is an error).
        SubjectId::ALL
            .into_iter()
            .filter(|s| !s.is_peer() || (cfg!(feature = "peers") && !tls_files))
            .collect()
    } else {
        args.subjects.clone()
    };
    // Every ratio needs its floor in the same rounds.
    let floors: Vec<SubjectId> = subjects.iter().map(|s| s.floor()).collect();
    subjects.extend(floors);
    subjects.sort();
    subjects.dedup();
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        return Err(CliError::new("--concurrency takes numbers of tasks, 1 or more"));
    }
    Ok(subjects)
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn summarize(samples: &BTreeMap<(usize, SubjectId), Samples>) -> Vec<BenchResult> {
    let mut results = Vec::new();
    for (&(concurrency, id), s) in samples {
        let ops_per_sec = median(&s.throughput);
        let floor_rounds = samples
            .get(&(concurrency, id.floor()))
            .map_or(&[][..], |f| &f.throughput[..]);
        let floor = median(floor_rounds);
        let round_ratios: Vec<f64> = s
            .throughput
            .iter()
            .zip(floor_rounds)
            .filter(|(_, f)| **f > 0.0)
            .map(|(t, f)| t / f)
            .collect();
        results.push(BenchResult {
            subject: id.name(),
            tier: id.tier(),
            concurrency,
            ops_per_sec,
            ops_per_sec_min: s.throughput.iter().copied().fold(f64::INFINITY, f64::min),
            ops_per_sec_max: s.throughput.iter().copied().fold(0.0, f64::max),
            p50_us: median(&s.p50_us),
            p99_us: median(&s.p99_us),
            floor: id.floor().name(),
            ratio_to_floor: if floor > 0.0 { ops_per_sec / floor } else { 0.0 },
            ratio_to_floor_min: round_ratios.iter().copied().reduce(f64::min).unwrap_or(0.0),
            ratio_to_floor_max: round_ratios.iter().copied().reduce(f64::max).unwrap_or(0.0),
            db_queries: s.db_queries,
        });
    }
    results
}

/// `redis-benchmark -t get` at each concurrency, if it is installed and
/// the URL is a plain TCP one; nothing otherwise (said on stderr).
async fn run_redis_benchmark(args: &BenchArgs) -> Vec<RedisBenchmark> {
    let addr = redis::Client::open(args.redis.as_str())
        .ok()
        .map(|c| c.get_connection_info().addr().clone());
    let Some(redis::ConnectionAddr::Tcp(host, port)) = addr else {
        eprintln!(
            "redis-benchmark: skipped, {} is not a plain TCP address",
            crate::redact::url(&args.redis)
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for &c in &args.concurrency {
        let run = tokio::process::Command::new("redis-benchmark")
            .args(["-h", &host, "-p", &port.to_string(), "-t", "get", "--csv"])
            .args(["-n", &args.ops.to_string(), "-c", &c.to_string()])
            .output()
            .await;
        match run {
            Ok(o) if o.status.success() => match parse_redis_benchmark(&String::from_utf8_lossy(&o.stdout), c) {
                Some(row) => out.push(row),
                None => eprintln!("redis-benchmark: could not read its output"),
            },
            Ok(o) => eprintln!("redis-benchmark: failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => {
                eprintln!("redis-benchmark: not run ({e})");
                break;
            }
        }
    }
    out
}

/// Reads the `GET` line of `redis-benchmark --csv`:
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`.
fn parse_redis_benchmark(csv: &str, concurrency: usize) -> Option<RedisBenchmark> {
    let line = csv.lines().find(|l| l.starts_with("\"GET\""))?;
    let fields: Vec<f64> = line
        .split(',')
        .skip(1)
        .map(|f| f.trim_matches('"').parse::<f64>())
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    let (rps, p50_ms, p99_ms) = (*fields.first()?, *fields.get(3)?, *fields.get(5)?);
    Some(RedisBenchmark {
        concurrency,
        ops_per_sec: rps,
        p50_us: p50_ms * 1000.0,
        p99_us: p99_ms * 1000.0,
    })
}

/// Deletes every key of this run: `SCAN MATCH *{tag}*` (the peers add
/// prefixes of their own in front of the keys they are given).
async fn delete_keys(redis: &RedisTarget, tag: &str) -> Result<()> {
    let mut conn = subjects::patient_connection(redis).await?;
    let pattern = format!("*{tag}*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .context("cannot list the bench's keys")?;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .context("cannot delete the bench's keys")?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

fn thousands(n: f64) -> String {
    crate::table::count(n.round() as u64)
}

fn table(report: &Report) -> String {
    let mut out = format!(
        "aside bench: {} reads per pass, {} keys, {} round(s), median [range] of throughput\n",
        report.ops, report.keys, report.repeat
    );
    let concurrencies: Vec<usize> = {
        let mut c: Vec<usize> = report.results.iter().map(|r| r.concurrency).collect();
        c.dedup();
        c
    };
    for c in concurrencies {
        out.push_str(&format!(
            "\nconcurrency {c}\n{:<15} {:<10} {:>30} {:>9} {:>9} {:>14} {:>6}\n",
            "subject", "tier", "reads/s", "p50 µs", "p99 µs", "× floor", "db"
        ));
        for r in report.results.iter().filter(|r| r.concurrency == c) {
            let range = format!(
                "{} [{}–{}]",
                thousands(r.ops_per_sec),
                thousands(r.ops_per_sec_min),
                thousands(r.ops_per_sec_max)
            );
            out.push_str(&format!(
                "{:<15} {:<10} {:>30} {:>9.1} {:>9.1} {:>14} {:>6}\n",
                r.subject,
                r.tier,
                range,
                r.p50_us,
                r.p99_us,
                format!(
                    "{:.2} {}",
                    r.ratio_to_floor,
                    if r.subject == r.floor { "(floor)" } else { "" }
                ),
                r.db_queries
            ));
        }
        if let Some(rb) = report.redis_benchmark.iter().find(|b| b.concurrency == c) {
            out.push_str(&format!(
                "{:<15} {:<10} {:>30} {:>9.1} {:>9.1}\n",
                "redis-benchmark",
                "redis",
                thousands(rb.ops_per_sec),
                rb.p50_us,
                rb.p99_us
            ));
        }
    }
    if !report.peers {
        out.push_str("\npeers (cached, amalgam-cache) not built: rebuild with `--features peers`\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"GET\",\"98039.22\",\"0.273\",\"0.080\",\"0.263\",\"0.383\",\"0.527\",\"1.791\"\n";
        let row = parse_redis_benchmark(csv, 16).expect("a GET line");
        assert_eq!(row.concurrency, 16);
        assert!((row.ops_per_sec - 98039.22).abs() < 1e-6);
        assert!((row.p50_us - 263.0).abs() < 1e-6);
        assert!((row.p99_us - 527.0).abs() < 1e-6);
        assert!(parse_redis_benchmark("\"SET\",\"1\"\n", 1).is_none());
        assert!(parse_redis_benchmark("\"GET\",\"x\"\n", 1).is_none());
    }

    #[test]
    fn every_subject_runs_with_its_floor() {
        let args = BenchArgs {
            redis: String::new(),
            redis_tls: RedisTlsArgs::default(),
            ops: 1,
            concurrency: vec![1],
            keys: 1,
            repeat: 1,
            subjects: vec![SubjectId::AsideL1],
            no_redis_benchmark: true,
            json: true,
            report: None,
            scenario: BenchScenario::Hits,
            entries: 1,
        };
        assert_eq!(
            chosen_subjects(&args).unwrap(),
            vec![SubjectId::MokaGet, SubjectId::AsideL1]
        );
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
