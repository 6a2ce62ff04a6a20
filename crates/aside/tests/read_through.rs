//! Read-through: a namespace's registered loader serves plain reads, with
//! what `get_or_load` has. The history checker (`tests/history.rs`, the
//! `read` operation) drives the same path under faults and concurrency;
//! these pin down the contract one property at a time.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aside::{Aside, ErrorKind, MemoryStore, Namespace, Source};
use common::{Db, DbDown, User};
use tokio::sync::Semaphore;

/// A namespace reading through `db`, counting its loads; `gate`, when
/// given, holds every load until the test adds a permit.
fn through(db: &Db, loads: &Arc<AtomicUsize>, gate: Option<Arc<Semaphore>>) -> Namespace<u64, User> {
    let (db, loads) = (db.clone(), loads.clone());
    Aside::builder()
        .store(MemoryStore::new())
        .build()
        .namespace::<u64, User>("user")
        .loader(move |id: &u64| {
            let (db, loads, gate, id) = (db.clone(), loads.clone(), gate.clone(), *id);
            async move {
                loads.fetch_add(1, Ordering::SeqCst);
                if let Some(gate) = gate {
                    gate.acquire().await.expect("open").forget();
                }
                db.get(id).await
            }
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_miss_loads_through_the_registered_loader_and_a_hit_does_not() {
    let (db, loads) = (Db::with_users(1), Arc::new(AtomicUsize::new(0)));
    let users = through(&db, &loads, None);
    assert_eq!(users.read(&1).await.unwrap().source, Source::Loaded);
    assert_eq!(users.get(&1).await.unwrap(), Some(User::new(1, 0)));
    assert_eq!(users.read(&1).await.unwrap().source, Source::Hit);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    // A key with no row is loaded too, and answered `None`.
    assert_eq!(users.get(&2).await.unwrap(), None);
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_invalidation_makes_the_next_read_load_the_new_row() {
    let (db, loads) = (Db::with_users(1), Arc::new(AtomicUsize::new(0)));
    let users = through(&db, &loads, None);
    assert_eq!(users.get(&1).await.unwrap(), Some(User::new(1, 0)));
    db.put(User::new(1, 1));
    users.invalidate(&1).await.unwrap();
    assert_eq!(users.get(&1).await.unwrap(), Some(User::new(1, 1)));
    assert_eq!(users.peek(&1).await.unwrap(), Some(User::new(1, 1)));
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_reads_of_one_key_load_once() {
    let (db, loads, gate) = (
        Db::with_users(1),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Semaphore::new(0)),
    );
    let users = through(&db, &loads, Some(gate.clone()));
    let readers: Vec<_> = (0..10)
        .map(|_| {
            let users = users.clone();
            tokio::spawn(async move { users.read(&1).await })
        })
        .collect();
    // Every reader has started and is waiting (one on the gate, nine on it).
    for _ in 0..1_000 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);
    let mut sources = Vec::new();
    for reader in readers {
        let fetched = reader.await.unwrap().unwrap();
        assert_eq!(fetched.value, Some(User::new(1, 0)));
        sources.push(fetched.source);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for ten readers");
    assert_eq!(sources.iter().filter(|s| **s == Source::Loaded).count(), 1);
}

#[tokio::test]
async fn peek_never_loads_and_a_call_with_its_own_loader_uses_it() {
    let (db, loads) = (Db::with_users(1), Arc::new(AtomicUsize::new(0)));
    let users = through(&db, &loads, None);
    assert_eq!(users.peek(&1).await.unwrap(), None);
    let own = users
        .get_or_load(&1, || async { Ok::<_, DbDown>(Some(User::new(1, 9))) })
        .await
        .unwrap();
    assert_eq!(own, Some(User::new(1, 9)));
    assert_eq!(loads.load(Ordering::SeqCst), 0, "the registered loader was not called");
}

#[tokio::test]
async fn the_loaders_error_reaches_the_caller_with_its_own_type() {
    let users = Aside::builder()
        .build()
        .namespace::<u64, User>("user")
        .loader(|_: &u64| async { Err::<Option<User>, _>(DbDown) })
        .build()
        .unwrap();
    let err = users.get(&1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Loader);
    assert!(err.loader_error::<DbDown>().is_some(), "{err:?}");
    // Nothing was cached by the failure.
    assert_eq!(users.peek(&1).await.unwrap(), None);
}

#[tokio::test]
async fn read_without_a_registered_loader_is_a_config_error() {
    let users = Aside::builder().build().namespace::<u64, User>("user").build().unwrap();
    assert_eq!(users.read(&1).await.unwrap_err().kind(), ErrorKind::Config);
    assert_eq!(
        users.get(&1).await.unwrap(),
        None,
        "get without a loader reads the cache only"
    );
}
