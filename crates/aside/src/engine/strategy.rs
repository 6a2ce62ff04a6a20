//! The strategies, side by side: how each one reads a key, fills a load
//! and invalidates a key, for the single-key and the batch paths alike.
//!
//! Owns every decision that depends on [`Strategy`]: where a key's data
//! lives (its own key, or the versioned data key under its counter), how
//! it is looked up (`peek_entry`/`peek_many` with leases, `get`/`get_many`
//! otherwise), how a load is filled (a fenced fill under a lease, or an
//! unconditional `set`), and what an invalidation and a write do to the
//! store. The paths (`read`, `refresh`, `batch`, `write`) ask here and
//! never match on the strategy themselves; the lease's own state machine
//! (lookup or lease, wait, fill) is `read::load_with_lease`, and the
//! article's lock, a stampede mode over any strategy, is
//! `read::load_under_lock`.

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::batch::Found;
use super::read::{Cached, Current, plain_miss};
use super::retry::PendingOp;
use super::state::{NsInner, Shared};
use crate::error::{Error, ErrorKind, Result};
use crate::policy::Strategy;
use crate::store::{Held, LeaseToken, SharedView};

/// What a load replaces, which decides the lease it takes and what it
/// falls back to when the loader fails.
pub(crate) enum Replacing<V> {
    /// Nothing usable is cached: an ordinary miss.
    Nothing,
    /// A value still cached, due for early refresh or expired under
    /// fail-safe: a refresh lease, and the value to fall back to.
    Current(Current<V>),
    /// Whatever is cached, by request (`force_refresh`): a refresh lease,
    /// nothing to fall back to.
    Anything,
}

impl<V> Replacing<V> {
    fn current(self) -> Option<Current<V>> {
        match self {
            Replacing::Current(current) => Some(current),
            Replacing::Nothing | Replacing::Anything => None,
        }
    }
}

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    /// The key an invalidation of `full` is queued under while the store is away.
    pub(crate) fn pending_key<'a>(&self, full: &'a str) -> std::borrow::Cow<'a, str> {
        match self.strategy {
            Strategy::Versioned => std::borrow::Cow::Owned(Self::version_key(full)),
            _ => std::borrow::Cow::Borrowed(full),
        }
    }

    /// The current value in the store, if any. Store failures read as a miss.
    ///
    /// `Lease`'s lookup is inline; the other strategies' run boxed, and so
    /// does deleting an undecodable entry (`decode_hit`), so that a hit's
    /// future stays a few hundred bytes rather than the largest of them
    /// all: hits move it (see [`NsInner::fetch_timed`], and
    /// `namespace::future_size`, which bounds it).
    pub(crate) async fn read_cached(&self, full: &str) -> Cached<V> {
        if self.core.retry.is_pending(&self.pending_key(full)) {
            return plain_miss();
        }
        match self.strategy {
            Strategy::Lease => {}
            Strategy::Versioned => return Box::pin(self.read_cached_versioned(full)).await,
            Strategy::Delete | Strategy::DoubleDelete { .. } => return Box::pin(self.read_cached_plain(full)).await,
        }
        // A store that keeps decoded values (`engine::local`).
        if let Some(view) = self.peek_shared(full) {
            return match view {
                SharedView {
                    value: Some(held),
                    stale: false,
                    lease,
                    ..
                } => match self.entry_of(full, held).await {
                    Some(entry) => self.judge(entry, None, lease),
                    None => plain_miss(),
                },
                view => Cached::Miss {
                    version: None,
                    lease: view.lease,
                    current: None,
                },
            };
        }
        // The current value only: the lease an entry may hold is not
        // read. Single-flight treats a lookup that saw no lease as one
        // that ran before the leader's grant (see `fetch_timed`): at
        // worst a waiter joins a flight whose lease was revoked, and
        // its `settled_at` sends it round again. Reading the lease too
        // (an `HMGET` on Redis) cost every hit about 5,300
        // instructions (`scripts/profile-hits redis`).
        match self.call(self.core.store.peek_fresh(full)).await {
            Ok(Some(bytes)) => match self.decode_hit(full, &bytes).await {
                Some(entry) => self.judge(entry, None, None),
                None => plain_miss(),
            },
            Ok(None) => plain_miss(),
            Err(e) => self.miss_after(full, &e).await,
        }
    }

    /// [`NsInner::read_cached`] for `Versioned`: the version, then the data under it.
    async fn read_cached_versioned(&self, full: &str) -> Cached<V> {
        let store = &self.core.store;
        let version = match self.read_version(full).await {
            Ok(version) => version,
            Err(e) if crate::engine::Core::store_down(&e) => return Cached::Down,
            Err(_) => return plain_miss(),
        };
        let data_key = Self::versioned_key(full, version);
        // Only the data key heals: deleting the counter would take it
        // back to version 0, where an old row may still be.
        let read = match self.get_shared(&data_key) {
            Some(view) => Ok(view.value),
            None => self.call(store.get(&data_key)).await.map(|b| b.map(Held::Bytes)),
        };
        let entry = match read {
            Ok(Some(held)) => self.entry_of(&data_key, held).await,
            Ok(None) => None,
            Err(e) => {
                self.heal(&data_key, &e).await;
                None
            }
        };
        match entry {
            Some(entry) => self.judge(entry, Some(version), None),
            None => Cached::Miss {
                version: Some(version),
                lease: None,
                current: None,
            },
        }
    }

    /// [`NsInner::read_cached`] for `Delete` and `DoubleDelete`: the plain value.
    async fn read_cached_plain(&self, full: &str) -> Cached<V> {
        let store = &self.core.store;
        let read = match self.get_shared(full) {
            Some(view) => Ok(view.value),
            None => self.call(store.get(full)).await.map(|b| b.map(Held::Bytes)),
        };
        let entry = match read {
            Ok(Some(held)) => self.entry_of(full, held).await,
            Ok(None) => None,
            Err(e) => return self.miss_after(full, &e).await,
        };
        entry.map_or_else(plain_miss, |e| self.judge(e, None, None))
    }

    /// One round trip to the store (two for `Versioned`); hits go into
    /// `found`, misses come back as `(key, full key, key to load and fill
    /// under, lease seen)`.
    pub(crate) async fn lookup_many<K: Hash + Eq + Clone>(
        &self,
        keys: &[(K, String)],
        count: bool,
        found: &mut Found<K, V>,
    ) -> Vec<(K, String, String, Option<LeaseToken>)> {
        let fulls: Vec<String> = keys.iter().map(|(_, f)| f.clone()).collect();
        // Checked before the store is read, as `read_cached` does: a check
        // after it could follow the replay of a queued invalidation that
        // the read preceded, and take the value it removed for current.
        let pending: Vec<bool> = fulls
            .iter()
            .map(|full| self.core.retry.is_pending(&self.pending_key(full)))
            .collect();
        let store = &self.core.store;
        // A store of this process that keeps decoded values is read key by
        // key without its bytes (`engine::local`); `None` from the first
        // key says the store does not.
        let shared = match self.strategy {
            Strategy::Lease => fulls.first().and_then(|f| self.peek_shared(f)).map(|_| {
                fulls
                    .iter()
                    .map(|full| {
                        let view = self.peek_shared(full).unwrap_or_default();
                        (view.value.filter(|_| !view.stale), view.lease)
                    })
                    .collect::<Vec<_>>()
            }),
            Strategy::Delete | Strategy::DoubleDelete { .. } => {
                fulls.first().and_then(|f| self.get_shared(f)).map(|_| {
                    fulls
                        .iter()
                        .map(|full| (self.get_shared(full).and_then(|view| view.value), None))
                        .collect::<Vec<_>>()
                })
            }
            Strategy::Versioned => None,
        };
        let looked: Vec<(Option<Held>, Option<LeaseToken>)> = match (shared, self.strategy) {
            (Some(looked), _) => looked,
            (None, Strategy::Lease) => match self.call(store.peek_many(&fulls)).await {
                Ok(views) => views
                    .into_iter()
                    .map(|v| (v.value.filter(|_| !v.stale).map(Held::Bytes), v.lease))
                    .collect(),
                Err(_) => vec![(None, None); keys.len()],
            },
            (None, Strategy::Versioned) => {
                // Two round trips: the versions, then the data under them.
                let version_keys: Vec<String> = fulls.iter().map(|f| Self::version_key(f)).collect();
                let Ok(versions) = self.call(store.get_many(&version_keys)).await else {
                    return keys
                        .iter()
                        .map(|(k, f)| (k.clone(), f.clone(), f.clone(), None))
                        .collect();
                };
                let mut data_keys = Vec::with_capacity(fulls.len());
                for (full, version) in fulls.iter().zip(versions) {
                    let version = match version {
                        Some(raw) => Self::parse_version(Some(raw)),
                        // Absent: started as the single-key path starts it,
                        // never read as 0 (see `NsInner::read_version`).
                        None => match self.read_version(full).await {
                            Ok(version) => version,
                            Err(_) => {
                                return keys
                                    .iter()
                                    .map(|(k, f)| (k.clone(), f.clone(), f.clone(), None))
                                    .collect();
                            }
                        },
                    };
                    data_keys.push(Self::versioned_key(full, version));
                }
                let values = self.call(store.get_many(&data_keys)).await.unwrap_or_default();
                let mut misses = Vec::new();
                for (i, (key, full)) in keys.iter().enumerate() {
                    // A pending invalidation's version bump has not reached
                    // the store: the data under the version read may be old.
                    let hit = match values.get(i).cloned().flatten() {
                        Some(bytes) if !pending[i] => self.batch_hit(&data_keys[i], &bytes).await,
                        _ => None,
                    };
                    self.count_lookup(count, hit.is_some());
                    match hit {
                        Some((value, expires_at_ms)) => found.insert(key.clone(), value, expires_at_ms),
                        None => misses.push((key.clone(), full.clone(), data_keys[i].clone(), None)),
                    }
                }
                return misses;
            }
            (None, _) => match self.call(store.get_many(&fulls)).await {
                Ok(values) => values.into_iter().map(|v| (v.map(Held::Bytes), None)).collect(),
                Err(_) => vec![(None, None); keys.len()],
            },
        };
        let mut misses = Vec::new();
        for (i, (key, full)) in keys.iter().enumerate() {
            let (held, lease) = looked.get(i).cloned().unwrap_or((None, None));
            let hit = match held {
                Some(held) if !pending[i] => self.batch_hit_held(full, held).await,
                _ => None,
            };
            self.count_lookup(count, hit.is_some());
            match hit {
                Some((value, expires_at_ms)) => found.insert(key.clone(), value, expires_at_ms),
                None => misses.push((key.clone(), full.clone(), full.clone(), lease)),
            }
        }
        misses
    }

    /// The work of a missing key (the single-flight leader's, under `Coalesce`).
    pub(crate) async fn load_missing<F, Fut, E>(
        &self,
        full: &str,
        version: Option<u64>,
        loader: &mut F,
        held: &AtomicU64,
        current: Option<Current<V>>,
        store_down: bool,
    ) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if store_down {
            // The lookup found the store failing as a whole: one timeout
            // per read is enough.
            return self.load_uncached(loader, &None).await;
        }
        if self.core.retry.is_pending(&self.pending_key(full)) {
            // An invalidation of this key has not reached the store: neither
            // trust nor refill it until it has.
            return self.load_uncached(loader, &None).await;
        }
        let replacing = match current {
            Some(current) => Replacing::Current(current),
            None => Replacing::Nothing,
        };
        self.load_and_fill(full, version, loader, held, replacing).await
    }

    /// Loads `full` and fills it, for a caller that did not look it up
    /// first (a background refresh, a forced one): `Versioned` reads the
    /// version its data lives under now.
    pub(crate) async fn reload<F, Fut, E>(
        &self,
        full: &str,
        loader: &mut F,
        held: &AtomicU64,
        replacing: Replacing<V>,
    ) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let version = match self.strategy {
            Strategy::Versioned => self.read_version(full).await.ok(),
            Strategy::Lease | Strategy::Delete | Strategy::DoubleDelete { .. } => None,
        };
        self.load_and_fill(full, version, loader, held, replacing).await
    }

    /// How each strategy loads a key and fills what it loaded: under a
    /// lease (a miss's, or a refresh lease when a value is to be replaced)
    /// and a fenced fill; or an unconditional `set` of the data key, which
    /// for `Versioned` is the one under `version` (`None`: it could not be
    /// read, so the loader answers and nothing is filled).
    async fn load_and_fill<F, Fut, E>(
        &self,
        full: &str,
        version: Option<u64>,
        loader: &mut F,
        held: &AtomicU64,
        replacing: Replacing<V>,
    ) -> Shared<V>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        match self.strategy {
            Strategy::Lease => match replacing {
                Replacing::Nothing => self.load_with_lease(full, loader, held).await,
                Replacing::Current(current) => self.refresh_with_lease(full, loader, held, Some(current)).await,
                Replacing::Anything => self.refresh_with_lease(full, loader, held, None).await,
            },
            Strategy::Versioned => match version {
                Some(version) => {
                    self.load_and_set(&Self::versioned_key(full, version), loader, replacing.current())
                        .await
                }
                None => self.load_uncached(loader, &replacing.current()).await,
            },
            Strategy::Delete | Strategy::DoubleDelete { .. } => {
                self.load_and_set(full, loader, replacing.current()).await
            }
        }
    }

    /// True when fills are fenced by a lease (`Lease`): a batch then asks
    /// for a lease per key and fills under them; the others `set`.
    pub(crate) fn fences_fills(&self) -> bool {
        self.strategy == Strategy::Lease
    }

    pub(crate) async fn invalidate_in_store(&self, full: &str) -> Result<()> {
        let store = &self.core.store;
        let (key, op, result) = match self.strategy {
            Strategy::Lease => {
                let op = PendingOp::Invalidate {
                    keep_stale: self.keep_stale,
                };
                let result = self
                    .core
                    .call_for(&self.metrics, store.invalidate(full, self.keep_stale))
                    .await;
                (full.to_owned(), op, result)
            }
            Strategy::Delete => {
                let result = self.core.call_for(&self.metrics, store.delete(full)).await;
                (full.to_owned(), PendingOp::Delete, result)
            }
            Strategy::DoubleDelete { delay } => {
                let result = self.core.call_for(&self.metrics, store.delete(full)).await;
                self.core.delayed.schedule(
                    &self.core,
                    super::deadline_after(delay),
                    full.to_owned(),
                    self.self_ref.clone(),
                );
                (full.to_owned(), PendingOp::Delete, result)
            }
            Strategy::Versioned => {
                let key = Self::version_key(full);
                let op = PendingOp::Incr {
                    ttl: self.version_ttl(),
                };
                let result = self.bump_version(full).await;
                (key, op, result.map(drop))
            }
        };
        if let Err(e) = &result {
            tracing::warn!(key = %crate::telemetry::KeyHash(&key), error = %e, "invalidation failed: queued for replay");
            self.core.queue_invalidation(&self.name, full, &key, op);
        }
        result
    }

    pub(crate) async fn write_to_store(&self, full: &str, value: &V) -> Result<()> {
        let (bytes, ttl) = self.encode(Some(value), Duration::ZERO)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Codec,
                format!("value over the {} byte limit", self.max_value_bytes),
            )
        })?;
        let store = &self.core.store;
        let result = match self.strategy {
            Strategy::Lease => {
                self.core
                    .call_for(&self.metrics, store.put_entry(full, bytes, ttl))
                    .await
            }
            Strategy::Versioned => {
                // A new version, then the value under it: a load that read
                // the old row fills the old version, which no reader asks
                // for any more. Writing under the current version would let
                // that fill overwrite this value.
                match self.bump_version(full).await {
                    Ok(v) => {
                        let key = Self::versioned_key(full, v);
                        self.core.call_for(&self.metrics, store.set(&key, bytes, ttl)).await
                    }
                    Err(e) => Err(e),
                }
            }
            _ => self.core.call_for(&self.metrics, store.set(full, bytes, ttl)).await,
        };
        if result.is_err() {
            // The old value may still be cached: make sure it goes.
            let _ = self.invalidate_all(&[full.to_owned()]).await;
        }
        result
    }
}
