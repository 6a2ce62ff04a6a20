//! `aside serve`: the article's user-profile service over HTTP, with the
//! cache in front of SQLite or PostgreSQL.
//!
//! Owns the command's flags and its start-up and shut-down: the metrics
//! recorder first (so aside's counters register with it), then the
//! database (migrated, and seeded when empty), the store (in-process unless
//! `--redis` or `--memcached`), the two namespaces, and the server, which prints
//! `listening on ADDR` on stdout once bound and, on SIGINT or SIGTERM,
//! stops accepting and lets in-flight requests finish. The routes are in
//! `routes`, the database in `db`, the metrics in `metrics`.

mod db;
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
use routes::AppState;

/// How long a cached "no such row" is kept (at most the TTL).
const NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// Flags of `aside serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the address bound is
    /// printed as `listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,

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

    let state = Arc::new(AppState {
        aside,
        db,
        users,
        products,
        cache_on,
        metrics,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .context(format_args!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr().context("cannot read the bound address")?;
    eprintln!(
        "aside serve: {} database, {} store, strategy {}, cache {}",
        state.db.backend(),
        state.aside.store().name(),
        args.consistency,
        if cache_on { "on" } else { "off (--ttl 0)" }
    );
    // Tests and scripts wait for this line.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {bound}")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")?;

    axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the server failed")?;
    eprintln!("aside serve: stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    eprintln!("aside serve: shutting down, finishing in-flight requests");
}
