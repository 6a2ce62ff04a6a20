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

/// A call dropped while its restart's flush is under way (the engine's
/// timeout, a cancelled read) does not end the span: a flush already sent
/// still lands, so the span ends only when the flush returns. (A span
/// ended at the drop, or left open for good, let the checker excuse stale
/// reads the restart cannot explain.)
#[tokio::test]
async fn a_restart_whose_call_is_dropped_ends_when_its_flush_returns() {
    let plan = restart_first_call();
    let flush_may_return = Arc::new(tokio::sync::Notify::new());
    let flushed_at = Arc::new(AtomicU64::new(0));
    let restart: RestartFn = {
        let (clock, flush_may_return, flushed_at) =
            (plan.clock().clone(), flush_may_return.clone(), flushed_at.clone());
        Arc::new(move || {
            let (clock, flush_may_return, flushed_at) = (clock.clone(), flush_may_return.clone(), flushed_at.clone());
            Box::pin(async move {
                flush_may_return.notified().await;
                flushed_at.store(clock.tick(), Ordering::SeqCst);
                fresh_store()
            })
        })
    };
    let store = FaultStore::new(Arc::new(MemoryStore::new()), plan.clone()).with_restart(restart);
    let call = store.set("k", Bytes::from_static(b"v"), std::time::Duration::from_secs(60));
    assert!(Box::pin(call).now_or_never().is_none(), "the call waits on the flush");
    let (drawn, ended) = restart_span(&plan);
    assert!(ended.is_none(), "the span is still open after the call was dropped");
    assert_eq!(
        store.in_flight(),
        1,
        "the flush counts as in flight: quiescence waits for it"
    );

    flush_may_return.notify_one();
    let mut ended = None;
    for _ in 0..10_000 {
        ended = restart_span(&plan).1;
        if ended.is_some() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let (end, started, completed) = ended.expect("the span ends once the flush returns");
    assert_eq!(store.in_flight(), 0, "nothing in flight once the flush returned");
    let flushed_at = flushed_at.load(Ordering::SeqCst);
    assert_eq!(started, drawn);
    assert!(completed, "the flush returned");
    assert!(
        drawn < flushed_at && flushed_at < end,
        "the flush (tick {flushed_at}) falls inside the span ({drawn}..{end})"
    );
}
