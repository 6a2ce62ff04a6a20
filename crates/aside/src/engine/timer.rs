//! The one timer task behind `DoubleDelete`'s delayed second delete.
//!
//! Owns scheduling: callers push `(deadline, key)` into a min-heap shared
//! with a single task that sleeps until the earliest deadline. This
//! replaces the article's thread-per-write (`threading.Thread` +
//! `time.sleep(0.5)`) with one task however many writes there are. The
//! second delete is the namespace's own (store, L1 and bus alike); one that
//! fails goes to the retry queue like any other invalidation.
//!
//! Each due delete runs in a task of its own (at most [`MAX_IN_FLIGHT`] at
//! once), not on the timer task: a second delete waits on the store and the
//! bus, and one that is slow (a store at its timeout, a bus that does not
//! answer) must not hold back the deletes due after it.
//!
//! The heap lives beside the task, not in it: the task runs on the runtime
//! of the call that started it, and if that runtime is shut down (a
//! `#[tokio::test]`, a short-lived runtime of the user's) the task is gone
//! while the heap keeps what was scheduled. Every schedule checks the
//! task's handle and starts a new one on the current runtime when the old
//! one has finished; it takes over the heap, overdue deletes first.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, Weak};

use futures::future::BoxFuture;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Core;

/// Most second deletes running at once.
pub(crate) const MAX_IN_FLIGHT: usize = 256;

/// Time a second delete run by a shutdown is given before its deadline.
const SHUTDOWN_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

/// What runs when a delayed delete is due: the namespace's second delete.
pub(crate) trait SecondDelete: Send + Sync {
    fn second_delete(&self, key: String) -> BoxFuture<'_, ()>;
}

struct Due {
    at: Instant,
    key: String,
    namespace: Weak<dyn SecondDelete>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    /// Reversed, so the max-heap pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

struct Shared {
    due: Mutex<BinaryHeap<Due>>,
    /// Woken when an earlier deadline is pushed.
    wake: Notify,
    in_flight: Arc<Semaphore>,
}

pub(crate) struct DelayedDeletes {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for DelayedDeletes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayedDeletes").finish_non_exhaustive()
    }
}

impl DelayedDeletes {
    pub(crate) fn new() -> Self {
        DelayedDeletes {
            shared: Arc::new(Shared {
                due: Mutex::new(BinaryHeap::new()),
                wake: Notify::new(),
                in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            }),
            task: Mutex::new(None),
        }
    }

    fn heap(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Due>> {
        self.shared.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `namespace`'s second delete of `key` at `at`, (re)starting the
    /// timer task on the current runtime when none is running.
    pub(crate) fn schedule(&self, core: &Arc<Core>, at: Instant, key: String, namespace: Weak<dyn SecondDelete>) {
        self.heap().push(Due { at, key, namespace });
        self.ensure_task(core);
        self.shared.wake.notify_one();
    }

    fn ensure_task(&self, core: &Arc<Core>) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("delayed deletes not started: no Tokio runtime here; they start on the next schedule");
            return;
        };
        *task = Some(runtime.spawn(run(Arc::downgrade(core), self.shared.clone())));
    }

    /// Removes every scheduled delete, due or not, for a shutdown.
    fn take_all(&self) -> Vec<Due> {
        std::mem::take(&mut *self.heap()).into_vec()
    }

    /// Runs every scheduled second delete before `deadline`, concurrently
    /// (bounded as usual): each at its due time if that leaves it
    /// [`SHUTDOWN_MARGIN`] before the deadline, else at once, since a second
    /// delete run early still removes what most racing fills left, and one
    /// never run removes nothing. Returns how many ran to the end. One that
    /// fails queues its invalidation for replay, as it would when due.
    pub(crate) async fn run_all_before(&self, deadline: Instant) -> u64 {
        let tasks: Vec<_> = self
            .take_all()
            .into_iter()
            .filter_map(|due| {
                let namespace = due.namespace.upgrade()?;
                let permits = self.shared.in_flight.clone();
                let at = if due.at + SHUTDOWN_MARGIN <= deadline {
                    due.at
                } else {
                    Instant::now()
                };
                Some(async move {
                    tokio::time::sleep_until(at).await;
                    let _permit = permits.acquire_owned().await;
                    namespace.second_delete(due.key).await;
                })
            })
            .collect();
        let ran = futures::future::join_all(tasks.into_iter().map(|t| tokio::time::timeout_at(deadline, t))).await;
        ran.iter().filter(|r| r.is_ok()).count() as u64
    }
}

impl Drop for DelayedDeletes {
    /// The `Aside` is gone: so is the timer task (deletes in flight finish).
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

async fn run(core: Weak<Core>, shared: Arc<Shared>) {
    loop {
        if core.strong_count() == 0 {
            return;
        }
        let now = Instant::now();
        let (ready, next) = {
            let mut due = shared.due.lock().unwrap_or_else(|e| e.into_inner());
            let mut ready = Vec::new();
            while due.peek().is_some_and(|d| d.at <= now) {
                ready.extend(due.pop());
            }
            (ready, due.peek().map(|d| d.at))
        };
        for item in ready {
            let Some(namespace) = item.namespace.upgrade() else {
                continue;
            };
            let permits = shared.in_flight.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                namespace.second_delete(item.key).await;
            });
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}
