//! The engine: what every namespace shares, and the guarded way to reach the store.
//!
//! Owns [`Core`]: the store, the breaker, the per-operation timeout, the
//! counters, the retry queue of failed invalidations and the delayed-delete
//! timer. Every store call of the read and write paths goes through
//! [`Core::call`], which is where failing open is decided: a skipped, failed
//! or timed-out call becomes an `Error` the read path turns into a miss.
//!
//! The typed read and write paths live in `read` and `write`; coalescing in
//! `single_flight`. None of them talk to a store except through `Core`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::breaker::{Breaker, BreakerState};
use crate::error::{Error, ErrorKind};
use crate::metrics::{self, Counters, Event, NamespaceMetrics, Stats};
use crate::store::{Store, StoreResult};

pub(crate) mod batch;
pub(crate) mod entry;
pub(crate) mod l1;
pub(crate) mod read;
pub(crate) mod refresh;
pub(crate) mod retry;
pub mod single_flight;
pub(crate) mod timer;
pub(crate) mod write;

use retry::{PendingOp, RetryQueue};
use timer::DelayedDeletes;

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
    /// The invalidation bus and its routes, when the `Aside` has a bus.
    pub(crate) router: Option<crate::bus::route::Router>,
    /// Facade handles for work no namespace owns (replays, delayed deletes).
    pub(crate) metrics: NamespaceMetrics,
}

impl Drop for Core {
    fn drop(&mut self) {
        self.retry.close();
    }
}

impl Core {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        breaker: Breaker,
        op_timeout: Duration,
        retry_capacity: usize,
        prefix: String,
        max_key_len: usize,
    ) -> Self {
        Core {
            router: None,
            local: store.is_local(),
            store,
            breaker,
            op_timeout,
            counters: Counters::default(),
            retry: Arc::new(RetryQueue::new(retry_capacity)),
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

    /// Runs one store operation behind the breaker and the timeout, counting
    /// under a namespace's metrics.
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
        if !self.breaker.allow() {
            self.record(ns, Event::StoreSkipped);
            return Err(Error::new(ErrorKind::Store, "circuit breaker open: store skipped"));
        }
        let before = self.breaker.state();
        let result = self.call_unguarded(fut).await;
        match &result {
            Ok(_) => self.breaker.record_success(),
            Err(_) => {
                self.record(ns, Event::StoreError);
                self.breaker.record_failure();
            }
        }
        let after = self.breaker.state();
        if before != after {
            metrics::record_breaker_state(after);
            tracing::warn!(store = self.store.name(), ?after, "cache store breaker changed state");
        }
        result
    }

    /// One store operation bounded by the timeout, ignoring the breaker.
    pub(crate) async fn call_unguarded<T>(&self, fut: impl Future<Output = StoreResult<T>>) -> Result<T, Error> {
        match tokio::time::timeout(self.op_timeout, fut).await {
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

    /// Remembers an invalidation the store did not take, for replay.
    pub(crate) fn queue_invalidation(self: &Arc<Self>, key: &str, op: PendingOp) {
        self.counters.add(Event::InvalidationQueued);
        self.metrics.add(Event::InvalidationQueued);
        if let Some(dropped) = self.retry.push(self, key, op) {
            self.counters.add(Event::InvalidationDropped);
            self.metrics.add(Event::InvalidationDropped);
            tracing::error!(
                key = dropped,
                "invalidation retry queue full: oldest invalidation dropped"
            );
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats::from_counters(&self.counters, self.retry.len() as u64, self.breaker_state())
    }

    fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }
}
