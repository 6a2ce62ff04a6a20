//! The [`Store`] trait: what a cache backend must do, and the lease state machine.
//!
//! Owns the contract every backend implements and the types it speaks in.
//! It knows nothing of codecs, envelopes or policies: a store moves bytes.
//!
//! Two families of operations live here:
//!
//! - **Plain** operations (`get`, `set`, `delete`, `incr`) on plain values,
//!   used by the `Delete`, `DoubleDelete` and `Versioned` strategies and by
//!   the raw mode that shares keys with other programs.
//! - **Entry** operations (`lookup_or_lease`, `fill`, `put_entry`,
//!   `invalidate`, `get_entry`) on leased entries, used by the `Lease`
//!   strategy. An entry is one store key holding the value, an optional
//!   lease, and a stale flag, so one atomic step (a Lua script, a key lock)
//!   covers all of them and Redis Cluster never sees two slots.
//!
//! The lease state machine of an entry, which every store implements:
//!
//! | state       | lookup_or_lease           | fill(token)                     | invalidate            |
//! |-------------|---------------------------|---------------------------------|-----------------------|
//! | Empty       | grant t: Leased(t)        | refused                         | Empty                 |
//! | Value(v)    | hit v                     | refused                         | Empty, or Stale(v)    |
//! | Leased(t)   | busy                      | token == t: Value(new), else refused | Empty / Stale   |
//! | Stale(v)    | grant t: Stale(v)+Leased(t), then busy (stale v offered) | as Leased | Stale(v), lease revoked |
//!
//! A lease runs out after its TTL (a crashed loader cannot block a key); an
//! expired lease is replaced by the next lookup. Safety: a fill with token t
//! is applied only if no invalidation happened since t was granted, because
//! every invalidation removes t.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(feature = "memcached")]
pub mod memcached;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod wake;

pub use wake::{FillWakes, FillWatch};

/// An error from a store. The engine counts it and treats it as a miss on
/// reads; it is only ever returned to callers from writes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The server could not be reached, the connection broke, or the server
    /// cannot serve any key now (Redis `LOADING`, `READONLY`, cluster down):
    /// a failure of the store as a whole, which feeds the circuit breaker.
    #[error("connection: {0}")]
    Connection(String),
    /// The server answered with an error or something unexpected about this
    /// request (Redis `WRONGTYPE`, a non-numeric counter): a per-key miss,
    /// not a sick store.
    #[error("server: {0}")]
    Server(String),
    /// The store refused the operation (value too large, key invalid for it).
    #[error("refused: {0}")]
    Refused(String),
}

impl StoreError {
    /// True for an error about one key or one request ([`StoreError::Server`],
    /// [`StoreError::Refused`]), which says nothing about the store's
    /// health: the engine treats it as a miss of that key and does not feed
    /// the circuit breaker with it. Connection errors (and timeouts) do.
    pub fn is_per_key(&self) -> bool {
        matches!(self, StoreError::Server(_) | StoreError::Refused(_))
    }
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A unique lease token. The engine offers a random one; a store either
/// grants that one (memory, Redis) or mints its own (memcached derives it
/// from the item's CAS) and returns it, so tokens from different processes
/// never collide in practice. The engine always fills with the returned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub u64);

impl LeaseToken {
    /// A fresh random token.
    pub fn random() -> Self {
        LeaseToken(rand::random::<u64>() | 1)
    }
}

/// An entry as [`Store::peek_entry`] sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryView {
    /// The value, current or stale.
    pub value: Option<Bytes>,
    /// True when an invalidation marked the value stale.
    pub stale: bool,
    /// The lease held on the entry, if any. The engine compares it with the
    /// lease its own in-process load holds: when they differ, that load was
    /// revoked and new readers must not wait for it.
    pub lease: Option<LeaseToken>,
}

/// What [`Store::lookup_or_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseOutcome {
    /// A current value.
    Hit(Bytes),
    /// No current value, and this caller now holds the lease: it should load
    /// and [`Store::fill`] with the token. `stale` is the invalidated value,
    /// if the namespace keeps one.
    Granted {
        /// The token to fill with.
        token: LeaseToken,
        /// The previous value, marked stale by an invalidation.
        stale: Option<Bytes>,
    },
    /// Another caller holds the lease and is loading. `stale` as above.
    Busy {
        /// The previous value, marked stale by an invalidation.
        stale: Option<Bytes>,
    },
}

/// One fill of [`Store::fill_many`].
#[derive(Debug, Clone)]
pub struct Fill {
    /// The entry's key.
    pub key: String,
    /// The lease the value was loaded under.
    pub token: LeaseToken,
    /// The encoded value.
    pub value: Bytes,
    /// Its TTL.
    pub ttl: Duration,
}

/// What [`Store::fill`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FillOutcome {
    /// The value was written.
    Stored,
    /// The lease was revoked or replaced; nothing was written.
    Refused,
}

/// A cache backend.
///
/// Every method must be cancel-safe in the sense that dropping its future
/// leaves the store in one of the states of the table above, and must never
/// panic on data read from the network.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for metrics and messages, such as `"redis"`.
    fn name(&self) -> &'static str;

    /// True for a store in this process, which can neither hang nor fail
    /// over a network: the engine then skips the breaker and the timeout.
    fn is_local(&self) -> bool {
        false
    }

    /// Reads a plain value.
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>>;

    /// Writes a plain value with a TTL.
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()>;

    /// Writes a plain value only if the key is absent (`SET NX`); true if written.
    async fn add(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<bool>;

    /// Deletes a key of either family.
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// Increments a counter (created at 0), refreshing its TTL; returns the new value.
    async fn incr(&self, key: &str, ttl: Duration) -> StoreResult<u64>;

    /// Reads an entry without taking a lease: its value, stale flag and lease.
    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView>;

    /// Reads an entry's value without taking a lease: `(value, stale)`.
    async fn get_entry(&self, key: &str) -> StoreResult<Option<(Bytes, bool)>> {
        let view = self.peek_entry(key).await?;
        Ok(view.value.map(|v| (v, view.stale)))
    }

    /// Looks an entry up and, when it has no current value and no live
    /// lease, grants `token` for `lease_ttl`, atomically.
    async fn lookup_or_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<LeaseOutcome>;

    /// Grants a lease on an entry that still holds a current value and no
    /// live lease (Value(v) -> Value(v)+Leased(t)), for a caller that refreshes
    /// before expiry. Returns the token to fill with when granted: `token`
    /// itself, or one the store minted (memcached's tokens are CAS values),
    /// exactly as [`LeaseOutcome::Granted`] does. The value stays readable meanwhile.
    async fn lease_for_refresh(
        &self,
        key: &str,
        token: LeaseToken,
        lease_ttl: Duration,
    ) -> StoreResult<Option<LeaseToken>>;

    /// Writes `value` only if `token` is still the entry's lease.
    async fn fill(&self, key: &str, token: LeaseToken, value: Bytes, ttl: Duration) -> StoreResult<FillOutcome>;

    /// Extends the lease `token` holds on `key` to `lease_ttl` from now, if
    /// it still holds it; true when extended. The engine renews a lease
    /// while a slow loader runs, so that a refused fill always means an
    /// invalidation revoked the lease, never that it ran out.
    ///
    /// The default extends nothing and returns false: a store without
    /// renewal bounds every load's lease by its TTL.
    async fn renew_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<bool> {
        let _ = (key, token, lease_ttl);
        Ok(false)
    }

    /// A watch that is woken when the lease on `key` ends (a fill, a
    /// release, a write that revokes it), for a reader that is about to look
    /// `key` up and may find it busy: it waits on the watch instead of
    /// polling. Take it before the lookup (see [`FillWatch`]).
    ///
    /// The default is `None`: the store cannot notify, and busy readers poll
    /// it with backoff.
    fn watch_fill(&self, key: &str) -> Option<FillWatch> {
        let _ = key;
        None
    }

    /// Gives a lease back without filling (the loader failed or found
    /// nothing), if `token` still holds it; a stale value stays.
    async fn release(&self, key: &str, token: LeaseToken) -> StoreResult<()>;

    /// Writes an entry unconditionally, revoking any lease in flight.
    async fn put_entry(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()>;

    /// Removes an entry's value and revokes its lease. With `keep_stale`,
    /// the old value stays for that long, flagged stale.
    async fn invalidate(&self, key: &str, keep_stale: Option<Duration>) -> StoreResult<()>;

    /// Checks that the store answers.
    async fn ping(&self) -> StoreResult<()>;

    /// [`Store::get`] for many keys, in one round trip where the store can.
    /// The default runs them one by one.
    async fn get_many(&self, keys: &[String]) -> StoreResult<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// [`Store::peek_entry`] for many keys, in one round trip where the store can.
    async fn peek_many(&self, keys: &[String]) -> StoreResult<Vec<EntryView>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.peek_entry(key).await?);
        }
        Ok(out)
    }

    /// [`Store::lookup_or_lease`] for many keys (one token each), in one
    /// round trip where the store can. Each key is still atomic on its own.
    async fn lookup_or_lease_many(
        &self,
        keys: &[(String, LeaseToken)],
        lease_ttl: Duration,
    ) -> StoreResult<Vec<LeaseOutcome>> {
        let mut out = Vec::with_capacity(keys.len());
        for (key, token) in keys {
            out.push(self.lookup_or_lease(key, *token, lease_ttl).await?);
        }
        Ok(out)
    }

    /// [`Store::fill`] for many entries, in one round trip where the store can.
    async fn fill_many(&self, fills: Vec<Fill>) -> StoreResult<Vec<FillOutcome>> {
        let mut out = Vec::with_capacity(fills.len());
        for fill in fills {
            out.push(self.fill(&fill.key, fill.token, fill.value, fill.ttl).await?);
        }
        Ok(out)
    }

    /// [`Store::set`] for many keys, in one round trip where the store can.
    async fn set_many(&self, items: Vec<(String, Bytes, Duration)>) -> StoreResult<()> {
        for (key, value, ttl) in items {
            self.set(&key, value, ttl).await?;
        }
        Ok(())
    }
}
