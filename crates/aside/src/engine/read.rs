//! The read path: store, then single-flight, then lease, then loader, then fill.
//!
//! Owns `get`/`fetch` semantics of DESIGN section 4 for every strategy. It
//! reaches the store only through `Core::call_for`, so every store failure
//! here is already counted and fed to the breaker; this module only decides
//! what a failure means (always: a miss).
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

use crate::envelope::{self, Header};
use crate::error::{Error, Result};
use crate::metrics::Event;
use crate::namespace::{Fetched, NsInner, Settled, Shared, Source, Stampede};
use crate::policy::{Strategy, jittered};
use crate::store::{EntryView, FillOutcome, LeaseOutcome, LeaseToken};

use super::single_flight::Role;

/// First and largest pause between looks while another process holds the lease.
const LEASE_POLL_FIRST: Duration = Duration::from_millis(2);
const LEASE_POLL_MAX: Duration = Duration::from_millis(50);
/// The article's stampede lock: held 5 s, others retry every 100 ms.
const LOCK_TTL: Duration = Duration::from_secs(5);
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// Tag of a flight whose leader holds no lease yet.
const NO_LEASE_YET: u64 = 0;

/// What the fast path found.
pub(crate) enum Cached<V> {
    Hit(V),
    /// Not cached. For `Versioned`, the version the data must live under
    /// (`None` when the version could not be read); for `Lease`, the lease
    /// held on the entry, if any.
    Miss {
        version: Option<u64>,
        lease: Option<LeaseToken>,
    },
}

impl<V> Cached<V> {
    pub(crate) fn hit(self) -> Option<V> {
        match self {
            Cached::Hit(v) => Some(v),
            Cached::Miss { .. } => None,
        }
    }
}

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    pub(crate) fn record(&self, event: Event) {
        self.core.record(&self.metrics, event);
    }

    pub(crate) async fn call<T>(&self, fut: impl Future<Output = crate::store::StoreResult<T>>) -> Result<T> {
        self.core.call_for(&self.metrics, fut).await
    }

    /// The key an invalidation of `full` is queued under while the store is away.
    pub(crate) fn pending_key<'a>(&self, full: &'a str) -> std::borrow::Cow<'a, str> {
        match self.strategy {
            Strategy::Versioned => std::borrow::Cow::Owned(Self::version_key(full)),
            _ => std::borrow::Cow::Borrowed(full),
        }
    }

    pub(crate) fn parse_version(raw: Option<Bytes>) -> u64 {
        raw.and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    }

    fn next_seq(&self) -> u64 {
        self.read_seq.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn version_key(full: &str) -> String {
        format!("{full}#ver")
    }

    pub(crate) fn versioned_key(full: &str, version: u64) -> String {
        format!("{full}#v{version}")
    }

    /// TTL of version counters: longer than any data written under them.
    pub(crate) fn version_ttl(&self) -> Duration {
        self.ttl.mul_f64(3.0) + Duration::from_secs(60)
    }

    pub(crate) fn decode(&self, bytes: &[u8]) -> Result<V> {
        if self.raw {
            return self.codec.decode(bytes);
        }
        let (_header, payload) = envelope::open(bytes, self.codec.id())?;
        self.codec.decode(payload)
    }

    /// Encodes for the store; `None` (counted) when over the size limit.
    pub(crate) fn encode(&self, value: &V, load_time: Duration) -> Result<Option<Bytes>> {
        let payload = self.codec.encode(value)?;
        let bytes = if self.raw {
            payload
        } else {
            envelope::seal(&Header::new(self.codec.id(), None, load_time), &payload)
        };
        if bytes.len() > self.max_value_bytes {
            self.record(Event::Oversized);
            tracing::debug!(
                namespace = self.name,
                size = bytes.len(),
                "value over the size limit not cached"
            );
            return Ok(None);
        }
        Ok(Some(Bytes::from(bytes)))
    }

    /// Decodes a hit; corrupt bytes are counted, deleted and read as a miss.
    pub(crate) async fn decode_hit(&self, key: &str, bytes: &[u8]) -> Option<V> {
        match self.decode(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                self.record(Event::DecodeError);
                tracing::warn!(key, error = %e, "undecodable cache entry deleted");
                let _ = self.call(self.core.store.delete(key)).await;
                None
            }
        }
    }

    /// The current value in the store, if any. Store failures read as a miss.
    pub(crate) async fn read_cached(&self, full: &str) -> Cached<V> {
        if self.core.retry.is_pending(&self.pending_key(full)) {
            return Cached::Miss {
                version: None,
                lease: None,
            };
        }
        let store = &self.core.store;
        let hit = match self.strategy {
            Strategy::Lease => match self.call(store.peek_entry(full)).await {
                Ok(EntryView {
                    value: Some(bytes),
                    stale: false,
                    ..
                }) => self.decode_hit(full, &bytes).await,
                Ok(view) => {
                    return Cached::Miss {
                        version: None,
                        lease: view.lease,
                    };
                }
                Err(_) => None,
            },
            Strategy::Versioned => {
                let Ok(version) = self.read_version(full).await else {
                    return Cached::Miss {
                        version: None,
                        lease: None,
                    };
                };
                let data_key = Self::versioned_key(full, version);
                let hit = match self.call(store.get(&data_key)).await {
                    Ok(Some(bytes)) => self.decode_hit(&data_key, &bytes).await,
                    _ => None,
                };
                return hit.map_or(
                    Cached::Miss {
                        version: Some(version),
                        lease: None,
                    },
                    Cached::Hit,
                );
            }
            _ => match self.call(store.get(full)).await {
                Ok(Some(bytes)) => self.decode_hit(full, &bytes).await,
                _ => None,
            },
        };
        hit.map_or(
            Cached::Miss {
                version: None,
                lease: None,
            },
            Cached::Hit,
        )
    }

    pub(crate) async fn read_version(&self, full: &str) -> Result<u64> {
        let raw = self.call(self.core.store.get(&Self::version_key(full))).await?;
        Ok(Self::parse_version(raw))
    }

    pub(crate) async fn fetch<F, Fut, E>(&self, full: &str, mut loader: F) -> Result<Fetched<V>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut first_look = true;
        loop {
            let (version, lease) = match self.read_cached(full).await {
                Cached::Hit(value) if first_look => {
                    self.record(Event::Hit);
                    return Ok(Fetched {
                        value: Some(value),
                        source: Source::Hit,
                    });
                }
                Cached::Hit(value) => {
                    // Found on a second look, after waiting for another
                    // caller's load: served by that load, not a plain hit.
                    self.record(Event::Coalesced);
                    return Ok(Fetched {
                        value: Some(value),
                        source: Source::Coalesced,
                    });
                }
                Cached::Miss { version, lease } => (version, lease),
            };
            // Taken after the lookup, so hits pay no shared atomic; a later
            // `began` only makes a waiter more careful about what it takes.
            let began = self.next_seq();
            if first_look {
                self.record(Event::Miss);
                first_look = false;
            }
            let settled = match self.stampede {
                Stampede::None => {
                    self.load_missing(full, version, &mut loader, &AtomicU64::new(0))
                        .await?
                }
                Stampede::LockSleep => self.load_under_lock(full, &mut loader).await?,
                Stampede::Coalesce => {
                    // Versioned data is coalesced per version: a reader that
                    // saw a newer version never joins a load of an older one.
                    let flight_key = match version {
                        Some(v) => Self::versioned_key(full, v),
                        None => full.to_owned(),
                    };
                    // Join the in-process load unless its lease is no longer
                    // the entry's: an invalidation revoked it, so its result
                    // cannot be cached and a fresh load should start now.
                    let join = |held: u64| held == NO_LEASE_YET || lease.is_some_and(|t| t.0 == held);
                    let loader = &mut loader;
                    let (shared, role) = self
                        .flight
                        .run_tagged(&flight_key, join, |held| async move {
                            self.load_missing(full, version, loader, &held).await
                        })
                        .await;
                    let settled = shared?;
                    if role == Role::Waiter {
                        if settled.settled_at <= began {
                            // Settled before this read began: it may predate an
                            // invalidation this read must observe. Look again.
                            continue;
                        }
                        self.record(Event::Coalesced);
                        if settled.source == Source::Loaded {
                            return Ok(Fetched {
                                value: settled.value,
                                source: Source::Coalesced,
                            });
                        }
                    }
                    settled
                }
            };
            return Ok(Fetched {
                value: settled.value,
                source: settled.source,
            });
        }
    }

    /// Runs the loader, timing it; its error becomes an `aside::Error`.
    async fn run_loader<F, Fut, E>(&self, loader: &mut F) -> Result<(Option<V>, Duration)>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.record(Event::Load);
        let started = Instant::now();
        match loader().await {
            Ok(value) => Ok((value, started.elapsed())),
            Err(e) => {
                self.record(Event::LoadError);
                Err(Error::loader(e))
            }
        }
    }

    /// Loads without touching the cache.
    async fn load_uncached<F, Fut, E>(&self, loader: &mut F) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let settled_at = self.next_seq();
        let (value, _) = self.run_loader(loader).await?;
        Ok(Settled {
            value,
            source: Source::Loaded,
            settled_at,
        })
    }

    /// The work of a missing key (the single-flight leader's, under `Coalesce`).
    async fn load_missing<F, Fut, E>(
        &self,
        full: &str,
        version: Option<u64>,
        loader: &mut F,
        held: &AtomicU64,
    ) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if self.core.retry.is_pending(&self.pending_key(full)) {
            // An invalidation of this key has not reached the store: neither
            // trust nor refill it until it has.
            return self.load_uncached(loader).await;
        }
        match self.strategy {
            Strategy::Lease => self.load_with_lease(full, loader, held).await,
            Strategy::Versioned => match version {
                Some(version) => self.load_and_set(&Self::versioned_key(full, version), loader).await,
                None => self.load_uncached(loader).await,
            },
            Strategy::Delete | Strategy::DoubleDelete { .. } => self.load_and_set(full, loader).await,
        }
    }

    /// Load, then an unconditional fill (the non-lease strategies).
    async fn load_and_set<F, Fut, E>(&self, key: &str, loader: &mut F) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let settled_at = self.next_seq();
        let (value, took) = self.run_loader(loader).await?;
        if let Some(v) = &value
            && let Ok(Some(bytes)) = self.encode(v, took)
        {
            let _ = self
                .call(self.core.store.set(key, bytes, jittered(self.ttl, self.jitter)))
                .await;
        }
        Ok(Settled {
            value,
            source: Source::Loaded,
            settled_at,
        })
    }

    /// The article's stampede lock, kept as a baseline: whoever sets the lock
    /// loads; the others sleep a fixed 100 ms and look again.
    async fn load_under_lock<F, Fut, E>(&self, full: &str, loader: &mut F) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let lock_key = format!("lock:{full}");
        loop {
            let settled_at = self.next_seq();
            if let Cached::Hit(value) = self.read_cached(full).await {
                return Ok(Settled {
                    value: Some(value),
                    source: Source::Coalesced,
                    settled_at,
                });
            }
            match self
                .call(self.core.store.add(&lock_key, Bytes::from_static(b"1"), LOCK_TTL))
                .await
            {
                Ok(false) => tokio::time::sleep(LOCK_RETRY).await,
                Ok(true) => {
                    let settled = self.load_missing(full, None, loader, &AtomicU64::new(0)).await;
                    let _ = self.call(self.core.store.delete(&lock_key)).await;
                    return settled;
                }
                Err(_) => return self.load_uncached(loader).await,
            }
        }
    }

    /// `held` publishes the lease this load holds to callers deciding
    /// whether to wait for it.
    async fn load_with_lease<F, Fut, E>(&self, full: &str, loader: &mut F, held: &AtomicU64) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let store = &self.core.store;
        let started = Instant::now();
        let mut pause = LEASE_POLL_FIRST;
        let mut attempts = 0;
        loop {
            let settled_at = self.next_seq();
            let outcome = self
                .call(store.lookup_or_lease(full, LeaseToken::random(), self.lease_ttl))
                .await;
            match outcome {
                Ok(LeaseOutcome::Hit(bytes)) => {
                    if let Some(v) = self.decode_hit(full, &bytes).await {
                        // Filled by another caller (a fenced fill) while we looked.
                        return Ok(Settled {
                            value: Some(v),
                            source: Source::Coalesced,
                            settled_at,
                        });
                    }
                }
                Ok(LeaseOutcome::Granted { token, .. }) => {
                    held.store(token.0, Ordering::Release);
                    attempts += 1;
                    let last_attempt = attempts >= self.max_fill_attempts;
                    if let Some(settled) = self.load_and_fill(full, token, loader, last_attempt).await? {
                        return Ok(settled);
                    }
                    // Refused: an invalidation landed during the load. Load
                    // again under a new lease so the next reader finds a value.
                    pause = LEASE_POLL_FIRST;
                }
                Ok(LeaseOutcome::Busy { stale }) => {
                    if let Some(v) = self.usable_stale(full, stale).await {
                        self.record(Event::StaleServed);
                        return Ok(Settled {
                            value: Some(v),
                            source: Source::Stale,
                            settled_at,
                        });
                    }
                    if started.elapsed() >= self.lease_wait {
                        // The holder is slow or gone: answer from the loader
                        // rather than hang, and leave the fill to the holder.
                        return self.load_uncached(loader).await;
                    }
                    // No fill notification to wait on: back off with jitter.
                    let nap = pause.mul_f64(0.5 + rand::random::<f64>());
                    tokio::time::sleep(nap.min(self.lease_wait.saturating_sub(started.elapsed()))).await;
                    pause = (pause * 2).min(LEASE_POLL_MAX);
                }
                Err(_) => {
                    // The store is down or skipped: the database answers.
                    return self.load_uncached(loader).await;
                }
            }
        }
    }

    async fn usable_stale(&self, full: &str, stale: Option<Bytes>) -> Option<V> {
        match (self.keep_stale, stale) {
            (Some(_), Some(bytes)) => self.decode_hit(full, &bytes).await,
            _ => None,
        }
    }

    /// Loads under `token` and fills. `None` when the fill was refused and
    /// this was not the last attempt.
    async fn load_and_fill<F, Fut, E>(
        &self,
        full: &str,
        token: LeaseToken,
        loader: &mut F,
        last_attempt: bool,
    ) -> Result<Option<Settled<V>>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let store = &self.core.store;
        let load_began = self.next_seq();
        let loaded = self.run_loader(loader).await;
        let bytes = match &loaded {
            Ok((Some(v), took)) => self.encode(v, *took).ok().flatten(),
            _ => None,
        };
        let Some(bytes) = bytes else {
            let _ = self.call(store.release(full, token)).await;
            let (value, _) = loaded?;
            return Ok(Some(Settled {
                value,
                source: Source::Loaded,
                settled_at: load_began,
            }));
        };
        let (value, _) = loaded?;
        let fill_began = self.next_seq();
        let ttl = jittered(self.ttl, self.jitter);
        match self.call(store.fill(full, token, bytes, ttl)).await {
            Ok(FillOutcome::Stored) => Ok(Some(Settled {
                value,
                source: Source::Loaded,
                settled_at: fill_began,
            })),
            Ok(FillOutcome::Refused) => {
                // What we read may predate the write that revoked the lease:
                // it must not be cached, nor handed to readers that began
                // after the load did.
                self.record(Event::FillRefused);
                Ok(last_attempt.then_some(Settled {
                    value,
                    source: Source::Loaded,
                    settled_at: load_began,
                }))
            }
            Err(_) => Ok(Some(Settled {
                value,
                source: Source::Loaded,
                settled_at: load_began,
            })),
        }
    }
}
