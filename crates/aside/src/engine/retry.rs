//! The bounded queue of invalidations that could not reach the store.
//!
//! Owns remembering failed invalidations, telling the read path which keys
//! must bypass the store until theirs is applied, and replaying them once the
//! store answers again. An invalidation is never forgotten silently: when
//! the queue is full the oldest one is dropped, counted and logged.
//!
//! One worker task (spawned on the first failure, so building an `Aside`
//! needs no runtime) waits on a `Notify`, then probes the store with
//! exponential backoff and replays in order. The queue keeps one pending
//! operation per key: a later invalidation of the same key subsumes an
//! earlier one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::Core;
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

#[derive(Debug, Default)]
struct Pending {
    ops: HashMap<String, PendingOp>,
    order: VecDeque<String>,
}

#[derive(Debug)]
pub(crate) struct RetryQueue {
    capacity: usize,
    pending: Mutex<Pending>,
    len: AtomicUsize,
    wake: Notify,
    worker_started: AtomicBool,
    closed: AtomicBool,
}

impl RetryQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        RetryQueue {
            capacity: capacity.max(1),
            pending: Mutex::new(Pending::default()),
            len: AtomicUsize::new(0),
            wake: Notify::new(),
            worker_started: AtomicBool::new(false),
            closed: AtomicBool::new(false),
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
        self.len() != 0 && self.lock().ops.contains_key(key)
    }

    /// Queues `op` for `key`; returns a dropped key if the queue overflowed.
    pub(crate) fn push(self: &Arc<Self>, core: &Arc<Core>, key: &str, op: PendingOp) -> Option<String> {
        let dropped = {
            let mut pending = self.lock();
            if pending.ops.insert(key.to_owned(), op).is_none() {
                pending.order.push_back(key.to_owned());
            }
            let dropped = if pending.ops.len() > self.capacity {
                pending.order.pop_front().inspect(|old| {
                    pending.ops.remove(old);
                })
            } else {
                None
            };
            self.len.store(pending.ops.len(), Ordering::Release);
            dropped
        };
        if !self.worker_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(replay_worker(Arc::downgrade(core), self.clone()));
        }
        self.wake.notify_one();
        dropped
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn snapshot(&self) -> Vec<(String, PendingOp)> {
        let pending = self.lock();
        pending
            .order
            .iter()
            .filter_map(|k| pending.ops.get(k).map(|op| (k.clone(), *op)))
            .collect()
    }

    /// Removes `key` if its pending op is still `op` (a newer one stays).
    fn complete(&self, key: &str, op: PendingOp) {
        let mut pending = self.lock();
        if pending.ops.get(key) == Some(&op) {
            pending.ops.remove(key);
            pending.order.retain(|k| k != key);
        }
        self.len.store(pending.ops.len(), Ordering::Release);
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

/// Replays what is queued, in order; false if the store failed on the way.
async fn replay_once(core: &Core, queue: &RetryQueue) -> bool {
    for (key, op) in queue.snapshot() {
        let store = &core.store;
        let applied = match op {
            PendingOp::Invalidate { keep_stale } => core.call_unguarded(store.invalidate(&key, keep_stale)).await,
            PendingOp::Delete => core.call_unguarded(store.delete(&key)).await,
            PendingOp::Incr { ttl } => core.call_unguarded(store.incr(&key, ttl)).await.map(drop),
        };
        if applied.is_err() {
            return false;
        }
        queue.complete(&key, op);
        core.counters.add(Event::InvalidationReplayed);
        tracing::info!(key, "queued invalidation replayed");
    }
    true
}
