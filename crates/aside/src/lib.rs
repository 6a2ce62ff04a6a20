//! # aside
//!
//! The cache-aside (lazy-loading) pattern, done right: typed namespaces over
//! an in-process store ([moka]) or Redis, with the failure modes of the naive
//! version removed.
//!
//! - **Fenced fills (leases).** A miss takes a lease; the loaded value is
//!   written only if no invalidation happened since, so the read-write race
//!   of the naive pattern cannot leave a stale entry behind.
//! - **Single-flight.** Concurrent misses on one key run the loader once per
//!   process, and once in total across processes with leases.
//! - **Fail-open.** A store error or timeout is a miss, counted; a circuit
//!   breaker skips a sick store so it costs no latency; an invalidation the
//!   store did not take is queued and replayed when it answers again.
//! - **Every strategy of the article**, selectable per namespace:
//!   [`Strategy::Delete`], [`Strategy::DoubleDelete`], [`Strategy::Versioned`]
//!   and [`Strategy::Lease`] (the default).
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use aside::Aside;
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct User { id: u64, name: String }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
//! let cache = Aside::builder().build(); // in-process store; `.store(RedisStore::connect(..).await?)` for Redis
//! let users = cache
//!     .namespace::<u64, User>("user:profile") // keys: "user:profile:{id}"
//!     .ttl(Duration::from_secs(600))
//!     .jitter(0.10)
//!     .build()?;
//!
//! let user = users
//!     .get_or_load(&1001, || async { Ok::<_, std::io::Error>(Some(User { id: 1001, name: "Ada".into() })) })
//!     .await?;
//! assert_eq!(user.map(|u| u.name).as_deref(), Some("Ada"));
//!
//! // After the database write:
//! users.invalidate(&1001).await?;
//! # Ok(()) }
//! ```
//!
//! ## The guarantee
//!
//! Stated per operation, for [`Strategy::Lease`] (the default) and
//! [`Strategy::Versioned`]; `Delete` and `DoubleDelete` exist to be
//! compared with and promise none of it.
//!
//! - **I1, no read goes backwards.** Once `invalidate`, `invalidate_many`
//!   or `set` has returned `Ok` after a database write, no read through any
//!   `Aside` sharing the store returns a value older than that write: not
//!   `get`, `get_or_load`, `fetch`, `fetch_with`, `fetch_owned`,
//!   `get_many_or_load` nor `warm`. Exceptions, each by design: a value
//!   served with [`Source::Stale`] under
//!   [`NamespaceBuilder::serve_stale_while_loading`] (flagged, by request),
//!   and an L1 of *another* process, which holds the old value until the
//!   bus delivers the invalidation (with no bus: until its L1 TTL). The L1
//!   of the process that wrote is evicted before the call returns.
//! - **I2, quiescence.** Once writers stop and pending work has drained
//!   (queued invalidations replayed, delayed deletes run, the bus
//!   delivered), no tier of any process serves a value other than the
//!   database's.
//! - **I3, one load.** At most one load per key per process at a time;
//!   with leases, one across processes while the lease is held (a waiter
//!   loads on its own after [`NamespaceBuilder::lease_wait`]).
//!
//! What is not promised:
//! - An `invalidate` that returned `Err` (the store was unreachable) is
//!   queued and replayed; meanwhile the process that queued it reads that key
//!   from the loader, but other processes may still be served the old value
//!   until the replay lands or the entry's TTL runs out. The queue lives in
//!   memory: [`Aside::shutdown`] drains it, a crash loses it, and the
//!   entries it would have removed stay until their TTL.
//! - Two concurrent `set`s of one key: the last store write wins, which may
//!   not be the last database write. Serialise writers of a key (the row
//!   lock of the database write does), or `invalidate` instead.
//!
//! The proof is the history checker in the test kit
//! (`cargo test -p aside --all-features --test history`): random programs of
//! every operation above, over three `Aside`s sharing one store and one bus,
//! every strategy and policy, on the memory store, Redis and memcached, with
//! store and bus faults injected and pauses around every store call; each
//! history is checked for I1, I2 and I3. `aside demo --scenario chaos` runs
//! the same checker as a run to watch.
//!
//! ## The API on one page
//!
//! - [`Aside`], from [`Aside::builder`]: one per process and store; holds
//!   the store, the circuit breaker ([`BreakerConfig`], [`BreakerState`]),
//!   the invalidation bus, the replay queue and the counters ([`Stats`]).
//! - [`Namespace`], from [`Aside::namespace`] and [`NamespaceBuilder`]: a
//!   typed view of one kind of value. Reads: [`Namespace::get_or_load`],
//!   [`Namespace::fetch`], [`Namespace::fetch_with`] ([`FetchOptions`]),
//!   [`Namespace::fetch_owned`], [`Namespace::get_many_or_load`],
//!   [`Namespace::warm`] ([`WarmOptions`]) and [`Namespace::get`]; what they
//!   return says where it came from ([`Fetched`], [`Source`]). Writes:
//!   [`Namespace::set`], [`Namespace::invalidate`],
//!   [`Namespace::invalidate_many`], [`Namespace::write_through`] and, with
//!   the `redis` feature, `Namespace::write_back` (write-back on a durable
//!   log; the flusher and its guarantees are in `writeback`).
//! - Policies per namespace: [`Strategy`], [`Stampede`], [`EarlyRefresh`],
//!   and the builder's TTL, lease, negative-caching, fail-safe and L1
//!   settings. Codecs: [`Codec`], [`Json`] (default), [`MessagePack`].
//! - Errors: one [`Error`] with an [`ErrorKind`], and [`Result`].
//! - Backends: the [`Store`] trait and its implementations in [`store`]
//!   ([`MemoryStore`], Redis, memcached); the [`bus::Bus`] trait and its
//!   implementations in [`bus`]. A store of your own passes
//!   `aside_testkit::store_contract`.
//! - Metric names for dashboards: [`metrics`].
//!
//! Defaults, nameable: [`DEFAULT_TTL`], [`DEFAULT_LEASE_TTL`] (at least
//! [`MIN_LEASE_TTL`]), [`DEFAULT_MAX_VALUE_BYTES`],
//! [`DEFAULT_DOUBLE_DELETE_DELAY`], [`DEFAULT_OP_TIMEOUT`],
//! [`DEFAULT_RETRY_CAPACITY`], [`DEFAULT_MAX_KEY_LEN`],
//! [`store::memory::DEFAULT_CAPACITY_BYTES`]; every duration is bounded by
//! [`MAX_DURATION`].
//!
//! ## Features
//!
//! Every feature of the crate, none of which changes the API of another:
//!
//! - `redis` (default): [`store::redis::RedisStore`] on redis-rs (with
//!   `ConnectionManager`: reconnects on its own), `bus::redis::RedisBus`
//!   (pub/sub), and write-back on a Redis Stream (`writeback`).
//! - `memcached`: `store::memcached::MemcachedStore`, on memcached's meta
//!   protocol (1.6+), with a client of its own on tokio.
//! - `nats`: `bus::nats::NatsBus`, an invalidation bus on async-nats.
//! - `macros`: `#[aside::cached(...)]`, an async function's body as the
//!   loader of a namespace (crate `aside-macros`); the `Aside` it uses comes
//!   from an argument or from [`global`].
//!
//! With no feature, the in-process [`MemoryStore`] (moka) is the only
//! store, and it is always there.
//!
//! [moka]: https://docs.rs/moka
#![forbid(unsafe_code)]

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

mod breaker;
pub mod bus;
mod codec;
mod engine;
#[doc(hidden)]
pub mod envelope;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod global;
#[doc(hidden)]
pub mod key;
#[cfg(feature = "macros")]
#[doc(hidden)]
pub mod macro_support;
pub mod metrics;
mod namespace;
mod policy;
mod read_through;
pub mod store;
pub mod telemetry;
#[cfg(feature = "redis")]
pub mod writeback;

pub use breaker::{BreakerConfig, BreakerReason, BreakerState, BreakerStatus};
pub use codec::{Codec, Json, MessagePack};
pub use error::{Error, ErrorKind, Result};
pub use key::DEFAULT_MAX_KEY_LEN;
pub use metrics::Stats;
pub use namespace::{
    DEFAULT_LEASE_TTL, DEFAULT_MAX_VALUE_BYTES, DEFAULT_TTL, FetchOptions, Fetched, MAX_DURATION, MIN_LEASE_TTL,
    Namespace, NamespaceBuilder, Source, Stampede, WarmOptions, WriteThrough,
};
pub use policy::{DEFAULT_DOUBLE_DELETE_DELAY, EarlyRefresh, Strategy};
pub use store::Store;
pub use store::memory::MemoryStore;

#[cfg(feature = "macros")]
pub use aside_macros::cached;

use engine::Core;

/// The README's example, compiled and run as a doc test.
#[doc = include_str!("../../../README.md")]
#[cfg(all(doctest, feature = "redis"))]
pub struct ReadmeDoctests;

/// The entry point: one store, one breaker, one set of counters, shared by
/// every namespace built from it. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct Aside {
    core: Arc<Core>,
}

impl std::fmt::Debug for Aside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aside")
            .field("store", &self.core.store.name())
            .field("prefix", &self.core.prefix)
            .finish_non_exhaustive()
    }
}

impl Aside {
    /// Starts configuring an `Aside`.
    pub fn builder() -> AsideBuilder {
        AsideBuilder::default()
    }

    /// Starts configuring a namespace: keys `"{prefix}{name}:{key}"`.
    pub fn namespace<K, V>(&self, name: &str) -> NamespaceBuilder<K, V>
    where
        K: Display + ?Sized,
        V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        NamespaceBuilder::new(self.core.clone(), name)
    }

    /// A snapshot of the counters of every namespace of this `Aside`.
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// The store, for operations outside the cache-aside API.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.core.store
    }

    /// Every invalidation published on this `Aside`'s bus, from any process,
    /// for services that keep their own derived data (search indexes, other
    /// caches) and want to follow a namespace's changes without using aside's
    /// cache. `None` without a bus. A receiver that lags loses the oldest
    /// messages (`RecvError::Lagged`).
    ///
    /// Needs a Tokio runtime (the listener is spawned on first use).
    pub fn invalidations(&self) -> Option<tokio::sync::broadcast::Receiver<bus::Invalidation>> {
        Some(self.core.router.as_ref()?.events(&self.core))
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.core.breaker.state()
    }

    /// The breaker's state, why it opened, how many recent store calls were
    /// slow and how long its last probe took (for health checks).
    pub fn breaker_status(&self) -> BreakerStatus {
        self.core.breaker.status()
    }

    /// Shuts down gracefully: runs the `DoubleDelete` second deletes still
    /// scheduled (at their time if the bound allows, else at once rather
    /// than never), then replays the invalidations
    /// queued while the store was unreachable, retrying with backoff, all
    /// within `timeout`. What could not be replayed in time is dropped,
    /// counted ([`Stats::invalidations_dropped`]) and logged at error level,
    /// and reported. Call it before the process exits, after the last write.
    ///
    /// Why it matters: the retry queue lives in this process's memory only.
    /// An invalidation that is queued when the process ends, by a crash, a
    /// `kill -9`, or an exit without this call, is lost, and the entry it
    /// would have removed stays in the store, serving the old value to every
    /// process, until its TTL runs out (its `ttl` plus any `max_stale` the
    /// namespace keeps). Within `timeout`, this call turns that loss into
    /// the replays it can make and an exact count of the rest.
    ///
    /// The `Aside` stays usable afterwards; invalidations that fail later
    /// are queued and replayed as usual.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let deadline = crate::engine::deadline_after(timeout);
        let (drained, second_deletes) = self.core.shutdown(deadline).await;
        let report = ShutdownReport {
            replayed: drained.replayed,
            dropped: drained.dropped,
            second_deletes,
        };
        if report.dropped > 0 {
            tracing::error!(
                ?report,
                "aside shut down with invalidations dropped: those entries stay until their TTL"
            );
        } else {
            tracing::info!(?report, "aside shut down");
        }
        report
    }
}

/// What [`Aside::shutdown`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Queued invalidations replayed against the store during the shutdown.
    pub replayed: u64,
    /// Queued invalidations that could not be replayed in time: dropped,
    /// counted and logged; their entries stay stale until their TTL.
    pub dropped: u64,
    /// Scheduled `DoubleDelete` second deletes run at once.
    pub second_deletes: u64,
}

/// Configures an [`Aside`].
#[derive(Default)]
#[must_use = "call .build() to get the Aside"]
pub struct AsideBuilder {
    store: Option<Arc<dyn Store>>,
    prefix: String,
    op_timeout: Option<Duration>,
    breaker: BreakerConfig,
    retry_capacity: Option<usize>,
    retry_capacity_bytes: Option<usize>,
    max_key_len: Option<usize>,
    bus: Option<Arc<dyn bus::Bus>>,
}

/// Default bound on one store operation ([`AsideBuilder::op_timeout`]).
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(250);
/// Default capacity of the invalidation retry queue ([`AsideBuilder::retry_capacity`]).
pub const DEFAULT_RETRY_CAPACITY: usize = 10_000;
/// Default bound in bytes of the invalidation retry queue
/// ([`AsideBuilder::retry_capacity_bytes`]), 16 MiB.
pub const DEFAULT_RETRY_CAPACITY_BYTES: usize = 16 << 20;

impl AsideBuilder {
    /// The store (default: a [`MemoryStore`] of
    /// [`store::memory::DEFAULT_CAPACITY_BYTES`], 256 MiB).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// A store already behind an `Arc`, shared with other `Aside`s.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// A prefix before every namespace, such as `"myapp:"` (default none).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bound on each store operation (default [`DEFAULT_OP_TIMEOUT`], 250 ms). Past it the operation
    /// counts as failed and a read goes to the loader.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = Some(timeout);
        self
    }

    /// Circuit-breaker thresholds.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Capacity of the queue of invalidations awaiting replay (default
    /// [`DEFAULT_RETRY_CAPACITY`], 10,000).
    pub fn retry_capacity(mut self, capacity: usize) -> Self {
        self.retry_capacity = Some(capacity);
        self
    }

    /// Bound in bytes of the queue of invalidations awaiting replay
    /// (default [`DEFAULT_RETRY_CAPACITY_BYTES`], 16 MiB): each entry
    /// counts its store key twice, its full key, its namespace's name and
    /// about 160 bytes of bookkeeping. Past this bound, as past
    /// [`AsideBuilder::retry_capacity`], the oldest queued invalidations are
    /// dropped, counted ([`Stats::invalidations_dropped`]) and logged at
    /// error level; the newest one is always kept.
    pub fn retry_capacity_bytes(mut self, bytes: usize) -> Self {
        self.retry_capacity_bytes = Some(bytes);
        self
    }

    /// An invalidation bus: every invalidation is published on it, and the
    /// L1 tiers of every `Aside` on the same bus evict what others invalidate.
    pub fn bus(mut self, bus: impl bus::Bus) -> Self {
        self.bus = Some(Arc::new(bus));
        self
    }

    /// Keys longer than this are hashed (default [`DEFAULT_MAX_KEY_LEN`], 250
    /// bytes; at least 64).
    pub fn max_key_len(mut self, len: usize) -> Self {
        self.max_key_len = Some(len);
        self
    }

    /// Builds the `Aside`. Needs no runtime; background tasks start on first use.
    pub fn build(self) -> Aside {
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let core = Core::new(
            store,
            breaker::Breaker::new(self.breaker),
            self.op_timeout.unwrap_or(DEFAULT_OP_TIMEOUT),
            engine::RetryBounds {
                entries: self.retry_capacity.unwrap_or(DEFAULT_RETRY_CAPACITY),
                bytes: self.retry_capacity_bytes.unwrap_or(DEFAULT_RETRY_CAPACITY_BYTES),
            },
            self.prefix,
            self.max_key_len.unwrap_or(key::DEFAULT_MAX_KEY_LEN).max(64),
        );
        let mut core = core;
        core.router = self.bus.map(bus::route::Router::new);
        Aside { core: Arc::new(core) }
    }
}
