//! `aside serve`'s health state: what `/healthz` reports, refreshed in the
//! background.
//!
//! Owns the task that pings the database and the store every
//! `--health-interval-ms` (each ping bounded by [`PING_TIMEOUT`], counted in
//! `aside_serve_health_pings_total`) and keeps the latest result with the
//! time it was taken. `/healthz` only reads that result, so a flood of
//! health checks costs the database and the store nothing. A failure is
//! logged (its text redacted) when it appears after a success; the
//! snapshot keeps only a fixed description of it, for the response body.

use std::time::Duration;

use aside::Aside;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::redact;
use crate::serve::db::Database;
use crate::serve::metrics::HEALTH_PINGS;

/// Bound on each ping.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// One round of checks.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The database's answer: `Err` holds a description safe to show.
    pub database: Result<(), &'static str>,
    /// The store's answer, likewise.
    pub store: Result<(), &'static str>,
    /// How long the store's ping took.
    pub store_latency: Duration,
    /// When the round started.
    pub taken_at: Instant,
}

/// The background check and its latest result. Dropping it stops the task.
#[derive(Debug)]
pub struct HealthMonitor {
    latest: watch::Receiver<Snapshot>,
    every: Duration,
    task: JoinHandle<()>,
}

impl HealthMonitor {
    /// Checks once (so the first `/healthz` has an answer), then every
    /// `every` in a task of its own.
    pub async fn start(db: Database, aside: Aside, every: Duration) -> HealthMonitor {
        let first = check(&db, &aside, None).await;
        let (publish, latest) = watch::channel(first);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is now: that check is done
            loop {
                tick.tick().await;
                let previous = publish.borrow().clone();
                publish.send_replace(check(&db, &aside, Some(&previous)).await);
            }
        });
        HealthMonitor { latest, every, task }
    }

    /// The latest result.
    pub fn latest(&self) -> Snapshot {
        self.latest.borrow().clone()
    }

    /// Stops the checks (before the database closes).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Past this age a result is not trusted: the checks stopped, which no
    /// ping can cause (each is bounded), so the process is in trouble.
    pub fn stale_after(&self) -> Duration {
        self.every * 3 + PING_TIMEOUT * 2
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pings the database and the store at once. Logs a failure that was not
/// in `previous`.
async fn check(db: &Database, aside: &Aside, previous: Option<&Snapshot>) -> Snapshot {
    let taken_at = Instant::now();
    let timed_store_ping = async {
        let started = Instant::now();
        let answer = ping("store", aside.store().ping()).await;
        (answer, started.elapsed())
    };
    let (database, (store, store_latency)) = tokio::join!(ping("database", db.ping()), timed_store_ping);
    let database = database.map_err(|e| {
        if previous.is_none_or(|p| p.database.is_ok()) {
            tracing::warn!("health check: the database failed: {e}");
        }
        "database unavailable"
    });
    let store = store.map_err(|e| {
        if previous.is_none_or(|p| p.store.is_ok()) {
            tracing::warn!("health check: the cache store failed: {e}");
        }
        "cache unavailable"
    });
    Snapshot {
        database,
        store,
        store_latency,
        taken_at,
    }
}

/// `Ok(())`, or what went wrong (redacted, for the log), within
/// [`PING_TIMEOUT`].
async fn ping<E: std::fmt::Display>(
    target: &'static str,
    check: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    ::metrics::counter!(HEALTH_PINGS, "target" => target).increment(1);
    match tokio::time::timeout(PING_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(redact::text(&e.to_string())),
        Err(_) => Err(format!("no answer within {} ms", PING_TIMEOUT.as_millis())),
    }
}
