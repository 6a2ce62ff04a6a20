//! [`MemoryStore`]: the in-process store on moka, the embedded default.
//!
//! Owns the in-process implementation of the [`Store`] contract. Plain keys
//! and leased entries share one moka cache; every read-modify-write goes
//! through moka's `and_compute_with`, which serialises calls on the same key
//! (a key-level lock) without a global lock, so the lease state machine is
//! atomic per key exactly as the Lua scripts make it on Redis.
//!
//! Lease deadlines use `tokio::time::Instant`, so tests can drive lease
//! expiry with `tokio::time::pause()`; value TTLs are moka's (wall clock).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;
use moka::ops::compute::Op;
use tokio::time::Instant;

use super::{EntryView, FillOutcome, LeaseOutcome, LeaseToken, Store, StoreError, StoreResult};

/// Default capacity: 256 MiB of keys and values.
pub const DEFAULT_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Clone)]
enum Slot {
    Plain(Bytes),
    Entry {
        value: Option<Bytes>,
        stale: bool,
        lease: Option<(LeaseToken, Instant)>,
    },
}

/// A slot plus the TTL to apply when it is written; `None` keeps the
/// current expiry (a lease granted on a stale entry must not extend it).
#[derive(Debug, Clone)]
struct Timed {
    slot: Slot,
    ttl: Option<Duration>,
}

struct SlotExpiry;

impl moka::Expiry<Arc<str>, Timed> for SlotExpiry {
    fn expire_after_create(&self, _: &Arc<str>, v: &Timed, _: std::time::Instant) -> Option<Duration> {
        v.ttl
    }
    fn expire_after_update(
        &self,
        _: &Arc<str>,
        v: &Timed,
        _: std::time::Instant,
        current: Option<Duration>,
    ) -> Option<Duration> {
        v.ttl.or(current)
    }
}

/// An in-process store bounded by bytes, on [moka](https://docs.rs/moka).
///
/// Cloning is cheap and clones share the same cache, so two [`crate::Aside`]
/// instances can share one `MemoryStore` as two services share one Redis.
///
/// # Examples
///
/// ```
/// use aside::store::memory::MemoryStore;
/// let store = MemoryStore::with_capacity_bytes(64 * 1024 * 1024);
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<Arc<str>, Timed>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store holding up to [`DEFAULT_CAPACITY_BYTES`].
    pub fn new() -> Self {
        Self::with_capacity_bytes(DEFAULT_CAPACITY_BYTES)
    }

    /// A store holding up to `bytes` of keys and values (approximately:
    /// moka evicts by TinyLFU once the weight is exceeded).
    pub fn with_capacity_bytes(bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(bytes)
            .weigher(|k: &Arc<str>, v: &Timed| {
                let value_len = match &v.slot {
                    Slot::Plain(b) => b.len(),
                    Slot::Entry { value, .. } => value.as_ref().map_or(0, Bytes::len),
                };
                u32::try_from(k.len() + value_len + 32).unwrap_or(u32::MAX)
            })
            .expire_after(SlotExpiry)
            .build();
        MemoryStore { cache }
    }

    /// Approximate number of keys held (runs moka's pending maintenance first).
    pub async fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// Applies `f` to the slot of `key` atomically (moka's per-key lock) and
    /// returns what `f` reported alongside the change it asked for.
    async fn compute<R>(&self, key: &str, f: impl FnOnce(Option<Slot>) -> (Op<Timed>, R)) -> R {
        let mut report = None;
        self.cache
            .entry(Arc::from(key))
            .and_compute_with(|current| {
                let (op, r) = f(current.map(|e| e.into_value().slot));
                report = Some(r);
                std::future::ready(op)
            })
            .await;
        report.expect("and_compute_with always runs its closure")
    }
}

fn entry(value: Option<Bytes>, stale: bool, lease: Option<(LeaseToken, Instant)>, ttl: Option<Duration>) -> Op<Timed> {
    Op::Put(Timed {
        slot: Slot::Entry { value, stale, lease },
        ttl,
    })
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn is_local(&self) -> bool {
        true
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        Ok(match self.cache.get(key).await {
            Some(Timed {
                slot: Slot::Plain(b), ..
            }) => Some(b),
            _ => None,
        })
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        let timed = Timed {
            slot: Slot::Plain(value),
            ttl: Some(ttl),
        };
        self.cache.insert(Arc::from(key), timed).await;
        Ok(())
    }

    async fn add(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<bool> {
        Ok(self
            .compute(key, |current| match current {
                Some(_) => (Op::Nop, false),
                None => (
                    Op::Put(Timed {
                        slot: Slot::Plain(value),
                        ttl: Some(ttl),
                    }),
                    true,
                ),
            })
            .await)
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.cache.invalidate(key).await;
        Ok(())
    }

    async fn incr(&self, key: &str, ttl: Duration) -> StoreResult<u64> {
        self.compute(key, |current| {
            let previous = match current {
                Some(Slot::Plain(b)) => std::str::from_utf8(&b).ok().and_then(|s| s.parse::<u64>().ok()),
                _ => Some(0),
            };
            match previous {
                Some(n) => {
                    let next = n.saturating_add(1);
                    let slot = Slot::Plain(Bytes::from(next.to_string()));
                    (Op::Put(Timed { slot, ttl: Some(ttl) }), Ok(next))
                }
                None => (Op::Nop, Err(StoreError::Server("value is not an integer".into()))),
            }
        })
        .await
    }

    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView> {
        Ok(match self.cache.get(key).await {
            Some(Timed {
                slot: Slot::Entry { value, stale, lease },
                ..
            }) => EntryView {
                value,
                stale,
                lease: lease.filter(|(_, deadline)| *deadline > Instant::now()).map(|(t, _)| t),
            },
            _ => EntryView::default(),
        })
    }

    async fn lookup_or_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<LeaseOutcome> {
        // The hit path reads without the key lock; only misses take it.
        if let Some((value, false)) = self.get_entry(key).await? {
            return Ok(LeaseOutcome::Hit(value));
        }
        let now = Instant::now();
        let granted = Some((token, now + lease_ttl));
        Ok(self
            .compute(key, |current| match current {
                Some(Slot::Entry {
                    value: Some(v),
                    stale: false,
                    ..
                }) => (Op::Nop, LeaseOutcome::Hit(v)),
                Some(Slot::Entry {
                    value,
                    stale,
                    lease: Some((_, deadline)),
                }) if deadline > now => (
                    Op::Nop,
                    LeaseOutcome::Busy {
                        stale: value.filter(|_| stale),
                    },
                ),
                Some(Slot::Entry {
                    value: Some(v),
                    stale: true,
                    ..
                }) => (
                    entry(Some(v.clone()), true, granted, None),
                    LeaseOutcome::Granted { token, stale: Some(v) },
                ),
                _ => (
                    entry(None, false, granted, Some(lease_ttl)),
                    LeaseOutcome::Granted { token, stale: None },
                ),
            })
            .await)
    }

    async fn lease_for_refresh(
        &self,
        key: &str,
        token: LeaseToken,
        lease_ttl: Duration,
    ) -> StoreResult<Option<LeaseToken>> {
        let now = Instant::now();
        Ok(self
            .compute(key, |current| match current {
                Some(Slot::Entry {
                    value: Some(v),
                    stale: false,
                    lease,
                }) if lease.is_none_or(|(_, deadline)| deadline <= now) => {
                    (entry(Some(v), false, Some((token, now + lease_ttl)), None), Some(token))
                }
                _ => (Op::Nop, None),
            })
            .await)
    }

    async fn fill(&self, key: &str, token: LeaseToken, value: Bytes, ttl: Duration) -> StoreResult<FillOutcome> {
        Ok(self
            .compute(key, |current| match current {
                Some(Slot::Entry {
                    lease: Some((held, _)), ..
                }) if held == token => (entry(Some(value), false, None, Some(ttl)), FillOutcome::Stored),
                _ => (Op::Nop, FillOutcome::Refused),
            })
            .await)
    }

    async fn release(&self, key: &str, token: LeaseToken) -> StoreResult<()> {
        self.compute(key, |current| match current {
            Some(Slot::Entry {
                value,
                stale,
                lease: Some((held, _)),
            }) if held == token => match value {
                Some(v) => (entry(Some(v), stale, None, None), ()),
                None => (Op::Remove, ()),
            },
            _ => (Op::Nop, ()),
        })
        .await;
        Ok(())
    }

    async fn put_entry(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        let slot = Slot::Entry {
            value: Some(value),
            stale: false,
            lease: None,
        };
        self.cache.insert(Arc::from(key), Timed { slot, ttl: Some(ttl) }).await;
        Ok(())
    }

    async fn invalidate(&self, key: &str, keep_stale: Option<Duration>) -> StoreResult<()> {
        let Some(stale_ttl) = keep_stale else {
            return self.delete(key).await;
        };
        self.compute(key, |current| match current {
            Some(Slot::Entry { value: Some(v), .. }) => (entry(Some(v), true, None, Some(stale_ttl)), ()),
            None => (Op::Nop, ()),
            _ => (Op::Remove, ()),
        })
        .await;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}
