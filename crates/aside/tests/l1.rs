//! The in-process first tier: hits that skip the network, local
//! invalidation, and a fill racing an invalidation that must not install
//! the old value.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::{Aside, MemoryStore, Source};
use aside_testkit::RedisServer;
use common::{Db, Instrumented, User};

#[tokio::test]
async fn l1_hits_skip_the_store_and_invalidation_evicts_them() {
    let server = RedisServer::start();
    let aside = common::patient_builder()
        .store(common::patient_redis(&server.url()).await)
        .build();
    let users = aside
        .namespace::<u64, User>("user")
        .l1(1_000, Duration::from_secs(60))
        .build()
        .unwrap();
    let db = Db::with_users(1);
    assert_eq!(users.fetch(&1, || db.get(1)).await.unwrap().source, Source::Loaded);

    // Empty the server: a hit now can only come from the L1.
    let mut conn = common::redis_conn(&server.url()).await;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    let f = users.fetch(&1, || db.get(1)).await.unwrap();
    assert_eq!((f.value, f.source), (Some(User::new(1, 0)), Source::Hit));
    assert_eq!(aside.stats().l1_hits, 1);
    assert_eq!(aside.stats().hits, 1, "an L1 hit is a hit too");
    assert_eq!(db.queries(), 1);

    db.put(User::new(1, 1));
    users.invalidate(&1).await.unwrap();
    let f = users.fetch(&1, || db.get(1)).await.unwrap();
    assert_eq!((f.value, f.source), (Some(User::new(1, 1)), Source::Loaded));
}

#[tokio::test]
async fn a_fill_racing_an_invalidation_does_not_install_the_old_value() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut store = Instrumented::new(MemoryStore::new(), calls.clone());
    store.peek_gate = Some(gate.clone());
    // The gated read must wait for the test, not time out into a load.
    let aside = common::patient_builder().store(store).build();
    let users = aside
        .namespace::<u64, User>("user")
        .l1(1_000, Duration::from_secs(60))
        .build()
        .unwrap();
    users.set(&1, &User::new(1, 0)).await.unwrap();
    let before = calls.load(Ordering::SeqCst);

    // A reader reads the store (old value) and is held before it installs.
    let reader = {
        let users = users.clone();
        tokio::spawn(async move { users.fetch(&1, || async { Ok::<_, common::DbDown>(None) }).await })
    };
    // Its read is done once it called the store; it then waits on the gate.
    while calls.load(Ordering::SeqCst) == before {
        tokio::task::yield_now().await;
    }
    // The invalidation lands while the reader is between its read and its install.
    users.invalidate(&1).await.unwrap();
    gate.add_permits(1);
    let f = reader.await.unwrap().unwrap();
    assert_eq!(
        f.value,
        Some(User::new(1, 0)),
        "the reader began before the invalidation"
    );

    gate.add_permits(10);
    assert_eq!(
        users.get(&1).await.unwrap(),
        None,
        "the old value was not installed in the L1"
    );
    assert_eq!(aside.stats().l1_hits, 0);
}

/// I1 across two namespaces of one name in one `Aside`: a writer without an
/// L1 of its own still evicts its peer's L1 before `invalidate` returns (the
/// bus never brings a process its own messages). Failed before: the
/// eviction ran only when the writer had an L1.
#[tokio::test]
async fn a_writer_without_an_l1_evicts_its_peers_l1() {
    let aside = Aside::builder().build();
    let cached = aside
        .namespace::<u64, u64>("user")
        .l1(100, Duration::from_secs(60))
        .build()
        .unwrap();
    let writer = aside.namespace::<u64, u64>("user").build().unwrap();
    let first = cached
        .get_or_load(&1, || async { Ok::<_, std::io::Error>(Some(1)) })
        .await
        .unwrap();
    assert_eq!(first, Some(1));
    writer.invalidate(&1).await.unwrap();
    let after = cached
        .get_or_load(&1, || async { Ok::<_, std::io::Error>(Some(2)) })
        .await
        .unwrap();
    assert_eq!(after, Some(2), "the peer's L1 kept the value the writer invalidated");
}
