//! One namespace's engine state, and the values its reads answer with.
//!
//! Owns [`NsInner`] (a namespace's settings and the state its paths share:
//! the L1, the single-flight table, the read sequence, the throttles and
//! the counters), how it is built from a [`Settings`], and the types a read
//! settles with ([`Settled`]) and answers with ([`Fetched`], [`Source`]).
//! The paths themselves are `impl NsInner` blocks in the other files of
//! `engine`; `Namespace` is the typed facade over it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Core;
use super::single_flight::SingleFlight;
use super::tier::{Evictor, L1, L1Config};
use super::timer::SecondDelete;
use crate::codec::Codec;
use crate::error::Result;
use crate::metrics::NamespaceMetrics;
use crate::policy::{EarlyRefresh, Strategy};

/// Where a value returned by [`Namespace::fetch`](crate::Namespace::fetch) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Source {
    /// The cache had a current value.
    Hit,
    /// This call ran the loader.
    Loaded,
    /// Another caller's load (in this process, or in another through a lease) served it.
    Coalesced,
    /// An invalidated (stale) value was served while another caller loads.
    Stale,
}

/// A value with where it came from.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Fetched<V> {
    /// The value, `None` when the loader found nothing.
    pub value: Option<V>,
    /// Where it came from.
    pub source: Source,
}

/// What a single-flight leader hands its waiters.
#[derive(Clone)]
pub(crate) struct Settled<V> {
    pub(crate) value: Option<V>,
    pub(crate) source: Source,
    /// The namespace's read sequence just before the store operation or
    /// load that settled the value. A caller whose read began later may have
    /// begun after an invalidation the value predates, so it must not take it.
    pub(crate) settled_at: u64,
    /// When (Unix ms) an L1 copy of the value must be gone: the stored
    /// entry's logical expiry when its header has one; for a value just
    /// loaded, its shortest TTL from the load's end
    /// ([`NsInner::loaded_expiry`], only when there is an L1). `None`
    /// otherwise: the L1, if any, then counts the shortest TTL from its
    /// insert.
    pub(crate) expires_at_ms: Option<u64>,
    /// This caller's own fill or `set` of the value landed in the store.
    /// False when it was refused, failed or never made, when not known (a
    /// batch's `set_many`), and for a value that came from the store or
    /// another caller. A forced refresh that
    /// loaded a value it could not fill invalidates the key
    /// (`NsInner::fetch_refreshed`).
    pub(crate) filled: bool,
}

pub(crate) type Shared<V> = Result<Settled<V>>;

/// What [`crate::Namespace::write_through`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteThrough {
    /// The value is cached: its version was the newest written.
    Written,
    /// Not cached: a write of the same or a newer version came first, and
    /// its value (or a later one) is what readers get. On memcached, whose
    /// comparison is not one atomic step, the key is deleted instead (the
    /// newer writer may not have written its entry yet): the next read
    /// loads it.
    Superseded,
    /// The key was invalidated instead, because this namespace or store
    /// cannot compare versions (a strategy other than `Lease`, a store
    /// without versioned writes, a key such as `a}b` whose braces keep its
    /// write mark out of its Redis Cluster slot): the next read loads the row.
    Invalidated,
}

/// How concurrent misses of one key are kept from all reaching the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Stampede {
    /// No protection: every miss runs the loader (the naive pattern; a baseline).
    None,
    /// The article's lock: one caller sets the key's lock for 5 s and
    /// loads; the others sleep 100 ms and retry. A baseline to compare
    /// against, not a recommendation. The lock is a lease on the lock key
    /// rather than the article's `SET NX` and `DEL`, so that only its
    /// holder gives it back, and a holder cancelled mid-load gives it back
    /// from a guard, in the background, rather than leave it for its TTL
    /// (`the_stampede_lock_is_given_back_by_its_holder_alone` in
    /// `tests/regressions.rs`). With the store unreachable, loads go
    /// through the process's single-flight instead.
    LockSleep,
    /// Single-flight in the process, plus the lease across processes with
    /// [`Strategy::Lease`] (the default).
    #[default]
    Coalesce,
}

/// One namespace's engine: its settings, its L1, its single-flight table
/// and read sequence, and its counters. Every read and write path is an
/// `impl NsInner` block in a file of `engine`; [`crate::Namespace`] holds
/// it behind an `Arc` and adds only the typed keys.
pub(crate) struct NsInner<V> {
    /// What it was built with; read through `Deref` (`self.ttl`).
    pub(crate) settings: Settings<V>,
    pub(crate) key_prefix: String,
    pub(crate) l1: Option<L1<V>>,
    /// This namespace, weakly: what the delayed-delete timer calls back.
    pub(crate) self_ref: Weak<dyn SecondDelete>,
    /// Keys with a background refresh running (`fetch_owned`), so that one
    /// is spawned per key however many callers draw it.
    pub(crate) refreshing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Keys whose loader failed under fail-safe, with when it may be tried
    /// again (see `NsInner::note_failed_load`).
    pub(crate) failed_loads: std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
    pub(crate) read_seq: std::sync::atomic::AtomicU64,
    pub(crate) flight: SingleFlight<Shared<V>>,
    pub(crate) metrics: NamespaceMetrics,
}

/// The settings read as the engine's own fields: every path asks
/// `self.ttl`, `self.strategy`, ... without naming where they are kept.
impl<V> std::ops::Deref for NsInner<V> {
    type Target = Settings<V>;

    fn deref(&self) -> &Settings<V> {
        &self.settings
    }
}

/// Fail-safe (stale-if-error) settings; see
/// [`NamespaceBuilder::fail_safe`](crate::NamespaceBuilder::fail_safe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailSafe {
    /// How long past its logical expiry a value is kept for emergencies.
    pub(crate) max_stale: Duration,
    /// After a failed load, how long the stale value is served before the
    /// loader is tried again.
    pub(crate) throttle: Duration,
}

/// What a namespace is built from: its settings, as the builder collects
/// them (`NamespaceBuilder` checks them before `NsInner::new`).
pub(crate) struct Settings<V> {
    pub(crate) core: Arc<Core>,
    pub(crate) name: String,
    pub(crate) ttl: Duration,
    pub(crate) jitter: f64,
    pub(crate) codec: Arc<dyn Codec<V>>,
    pub(crate) raw: bool,
    pub(crate) strategy: Strategy,
    pub(crate) lease_ttl: Duration,
    pub(crate) lease_wait: Duration,
    pub(crate) keep_stale: Option<Duration>,
    pub(crate) max_value_bytes: usize,
    pub(crate) stampede: Stampede,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) early_refresh: Option<EarlyRefresh>,
    pub(crate) fail_safe: Option<FailSafe>,
    pub(crate) load_timeout: Option<Duration>,
    pub(crate) soft_load_timeout: Option<Duration>,
    pub(crate) l1_config: Option<L1Config>,
}

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    /// Builds the namespace's engine; one with an L1 is registered with its
    /// `Aside`'s peers and starts the bus listener, so that invalidations
    /// reach it.
    pub(crate) fn new(settings: Settings<V>) -> Arc<Self> {
        let key_prefix = format!("{}{}:", settings.core.prefix, settings.name);
        let l1 = settings.l1_config.map(|mut config| {
            // A local copy never outlives the store's.
            config.ttl = config.ttl.min(settings.ttl);
            L1::new(config, key_prefix.len())
        });
        let inner = Arc::new_cyclic(|weak: &Weak<NsInner<V>>| NsInner {
            self_ref: weak.clone(),
            metrics: NamespaceMetrics::register(&settings.name),
            settings,
            key_prefix,
            l1,
            refreshing: std::sync::Mutex::default(),
            failed_loads: std::sync::Mutex::default(),
            read_seq: std::sync::atomic::AtomicU64::new(1),
            flight: SingleFlight::default(),
        });
        if inner.l1.is_some() {
            let evictor: Weak<dyn Evictor> = Arc::downgrade(&inner) as _;
            inner.core.l1_peers.register(&inner.name, evictor);
            if let Some(router) = &inner.core.router {
                router.start(&inner.core);
            }
        }
        inner
    }
}
