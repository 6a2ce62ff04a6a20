//! [`MemoryStore`]: the in-process store on moka, the embedded default.
//!
//! Owns the in-process implementation of the [`Store`] contract. Plain keys
//! and leased entries share one moka cache; every write, blind ones
//! included, goes through moka's `and_compute_with`, which serialises calls
//! on the same key (a key-level lock) without a global lock, so the lease
//! state machine is atomic per key exactly as the Lua scripts make it on
//! Redis. Blind writes must take the same path: moka's `insert` and
//! `invalidate` do not wait for a compute in progress, so a fill that had
//! read `Leased(t)` would write its old value after a `delete` or
//! `put_entry` that had already returned. Only reads go around the lock.
//!
//! The cache is moka's `sync::Cache`, not its `future::Cache`: every compute
//! closure here is a few comparisons that never await, so the key lock is
//! never held across an `.await` and a blocking lock costs nothing a
//! waiting task would notice; in exchange a hit is a plain function call
//! ([`Store::peek_shared`]) with no future to box or poll.
//!
//! Values are kept decoded ([`Held::Decoded`]): the first hit of a value
//! written as bytes decodes it and swaps the slot to the decoded entry (the
//! bytes are dropped), so later hits clone the value out of it and decode
//! nothing. A namespace's single-key load hands the store the decoded form
//! right after its write lands ([`Store::adopt_decoded`]), so those values
//! are decoded from the write on. Readers that speak bytes get them encoded
//! again on demand.
//!
//! Lease deadlines use `tokio::time::Instant`, so tests can drive lease
//! expiry with `tokio::time::pause()`; value TTLs are moka's (the real
//! monotonic clock, which `tokio::time::pause()` does not stop).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use moka::ops::compute::Op;
use moka::sync::Cache;
use smol_str::SmolStr;
use tokio::time::Instant;

use super::{
    Decoder, EntryView, FillOutcome, FillWakes, FillWatch, Held, LeaseOutcome, LeaseToken, SharedView, Store,
    StoreError, StoreResult, VersionedPut,
};

/// Default capacity: 256 MiB of keys and values.
pub const DEFAULT_CAPACITY_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Clone)]
enum Slot {
    Plain(Held),
    Entry {
        value: Option<Held>,
        stale: bool,
        lease: Option<Lease>,
    },
}

/// A lease on a slot. Boxed: most slots hold none, and every entry pays
/// for the slot's size (a box is 8 bytes, the lease inline took 24), for
/// the cost of an allocation per lease granted, which comes with a load
/// anyway. With the key's [`SmolStr`] and [`Expire`], an entry of `aside
/// bench --scenario memory` went from 913.9 to 868.5 resident bytes.
type Lease = Box<LeaseState>;

#[derive(Debug, Clone, Copy)]
struct LeaseState {
    token: LeaseToken,
    /// When the lease ends.
    until: Instant,
}

/// A lease of `token` until `until`.
fn new_lease(token: LeaseToken, until: Instant) -> Lease {
    Box::new(LeaseState { token, until })
}

/// A slot plus the expiry to apply when it is written.
#[derive(Debug, Clone)]
struct Timed {
    slot: Slot,
    expire: Expire,
}

/// What a write does to its slot's expiry: one field of 24 bytes, where
/// two `Option<Duration>`s took 32, in a value moka keeps per entry and
/// clones on every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expire {
    /// Expires this long after the write.
    After(Duration),
    /// Keeps the current expiry (a lease granted on a stale entry must not
    /// extend it).
    Keep,
    /// Keeps the current expiry, extended to at least this long from now
    /// (a refresh lease must not outlive its entry, or its fill is
    /// refused). No expiry stays none.
    KeepAtLeast(Duration),
}

impl Timed {
    /// `ttl: None` keeps the current expiry.
    fn new(slot: Slot, ttl: Option<Duration>) -> Self {
        Timed {
            slot,
            expire: ttl.map_or(Expire::Keep, Expire::After),
        }
    }

    /// The expiry of a slot written over one that expires in `current`
    /// (`None`: no expiry).
    fn expiry(&self, current: Option<Duration>) -> Option<Duration> {
        match self.expire {
            Expire::After(ttl) => Some(ttl),
            Expire::Keep => current,
            Expire::KeepAtLeast(at_least) => current.map(|left| left.max(at_least)),
        }
    }
}

struct SlotExpiry;

thread_local! {
    /// The instant moka's last lookup on this thread read the clock at,
    /// left by [`SlotExpiry::expire_after_read`] (see [`MemoryStore::lookup`]).
    static READ_AT: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

impl moka::Expiry<SmolStr, Timed> for SlotExpiry {
    /// Keeps the expiry, and leaves the time of the read for the hit.
    ///
    /// moka reads the clock on every lookup, to expire entries, and calls
    /// this on every entry it finds, with that time. Handing it on saves
    /// the hit a second clock read to judge the value's freshness.
    fn expire_after_read(
        &self,
        _: &SmolStr,
        _: &Timed,
        read_at: std::time::Instant,
        duration_until_expiry: Option<Duration>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        READ_AT.set(Some(read_at));
        duration_until_expiry
    }

    fn expire_after_create(&self, _: &SmolStr, v: &Timed, _: std::time::Instant) -> Option<Duration> {
        match v.expire {
            Expire::After(ttl) | Expire::KeepAtLeast(ttl) => Some(ttl),
            Expire::Keep => None,
        }
    }
    fn expire_after_update(
        &self,
        _: &SmolStr,
        v: &Timed,
        _: std::time::Instant,
        current: Option<Duration>,
    ) -> Option<Duration> {
        v.expiry(current)
    }
}

/// An in-process store bounded by bytes, on [moka](https://docs.rs/moka).
///
/// Cloning is cheap and clones share the same cache, so two [`crate::Aside`]
/// instances can share one `MemoryStore` as two services share one Redis.
///
/// Values are held decoded after their first hit, or from their write on
/// when a namespace's load wrote them: a hit clones the value
/// out of the shared decoded entry and decodes nothing, so for a value type
/// that is cheap to clone (an `Arc<T>`, say) the value is shared, not
/// copied, per hit. Readers of bytes (another value type on the same key,
/// [`Store::peek_entry`], the batch reads) get them encoded again.
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
    /// Keyed by full key, hashed with foldhash ([`key_hasher`]). A
    /// [`SmolStr`] holds a key of up to 23 bytes inline: one allocation per
    /// entry fewer than an `Arc<str>` (moka puts its key behind a
    /// reference count of its own), and none for a write's lookup of a key
    /// that short.
    cache: Cache<SmolStr, Timed, foldhash::fast::SeedableRandomState>,
    /// Readers waiting for a lease to end, woken by the writes that end it.
    wakes: FillWakes,
    /// The write marks of `put_entry_if_newer`: the highest version and
    /// when it expires, per mark key. Read and written only inside the
    /// entry's `compute`, so the check and both writes are atomic per key;
    /// a plain mutex because that closure cannot await (it is held for a
    /// map lookup, never across an `.await`).
    marks: Arc<std::sync::Mutex<Marks>>,
}

/// Write marks, with expired ones pruned when the map doubles.
#[derive(Debug, Default)]
struct Marks {
    by_key: std::collections::HashMap<String, (u64, Instant)>,
    prune_at: usize,
}

impl Marks {
    /// Records `version` for `key` if above the live mark; true if it was.
    fn advance(&mut self, key: &str, version: u64, ttl: Duration) -> bool {
        let now = Instant::now();
        if let Some((mark, until)) = self.by_key.get(key)
            && *until > now
            && *mark >= version
        {
            return false;
        }
        if self.by_key.len() >= self.prune_at {
            self.by_key.retain(|_, (_, until)| *until > now);
            self.prune_at = (self.by_key.len() * 2).max(1024);
        }
        self.by_key
            .insert(key.to_owned(), (version, crate::engine::deadline_from(now, ttl)));
        true
    }
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

/// The hasher of a store's keys: foldhash rather than the standard SipHash,
/// about 200 fewer instructions per hit (`scripts/profile-hits memory`).
///
/// Keys often come from outside (an id in a URL), so the seeds are the
/// operating system's randomness (`rand`), not foldhash's own, which it
/// draws from stack addresses and the time: which keys share a bucket
/// cannot be worked out in advance. foldhash, like the L1's hash, does not
/// claim to hold against an attacker who can time the cache and derive its
/// seed; SipHash would cost the 200 instructions back.
fn key_hasher() -> foldhash::fast::SeedableRandomState {
    static SHARED: std::sync::OnceLock<foldhash::SharedSeed> = std::sync::OnceLock::new();
    let shared = SHARED.get_or_init(|| foldhash::SharedSeed::from_u64(rand::random()));
    foldhash::fast::SeedableRandomState::with_seed(rand::random(), shared)
}

/// True when `a` and `b` are the same bytes object (clones of one `Bytes`).
fn same_bytes(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

impl MemoryStore {
    /// A store holding up to [`DEFAULT_CAPACITY_BYTES`].
    pub fn new() -> Self {
        Self::with_capacity_bytes(DEFAULT_CAPACITY_BYTES)
    }

    /// A store holding up to `bytes` of keys and values (approximately:
    /// moka evicts by TinyLFU once the weight is exceeded). A decoded value
    /// weighs what its envelope bytes did.
    pub fn with_capacity_bytes(bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(bytes)
            .weigher(|k: &SmolStr, v: &Timed| {
                let value_len = match &v.slot {
                    Slot::Plain(held) => held.encoded_len(),
                    Slot::Entry { value, .. } => value.as_ref().map_or(0, Held::encoded_len),
                };
                u32::try_from(k.len() + value_len + 32).unwrap_or(u32::MAX)
            })
            .expire_after(SlotExpiry)
            .build_with_hasher(key_hasher());
        MemoryStore {
            cache,
            marks: Arc::default(),
            wakes: FillWakes::live(),
        }
    }

    /// Approximate number of keys held (runs moka's pending maintenance first).
    pub async fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Applies `f` to the slot of `key` atomically (moka's per-key lock) and
    /// returns what `f` reported alongside the change it asked for. `f`
    /// never awaits, so the lock is held for a few comparisons only.
    fn compute<R>(&self, key: &str, f: impl FnOnce(Option<Slot>) -> (Op<Timed>, R)) -> R {
        let mut report = None;
        self.cache.entry(SmolStr::new(key)).and_compute_with(|current| {
            let (op, r) = f(current.map(|e| e.into_value().slot));
            report = Some(r);
            op
        });
        report.expect("and_compute_with always runs its closure")
    }

    /// Replaces the bytes `bytes` of `key`'s slot by `decoded`, keeping its
    /// stale flag, lease and expiry, if the slot still holds those very
    /// bytes (anything written since wins). Under the key lock: a swap
    /// racing a fill or an invalidation can neither undo nor resurrect it.
    fn keep_decoded(&self, key: &str, bytes: &Bytes, decoded: Held) {
        self.compute(key, |current| {
            let slot = match current {
                Some(Slot::Plain(Held::Bytes(b))) if same_bytes(&b, bytes) => Slot::Plain(decoded),
                Some(Slot::Entry {
                    value: Some(Held::Bytes(b)),
                    stale,
                    lease,
                }) if same_bytes(&b, bytes) => Slot::Entry {
                    value: Some(decoded),
                    stale,
                    lease,
                },
                _ => return (Op::Nop, ()),
            };
            // `ttl: None`: the expiry stays what it was.
            (Op::Put(Timed::new(slot, None)), ())
        });
    }

    /// A current value held as bytes, decoded, and kept so if it decodes
    /// and encodes back to exactly those bytes.
    ///
    /// The check is what keeps a namespace of another value type from
    /// losing data: a type with fewer fields (or a raw reader) decodes the
    /// bytes fine, but its re-encoding drops what it does not know, and a
    /// slot swapped to it would serve the shorter bytes to the namespace
    /// that wrote them. Such a reader gets its value and the slot keeps its
    /// bytes. The cost is one encode per first hit of a fill (or per
    /// adoption of a load's write), not per hit.
    fn decoded(&self, key: &str, held: Held, decode: Decoder<'_>) -> Held {
        match held {
            Held::Bytes(bytes) => match decode(&bytes) {
                Some(entry) => {
                    let exact = entry.encode().is_some_and(|again| again == bytes);
                    let decoded = Held::Decoded(entry);
                    if exact {
                        self.keep_decoded(key, &bytes, decoded.clone());
                    }
                    decoded
                }
                None => Held::Bytes(bytes),
            },
            decoded => decoded,
        }
    }

    /// The slot of `key` as held, without the lock, and the instant moka
    /// read the clock at to find it unexpired (`None` when it found none).
    ///
    /// Why a thread-local and not a clock read of our own: the lookup and
    /// [`SlotExpiry::expire_after_read`], which leaves the instant, run
    /// synchronously on this thread, so the instant taken right after the
    /// lookup is the one of this lookup (cleared first, so never an older
    /// one's), and any instant within the call is as good a time of the
    /// read as one taken after it.
    fn lookup(&self, key: &str) -> (Option<Timed>, Option<std::time::Instant>) {
        READ_AT.set(None);
        let found = self.cache.get(key);
        (found, READ_AT.take())
    }

    /// The entry of `key` as held, without the lock.
    fn view(&self, key: &str) -> SharedView {
        match self.lookup(key) {
            (
                Some(Timed {
                    slot: Slot::Entry { value, stale, lease },
                    ..
                }),
                read_at,
            ) => SharedView {
                value,
                stale,
                lease: lease.filter(|l| l.until > Instant::now()).map(|l| l.token),
                read_at,
            },
            _ => SharedView::default(),
        }
    }
}

fn entry(value: Option<Held>, stale: bool, lease: Option<Lease>, ttl: Option<Duration>) -> Op<Timed> {
    Op::Put(Timed::new(Slot::Entry { value, stale, lease }, ttl))
}

/// The bytes of a value held in a slot; a decoded value that cannot be
/// encoded again reads as absent.
fn bytes_of(held: Held) -> Option<Bytes> {
    match held {
        Held::Bytes(b) => Some(b),
        held => held.to_bytes(),
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn is_local(&self) -> bool {
        true
    }

    fn shares_decoded(&self) -> bool {
        true
    }

    fn supports_plain_values(&self) -> bool {
        true
    }

    fn peek_shared(&self, key: &str, decode: Decoder<'_>) -> Option<SharedView> {
        let mut view = self.view(key);
        if !view.stale {
            view.value = view.value.map(|held| self.decoded(key, held, decode));
        }
        Some(view)
    }

    fn adopt_decoded(&self, key: &str, bytes: &Bytes, decode: Decoder<'_>) {
        // What a first hit does (`decoded`): kept only if it encodes back
        // to these bytes, and only while the slot holds them.
        let _ = self.decoded(key, Held::Bytes(bytes.clone()), decode);
    }

    fn get_shared(&self, key: &str, decode: Decoder<'_>) -> Option<SharedView> {
        Some(match self.lookup(key) {
            (
                Some(Timed {
                    slot: Slot::Plain(held),
                    ..
                }),
                read_at,
            ) => SharedView {
                value: Some(self.decoded(key, held, decode)),
                read_at,
                ..SharedView::default()
            },
            _ => SharedView::default(),
        })
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        Ok(match self.cache.get(key) {
            Some(Timed {
                slot: Slot::Plain(held),
                ..
            }) => bytes_of(held),
            _ => None,
        })
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        // Under the key lock, not `insert`: see the module documentation.
        let timed = Timed::new(Slot::Plain(Held::Bytes(value)), Some(ttl));
        self.compute(key, |_| (Op::Put(timed), ()));
        Ok(())
    }

    async fn add(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<bool> {
        Ok(self.compute(key, |current| match current {
            Some(_) => (Op::Nop, false),
            None => (Op::Put(Timed::new(Slot::Plain(Held::Bytes(value)), Some(ttl))), true),
        }))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        // Under the key lock, not `invalidate`: see the module documentation.
        self.compute(key, |_| (Op::Remove, ()));
        // An invalidation revokes any lease: its waiters look again.
        self.wakes.wake(key);
        Ok(())
    }

    async fn incr(&self, key: &str, ttl: Duration) -> StoreResult<u64> {
        self.compute(key, |current| {
            let previous = match current {
                // A counter a raw namespace has read is held decoded: its
                // bytes are the same digits.
                Some(Slot::Plain(held)) => held
                    .to_bytes()
                    .and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse::<u64>().ok())),
                _ => Some(0),
            };
            match previous {
                Some(n) => {
                    let next = n.saturating_add(1);
                    let slot = Slot::Plain(Held::Bytes(Bytes::from(next.to_string())));
                    (Op::Put(Timed::new(slot, Some(ttl))), Ok(next))
                }
                None => (Op::Nop, Err(StoreError::server("value is not an integer"))),
            }
        })
    }

    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView> {
        let view = self.view(key);
        Ok(EntryView {
            value: view.value.and_then(bytes_of),
            stale: view.stale,
            lease: view.lease,
        })
    }

    async fn lookup_or_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<LeaseOutcome> {
        // The hit path reads without the key lock; only misses take it.
        if let Some((value, false)) = self.get_entry(key).await? {
            return Ok(LeaseOutcome::Hit(value));
        }
        let now = Instant::now();
        // Boxed in the arms that grant it only: a hit or a busy key allocates nothing.
        let granted = || Some(new_lease(token, crate::engine::deadline_from(now, lease_ttl)));
        Ok(self.compute(key, |current| match current {
            Some(Slot::Entry {
                value: Some(v),
                stale: false,
                ..
            }) => match v.to_bytes() {
                Some(bytes) => (Op::Nop, LeaseOutcome::Hit(bytes)),
                // Cannot be given back as bytes: as good as absent.
                None => (
                    entry(None, false, granted(), Some(lease_ttl)),
                    LeaseOutcome::Granted { token, stale: None },
                ),
            },
            Some(Slot::Entry {
                value,
                stale,
                lease: Some(lease),
            }) if lease.until > now => (
                Op::Nop,
                LeaseOutcome::Busy {
                    stale: value.filter(|_| stale).and_then(bytes_of),
                },
            ),
            Some(Slot::Entry {
                value: Some(v),
                stale: true,
                ..
            }) => {
                let stale = v.to_bytes();
                (
                    entry(Some(v), true, granted(), None),
                    LeaseOutcome::Granted { token, stale },
                )
            }
            _ => (
                entry(None, false, granted(), Some(lease_ttl)),
                LeaseOutcome::Granted { token, stale: None },
            ),
        }))
    }

    async fn lease_for_refresh(
        &self,
        key: &str,
        token: LeaseToken,
        lease_ttl: Duration,
    ) -> StoreResult<Option<LeaseToken>> {
        let now = Instant::now();
        Ok(self.compute(key, |current| match current {
            Some(Slot::Entry {
                value: Some(v),
                stale: false,
                lease,
            }) if lease.as_ref().is_none_or(|l| l.until <= now) => {
                // As the Redis script does: the entry must outlive its
                // lease, or the refresh's fill would find it gone.
                let slot = Slot::Entry {
                    value: Some(v),
                    stale: false,
                    lease: Some(new_lease(token, crate::engine::deadline_from(now, lease_ttl))),
                };
                let timed = Timed {
                    slot,
                    expire: Expire::KeepAtLeast(lease_ttl),
                };
                (Op::Put(timed), Some(token))
            }
            _ => (Op::Nop, None),
        }))
    }

    async fn fill(&self, key: &str, token: LeaseToken, value: Bytes, ttl: Duration) -> StoreResult<FillOutcome> {
        let outcome = self.compute(key, |current| match current {
            Some(Slot::Entry { lease: Some(lease), .. }) if lease.token == token => (
                entry(Some(Held::Bytes(value)), false, None, Some(ttl)),
                FillOutcome::Stored,
            ),
            _ => (Op::Nop, FillOutcome::Refused),
        });
        if outcome == FillOutcome::Stored {
            self.wakes.wake(key);
        }
        Ok(outcome)
    }

    fn watch_fill(&self, key: &str) -> Option<FillWatch> {
        Some(self.wakes.watch(key))
    }

    async fn release(&self, key: &str, token: LeaseToken) -> StoreResult<()> {
        self.compute(key, |current| match current {
            Some(Slot::Entry {
                value,
                stale,
                lease: Some(lease),
            }) if lease.token == token => match value {
                Some(v) => (entry(Some(v), stale, None, None), ()),
                None => (Op::Remove, ()),
            },
            _ => (Op::Nop, ()),
        });
        self.wakes.wake(key);
        Ok(())
    }

    async fn put_entry(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        // Under the key lock, not `insert`: see the module documentation.
        self.compute(key, |_| (entry(Some(Held::Bytes(value)), false, None, Some(ttl)), ()));
        self.wakes.wake(key);
        Ok(())
    }

    fn supports_versioned_writes(&self) -> bool {
        true
    }

    fn supports_fences(&self) -> bool {
        true
    }

    async fn take_fence(&self, key: &str, token: LeaseToken, ttl: Duration) -> StoreResult<bool> {
        let now = Instant::now();
        let fenced = self.compute(key, |current| match current {
            Some(Slot::Entry {
                lease: Some(lease),
                ..
            // Its own fence (a request resent after a lost reply) is taken again.
            }) if lease.token.is_fence() && lease.token != token && lease.until > now => (Op::Nop, false),
            _ => (
                entry(None, false, Some(new_lease(token, crate::engine::deadline_from(now, ttl))), Some(ttl)),
                true,
            ),
        });
        if fenced {
            // Readers waiting on a revoked lease look again, and wait on the fence.
            self.wakes.wake(key);
        }
        Ok(fenced)
    }

    async fn put_entry_if_newer(&self, put: VersionedPut) -> StoreResult<bool> {
        let VersionedPut {
            key,
            mark_key,
            value,
            version,
            ttl,
            mark_ttl,
        } = put;
        let written = self.compute(&key, |_| {
            let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            if marks.advance(&mark_key, version, mark_ttl) {
                (entry(Some(Held::Bytes(value)), false, None, Some(ttl)), true)
            } else {
                (Op::Nop, false)
            }
        });
        if written {
            self.wakes.wake(&key);
        }
        Ok(written)
    }

    async fn invalidate_if_newer(
        &self,
        key: &str,
        mark_key: &str,
        version: u64,
        mark_ttl: Duration,
    ) -> StoreResult<()> {
        self.compute(key, |_| {
            let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            marks.advance(mark_key, version, mark_ttl);
            (Op::Remove, ())
        });
        self.wakes.wake(key);
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
        });
        self.wakes.wake(key);
        Ok(())
    }

    async fn renew_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<bool> {
        let now = Instant::now();
        Ok(self.compute(key, |current| match current {
            Some(Slot::Entry {
                value,
                stale,
                lease: Some(lease),
            }) if lease.token == token && lease.until > now => {
                // A lease alone lives as long as the lease; a value keeps
                // its own TTL, stretched so that it outlives the lease.
                let slot = Slot::Entry {
                    value,
                    stale,
                    lease: Some(new_lease(token, crate::engine::deadline_from(now, lease_ttl))),
                };
                let renewed = Timed {
                    slot,
                    expire: Expire::KeepAtLeast(lease_ttl),
                };
                (Op::Put(renewed), true)
            }
            _ => (Op::Nop, false),
        }))
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::*;

    /// Every call that takes a duration, with `Duration::MAX` (a common
    /// way to say "no bound"): each bounds nothing and none panics.
    #[tokio::test]
    async fn durations_of_duration_max_bound_nothing_and_panic_nowhere() {
        let store = MemoryStore::new();
        let max = Duration::MAX;
        let v = || Bytes::from_static(b"v");
        store.set("plain", v(), max).await.unwrap();
        assert!(store.add("added", v(), max).await.unwrap());
        assert_eq!(store.incr("counter", max).await.unwrap(), 1);
        let token = LeaseToken::random();
        assert!(matches!(
            store.lookup_or_lease("e", token, max).await.unwrap(),
            LeaseOutcome::Granted { .. }
        ));
        assert!(store.renew_lease("e", token, max).await.unwrap());
        assert!(matches!(
            store.fill("e", token, v(), max).await.unwrap(),
            FillOutcome::Stored
        ));
        assert!(
            store
                .lease_for_refresh("e", LeaseToken::random(), max)
                .await
                .unwrap()
                .is_some()
        );
        store.put_entry("p", v(), max).await.unwrap();
        assert!(store.take_fence("f", LeaseToken::random(), max).await.unwrap());
        let put = VersionedPut {
            key: "w".into(),
            mark_key: "w#wv".into(),
            value: v(),
            version: 1,
            ttl: max,
            mark_ttl: max,
        };
        assert!(store.put_entry_if_newer(put).await.unwrap());
        store.invalidate("p", Some(max)).await.unwrap();
        assert_eq!(store.get("plain").await.unwrap(), Some(v()));
        assert_eq!(store.peek_entry("e").await.unwrap().value, Some(v()));
    }

    const TTL: Duration = Duration::from_secs(60);
    const ROUNDS: usize = 20_000;

    type Setup = fn(&MemoryStore, &str) -> LeaseToken;
    type Fenced = fn(&MemoryStore, &str, LeaseToken);
    type Write = fn(&MemoryStore, &str);

    /// Times `ROUNDS` races of `fenced` (a fill or a release under a lease)
    /// against `write`, on a fresh key each, on two OS threads let go by a
    /// barrier; one of them then spins for a delay that sweeps a few
    /// microseconds, so the write lands at every point of the fenced
    /// write's compute. Returns the rounds whose final entry is not what
    /// `write` promises once it has returned.
    fn race(setup: Setup, fenced: Fenced, write: Write, expect: fn(&EntryView) -> bool) -> usize {
        let store = MemoryStore::new();
        let start = Barrier::new(2);
        let done = Barrier::new(2);
        let tokens: Vec<LeaseToken> = (0..ROUNDS).map(|i| setup(&store, &format!("k{i}"))).collect();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for (i, token) in tokens.iter().enumerate() {
                    start.wait();
                    if i % 2 == 1 {
                        spin(i);
                    }
                    fenced(&store, &format!("k{i}"), *token);
                    done.wait();
                }
            });
            scope.spawn(|| {
                for i in 0..ROUNDS {
                    start.wait();
                    if i % 2 == 0 {
                        spin(i);
                    }
                    write(&store, &format!("k{i}"));
                    done.wait();
                }
            });
        });
        (0..ROUNDS)
            .filter(|i| !expect(&block_on(store.peek_entry(&format!("k{i}"))).unwrap()))
            .count()
    }

    fn spin(round: usize) {
        for _ in 0..(round / 2 % 200) * 20 {
            std::hint::spin_loop();
        }
    }

    /// Runs `f` on this thread's own current-thread runtime: each racer is
    /// an OS thread, so the barrier lets both go at the same instant.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        thread_local! {
            static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime");
        }
        RUNTIME.with(|rt| rt.block_on(f))
    }

    fn leased(store: &MemoryStore, key: &str) -> LeaseToken {
        match block_on(store.lookup_or_lease(key, LeaseToken::random(), TTL)).unwrap() {
            LeaseOutcome::Granted { token, .. } => token,
            other => panic!("{other:?}"),
        }
    }

    fn refresh_leased(store: &MemoryStore, key: &str) -> LeaseToken {
        block_on(store.put_entry(key, Bytes::from_static(b"old"), TTL)).unwrap();
        block_on(store.lease_for_refresh(key, LeaseToken::random(), TTL))
            .unwrap()
            .expect("refresh lease")
    }

    fn fill_old(store: &MemoryStore, key: &str, token: LeaseToken) {
        block_on(store.fill(key, token, Bytes::from_static(b"old"), TTL)).unwrap();
    }

    fn release(store: &MemoryStore, key: &str, token: LeaseToken) {
        block_on(store.release(key, token)).unwrap();
    }

    fn invalidate(store: &MemoryStore, key: &str) {
        block_on(store.invalidate(key, None)).unwrap();
    }

    fn delete(store: &MemoryStore, key: &str) {
        block_on(store.delete(key)).unwrap();
    }

    fn put_new(store: &MemoryStore, key: &str) {
        block_on(store.put_entry(key, Bytes::from_static(b"new"), TTL)).unwrap();
    }

    fn set_new(store: &MemoryStore, key: &str) {
        block_on(store.set(key, Bytes::from_static(b"new"), TTL)).unwrap();
    }

    fn empty(view: &EntryView) -> bool {
        view.value.is_none()
    }

    fn new_entry(view: &EntryView) -> bool {
        view.value.as_deref() == Some(&b"new"[..]) && !view.stale
    }

    /// The suspected item of issue 12: the Redis script extends an entry to
    /// outlive a refresh lease granted on it, the memory store did not, so
    /// a refresh of a value close to its expiry was refused once the value
    /// expired under the lease. (The wait is for the TTL itself, real time
    /// because value TTLs are moka's real clock.)
    #[tokio::test]
    async fn a_refresh_lease_keeps_its_entry_alive() {
        let store = MemoryStore::new();
        store
            .put_entry("k", Bytes::from_static(b"old"), Duration::from_millis(200))
            .await
            .unwrap();
        let token = store
            .lease_for_refresh("k", LeaseToken::random(), Duration::from_secs(30))
            .await
            .unwrap()
            .expect("refresh lease");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let seen = store.peek_entry("k").await.unwrap();
        assert_eq!(
            seen.value.as_deref(),
            Some(&b"old"[..]),
            "the entry expired under its lease"
        );
        assert_eq!(
            store.fill("k", token, Bytes::from_static(b"new"), TTL).await.unwrap(),
            FillOutcome::Stored
        );
        // Extending never shortens: a longer TTL than the lease stays.
        let timed = Timed {
            slot: Slot::Plain(Held::Bytes(Bytes::new())),
            expire: Expire::KeepAtLeast(Duration::from_secs(5)),
        };
        assert_eq!(timed.expiry(Some(Duration::from_secs(1))), Some(Duration::from_secs(5)));
        assert_eq!(timed.expiry(Some(Duration::from_secs(9))), Some(Duration::from_secs(9)));
        assert_eq!(timed.expiry(None), None);
    }

    /// Defect 3 of issue 12: `invalidate` (no stale copy), `delete`,
    /// `put_entry` and `set` did not wait for a fill or release running
    /// under moka's per-key compute, which then wrote the old value back
    /// after the write had returned (284 of 50,000 timed races).
    #[test]
    fn no_fenced_write_lands_after_a_write_returned() {
        let results = [
            ("fill vs invalidate", race(leased, fill_old, invalidate, empty)),
            ("fill vs delete", race(leased, fill_old, delete, empty)),
            ("fill vs put_entry", race(leased, fill_old, put_new, new_entry)),
            // A plain value is no entry: an entry there is a fill that landed after `set`.
            ("fill vs set", race(leased, fill_old, set_new, empty)),
            (
                "refresh release vs invalidate",
                race(refresh_leased, release, invalidate, empty),
            ),
        ];
        let lost: Vec<_> = results.iter().filter(|(_, bad)| *bad > 0).collect();
        assert!(
            lost.is_empty(),
            "writes undone by a racing fenced write (of {ROUNDS} each): {lost:?}"
        );
    }

    /// A decoded entry for the store's own tests: its bytes, kept to be
    /// given back, and a count of the decodes made.
    struct TestShared(Bytes);

    impl crate::store::SharedEntry for TestShared {
        fn encode(&self) -> Option<Bytes> {
            Some(self.0.clone())
        }
        fn encoded_len(&self) -> usize {
            self.0.len()
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    fn decoder(
        count: &std::sync::atomic::AtomicUsize,
    ) -> impl Fn(&Bytes) -> Option<Arc<dyn crate::store::SharedEntry>> + '_ {
        move |b: &Bytes| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some(Arc::new(TestShared(b.clone())) as Arc<dyn crate::store::SharedEntry>)
        }
    }

    fn is_decoded(view: &SharedView) -> bool {
        matches!(view.value, Some(Held::Decoded(_)))
    }

    /// Issue 17: the first hit swaps the bytes for the decoded entry; the
    /// next hits decode nothing. Fails if the swap is left out.
    #[tokio::test]
    async fn a_hit_decodes_once_then_keeps_the_decoded_entry() {
        let store = MemoryStore::new();
        let decodes = std::sync::atomic::AtomicUsize::new(0);
        store.put_entry("k", Bytes::from_static(b"v1"), TTL).await.unwrap();
        for _ in 0..5 {
            let view = store.peek_shared("k", &decoder(&decodes)).expect("local");
            assert!(is_decoded(&view));
        }
        assert_eq!(
            decodes.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "every hit decoded"
        );
        // Plain values (the `Delete` strategies) alike.
        store.set("p", Bytes::from_static(b"v1"), TTL).await.unwrap();
        for _ in 0..5 {
            let view = store.get_shared("p", &decoder(&decodes)).expect("local");
            assert!(is_decoded(&view));
        }
        assert_eq!(
            decodes.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "every plain hit decoded"
        );
        // A byte-level reader gets the bytes back.
        assert_eq!(store.get("p").await.unwrap().as_deref(), Some(&b"v1"[..]));
        assert_eq!(store.peek_entry("k").await.unwrap().value.as_deref(), Some(&b"v1"[..]));
    }

    /// Issue 17: `adopt_decoded` swaps only the very bytes the caller
    /// wrote, and only while the slot holds them: after a delete the key
    /// stays absent, after a newer write that write stays as it is (equal
    /// bytes in another buffer included), and on a leased entry the lease
    /// stays. Fails if the adoption swaps by key alone, or writes a slot
    /// it does not find.
    #[tokio::test]
    async fn an_adoption_takes_only_the_bytes_still_written() {
        let store = MemoryStore::new();
        let decodes = std::sync::atomic::AtomicUsize::new(0);
        let shared = |key: &str| store.get_shared(key, &|_| None).expect("local");
        let (a, b) = (Bytes::from(b"a".to_vec()), Bytes::from(b"b".to_vec()));

        store.set("gone", a.clone(), TTL).await.unwrap();
        store.delete("gone").await.unwrap();
        store.adopt_decoded("gone", &a, &decoder(&decodes));
        assert!(
            shared("gone").value.is_none(),
            "the adoption brought a deleted key back"
        );

        store.set("newer", a.clone(), TTL).await.unwrap();
        store.set("newer", b.clone(), TTL).await.unwrap();
        store.adopt_decoded("newer", &a, &decoder(&decodes));
        let view = shared("newer");
        assert!(
            matches!(&view.value, Some(Held::Bytes(held)) if held == &b),
            "the adoption replaced a newer write: {:?}",
            view.value.map(|v| v.to_bytes())
        );

        store.set("same", a.clone(), TTL).await.unwrap();
        // Equal bytes, another buffer: not what this caller wrote.
        store.adopt_decoded("same", &Bytes::from(b"a".to_vec()), &decoder(&decodes));
        assert!(!is_decoded(&shared("same")), "adopted bytes another write put there");
        store.adopt_decoded("same", &a, &decoder(&decodes));
        assert!(is_decoded(&shared("same")), "the written bytes were not adopted");

        store.put_entry("leased", a.clone(), TTL).await.unwrap();
        let token = store
            .lease_for_refresh("leased", LeaseToken::random(), Duration::from_secs(5))
            .await
            .unwrap()
            .expect("refresh lease");
        store.adopt_decoded("leased", &a, &decoder(&decodes));
        let view = store.peek_shared("leased", &|_| None).expect("local");
        assert!(is_decoded(&view), "the leased entry was not adopted");
        assert_eq!(view.lease, Some(token), "the adoption dropped the lease");
    }

    /// Issue 17: a lookup hands on the instant moka read the clock at to
    /// find the entry, so the hit reads no clock of its own: an instant of
    /// this lookup (within the call), on both reads, and none for a miss.
    /// Fails if the instant is not handed on.
    #[tokio::test]
    async fn a_lookup_hands_on_the_instant_it_read_the_clock_at() {
        let store = MemoryStore::new();
        let decodes = std::sync::atomic::AtomicUsize::new(0);
        store.put_entry("k", Bytes::from_static(b"v1"), TTL).await.unwrap();
        store.set("p", Bytes::from_static(b"v1"), TTL).await.unwrap();
        for _ in 0..3 {
            for plain in [false, true] {
                let before = std::time::Instant::now();
                let view = if plain {
                    store.get_shared("p", &decoder(&decodes))
                } else {
                    store.peek_shared("k", &decoder(&decodes))
                }
                .expect("local");
                let after = std::time::Instant::now();
                let read_at = view.read_at.expect("a hit tells when it read");
                assert!(
                    before <= read_at && read_at <= after,
                    "{before:?} {read_at:?} {after:?}"
                );
                let miss = if plain {
                    store.get_shared("absent", &decoder(&decodes))
                } else {
                    store.peek_shared("absent", &decoder(&decodes))
                };
                assert_eq!(miss.expect("local").read_at, None);
            }
        }
    }

    /// Issue 17: swapping bytes for their decoded form keeps the entry's
    /// lease, stale flag and state: a refresh lease taken before the first
    /// hit still fills, an invalidation still revokes it, and a stale copy
    /// still comes back as bytes.
    #[tokio::test]
    async fn a_decoded_slot_survives_a_lease_and_fill_cycle() {
        let store = MemoryStore::new();
        let decodes = std::sync::atomic::AtomicUsize::new(0);
        store.put_entry("k", Bytes::from_static(b"v1"), TTL).await.unwrap();
        let token = store
            .lease_for_refresh("k", LeaseToken::random(), TTL)
            .await
            .unwrap()
            .expect("refresh lease");
        let view = store.peek_shared("k", &decoder(&decodes)).unwrap();
        assert!(is_decoded(&view));
        assert_eq!(view.lease, Some(token), "the swap dropped the lease");
        assert_eq!(
            store.fill("k", token, Bytes::from_static(b"v2"), TTL).await.unwrap(),
            FillOutcome::Stored
        );
        assert_eq!(store.peek_entry("k").await.unwrap().value.as_deref(), Some(&b"v2"[..]));
        // Decoded again, then invalidated with a stale copy: a new lease is
        // granted and the stale value offered as bytes.
        assert!(is_decoded(&store.peek_shared("k", &decoder(&decodes)).unwrap()));
        store.invalidate("k", Some(TTL)).await.unwrap();
        let view = store.peek_shared("k", &decoder(&decodes)).unwrap();
        assert!(view.stale);
        match store.lookup_or_lease("k", LeaseToken::random(), TTL).await.unwrap() {
            LeaseOutcome::Granted { token, stale } => {
                assert_eq!(stale.as_deref(), Some(&b"v2"[..]));
                // A lease granted on a decoded stale slot still fills.
                assert_eq!(
                    store.fill("k", token, Bytes::from_static(b"v3"), TTL).await.unwrap(),
                    FillOutcome::Stored
                );
            }
            other => panic!("{other:?}"),
        }
        // A refresh lease on a decoded value, revoked by an invalidation:
        // its fill is refused.
        assert!(is_decoded(&store.peek_shared("k", &decoder(&decodes)).unwrap()));
        let token = store
            .lease_for_refresh("k", LeaseToken::random(), TTL)
            .await
            .unwrap()
            .expect("refresh lease");
        store.invalidate("k", None).await.unwrap();
        assert_eq!(
            store.fill("k", token, Bytes::from_static(b"old"), TTL).await.unwrap(),
            FillOutcome::Refused
        );
        assert!(store.peek_entry("k").await.unwrap().value.is_none());
    }

    /// Bytes that do not decode stay bytes, and a swap never lands over a
    /// value written since the bytes were read.
    #[tokio::test]
    async fn undecodable_bytes_stay_bytes_and_a_late_swap_is_dropped() {
        let store = MemoryStore::new();
        store.put_entry("k", Bytes::from_static(b"v1"), TTL).await.unwrap();
        let view = store.peek_shared("k", &|_: &Bytes| None).unwrap();
        assert!(matches!(view.value, Some(Held::Bytes(_))));
        let Some(Held::Bytes(old)) = view.value else {
            unreachable!()
        };
        store.put_entry("k", Bytes::from_static(b"v2"), TTL).await.unwrap();
        store.keep_decoded("k", &old, Held::Decoded(Arc::new(TestShared(old.clone()))));
        assert_eq!(store.peek_entry("k").await.unwrap().value.as_deref(), Some(&b"v2"[..]));
    }
}
