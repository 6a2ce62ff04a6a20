//! The one timer task behind `DoubleDelete`'s delayed second delete.
//!
//! Owns scheduling: callers hand over `(deadline, key)` through a channel
//! and a single task keeps them in a min-heap, sleeping until the earliest.
//! This replaces the article's thread-per-write (`threading.Thread` +
//! `time.sleep(0.5)`) with one task however many writes there are. The
//! second delete is the namespace's own (store, L1 and bus alike); one that
//! fails goes to the retry queue like any other invalidation.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Core;

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

pub(crate) struct DelayedDeletes {
    tx: std::sync::OnceLock<mpsc::UnboundedSender<Due>>,
}

impl std::fmt::Debug for DelayedDeletes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayedDeletes").finish_non_exhaustive()
    }
}

impl DelayedDeletes {
    pub(crate) fn new() -> Self {
        DelayedDeletes {
            tx: std::sync::OnceLock::new(),
        }
    }

    /// Runs `namespace`'s second delete of `key` at `at`, starting the timer
    /// task on first use.
    pub(crate) fn schedule(&self, core: &Arc<Core>, at: Instant, key: String, namespace: Weak<dyn SecondDelete>) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(Arc::downgrade(core), rx));
            tx
        });
        // The receiver lives as long as the task, which outlives every sender.
        let _ = tx.send(Due { at, key, namespace });
    }
}

async fn run(core: Weak<Core>, mut rx: mpsc::UnboundedReceiver<Due>) {
    let mut due: BinaryHeap<Due> = BinaryHeap::new();
    loop {
        let next = due.peek().map(|d| d.at);
        tokio::select! {
            received = rx.recv() => match received {
                Some(item) => due.push(item),
                None if due.is_empty() => return,
                None => {}
            },
            () = async { tokio::time::sleep_until(next.expect("guarded")).await }, if next.is_some() => {
                let Some(item) = due.pop() else { continue };
                if core.strong_count() == 0 {
                    return;
                }
                if let Some(namespace) = item.namespace.upgrade() {
                    namespace.second_delete(item.key).await;
                }
            }
        }
    }
}
