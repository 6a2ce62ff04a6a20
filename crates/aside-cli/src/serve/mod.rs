//! `aside serve`: the article's user-profile service over HTTP, with the
//! cache in front of SQLite or PostgreSQL.
//!
//! Owns the command's flags and its start-up and shut-down: the metrics
//! recorder first (so aside's counters register with it), then the
//! database (migrated, and seeded when empty), the store (in-process unless
//! `--redis` or `--memcached`), the two namespaces, the background health
//! check, and the server, which prints `admin listening on ADDR` (with
//! `--admin-listen`) then `listening on ADDR` on stdout once bound and, on
//! SIGINT or SIGTERM, stops accepting and lets in-flight requests finish.
//! The routes are in `routes`, the connections and the limits on them in
//! `http`, the health state in `health`, the database in `db`, the
//! metrics in `metrics`.

pub(crate) mod db;
mod health;
mod http;
mod metrics;
mod routes;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aside::Strategy;
use clap::Args;

use crate::error::{Context, Result};
use crate::store::StoreArgs;
use db::Database;
use health::HealthMonitor;
use http::{ConcurrencyLimit, Endpoint};
use routes::{AppState, RequestLimits};

/// How long a shutdown may spend replaying queued invalidations.
const SHUTDOWN_REPLAY_BOUND: Duration = Duration::from_secs(10);

/// How long a cached "no such row" is kept (at most the TTL).
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// Flags of `aside serve`. `Debug` masks the database URL's password.
#[derive(Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the address bound is
    /// printed as `listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Serve `/metrics` and `/healthz` on this address instead of on
    /// --listen's (printed as `admin listening on ADDR`).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Also send traces (a span per cache operation) and metrics to the
    /// OpenTelemetry collector at this OTLP/HTTP base URL, such as
    /// `http://127.0.0.1:4318` (needs the `otel` feature).
    #[arg(long, value_name = "URL")]
    pub otel: Option<String>,

    /// How often metrics are sent to the collector of --otel.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub otel_interval_ms: u64,

    /// A client that has not sent a request's headers within this many
    /// milliseconds is disconnected (idle keep-alive connections too).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub header_timeout_ms: u64,

    /// A connection whose answer cannot be written for this many
    /// milliseconds (a client that stopped reading) is closed, freeing
    /// its slot.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub write_timeout_ms: u64,

    /// A request not answered within this many milliseconds gets a 504.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub request_timeout_ms: u64,

    /// Open connections per listener; past it a new one is closed as soon
    /// as it is accepted.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Requests in flight on the public routes; past it a request gets a
    /// 503 at once (`/metrics` and `/healthz` are not counted).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrency: u32,

    /// How often the database and the store are pinged for `/healthz`, in
    /// milliseconds (`/healthz` itself pings nothing).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub health_interval_ms: u64,

    /// Database: `postgres://...` or `sqlite://PATH` (created if missing);
    /// by default a temporary SQLite file deleted at exit.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,

    /// Where the cache lives (`--redis`, `--memcached`; in process by default).
    #[command(flatten)]
    pub store: StoreArgs,

    /// Invalidation strategy: delete, double-delete, versioned or lease.
    #[arg(long, default_value = "lease", value_parser = crate::parse::strategy)]
    pub consistency: Strategy,

    /// Users to seed when the users table is empty (and N/10 products when
    /// the products table is).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub seed_users: u64,

    /// Delay after each database read, in milliseconds (a slower database).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub db_read_delay_ms: u64,

    /// Cache entry TTL in seconds; 0 turns the cache off (every read goes to
    /// the database).
    #[arg(long, default_value_t = 600.0, value_parser = crate::parse::seconds_or_zero)]
    pub ttl: f64,

    /// Key prefix before the namespaces: keys are `{prefix}user:profile:{id}`
    /// and `{prefix}product:{id}`.
    #[arg(long, default_value = "")]
    pub prefix: String,
}

impl std::fmt::Debug for ServeArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so that a new flag cannot be left out.
        let ServeArgs {
            listen,
            admin_listen,
            otel,
            otel_interval_ms,
            header_timeout_ms,
            write_timeout_ms,
            request_timeout_ms,
            max_connections,
            max_concurrency,
            health_interval_ms,
            database_url,
            store,
            consistency,
            seed_users,
            db_read_delay_ms,
            ttl,
            prefix,
        } = self;
        f.debug_struct("ServeArgs")
            .field("listen", listen)
            .field("admin_listen", admin_listen)
            .field("otel", &otel.as_deref().map(crate::redact::url))
            .field("otel_interval_ms", otel_interval_ms)
            .field("header_timeout_ms", header_timeout_ms)
            .field("write_timeout_ms", write_timeout_ms)
            .field("request_timeout_ms", request_timeout_ms)
            .field("max_connections", max_connections)
            .field("max_concurrency", max_concurrency)
            .field("health_interval_ms", health_interval_ms)
            .field("database_url", &database_url.as_deref().map(crate::redact::url))
            .field("store", store)
            .field("consistency", consistency)
            .field("seed_users", seed_users)
            .field("db_read_delay_ms", db_read_delay_ms)
            .field("ttl", ttl)
            .field("prefix", prefix)
            .finish()
    }
}

/// Runs the service until SIGINT or SIGTERM.
///
/// # Errors
/// When the database, the store or the address cannot be reached or bound.
pub async fn run(args: ServeArgs) -> Result<()> {
    let metrics = metrics::install()?;

    let read_delay = Duration::from_millis(args.db_read_delay_ms);
    // The temporary database directory, if any, is removed when `_scratch`
    // drops, after the pool is closed.
    let (db, _scratch) = Database::open(args.database_url.as_deref(), read_delay).await?;
    let result = serve(&args, db.clone(), metrics).await;
    db.close().await;
    result
}

async fn serve(args: &ServeArgs, db: Database, metrics: metrics_exporter_prometheus::PrometheusHandle) -> Result<()> {
    db.migrate().await?;
    let (users, products) = db.seed(args.seed_users, args.seed_users / 10).await?;
    if users + products > 0 {
        eprintln!("seeded {users} users and {products} products");
    }

    let aside = args.store.choice().builder(&args.prefix).await?.build();
    let cache_on = args.ttl > 0.0;
    // With the cache off the namespaces are still built (reads go around them).
    let ttl = Duration::from_secs_f64(if cache_on { args.ttl } else { 1.0 });
    let users = aside
        .namespace::<u64, db::User>("user:profile")
        .ttl(ttl)
        .jitter(0.1)
        .strategy(args.consistency)
        .negative_ttl(NEGATIVE_TTL.min(ttl))
        .build()
        .context("cannot configure the user:profile namespace")?;
    let products = aside
        .namespace::<u64, db::Product>("product")
        .ttl(ttl)
        .jitter(0.1)
        .strategy(args.consistency)
        .negative_ttl(NEGATIVE_TTL.min(ttl))
        .build()
        .context("cannot configure the product namespace")?;

    let health = HealthMonitor::start(
        db.clone(),
        aside.clone(),
        Duration::from_millis(args.health_interval_ms),
    )
    .await;
    let state = Arc::new(AppState {
        aside,
        db,
        users,
        products,
        cache_on,
        metrics,
        health,
        writes: tokio_util::task::TaskTracker::new(),
    });
    let limits = RequestLimits {
        timeout: Duration::from_millis(args.request_timeout_ms),
        concurrency: ConcurrencyLimit::new(args.max_concurrency as usize),
    };
    let max_connections = args.max_connections as usize;
    let listener = bind(args.listen).await?;
    let bound = listener.local_addr().context("cannot read the bound address")?;
    let (public, admin) = match args.admin_listen {
        Some(addr) => {
            let admin = Endpoint::new(
                "admin",
                bind(addr).await?,
                routes::admin(state.clone(), &limits, true),
                max_connections,
            );
            (routes::public(state.clone(), &limits), Some(admin))
        }
        None => (
            routes::public(state.clone(), &limits).merge(routes::admin(state.clone(), &limits, false)),
            None,
        ),
    };
    let public = Endpoint::new("public", listener, public, max_connections);
    eprintln!(
        "aside serve: {} database, {} store, strategy {}, cache {}",
        state.db.backend(),
        state.aside.store().name(),
        args.consistency,
        if cache_on { "on" } else { "off (--ttl 0)" }
    );
    // Tests and scripts wait for the last line, `listening on`.
    let mut stdout = std::io::stdout();
    if let Some(admin) = &admin {
        writeln!(stdout, "admin listening on {}", admin.local_addr()?).context("cannot write to stdout")?;
    }
    writeln!(stdout, "listening on {bound}")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;

    let header_timeout = Duration::from_millis(args.header_timeout_ms);
    // Past the longest a request may take, and a client to send one.
    let drain = header_timeout + limits.timeout + Duration::from_secs(1);
    let timeouts = http::ConnectionTimeouts {
        header: header_timeout,
        write: Duration::from_millis(args.write_timeout_ms),
    };
    http::serve(public, admin, timeouts, drain, shutdown_signal()).await;
    state.health.stop();
    // Writes whose requests were cut off may still be running: their
    // invalidations must be made (or queued) before the queue is replayed.
    state.writes.close();
    if tokio::time::timeout(SHUTDOWN_REPLAY_BOUND, state.writes.wait())
        .await
        .is_err()
    {
        eprintln!(
            "aside serve: {} writes still running after {} s; their invalidations may be lost",
            state.writes.len(),
            SHUTDOWN_REPLAY_BOUND.as_secs()
        );
    }
    // The retry queue lives in this process only: replay what it holds
    // now, or the next process serves those entries stale until their TTL.
    eprintln!(
        "aside serve: replaying queued invalidations (at most {} s)",
        SHUTDOWN_REPLAY_BOUND.as_secs()
    );
    let report = state.aside.shutdown(SHUTDOWN_REPLAY_BOUND).await;
    eprintln!(
        "aside serve: stopped; queued invalidations: {} replayed, {} dropped",
        report.replayed, report.dropped
    );
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .context(format_args!("cannot listen on {addr}"))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    crate::signal::stop_requested().await;
    eprintln!("aside serve: shutting down, finishing in-flight requests");
}
