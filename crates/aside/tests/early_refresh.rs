//! An early refresh runs once per key per process, whichever entry point
//! finds the value due: a foreground refresh (`fetch`, as the leader of the
//! key's single-flight) and a background one (`fetch_owned`, spawned) never
//! load at once. The history checker found them overlapping (I3) under
//! `Delete` and `Versioned`, whose fills take no lease that would have kept
//! the second one out; these tests drive both orders under every strategy.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aside::{Aside, EarlyRefresh, MemoryStore, Namespace, Source, Strategy};
use common::{DbDown, User};
use tokio::sync::Semaphore;

const STRATEGIES: [Strategy; 3] = [Strategy::Lease, Strategy::Delete, Strategy::Versioned];

/// A namespace whose every cached value is due for refresh at once.
fn due_at_once(strategy: Strategy) -> Namespace<u64, User> {
    Aside::builder()
        .store(MemoryStore::new())
        .build()
        .namespace::<u64, User>("user")
        .strategy(strategy)
        .early_refresh(EarlyRefresh::AfterFraction(0.0))
        .build()
        .unwrap()
}

/// A namespace holding user 1 (v0), due for refresh, with a load counter
/// and a closed gate for [`gated_loader`].
async fn cached_and_due(
    strategy: Strategy,
) -> (Namespace<u64, User>, Arc<AtomicUsize>, Arc<Semaphore>, Arc<Semaphore>) {
    let users = due_at_once(strategy);
    users.set(&1, &User::new(1, 0)).await.unwrap();
    let closed = || Arc::new(Semaphore::new(0));
    (users, Arc::new(AtomicUsize::new(0)), closed(), closed())
}

/// What the gated loader returns.
type Load = std::pin::Pin<Box<dyn Future<Output = Result<Option<User>, DbDown>> + Send>>;

/// A loader that counts its calls, and whose answer waits for a permit of
/// `gate`; `entered` gets a permit when it starts.
fn gated_loader(
    loads: &Arc<AtomicUsize>,
    gate: &Arc<Semaphore>,
    entered: &Arc<Semaphore>,
) -> impl FnMut() -> Load + Send + 'static {
    let (loads, gate, entered) = (loads.clone(), gate.clone(), entered.clone());
    move || {
        let (loads, gate, entered) = (loads.clone(), gate.clone(), entered.clone());
        Box::pin(async move {
            loads.fetch_add(1, Ordering::SeqCst);
            entered.add_permits(1);
            gate.acquire().await.expect("open").forget();
            Ok(Some(User::new(1, 1)))
        })
    }
}

/// Lets every task of this current-thread runtime run until it waits on
/// something that only the test can release (the gate): a spawned refresh
/// that was going to load has called its loader by then.
async fn let_spawned_tasks_run() {
    for _ in 0..1_000 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_background_refresh_does_not_load_beside_a_foreground_one() {
    for strategy in STRATEGIES {
        let (users, loads, gate, entered) = cached_and_due(strategy).await;
        let foreground = tokio::spawn({
            let (users, mut loader) = (users.clone(), gated_loader(&loads, &gate, &entered));
            async move { users.fetch(&1, &mut loader).await }
        });
        entered.acquire().await.unwrap().forget();

        let served = users
            .fetch_owned(&1, gated_loader(&loads, &gate, &entered))
            .await
            .unwrap();
        assert_eq!(
            served.value,
            Some(User::new(1, 0)),
            "{strategy:?}: served the value it has"
        );
        assert_eq!(served.source, Source::Hit, "{strategy:?}");
        let_spawned_tasks_run().await;
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "{strategy:?}: the background refresh loaded while the foreground one was loading"
        );

        gate.add_permits(10);
        let refreshed = foreground.await.unwrap().unwrap();
        assert_eq!(
            refreshed.value,
            Some(User::new(1, 1)),
            "{strategy:?}: the foreground refresh's own load"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_foreground_refresh_does_not_load_beside_a_background_one() {
    for strategy in STRATEGIES {
        let (users, loads, gate, entered) = cached_and_due(strategy).await;
        users
            .fetch_owned(&1, gated_loader(&loads, &gate, &entered))
            .await
            .unwrap();
        // The background refresh is loading.
        entered.acquire().await.unwrap().forget();

        let foreground_loads = Arc::new(AtomicUsize::new(0));
        let served = users
            .fetch(&1, || {
                foreground_loads.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, DbDown>(Some(User::new(1, 1))) }
            })
            .await
            .unwrap();
        assert_eq!(
            foreground_loads.load(Ordering::SeqCst),
            0,
            "{strategy:?}: the foreground read loaded while the background refresh was loading"
        );
        assert_eq!(
            served.value,
            Some(User::new(1, 0)),
            "{strategy:?}: served the value it has"
        );
        gate.add_permits(10);
    }
}
