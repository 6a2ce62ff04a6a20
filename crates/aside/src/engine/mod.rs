//! The engine: what every namespace shares, and the guarded way to reach the store.
//!
//! Owns [`Core`]: the store, the breaker, the per-operation timeout, the
//! counters, the retry queue of failed invalidations and the delayed-delete
//! timer. Every store call of the read and write paths goes through
//! [`Core::call`], which is where failing open is decided: a skipped, failed
//! or timed-out call becomes an `Error` the read path turns into a miss.
//!
//! One namespace's engine is `state::NsInner`; its paths are `impl NsInner`
//! blocks, one concern a file:
//!
//! - `l1`: the read entry points, each through the in-process tier;
//! - `read`: the single-key read below it (single-flight, the lease's
//!   state machine, the article's lock, the loader);
//! - `batch`: the batch read (one lookup, one loader call, one fill);
//! - `refresh`: values still cached (early refresh, fail-safe, options);
//! - `strategy`: every decision that depends on the strategy, for both
//!   read paths and the write path: how a key is looked up, filled and
//!   invalidated;
//! - `write`: invalidations and `set`, the L1 and the bus around them;
//! - `entry`: values to stored bytes and back, and their freshness;
//! - `tier`: the L1 cache itself (epoch-fenced installs) and the registry of
//!   same-named namespaces a local write evicts; `state` holds it, `l1`
//!   reads and fills it, and neither imports the other's callers;
//! - `lease`, `single_flight`, `retry`, `timer`: the machinery they share.
//!
//! None of them talk to a store except through `Core`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::breaker::{Admit, Breaker, BreakerState};
use crate::error::{Error, ErrorKind};
use crate::metrics::{Counters, Event, NamespaceMetrics, Stats};
use crate::store::{Store, StoreResult};

pub(crate) mod batch;
pub(crate) mod entry;
pub(crate) mod l1;
pub(crate) mod lease;
pub(crate) mod local;
pub(crate) mod read;
pub(crate) mod refresh;
pub(crate) mod retry;
pub mod single_flight;
pub(crate) mod state;
pub(crate) mod strategy;
pub(crate) mod tier;
pub(crate) mod timer;
pub(crate) mod update;
pub(crate) mod write;

pub(crate) use retry::RetryBounds;
use retry::{PendingOp, RetryQueue};
use timer::DelayedDeletes;

/// Where a new `Versioned` counter starts: the clock in microseconds, above
/// any number an earlier counter of the key reached by counting, so a
/// counter lost to a restart or an eviction never reuses a version.
pub(crate) fn fresh_version() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The instant `after` from now, at most 30 years away: a bound of
/// `Duration::MAX` means "no bound", and `Instant + Duration::MAX` panics.
/// Tokio's own timers saturate the same way, at the same 30 years.
pub(crate) fn deadline_after(after: Duration) -> tokio::time::Instant {
    deadline_from(tokio::time::Instant::now(), after)
}

/// [`deadline_after`] from `now`, for a caller that has read the clock
/// already and compares other deadlines with that reading.
pub(crate) fn deadline_from(now: tokio::time::Instant, after: Duration) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    now + after.min(FAR)
}

/// State shared by all namespaces of one [`crate::Aside`].
pub(crate) struct Core {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) breaker: Breaker,
    pub(crate) op_timeout: Duration,
    pub(crate) counters: Counters,
    pub(crate) retry: Arc<RetryQueue>,
    pub(crate) delayed: DelayedDeletes,
    pub(crate) prefix: String,
    pub(crate) max_key_len: usize,
    /// The store is in this process: calls skip the breaker and the timeout.
    local: bool,
    /// The store answers `peek_shared` and `get_shared`: reads try a
    /// synchronous hit first (`engine::local`).
    pub(crate) shares_decoded: bool,
    /// The invalidation bus and its routes, when the `Aside` has a bus.
    pub(crate) router: Option<crate::bus::route::Router>,
    /// The namespaces with an L1, by name.
    pub(crate) l1_peers: tier::Peers,
    /// Facade handles for work no namespace owns (replays, delayed deletes).
    pub(crate) metrics: NamespaceMetrics,
}

impl Drop for Core {
    fn drop(&mut self) {
        self.retry.close();
    }
}

/// The bus listener feeds other processes' invalidations to this `Aside`'s L1s.
impl crate::bus::route::Subscriber for Core {
    fn router(&self) -> Option<&crate::bus::route::Router> {
        self.router.as_ref()
    }

    fn evict_local(&self, namespace: &str, keys: &[String]) {
        self.l1_peers.evict(namespace, keys);
    }

    fn clear_local(&self) {
        for evictor in self.l1_peers.live(None) {
            evictor.clear_local();
        }
    }
}

impl Core {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        breaker: Breaker,
        op_timeout: Duration,
        retry_bounds: RetryBounds,
        prefix: String,
        max_key_len: usize,
    ) -> Self {
        Core {
            router: None,
            l1_peers: tier::Peers::default(),
            local: store.is_local(),
            shares_decoded: store.shares_decoded(),
            store,
            breaker,
            op_timeout,
            counters: Counters::default(),
            retry: Arc::new(RetryQueue::new(retry_bounds)),
            delayed: DelayedDeletes::new(),
            prefix,
            max_key_len,
            metrics: NamespaceMetrics::register(""),
        }
    }

    pub(crate) fn record(&self, ns: &NamespaceMetrics, event: Event) {
        self.counters.add(event);
        ns.add(event);
    }

    /// Records an L1 hit: [`Event::Hit`] and [`Event::L1Hit`] at once.
    pub(crate) fn record_l1_hit(&self, ns: &NamespaceMetrics) {
        self.counters.add_l1_hit();
        ns.add(Event::Hit);
        ns.add(Event::L1Hit);
    }

    /// Runs one store operation behind the breaker and the timeout, counting
    /// under a namespace's metrics.
    ///
    /// The breaker is fed the call's outcome and its duration (it opens on
    /// failures and on slowness; see [`crate::breaker`]); while it is open
    /// the store is not touched. Only failures of the store as a whole feed the breaker: a broken
    /// connection, a timeout. A server's answer about one key (Redis's
    /// `WRONGTYPE`, a value memcached refuses; [`crate::store::StoreError::is_per_key`])
    /// is counted as a store error and returned, but proves the server
    /// answers, so it counts as a success there: three reads of one odd key
    /// must not switch the cache off for every key.
    ///
    /// # Errors
    /// [`ErrorKind::Store`] when the breaker is open or the store failed,
    /// [`ErrorKind::Timeout`] when it did not answer within `op_timeout`.
    pub(crate) async fn call_for<T>(
        &self,
        ns: &NamespaceMetrics,
        fut: impl Future<Output = StoreResult<T>>,
    ) -> Result<T, Error> {
        if self.local {
            // The hot path of the embedded store: no timer, no breaker.
            return fut.await.map_err(|e| self.store_error(e));
        }
        match self.breaker.admit() {
            Admit::Call => {}
            admit => {
                if admit == Admit::SkipAndProbe {
                    self.breaker.spawn_probe(&self.store, self.op_timeout);
                }
                self.record(ns, Event::StoreSkipped);
                return Err(Error::new(ErrorKind::Store, "circuit breaker open: store skipped"));
            }
        }
        let started = tokio::time::Instant::now();
        let answer = self.bounded(started, fut).await;
        let elapsed = started.elapsed();
        if self.breaker.is_slow(elapsed) {
            self.record(ns, Event::StoreSlow);
        }
        let opened = match &answer {
            Ok(Ok(_)) => self.breaker.record_success(elapsed),
            Ok(Err(e)) if e.is_per_key() => {
                self.record(ns, Event::StoreError);
                self.breaker.record_success(elapsed)
            }
            Ok(Err(_)) | Err(_) => {
                self.record(ns, Event::StoreError);
                self.breaker.record_failure(elapsed)
            }
        };
        if opened {
            // The one call that opened it starts the background probe.
            self.breaker.spawn_probe(&self.store, self.op_timeout);
        }
        self.answer(answer)
    }

    /// One store operation bounded by the timeout, ignoring the breaker.
    pub(crate) async fn call_unguarded<T>(&self, fut: impl Future<Output = StoreResult<T>>) -> Result<T, Error> {
        self.answer(self.bounded(tokio::time::Instant::now(), fut).await)
    }

    /// `fut` bounded by `op_timeout` from `started`, which it is told
    /// ([`crate::store::under_deadline`]) so that the store arms no second
    /// timer. A timeout too large to be a deadline (`Duration::MAX` for
    /// "no bound") bounds nothing.
    ///
    /// Not an `async fn`: that would keep `fut` twice in its state, as its
    /// argument and inside the future it awaits (`namespace::future_size`).
    fn bounded<F: Future>(
        &self,
        started: tokio::time::Instant,
        fut: F,
    ) -> impl Future<Output = Result<F::Output, tokio::time::error::Elapsed>> {
        match started.checked_add(self.op_timeout) {
            Some(deadline) => futures::future::Either::Left(tokio::time::timeout_at(
                deadline,
                crate::store::under_deadline(deadline, fut),
            )),
            None => futures::future::Either::Right(async { Ok(fut.await) }),
        }
    }

    /// The caller's view of a store call bounded by the timeout.
    fn answer<T>(&self, answer: Result<StoreResult<T>, tokio::time::error::Elapsed>) -> Result<T, Error> {
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Error::with_source(
                ErrorKind::Store,
                format!("{} store failed", self.store.name()),
                e,
            )),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "{} store did not answer within {:?}",
                    self.store.name(),
                    self.op_timeout
                ),
            )),
        }
    }

    fn store_error(&self, e: crate::store::StoreError) -> Error {
        Error::with_source(ErrorKind::Store, format!("{} store failed", self.store.name()), e)
    }

    /// True when `error` (of a store call made through [`Core::call_for`])
    /// says the store failed as a whole, or was skipped, rather than
    /// answering about one key.
    pub(crate) fn store_down(error: &Error) -> bool {
        !std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<crate::store::StoreError>())
            .is_some_and(crate::store::StoreError::is_server)
            && matches!(error.kind(), ErrorKind::Store | ErrorKind::Timeout)
    }

    /// Heals a key whose read failed with a server error about that key
    /// (a Redis key of the wrong type, a memcached plain value where an
    /// entry belongs): deletes it, bounded and behind the breaker, so that
    /// the next read misses and fills it as usual. Returns true when the key
    /// was deleted; false for any other error (a connection error or a
    /// timeout says nothing about the key) or when the delete failed.
    ///
    /// Why delete rather than wait for the fill to overwrite: a lease
    /// lookup (`lookup_or_lease`) fails on such a key without granting a
    /// lease, so no fill ever comes, and on Redis the fill script fails on
    /// it too; a plain `set` would overwrite it, but not every strategy
    /// writes with one. Deleting is always safe for an entry or a plain
    /// value: it is an invalidation, which only costs a load.
    ///
    /// The read path calls it with the error of its first store read of
    /// `key` (`lookup_or_lease`, `get`, `peek_entry`), then goes on to the
    /// loader as for any store error. Never for a `Versioned` version
    /// counter: deleting one turns it back to version 0 and could bring
    /// back rows cached under it.
    pub(crate) async fn heal_after_read_error(&self, ns: &NamespaceMetrics, key: &str, error: &Error) -> bool {
        let per_key = std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<crate::store::StoreError>())
            .is_some_and(crate::store::StoreError::is_server);
        if !per_key {
            return false;
        }
        match self.call_for(ns, self.store.delete(key)).await {
            Ok(()) => {
                tracing::warn!(key = %crate::telemetry::KeyHash(key), error = %error, "store key unreadable: deleted so that it refills");
                true
            }
            Err(e) => {
                tracing::warn!(key = %crate::telemetry::KeyHash(key), error = %e, "store key unreadable and could not be deleted");
                false
            }
        }
    }

    /// Remembers an invalidation the store did not take, for replay: `op`
    /// on the store key `key`, which invalidates the entry `full` of the
    /// namespace called `namespace` (the same key but for `Versioned`,
    /// whose store key is the version counter). Once replayed, `full` is
    /// evicted from this process's L1s of that name and published on the bus.
    pub(crate) fn queue_invalidation(self: &Arc<Self>, namespace: &str, full: &str, key: &str, op: PendingOp) {
        self.counters.add(Event::InvalidationQueued);
        self.metrics.add(Event::InvalidationQueued);
        for (dropped, overflow) in self.retry.push(self, namespace, full, key, op) {
            self.counters.add(Event::InvalidationDropped);
            self.metrics.add(Event::InvalidationDropped);
            tracing::error!(
                key = %crate::telemetry::KeyHash(&dropped),
                bound = overflow.name(),
                "invalidation retry queue full: oldest invalidation dropped"
            );
        }
    }

    /// A graceful shutdown's work, within `deadline`: runs the scheduled
    /// second deletes (a failed one is queued), then drains the retry
    /// queue. Returns the queue's drain and how many second deletes ran.
    pub(crate) async fn shutdown(&self, deadline: tokio::time::Instant) -> (retry::Drained, u64) {
        let second_deletes = self.delayed.run_all_before(deadline).await;
        (retry::drain(self, deadline).await, second_deletes)
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats::from_counters(&self.counters, self.retry.len() as u64, self.breaker_state())
    }

    fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;
    use crate::breaker::BreakerConfig;
    use crate::store::redis::RedisStore;
    use crate::store::{FillOutcome, LeaseOutcome, LeaseToken};

    const TTL: Duration = Duration::from_secs(60);

    /// Defect 16 of issue 12, the healing half: a lease lookup on a key of
    /// the wrong type fails without granting a lease, so no fill could ever
    /// replace it; the helper deletes it, and the next lookup leases and
    /// fills as usual. An error that is not about the key deletes nothing.
    #[tokio::test]
    async fn a_key_a_read_cannot_parse_is_deleted_and_refills() {
        let mut server = aside_testkit::RedisServer::start();
        let store = RedisStore::connect(&server.url()).await.unwrap();
        let mut conn = store.connection();
        let core = Core::new(
            Arc::new(store),
            Breaker::new(BreakerConfig::default()),
            Duration::from_millis(500),
            RetryBounds {
                entries: 16,
                bytes: usize::MAX,
            },
            String::new(),
            250,
        );
        let _: () = redis::cmd("LPUSH")
            .arg("odd")
            .arg("x")
            .query_async(&mut conn)
            .await
            .unwrap();
        let lookup = || {
            core.call_for(
                &core.metrics,
                core.store.lookup_or_lease("odd", LeaseToken::random(), TTL),
            )
        };
        let error = lookup().await.unwrap_err();
        let filled = core
            .call_for(&core.metrics, core.store.fill("odd", LeaseToken(1), "v".into(), TTL))
            .await;
        assert!(
            filled.is_err(),
            "the fill script cannot overwrite it either: {filled:?}"
        );
        assert!(core.heal_after_read_error(&core.metrics, "odd", &error).await);
        let LeaseOutcome::Granted { token, .. } = lookup().await.unwrap() else {
            panic!("no lease after the heal");
        };
        let filled = core.store.fill("odd", token, "v".into(), TTL).await.unwrap();
        assert_eq!(filled, FillOutcome::Stored);

        server.kill();
        let down = lookup().await.unwrap_err();
        assert!(!core.heal_after_read_error(&core.metrics, "odd", &down).await);
        assert_eq!(core.breaker.state(), BreakerState::Closed);
    }
}
