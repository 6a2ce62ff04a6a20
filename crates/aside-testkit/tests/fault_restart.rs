//! The fault layer journals an injected restart as a span: from when it is
//! drawn to when its flush has returned (or its call was dropped), so the
//! history checker places the flush where it can really have fallen.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aside::{MemoryStore, Store};
use aside_testkit::fault::{FaultKind, FaultPlan, FaultRates, FaultStore, JournalEvent, RestartFn};
use bytes::Bytes;
use futures::FutureExt;

/// A plan that restarts the store on the first call, and never pauses.
fn restart_first_call() -> FaultPlan {
    let plan = FaultPlan::new(
        1,
        FaultRates {
            restart: 1.0,
            max_restarts: 1,
            pause: 0.0,
            ..FaultRates::none()
        },
    );
    plan.set_pauses(false);
    plan
}

/// The restart's two journal entries: the drawn fault's tick, and the
/// `Restarted` entry's tick with its `started` and `completed`.
fn restart_span(plan: &FaultPlan) -> (u64, Option<(u64, u64, bool)>) {
    let journal = plan.journal();
    let drawn = journal
        .iter()
        .find(|e| {
            matches!(
                e.event,
                JournalEvent::Store {
                    kind: FaultKind::Restart,
                    ..
                }
            )
        })
        .expect("the restart is journaled when drawn")
        .seq;
    let ended = journal.iter().find_map(|e| match e.event {
        JournalEvent::Restarted { started, completed } => Some((e.seq, started, completed)),
        _ => None,
    });
    (drawn, ended)
}

fn fresh_store() -> Option<Arc<dyn Store>> {
    Some(Arc::new(MemoryStore::new()) as Arc<dyn Store>)
}

/// HISTORY.md's Redis I1 finding (seed 305242257346774186): the fault
/// was journaled when drawn, before a `FLUSHALL` that landed a millisecond
/// later, so the checker placed the restart before a write it had in fact
/// erased. The flush's own tick must fall inside the journaled span.
#[tokio::test]
async fn a_restart_is_journaled_from_its_draw_to_its_flushs_return() {
    let plan = restart_first_call();
    let flushed_at = Arc::new(AtomicU64::new(0));
    let restart: RestartFn = {
        let clock = plan.clock().clone();
        let flushed_at = flushed_at.clone();
        Arc::new(move || {
            let clock = clock.clone();
            let flushed_at = flushed_at.clone();
            Box::pin(async move {
                // The flush goes over its own connection: it takes a while.
                tokio::task::yield_now().await;
                flushed_at.store(clock.tick(), Ordering::SeqCst);
                fresh_store()
            })
        })
    };
    let store = FaultStore::new(Arc::new(MemoryStore::new()), plan.clone()).with_restart(restart);
    store
        .set("k", Bytes::from_static(b"v"), std::time::Duration::from_secs(60))
        .await
        .expect("the call after the restart goes through");

    let (drawn, ended) = restart_span(&plan);
    let (end, started, completed) = ended.expect("the restart's end is journaled");
    let flushed_at = flushed_at.load(Ordering::SeqCst);
    assert_eq!(started, drawn, "the end names its restart");
    assert!(completed, "the flush returned");
    assert!(
        drawn < flushed_at && flushed_at < end,
        "the flush (tick {flushed_at}) falls inside the journaled span ({drawn}..{end})"
    );
    assert_eq!(plan.counts().restart, 1);
}

/// A call dropped while its restart's flush is under way ends the span
/// as not completed: the flush may still land later, and the checker must
/// treat the span as open.
#[tokio::test]
async fn a_restart_dropped_before_its_flush_returns_is_journaled_as_not_completed() {
    let plan = restart_first_call();
    let restart: RestartFn = Arc::new(|| Box::pin(futures::future::pending()));
    let store = FaultStore::new(Arc::new(MemoryStore::new()), plan.clone()).with_restart(restart);
    let call = store.set("k", Bytes::from_static(b"v"), std::time::Duration::from_secs(60));
    assert!(
        Box::pin(call).now_or_never().is_none(),
        "the call waits on the hung flush"
    );

    let (drawn, ended) = restart_span(&plan);
    let (end, started, completed) = ended.expect("the dropped restart's end is journaled");
    assert_eq!(started, drawn);
    assert!(!completed, "the flush never returned");
    assert!(drawn < end);
}
