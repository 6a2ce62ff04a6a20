//! What a [`Flusher`](super::Flusher) counts: [`FlusherStats`] (a
//! snapshot), the atomics behind it, and its metrics through the
//! `metrics` facade (names in [`crate::metrics`]).
//!
//! Owns the counting only. Each event is counted twice on purpose, as in
//! the rest of the crate: into an atomic for [`FlusherStats`], which works
//! with no recorder installed, and into the facade for dashboards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics as names;

/// What a [`Flusher`](super::Flusher) has done, from
/// [`Flusher::stats`](super::Flusher::stats) or a [`FlusherMonitor`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct FlusherStats {
    /// Logged writes committed and acknowledged (a write superseded by a
    /// newer one of its key in the same batch counts too).
    pub flushed: u64,
    /// Batches committed.
    pub batches: u64,
    /// Failed attempts retried (sink errors, Redis errors).
    pub retries: u64,
    /// Entries parked in the dead-letter stream: corrupt, or refused by
    /// [`WriteBackSink::validate`](super::WriteBackSink::validate).
    pub corrupt: u64,
    /// Entries claimed from other consumers (`XAUTOCLAIM`).
    pub claimed: u64,
    /// Entries in the log at the last look (`XLEN`).
    pub log_length: u64,
    /// Age in ms of the oldest entry in the log at the last look, 0 when empty.
    pub lag_ms: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) flushed: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) corrupt: AtomicU64,
    pub(crate) claimed: AtomicU64,
    pub(crate) log_length: AtomicU64,
    pub(crate) lag_ms: AtomicU64,
}

impl Tally {
    pub(crate) fn snapshot(&self) -> FlusherStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FlusherStats {
            flushed: get(&self.flushed),
            batches: get(&self.batches),
            retries: get(&self.retries),
            corrupt: get(&self.corrupt),
            claimed: get(&self.claimed),
            log_length: get(&self.log_length),
            lag_ms: get(&self.lag_ms),
        }
    }
}

/// Reads a running [`Flusher`](super::Flusher)'s stats from elsewhere (a health check, a
/// test). Cloning is cheap.
#[derive(Debug, Clone)]
pub struct FlusherMonitor(pub(crate) Arc<Tally>);

impl FlusherMonitor {
    /// The stats now.
    pub fn stats(&self) -> FlusherStats {
        self.0.snapshot()
    }
}

/// The flusher's metric handles, labelled by stream.
pub(crate) struct Meters {
    pub(crate) flushed: metrics::Counter,
    pub(crate) batches: metrics::Counter,
    pub(crate) retries: metrics::Counter,
    pub(crate) corrupt: metrics::Counter,
    pub(crate) claimed: metrics::Counter,
    pub(crate) log_length: metrics::Gauge,
    pub(crate) lag: metrics::Gauge,
}

impl Meters {
    pub(crate) fn register(stream: &str) -> Self {
        let s = || stream.to_owned();
        Meters {
            flushed: metrics::counter!(names::WB_FLUSHED, "stream" => s()),
            batches: metrics::counter!(names::WB_BATCHES, "stream" => s()),
            retries: metrics::counter!(names::WB_RETRIES, "stream" => s()),
            corrupt: metrics::counter!(names::WB_CORRUPT, "stream" => s()),
            claimed: metrics::counter!(names::WB_CLAIMED, "stream" => s()),
            log_length: metrics::gauge!(names::WB_LOG_LENGTH, "stream" => s()),
            lag: metrics::gauge!(names::WB_FLUSH_LAG, "stream" => s()),
        }
    }
}
