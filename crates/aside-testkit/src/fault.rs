//! Fault injection at aside's two seams, [`Store`] and [`Bus`], driven by a seed.
//!
//! Owns the fault layer of the history checker (issue 12) and nothing of its
//! checking: [`FaultStore`] wraps any `Arc<dyn Store>`, [`FaultBus`] wraps any
//! `Arc<dyn Bus>`, [`MemoryBus`] is an in-process bus to wrap ([`SilentBus`]
//! one that delivers nothing, to see who holds its subscriptions), and one
//! [`FaultPlan`] shared by all of them decides, from its seed, what happens
//! to every call:
//!
//! - store calls: pass; fail before the operation is applied (the inner
//!   store is not called); fail after it was applied (the reply is lost);
//!   a delay of 0-5 ms; a hang that never completes (before or after the
//!   inner call: the engine's `op_timeout` must bound it, which is why a
//!   `FaultStore` is never [`Store::is_local`]); a restart that empties the
//!   store (a fresh `MemoryStore`, or a callback the test supplies: `FLUSHALL`
//!   on its own server, a memcached restart);
//! - bus publishes: pass, fail before (the bus is down: the message is lost
//!   and every subscription of the plan gets a gap, then [`BusEvent::Reset`],
//!   as a reconnect would), fail after (delivered, error returned), delay;
//! - bus deliveries: delayed, or the connection dropped (a gap, then `Reset`);
//! - subscriptions that fail on the first attempt (a bus that comes up late);
//! - database (loader) errors, which the history harness asks for.
//!
//! Around every store call and publish are two pause points (a seeded number
//! of `yield_now`s or a 1-2 ms sleep), so interleavings vary by seed instead
//! of being left to timing; the synchronous reads that
//! [`FaultStore::with_shared_reads`] passes through have none. Faults can
//! be switched off (for quiescence), and everything injected is counted
//! ([`FaultCounts`]) and journaled with the sequence number of a [`Clock`]
//! the history shares, and the operation that made the call ([`in_op`], a
//! task-local: calls from the library's own background tasks carry none).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use aside::bus::{Bus, BusEvent, Invalidation};
use aside::store::{
    Decoder, EntryView, Fill, FillOutcome, FillWatch, LeaseOutcome, LeaseToken, SharedView, Store, StoreError,
    StoreResult, VersionedPut,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{broadcast, mpsc, watch};

/// Namespace of the marker message a [`FaultBus`] subscription delivers right
/// after every [`BusEvent::Reset`]: the router passes it on to
/// `Aside::invalidations()`, so a test learns when the reset was processed.
pub const RESET_MARKER: &str = "aside-testkit:reset";

tokio::task_local! {
    static CURRENT_OP: u64;
}

/// Runs `fut` as operation `op`: store calls and publishes it makes are
/// journaled with that id. Work the library spawns carries no id.
pub async fn in_op<F: Future>(op: u64, fut: F) -> F::Output {
    CURRENT_OP.scope(op, fut).await
}

/// The operation the current task runs (see [`in_op`]), if any.
pub fn current_op() -> Option<u64> {
    CURRENT_OP.try_with(|op| *op).ok()
}

/// A global sequence shared by the fault journal and a recorded history:
/// every event takes the next number, so "returned before began" is a
/// comparison of two numbers.
#[derive(Debug, Clone, Default)]
pub struct Clock(Arc<AtomicU64>);

impl Clock {
    /// A clock at 1 (0 stands for "before everything").
    pub fn new() -> Self {
        Clock(Arc::new(AtomicU64::new(1)))
    }

    /// The next sequence number.
    pub fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }

    /// The number the next tick returns.
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How likely each fault is, per call (0.0 to 1.0).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FaultRates {
    /// A store call fails before it is applied.
    pub error_before: f64,
    /// A store call is applied, then fails (the reply is lost).
    pub error_after: f64,
    /// A store call is delayed 0-5 ms.
    pub delay: f64,
    /// A store call hangs before it is applied (until the caller gives up).
    pub hang_before: f64,
    /// A store call is applied, then hangs (until the caller gives up).
    pub hang_after: f64,
    /// The store restarts empty before the call (only with a restart).
    pub restart: f64,
    /// At most this many restarts per plan.
    pub max_restarts: u32,
    /// A publish fails before it is sent: the bus is down, every subscription gets a gap and a reset.
    pub bus_error_before: f64,
    /// A publish is sent, then fails.
    pub bus_error_after: f64,
    /// A publish, or a delivery, is delayed 0-5 ms.
    pub bus_delay: f64,
    /// A delivery is lost with the connection: a gap, then a reset.
    pub bus_drop: f64,
    /// A subscription attempt fails (the router retries it).
    pub bus_subscribe_error: f64,
    /// A database read (a loader call) fails.
    pub db_error: f64,
    /// A pause point pauses (yields or sleeps) at all.
    pub pause: f64,
}

impl Default for FaultRates {
    /// The rates of a "normal" program of the history campaign.
    fn default() -> Self {
        FaultRates {
            error_before: 0.02,
            error_after: 0.02,
            delay: 0.08,
            hang_before: 0.004,
            hang_after: 0.004,
            restart: 0.002,
            max_restarts: 1,
            bus_error_before: 0.02,
            bus_error_after: 0.02,
            bus_delay: 0.2,
            bus_drop: 0.01,
            bus_subscribe_error: 0.3,
            db_error: 0.03,
            pause: 0.5,
        }
    }
}

impl FaultRates {
    /// No faults; pauses still vary interleavings.
    pub fn none() -> Self {
        FaultRates {
            error_before: 0.0,
            error_after: 0.0,
            delay: 0.0,
            hang_before: 0.0,
            hang_after: 0.0,
            restart: 0.0,
            max_restarts: 0,
            bus_error_before: 0.0,
            bus_error_after: 0.0,
            bus_delay: 0.0,
            bus_drop: 0.0,
            bus_subscribe_error: 0.0,
            db_error: 0.0,
            pause: 0.5,
        }
    }

    /// Every fault rate multiplied by `factor` (pauses unchanged).
    pub fn scaled(&self, factor: f64) -> Self {
        let f = |r: f64| (r * factor).clamp(0.0, 1.0);
        FaultRates {
            error_before: f(self.error_before),
            error_after: f(self.error_after),
            delay: f(self.delay),
            hang_before: f(self.hang_before),
            hang_after: f(self.hang_after),
            restart: f(self.restart),
            max_restarts: self.max_restarts,
            bus_error_before: f(self.bus_error_before),
            bus_error_after: f(self.bus_error_after),
            bus_delay: f(self.bus_delay),
            bus_drop: f(self.bus_drop),
            bus_subscribe_error: f(self.bus_subscribe_error),
            db_error: f(self.db_error),
            pause: self.pause,
        }
    }
}

/// A kind of injected fault, as counted and journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// A store call failed before it was applied.
    ErrorBefore,
    /// A store call was applied, then failed.
    ErrorAfter,
    /// A store call was delayed.
    Delay,
    /// A store call hung before it was applied.
    HangBefore,
    /// A store call was applied, then hung.
    HangAfter,
    /// The store restarted empty.
    Restart,
    /// A publish failed before it was sent (bus down, subscriptions reset).
    BusErrorBefore,
    /// A publish was sent, then failed.
    BusErrorAfter,
    /// A publish or delivery was delayed.
    BusDelay,
    /// A subscription lost its connection (gap, then reset).
    BusDrop,
    /// A subscription attempt failed.
    BusSubscribeError,
    /// A database read failed.
    DbError,
}

impl FaultKind {
    const ALL: [FaultKind; 12] = [
        FaultKind::ErrorBefore,
        FaultKind::ErrorAfter,
        FaultKind::Delay,
        FaultKind::HangBefore,
        FaultKind::HangAfter,
        FaultKind::Restart,
        FaultKind::BusErrorBefore,
        FaultKind::BusErrorAfter,
        FaultKind::BusDelay,
        FaultKind::BusDrop,
        FaultKind::BusSubscribeError,
        FaultKind::DbError,
    ];

    fn index(self) -> usize {
        FaultKind::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// How many faults of each kind were injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FaultCounts {
    /// Store calls failed before being applied.
    pub error_before: u64,
    /// Store calls applied, then failed.
    pub error_after: u64,
    /// Store calls delayed.
    pub delay: u64,
    /// Store calls hung before being applied.
    pub hang_before: u64,
    /// Store calls applied, then hung.
    pub hang_after: u64,
    /// Store restarts.
    pub restart: u64,
    /// Publishes failed before being sent.
    pub bus_error_before: u64,
    /// Publishes sent, then failed.
    pub bus_error_after: u64,
    /// Publishes or deliveries delayed.
    pub bus_delay: u64,
    /// Subscription connections dropped.
    pub bus_drop: u64,
    /// Subscription attempts failed.
    pub bus_subscribe_error: u64,
    /// Database reads failed.
    pub db_error: u64,
    /// Pause points that paused (not a fault: how much interleaving was driven).
    pub pauses: u64,
}

impl FaultCounts {
    /// Every fault injected (pauses not included).
    pub fn total(&self) -> u64 {
        self.error_before
            + self.error_after
            + self.delay
            + self.hang_before
            + self.hang_after
            + self.restart
            + self.bus_error_before
            + self.bus_error_after
            + self.bus_delay
            + self.bus_drop
            + self.bus_subscribe_error
            + self.db_error
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &FaultCounts) {
        self.error_before += other.error_before;
        self.error_after += other.error_after;
        self.delay += other.delay;
        self.hang_before += other.hang_before;
        self.hang_after += other.hang_after;
        self.restart += other.restart;
        self.bus_error_before += other.bus_error_before;
        self.bus_error_after += other.bus_error_after;
        self.bus_delay += other.bus_delay;
        self.bus_drop += other.bus_drop;
        self.bus_subscribe_error += other.bus_subscribe_error;
        self.db_error += other.db_error;
        self.pauses += other.pauses;
    }

    fn from_array(counts: &[u64; 12], pauses: u64) -> Self {
        let c = |k: FaultKind| counts[k.index()];
        FaultCounts {
            error_before: c(FaultKind::ErrorBefore),
            error_after: c(FaultKind::ErrorAfter),
            delay: c(FaultKind::Delay),
            hang_before: c(FaultKind::HangBefore),
            hang_after: c(FaultKind::HangAfter),
            restart: c(FaultKind::Restart),
            bus_error_before: c(FaultKind::BusErrorBefore),
            bus_error_after: c(FaultKind::BusErrorAfter),
            bus_delay: c(FaultKind::BusDelay),
            bus_drop: c(FaultKind::BusDrop),
            bus_subscribe_error: c(FaultKind::BusSubscribeError),
            db_error: c(FaultKind::DbError),
            pauses,
        }
    }
}

/// What a publish did, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Sent, and the caller was told so.
    Sent,
    /// Not sent; the caller got an error (and subscriptions a reset).
    LostBefore,
    /// Sent; the caller got an error.
    ErrorAfter,
    /// The inner bus failed on its own.
    InnerError,
}

/// One entry of the plan's journal.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// The [`Clock`] tick when it happened.
    pub seq: u64,
    /// The operation that made the call ([`in_op`]); `None` for the library's background work.
    pub op: Option<u64>,
    /// What happened.
    pub event: JournalEvent,
}

/// What a [`JournalEntry`] records.
#[derive(Debug, Clone)]
pub enum JournalEvent {
    /// A fault injected into a store call.
    Store {
        /// The fault.
        kind: FaultKind,
        /// The `Store` method.
        method: &'static str,
        /// The (first) key of the call.
        key: String,
    },
    /// A publish (every one is journaled, faulty or not).
    Publish {
        /// The publishing bus's instance number.
        instance: usize,
        /// The message.
        message: Invalidation,
        /// What became of it.
        outcome: PublishOutcome,
    },
    /// A call the library made on its own (no operation: a replay, a
    /// delayed delete, a background refresh) that changes an entry:
    /// `invalidate`, `delete`, `incr`, `put_entry`, `set`, `fill`.
    Background {
        /// The `Store` method.
        method: &'static str,
        /// The key.
        key: String,
    },
    /// A store call that was not faulted but never answered its caller:
    /// the engine's timeout gave up on it (a loaded machine), or its caller
    /// was cancelled. Not injected, yet the engine saw a failed call, so the
    /// checker weighs it as a fault.
    Abandoned {
        /// The `Store` method.
        method: &'static str,
        /// The (first) key of the call.
        key: String,
    },
    /// The end of an injected [`FaultKind::Restart`]: its flush has
    /// returned. The restart fell somewhere between its
    /// [`JournalEvent::Store`] entry and this one. The flush runs in a task
    /// of its own, so a caller that gives up on the call does not end the
    /// span early; `completed` is false only when that task was dropped
    /// (its runtime shut down) before the flush returned.
    Restarted {
        /// The tick of the restart's [`JournalEvent::Store`] entry.
        started: u64,
        /// False when the restart's task was dropped before its flush returned.
        completed: bool,
    },
    /// A fault on a subscription of `instance`.
    Delivery {
        /// The subscribing bus's instance number.
        instance: usize,
        /// `BusDelay`, `BusDrop` or `BusSubscribeError`.
        kind: FaultKind,
    },
}

/// What [`FaultPlan`] decided for one store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreFault {
    Pass,
    ErrorBefore,
    ErrorAfter,
    Delay(Duration),
    HangBefore,
    HangAfter,
    Restart,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BusFault {
    Pass,
    Delay(Duration),
    ErrorBefore,
    ErrorAfter,
    Drop,
}

struct PlanInner {
    rates: FaultRates,
    rng: Mutex<StdRng>,
    enabled: AtomicBool,
    pauses: AtomicBool,
    counts: [AtomicU64; 12],
    pause_count: AtomicU64,
    restarts: AtomicU64,
    clock: Clock,
    journal: Mutex<Vec<JournalEntry>>,
    /// Bumped when the bus goes down: every subscription resets.
    outage: watch::Sender<u64>,
}

/// The seeded controller every [`FaultStore`] and [`FaultBus`] of one
/// program shares. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct FaultPlan {
    inner: Arc<PlanInner>,
}

impl std::fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultPlan")
            .field("rates", &self.inner.rates)
            .field("enabled", &self.enabled())
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl FaultPlan {
    /// A plan drawing from `seed`, faults on, with its own clock.
    pub fn new(seed: u64, rates: FaultRates) -> Self {
        Self::with_clock(seed, rates, Clock::new())
    }

    /// A plan drawing from `seed` that journals with `clock`.
    pub fn with_clock(seed: u64, rates: FaultRates, clock: Clock) -> Self {
        FaultPlan {
            inner: Arc::new(PlanInner {
                rates,
                rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eed_fa17_0000_0001)),
                enabled: AtomicBool::new(true),
                pauses: AtomicBool::new(true),
                counts: Default::default(),
                pause_count: AtomicU64::new(0),
                restarts: AtomicU64::new(0),
                clock,
                journal: Mutex::new(Vec::new()),
                outage: watch::channel(0).0,
            }),
        }
    }

    /// The rates this plan draws with.
    pub fn rates(&self) -> &FaultRates {
        &self.inner.rates
    }

    /// The clock of the journal.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Switches fault injection on or off (pauses are separate).
    pub fn set_enabled(&self, on: bool) {
        self.inner.enabled.store(on, Ordering::SeqCst);
    }

    /// True while faults are injected.
    pub fn enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::SeqCst)
    }

    /// Switches pause points on or off.
    pub fn set_pauses(&self, on: bool) {
        self.inner.pauses.store(on, Ordering::SeqCst);
    }

    /// What was injected so far.
    pub fn counts(&self) -> FaultCounts {
        let counts: [u64; 12] = std::array::from_fn(|i| self.inner.counts[i].load(Ordering::Relaxed));
        FaultCounts::from_array(&counts, self.inner.pause_count.load(Ordering::Relaxed))
    }

    /// A copy of the journal: every injected fault and every publish.
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.inner.journal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts one fault of `kind` (for faults injected outside this module,
    /// such as a database error).
    pub fn count(&self, kind: FaultKind) {
        self.inner.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Journals `event` at the next tick, and returns that tick.
    fn journal_push(&self, event: JournalEvent) -> u64 {
        let seq = self.inner.clock.tick();
        let entry = JournalEntry {
            seq,
            op: current_op(),
            event,
        };
        self.inner.journal.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
        seq
    }

    fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut self.inner.rng.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// True with probability `rate`, when faults are on (draws either way).
    pub fn draw(&self, rate: f64) -> bool {
        let hit = self.with_rng(|rng| rng.random_bool(rate.clamp(0.0, 1.0)));
        hit && self.enabled()
    }

    /// A seeded number in `range`, for callers that vary their own timing.
    pub fn random_range(&self, range: std::ops::Range<u64>) -> u64 {
        if range.is_empty() {
            return range.start;
        }
        self.with_rng(|rng| rng.random_range(range))
    }

    /// True if a database read should fail now (counted as [`FaultKind::DbError`]).
    pub fn db_fault(&self) -> bool {
        let fail = self.draw(self.inner.rates.db_error);
        if fail {
            self.count(FaultKind::DbError);
        }
        fail
    }

    /// A pause point: nothing, a seeded number of `yield_now`s, or a 1-2 ms sleep.
    pub async fn pause(&self) {
        if !self.inner.pauses.load(Ordering::Relaxed) {
            return;
        }
        let (pause, yields, sleep) = self.with_rng(|rng| {
            (
                rng.random_bool(self.inner.rates.pause.clamp(0.0, 1.0)),
                rng.random_range(1..=4u32),
                rng.random_bool(0.15),
            )
        });
        if !pause {
            return;
        }
        self.inner.pause_count.fetch_add(1, Ordering::Relaxed);
        if sleep {
            tokio::time::sleep(Duration::from_millis(u64::from(yields % 2 + 1))).await;
        } else {
            for _ in 0..yields {
                tokio::task::yield_now().await;
            }
        }
    }

    fn store_fault(&self, can_restart: bool) -> StoreFault {
        if !self.enabled() {
            return StoreFault::Pass;
        }
        let r = &self.inner.rates;
        let (roll, delay_us) = self.with_rng(|rng| (rng.random::<f64>(), rng.random_range(0..=5_000u64)));
        let mut edge = 0.0;
        let mut next = |rate: f64| {
            edge += rate;
            roll < edge
        };
        if next(r.error_before) {
            StoreFault::ErrorBefore
        } else if next(r.error_after) {
            StoreFault::ErrorAfter
        } else if next(r.hang_before) {
            StoreFault::HangBefore
        } else if next(r.hang_after) {
            StoreFault::HangAfter
        } else if next(r.restart) {
            let allowed = can_restart
                && self
                    .inner
                    .restarts
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                        (n < u64::from(r.max_restarts)).then_some(n + 1)
                    })
                    .is_ok();
            if allowed { StoreFault::Restart } else { StoreFault::Pass }
        } else if next(r.delay) {
            StoreFault::Delay(Duration::from_micros(delay_us))
        } else {
            StoreFault::Pass
        }
    }

    fn publish_fault(&self) -> BusFault {
        if !self.enabled() {
            return BusFault::Pass;
        }
        let r = &self.inner.rates;
        let (roll, delay_us) = self.with_rng(|rng| (rng.random::<f64>(), rng.random_range(0..=5_000u64)));
        if roll < r.bus_error_before {
            BusFault::ErrorBefore
        } else if roll < r.bus_error_before + r.bus_error_after {
            BusFault::ErrorAfter
        } else if roll < r.bus_error_before + r.bus_error_after + r.bus_delay {
            BusFault::Delay(Duration::from_micros(delay_us))
        } else {
            BusFault::Pass
        }
    }

    fn delivery_fault(&self) -> BusFault {
        if !self.enabled() {
            return BusFault::Pass;
        }
        let r = &self.inner.rates;
        let (roll, delay_us) = self.with_rng(|rng| (rng.random::<f64>(), rng.random_range(0..=5_000u64)));
        if roll < r.bus_drop {
            BusFault::Drop
        } else if roll < r.bus_drop + r.bus_delay {
            BusFault::Delay(Duration::from_micros(delay_us))
        } else {
            BusFault::Pass
        }
    }

    /// Takes the bus down for a moment: every subscription of every
    /// [`FaultBus`] of this plan loses what is queued and gets a reset.
    pub fn bus_outage(&self) {
        self.inner.outage.send_modify(|n| *n += 1);
    }
}

/// Restarts a store empty: returns the store to use from now on (a fresh
/// `MemoryStore`), or `None` to keep the current one (the callback emptied
/// the server behind it, e.g. `FLUSHALL` or a memcached restart).
pub type RestartFn = Arc<dyn Fn() -> BoxFuture<'static, Option<Arc<dyn Store>>> + Send + Sync>;

/// A [`Store`] that injects the faults of its [`FaultPlan`] around an inner store.
pub struct FaultStore {
    /// Shared with the tasks that run drawn restarts (see `run`).
    inner: Arc<RwLock<Arc<dyn Store>>>,
    name: &'static str,
    plan: FaultPlan,
    restart: Option<RestartFn>,
    restart_lock: Arc<tokio::sync::Mutex<()>>,
    in_flight: Arc<AtomicUsize>,
    calls: AtomicU64,
    /// [`FaultStore::with_shared_reads`].
    shared_reads: bool,
}

impl std::fmt::Debug for FaultStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultStore")
            .field("inner", &self.name)
            .field("calls", &self.calls())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// Decrements the in-flight count when a call ends or is dropped.
struct InFlight(Arc<AtomicUsize>);

/// Journals [`JournalEvent::Abandoned`] for a call dropped before it answered.
struct AbandonedUnlessAnswered<'a> {
    plan: &'a FaultPlan,
    method: &'static str,
    key: &'a str,
    answered: bool,
}

impl Drop for AbandonedUnlessAnswered<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.plan.journal_push(JournalEvent::Abandoned {
                method: self.method,
                key: self.key.to_owned(),
            });
        }
    }
}

/// Journals the end of a restart's span ([`JournalEvent::Restarted`]),
/// when its flush returns, or when its task is dropped before that (the
/// runtime shut down).
struct RestartEnd<'a> {
    plan: &'a FaultPlan,
    started: u64,
    completed: bool,
}

impl Drop for RestartEnd<'_> {
    fn drop(&mut self) {
        self.plan.journal_push(JournalEvent::Restarted {
            started: self.started,
            completed: self.completed,
        });
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FaultStore {
    /// Wraps `inner`; without [`FaultStore::with_restart`] no restart is injected.
    pub fn new(inner: Arc<dyn Store>, plan: FaultPlan) -> Self {
        FaultStore {
            name: inner.name(),
            inner: Arc::new(RwLock::new(inner)),
            plan,
            restart: None,
            restart_lock: Arc::new(tokio::sync::Mutex::new(())),
            in_flight: Arc::new(AtomicUsize::new(0)),
            calls: AtomicU64::new(0),
            shared_reads: false,
        }
    }

    /// Passes the inner store's synchronous reads through
    /// ([`Store::shares_decoded`], [`Store::peek_shared`],
    /// [`Store::get_shared`]), so that over a `MemoryStore` reads take the
    /// hit path a plain `MemoryStore` gives. Those reads draw no fault and
    /// have no pause point: a store that shares decoded values must answer
    /// every key (a batch reads a `None` as a miss), and a call in process
    /// has nothing to delay or lose. The history campaigns turn it on for
    /// half of their programs (`+shared-reads` in a program's label), so
    /// store reads still meet faults in the other half.
    ///
    /// Off by default: every read is then an async call that draws its
    /// fault, as over a store on the network.
    pub fn with_shared_reads(mut self) -> Self {
        self.shared_reads = true;
        self
    }

    /// A fresh [`aside::MemoryStore`] whose restart swaps in another fresh one.
    pub fn memory(plan: FaultPlan) -> Self {
        let restart: RestartFn =
            Arc::new(|| Box::pin(async { Some(Arc::new(aside::MemoryStore::new()) as Arc<dyn Store>) }));
        Self::new(Arc::new(aside::MemoryStore::new()), plan).with_restart(restart)
    }

    /// Lets the plan restart the store with `restart`.
    pub fn with_restart(mut self, restart: RestartFn) -> Self {
        self.restart = Some(restart);
        self
    }

    /// The store behind the faults (the current one, after restarts).
    pub fn inner(&self) -> Arc<dyn Store> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Calls running now (including hung ones not yet given up on).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The plan this store draws from.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Restarts the store empty now (a restart the plan draws is counted as
    /// [`FaultKind::Restart`]; this call is not); does nothing without a restart.
    pub async fn restart(&self) {
        if let Some(restart) = self.restart_task() {
            restart.await;
        }
    }

    /// A restart as a future that owns what it needs (`None` without a
    /// restart), so that it can run detached from the call that drew it.
    fn restart_task(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let restart = self.restart.clone()?;
        let (inner, lock) = (self.inner.clone(), self.restart_lock.clone());
        Some(async move {
            let _one_at_a_time = lock.lock().await;
            if let Some(fresh) = restart().await {
                *inner.write().unwrap_or_else(|e| e.into_inner()) = fresh;
            }
        })
    }

    async fn run<T, F, Fut>(&self, method: &'static str, key: &str, call: F) -> StoreResult<T>
    where
        F: FnOnce(Arc<dyn Store>) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight(self.in_flight.clone());
        self.plan.pause().await;
        let fault = self.plan.store_fault(self.restart.is_some());
        let kind = match fault {
            StoreFault::Pass => None,
            StoreFault::ErrorBefore => Some(FaultKind::ErrorBefore),
            StoreFault::ErrorAfter => Some(FaultKind::ErrorAfter),
            StoreFault::Delay(_) => Some(FaultKind::Delay),
            StoreFault::HangBefore => Some(FaultKind::HangBefore),
            StoreFault::HangAfter => Some(FaultKind::HangAfter),
            StoreFault::Restart => Some(FaultKind::Restart),
        };
        if kind.is_none()
            && current_op().is_none()
            && matches!(method, "invalidate" | "delete" | "incr" | "put_entry" | "set" | "fill")
        {
            self.plan.journal_push(JournalEvent::Background {
                method,
                key: key.to_owned(),
            });
        }
        let mut journaled_at = 0;
        if let Some(kind) = kind {
            self.plan.count(kind);
            journaled_at = self.plan.journal_push(JournalEvent::Store {
                kind,
                method,
                key: key.to_owned(),
            });
        }
        let mut abandoned = AbandonedUnlessAnswered {
            plan: &self.plan,
            method,
            key,
            // A hang is journaled as the fault it is.
            answered: matches!(fault, StoreFault::HangBefore | StoreFault::HangAfter),
        };
        let result = match fault {
            StoreFault::Pass => call(self.inner()).await,
            StoreFault::Delay(d) => {
                tokio::time::sleep(d).await;
                call(self.inner()).await
            }
            StoreFault::ErrorBefore => Err(StoreError::connection(format!(
                "injected: {method} failed before it was applied"
            ))),
            StoreFault::ErrorAfter => {
                let _ = call(self.inner()).await;
                Err(StoreError::connection(format!(
                    "injected: {method} applied, reply lost"
                )))
            }
            StoreFault::HangBefore => futures::future::pending().await,
            StoreFault::HangAfter => {
                let _ = call(self.inner()).await;
                futures::future::pending().await
            }
            StoreFault::Restart => {
                // The flush lands at some point before the restart returns
                // (over a new connection it may take milliseconds), so the
                // restart is a span in the journal, not a point. It runs in
                // a task of its own, which journals the span's end when the
                // flush has returned: a caller that gives up on this call
                // (the engine's timeout, a cancelled read) does not stop a
                // flush already sent, and the span must not end before it.
                // Counted in flight until the flush returns, so that
                // quiescence waits for it and no flush lands in the checks
                // or the next program.
                let plan = self.plan.clone();
                let restart = self.restart_task();
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                let in_flight = InFlight(self.in_flight.clone());
                let flush = tokio::spawn(async move {
                    let _in_flight = in_flight;
                    let mut end = RestartEnd {
                        plan: &plan,
                        started: journaled_at,
                        completed: false,
                    };
                    if let Some(restart) = restart {
                        restart.await;
                    }
                    end.completed = true;
                });
                let _ = flush.await;
                call(self.inner()).await
            }
        };
        abandoned.answered = true;
        self.plan.pause().await;
        result
    }
}

#[async_trait]
impl Store for FaultStore {
    fn name(&self) -> &'static str {
        self.name
    }

    /// Never local: the engine must apply its timeout and breaker, even over a `MemoryStore`.
    fn is_local(&self) -> bool {
        false
    }

    /// The inner store's with [`FaultStore::with_shared_reads`], else false.
    fn shares_decoded(&self) -> bool {
        self.shared_reads && self.inner().shares_decoded()
    }

    fn supports_plain_values(&self) -> bool {
        self.inner().supports_plain_values()
    }

    /// Forwarded with [`FaultStore::with_shared_reads`], without a fault
    /// (see there); else `None`, so the read takes the async path.
    fn peek_shared(&self, key: &str, decode: Decoder<'_>) -> Option<SharedView> {
        if !self.shared_reads {
            return None;
        }
        self.inner().peek_shared(key, decode)
    }

    /// As [`Store::peek_shared`].
    fn get_shared(&self, key: &str, decode: Decoder<'_>) -> Option<SharedView> {
        if !self.shared_reads {
            return None;
        }
        self.inner().get_shared(key, decode)
    }

    fn adopt_decoded(&self, key: &str, bytes: &Bytes, decode: Decoder<'_>) {
        if self.shared_reads {
            self.inner().adopt_decoded(key, bytes, decode);
        }
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        self.run("get", key, |s| async move { s.get(key).await }).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.run("set", key, |s| async move { s.set(key, value, ttl).await })
            .await
    }

    async fn add(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<bool> {
        self.run("add", key, |s| async move { s.add(key, value, ttl).await })
            .await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.run("delete", key, |s| async move { s.delete(key).await }).await
    }

    async fn incr(&self, key: &str, ttl: Duration) -> StoreResult<u64> {
        self.run("incr", key, |s| async move { s.incr(key, ttl).await }).await
    }

    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView> {
        self.run("peek_entry", key, |s| async move { s.peek_entry(key).await })
            .await
    }

    async fn get_entry(&self, key: &str) -> StoreResult<Option<(Bytes, bool)>> {
        self.run("get_entry", key, |s| async move { s.get_entry(key).await })
            .await
    }

    async fn lookup_or_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<LeaseOutcome> {
        self.run("lookup_or_lease", key, |s| async move {
            s.lookup_or_lease(key, token, lease_ttl).await
        })
        .await
    }

    async fn lease_for_refresh(
        &self,
        key: &str,
        token: LeaseToken,
        lease_ttl: Duration,
    ) -> StoreResult<Option<LeaseToken>> {
        self.run("lease_for_refresh", key, |s| async move {
            s.lease_for_refresh(key, token, lease_ttl).await
        })
        .await
    }

    async fn fill(&self, key: &str, token: LeaseToken, value: Bytes, ttl: Duration) -> StoreResult<FillOutcome> {
        self.run("fill", key, |s| async move { s.fill(key, token, value, ttl).await })
            .await
    }

    /// Forwarded without faults: a lost notification is covered by the
    /// engine's fallback polling, and a watch is no store round trip.
    fn watch_fill(&self, key: &str) -> Option<FillWatch> {
        self.inner().watch_fill(key)
    }

    async fn release(&self, key: &str, token: LeaseToken) -> StoreResult<()> {
        self.run("release", key, |s| async move { s.release(key, token).await })
            .await
    }

    async fn put_entry(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.run("put_entry", key, |s| async move { s.put_entry(key, value, ttl).await })
            .await
    }

    fn supports_versioned_writes(&self) -> bool {
        self.inner().supports_versioned_writes()
    }

    fn supports_fences(&self) -> bool {
        self.inner().supports_fences()
    }

    async fn take_fence(&self, key: &str, token: LeaseToken, ttl: Duration) -> StoreResult<bool> {
        self.run(
            "take_fence",
            key,
            |s| async move { s.take_fence(key, token, ttl).await },
        )
        .await
    }

    async fn put_entry_if_newer(&self, put: VersionedPut) -> StoreResult<bool> {
        let key = put.key.clone();
        self.run("put_entry_if_newer", &key, |s| async move {
            s.put_entry_if_newer(put).await
        })
        .await
    }

    async fn invalidate_if_newer(
        &self,
        key: &str,
        mark_key: &str,
        version: u64,
        mark_ttl: Duration,
    ) -> StoreResult<()> {
        self.run("invalidate_if_newer", key, |s| async move {
            s.invalidate_if_newer(key, mark_key, version, mark_ttl).await
        })
        .await
    }

    async fn invalidate(&self, key: &str, keep_stale: Option<Duration>) -> StoreResult<()> {
        self.run(
            "invalidate",
            key,
            |s| async move { s.invalidate(key, keep_stale).await },
        )
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.run("ping", "", |s| async move { s.ping().await }).await
    }

    async fn get_many(&self, keys: &[String]) -> StoreResult<Vec<Option<Bytes>>> {
        let first = keys.first().map_or("", String::as_str);
        self.run("get_many", first, |s| async move { s.get_many(keys).await })
            .await
    }

    async fn peek_many(&self, keys: &[String]) -> StoreResult<Vec<EntryView>> {
        let first = keys.first().map_or("", String::as_str);
        self.run("peek_many", first, |s| async move { s.peek_many(keys).await })
            .await
    }

    async fn lookup_or_lease_many(
        &self,
        keys: &[(String, LeaseToken)],
        lease_ttl: Duration,
    ) -> StoreResult<Vec<LeaseOutcome>> {
        let first = keys.first().map_or("", |(k, _)| k.as_str());
        self.run("lookup_or_lease_many", first, |s| async move {
            s.lookup_or_lease_many(keys, lease_ttl).await
        })
        .await
    }

    async fn fill_many(&self, fills: Vec<Fill>) -> StoreResult<Vec<FillOutcome>> {
        let first = fills.first().map(|f| f.key.clone()).unwrap_or_default();
        self.run("fill_many", &first, |s| async move { s.fill_many(fills).await })
            .await
    }

    async fn set_many(&self, items: Vec<(String, Bytes, Duration)>) -> StoreResult<()> {
        let first = items.first().map(|(k, _, _)| k.clone()).unwrap_or_default();
        self.run("set_many", &first, |s| async move { s.set_many(items).await })
            .await
    }
}

/// An in-process [`Bus`] on a tokio broadcast channel: every subscription
/// gets every message published after it subscribed. Clones share the
/// channel, so one `MemoryBus` serves every `Aside` of a test.
#[derive(Clone)]
pub struct MemoryBus {
    tx: broadcast::Sender<Invalidation>,
    drops: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("subscribers", &self.tx.receiver_count())
            .finish()
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    /// A bus with nobody subscribed.
    pub fn new() -> Self {
        MemoryBus {
            tx: broadcast::channel(4096).0,
            drops: Arc::new(watch::channel(0).0),
        }
    }

    /// Drops every subscription's connection: what is queued is lost (a
    /// gap), then each delivers [`BusEvent::Reset`], as after a reconnect.
    pub fn drop_connections(&self) {
        self.drops.send_modify(|n| *n += 1);
    }
}

/// Forwards `event` unless the subscriber is gone; false when it is.
async fn forward(tx: &mpsc::Sender<BusEvent>, event: BusEvent) -> bool {
    tx.send(event).await.is_ok()
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        // Nobody subscribed is fine: the message is simply not delivered.
        let _ = self.tx.send(message.clone());
        Ok(())
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<BusEvent>, StoreError> {
        let mut messages = self.tx.subscribe();
        let mut drops = self.drops.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // The subscriber gone, so is this task: see `FaultBus::subscribe`.
                    () = tx.closed() => return,
                    received = messages.recv() => {
                        let event = match received {
                            Ok(message) => BusEvent::Invalidation(message),
                            Err(broadcast::error::RecvError::Lagged(_)) => BusEvent::Reset,
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        if !forward(&tx, event).await {
                            return;
                        }
                    }
                    changed = drops.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        while messages.try_recv().is_ok() {}
                        if !forward(&tx, BusEvent::Reset).await {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// A [`Bus`] that delivers nothing and keeps the sending end of every
/// subscription, so a test can tell whether each receiver is still held:
/// whether whoever subscribed let go of the subscription once gone, with
/// no message to find it out by (issue 15).
#[derive(Clone, Default)]
pub struct SilentBus {
    senders: Arc<Mutex<Vec<mpsc::Sender<BusEvent>>>>,
}

impl std::fmt::Debug for SilentBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SilentBus")
            .field("subscriptions", &self.subscriptions())
            .finish()
    }
}

impl SilentBus {
    /// Subscriptions made, and how many of their receivers are still held.
    pub fn subscriptions(&self) -> (usize, usize) {
        let senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        (senders.len(), senders.iter().filter(|tx| !tx.is_closed()).count())
    }

    /// Waits until `subscribed` subscriptions were made and none of their
    /// receivers is held any more.
    ///
    /// # Panics
    /// After 10 s, naming `what`.
    pub async fn until_let_go(&self, subscribed: usize, what: &str) {
        crate::eventually(what, Duration::from_secs(10), || async {
            self.subscriptions() == (subscribed, 0)
        })
        .await;
    }
}

#[async_trait]
impl Bus for SilentBus {
    async fn publish(&self, _: &Invalidation) -> Result<(), StoreError> {
        Ok(())
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<BusEvent>, StoreError> {
        let (tx, rx) = mpsc::channel(16);
        self.senders.lock().unwrap_or_else(|e| e.into_inner()).push(tx);
        Ok(rx)
    }
}

/// A [`Bus`] that injects the bus faults of its [`FaultPlan`] around an
/// inner bus, for one instance (`instance` numbers its journal entries).
///
/// Its subscriptions forward the inner bus's events in order, delayed or
/// with a dropped connection as the plan says, and deliver a
/// [`RESET_MARKER`] message after every [`BusEvent::Reset`].
#[derive(Clone)]
pub struct FaultBus {
    inner: Arc<dyn Bus>,
    plan: FaultPlan,
    instance: usize,
}

impl std::fmt::Debug for FaultBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultBus")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl FaultBus {
    /// Wraps `inner` for instance number `instance`.
    pub fn new(inner: Arc<dyn Bus>, plan: FaultPlan, instance: usize) -> Self {
        FaultBus { inner, plan, instance }
    }

    /// The instance number this bus journals under.
    pub fn instance(&self) -> usize {
        self.instance
    }
}

/// The marker delivered after a reset.
fn reset_marker() -> BusEvent {
    BusEvent::Invalidation(Invalidation::new(RESET_MARKER, Vec::new(), 0))
}

/// Discards what the inner subscription has queued (a gap), then delivers a
/// reset and its marker; false when the subscriber is gone.
async fn gap_then_reset(inner: &mut mpsc::Receiver<BusEvent>, tx: &mpsc::Sender<BusEvent>) -> bool {
    while inner.try_recv().is_ok() {}
    forward(tx, BusEvent::Reset).await && forward(tx, reset_marker()).await
}

#[async_trait]
impl Bus for FaultBus {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        self.plan.pause().await;
        let fault = self.plan.publish_fault();
        let result = match fault {
            BusFault::Pass | BusFault::Drop => self.inner.publish(message).await,
            BusFault::Delay(d) => {
                self.plan.count(FaultKind::BusDelay);
                tokio::time::sleep(d).await;
                self.inner.publish(message).await
            }
            BusFault::ErrorBefore => {
                self.plan.count(FaultKind::BusErrorBefore);
                Err(StoreError::connection("injected: bus down, message not published"))
            }
            BusFault::ErrorAfter => {
                self.plan.count(FaultKind::BusErrorAfter);
                let _ = self.inner.publish(message).await;
                Err(StoreError::connection("injected: published, reply lost"))
            }
        };
        let outcome = match (fault, &result) {
            (BusFault::ErrorBefore, _) => PublishOutcome::LostBefore,
            (BusFault::ErrorAfter, _) => PublishOutcome::ErrorAfter,
            (_, Ok(())) => PublishOutcome::Sent,
            (_, Err(_)) => PublishOutcome::InnerError,
        };
        self.plan.journal_push(JournalEvent::Publish {
            instance: self.instance,
            message: message.clone(),
            outcome,
        });
        if fault == BusFault::ErrorBefore {
            // The bus was down: subscribers reconnect and reset.
            self.plan.bus_outage();
        }
        self.plan.pause().await;
        result
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<BusEvent>, StoreError> {
        if self.plan.draw(self.plan.rates().bus_subscribe_error) {
            self.plan.count(FaultKind::BusSubscribeError);
            self.plan.journal_push(JournalEvent::Delivery {
                instance: self.instance,
                kind: FaultKind::BusSubscribeError,
            });
            return Err(StoreError::connection("injected: subscription refused"));
        }
        let mut inner = self.inner.subscribe().await?;
        let (tx, rx) = mpsc::channel(1024);
        let plan = self.plan.clone();
        let instance = self.instance;
        let mut outage = plan.inner.outage.subscribe();
        tokio::spawn(async move {
            let mut outage_open = true;
            loop {
                tokio::select! {
                    // The subscriber gone (its `Aside` dropped), this task ends
                    // at once and drops the inner subscription, which ends the
                    // transport's. Waiting for the next message to find out
                    // kept the task, the program's whole `FaultPlan` (journal
                    // included) and a Redis pub/sub connection alive for good
                    // on a quiet per-program channel (issue 15).
                    () = tx.closed() => return,
                    received = inner.recv() => {
                        let Some(event) = received else { return };
                        let alive = match (plan.delivery_fault(), event) {
                            (_, BusEvent::Reset) => forward(&tx, BusEvent::Reset).await && forward(&tx, reset_marker()).await,
                            (BusFault::Drop, _) => {
                                plan.count(FaultKind::BusDrop);
                                plan.journal_push(JournalEvent::Delivery { instance, kind: FaultKind::BusDrop });
                                gap_then_reset(&mut inner, &tx).await
                            }
                            (BusFault::Delay(d), event) => {
                                plan.count(FaultKind::BusDelay);
                                tokio::time::sleep(d).await;
                                forward(&tx, event).await
                            }
                            (_, event) => forward(&tx, event).await,
                        };
                        if !alive {
                            return;
                        }
                    }
                    changed = outage.changed(), if outage_open => {
                        if changed.is_err() {
                            outage_open = false;
                        } else if !gap_then_reset(&mut inner, &tx).await {
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}
