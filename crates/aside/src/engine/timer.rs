//! The one timer task behind `DoubleDelete`'s delayed second delete.
//!
//! Owns scheduling: callers hand over `(deadline, key)` through a channel
//! and a single task keeps them in a min-heap, sleeping until the earliest.
//! This replaces the article's thread-per-write (`threading.Thread` +
//! `time.sleep(0.5)`) with one task however many writes there are. A second
//! delete that fails goes to the retry queue like any other invalidation.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Core;
use super::retry::PendingOp;

#[derive(Debug)]
pub(crate) struct DelayedDeletes {
    tx: std::sync::OnceLock<mpsc::UnboundedSender<(Instant, String)>>,
}

impl DelayedDeletes {
    pub(crate) fn new() -> Self {
        DelayedDeletes {
            tx: std::sync::OnceLock::new(),
        }
    }

    /// Deletes `key` at `deadline`, starting the timer task on first use.
    pub(crate) fn schedule(&self, core: &Arc<Core>, deadline: Instant, key: String) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(Arc::downgrade(core), rx));
            tx
        });
        // The receiver lives as long as the task, which outlives every sender.
        let _ = tx.send((deadline, key));
    }
}

async fn run(core: Weak<Core>, mut rx: mpsc::UnboundedReceiver<(Instant, String)>) {
    let mut due: BinaryHeap<Reverse<(Instant, String)>> = BinaryHeap::new();
    loop {
        let next = due.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            received = rx.recv() => match received {
                Some(item) => due.push(Reverse(item)),
                None if due.is_empty() => return,
                None => {}
            },
            () = async { tokio::time::sleep_until(next.expect("guarded")).await }, if next.is_some() => {
                let Some(Reverse((_, key))) = due.pop() else { continue };
                let Some(core) = core.upgrade() else { return };
                if core.call(core.store.delete(&key)).await.is_err() {
                    core.queue_invalidation(&key, PendingOp::Delete);
                }
            }
        }
    }
}
