//! The bounded queue of invalidations that could not reach the store.
//!
//! Owns remembering failed invalidations, telling the read path which keys
//! must bypass the store until theirs is applied, replaying them once the
//! store answers again, publishing each replayed one on the bus, and
//! draining them on a graceful shutdown. An invalidation is never forgotten
//! silently: when the queue is full the oldest one is dropped, counted and
//! logged; so are those a shutdown could not replay in time. The queue
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

#[derive(Debug, Default)]
struct Pending {
    slots: HashMap<String, Slot>,
    /// Replay order; an item whose sequence is not its key's slot's is stale.
    order: VecDeque<(String, u64)>,
    next_seq: u64,
}

impl Pending {
    fn is_live(&self, key: &str, seq: u64) -> bool {
        self.slots.get(key).is_some_and(|s| s.seq == seq)
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
    capacity: usize,
    pending: Mutex<Pending>,
    len: AtomicUsize,
    wake: Notify,
    /// The replay worker, if one was started; replaced when it has finished
    /// (its runtime was shut down).
    worker: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Entries replayed so far, by the worker or a shutdown.
    replayed: AtomicU64,
}

impl RetryQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        RetryQueue {
            capacity: capacity.max(1),
            pending: Mutex::new(Pending::default()),
            len: AtomicUsize::new(0),
            wake: Notify::new(),
            worker: Mutex::new(None),
            closed: AtomicBool::new(false),
            replayed: AtomicU64::new(0),
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
    /// `namespace`); returns a dropped key if the queue overflowed.
    pub(crate) fn push(
        self: &Arc<Self>,
        core: &Arc<Core>,
        namespace: &str,
        full: &str,
        key: &str,
        op: PendingOp,
    ) -> Option<String> {
        let dropped = {
            let mut pending = self.lock();
            let seq = pending.next_seq;
            pending.next_seq += 1;
            let slot = Slot {
                op,
                seq,
                namespace: Arc::from(namespace),
                full: full.to_owned(),
            };
            pending.slots.insert(key.to_owned(), slot);
            pending.order.push_back((key.to_owned(), seq));
            let mut dropped = None;
            while pending.slots.len() > self.capacity {
                let Some((old, seq)) = pending.order.pop_front() else {
                    break;
                };
                if pending.is_live(&old, seq) {
                    pending.slots.remove(&old);
                    dropped = Some(old);
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
            pending.slots.remove(key);
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
        self.len.store(0, Ordering::Release);
        taken
    }

    pub(crate) fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Acquire)
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
    let mut replayed: HashMap<Arc<str>, Vec<String>> = HashMap::new();
    let mut complete = true;
    for Queued { key, seq, slot } in queue.snapshot() {
        let store = &core.store;
        let applied = match slot.op {
            PendingOp::Invalidate { keep_stale } => core.call_unguarded(store.invalidate(&key, keep_stale)).await,
            PendingOp::Delete => core.call_unguarded(store.delete(&key)).await,
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
            tracing::info!(key, "queued invalidation replayed");
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
            key = queued.key,
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

    fn core(capacity: usize) -> Arc<Core> {
        Arc::new(Core::new(
            Arc::new(crate::MemoryStore::new()),
            crate::breaker::Breaker::new(crate::BreakerConfig::default()),
            Duration::from_millis(250),
            capacity,
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
        let core = core(16);
        let queue = RetryQueue::new(16);
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
        let core = core(4);
        let queue = Arc::new(RetryQueue::new(4));
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
}
