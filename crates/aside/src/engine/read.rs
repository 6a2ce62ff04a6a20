//! The read path: store, then single-flight, then lease, then loader, then fill.
//!
//! Owns `get`/`fetch` semantics of DESIGN section 4 for every strategy,
//! negative caching and the loader timeout; what happens to a value still
//! in the store (early refresh, fail-safe) is in `refresh`, and what each
//! strategy does to look a key up and fill it is in `strategy`. It reaches
//! the store only through `Core::call_for`, so
//! every store failure here is already counted and fed to the breaker; this
//! module only decides what a failure means (always: a miss).
//!
//! Waiters and invalidations: a single-flight waiter takes the leader's
//! value only if its own read began before the store operation (or load)
//! that settled that value (`Settled::settled_at`). Otherwise an
//! invalidation could have returned between the settling and its read, and
//! the value could predate it; such a waiter reads again instead. Together
//! with fenced fills this is what keeps reads from ever going backwards.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::entry::{Entry, Freshness};
use super::lease::{HeldLease, renewing};
use super::single_flight::Role;
use super::state::{Fetched, NsInner, Settled, Shared, Source, Stampede};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Event;
use crate::store::{FillOutcome, LeaseOutcome, LeaseToken};

/// First and largest pause between looks while another process holds the lease.
const LEASE_POLL_FIRST: Duration = Duration::from_millis(2);
const LEASE_POLL_MAX: Duration = Duration::from_millis(50);
/// The article's stampede lock: held 5 s, others retry every 100 ms.
const LOCK_TTL: Duration = Duration::from_secs(5);
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// How long the lease of a loader without a load timeout is renewed.
const UNTIMED_LOADER_RENEWAL: Duration = Duration::from_secs(60);
/// Tag of a flight whose leader holds no lease yet.
pub(crate) const NO_LEASE_YET: u64 = 0;

/// A value still in the store that a load is about to replace: due for an
/// early refresh (still valid) or past its logical expiry (fail-safe only).
#[derive(Clone)]
pub(crate) struct Current<V> {
    pub(crate) value: Option<V>,
    pub(crate) expired: bool,
    /// Its logical expiry (Unix ms), from the entry's header.
    pub(crate) expires_at_ms: Option<u64>,
}

/// What the fast path found.
pub(crate) enum Cached<V> {
    /// A fresh value (`None` is a cached "not found") and its logical
    /// expiry in Unix ms, when its header has one.
    Hit(Option<V>, Option<u64>),
    /// Not cached, or to be reloaded. For `Versioned`, the version the data
    /// must live under (`None` when it could not be read); for `Lease`, the
    /// lease held on the entry, if any; `current`, a value that is still
    /// there but due for refresh or expired.
    Miss {
        version: Option<u64>,
        lease: Option<LeaseToken>,
        current: Option<Current<V>>,
    },
    /// The store failed as a whole (down, timed out, or skipped by the
    /// breaker): the rest of this read goes to the loader without touching
    /// it again, so a read costs at most one operation timeout.
    Down,
}

pub(crate) const fn plain_miss<V>() -> Cached<V> {
    Cached::Miss {
        version: None,
        lease: None,
        current: None,
    }
}

/// What the loader produced, or the error it failed with.
type Loaded<V> = Result<(Option<V>, Duration)>;

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    pub(crate) fn record(&self, event: Event) {
        self.core.record(&self.metrics, event);
    }

    /// Records an L1 hit, which is a hit too.
    pub(crate) fn record_l1_hit(&self) {
        self.core.record_l1_hit(&self.metrics);
    }

    pub(crate) async fn call<T>(&self, fut: impl Future<Output = crate::store::StoreResult<T>>) -> Result<T> {
        self.core.call_for(&self.metrics, fut).await
    }

    pub(crate) fn parse_version(raw: Option<Bytes>) -> u64 {
        raw.and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.read_seq.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn version_key(full: &str) -> String {
        crate::key::version_key(full)
    }

    pub(crate) fn versioned_key(full: &str, version: u64) -> String {
        crate::key::versioned_key(full, version)
    }

    /// TTL of version counters: longer than any data written under them.
    ///
    /// Data under a version lives at most its longest TTL (the TTL plus its
    /// jitter, or the negative TTL) plus the fail-safe margin. The counter
    /// must outlive all of it: once it expired, readers would compute
    /// version 0 again and find the row written before the first
    /// invalidation.
    pub(crate) fn version_ttl(&self) -> Duration {
        let longest = self
            .ttl
            .mul_f64(1.0 + self.jitter.clamp(0.0, 0.999))
            .max(self.negative_ttl.unwrap_or(Duration::ZERO));
        let data_life = longest.saturating_add(self.fail_safe.map_or(Duration::ZERO, |f| f.max_stale));
        data_life.saturating_mul(2).saturating_add(Duration::from_secs(60))
    }

    /// Classifies a decoded entry found by the fast path.
    pub(crate) fn judge(&self, entry: Entry<V>, version: Option<u64>, lease: Option<LeaseToken>) -> Cached<V> {
        let expires_at_ms = entry.expires_at_ms();
        match self.freshness(&entry) {
            Freshness::Fresh => Cached::Hit(entry.value, expires_at_ms),
            // Without fail-safe the store is about to drop it anyway: an
            // ordinary miss, not a refresh of a value on its way out.
            Freshness::Expired if self.fail_safe.is_none() => Cached::Miss {
                version,
                lease,
                current: None,
            },
            freshness => Cached::Miss {
                version,
                lease,
                current: Some(Current {
                    value: entry.value,
                    expired: freshness == Freshness::Expired,
                    expires_at_ms,
                }),
            },
        }
    }

    /// After a read of `key` failed: a key the server cannot read as ours
    /// (another type, say) is deleted so that it refills, rather than stay
    /// a miss forever; a sick store is left alone (see `Core::heal_after_read_error`).
    pub(crate) async fn heal(&self, key: &str, error: &Error) {
        self.core.heal_after_read_error(&self.metrics, key, error).await;
    }

    /// After a failed read of `key`: [`Cached::Down`] when the store failed
    /// as a whole, else heals the key (a server error about it) and reads as
    /// a plain miss.
    pub(crate) async fn miss_after(&self, key: &str, error: &Error) -> Cached<V> {
        if crate::engine::Core::store_down(error) {
            return Cached::Down;
        }
        self.heal(key, error).await;
        plain_miss()
    }

    /// The current version of `full`. A counter that is absent (never
    /// written, expired, evicted, or lost with a store restart) is started
    /// at the clock in microseconds rather than at 0: numbers counted from
    /// 0 again would meet data an earlier counter's fills left (a load from
    /// before a restart that fills late), and serve that old row.
    pub(crate) async fn read_version(&self, full: &str) -> Result<u64> {
        let key = Self::version_key(full);
        let store = &self.core.store;
        if let Some(raw) = self.call(store.get(&key)).await? {
            return Ok(Self::parse_version(Some(raw)));
        }
        let start = super::fresh_version();
        if self
            .call(store.add(&key, Bytes::from(start.to_string()), self.version_ttl()))
            .await?
        {
            return Ok(start);
        }
        // Another caller started it first.
        Ok(Self::parse_version(self.call(store.get(&key)).await?))
    }

    /// Bumps `full`'s version for an invalidation or a write; returns the
    /// new one. A counter the increment had to create (it was absent) is
    /// moved to a fresh start, as in [`NsInner::read_version`]: the brief 1
    /// is only ever read by loads that began after this write.
    pub(crate) async fn bump_version(&self, full: &str) -> Result<u64> {
        let key = Self::version_key(full);
        let store = &self.core.store;
        let version = self.call(store.incr(&key, self.version_ttl())).await?;
        if version != 1 {
            return Ok(version);
        }
        let start = super::fresh_version();
        self.call(store.set(&key, Bytes::from(start.to_string()), self.version_ttl()))
            .await?;
        Ok(start)
    }

    /// `fetch` below the L1: the store, single-flight, the lease, the
    /// loader. Also returns the value's logical expiry (Unix ms) when a
    /// stored entry's header gave it, for the L1 to keep it no longer.
    ///
    /// A hit answers from the first look; everything else (single-flight,
    /// the lease, the loader, the fill) runs in a boxed future. Its state is
    /// kilobytes, and inline it made every hit's future that large: moving
    /// it into `instrument` and the caller's frames was a quarter of what
    /// aside added to a Redis hit (`scripts/profile-hits redis`: memcpy).
    pub(crate) async fn fetch_timed<F, Fut, E>(&self, full: &str, loader: F) -> Result<(Fetched<V>, Option<u64>)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        match self.read_cached(full).await {
            Cached::Hit(value, expires) => {
                self.record(Event::Hit);
                let fetched = Fetched {
                    value,
                    source: Source::Hit,
                };
                Ok((fetched, expires))
            }
            looked => Box::pin(self.fetch_after_miss(full, loader, looked)).await,
        }
    }

    /// [`NsInner::fetch_timed`] after a first look that found no fresh value.
    async fn fetch_after_miss<F, Fut, E>(
        &self,
        full: &str,
        mut loader: F,
        first: Cached<V>,
    ) -> Result<(Fetched<V>, Option<u64>)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut first_look = true;
        let mut first = Some(first);
        let mut began_at = None;
        loop {
            let looked = match first.take() {
                Some(looked) => looked,
                None => self.read_cached(full).await,
            };
            let down = matches!(looked, Cached::Down);
            let (version, lease, mut current) = match looked {
                Cached::Hit(value, expires) => {
                    // Found on a second look, after waiting for another
                    // caller's load: served by that load, not a plain hit.
                    self.record(Event::Coalesced);
                    let fetched = Fetched {
                        value,
                        source: Source::Coalesced,
                    };
                    return Ok((fetched, expires));
                }
                Cached::Miss {
                    version,
                    lease,
                    current,
                } => (version, lease, current),
                // Loaded without touching the store again, still under
                // single-flight (see `load_missing`).
                Cached::Down => (None, None, None),
            };
            if let Some(current) = &current
                && current.expired
                && self.load_throttled(&match version {
                    Some(v) => Self::versioned_key(full, v),
                    None => full.to_owned(),
                })
            {
                // The loader failed moments ago: fail-safe keeps serving the
                // expired value the store still holds until the throttle ends.
                self.record(Event::StaleServed);
                let fetched = Fetched {
                    value: current.value.clone(),
                    source: Source::Stale,
                };
                return Ok((fetched, current.expires_at_ms));
            }
            // Taken after the first lookup, so hits pay no shared atomic (a
            // later `began` only makes a waiter more careful about what it
            // takes); and once, so that a waiter sent round again takes the
            // next load that began after its read. Taken afresh each round,
            // it made every waiter reject every load already running: with
            // the store down, readers of a key loaded one after another,
            // each waiting for all the loads before its own
            // (`loads_while_the_store_is_down_take_no_turns_under_single_flight`).
            let began = *began_at.get_or_insert_with(|| self.next_seq());
            if first_look {
                let refresh_only = current.as_ref().is_some_and(|c| !c.expired);
                self.record(if refresh_only { Event::Hit } else { Event::Miss });
                first_look = false;
            }
            let settled = match self.stampede {
                Stampede::None => {
                    self.load_missing(full, version, &mut loader, &AtomicU64::new(0), current, down)
                        .await?
                }
                Stampede::LockSleep => match current.take_if(|c| !c.expired) {
                    Some(due) => self.refresh_under_lock(full, version, &mut loader, due).await?,
                    None => self.load_under_lock(full, &mut loader, down).await?,
                },
                Stampede::Coalesce => {
                    // Versioned data is coalesced per version: a reader that
                    // saw a newer version never joins a load of an older one.
                    let flight_key = match version {
                        Some(v) => Self::versioned_key(full, v),
                        None => full.to_owned(),
                    };
                    if let Some(due) = current.take_if(|c| !c.expired) {
                        self.refresh_coalesced(full, version, &flight_key, &mut loader, due, down)
                            .await?
                    } else {
                        // Join the in-process load unless its lease is no longer
                        // the entry's: an invalidation revoked it, so its result
                        // cannot be cached and a fresh load should start now.
                        // Declined only when the lookup saw another lease than
                        // the flight's: that one was revoked and replaced, so its
                        // fill will be refused. A lookup that saw no lease most
                        // likely ran before the leader's grant; leading instead
                        // would find the key busy and poll the store for a load
                        // running in this very process. Should the flight's lease
                        // have been revoked meanwhile, its `settled_at` sends this
                        // caller round again (below): the join costs time, never
                        // freshness.
                        let join = |held: u64| held == NO_LEASE_YET || lease.is_none_or(|t| t.0 == held);
                        let loader = &mut loader;
                        let (shared, role) = self
                            .flight
                            .run_tagged(&flight_key, join, |held| async move {
                                self.load_missing(full, version, loader, &held, current, down).await
                            })
                            .await;
                        match role {
                            Role::Leader => shared?,
                            Role::Waiter => match self.as_waiter(shared?, began) {
                                Some(settled) => settled,
                                None => continue,
                            },
                        }
                    }
                }
            };
            let fetched = Fetched {
                value: settled.value,
                source: settled.source,
            };
            return Ok((fetched, settled.expires_at_ms));
        }
    }

    /// What a single-flight waiter takes of its leader's result: `None` when
    /// it settled before the waiter's read began (`began`), since it may
    /// predate an invalidation that read must observe: the waiter looks
    /// again. A load the waiter takes is reported as coalesced.
    fn as_waiter(&self, settled: Settled<V>, began: u64) -> Option<Settled<V>> {
        if settled.settled_at <= began {
            return None;
        }
        self.record(Event::Coalesced);
        Some(match settled.source {
            Source::Loaded => Settled {
                source: Source::Coalesced,
                ..settled
            },
            _ => settled,
        })
    }

    /// Runs the loader, timing it and bounding it by the load timeout; its
    /// error becomes an `aside::Error`.
    pub(crate) async fn run_loader<F, Fut, E>(&self, loader: &mut F) -> Loaded<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.record(Event::Load);
        let started = Instant::now();
        let outcome = match self.load_timeout {
            Some(limit) => match tokio::time::timeout(limit, loader()).await {
                Ok(outcome) => outcome.map_err(Error::loader),
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!("loader did not answer within {limit:?}"),
                )),
            },
            None => loader().await.map_err(Error::loader),
        };
        match outcome {
            Ok(value) => Ok((value, started.elapsed())),
            Err(e) => {
                self.record(Event::LoadError);
                Err(e)
            }
        }
    }

    /// Loads without touching the cache.
    pub(crate) async fn load_uncached<F, Fut, E>(&self, loader: &mut F, current: &Option<Current<V>>) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let settled_at = self.next_seq();
        match self.run_loader(loader).await {
            Ok((value, _)) => Ok(Settled {
                expires_at_ms: self.loaded_expiry(value.is_some()),
                value,
                source: Source::Loaded,
                settled_at,
                filled: false,
            }),
            Err(e) => self.fall_back(current).ok_or(e),
        }
    }

    /// Load, then an unconditional fill (the non-lease strategies).
    pub(crate) async fn load_and_set<F, Fut, E>(
        &self,
        key: &str,
        loader: &mut F,
        current: Option<Current<V>>,
    ) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let settled_at = self.next_seq();
        let (value, took) = match self.run_loader(loader).await {
            Ok(loaded) => loaded,
            Err(e) => {
                let served = self.fall_back(&current).ok_or(e)?;
                self.note_failed_load(key, &current);
                return Ok(served);
            }
        };
        let expires_at_ms = self.loaded_expiry(value.is_some());
        let filled = match self.encode(value.as_ref(), took) {
            Ok(Some((bytes, ttl))) => {
                let written = self.core.shares_decoded.then(|| bytes.clone());
                let set = self.call(self.core.store.set(key, bytes, ttl)).await.is_ok();
                if let (true, Some(written)) = (set, &written) {
                    self.adopt_written(key, written);
                }
                set
            }
            _ => false,
        };
        Ok(Settled {
            value,
            source: Source::Loaded,
            settled_at,
            expires_at_ms,
            filled,
        })
    }

    /// Under the stampede lock, a value due for early refresh: whoever sets
    /// the lock refreshes it (as every refresh is made: under the strategy's
    /// refresh lease, fenced), the others, and a caller that cannot reach the
    /// store, keep the value they have. Nobody sleeps: the lock decides only
    /// who refreshes, and each caller already has an answer. Before, a due
    /// value took the miss path, whose lookup found it still there: no
    /// refresh was ever made, and the losers slept on the lock.
    async fn refresh_under_lock<F, Fut, E>(
        &self,
        full: &str,
        version: Option<u64>,
        loader: &mut F,
        due: Current<V>,
    ) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let lock_key = crate::key::lock_key(full);
        let Ok(Some(lock)) = self.take_lock(&lock_key).await else {
            return Ok(Self::kept(&due));
        };
        let no_tag = AtomicU64::new(0);
        let refresh = self.load_missing(full, version, loader, &no_tag, Some(due), false);
        self.holding_lock(lock, refresh).await
    }

    /// Under single-flight, a value due for early refresh: this caller
    /// leads the refresh, or keeps the value it has while another runs in
    /// this process; it never waits for one. Checked and started in one
    /// step ([`super::single_flight::SingleFlight::try_lead`]): a reader
    /// that checked, found none, then met the flight another had just
    /// started joined it and waited for it.
    async fn refresh_coalesced<F, Fut, E>(
        &self,
        full: &str,
        version: Option<u64>,
        flight_key: &str,
        loader: &mut F,
        due: Current<V>,
        down: bool,
    ) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let Some(leader) = self.flight.try_lead(flight_key) else {
            return Ok(Self::kept(&due));
        };
        let shared = self
            .load_missing(full, version, loader, leader.tag(), Some(due), down)
            .await;
        leader.publish(shared.clone());
        shared
    }

    /// Sets the stampede lock `lock_key`: `Ok(Some(lock))` when this caller
    /// now holds it, `Ok(None)` when another does.
    ///
    /// Why a lease on the lock key and not the article's `add` and `delete`:
    /// a lease is given back only by its token ([`crate::Store::release`]),
    /// so a holder whose load outlived [`LOCK_TTL`] cannot delete the lock
    /// another caller took since; and the lock is held by a [`HeldLease`],
    /// which gives it back when its holder is cancelled mid-load, instead
    /// of leaving every reader of the key asleep until the TTL ran out.
    /// It also needs no plain values, so it works on a lease-only store.
    async fn take_lock(&self, lock_key: &str) -> Result<Option<HeldLease>> {
        let store = &self.core.store;
        let outcome = self
            .offering_lease(lock_key, |offered| store.lookup_or_lease(lock_key, offered, LOCK_TTL))
            .await;
        match outcome? {
            LeaseOutcome::Granted { token, .. } => Ok(Some(self.hold(lock_key, token))),
            // Held by another caller. (A lock an older aside set with `add`
            // is a plain value, which the stores answer with an error or,
            // the memory store, replace: during a rolling upgrade the two
            // versions do not see each other's locks for those 5 s.)
            LeaseOutcome::Busy { .. } | LeaseOutcome::Hit(_) => Ok(None),
        }
    }

    /// Runs `work` holding the stampede lock `lock`, then gives it back
    /// (from the guard, if this caller is cancelled meanwhile).
    async fn holding_lock<T>(&self, mut lock: HeldLease, work: impl Future<Output = T>) -> T {
        let out = work.await;
        let (key, token) = lock.lease();
        if self.call(self.core.store.release(key, token)).await.is_ok() {
            lock.disarm();
        }
        // Else the guard tries once more, in the background.
        out
    }

    /// The article's stampede lock, kept as a baseline: whoever sets the lock
    /// loads; the others sleep a fixed 100 ms and look again. Without a
    /// store to hold the lock, loads coalesce in the process
    /// (`the_stampede_lock_coalesces_loads_while_the_store_is_down` in
    /// `tests/regressions.rs`).
    async fn load_under_lock<F, Fut, E>(&self, full: &str, loader: &mut F, down: bool) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let lock_key = crate::key::lock_key(full);
        // Taken once: any load that began after it is fresh enough for
        // this read, so a waiter sent round again takes the next load
        // instead of each waiter loading in turn.
        let began = self.next_seq();
        let mut down = down;
        loop {
            if !down {
                match self.read_cached(full).await {
                    Cached::Hit(value, expires_at_ms) => {
                        return Ok(Settled {
                            value,
                            source: Source::Coalesced,
                            settled_at: began,
                            expires_at_ms,
                            filled: false,
                        });
                    }
                    Cached::Down => down = true,
                    // The version the lookup saw goes to the load: a
                    // `Versioned` value is cached under it (without it, the
                    // holder's value was never cached).
                    Cached::Miss { version, .. } => match self.take_lock(&lock_key).await {
                        Ok(None) => {
                            tokio::time::sleep(LOCK_RETRY).await;
                            continue;
                        }
                        Ok(Some(lock)) => {
                            let no_tag = AtomicU64::new(0);
                            let load = self.load_missing(full, version, loader, &no_tag, None, false);
                            return self.holding_lock(lock, load).await;
                        }
                        Err(_) => down = true,
                    },
                }
            }
            // No lock can be taken while the store is down or skipped by
            // the breaker, and the store is not asked again for this read.
            // Every caller loading would be the stampede the lock is there
            // to stop, in the very outage that leaves the database alone:
            // loads of the key go through this process's single-flight
            // instead, as under `Stampede::Coalesce`, one at a time, and a
            // waiter takes the first that began after its read.
            let load = &mut *loader;
            let (shared, role) = self
                .flight
                .run_tagged(full, |_| true, |_| self.load_uncached(load, &None))
                .await;
            match role {
                Role::Leader => return shared,
                Role::Waiter => match self.as_waiter(shared?, began) {
                    Some(settled) => return Ok(settled),
                    None => continue,
                },
            }
        }
    }

    /// `held` publishes the lease this load holds to callers deciding
    /// whether to wait for it.
    pub(crate) async fn load_with_lease<F, Fut, E>(&self, full: &str, loader: &mut F, held: &AtomicU64) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let store = &self.core.store;
        let started = Instant::now();
        let mut pause = LEASE_POLL_FIRST;
        let mut dropped_expired = false;
        loop {
            let settled_at = self.next_seq();
            // Armed before the lookup, so a lease that ends between a busy
            // answer and the wait below still wakes this reader.
            let fill_watch = store.watch_fill(full);
            let outcome = self
                .offering_lease(full, |offered| store.lookup_or_lease(full, offered, self.lease_ttl))
                .await;
            let fill_watch = fill_watch.filter(|_| matches!(outcome, Ok(LeaseOutcome::Busy { .. })));
            match outcome {
                Ok(LeaseOutcome::Hit(bytes)) => {
                    if let Some(entry) = self.decode_hit(full, &bytes).await {
                        if self.fail_safe.is_some() || self.freshness(&entry) != Freshness::Expired {
                            // Filled by another caller (a fenced fill) while we looked.
                            let expires_at_ms = entry.expires_at_ms();
                            return Ok(Settled {
                                value: entry.value,
                                source: Source::Coalesced,
                                settled_at,
                                expires_at_ms,
                                filled: false,
                            });
                        }
                        // Past its logical expiry but still held by a store
                        // whose TTLs are coarser than the namespace's
                        // (memcached counts whole seconds): not a value to
                        // return. Drop it and lease again, once.
                        if dropped_expired {
                            return self.load_uncached(loader, &None).await;
                        }
                        dropped_expired = true;
                        let _ = self.call(store.delete(full)).await;
                    }
                }
                Ok(LeaseOutcome::Granted { token, .. }) => {
                    held.store(token.0, Ordering::Release);
                    let mut lease = self.hold(full, token);
                    let load_began = self.next_seq();
                    let loaded = match self.run_loader_leased(full, token, loader).await {
                        Ok(loaded) => loaded,
                        Err(e) => {
                            // Disarmed only once released: cancelled during
                            // the release, the guard gives the lease back.
                            let _ = self.call(store.release(full, token)).await;
                            lease.disarm();
                            return Err(e);
                        }
                    };
                    // A refused fill (an invalidation landed during the load)
                    // is not loaded again: this read began before the load,
                    // so the value is fresh enough for it and for waiters
                    // that began before the load did. Later waiters see its
                    // `settled_at` and coalesce onto one new load.
                    let settled = self.fill_loaded(full, token, loaded, load_began).await;
                    lease.disarm();
                    return Ok(settled);
                }
                Ok(LeaseOutcome::Busy { stale }) => {
                    if let Some(v) = self.usable_stale(full, stale).await {
                        self.record(Event::StaleServed);
                        return Ok(Settled {
                            value: v,
                            source: Source::Stale,
                            settled_at,
                            expires_at_ms: None,
                            filled: false,
                        });
                    }
                    if started.elapsed() >= self.lease_wait {
                        // The holder is slow or gone: answer from the loader
                        // rather than hang, and leave the fill to the holder.
                        return self.load_uncached(loader, &None).await;
                    }
                    let left = self.lease_wait.saturating_sub(started.elapsed());
                    match fill_watch {
                        // The store announces the lease's end: wait for that,
                        // polling only as a fallback for ends nobody
                        // announces (a lease run out, a plain delete).
                        Some(watch) if watch.is_live() => {
                            let _ = tokio::time::timeout(LEASE_POLL_MAX.min(left), watch.wait()).await;
                        }
                        // No notification to wait on: back off with jitter.
                        _ => {
                            let nap = pause.mul_f64(0.5 + rand::random::<f64>());
                            tokio::time::sleep(nap.min(left)).await;
                            pause = (pause * 2).min(LEASE_POLL_MAX);
                        }
                    }
                }
                Err(e) => {
                    // The store is down or skipped, or this key is unreadable
                    // (deleted, so the next reader refills it): the database answers.
                    self.heal(full, &e).await;
                    return self.load_uncached(loader, &None).await;
                }
            }
        }
    }

    async fn usable_stale(&self, full: &str, stale: Option<Bytes>) -> Option<Option<V>> {
        match (self.keep_stale, stale) {
            (Some(_), Some(bytes)) => self.decode_hit(full, &bytes).await.map(|e| e.value),
            _ => None,
        }
    }

    /// Fills what the loader returned under `token`. When an invalidation
    /// refuses the fill, what was read may predate that write, so it is not
    /// cached, and its `settled_at` (the load's start) keeps it from readers
    /// that began after the load did.
    pub(crate) async fn fill_loaded(
        &self,
        full: &str,
        token: LeaseToken,
        (value, took): (Option<V>, Duration),
        load_began: u64,
    ) -> Settled<V> {
        let store = &self.core.store;
        let expires_at_ms = self.loaded_expiry(value.is_some());
        let encoded = self.encode(value.as_ref(), took).ok().flatten();
        let loaded = |settled_at, filled| Settled {
            value,
            source: Source::Loaded,
            settled_at,
            expires_at_ms,
            filled,
        };
        let Some((bytes, ttl)) = encoded else {
            let _ = self.call(store.release(full, token)).await;
            return loaded(load_began, false);
        };
        let fill_began = self.next_seq();
        let written = self.core.shares_decoded.then(|| bytes.clone());
        match self.call(store.fill(full, token, bytes, ttl)).await {
            Ok(FillOutcome::Stored) => {
                if let Some(written) = &written {
                    self.adopt_written(full, written);
                }
                loaded(fill_began, true)
            }
            Ok(FillOutcome::Refused) => {
                self.record(Event::FillRefused);
                crate::telemetry::record_fill_refused();
                loaded(load_began, false)
            }
            Err(_) => {
                // The store refused the value (over its item limit) or did
                // not answer: give the lease back, or every reader of the key
                // waits out its TTL for a fill that never comes.
                let _ = self.call(store.release(full, token)).await;
                loaded(load_began, false)
            }
        }
    }

    /// How long a lease is renewed under one load: as long as the loader
    /// may run (its load timeout), or [`UNTIMED_LOADER_RENEWAL`] for a
    /// loader without one; never less than the lease wait. A slow query
    /// thus keeps its lease and is cached (`defect_13_a_slow_loader_keeps_its_lease_by_default`
    /// in `tests/regressions.rs`), while a hung one blocks the key in the
    /// store for at most that plus one lease TTL (readers elsewhere load
    /// for themselves after the lease wait meanwhile).
    pub(crate) fn renewal_bound(&self) -> Duration {
        self.load_timeout.unwrap_or(UNTIMED_LOADER_RENEWAL).max(self.lease_wait)
    }

    /// Calls `ask` with a token it offers the store for `key`'s lease,
    /// held from before the call: if the reply is lost to the timeout, or
    /// this caller is cancelled during the call, the store may have granted
    /// the offered lease, and nobody else would release it. A store that
    /// mints its own tokens (memcached) returns the one it granted.
    pub(crate) async fn offering_lease<T, Fut>(&self, key: &str, ask: impl FnOnce(LeaseToken) -> Fut) -> Result<T>
    where
        Fut: Future<Output = crate::store::StoreResult<T>>,
    {
        let offered = LeaseToken::random();
        let mut offered_lease = self.hold(key, offered);
        let outcome = self.call(ask(offered)).await;
        if outcome.is_ok() {
            offered_lease.disarm();
        }
        outcome
    }

    /// A guard that releases `token`'s lease if this caller is cancelled
    /// before it fills or releases it (see `engine::lease`).
    pub(crate) fn hold(&self, full: &str, token: LeaseToken) -> HeldLease {
        HeldLease::new(self.core.store.clone(), full, token, self.core.op_timeout)
    }

    /// Runs the loader while renewing the lease it loads under, so that a
    /// loader slower than the lease TTL keeps it (see `engine::lease`).
    pub(crate) async fn run_loader_leased<F, Fut, E>(&self, full: &str, token: LeaseToken, loader: &mut F) -> Loaded<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let store = &self.core.store;
        let renew_until = super::deadline_after(self.renewal_bound());
        let renew = move || async move {
            if Instant::now() >= renew_until {
                // A loader this slow may be hung: let the lease run out so
                // that another caller can fill the key.
                return false;
            }
            // Only the store's "no such lease" ends the renewals: a renewal
            // that timed out proves nothing, and the next one may land.
            !matches!(
                self.call(store.renew_lease(full, token, self.lease_ttl)).await,
                Ok(false)
            )
        };
        renewing(self.lease_ttl, renew, self.run_loader(loader)).await
    }
}
