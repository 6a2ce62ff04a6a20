//! Metric names in one place, and the counters behind [`crate::Aside::stats`].
//!
//! Owns what is counted and under which name. Every event is recorded twice,
//! on purpose: into a plain atomic (for `stats()`, which works with no
//! metrics recorder installed) and into the `metrics` facade, labelled by
//! namespace. Facade handles are registered once per namespace, so the hot
//! path pays an atomic add and a handle call, not a key lookup; install your
//! recorder before building namespaces.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use metrics::Counter;

use crate::breaker::BreakerState;

/// Cache hits.
pub const HITS: &str = "aside_hits_total";
/// Cache misses (including store errors and bypassed stores).
pub const MISSES: &str = "aside_misses_total";
/// Loader calls.
pub const LOADS: &str = "aside_loads_total";
/// Loader calls that failed.
pub const LOAD_ERRORS: &str = "aside_load_errors_total";
/// Store calls that failed or timed out.
pub const STORE_ERRORS: &str = "aside_store_errors_total";
/// Store calls that answered, but slower than the breaker's slow-call threshold.
pub const STORE_SLOW: &str = "aside_store_slow_total";
/// Store calls skipped because the breaker was open.
pub const STORE_SKIPPED: &str = "aside_store_skipped_total";
/// Entries that failed to decode (deleted and reloaded).
pub const DECODE_ERRORS: &str = "aside_decode_errors_total";
/// Values not cached because they exceeded the size limit.
pub const OVERSIZED: &str = "aside_oversized_total";
/// Fills refused because an invalidation revoked their lease.
pub const FILLS_REFUSED: &str = "aside_fills_refused_total";
/// Stale values served.
pub const STALE_SERVED: &str = "aside_stale_served_total";
/// Callers that waited for another's load (in-process or via a lease).
pub const COALESCED: &str = "aside_coalesced_total";
/// Invalidations that failed and were queued for replay.
pub const INVALIDATIONS_QUEUED: &str = "aside_invalidations_queued_total";
/// Queued invalidations replayed successfully.
pub const INVALIDATIONS_REPLAYED: &str = "aside_invalidations_replayed_total";
/// Queued invalidations dropped because the queue was full.
pub const INVALIDATIONS_DROPPED: &str = "aside_invalidations_dropped_total";
/// Reads answered by the in-process first tier (also counted as hits).
pub const L1_HITS: &str = "aside_l1_hits_total";
/// Breaker state gauge: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "aside_breaker_state";

/// Write-back writes the log took (label `stream`).
pub const WB_LOGGED: &str = "aside_writeback_logged_total";
/// Write-back writes the log refused: back-pressure, failure or timeout (label `stream`).
pub const WB_REFUSED: &str = "aside_writeback_refused_total";
/// Logged writes the flusher committed and acknowledged (label `stream`).
pub const WB_FLUSHED: &str = "aside_writeback_flushed_total";
/// Batches the flusher committed (label `stream`).
pub const WB_BATCHES: &str = "aside_writeback_batches_total";
/// Failed flusher attempts retried: sink or Redis (label `stream`).
pub const WB_RETRIES: &str = "aside_writeback_retries_total";
/// Log entries parked in the dead-letter stream (label `stream`).
pub const WB_CORRUPT: &str = "aside_writeback_corrupt_total";
/// Log entries claimed from an idle flusher (label `stream`).
pub const WB_CLAIMED: &str = "aside_writeback_claimed_total";
/// Gauge: entries in the log, unflushed or being flushed (label `stream`).
pub const WB_LOG_LENGTH: &str = "aside_writeback_log_length";
/// Gauge: age in seconds of the oldest entry in the log, 0 when empty (label `stream`).
pub const WB_FLUSH_LAG: &str = "aside_writeback_flush_lag_seconds";

/// The events `aside` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub(crate) enum Event {
    Hit,
    Miss,
    Load,
    LoadError,
    StoreError,
    StoreSkipped,
    DecodeError,
    Oversized,
    FillRefused,
    StaleServed,
    Coalesced,
    InvalidationQueued,
    InvalidationReplayed,
    InvalidationDropped,
    L1Hit,
    StoreSlow,
}

const EVENTS: usize = 16;

impl Event {
    const ALL: [(Event, &'static str); EVENTS] = [
        (Event::Hit, HITS),
        (Event::Miss, MISSES),
        (Event::Load, LOADS),
        (Event::LoadError, LOAD_ERRORS),
        (Event::StoreError, STORE_ERRORS),
        (Event::StoreSkipped, STORE_SKIPPED),
        (Event::DecodeError, DECODE_ERRORS),
        (Event::Oversized, OVERSIZED),
        (Event::FillRefused, FILLS_REFUSED),
        (Event::StaleServed, STALE_SERVED),
        (Event::Coalesced, COALESCED),
        (Event::InvalidationQueued, INVALIDATIONS_QUEUED),
        (Event::InvalidationReplayed, INVALIDATIONS_REPLAYED),
        (Event::InvalidationDropped, INVALIDATIONS_DROPPED),
        (Event::L1Hit, L1_HITS),
        (Event::StoreSlow, STORE_SLOW),
    ];
}

/// Plain atomic counters shared by all namespaces of one `Aside`.
///
/// Striped: every hit adds to these, from every worker thread, and one
/// shared cache line bouncing between cores would cost more than the L1
/// lookup itself. Each thread adds to one stripe of its own (padded to its
/// own cache lines); a snapshot sums the stripes. Reads are rare (`stats()`),
/// adds are constant.
#[derive(Debug, Default)]
pub(crate) struct Counters([Stripe; STRIPES]);

/// Stripes per counter set: above the worker threads of a typical service,
/// few enough that a snapshot stays cheap.
const STRIPES: usize = 16;

/// One thread's counters, on cache lines no other stripe shares.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; EVENTS]);

/// The stripe of the current thread: threads take stripes in turn as they
/// first count something.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

impl Counters {
    pub(crate) fn add(&self, event: Event) {
        self.0[stripe_index()].0[event as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an L1 hit, which is a hit too: one stripe lookup for both.
    pub(crate) fn add_l1_hit(&self) {
        let stripe = &self.0[stripe_index()].0;
        stripe[Event::Hit as usize].fetch_add(1, Ordering::Relaxed);
        stripe[Event::L1Hit as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self, event: Event) -> u64 {
        self.0
            .iter()
            .map(|stripe| stripe.0[event as usize].load(Ordering::Relaxed))
            .sum()
    }
}

/// Facade handles of one namespace.
#[derive(Debug)]
pub(crate) struct NamespaceMetrics(Vec<Counter>);

impl NamespaceMetrics {
    pub(crate) fn register(namespace: &str) -> Self {
        NamespaceMetrics(
            Event::ALL
                .iter()
                .map(|(_, name)| metrics::counter!(*name, "namespace" => namespace.to_owned()))
                .collect(),
        )
    }

    pub(crate) fn add(&self, event: Event) {
        self.0[event as usize].increment(1);
    }
}

pub(crate) fn record_breaker_state(state: BreakerState) {
    let value = match state {
        BreakerState::Closed => 0.0,
        BreakerState::Open => 1.0,
        BreakerState::HalfOpen => 2.0,
    };
    metrics::gauge!(BREAKER_STATE).set(value);
}

/// A snapshot of an `Aside`'s counters, from [`crate::Aside::stats`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Cache hits.
    pub hits: u64,
    /// Cache misses.
    pub misses: u64,
    /// Loader calls.
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Store calls that failed or timed out.
    pub store_errors: u64,
    /// Store calls skipped by the open breaker.
    pub store_skipped: u64,
    /// Store calls slower than the breaker's slow-call threshold
    /// ([`crate::BreakerConfig::slow_call`]), timeouts included.
    pub store_slow: u64,
    /// Entries that failed to decode.
    pub decode_errors: u64,
    /// Values too large to cache.
    pub oversized: u64,
    /// Fills refused by a revoked lease.
    pub fills_refused: u64,
    /// Stale values served.
    pub stale_served: u64,
    /// Callers served by another's load.
    pub coalesced: u64,
    /// Invalidations queued for replay.
    pub invalidations_queued: u64,
    /// Queued invalidations replayed.
    pub invalidations_replayed: u64,
    /// Queued invalidations dropped (queue full, or not replayed within
    /// [`crate::Aside::shutdown`]'s bound).
    pub invalidations_dropped: u64,
    /// Reads answered by an L1. Those of reads that may load (`fetch`,
    /// `get_or_load`, `get_many_or_load`, ...) count in `hits` too; a
    /// cache-only read (`peek`, `get` without a loader) counts no hit or
    /// miss, and its L1 hits only here.
    pub l1_hits: u64,
    /// Invalidations waiting in the queue now.
    pub invalidations_pending: u64,
    /// The breaker's state now.
    pub breaker: BreakerState,
}

impl Stats {
    /// Hits over hits plus misses, 0 when there were none.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }

    pub(crate) fn from_counters(c: &Counters, pending: u64, breaker: BreakerState) -> Self {
        Stats {
            hits: c.get(Event::Hit),
            misses: c.get(Event::Miss),
            loads: c.get(Event::Load),
            load_errors: c.get(Event::LoadError),
            store_errors: c.get(Event::StoreError),
            store_skipped: c.get(Event::StoreSkipped),
            store_slow: c.get(Event::StoreSlow),
            decode_errors: c.get(Event::DecodeError),
            oversized: c.get(Event::Oversized),
            fills_refused: c.get(Event::FillRefused),
            stale_served: c.get(Event::StaleServed),
            coalesced: c.get(Event::Coalesced),
            invalidations_queued: c.get(Event::InvalidationQueued),
            invalidations_replayed: c.get(Event::InvalidationReplayed),
            invalidations_dropped: c.get(Event::InvalidationDropped),
            l1_hits: c.get(Event::L1Hit),
            invalidations_pending: pending,
            breaker,
        }
    }
}
