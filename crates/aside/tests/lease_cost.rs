//! A lease never costs more than it saves (issue 13): each test drives one
//! interleaving through the public API and counts the loader's calls.
//! All but `waiters_after_a_revoking_invalidation_share_one_new_load` fail
//! when their fix is reverted (checked by reverting each).
//!
//! - a refused fill is not loaded again for the caller that led it;
//! - waiters that began after a revoked load began coalesce onto one new load;
//! - a reader whose lookup ran before the leader's grant joins that load
//!   rather than lead a second one that polls the store;
//! - a cancelled leader's waiter takes over without waiting out the lease.
//!
//! A loader slower than twice the lease TTL loading once is
//! `defect_13_a_slow_loader_keeps_its_lease` in `tests/regressions.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::{Aside, MemoryStore, Namespace, Store};
use common::{Db, Instrumented, User, eventually};
use tokio::sync::Semaphore;

/// A loader of `db`'s user 1 that counts its calls; the first call waits
/// for a permit of `gate` (later ones do not), and adds one to `started`.
type Load = std::pin::Pin<Box<dyn Future<Output = Result<Option<User>, common::DbDown>> + Send>>;

fn gated_loader(db: &Db, loads: &Arc<AtomicUsize>, gate: &Arc<Semaphore>) -> impl FnMut() -> Load + Send + 'static {
    let (db, loads, gate) = (db.clone(), loads.clone(), gate.clone());
    move || {
        let (db, loads, gate) = (db.clone(), loads.clone(), gate.clone());
        Box::pin(async move {
            if loads.fetch_add(1, Ordering::SeqCst) == 0 {
                gate.acquire().await.unwrap().forget();
            }
            db.get(1).await
        })
    }
}

fn namespace(store: &Arc<dyn Store>) -> (Aside, Namespace<u64, User>) {
    let aside = Aside::builder()
        .shared_store(store.clone())
        .op_timeout(Duration::from_secs(60))
        .build();
    let users = aside
        .namespace::<u64, User>("user")
        .lease_ttl(Duration::from_secs(30))
        .lease_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    (aside, users)
}

async fn loading_started(loads: &Arc<AtomicUsize>, at_least: usize) {
    let loads = loads.clone();
    eventually("the load started", Duration::from_secs(30), move || {
        let n = loads.load(Ordering::SeqCst);
        async move { n >= at_least }
    })
    .await;
}

/// A namespace over a memory store, one user, and a leader whose
/// `get_or_load` is loading (its loader held at `gate`).
struct Leading {
    aside: Aside,
    users: Namespace<u64, User>,
    db: Db,
    loads: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    leader: tokio::task::JoinHandle<aside::Result<Option<User>>>,
}

async fn leading() -> Leading {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let (aside, users) = namespace(&store);
    let db = Db::with_users(1);
    let (loads, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
    let leader = tokio::spawn({
        let (users, loader) = (users.clone(), gated_loader(&db, &loads, &gate));
        async move { users.get_or_load(&1, loader).await }
    });
    loading_started(&loads, 1).await;
    Leading {
        aside,
        users,
        db,
        loads,
        gate,
        leader,
    }
}

/// Before: a fill refused by an invalidation made the leader load again,
/// so a key written about as often as it was loaded cost more database
/// reads than calls (about 775 reads for 600 calls in the measured run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_fill_is_not_loaded_again() {
    let Leading {
        aside,
        users,
        db,
        loads,
        gate,
        leader,
    } = leading().await;
    db.put(User::new(1, 1));
    users.invalidate(&1).await.unwrap();
    gate.add_permits(1);
    // Read by a load that began after this caller's read began: v0 or v1
    // are both correct for it; what matters is that it was loaded once.
    assert!(leader.await.unwrap().unwrap().is_some());
    assert_eq!(loads.load(Ordering::SeqCst), 1, "the refused fill was loaded again");
    assert_eq!(users.get(&1).await.unwrap(), None, "a refused fill was cached");
    assert_eq!(aside.stats().fills_refused, 1);
}

/// Readers that began after the revoked load began must not take its
/// value (it may predate the invalidation they observed): they share one
/// new load, and the leader does not load again for them. (This one holds
/// before the fixes too, where the leader's reload found the waiters'
/// lease and waited; it guards the promise, not a reverted fix.) One
/// thread, so a waiter that counted its miss has joined the flight.
#[tokio::test(flavor = "current_thread")]
async fn waiters_after_a_revoking_invalidation_share_one_new_load() {
    let Leading {
        aside,
        users,
        db,
        loads,
        gate,
        leader,
    } = leading().await;
    db.put(User::new(1, 1));
    users.invalidate(&1).await.unwrap();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let (users, loader) = (users.clone(), gated_loader(&db, &loads, &gate));
            tokio::spawn(async move { users.get_or_load(&1, loader).await })
        })
        .collect();
    // The waiters have joined the first load (they cannot finish before it).
    eventually("the waiters joined", Duration::from_secs(30), || {
        let misses = aside.stats().misses;
        async move { misses >= 5 }
    })
    .await;
    gate.add_permits(1);
    assert!(leader.await.unwrap().unwrap().is_some());
    for waiter in waiters {
        assert_eq!(
            waiter.await.unwrap().unwrap(),
            Some(User::new(1, 1)),
            "a waiter that began after the invalidation read the old row"
        );
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "the revoked load and one new one for all the waiters"
    );
    assert_eq!(users.get(&1).await.unwrap(), Some(User::new(1, 1)));
}

/// Before: a reader whose lookup ran before the leader's grant (it saw no
/// lease) declined to join the leader's flight, led a second one, found the
/// key busy and polled the store with backoff (up to 124 ms for a 50 ms
/// loader in `aside demo --scenario stampede`). Here its own lease request
/// would fail, and it would load a second time.
///
/// One thread, so that once the second reader has counted its miss it has
/// also reached the flight (no await lies between the two), and the first
/// load cannot end before it has: with two threads it could, and the second
/// reader then found no flight to join (2 failures in about 8 loaded runs).
#[tokio::test(flavor = "current_thread")]
async fn a_reader_that_looked_before_the_grant_joins_the_load() {
    let gate_peeks = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut wrapped = Instrumented::new(MemoryStore::new(), calls.clone());
    wrapped.peek_gate = Some(gate_peeks.clone());
    let hooks = wrapped.hooks.clone();
    let store: Arc<dyn Store> = Arc::new(wrapped);
    let (aside, users) = namespace(&store);
    let db = Db::with_users(1);
    let (loads, gate) = (Arc::new(AtomicUsize::new(0)), Arc::new(Semaphore::new(0)));
    let spawn_reader = || {
        let (users, loader) = (users.clone(), gated_loader(&db, &loads, &gate));
        tokio::spawn(async move { users.fetch(&1, loader).await })
    };
    let first = spawn_reader();
    eventually("the first lookup read", Duration::from_secs(30), || {
        let n = calls.load(Ordering::SeqCst);
        async move { n >= 1 }
    })
    .await;
    let second = spawn_reader();
    eventually("the second lookup read", Duration::from_secs(30), || {
        let n = calls.load(Ordering::SeqCst);
        async move { n >= 2 }
    })
    .await;
    // Both lookups saw an empty entry. The first goes on, takes the lease
    // and starts loading; then the second's answer (no lease) arrives.
    gate_peeks.add_permits(1);
    loading_started(&loads, 1).await;
    hooks.fail("lookup_or_lease");
    gate_peeks.add_permits(1_000);
    eventually("the second lookup answered", Duration::from_secs(30), || {
        let misses = aside.stats().misses;
        async move { misses >= 2 }
    })
    .await;
    // The second reader can only finish by joining the first's load (it
    // cannot take a lease now, and a load of its own would be the second).
    gate.add_permits(1);
    let (first, second) = (first.await.unwrap().unwrap(), second.await.unwrap().unwrap());
    assert_eq!(first.value, Some(User::new(1, 0)));
    assert_eq!(second.value, Some(User::new(1, 0)));
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the second reader led a load of its own"
    );
    assert_eq!(second.source, aside::Source::Coalesced);
}

/// A leader cancelled mid-load hands its lease back at once (a drop
/// guard), so its waiter's new load does not wait out the 30 s lease.
/// Virtual time: the figure is the engine's own waiting, not the machine's.
#[tokio::test(start_paused = true)]
async fn a_cancelled_leaders_waiter_loads_within_10_ms() {
    let Leading {
        aside,
        users,
        db,
        loads,
        gate,
        leader,
    } = leading().await;
    let waiter = tokio::spawn({
        let (users, loader) = (users.clone(), gated_loader(&db, &loads, &gate));
        async move { users.fetch(&1, loader).await }
    });
    eventually("the waiter joined", Duration::from_secs(30), || {
        let misses = aside.stats().misses;
        async move { misses >= 2 }
    })
    .await;
    let cancelled_at = tokio::time::Instant::now();
    leader.abort();
    let fetched = waiter.await.unwrap().unwrap();
    let took = cancelled_at.elapsed();
    assert_eq!(fetched.value, Some(User::new(1, 0)));
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    assert!(
        took <= Duration::from_millis(10),
        "the waiter took {took:?} to load after its leader was cancelled"
    );
    assert_eq!(
        users.get(&1).await.unwrap(),
        Some(User::new(1, 0)),
        "the new load was not cached"
    );
}
