//! The [`Store`] trait: what a cache backend must do, and the lease state machine.
//!
//! Owns the contract every backend implements and the types it speaks in.
//! It knows nothing of codecs, envelopes or policies: a store moves bytes.
//!
//! Two families of operations live here:
//!
//! - **Entry** operations (`peek_entry`, `lookup_or_lease`,
//!   `lease_for_refresh`, `fill`, `release`, `put_entry`, `invalidate`,
//!   `delete`) on leased entries, used by the `Lease` strategy (the
//!   default). An entry is one store key holding the value, an optional
//!   lease, and a stale flag, so one atomic step (a Lua script, a key lock)
//!   covers all of them and Redis Cluster never sees two slots. These,
//!   with `name`, are the methods a store must implement.
//! - **Plain** operations (`get`, `set`, `add`, `incr`) on plain values,
//!   used by the `Delete`, `DoubleDelete` and `Versioned` strategies, the
//!   raw mode that shares keys with other programs. They are provided methods that fail with
//!   [`StoreError::Unsupported`]; a store that implements them says so with
//!   [`Store::supports_plain_values`], and a namespace that needs them is
//!   refused at build time on a store that does not.
//!
//! Everything else (`ping`, the `*_many` batch forms, `renew_lease`,
//! `get_entry`, `is_local`) has a default built on the methods above; a
//! store overrides it to save round trips. `aside_testkit::store_contract`
//! checks a store against all of it.
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

tokio::task_local! {
    /// The deadline by which the caller of a store operation gives up on
    /// it (the engine's operation timeout), set for the operation's future.
    static CALLER_DEADLINE: tokio::time::Instant;
}

/// Runs store operation `operation` under its caller's `deadline`: a
/// store that bounds its own requests (`Reconnecting`) arms no timer of its
/// own when the caller's would fire first, so an engine's call costs one
/// timer rather than two (issue 17: a tokio timer is a lock, an insert in
/// the wheel and a removal).
pub(crate) fn under_deadline<F: std::future::Future>(
    deadline: tokio::time::Instant,
    operation: F,
) -> impl std::future::Future<Output = F::Output> {
    CALLER_DEADLINE.scope(deadline, operation)
}

/// The deadline of the store operation being polled, when its caller set one.
#[cfg(feature = "redis")]
pub(crate) fn caller_deadline() -> Option<tokio::time::Instant> {
    CALLER_DEADLINE.try_with(|deadline| *deadline).ok()
}

#[cfg(feature = "memcached")]
pub mod memcached;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod wake;

pub use wake::{FillWakes, FillWatch};

/// The error a store's client returned, kept as the source of a
/// [`StoreError`] (any `std::error::Error + Send + Sync`, or a message).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a store. The engine counts it and treats it as a miss on
/// reads; it is only ever returned to callers from writes, as the source of
/// an [`Error`](crate::Error) of kind [`Store`](crate::ErrorKind::Store)
/// (`?` converts one into the other).
///
/// The kind says what the engine does with it ([`StoreError::is_per_key`]);
/// the message says what failed, in words (a URL in it has its password
/// masked); the source is the client's own error, for
/// [`std::error::Error::source`] chains and `Debug` output.
///
/// Build one with [`StoreError::connection`], [`StoreError::server`] or
/// [`StoreError::refused`], and attach the client's error with
/// [`StoreError::with_source`]:
///
/// ```
/// use aside::store::StoreError;
///
/// let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// let e = StoreError::connection("cannot reach the cache").with_source(io);
/// assert!(!e.is_per_key());
/// assert_eq!(e.to_string(), "connection: cannot reach the cache");
/// assert!(std::error::Error::source(&e).is_some());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The server could not be reached, the connection broke, or the server
    /// cannot serve any key now (Redis `LOADING`, `READONLY`, cluster down):
    /// a failure of the store as a whole, which feeds the circuit breaker.
    #[error("connection: {message}")]
    #[non_exhaustive]
    Connection {
        /// What failed.
        message: String,
        /// The client's error, if there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The server answered with an error or something unexpected about this
    /// request (Redis `WRONGTYPE`, a non-numeric counter): a per-key miss,
    /// not a sick store.
    #[error("server: {message}")]
    #[non_exhaustive]
    Server {
        /// What the server answered, or what was unexpected about it.
        message: String,
        /// The client's error, if there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The store refused the operation (value too large, key invalid for it).
    #[error("refused: {message}")]
    #[non_exhaustive]
    Refused {
        /// Why.
        message: String,
        /// The client's error, if there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The store does not implement this operation: the default of the
    /// [`Store`] methods that are not part of the lease state machine
    /// (see [`Store::supports_plain_values`]). Says nothing about the
    /// store's health.
    #[error("unsupported: the store does not implement {operation}")]
    #[non_exhaustive]
    Unsupported {
        /// The [`Store`] method, such as `"get"`.
        operation: &'static str,
    },
}

impl StoreError {
    /// A [`StoreError::Connection`] with no source yet.
    pub fn connection(message: impl Into<String>) -> Self {
        StoreError::Connection {
            message: message.into(),
            source: None,
        }
    }

    /// A [`StoreError::Server`] with no source yet.
    pub fn server(message: impl Into<String>) -> Self {
        StoreError::Server {
            message: message.into(),
            source: None,
        }
    }

    /// A [`StoreError::Refused`] with no source yet.
    pub fn refused(message: impl Into<String>) -> Self {
        StoreError::Refused {
            message: message.into(),
            source: None,
        }
    }

    /// A [`StoreError::Unsupported`] for the [`Store`] method `operation`.
    pub fn unsupported(operation: &'static str) -> Self {
        StoreError::Unsupported { operation }
    }

    /// The same error, caused by `source` (the client's own error). No
    /// effect on [`StoreError::Unsupported`], which has no cause.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        match &mut self {
            StoreError::Connection { source: slot, .. }
            | StoreError::Server { source: slot, .. }
            | StoreError::Refused { source: slot, .. } => *slot = Some(source.into()),
            StoreError::Unsupported { .. } => {}
        }
        self
    }

    /// True for an error about one key or one request ([`StoreError::Server`],
    /// [`StoreError::Refused`], [`StoreError::Unsupported`]), which says
    /// nothing about the store's health: the engine treats it as a miss of
    /// that key and does not feed the circuit breaker with it. Connection
    /// errors (and timeouts) do.
    pub fn is_per_key(&self) -> bool {
        !matches!(self, StoreError::Connection { .. })
    }

    /// True for a [`StoreError::Server`]: the server answered, but not as
    /// the request expected, which is what a key of the wrong type or
    /// layout produces (the engine deletes such a key so that it refills).
    pub fn is_server(&self) -> bool {
        matches!(self, StoreError::Server { .. })
    }
}

/// `url` with the password of its user-info part, if any, replaced by
/// `***` (`redis://user:***@host/`; a user-info with no `:` is masked
/// whole, since some clients read it as the password), and secret query
/// parameters masked too, for messages and reports. A string that does not
/// parse as a URL keeps only its scheme.
pub fn masked_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        // Not a URL the parser agrees on (an unescaped `/` or `#` in a
        // password, say): any part of it may be the secret.
        return raw
            .split_once("://")
            .map_or_else(|| raw.to_owned(), |(scheme, _)| format!("{scheme}://***"));
    };
    // An `@` the parser did not take as the end of a user-info part means
    // the authority ended early (at a `/`, `?` or `#` inside a password or
    // token): the secret is now in the path or the query.
    let rest = raw.split_once("://").map_or("", |(_, rest)| rest);
    let before_query = rest.split(['?', '#']).next().unwrap_or_default();
    let at_outside_a_pair = url
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair.contains('@') && !pair.contains('=')));
    if url.username().is_empty() && url.password().is_none() && (before_query.contains('@') || at_outside_a_pair) {
        return format!("{}://***", url.scheme());
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    } else if !url.username().is_empty() {
        // `redis://SECRET@host`: redis-rs takes a lone user part as the password.
        let _ = url.set_username("***");
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let lower = name.to_ascii_lowercase();
                let secret = ["pass", "pwd", "secret", "token"]
                    .iter()
                    .any(|word| lower.contains(word));
                (
                    name.into_owned(),
                    if secret { "***".to_owned() } else { value.into_owned() },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A unique lease token. The engine offers a random one; a store either
/// grants that one (memory, Redis) or mints its own (memcached derives it
/// from the item's CAS) and returns it, so tokens from different processes
/// never collide in practice. The engine always fills with the returned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub u64);

/// The bit that marks a lease as a linearizable update's fence.
const FENCE_BIT: u64 = 1 << 63;

impl LeaseToken {
    /// A fresh random token for a reader's lease (its top bit clear).
    pub fn random() -> Self {
        LeaseToken((rand::random::<u64>() & !FENCE_BIT) | 1)
    }

    /// A fresh random token for an update's fence ([`Store::take_fence`]):
    /// its top bit set, so a store tells it from a reader's lease.
    pub fn fence() -> Self {
        LeaseToken(rand::random::<u64>() | FENCE_BIT | 1)
    }

    /// True for a token made by [`LeaseToken::fence`].
    pub fn is_fence(self) -> bool {
        self.0 & FENCE_BIT != 0
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

impl EntryView {
    /// What a store found under an entry's key: its value (current, or
    /// stale when `stale`), and the lease held on it. `EntryView::default()`
    /// is an empty entry.
    pub fn new(value: Option<Bytes>, stale: bool, lease: Option<LeaseToken>) -> Self {
        EntryView { value, stale, lease }
    }
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

/// A versioned write of an entry: [`Store::put_entry_if_newer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VersionedPut {
    /// The entry.
    pub key: String,
    /// Where the highest version written to the entry is kept.
    pub mark_key: String,
    /// The encoded entry.
    pub value: Bytes,
    /// The row's version: written only if above the mark.
    pub version: u64,
    /// The entry's TTL.
    pub ttl: Duration,
    /// The mark's TTL: longer than any entry lives.
    pub mark_ttl: Duration,
}

/// A decoded entry that a store in this process keeps in place of its
/// envelope bytes ([`Store::peek_shared`]), so that a hit hands out the
/// decoded value instead of decoding the same bytes again.
///
/// The engine implements it for its decoded entry plus the codec that
/// wrote it; the store never looks inside. It stays able to give the bytes
/// back ([`SharedEntry::encode`]) for every reader that speaks bytes: a
/// namespace of another value type sharing the key, `peek_entry`,
/// `get_entry`, the batch reads, the CLI. A slot holds the bytes or this,
/// never both for long: keeping both cost 2.14 times raw moka's memory per
/// entry (issue 17).
pub trait SharedEntry: std::any::Any + Send + Sync {
    /// The envelope bytes this entry stands for, as the engine encodes
    /// them on a fill (the same header, the codec's bytes of the same
    /// value); `None` if the codec cannot encode the value again, which a
    /// byte-level reader sees as an absent value.
    fn encode(&self) -> Option<Bytes>;

    /// The length of the bytes it was decoded from (or encoded to), known
    /// without encoding: what the store weighs it as.
    fn encoded_len(&self) -> usize;

    /// Itself, for the engine to downcast to its own type
    /// (`as_any().downcast_ref`); another namespace's type does not match,
    /// and that reader decodes [`SharedEntry::encode`]'s bytes instead.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// What a slot of a store in this process holds: the envelope bytes, or
/// the entry decoded from them ([`SharedEntry`]).
#[derive(Clone)]
#[non_exhaustive]
pub enum Held {
    /// Envelope bytes, as a store over the network holds them.
    Bytes(Bytes),
    /// The decoded entry, shared by every reader.
    Decoded(std::sync::Arc<dyn SharedEntry>),
}

impl Held {
    /// The envelope bytes: the slot's own, or the decoded entry's,
    /// encoded again (`None` if its codec fails).
    pub fn to_bytes(&self) -> Option<Bytes> {
        match self {
            Held::Bytes(b) => Some(b.clone()),
            Held::Decoded(d) => d.encode(),
        }
    }

    /// The length of the envelope bytes (see [`SharedEntry::encoded_len`]).
    pub fn encoded_len(&self) -> usize {
        match self {
            Held::Bytes(b) => b.len(),
            Held::Decoded(d) => d.encoded_len(),
        }
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Bytes(b) => f.debug_tuple("Bytes").field(b).finish(),
            Held::Decoded(d) => f.debug_tuple("Decoded").field(&d.encoded_len()).finish(),
        }
    }
}

/// The decoder a [`Store::peek_shared`] caller hands the store: decodes
/// envelope bytes into the caller's [`SharedEntry`], or `None` when they do
/// not decode (the store then returns the bytes, for the caller to count
/// and delete as it does any undecodable entry).
pub type Decoder<'a> = &'a dyn Fn(&Bytes) -> Option<std::sync::Arc<dyn SharedEntry>>;

/// An entry as [`Store::peek_shared`] sees it: [`EntryView`], with the
/// value as the store holds it.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SharedView {
    /// The value, current or stale.
    pub value: Option<Held>,
    /// True when an invalidation marked the value stale.
    pub stale: bool,
    /// The live lease held on the entry, if any.
    pub lease: Option<LeaseToken>,
    /// When the store's lookup read the monotonic clock, if it did: a hit
    /// judges the value's freshness at that instant instead of reading the
    /// clock a second time (a read is some 60 ns on a virtual machine, a
    /// fifth of an in-process hit). `None`: the caller reads the clock.
    pub read_at: Option<std::time::Instant>,
}

/// A cache backend.
///
/// A store implements [`Store::name`] and the lease state machine:
/// [`Store::peek_entry`], [`Store::lookup_or_lease`],
/// [`Store::lease_for_refresh`], [`Store::fill`], [`Store::release`],
/// [`Store::put_entry`], [`Store::invalidate`] and [`Store::delete`]. That
/// is enough for [`Strategy::Lease`](crate::Strategy::Lease), the default;
/// the plain-value methods, for the other strategies, are opt-in
/// ([`Store::supports_plain_values`]), and the rest have defaults.
/// `aside_testkit::store_contract` checks an implementation.
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

    /// True for a store that answers [`Store::peek_shared`] and
    /// [`Store::get_shared`] (it keeps decoded values in this process): a
    /// read then first tries a synchronous hit through them, before it
    /// makes the key's `String` or a future. The default is false, so a
    /// store over the network is not asked twice per read.
    ///
    /// A store that returns true must answer `Some` from both for every
    /// key, at all times: a batch read takes a `None` for a key after the
    /// first as that key's miss. Those calls are synchronous, so neither
    /// the timeout nor the breaker bounds them: they must not block.
    ///
    /// Separate from [`Store::is_local`], which also switches the timeout
    /// and the breaker off for the async calls: the test kit's fault layer
    /// (`FaultStore::with_shared_reads`) keeps those on over a
    /// `MemoryStore`, whose injected hangs need the timeout, while its
    /// reads take this path, so the history checker covers it.
    fn shares_decoded(&self) -> bool {
        false
    }

    /// True when the store implements the plain-value operations
    /// ([`Store::get`], [`Store::set`], [`Store::add`], [`Store::incr`]),
    /// which the `Delete`, `DoubleDelete` and `Versioned` strategies and raw
    /// namespaces need. The default is
    /// false, and those methods then fail with [`StoreError::Unsupported`];
    /// a namespace that would call them is refused at
    /// [`NamespaceBuilder::build`](crate::NamespaceBuilder::build) with an
    /// error naming the store. A store that implements them returns true.
    fn supports_plain_values(&self) -> bool {
        false
    }

    /// Reads a plain value. Default: [`StoreError::Unsupported`].
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let _ = key;
        Err(StoreError::unsupported("get"))
    }

    /// Writes a plain value with a TTL. Default: [`StoreError::Unsupported`].
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        let _ = (key, value, ttl);
        Err(StoreError::unsupported("set"))
    }

    /// Writes a plain value only if the key is absent (`SET NX`); true if
    /// written. Default: [`StoreError::Unsupported`].
    async fn add(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<bool> {
        let _ = (key, value, ttl);
        Err(StoreError::unsupported("add"))
    }

    /// Deletes a key of either family.
    async fn delete(&self, key: &str) -> StoreResult<()>;

    /// Increments a counter (created at 0), refreshing its TTL; returns the
    /// new value. Default: [`StoreError::Unsupported`].
    async fn incr(&self, key: &str, ttl: Duration) -> StoreResult<u64> {
        let _ = (key, ttl);
        Err(StoreError::unsupported("incr"))
    }

    /// Reads an entry without taking a lease: its value, stale flag and lease.
    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView>;

    /// Reads an entry's current value, if it has one, without taking a
    /// lease: `None` for no entry, a lease alone, or only a stale copy.
    /// The read path's first look (a hit needs nothing else); a store
    /// whose full [`Store::peek_entry`] costs more than a plain read of the
    /// value overrides it (Redis: one `HGET` instead of an `HMGET`).
    async fn peek_fresh(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let view = self.peek_entry(key).await?;
        Ok(view.value.filter(|_| !view.stale))
    }

    /// [`Store::peek_entry`] for a store in this process that keeps
    /// decoded entries: the value as held ([`Held`]), synchronously, with
    /// no future to box and poll. A current value still held as bytes is
    /// decoded with `decode` and, if that succeeds, kept decoded from then
    /// on in place of the bytes (under the key's lock, only if the slot
    /// still holds those bytes: the lease state machine never sees it), so
    /// later hits do not decode. Stale values stay as they are.
    ///
    /// The default is `None`: the store moves bytes (Redis, memcached), and
    /// the engine reads it with [`Store::peek_entry`]. A store that ever
    /// answers `Some` must answer `Some` for every key: a batch read asks
    /// its first key, then takes a `None` for a later key as that key's
    /// miss (the same holds for [`Store::get_shared`]).
    fn peek_shared(&self, key: &str, decode: Decoder<'_>) -> Option<SharedView> {
        let _ = (key, decode);
        None
    }

    /// [`Store::get`] as [`Store::peek_shared`] is to
    /// [`Store::peek_entry`]: a view with no value is a miss (a plain value
    /// is never stale nor leased), `None` that the store does not keep
    /// decoded values (the default).
    fn get_shared(&self, key: &str, decode: Decoder<'_>) -> Option<SharedView> {
        let _ = (key, decode);
        None
    }

    /// Offers the decoded form of `bytes`, which this process has just
    /// written to `key` (a fill or a `set` the store acknowledged), to a
    /// store that keeps decoded values ([`Store::shares_decoded`]): it may
    /// keep it in their place as it would at the key's first hit, under
    /// the same conditions (the slot still holds those very bytes, and the
    /// decoded value encodes back to them). The default does nothing.
    ///
    /// The engine calls it after the write of a single-key load (a lease's
    /// fill, and the `set` of the other strategies, refreshes included),
    /// not after batch writes or a caller's own `set`: those values are
    /// decoded at their first hit.
    fn adopt_decoded(&self, key: &str, bytes: &Bytes, decode: Decoder<'_>) {
        let _ = (key, bytes, decode);
    }

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

    /// True when the store implements [`Store::take_fence`]. Without it,
    /// [`Namespace::update`](crate::Namespace::update) is refused
    /// (a configuration error). Default: false.
    fn supports_fences(&self) -> bool {
        false
    }

    /// Fences `key` for a linearizable update, atomically: unless another
    /// update's live fence holds it (a lease whose token
    /// [`LeaseToken::is_fence`], other than `token`: a request resent after
    /// its reply was lost must find its own fence taken, not refused), removes the entry (its value, stale copy
    /// and any reader's lease, which is revoked: its fill will be refused,
    /// its waiters are woken) and leases it to `token` for `ttl`. Returns
    /// false, changing nothing, when another fence holds it. The fence is a
    /// lease like any other: renewed by [`Store::renew_lease`], ended by
    /// [`Store::fill`], [`Store::release`] or [`Store::invalidate`].
    ///
    /// Default: [`StoreError::Unsupported`].
    async fn take_fence(&self, key: &str, token: LeaseToken, ttl: Duration) -> StoreResult<bool> {
        let _ = (key, token, ttl);
        Err(StoreError::unsupported("take_fence"))
    }

    /// True when the store implements [`Store::put_entry_if_newer`]
    /// atomically. Without it, a versioned write-through
    /// ([`Namespace::write_through`](crate::Namespace::write_through))
    /// invalidates instead. Default: false.
    fn supports_versioned_writes(&self) -> bool {
        false
    }

    /// Writes an entry as [`Store::put_entry`] does (revoking any lease in
    /// flight, waking its waiters), but only if `put.version` is above every
    /// version written to `put.key` this way before; returns whether it wrote.
    ///
    /// The highest version is kept under `put.mark_key` for `put.mark_ttl`, which
    /// the caller makes longer than any entry lives, so an invalidation,
    /// expiry or eviction of the entry does not forget it: a writer that
    /// arrives late with an older version is refused even when the entry is
    /// gone. The comparison and both writes are one atomic step (a script on
    /// Redis, the key's lock in memory). `mark_key` is in `key`'s Redis
    /// Cluster slot ([`crate::key::write_mark_key`]).
    ///
    /// A store that cannot make it one step (memcached: a protocol of
    /// CAS-guarded steps, `store::memcached::versioned`) must still never
    /// return `false` while the entry holds a row older than `put.version`:
    /// the newer writer may have raised the mark and not yet written its
    /// entry. memcached deletes the entry before it reports a refusal
    /// (readers then load; at worst a newer row that had landed costs one
    /// miss).
    ///
    /// Default: [`StoreError::Unsupported`].
    async fn put_entry_if_newer(&self, put: VersionedPut) -> StoreResult<bool> {
        let _ = put;
        Err(StoreError::unsupported("put_entry_if_newer"))
    }

    /// Removes the entry as [`Store::invalidate`] does without a stale copy
    /// (revoking any lease, waking its waiters) and raises the write mark
    /// `mark_key` to `version` unless it is at or above it already, in one
    /// step that no [`Store::put_entry_if_newer`] of the key interleaves
    /// with: once it has returned, a versioned write of a row older than
    /// `version` is refused. The engine uses it when a versioned write
    /// could not complete, so that its fallback invalidation cannot be
    /// undone by an older writer whose cache write lands after it.
    ///
    /// A store with [`Store::supports_versioned_writes`] implements it.
    /// Default: a plain [`Store::invalidate`], which raises no mark.
    async fn invalidate_if_newer(
        &self,
        key: &str,
        mark_key: &str,
        version: u64,
        mark_ttl: Duration,
    ) -> StoreResult<()> {
        let _ = (mark_key, version, mark_ttl);
        self.invalidate(key, None).await
    }

    /// Removes an entry's value and revokes its lease. With `keep_stale`,
    /// the old value stays for that long, flagged stale.
    async fn invalidate(&self, key: &str, keep_stale: Option<Duration>) -> StoreResult<()>;

    /// Checks that the store answers. The default peeks an entry no
    /// namespace writes (`aside:ping`), a round trip like any other.
    async fn ping(&self) -> StoreResult<()> {
        self.peek_entry("aside:ping").await.map(drop)
    }

    /// [`Store::get`] for many keys, in one round trip where the store can.
    /// The default runs them one by one (and so is unsupported when `get` is).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_password_is_masked_and_the_rest_of_the_url_kept() {
        for (url, shown) in [
            ("redis://ada:hunter2@cache:6379/0", "redis://ada:***@cache:6379/0"),
            ("redis://:hunter2@cache:6379", "redis://:***@cache:6379"),
            ("redis://hunter2@cache", "redis://***@cache"),
            ("nats://ada:p@ss@nats:4222", "nats://ada:***@nats:4222"),
            ("rediss://cache:6379/0?name=a@b", "rediss://cache:6379/0?name=a%40b"),
            ("redis://cache:6379", "redis://cache:6379"),
            ("cache:6379", "cache:6379"),
            (
                "redis+unix:///run/redis.sock?pass=hunter2",
                "redis+unix:///run/redis.sock?pass=***",
            ),
            (
                "unix:///run/redis.sock?db=1&pass=hunter2",
                "unix:///run/redis.sock?db=1&pass=***",
            ),
            (
                "redis://cache:6379/?password=hunter2",
                "redis://cache:6379/?password=***",
            ),
            ("redis://ada:hun/ter2@cache:6379/", "redis://***"),
            ("redis://ada:hunter2#@cache:6379/", "redis://***"),
            // The authority ends early at a `/` or `?` of the secret.
            ("redis://Zm9vYmFy/YmF6cXV4@cache:1", "redis://***"),
            ("redis://default:2024/Secret@cache:1", "redis://***"),
            ("redis://default:8080?Secret@cache:1", "redis://***"),
            ("redis://h1,redis://u:SECRET@h2", "redis://***"),
            (
                "postgres://db/app?sslpassword=hunter2&sslmode=require",
                "postgres://db/app?sslpassword=***&sslmode=require",
            ),
        ] {
            assert_eq!(masked_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_store_error_keeps_its_kind_and_its_source_inside_an_aside_error() {
        let cause = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused by the test");
        let error: crate::Error = StoreError::connection("cannot connect").with_source(cause()).into();
        assert_eq!(error.kind(), crate::ErrorKind::Store);
        let store = std::error::Error::source(&error)
            .and_then(|e| e.downcast_ref::<StoreError>())
            .expect("the store error is the source");
        assert!(!store.is_per_key(), "a connection error feeds the breaker");
        assert_eq!(store.to_string(), "connection: cannot connect");
        let client = std::error::Error::source(store).expect("the client's error is kept");
        assert_eq!(client.to_string(), "refused by the test");

        for per_key in [
            StoreError::server("x"),
            StoreError::refused("x"),
            StoreError::unsupported("get"),
        ] {
            assert!(per_key.is_per_key(), "{per_key}");
        }
        assert!(StoreError::server("x").is_server() && !StoreError::refused("x").is_server());
        let unsupported = StoreError::unsupported("get").with_source(cause());
        assert!(
            std::error::Error::source(&unsupported).is_none(),
            "an unsupported call has no cause"
        );
    }
}
