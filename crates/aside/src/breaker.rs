//! A circuit breaker for the store: closed, open, half-open; opened by
//! failures or by latency, closed by a background probe.
//!
//! Owns the decision "may this call touch the store?" and the probe that
//! re-opens the way. The breaker opens after `failure_threshold`
//! consecutive failures (errors, timeouts), or once `slow_calls` of the last
//! `slow_window` calls took longer than `slow_call`: a store that answers
//! late costs every caller that latency, which is what the breaker exists
//! to spare them. While it is open or half-open, no caller touches the
//! store: a dead or slow cache costs no latency. A background task pings
//! the store every `open_for` (the breaker is half-open while a ping is in
//! flight) and closes the breaker once a ping answers faster than
//! `slow_call`; a user's request is never the probe.
//!
//! State lives in atomics rather than behind a mutex: `admit` and `record`
//! run on every store call, and a closed breaker over a healthy store must
//! cost a couple of relaxed loads (the slow-call history is written only
//! when it changes). The probe task holds weak references to the breaker
//! and the store, so it ends when the `Aside` is dropped; if it dies with
//! its runtime, the next caller that finds it overdue starts another one.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::Store;

/// Thresholds of the breaker.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Consecutive store failures that open the breaker. Default 5.
    pub failure_threshold: u32,
    /// How often the open breaker's background task pings the store.
    /// Default 1 s.
    pub open_for: Duration,
    /// A store call that takes longer than this is slow (and so is a
    /// probe's ping: the breaker closes only on a faster one). Default
    /// 150 ms: well above a healthy store's answer even on a busy host,
    /// below the default operation timeout (250 ms).
    pub slow_call: Duration,
    /// Slow calls among the last [`BreakerConfig::slow_window`] that open
    /// the breaker. Default 10 (half the window), so a burst of scheduling
    /// delays on a loaded host does not skip a healthy store.
    pub slow_calls: u32,
    /// How many of the latest store calls are weighed for slowness (at most 64). Default 20.
    pub slow_window: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(1),
            slow_call: Duration::from_millis(150),
            slow_calls: 10,
            slow_window: 20,
        }
    }
}

impl BreakerConfig {
    /// Sets the failure threshold (at least 1).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n.max(1);
        self
    }

    /// Sets how long the breaker stays open between probes.
    pub fn open_for(mut self, d: Duration) -> Self {
        self.open_for = d;
        self
    }

    /// Sets the duration above which a store call is slow.
    pub fn slow_call(mut self, d: Duration) -> Self {
        self.slow_call = d;
        self
    }

    /// Opens the breaker once `calls` of the last `window` store calls
    /// were slow (`window` is clamped to 1..=64, `calls` to 1..=`window`).
    pub fn slow_calls(mut self, calls: u32, window: u32) -> Self {
        self.slow_window = window.clamp(1, 64);
        self.slow_calls = calls.clamp(1, self.slow_window);
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
    /// The store is skipped; a background probe is testing it.
    HalfOpen,
}

/// Why the breaker last opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BreakerReason {
    /// Consecutive failures or timeouts.
    Failures,
    /// Too many slow answers.
    Slow,
}

/// The breaker as [`Aside::breaker_status`](crate::Aside::breaker_status) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BreakerStatus {
    /// The state now.
    pub state: BreakerState,
    /// Why it opened, while it is not closed.
    pub reason: Option<BreakerReason>,
    /// Slow calls among the latest weighed ones (while closed).
    pub slow_calls: u32,
    /// How long the last probe's ping took, while not closed (`None`
    /// before the first probe, or when it did not answer).
    pub last_probe: Option<Duration>,
}

/// What the breaker says to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Use the store.
    Call,
    /// Skip the store.
    Skip,
    /// Skip the store, and start a probe: the last one is overdue.
    SkipAndProbe,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

const REASON_NONE: u8 = 0;
const REASON_FAILURES: u8 = 1;
const REASON_SLOW: u8 = 2;

/// A lock-free circuit breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: BreakerConfig,
    state: AtomicU8,
    reason: AtomicU8,
    failures: AtomicU32,
    /// One bit per recent call, newest lowest: 1 = slow.
    slow_history: AtomicU64,
    /// Milliseconds since `epoch` of the last sign of life of the probe
    /// (the breaker opening, a probe starting or ending).
    probe_seen_ms: AtomicU64,
    /// The probe's ping bound, in ms (set when a probe is started).
    probe_timeout_ms: AtomicU64,
    /// The last probe's ping in µs, `u64::MAX` for none.
    last_probe_us: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    /// A closed breaker.
    pub(crate) fn new(config: BreakerConfig) -> Self {
        Breaker {
            inner: Arc::new(Inner {
                config,
                state: AtomicU8::new(CLOSED),
                reason: AtomicU8::new(REASON_NONE),
                failures: AtomicU32::new(0),
                slow_history: AtomicU64::new(0),
                probe_seen_ms: AtomicU64::new(0),
                probe_timeout_ms: AtomicU64::new(0),
                last_probe_us: AtomicU64::new(u64::MAX),
                epoch: Instant::now(),
            }),
        }
    }

    /// The current state.
    pub(crate) fn state(&self) -> BreakerState {
        self.inner.state()
    }

    /// The state, why it opened and how slow the store looks.
    pub(crate) fn status(&self) -> BreakerStatus {
        let inner = &self.inner;
        let state = inner.state();
        let closed = state == BreakerState::Closed;
        let reason = match inner.reason.load(Ordering::Relaxed) {
            _ if closed => None,
            REASON_FAILURES => Some(BreakerReason::Failures),
            REASON_SLOW => Some(BreakerReason::Slow),
            _ => None,
        };
        let last_probe = match inner.last_probe_us.load(Ordering::Relaxed) {
            _ if closed => None,
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        };
        BreakerStatus {
            state,
            reason,
            slow_calls: (inner.slow_history.load(Ordering::Relaxed) & inner.window_mask()).count_ones(),
            last_probe,
        }
    }

    /// May the caller use the store now? Never while open or half-open;
    /// a caller that finds the probe overdue (its task died with its
    /// runtime) is told to start another one, and only that caller.
    pub(crate) fn admit(&self) -> Admit {
        let inner = &self.inner;
        if inner.state.load(Ordering::Relaxed) == CLOSED {
            return Admit::Call;
        }
        let seen = inner.probe_seen_ms.load(Ordering::Relaxed);
        let now = inner.now_ms();
        // Saturating: `open_for` is the user's, and `millis` passes a
        // duration that fits in `u64` milliseconds as it is.
        let overdue_after = millis(inner.config.open_for)
            .saturating_mul(2)
            .saturating_add(inner.probe_timeout_ms.load(Ordering::Relaxed))
            .saturating_add(100);
        if now.saturating_sub(seen) < overdue_after {
            return Admit::Skip;
        }
        let won = inner
            .probe_seen_ms
            .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if won { Admit::SkipAndProbe } else { Admit::Skip }
    }

    /// Reports a store call that answered (or answered about one key
    /// only) after `elapsed`. Returns true when it opened the breaker:
    /// the caller then starts the probe.
    pub(crate) fn record_success(&self, elapsed: Duration) -> bool {
        let inner = &self.inner;
        if inner.failures.load(Ordering::Relaxed) != 0 {
            inner.failures.store(0, Ordering::Relaxed);
        }
        inner.record_latency(elapsed)
    }

    /// Reports a store call that failed or timed out after `elapsed`.
    /// Returns true when it opened the breaker: the caller then starts the probe.
    pub(crate) fn record_failure(&self, elapsed: Duration) -> bool {
        let inner = &self.inner;
        let failures = inner.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= inner.config.failure_threshold && inner.open(REASON_FAILURES) {
            return true;
        }
        inner.record_latency(elapsed)
    }

    /// True when `elapsed` counts as slow.
    pub(crate) fn is_slow(&self, elapsed: Duration) -> bool {
        elapsed > self.inner.config.slow_call
    }

    /// Starts the background probe on the current runtime (none outside a
    /// runtime: the next caller finds it overdue and tries again). `ping`
    /// is the store's, bounded by `timeout`.
    pub(crate) fn spawn_probe(&self, store: &Arc<dyn Store>, timeout: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = &self.inner;
        inner.probe_timeout_ms.store(millis(timeout), Ordering::Relaxed);
        inner.probe_seen_ms.store(inner.now_ms(), Ordering::Release);
        let (breaker, store) = (Arc::downgrade(&self.inner), Arc::downgrade(store));
        runtime.spawn(probe(breaker, store, timeout));
    }
}

/// The probe: every `open_for`, one ping bounded by `timeout`; a ping
/// faster than `slow_call` closes the breaker and ends the task. Ends too
/// when the breaker or the store is gone, or when the breaker was closed
/// by someone else.
async fn probe(breaker: Weak<Inner>, store: Weak<dyn Store>, timeout: Duration) {
    let Some(open_for) = breaker.upgrade().map(|b| b.config.open_for) else {
        return;
    };
    loop {
        tokio::time::sleep(open_for).await;
        let (Some(inner), Some(store)) = (breaker.upgrade(), store.upgrade()) else {
            return;
        };
        if inner.state.load(Ordering::Acquire) == CLOSED {
            return;
        }
        inner.set_state(HALF_OPEN, store.name());
        inner.probe_seen_ms.store(inner.now_ms(), Ordering::Release);
        let started = Instant::now();
        let answer = tokio::time::timeout(timeout, store.ping()).await;
        let elapsed = started.elapsed();
        inner.probe_seen_ms.store(inner.now_ms(), Ordering::Release);
        let answered = matches!(answer, Ok(Ok(())));
        inner.last_probe_us.store(
            if answered {
                u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX - 1)
            } else {
                u64::MAX
            },
            Ordering::Relaxed,
        );
        if answered && elapsed <= inner.config.slow_call {
            inner.failures.store(0, Ordering::Relaxed);
            inner.slow_history.store(0, Ordering::Relaxed);
            inner.set_state(CLOSED, store.name());
            return;
        }
        inner.set_state(OPEN, store.name());
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4)
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Relaxed) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    fn window_mask(&self) -> u64 {
        match self.config.slow_window {
            0 => 1,
            w if w >= 64 => u64::MAX,
            w => (1u64 << w) - 1,
        }
    }

    /// Shifts one call into the slow-call history; opens the breaker when
    /// too many of the window were slow. Writes only when the history
    /// changes: a healthy store's calls leave it at zero with a load.
    fn record_latency(&self, elapsed: Duration) -> bool {
        let slow = elapsed > self.config.slow_call;
        let history = self.slow_history.load(Ordering::Relaxed);
        if !slow && history & self.window_mask() == 0 {
            return false;
        }
        let mask = self.window_mask();
        let updated = self
            .slow_history
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |h| {
                Some(((h << 1) | u64::from(slow)) & mask)
            })
            .map_or(history, |previous| ((previous << 1) | u64::from(slow)) & mask);
        slow && updated.count_ones() >= self.config.slow_calls && self.open(REASON_SLOW)
    }

    /// Closed to open; true for the one caller that made the change.
    fn open(&self, reason: u8) -> bool {
        if self
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.reason.store(reason, Ordering::Relaxed);
        self.last_probe_us.store(u64::MAX, Ordering::Relaxed);
        self.probe_seen_ms.store(self.now_ms(), Ordering::Release);
        self.failures.store(0, Ordering::Relaxed);
        self.slow_history.store(0, Ordering::Relaxed);
        crate::metrics::record_breaker_state(BreakerState::Open);
        let reason = if reason == REASON_SLOW {
            "slow answers"
        } else {
            "failures"
        };
        tracing::warn!(reason, "cache store breaker opened: the store is skipped");
        true
    }

    fn set_state(&self, state: u8, store: &str) {
        let before = self.state.swap(state, Ordering::AcqRel);
        if before != state {
            let after = self.state();
            crate::metrics::record_breaker_state(after);
            if after == BreakerState::Closed {
                tracing::warn!(store, "cache store breaker closed: the store answered a probe in time");
            } else {
                tracing::debug!(store, ?after, "cache store breaker probing");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;

    use super::*;
    use crate::store::{EntryView, FillOutcome, LeaseOutcome, LeaseToken, StoreError, StoreResult};

    /// A store whose only working call is a `ping` of scripted delay
    /// (`None`: at once) and outcome.
    #[derive(Default)]
    struct Scripted {
        ping: Mutex<(Option<Duration>, bool)>,
        pings: AtomicUsize,
    }

    impl Scripted {
        fn set_ping(&self, delay: Option<Duration>, fails: bool) {
            *self.ping.lock().unwrap() = (delay, fails);
        }

        fn pings(&self) -> usize {
            self.pings.load(Ordering::Relaxed)
        }
    }

    fn unused<T>() -> StoreResult<T> {
        Err(StoreError::server("not used by these tests"))
    }

    #[async_trait::async_trait]
    impl Store for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        async fn delete(&self, _: &str) -> StoreResult<()> {
            unused()
        }
        async fn peek_entry(&self, _: &str) -> StoreResult<EntryView> {
            unused()
        }
        async fn lookup_or_lease(&self, _: &str, _: LeaseToken, _: Duration) -> StoreResult<LeaseOutcome> {
            unused()
        }
        async fn lease_for_refresh(&self, _: &str, _: LeaseToken, _: Duration) -> StoreResult<Option<LeaseToken>> {
            unused()
        }
        async fn fill(&self, _: &str, _: LeaseToken, _: Bytes, _: Duration) -> StoreResult<FillOutcome> {
            unused()
        }
        async fn release(&self, _: &str, _: LeaseToken) -> StoreResult<()> {
            unused()
        }
        async fn put_entry(&self, _: &str, _: Bytes, _: Duration) -> StoreResult<()> {
            unused()
        }
        async fn invalidate(&self, _: &str, _: Option<Duration>) -> StoreResult<()> {
            unused()
        }
        async fn ping(&self) -> StoreResult<()> {
            self.pings.fetch_add(1, Ordering::Relaxed);
            let (delay, fails) = *self.ping.lock().unwrap();
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            if fails {
                Err(StoreError::connection("scripted failure"))
            } else {
                Ok(())
            }
        }
    }

    fn breaker(config: BreakerConfig) -> Breaker {
        Breaker::new(config)
    }

    const FAST: Duration = Duration::from_millis(1);
    const SLOW: Duration = Duration::from_millis(200);

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_failure_threshold_and_admits_nobody_while_open() {
        let b = breaker(BreakerConfig::default().failure_threshold(3));
        assert!(!b.record_failure(FAST));
        assert!(!b.record_success(FAST), "a success resets the count");
        assert!(!b.record_failure(FAST));
        assert!(!b.record_failure(FAST));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.record_failure(FAST), "the third in a row opens it");
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.record_failure(FAST), "opened once");
        assert_eq!(b.status().reason, Some(BreakerReason::Failures));
        for _ in 0..10 {
            assert_eq!(b.admit(), Admit::Skip);
            tokio::time::advance(Duration::from_millis(200)).await;
        }
    }

    /// An `open_for` of `u64::MAX` milliseconds (just inside what `millis`
    /// passes as it is) keeps the breaker open and panics nowhere; it
    /// overflowed `2 * open_for` (review finding).
    #[tokio::test(start_paused = true)]
    async fn an_open_for_at_the_end_of_the_millisecond_range_panics_nowhere() {
        let b = breaker(
            BreakerConfig::default()
                .failure_threshold(1)
                .open_for(Duration::from_millis(u64::MAX)),
        );
        assert!(b.record_failure(FAST));
        for _ in 0..3 {
            assert_eq!(b.admit(), Admit::Skip);
            tokio::time::advance(Duration::from_secs(3600)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_when_enough_of_the_recent_calls_are_slow() {
        let b = breaker(BreakerConfig::default().slow_calls(3, 5));
        for elapsed in [SLOW, FAST, SLOW, FAST, FAST, FAST, FAST, FAST] {
            assert!(!b.record_success(elapsed));
        }
        assert_eq!(b.status().slow_calls, 0, "both slow calls left the window");
        assert!(!b.record_success(SLOW));
        assert!(!b.record_success(FAST));
        assert!(!b.record_success(SLOW));
        assert_eq!(b.status().slow_calls, 2);
        assert!(b.record_success(SLOW), "3 of the last 5");
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.status().reason, Some(BreakerReason::Slow));
        assert_eq!(b.admit(), Admit::Skip);
    }

    /// The probe is a background ping, never a caller: the breaker stays
    /// open while pings are slow or fail, and closes on the first fast one.
    #[tokio::test(start_paused = true)]
    async fn a_background_ping_closes_it_once_the_store_answers_fast() {
        let scripted = Arc::new(Scripted::default());
        let store: Arc<dyn Store> = scripted.clone();
        let b = breaker(BreakerConfig::default().failure_threshold(1));
        scripted.set_ping(Some(Duration::from_millis(500)), false);
        assert!(b.record_failure(FAST));
        b.spawn_probe(&store, Duration::from_millis(250));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_ne!(b.state(), BreakerState::Closed, "pings time out");
            assert_eq!(b.admit(), Admit::Skip, "and callers never probe");
        }
        scripted.set_ping(Some(SLOW), false);
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_ne!(b.state(), BreakerState::Closed, "pings are slow");
        }
        assert!(b.status().last_probe.is_some_and(|d| d >= SLOW));
        scripted.set_ping(Some(SLOW), true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_ne!(b.state(), BreakerState::Closed, "pings fail");
        let pings = scripted.pings();
        assert!(pings >= 6, "{pings}");
        scripted.set_ping(None, false);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admit::Call);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(scripted.pings(), pings + 1, "the probe ended with the close");
    }

    /// A probe task lost with its runtime is replaced by the first caller
    /// that finds it overdue.
    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_is_replaced_by_one_caller() {
        let b = breaker(BreakerConfig::default().failure_threshold(1));
        assert!(b.record_failure(FAST));
        // No probe was started (as if its runtime had gone).
        assert_eq!(b.admit(), Admit::Skip);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(b.admit(), Admit::SkipAndProbe);
        assert_eq!(b.admit(), Admit::Skip, "only one caller starts it");
    }
}
