//! `aside bench --scenario outage`: what a cache that stopped answering
//! adds to a read, once the circuit breaker has opened.
//!
//! Owns the outage measurement. aside reads the bench's profiles through a
//! fault proxy (`aside_testkit::proxy::FaultProxy`, in this process) in
//! front of the `--redis` server. Every profile is read once through it
//! (so the connection is up and the namespace warm; those keys are then
//! deleted by the bench's own connection, since nothing could delete them
//! after), and the proxy is blackholed: open connections stop forwarding
//! and new ones are never answered, as when a network drops a server's
//! packets. Reads then wait
//! for the operation timeout until the breaker opens; that transition is
//! reported on its own (`opened_after_ms`, `reads_until_open`). From then
//! on every read skips the store and goes to the loader, and each round
//! measures, at each concurrency, two latency passes of `--ops` reads:
//!
//! - `db`: the loader alone (`Db::load_user` on the bench's SQLite), the
//!   floor: what the service would cost with no cache at all;
//! - `aside`: `Namespace::get_or_load` with the breaker open.
//!
//! `added_p99_us` is aside's p99 minus the floor's, per round; the report
//! gives its median and range over rounds (`--repeat`), with both p50s and
//! p99s. It also reports what the breaker promises, for the reader (and
//! `tests/bench.rs`) to check: how many reads of the measured passes
//! reached the store (`store_calls_while_open`, counted as store errors
//! and slow calls: 0 when the breaker kept every read off it) and how many
//! database queries they made (`db_queries`: at most `reads`, fewer when
//! concurrent readers of one key shared a load, at least `reads` over the
//! concurrency). A breaker
//! that closed during the passes fails the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aside::{Aside, BreakerState};
use aside_testkit::proxy::FaultProxy;
use serde::Serialize;

use super::BenchArgs;
use super::drive::{Op, drive};
use super::subjects::{AsideGet, TTL, check};
use crate::db::{Db, User};
use crate::error::{CliError, Context, Result};

/// How long the breaker is given to open once Redis is blackholed: many
/// operation timeouts, so a loaded machine does not fail the run.
const OPEN_WITHIN: Duration = Duration::from_secs(60);

/// The outcome at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct OutageResult {
    /// Concurrent tasks.
    pub concurrency: usize,
    /// Rounds measured.
    pub rounds: u32,
    /// Reads per pass.
    pub ops: u64,
    /// The loader alone: median p50 and p99 over rounds, in µs.
    pub db_p50_us: f64,
    /// See `db_p50_us`.
    pub db_p99_us: f64,
    /// aside with the breaker open: median p50 and p99 over rounds, in µs.
    pub aside_p50_us: f64,
    /// See `aside_p50_us`.
    pub aside_p99_us: f64,
    /// aside's p99 minus the loader's, per round: median, min and max, in µs.
    pub added_p99_us: f64,
    /// See `added_p99_us`.
    pub added_p99_us_min: f64,
    /// See `added_p99_us`.
    pub added_p99_us_max: f64,
    /// aside's p50 minus the loader's, median over rounds, in µs.
    pub added_p50_us: f64,
    /// Store calls made (and failed or timed out) during the measured
    /// aside passes: 0 when the open breaker kept every read off the store.
    pub store_calls_while_open: u64,
    /// Database queries during the measured aside passes: at most the
    /// reads, fewer when concurrent readers of a key shared a load.
    pub db_queries: u64,
    /// Reads in the measured aside passes.
    pub reads: u64,
}

/// The whole report.
#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    scenario: &'static str,
    redis: String,
    keys: u64,
    /// From the blackhole to the breaker's opening, in ms.
    opened_after_ms: u64,
    /// Reads started until the breaker opened.
    reads_until_open: u64,
    /// The operation timeout each of those reads could wait.
    op_timeout_ms: u64,
    results: Vec<OutageResult>,
}

/// The loader alone.
#[derive(Clone)]
struct DbOnly(Db);

impl Op for DbOnly {
    async fn call(&self, id: u64) -> Result<()> {
        let user = self
            .0
            .load_user(id)
            .await
            .map_err(|e| CliError::new(format!("the database failed: {e}")))?;
        check(id, user.as_ref())
    }
}

/// The socket address of a plain `redis://` URL.
async fn upstream(url: &str) -> Result<std::net::SocketAddr> {
    let info = redis::IntoConnectionInfo::into_connection_info(url).context("not a Redis URL")?;
    let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
        return Err(CliError::new(
            "--scenario outage needs a plain redis://host:port URL (its fault proxy forwards TCP, not TLS)",
        ));
    };
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .context(format_args!("cannot resolve {host}"))?
        .next()
        .ok_or_else(|| CliError::new(format!("{host} has no address")))
}

/// `url` with its host and port replaced by the proxy's `addr`: the user,
/// password and database of the URL are kept, so the run authenticates and
/// writes where its clean-up (on `url` itself) looks.
fn through_proxy(url: &str, addr: std::net::SocketAddr) -> Result<String> {
    let malformed = || CliError::new("--redis: expected redis://[user:password@]host:port[/db]");
    let (scheme, rest) = url.split_once("://").ok_or_else(malformed)?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    if authority[host_start..].is_empty() {
        return Err(malformed());
    }
    Ok(format!("{scheme}://{}{addr}{path}", &authority[..host_start]))
}

fn micros(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs the outage scenario and prints its report.
///
/// # Errors
/// Redis unreachable before the outage, a database failure, a read that
/// failed or answered the wrong profile, or a breaker that did not open.
pub async fn run(args: &BenchArgs) -> Result<()> {
    if args.redis_tls.redis_ca.is_some() || args.redis_tls.redis_cert.is_some() {
        return Err(CliError::new("--scenario outage takes no TLS files"));
    }
    let dir = tempfile::Builder::new()
        .prefix("aside-bench-")
        .tempdir()
        .context("cannot create a temporary directory for the database")?;
    let (db, _) = Db::open_seeded(&dir.path().join("users.db"), 4, args.keys).await?;
    let ids: Arc<[u64]> = (1..=args.keys).collect::<Vec<_>>().into();
    let proxy = FaultProxy::start(upstream(&args.redis).await?).await;
    let tag = format!("aside-bench-{:08x}", rand::random::<u32>());
    let proxied = through_proxy(&args.redis, proxy.addr())?;
    let store = aside::store::redis::RedisStore::connect(&proxied)
        .await
        .context(format_args!(
            "cannot reach Redis through the proxy at {}",
            crate::redact::url(&proxied)
        ))?;
    let aside = Aside::builder().store(store).prefix(format!("{tag}:")).build();
    let op_timeout = aside::DEFAULT_OP_TIMEOUT;
    let ns = aside
        .namespace::<u64, User>("user")
        .ttl(TTL)
        .jitter(0.0)
        .build()
        .map_err(|e| CliError::new(format!("cannot build the namespace: {e}")))?;
    let through = AsideGet::over(ns, db.clone());
    for &id in ids.iter() {
        through.call(id).await?;
    }
    // The keys written above stay behind the blackhole: delete them with a
    // connection of the bench's own, before the outage.
    super::delete_keys(
        &crate::store::RedisTarget {
            url: args.redis.clone(),
            tls: args.redis_tls.clone(),
        },
        &tag,
    )
    .await?;
    let chatty = !args.json;
    if chatty {
        eprintln!("blackholing Redis; reading until the breaker opens ...");
    }
    proxy.blackhole();
    let blackholed = Instant::now();
    let mut reads_until_open = 0u64;
    while aside.breaker_state() != BreakerState::Open {
        if blackholed.elapsed() > OPEN_WITHIN {
            return Err(CliError::new(format!(
                "the breaker did not open within {OPEN_WITHIN:?} of the blackhole"
            )));
        }
        let pass = drive(&through, &ids, 16, 16, false).await?;
        reads_until_open += pass.ops;
    }
    let opened_after = blackholed.elapsed();

    let mut results = Vec::new();
    for &concurrency in &args.concurrency {
        let mut rounds = Rounds::default();
        for round in 1..=args.repeat {
            if chatty {
                eprintln!("round {round}/{}: concurrency {concurrency} ...", args.repeat);
            }
            let alone = drive(&DbOnly(db.clone()), &ids, concurrency, args.ops, true).await?;
            let (stats, queries) = (aside.stats(), db.queries());
            let open = drive(&through, &ids, concurrency, args.ops, true).await?;
            let after = aside.stats();
            // Half-open (a probe in flight) skips the store as open does.
            if after.breaker == BreakerState::Closed {
                return Err(CliError::new(
                    "the breaker closed during the outage: the proxy let a probe through",
                ));
            }
            rounds.store_calls += (after.store_errors - stats.store_errors) + (after.store_slow - stats.store_slow);
            rounds.db_queries += db.queries() - queries;
            rounds.reads += open.ops;
            let (Some(alone), Some(open)) = (alone.latency, open.latency) else {
                return Err(CliError::new("a latency pass recorded nothing"));
            };
            rounds.push(&alone, &open);
        }
        results.push(rounds.result(concurrency, args.repeat, args.ops));
    }
    db.close().await;
    drop(proxy);

    let report = Report {
        bench: "hit",
        scenario: "outage",
        redis: crate::redact::url(&args.redis),
        keys: args.keys,
        opened_after_ms: u64::try_from(opened_after.as_millis()).unwrap_or(u64::MAX),
        reads_until_open,
        op_timeout_ms: u64::try_from(op_timeout.as_millis()).unwrap_or(u64::MAX),
        results,
    };
    super::print_report(args.json, &report, table)
}

/// Per-round figures at one concurrency.
#[derive(Default)]
struct Rounds {
    db_p50: Vec<f64>,
    db_p99: Vec<f64>,
    aside_p50: Vec<f64>,
    aside_p99: Vec<f64>,
    added_p99: Vec<f64>,
    added_p50: Vec<f64>,
    store_calls: u64,
    db_queries: u64,
    reads: u64,
}

impl Rounds {
    fn push(&mut self, alone: &hdrhistogram::Histogram<u64>, open: &hdrhistogram::Histogram<u64>) {
        let (d50, d99, a50, a99) = (
            micros(alone, 0.50),
            micros(alone, 0.99),
            micros(open, 0.50),
            micros(open, 0.99),
        );
        self.db_p50.push(d50);
        self.db_p99.push(d99);
        self.aside_p50.push(a50);
        self.aside_p99.push(a99);
        self.added_p99.push(a99 - d99);
        self.added_p50.push(a50 - d50);
    }

    fn result(&self, concurrency: usize, rounds: u32, ops: u64) -> OutageResult {
        OutageResult {
            concurrency,
            rounds,
            ops,
            db_p50_us: super::median(&self.db_p50),
            db_p99_us: super::median(&self.db_p99),
            aside_p50_us: super::median(&self.aside_p50),
            aside_p99_us: super::median(&self.aside_p99),
            added_p99_us: super::median(&self.added_p99),
            added_p99_us_min: self.added_p99.iter().copied().fold(f64::INFINITY, f64::min),
            added_p99_us_max: self.added_p99.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            added_p50_us: super::median(&self.added_p50),
            store_calls_while_open: self.store_calls,
            db_queries: self.db_queries,
            reads: self.reads,
        }
    }
}

fn table(report: &Report) -> String {
    let rows = crate::table::render(
        &[
            "concurrency",
            "db p50 / p99 (µs)",
            "aside p50 / p99 (µs)",
            "added p99 (µs) median [min–max]",
            "store calls",
            "db queries / reads",
        ],
        &report.results,
        |r| {
            vec![
                r.concurrency.to_string(),
                format!("{:.1} / {:.1}", r.db_p50_us, r.db_p99_us),
                format!("{:.1} / {:.1}", r.aside_p50_us, r.aside_p99_us),
                format!(
                    "{:.1} [{:.1}–{:.1}]",
                    r.added_p99_us, r.added_p99_us_min, r.added_p99_us_max
                ),
                r.store_calls_while_open.to_string(),
                format!("{} / {}", r.db_queries, r.reads),
            ]
        },
        None,
    );
    format!(
        "Redis blackholed; the breaker opened after {} ms and {} reads (operation timeout {} ms).\n\
         Then, with the breaker open, {} rounds per concurrency:\n{rows}",
        report.opened_after_ms,
        report.reads_until_open,
        report.op_timeout_ms,
        report.results.first().map_or(0, |r| r.rounds),
    )
}

#[cfg(test)]
mod tests {
    use super::through_proxy;

    #[test]
    fn the_proxied_url_keeps_the_user_password_and_database() {
        let proxy = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            through_proxy("redis://127.0.0.1:6379", proxy).unwrap(),
            "redis://127.0.0.1:4000"
        );
        assert_eq!(
            through_proxy("redis://u:p@w@redis.example:6379/3", proxy).unwrap(),
            "redis://u:p@w@127.0.0.1:4000/3"
        );
        assert_eq!(
            through_proxy("redis://:secret@[::1]:6379/2", proxy).unwrap(),
            "redis://:secret@127.0.0.1:4000/2"
        );
        assert!(through_proxy("127.0.0.1:6379", proxy).is_err());
        assert!(through_proxy("redis://u@/1", proxy).is_err());
    }
}
