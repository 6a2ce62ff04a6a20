//! Refreshing values that are still cached, and what to serve when loading fails.
//!
//! Owns the read-path policies that act on a value already in the store:
//! early refresh under a refresh lease (one caller reloads, the others keep
//! the current value), fail-safe serving of an expired value when the loader
//! fails or times out (with throttled retries), and the per-call options
//! that skip or force-refresh the cache. The plain miss path is `read`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use super::read::{Cached, Current, NO_LEASE_YET};
use super::state::{Fetched, NsInner, Settled, Shared, Source, Stampede};
use super::strategy::Replacing;
use crate::error::Result;
use crate::metrics::Event;
use crate::store::LeaseToken;

/// Bound on the keys a namespace remembers as throttled after a failed load.
const MAX_THROTTLED_KEYS: usize = 10_000;

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    /// Answers from the loader alone (per-call `skip_cache`).
    pub(crate) async fn fetch_uncached<F, Fut, E>(&self, mut loader: F) -> Result<Fetched<V>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let (value, _) = self.run_loader(&mut loader).await?;
        Ok(Fetched {
            value,
            source: Source::Loaded,
        })
    }

    /// Reloads and replaces the cached value (per-call `force_refresh`),
    /// fenced like every fill.
    ///
    /// A reloaded value that did not reach the store (the store failed or
    /// was skipped by the breaker, the fill was refused, the value is over
    /// the size limit) leaves the old one cached, which later reads would
    /// serve although this call returned a newer one. So the key is then
    /// invalidated as a write invalidates it, queued for replay if the
    /// store is away, and this process's reads skip the store until the
    /// replay lands. The history checker's I1Refresh found it (seed
    /// 9080711965920293202: a refresh under an open breaker, then a hit on
    /// the value it had replaced).
    pub(crate) async fn fetch_refreshed<F, Fut, E>(&self, full: &str, mut loader: F) -> Result<Fetched<V>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let loader = &mut loader;
        // The local copy is the one being replaced: gone now, and the
        // reloaded value installed in its place if no invalidation intervenes.
        self.l1_evict(full);
        let epoch = self.l1_epoch(full);
        let settled = if self.core.retry.is_pending(&self.pending_key(full)) {
            // An invalidation of this key has not reached the store: the
            // loader answers, and nothing is filled until it has.
            self.load_uncached(loader, &None).await?
        } else {
            // If another caller holds the key's lease, the leased load
            // behind the refresh lease may hand us their result.
            let settled = self
                .reload(full, loader, &AtomicU64::new(0), Replacing::Anything)
                .await?;
            if settled.source == Source::Loaded && !settled.filled {
                // Its error is the store's, already queued for replay.
                let _ = self.invalidate_all(&[full.to_owned()]).await;
            }
            settled
        };
        let fetched = Fetched {
            value: settled.value,
            source: settled.source,
        };
        if let Some(epoch) = epoch {
            // Not a plain install: a reader of this handle that took an
            // epoch after the eviction above (this one, or a later one if
            // another key of the stripe was invalidated meanwhile) may have
            // read the old value before the refill, and would install it
            // after us.
            self.l1_replace(full, &fetched, epoch, settled.expires_at_ms);
        }
        Ok(fetched)
    }

    /// When a load failed and a value is still there: a value due for early
    /// refresh is simply still valid; an expired one is served by fail-safe.
    /// `None` when the error must reach the caller.
    ///
    /// The value was read before this caller took any sequence number, so
    /// an invalidation may have returned between that read and any stamp
    /// taken now; it is stamped 0 and no single-flight waiter takes it (a
    /// waiter reads again and sees the invalidation). Its own caller, whose
    /// read it is, is served it.
    pub(crate) fn fall_back(&self, current: &Option<Current<V>>) -> Option<Settled<V>> {
        const READ_BEFORE_ANY_WAITER: u64 = 0;
        let settled_at = READ_BEFORE_ANY_WAITER;
        let current = current.as_ref()?;
        if current.expired {
            self.fail_safe?;
            self.record(Event::StaleServed);
            return Some(Settled {
                value: current.value.clone(),
                source: Source::Stale,
                settled_at,
                expires_at_ms: current.expires_at_ms,
                filled: false,
            });
        }
        Some(Self::kept(current))
    }

    /// A value still valid (due for refresh, not expired), served as the
    /// hit it is by a caller that does not refresh it. Stamped 0 as
    /// [`NsInner::fall_back`] stamps what it serves.
    pub(crate) fn kept(current: &Current<V>) -> Settled<V> {
        Settled {
            value: current.value.clone(),
            source: Source::Hit,
            settled_at: 0,
            expires_at_ms: current.expires_at_ms,
            filled: false,
        }
    }

    /// After fail-safe served an expired value because the loader failed,
    /// the loader is not tried again for this key for the throttle period:
    /// readers are served the expired value still in the store.
    ///
    /// Why in process and not by writing the value back with a short TTL
    /// (as the first version did): the value written back is the one read
    /// before the load, and an invalidation and a newer fill may have
    /// happened since; writing it would put the old row back over the new
    /// one. Here nothing is written: each process throttles its own retries,
    /// and what readers are served is always what the store holds now.
    pub(crate) fn note_failed_load(&self, full: &str, current: &Option<Current<V>>) {
        let Some(fail_safe) = self.fail_safe else { return };
        if !current.as_ref().is_some_and(|c| c.expired) {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut failed = self.failed_loads.lock().unwrap_or_else(|e| e.into_inner());
        if failed.len() >= MAX_THROTTLED_KEYS {
            failed.retain(|_, until| *until > now);
        }
        if failed.len() < MAX_THROTTLED_KEYS {
            failed.insert(full.to_owned(), now + fail_safe.throttle);
        }
    }

    /// True while `full`'s loader is throttled after a failure (see
    /// [`NsInner::note_failed_load`]). One atomic-free lookup of an empty
    /// map when nothing failed.
    pub(crate) fn load_throttled(&self, full: &str) -> bool {
        if self.fail_safe.is_none() {
            return false;
        }
        let mut failed = self.failed_loads.lock().unwrap_or_else(|e| e.into_inner());
        match failed.get(full) {
            Some(until) if *until > tokio::time::Instant::now() => true,
            Some(_) => {
                failed.remove(full);
                false
            }
            None => false,
        }
    }

    /// Reloads a value that is still in the store (due for early refresh,
    /// or expired under fail-safe) under a refresh lease, so that one caller
    /// in total reloads while the others keep the value they have.
    pub(crate) async fn refresh_with_lease<F, Fut, E>(
        &self,
        full: &str,
        loader: &mut F,
        held: &AtomicU64,
        current: Option<Current<V>>,
    ) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let store = &self.core.store;
        let granted = self
            .offering_lease(full, |offered| store.lease_for_refresh(full, offered, self.lease_ttl))
            .await;
        match granted {
            Ok(Some(token)) => {
                held.store(token.0, Ordering::Release);
                let mut lease = self.hold(full, token);
                let load_began = self.next_seq();
                let loaded = self.run_loader_leased(full, token, loader).await;
                // The guard stays armed through the fill or release, so a
                // caller cancelled during either still gives the lease back.
                let settled = match loaded {
                    Ok(loaded) => Ok(self.fill_loaded(full, token, loaded, load_began).await),
                    Err(e) => {
                        let served = self.fall_back(&current);
                        self.note_failed_load(full, &current);
                        drop(self.call(store.release(full, token)).await);
                        served.ok_or(e)
                    }
                };
                lease.disarm();
                settled
            }
            // Someone else is refreshing, or the store is away: the value we
            // have is what there is (still valid, or served by fail-safe).
            Ok(None) | Err(_) => match self.fall_back(&current) {
                Some(settled) => Ok(settled),
                None => self.load_with_lease(full, loader, held).await,
            },
        }
    }

    /// `Namespace::fetch_owned` below the L1: `fetch`, with the work that
    /// may outlive the caller (early refresh, a load past the soft timeout)
    /// spawned. Also returns the value's logical expiry (Unix ms) when a
    /// stored entry's header gave it, for the L1 to keep it no longer.
    pub(crate) async fn fetch_owned<F, Fut, E>(
        this: &Arc<Self>,
        full: &str,
        loader: F,
    ) -> Result<(Fetched<V>, Option<u64>)>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        match this.read_cached(full).await {
            Cached::Hit(value, expires_at_ms) => {
                this.record(Event::Hit);
                let fetched = Fetched {
                    value,
                    source: Source::Hit,
                };
                Ok((fetched, expires_at_ms))
            }
            Cached::Miss {
                version,
                lease,
                current: Some(current),
            } if !current.expired => {
                // Due for early refresh: answer now, refresh in the background.
                this.record(Event::Hit);
                let fetched = Fetched {
                    value: current.value.clone(),
                    source: Source::Hit,
                };
                let expires_at_ms = current.expires_at_ms;
                this.refresh_in_background(full, version, lease, current, loader);
                Ok((fetched, expires_at_ms))
            }
            Cached::Miss {
                current: Some(current), ..
            } if this.soft_load_timeout.is_some() && this.fail_safe.is_some() => {
                let soft = this.soft_load_timeout.expect("checked");
                let inner = this.clone();
                let full = full.to_owned();
                let mut load = tokio::spawn(async move { inner.fetch_timed(&full, loader).await });
                match tokio::time::timeout(soft, &mut load).await {
                    Ok(joined) => joined.map_err(|e| {
                        crate::error::Error::new(crate::error::ErrorKind::Loader, format!("load task failed: {e}"))
                    })?,
                    Err(_) => {
                        // The spawned load goes on and fills the cache.
                        this.record(Event::StaleServed);
                        let fetched = Fetched {
                            value: current.value,
                            source: Source::Stale,
                        };
                        Ok((fetched, current.expires_at_ms))
                    }
                }
            }
            _ => this.fetch_timed(full, loader).await,
        }
    }
}

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    /// Spawns the refresh of a value due for early refresh, found by
    /// `fetch_owned`'s lookup (with the version and lease that lookup saw),
    /// unless a load of the key already runs in this process.
    ///
    /// Why through the single-flight and not beside it: a foreground read
    /// that finds the value due (`fetch`, `get_or_load`) refreshes it as the
    /// leader of the key's flight, and skips the refresh when a flight is
    /// running. A background refresh outside the flight was invisible to
    /// those reads, and they to it: under `Delete` and `Versioned`, whose
    /// fills take no lease, both loaded at once (the history checker's I3).
    /// The background refresh now leads that same flight, or joins the one
    /// running; the `refreshing` claim still keeps two background refreshes
    /// of a key from being spawned under the strategies without a flight.
    fn refresh_in_background<F, Fut, E>(
        self: &Arc<Self>,
        full: &str,
        version: Option<u64>,
        lease: Option<LeaseToken>,
        current: Current<V>,
        mut loader: F,
    ) where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let flight_key = match version {
            Some(v) => Self::versioned_key(full, v),
            None => full.to_owned(),
        };
        let coalesce = self.stampede == Stampede::Coalesce;
        if coalesce && self.flight.contains(&flight_key) {
            return;
        }
        // Claimed before spawning, so a spawn that runs late cannot refresh a second time.
        if !self
            .refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(full.to_owned())
        {
            return;
        }
        let inner = self.clone();
        let full = full.to_owned();
        tokio::spawn(async move {
            // Released on drop: a failed or cancelled refresh frees the key too.
            let claim = Claim {
                inner: &inner,
                key: &full,
            };
            let refresh = |held: Arc<AtomicU64>| {
                let (inner, full, loader) = (&inner, &full, &mut loader);
                async move {
                    inner
                        .load_missing(full, version, loader, &held, Some(current), false)
                        .await
                }
            };
            if coalesce {
                // Joins a flight only if its lease is the one the lookup saw
                // (or it holds none yet), as a foreground refresh would.
                let join = |held: u64| held == NO_LEASE_YET || lease.is_some_and(|t| t.0 == held);
                let _ = inner.flight.run_tagged(&flight_key, join, refresh).await;
            } else {
                let _ = refresh(Arc::new(AtomicU64::new(0))).await;
            }
            drop(claim);
        });
    }
}

/// A key claimed for a background refresh; dropping it releases the claim.
struct Claim<'a, V> {
    inner: &'a NsInner<V>,
    key: &'a str,
}

impl<V> Drop for Claim<'_, V> {
    fn drop(&mut self) {
        self.inner
            .refreshing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.key);
    }
}
