//! Versioned write-through (`Namespace::write_through`): of writers racing
//! on one key, the newest row stays cached, whatever order their cache
//! writes land in, with invalidations and a reader's late fill in between.
//!
//! Every order of the events is driven on the memory store and on Redis
//! (the script compares versions as decimal strings: versions above 2^53
//! too) and on memcached (a protocol of CAS-guarded steps, whose every
//! interleaving its own tests explore), and concurrent writers with
//! shuffled versions end at the highest.
//! The history checker (`tests/history.rs`, the `write_through`
//! operation) drives the same path under faults.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use aside::{Aside, MemoryStore, Namespace, Store, Strategy, WriteThrough};
use aside_testkit::RedisServer;
use common::{Db, DbDown, Instrumented, User};

/// What happens to the key, in some order.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    /// The cache write of the writer of the older row.
    PutOld,
    /// The cache write of the writer of the newer row.
    PutNew,
    /// Another writer's invalidation of the key.
    Invalidate,
}

fn orders() -> Vec<Vec<Event>> {
    use Event::*;
    let mut out = Vec::new();
    for a in [PutOld, PutNew, Invalidate] {
        for b in [PutOld, PutNew, Invalidate] {
            for c in [PutOld, PutNew, Invalidate] {
                let order = vec![a, b, c];
                if a != b && b != c && a != c {
                    out.push(order);
                }
            }
        }
    }
    out
}

fn users(store: Arc<dyn Store>, name: &str) -> Namespace<u64, User> {
    Aside::builder()
        .shared_store(store)
        // What is checked is the order of writes, not their speed: a loaded
        // machine must not turn a slow write into a failed one.
        .op_timeout(std::time::Duration::from_secs(30))
        .build()
        .namespace::<u64, User>(name)
        .build()
        .unwrap()
}

/// Versions of the older and the newer row, the newer above `base`.
async fn every_order_leaves_the_newer_row(store: Arc<dyn Store>, base: u64) {
    for (i, order) in orders().into_iter().enumerate() {
        let users = users(store.clone(), &format!("wt{i}"));
        let (old, new) = (User::new(1, 1), User::new(1, 2));
        let mut outcomes = Vec::new();
        for event in &order {
            match event {
                Event::PutOld => outcomes.push(users.write_through(&1, &old, base + 1).await.unwrap()),
                Event::PutNew => outcomes.push(users.write_through(&1, &new, base + 2).await.unwrap()),
                Event::Invalidate => users.invalidate(&1).await.unwrap(),
            }
        }
        let cached = users.peek(&1).await.unwrap();
        assert_ne!(
            cached,
            Some(old.clone()),
            "{order:?}: the older row is cached ({outcomes:?})"
        );
        let put_new_last =
            order.iter().rposition(|e| *e == Event::PutNew) > order.iter().rposition(|e| *e == Event::Invalidate);
        // On memcached a refused (older, later) write deletes the entry
        // rather than trust that the newer writer's entry landed
        // (`store::memcached::versioned`, step 5).
        let refusal_deletes = store.name() == "memcached"
            && order.iter().rposition(|e| *e == Event::PutOld) > order.iter().rposition(|e| *e == Event::PutNew);
        if put_new_last && !refusal_deletes {
            assert_eq!(cached, Some(new.clone()), "{order:?}: the newer row is cached");
        }
        // Whatever is cached, a read through the database gets the newer row.
        let read = users
            .get_or_load(&1, || async { Ok::<_, DbDown>(Some(User::new(1, 2))) })
            .await
            .unwrap();
        assert_eq!(read, Some(new), "{order:?}");
    }
}

/// memcached compares by a protocol of CAS-guarded steps, whose own
/// interleavings `store::memcached::versioned`'s tests explore; here the
/// whole writes, through the engine.
#[cfg(feature = "memcached")]
#[tokio::test]
async fn every_order_of_two_writers_and_an_invalidation_leaves_the_newer_row_on_memcached() {
    let server = aside_testkit::MemcachedServer::start();
    let store: Arc<dyn Store> = Arc::new(common::patient_memcached(&server.addr()).await);
    every_order_leaves_the_newer_row(store.clone(), 0).await;
    versions_past_2_to_the_53_compare_exactly(store).await;
}

#[tokio::test]
async fn every_order_of_two_writers_and_an_invalidation_leaves_the_newer_row_in_memory() {
    every_order_leaves_the_newer_row(Arc::new(MemoryStore::new()), 0).await;
}

#[tokio::test]
async fn every_order_of_two_writers_and_an_invalidation_leaves_the_newer_row_on_redis() {
    let server = RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(common::patient_redis(&server.url()).await);
    every_order_leaves_the_newer_row(store.clone(), 0).await;
    versions_past_2_to_the_53_compare_exactly(store).await;
}

/// Above 2^53, where Lua's numbers would round 2^60 + 1 and 2^60 + 2
/// together, and where a longer decimal is a larger version.
async fn versions_past_2_to_the_53_compare_exactly(store: Arc<dyn Store>) {
    let base = 1u64 << 60;
    let users = users(store, "big");
    assert_eq!(
        users.write_through(&1, &User::new(1, 2), base + 2).await.unwrap(),
        WriteThrough::Written
    );
    assert_eq!(
        users.write_through(&1, &User::new(1, 1), base + 1).await.unwrap(),
        WriteThrough::Superseded
    );
    assert_eq!(
        users.write_through(&1, &User::new(1, 3), base + 10).await.unwrap(),
        WriteThrough::Written,
        "a longer decimal is a larger version"
    );
    assert_eq!(users.peek(&1).await.unwrap(), Some(User::new(1, 3)));
}

/// A reader that read the older row before the newer write landed fills
/// after it: its lease was revoked by the write, so the fill is refused.
#[tokio::test]
async fn a_readers_late_fill_of_the_older_row_does_not_replace_the_newer_one() {
    let store = Instrumented::new(MemoryStore::new(), Arc::new(AtomicUsize::new(0)));
    let hooks = store.hooks.clone();
    let store: Arc<dyn Store> = Arc::new(store);
    let users = users(store, "user");
    let db = Db::with_users(1);
    let paused = hooks.pause_next("fill");
    let reader = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move { common::read(&users, &db, 1).await }
    });
    paused.reached.notified().await;
    // The reader loaded v0 and waits to fill it; the writer writes v1.
    db.put(User::new(1, 1));
    let written = users.write_through(&1, &User::new(1, 1), 1).await.unwrap();
    assert_eq!(written, WriteThrough::Written);
    paused.release();
    let (served, _) = reader.await.unwrap();
    assert_eq!(served, Some(User::new(1, 0)), "the reader began before the write");
    assert_eq!(users.peek(&1).await.unwrap(), Some(User::new(1, 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_end_at_the_highest_version() {
    let server = RedisServer::start();
    #[allow(unused_mut)]
    let mut stores: Vec<Arc<dyn Store>> = common::memory_and_redis(&server.url()).await.into();
    #[cfg(feature = "memcached")]
    let memcached = aside_testkit::MemcachedServer::start();
    #[cfg(feature = "memcached")]
    stores.push(Arc::new(common::patient_memcached(&memcached.addr()).await));
    for store in stores {
        let name = store.name();
        for round in 0..20u64 {
            let users = users(store.clone(), &format!("race{round}"));
            let mut versions: Vec<u64> = (1..=8).collect();
            versions.rotate_left((round % 8) as usize);
            if round % 2 == 1 {
                versions.reverse();
            }
            let writers: Vec<_> = versions
                .into_iter()
                .map(|v| {
                    let users = users.clone();
                    tokio::spawn(async move { users.write_through(&1, &User::new(1, v), v).await })
                })
                .collect();
            let mut written = 0;
            for writer in writers {
                if writer.await.unwrap().unwrap() == WriteThrough::Written {
                    written += 1;
                }
            }
            assert!(written >= 1, "{name} round {round}");
            let cached = users.peek(&1).await.unwrap();
            if name == "memcached" {
                // A refused writer deletes the entry (step 5 of
                // `store::memcached::versioned`), possibly after v8 landed:
                // a miss, never an older row.
                assert!(
                    cached.is_none() || cached == Some(User::new(1, 8)),
                    "{name} round {round}: {cached:?} cached"
                );
            } else {
                assert_eq!(
                    cached,
                    Some(User::new(1, 8)),
                    "{name} round {round}: the highest version is cached"
                );
            }
        }
    }
}

#[tokio::test]
async fn without_leases_a_versioned_write_invalidates() {
    let users = Aside::builder()
        .build()
        .namespace::<u64, User>("user")
        .strategy(Strategy::Delete)
        .build()
        .unwrap();
    users.set(&1, &User::new(1, 0)).await.unwrap();
    assert_eq!(
        users.write_through(&1, &User::new(1, 1), 1).await.unwrap(),
        WriteThrough::Invalidated
    );
    assert_eq!(users.peek(&1).await.unwrap(), None);
}

#[tokio::test]
async fn a_value_over_the_size_limit_is_an_error_and_the_old_value_goes() {
    let names = Aside::builder()
        .build()
        .namespace::<u64, String>("name")
        .max_value_bytes(64)
        .build()
        .unwrap();
    names.write_through(&1, &"Ada".to_owned(), 1).await.unwrap();
    assert_eq!(names.peek(&1).await.unwrap().as_deref(), Some("Ada"));
    let err = names.write_through(&1, &"x".repeat(100), 2).await.unwrap_err();
    assert_eq!(err.kind(), aside::ErrorKind::Codec);
    assert_eq!(names.peek(&1).await.unwrap(), None, "the old row does not stay cached");
}

/// A newer writer whose cache write fails falls back to invalidating the
/// key and raising its write mark in one step (`invalidate_if_newer`), so
/// an older writer's cache write that lands after the fallback is refused.
/// With a plain invalidation as the fallback the older row was cached
/// while the database held the newer one (`tests/history.rs`, seed
/// 13692431980248563819 on memcached).
async fn a_failed_newer_write_is_not_undone_by_an_older_one<S: Store + 'static>(store: S) {
    let store = Instrumented::new(store, Arc::new(AtomicUsize::new(0)));
    let hooks = store.hooks.clone();
    let users = users(Arc::new(store), "fallback");
    let (old, new) = (User::new(1, 1), User::new(1, 2));
    // The older writer's cache write waits on its way to the store.
    let paused = hooks.pause_next("put_entry_if_newer");
    let older = tokio::spawn({
        let (users, old) = (users.clone(), old.clone());
        async move { users.write_through(&1, &old, 1).await }
    });
    paused.reached.notified().await;
    // The newer writer's cache write fails: it invalidates instead.
    hooks.fail("put_entry_if_newer");
    let failed = users.write_through(&1, &new, 2).await;
    assert!(failed.is_err(), "{failed:?}");
    hooks.heal("put_entry_if_newer");
    // Now the older write lands.
    paused.release();
    let late = older.await.unwrap().unwrap();
    assert_eq!(
        late,
        WriteThrough::Superseded,
        "the older row was written after the newer write"
    );
    assert_ne!(users.peek(&1).await.unwrap(), Some(old), "the older row is cached");
}

#[tokio::test]
async fn a_failed_newer_write_is_not_undone_by_an_older_one_in_memory() {
    a_failed_newer_write_is_not_undone_by_an_older_one(MemoryStore::new()).await;
}

#[tokio::test]
async fn a_failed_newer_write_is_not_undone_by_an_older_one_on_redis() {
    let server = RedisServer::start();
    a_failed_newer_write_is_not_undone_by_an_older_one(common::patient_redis(&server.url()).await).await;
}

#[cfg(feature = "memcached")]
#[tokio::test]
async fn a_failed_newer_write_is_not_undone_by_an_older_one_on_memcached() {
    let server = aside_testkit::MemcachedServer::start();
    let store = common::patient_memcached(&server.addr()).await;
    a_failed_newer_write_is_not_undone_by_an_older_one(store).await;
}

/// The fallback's invalidation, when the store is away, is queued with
/// its version and replayed as `invalidate_if_newer`: the replay raises the
/// mark too, so an older write after it is refused.
#[tokio::test]
async fn a_queued_fallback_raises_the_mark_when_replayed() {
    let store = Instrumented::new(MemoryStore::new(), Arc::new(AtomicUsize::new(0)));
    let hooks = store.hooks.clone();
    let aside = Aside::builder().shared_store(Arc::new(store)).build();
    let users = aside.namespace::<u64, User>("replayed").build().unwrap();
    hooks.fail("put_entry_if_newer");
    hooks.fail("invalidate_if_newer");
    assert!(users.write_through(&1, &User::new(1, 2), 2).await.is_err());
    assert_eq!(aside.stats().invalidations_queued, 1);
    hooks.heal("put_entry_if_newer");
    hooks.heal("invalidate_if_newer");
    let report = aside.shutdown(std::time::Duration::from_secs(60)).await;
    assert_eq!((report.replayed, report.dropped), (1, 0), "{report:?}");
    assert_eq!(
        users.write_through(&1, &User::new(1, 1), 1).await.unwrap(),
        WriteThrough::Superseded,
        "the replay raised the mark"
    );
}
