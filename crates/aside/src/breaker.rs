//! A circuit breaker for the store: closed, open, half-open.
//!
//! Owns the decision "may this call touch the store?" and nothing else.
//! While open, the engine skips the store outright, so a dead cache costs no
//! latency; after `open_for`, one caller is let through as a probe
//! (half-open) and its outcome closes or re-opens the breaker.
//!
//! State lives in atomics rather than behind a mutex: `allow` runs on every
//! cache hit, and a closed breaker must cost one relaxed load.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Thresholds of the breaker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive store failures that open the breaker. Default 5.
    pub failure_threshold: u32,
    /// How long the breaker stays open before a probe is let through. Default 1 s.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(1),
        }
    }
}

impl BreakerConfig {
    /// Sets the failure threshold (at least 1).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n.max(1);
        self
    }

    /// Sets how long the breaker stays open.
    pub fn open_for(mut self, d: Duration) -> Self {
        self.open_for = d;
        self
    }
}

/// The state of the store's circuit breaker, as reported by
/// [`Aside::breaker_state`](crate::Aside::breaker_state), in stats and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BreakerState {
    /// The store is used.
    Closed,
    /// The store is skipped.
    Open,
    /// One probe is testing the store.
    HalfOpen,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// A lock-free circuit breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: AtomicU8,
    failures: AtomicU32,
    /// Milliseconds since `epoch` when the state last became open or half-open.
    changed_at_ms: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    /// A closed breaker.
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            changed_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The current state.
    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Relaxed) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// May the caller use the store now? A `true` from an open breaker makes
    /// the caller the half-open probe. A probe that never reports (its future
    /// was dropped) is replaced after another `open_for`.
    pub(crate) fn allow(&self) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        if state == CLOSED {
            return true;
        }
        let since = self.changed_at_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        if now.saturating_sub(since) < self.config.open_for.as_millis() as u64 {
            return false;
        }
        // One caller wins the right to probe; the others keep skipping.
        let won = self
            .changed_at_ms
            .compare_exchange(since, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if won {
            self.state.store(HALF_OPEN, Ordering::Release);
        }
        won
    }

    /// Reports a store call that succeeded.
    pub(crate) fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.state.load(Ordering::Relaxed) != CLOSED {
            self.state.store(CLOSED, Ordering::Release);
        }
    }

    /// Reports a store call that failed or timed out.
    pub(crate) fn record_failure(&self) {
        let state = self.state.load(Ordering::Relaxed);
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if state == HALF_OPEN || (state == CLOSED && failures >= self.config.failure_threshold) {
            self.changed_at_ms.store(self.now_ms(), Ordering::Release);
            self.state.store(OPEN, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_probes_after_cooldown_and_closes_on_success() {
        let b = Breaker::new(
            BreakerConfig::default()
                .failure_threshold(3)
                .open_for(Duration::from_secs(1)),
        );
        for _ in 0..2 {
            b.record_failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.allow(), "first caller after the cooldown probes");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(), "only one probe at a time");
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.allow());
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_is_replaced_after_another_cooldown() {
        let b = Breaker::new(BreakerConfig::default().failure_threshold(1));
        b.record_failure();
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.allow());
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.allow());
    }
}
