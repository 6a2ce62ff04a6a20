//! The bounded queue of invalidations that could not reach the store.
//!
//! Owns remembering failed invalidations, telling the read path which keys
//! must bypass the store until theirs is applied, replaying them once the
//! store answers again, publishing each replayed one on the bus, and
//! draining them on a graceful shutdown. An invalidation is never forgotten
//! silently: when the queue is full (past its bound in entries or in bytes)
//! the oldest ones are dropped, counted and logged; so are those a shutdown
//! could not replay in time. The queue
//! lives in memory only: a process that crashes loses what it holds, and
//! those keys stay stale until their TTL.
//!
//! The queue keeps one pending operation per key: a later invalidation of
//! the same key subsumes an earlier one. Every push gets a sequence number,
//! and a replay completes an entry only if it still carries the sequence
//! number that was replayed: an invalidation that failed *while* its key's
//! older one was being replayed merges into the entry under a new number
//! and stays queued for the next round (two equal operations of two
//! invalidations are otherwise indistinguishable, and the newer one was
//! lost). The replay order is a queue of `(key, sequence)`; entries whose
//! sequence is no longer the key's are skipped, and compacted away once
//! they outnumber the live ones, so completing an entry costs O(1)
//! amortised instead of a scan of the whole order.
//!
//! The byte bound counts what a live entry holds: its store key twice (the
//! map's key and its order item), its full key, its namespace's name, and
//! [`ENTRY_OVERHEAD`] for the map slot, the order item and the allocations'
//! headers. Stale order items are not counted: compaction keeps them fewer
//! than twice the live entries (plus 64), so the memory held stays within a
//! small multiple of the bound.
//!
//! One worker task (spawned on the first failure, so building an `Aside`
//! needs no runtime) waits on a `Notify`, then probes the store with
//! exponential backoff and replays in order. The worker runs on the runtime
//! of the call that started it; if that runtime is shut down (a
//! `#[tokio::test]`, a short-lived runtime of the user's), the task is gone
//! with it while the queue survives, so every push checks the worker's
//! handle and starts a new one on the current runtime when the old one
//! has finished.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Core;
use crate::bus::Invalidation;
use crate::metrics::Event;

/// A write that must reach the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PendingOp {
    /// Delete the value and revoke leases (keeping a stale copy if asked).
    Invalidate { keep_stale: Option<Duration> },
    /// Delete a plain key.
    Delete,
    /// Bump a version counter.
    Incr { ttl: Duration },
    /// Delete the value, revoke leases and raise the key's write mark to
    /// `version` (`Store::invalidate_if_newer`): the fallback of a
    /// versioned write that failed.
    InvalidateIfNewer { version: u64, mark_ttl: Duration },
}

impl PendingOp {
    /// What one queued slot must do when `next` is pushed onto `self` for
    /// the same key: `next`, except that a raised write mark is never
    /// forgotten (a plain invalidation does what a versioned one does
    /// but raise the mark, so the versioned one covers both).
    fn merged(self, next: PendingOp) -> PendingOp {
        match (self, next) {
            (
                PendingOp::InvalidateIfNewer { version, mark_ttl },
                PendingOp::InvalidateIfNewer {
                    version: next_version,
                    mark_ttl: next_ttl,
                },
            ) => PendingOp::InvalidateIfNewer {
                version: version.max(next_version),
                mark_ttl: mark_ttl.max(next_ttl),
            },
            (versioned @ PendingOp::InvalidateIfNewer { .. }, PendingOp::Invalidate { .. }) => versioned,
            (_, next) => next,
        }
    }
}

/// One queued invalidation of a store key.
#[derive(Debug, Clone)]
struct Slot {
    op: PendingOp,
    /// The push that wrote this slot last (see the module documentation).
    seq: u64,
    /// The namespace's name and the full key of the entry, for the bus
    /// message and the local L1s once replayed (the store key differs for
    /// `Versioned`: it is the version counter).
    namespace: Arc<str>,
    full: String,
}

/// Bytes counted per live entry besides its keys and namespace name: the
/// map slot (a `String`, a `Slot`, the hash table's control byte), the
/// order item (a `String` and a sequence number) and the allocators'
/// headers of the three strings and the namespace's `Arc`.
pub(crate) const ENTRY_OVERHEAD: usize = 160;

/// What one live entry of store key `key` costs against the byte bound.
fn entry_bytes(key: &str, slot: &Slot) -> usize {
    2 * key.len() + slot.full.len() + slot.namespace.len() + ENTRY_OVERHEAD
}

/// The two bounds of a [`RetryQueue`]; past either, the oldest live entries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryBounds {
    /// Most live entries (at least 1).
    pub(crate) entries: usize,
    /// Most bytes held by live entries, counted by `entry_bytes`. The newest
    /// entry is kept even when it alone is larger.
    pub(crate) bytes: usize,
}

/// Which bound made a push drop an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    Entries,
    Bytes,
}

impl Overflow {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Overflow::Entries => "entries",
            Overflow::Bytes => "bytes",
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    slots: HashMap<String, Slot>,
    /// Bytes the live entries hold, as `entry_bytes` counts them.
    bytes: usize,
    /// Replay order; an item whose sequence is not its key's slot's is stale.
    order: VecDeque<(String, u64)>,
    next_seq: u64,
}

impl Pending {
    fn is_live(&self, key: &str, seq: u64) -> bool {
        self.slots.get(key).is_some_and(|s| s.seq == seq)
    }

    /// Removes the live entry of `key`, keeping the byte count.
    fn remove(&mut self, key: &str) {
        if let Some(slot) = self.slots.remove(key) {
            self.bytes -= entry_bytes(key, &slot);
        }
    }

    /// Inserts (or replaces) the entry of `key`, keeping the byte count.
    fn insert(&mut self, key: &str, slot: Slot) {
        self.bytes += entry_bytes(key, &slot);
        if let Some(old) = self.slots.insert(key.to_owned(), slot) {
            self.bytes -= entry_bytes(key, &old);
        }
    }

    /// Which bound the live entries exceed, if any; one entry never does.
    fn overflow(&self, bounds: RetryBounds) -> Option<Overflow> {
        if self.slots.len() > bounds.entries {
            Some(Overflow::Entries)
        } else if self.bytes > bounds.bytes && self.slots.len() > 1 {
            Some(Overflow::Bytes)
        } else {
            None
        }
    }

    /// Drops stale order items once they are the majority: amortised O(1) per push.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.slots.len() + 64 {
            let slots = &self.slots;
            self.order
                .retain(|(key, seq)| slots.get(key).is_some_and(|s| s.seq == *seq));
        }
    }
}

/// One entry as a replay sees it.
#[derive(Debug, Clone)]
struct Queued {
    key: String,
    seq: u64,
    slot: Slot,
}

#[derive(Debug)]
pub(crate) struct RetryQueue {
    bounds: RetryBounds,
    pending: Mutex<Pending>,
    len: AtomicUsize,
    wake: Notify,
    /// The replay worker, if one was started; replaced when it has finished
    /// (its runtime was shut down).
    worker: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Entries replayed so far, by the worker or a shutdown.
    replayed: AtomicU64,
    /// Held by a replay round: one at a time. A shutdown's drain and the
    /// worker would otherwise both walk the same entries, sending every
    /// invalidation to the store twice and fighting over `pending`.
    replaying: tokio::sync::Mutex<()>,
}

impl RetryQueue {
    pub(crate) fn new(bounds: RetryBounds) -> Self {
        RetryQueue {
            bounds: RetryBounds {
                entries: bounds.entries.max(1),
                bytes: bounds.bytes,
            },
            pending: Mutex::new(Pending::default()),
            len: AtomicUsize::new(0),
            wake: Notify::new(),
            worker: Mutex::new(None),
            closed: AtomicBool::new(false),
            replayed: AtomicU64::new(0),
            replaying: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// True when `key` has an invalidation waiting: its cached copy may be
    /// stale, so reads must neither serve it nor fill it. Costs one atomic
    /// load while the queue is empty.
    pub(crate) fn is_pending(&self, key: &str) -> bool {
        self.len() != 0 && self.lock().slots.contains_key(key)
    }

    /// Queues `op` for the store key `key` (the entry `full` of
    /// `namespace`); returns the keys the push dropped, oldest first, with
    /// the bound each overflowed (none while the queue is within both).
    pub(crate) fn push(
        self: &Arc<Self>,
        core: &Arc<Core>,
        namespace: &str,
        full: &str,
        key: &str,
        op: PendingOp,
    ) -> Vec<(String, Overflow)> {
        let dropped = {
            let mut pending = self.lock();
            let seq = pending.next_seq;
            pending.next_seq += 1;
            let op = match pending.slots.get(key) {
                Some(queued) => queued.op.merged(op),
                None => op,
            };
            let slot = Slot {
                op,
                seq,
                namespace: Arc::from(namespace),
                full: full.to_owned(),
            };
            pending.insert(key, slot);
            pending.order.push_back((key.to_owned(), seq));
            let mut dropped = Vec::new();
            while let Some(overflow) = pending.overflow(self.bounds) {
                let Some((old, seq)) = pending.order.pop_front() else {
                    break;
                };
                if pending.is_live(&old, seq) {
                    pending.remove(&old);
                    dropped.push((old, overflow));
                }
            }
            pending.compact();
            self.len.store(pending.slots.len(), Ordering::Release);
            dropped
        };
        self.ensure_worker(core);
        self.wake.notify_one();
        dropped
    }

    /// Starts the replay worker on the current runtime unless one is
    /// running; a worker whose runtime was shut down has finished, and is
    /// replaced. Outside a runtime nothing starts (the next push or a
    /// shutdown replays).
    fn ensure_worker(self: &Arc<Self>, core: &Arc<Core>) {
        let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if worker.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("invalidation replay not started: no Tokio runtime here; it starts on the next failure");
            return;
        };
        *worker = Some(runtime.spawn(replay_worker(Arc::downgrade(core), self.clone())));
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn snapshot(&self) -> Vec<Queued> {
        let pending = self.lock();
        pending
            .order
            .iter()
            .filter_map(|(key, seq)| {
                let slot = pending.slots.get(key).filter(|s| s.seq == *seq)?;
                Some(Queued {
                    key: key.clone(),
                    seq: *seq,
                    slot: slot.clone(),
                })
            })
            .collect()
    }

    /// Removes `key` if it still holds the push `seq` that was replayed (a
    /// newer invalidation of the key stays, for the next round); true if
    /// it did.
    fn complete(&self, key: &str, seq: u64) -> bool {
        let mut pending = self.lock();
        let done = pending.is_live(key, seq);
        if done {
            pending.remove(key);
            pending.compact();
        }
        self.len.store(pending.slots.len(), Ordering::Release);
        done
    }

    /// Empties the queue, returning what it held (a shutdown out of time).
    fn take_all(&self) -> Vec<Queued> {
        let taken = self.snapshot();
        let mut pending = self.lock();
        pending.slots.clear();
        pending.order.clear();
        pending.bytes = 0;
        self.len.store(0, Ordering::Release);
        taken
    }

    pub(crate) fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Acquire)
    }

    /// Bytes the live entries hold now, as the byte bound counts them.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

async fn replay_worker(core: Weak<Core>, queue: Arc<RetryQueue>) {
    loop {
        if queue.len() == 0 {
            queue.wake.notified().await;
        }
        if queue.closed.load(Ordering::Acquire) {
            return;
        }
        let mut backoff = FIRST_BACKOFF;
        while queue.len() != 0 {
            let Some(core) = core.upgrade() else { return };
            if replay_once(&core, &queue).await {
                backoff = FIRST_BACKOFF;
                continue;
            }
            drop(core);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Replays what is queued, in order, then tells every L1 (this process's
/// and, on the bus, the others') to drop the replayed keys; false if the
/// store failed on the way.
///
/// Why publish again: the failed invalidation was published when it was
/// made, but the store still held the old value then, and other processes
/// may have read it back into their L1s since; only now is it gone.
async fn replay_once(core: &Core, queue: &RetryQueue) -> bool {
    let _round = queue.replaying.lock().await;
    let mut replayed: HashMap<Arc<str>, Vec<String>> = HashMap::new();
    let mut complete = true;
    for Queued { key, seq, slot } in queue.snapshot() {
        let store = &core.store;
        let applied = match slot.op {
            PendingOp::Invalidate { keep_stale } => core.call_unguarded(store.invalidate(&key, keep_stale)).await,
            PendingOp::Delete => core.call_unguarded(store.delete(&key)).await,
            PendingOp::InvalidateIfNewer { version, mark_ttl } => {
                let mark_key = crate::key::write_mark_key(&key);
                core.call_unguarded(store.invalidate_if_newer(&key, &mark_key, version, mark_ttl))
                    .await
            }
            PendingOp::Incr { ttl } => match core.call_unguarded(store.incr(&key, ttl)).await {
                // The counter was gone (a restart): move it to a fresh start,
                // as `NsInner::bump_version` does, so no version is reused.
                Ok(1) => {
                    let start = bytes::Bytes::from(super::fresh_version().to_string());
                    core.call_unguarded(store.set(&key, start, ttl)).await
                }
                other => other.map(drop),
            },
        };
        if applied.is_err() {
            complete = false;
            break;
        }
        if queue.complete(&key, seq) {
            queue.replayed.fetch_add(1, Ordering::AcqRel);
            core.counters.add(Event::InvalidationReplayed);
            core.metrics.add(Event::InvalidationReplayed);
            tracing::info!(key = %crate::telemetry::KeyHash(&key), "queued invalidation replayed");
        }
        // Published even when a newer push keeps the key queued: this
        // replay did apply an invalidation the other L1s have not seen.
        replayed.entry(slot.namespace).or_default().push(slot.full);
    }
    for (namespace, fulls) in replayed {
        publish_replayed(core, &namespace, fulls).await;
    }
    complete
}

/// Most keys in one bus message of replayed invalidations.
const KEYS_PER_MESSAGE: usize = 256;

async fn publish_replayed(core: &Core, namespace: &str, fulls: Vec<String>) {
    core.l1_peers.evict(namespace, &fulls);
    let Some(router) = &core.router else { return };
    for keys in fulls.chunks(KEYS_PER_MESSAGE) {
        let message = Invalidation::new(namespace, keys.to_vec(), router.origin);
        // Bounded by the router; a lost message leaves other L1s to their TTL.
        if let Err(e) = router.bus.publish(&message).await {
            tracing::warn!(namespace, error = %e, "replayed invalidation not published on the bus");
        }
    }
}

/// What [`drain`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drained {
    pub(crate) replayed: u64,
    pub(crate) dropped: u64,
}

/// Replays the queue until it is empty or `deadline` passes, with the
/// worker's backoff between failed rounds; then drops, counts and logs
/// what is left. Replays by the worker meanwhile count as replayed.
pub(crate) async fn drain(core: &Core, deadline: Instant) -> Drained {
    let queue = &core.retry;
    let before = queue.replayed();
    let mut backoff = FIRST_BACKOFF;
    while queue.len() != 0 && Instant::now() < deadline {
        let replayed = tokio::time::timeout_at(deadline, replay_once(core, queue)).await;
        if replayed == Ok(true) {
            backoff = FIRST_BACKOFF;
            continue;
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    let left = queue.take_all();
    const LOGGED: usize = 100;
    for queued in left.iter().take(LOGGED) {
        tracing::error!(
            key = %crate::telemetry::KeyHash(&queued.key),
            namespace = &*queued.slot.namespace,
            "shutdown: queued invalidation dropped; the entry stays stale until its TTL"
        );
    }
    if left.len() > LOGGED {
        tracing::error!(
            more = left.len() - LOGGED,
            "shutdown: more queued invalidations dropped"
        );
    }
    for _ in &left {
        core.counters.add(Event::InvalidationDropped);
        core.metrics.add(Event::InvalidationDropped);
    }
    Drained {
        replayed: queue.replayed() - before,
        dropped: left.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(entries: usize) -> RetryBounds {
        RetryBounds {
            entries,
            bytes: usize::MAX,
        }
    }

    fn core(bounds: RetryBounds) -> Arc<Core> {
        Arc::new(Core::new(
            Arc::new(crate::MemoryStore::new()),
            crate::breaker::Breaker::new(crate::BreakerConfig::default()),
            Duration::from_millis(250),
            bounds,
            String::new(),
            250,
        ))
    }

    const INVALIDATE: PendingOp = PendingOp::Invalidate { keep_stale: None };

    /// Defect 4 of issue 12: an invalidation that failed while the queued
    /// one of the same key was being replayed merged into its entry with an
    /// equal op, and completing the replay removed both: the newer one was
    /// lost. Only the push that was replayed is completed.
    #[test]
    fn a_newer_invalidation_survives_the_replay_of_an_older_one() {
        let core = core(entries(16));
        let queue = RetryQueue::new(entries(16));
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _guard = runtime.enter();
        let queue = Arc::new(queue);
        queue.push(&core, "ns", "ns:k", "ns:k", INVALIDATE);
        // The replay takes its snapshot, then applies it...
        let replaying = queue.snapshot();
        assert_eq!(replaying.len(), 1);
        // ...while the same key is invalidated again and fails again.
        queue.push(&core, "ns", "ns:k", "ns:k", INVALIDATE);
        assert!(!queue.complete(&replaying[0].key, replaying[0].seq));
        assert!(queue.is_pending("ns:k"), "the newer invalidation was lost");
        assert_eq!(queue.len(), 1);
        let next = queue.snapshot();
        assert_eq!(next.len(), 1, "replayed once more, once");
        assert!(queue.complete(&next[0].key, next[0].seq));
        assert!(!queue.is_pending("ns:k"));
        assert_eq!(queue.len(), 0);
    }

    /// Completing entries no longer scans the order (it was `retain` per
    /// completion, quadratic in a drain); stale order items stay bounded.
    #[test]
    fn the_order_stays_bounded_and_overflow_drops_the_oldest_live_entry() {
        let core = core(entries(4));
        let queue = Arc::new(RetryQueue::new(entries(4)));
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _guard = runtime.enter();
        for round in 0..10_000 {
            queue.push(&core, "ns", "ns:a", "ns:a", INVALIDATE);
            if round % 2 == 0 {
                let seq = queue.lock().slots["ns:a"].seq;
                queue.complete("ns:a", seq);
            }
        }
        assert!(queue.lock().order.len() <= 2 * 4 + 64 + 1);
        // `a` was re-pushed last: it is the newest, `b` the oldest live one.
        queue.push(&core, "ns", "ns:b", "ns:b", INVALIDATE);
        queue.push(&core, "ns", "ns:a", "ns:a", INVALIDATE);
        for k in ["c", "d", "e"] {
            queue.push(&core, "ns", &format!("ns:{k}"), &format!("ns:{k}"), INVALIDATE);
        }
        let kept: Vec<String> = queue.snapshot().into_iter().map(|q| q.key).collect();
        assert_eq!(kept, ["ns:a", "ns:c", "ns:d", "ns:e"]);
    }

    /// Issue 15: the queue is bounded in bytes besides entries. Past the
    /// byte bound the oldest live entries go, each returned (for the
    /// caller to count and log), and the byte count follows pushes,
    /// re-pushes of a key, completions and a drain.
    #[test]
    fn the_byte_bound_drops_the_oldest_entries() {
        // Three entries of this size fit; a fourth does not.
        let one = |k: &str| 2 * format!("ns:{k}").len() + format!("ns:{k}").len() + "ns".len() + ENTRY_OVERHEAD;
        let bounds = RetryBounds {
            entries: 1_000,
            bytes: 3 * one("a") + one("a") / 2,
        };
        let core = core(bounds);
        let queue = Arc::new(RetryQueue::new(bounds));
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _guard = runtime.enter();
        let push = |k: &str| {
            let key = format!("ns:{k}");
            queue.push(&core, "ns", &key, &key, INVALIDATE)
        };
        for k in ["a", "b", "c"] {
            assert!(push(k).is_empty(), "{k} fits");
        }
        assert_eq!(queue.bytes(), 3 * one("a"));
        // Re-pushing a key replaces its entry: no growth, nothing dropped.
        assert!(push("a").is_empty());
        assert_eq!(queue.bytes(), 3 * one("a"));
        // `b` is now the oldest live entry (`a` was re-pushed).
        assert_eq!(push("d"), [("ns:b".to_owned(), Overflow::Bytes)]);
        assert_eq!(queue.len(), 3);
        assert_eq!(queue.bytes(), 3 * one("a"));
        let kept: Vec<String> = queue.snapshot().into_iter().map(|q| q.key).collect();
        assert_eq!(kept, ["ns:c", "ns:a", "ns:d"]);
        // One entry far past the bound drops every older one, and stays.
        let long = "x".repeat(4 * one("a"));
        let dropped: Vec<String> = push(&long).into_iter().map(|(k, _)| k).collect();
        assert_eq!(dropped, ["ns:c", "ns:a", "ns:d"]);
        assert_eq!(queue.len(), 1);
        let seq = queue.lock().slots[&format!("ns:{long}")].seq;
        assert!(queue.complete(&format!("ns:{long}"), seq));
        assert_eq!((queue.len(), queue.bytes()), (0, 0));
    }

    /// What the byte bound drops is counted as dropped, as the entry
    /// bound's is ([`Stats::invalidations_dropped`]).
    #[test]
    fn entries_the_byte_bound_drops_are_counted() {
        let core = core(RetryBounds {
            entries: 1_000,
            bytes: 2_000,
        });
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _guard = runtime.enter();
        for i in 0..100 {
            let key = format!("ns:{i:04}");
            core.queue_invalidation("ns", &key, &key, INVALIDATE);
        }
        let stats = core.stats();
        let per_entry = 2 * 7 + 7 + 2 + ENTRY_OVERHEAD;
        let kept = (2_000 / per_entry) as u64;
        assert_eq!(stats.invalidations_pending, kept);
        assert_eq!(stats.invalidations_dropped, 100 - kept);
        assert_eq!(stats.invalidations_queued, 100);
    }
}
