//! Regression tests of the defects of issue 12, one per defect, each
//! driving the exact interleaving the audit found through the public API
//! (a wrapper store pauses or fails the chosen operation). Each fails when
//! its fix is reverted; the history checker (`tests/history.rs`) covers
//! the same paths with random interleavings.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::{Aside, FetchOptions, MemoryStore, Namespace, Source, Store, Strategy};
use aside_testkit::RedisServer;
use common::{Db, DbDown, Instrumented, User, eventually};

/// One wrapper over one memory store, and its hooks.
fn gated() -> (Arc<dyn Store>, Arc<common::Hooks>) {
    let store = Instrumented::new(MemoryStore::new(), Arc::new(AtomicUsize::new(0)));
    let hooks = store.hooks.clone();
    (Arc::new(store), hooks)
}

/// A namespace of users (`strategy`, an L1 if `l1`) in a patient `Aside`
/// over a gated store, with the store, its hooks, and a database of one user.
fn gated_users(strategy: Strategy, l1: bool) -> (Arc<dyn Store>, Arc<common::Hooks>, Namespace<u64, User>, Db) {
    let (store, hooks) = gated();
    let ns = users(&patient(&store), strategy, l1);
    (store, hooks, ns, Db::with_users(1))
}

/// An `Aside` over `store` whose store calls may pause as long as a test needs.
fn patient(store: &Arc<dyn Store>) -> Aside {
    Aside::builder()
        .shared_store(store.clone())
        .op_timeout(Duration::from_secs(60))
        .build()
}

/// One namespace in each of two `Aside`s ("processes") over one memory
/// store, with these lease settings (the lease wait defaults to the TTL).
fn two_processes(lease_ttl: Duration, lease_wait: Option<Duration>) -> (Namespace<u64, User>, Namespace<u64, User>) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let build = |aside: &Aside| {
        let builder = aside.namespace::<u64, User>("user").lease_ttl(lease_ttl);
        let builder = match lease_wait {
            Some(wait) => builder.lease_wait(wait),
            None => builder,
        };
        builder.build().unwrap()
    };
    (build(&patient(&store)), build(&patient(&store)))
}

fn users(aside: &Aside, strategy: Strategy, l1: bool) -> Namespace<u64, User> {
    let builder = aside.namespace::<u64, User>("user").strategy(strategy);
    let builder = if l1 {
        builder.l1(100, Duration::from_secs(60))
    } else {
        builder
    };
    builder.build().unwrap()
}

/// A batch loader: the users of `ids` that `db` has.
async fn load_many(db: Db, ids: Vec<u64>) -> Result<std::collections::HashMap<u64, User>, DbDown> {
    let mut found = std::collections::HashMap::new();
    for id in ids {
        if let Some(user) = db.get(id).await? {
            found.insert(id, user);
        }
    }
    Ok(found)
}

async fn read(ns: &Namespace<u64, User>, db: &Db, id: u64) -> Option<User> {
    let db = db.clone();
    ns.get_or_load(&id, move || {
        let db = db.clone();
        async move { db.get(id).await }
    })
    .await
    .unwrap()
}

/// A forced refresh of `id` through `ns`, loading from `db`.
async fn refresh(ns: &Namespace<u64, User>, db: &Db, id: u64) -> aside::Fetched<User> {
    let db = db.clone();
    ns.fetch_with(&id, FetchOptions::force_refresh(), move || {
        let db = db.clone();
        async move { db.get(id).await }
    })
    .await
    .unwrap()
}

/// Defect 1: a reader that missed the L1 after the writer's eviction but
/// before its store operation read the old value and installed it in the
/// L1, where nothing removed it. For `invalidate` and for `set`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_01_no_old_value_enters_the_l1_during_a_write() {
    for (op, via_set) in [("invalidate", false), ("put_entry", true)] {
        let (_, hooks, ns, db) = gated_users(Strategy::Lease, true);
        assert_eq!(read(&ns, &db, 1).await, Some(User::new(1, 0)));

        db.put(User::new(1, 1));
        let paused = hooks.pause_next(op);
        let writer = {
            let ns = ns.clone();
            tokio::spawn(async move {
                if via_set {
                    ns.set(&1, &User::new(1, 1)).await
                } else {
                    ns.invalidate(&1).await
                }
            })
        };
        paused.reached.notified().await;
        // The writer has evicted the L1; the store still has version 0.
        assert_eq!(
            read(&ns, &db, 1).await,
            Some(User::new(1, 0)),
            "{op}: read before the write"
        );
        paused.release();
        writer.await.unwrap().unwrap();
        assert_eq!(
            read(&ns, &db, 1).await,
            Some(User::new(1, 1)),
            "{op}: a read after the write returned must see it"
        );
    }
}

/// Defect 2: `set` published on the bus only when the store write failed,
/// so other processes' L1s kept the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_02_set_reaches_other_processes_l1() {
    let server = RedisServer::start();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let aside = common::patient_builder()
            .store(common::patient_redis(&server.url()).await)
            .bus(aside::bus::redis::RedisBus::connect(&server.url()).await.unwrap())
            .build();
        let ns = users(&aside, Strategy::Lease, true);
        instances.push((aside, ns));
    }
    let db = Db::with_users(1);
    let (_, reader) = &instances[0];
    let (_, writer) = &instances[1];
    // The reader's L1 only fills once its bus subscription is up.
    eventually("the reader's L1 holds version 0", Duration::from_secs(30), || async {
        read(reader, &db, 1).await;
        instances[0].0.stats().l1_hits > 0
    })
    .await;

    db.put(User::new(1, 1));
    writer.set(&1, &User::new(1, 1)).await.unwrap();
    eventually(
        "the other process's L1 drops version 0",
        Duration::from_secs(30),
        || async { read(reader, &db, 1).await == Some(User::new(1, 1)) },
    )
    .await;
}

/// Defect 5: fail-safe wrote back the value it had peeked, under a refresh
/// lease taken later, over an invalidation and a newer fill in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_05_fail_safe_never_writes_back_an_old_value() {
    for strategy in [Strategy::Lease, Strategy::Delete] {
        let (store, hooks) = gated();
        let build = |aside: &Aside| {
            aside
                .namespace::<u64, User>("user")
                .strategy(strategy)
                .ttl(Duration::from_millis(1))
                .fail_safe(Duration::from_secs(60), Duration::from_secs(60))
                .build()
                .unwrap()
        };
        let (one, other) = (patient(&store), patient(&store));
        let (failing, fresh) = (build(&one), build(&other));
        let db = Db::with_users(1);
        read(&failing, &db, 1).await;
        // Let the 1 ms logical TTL pass (wall-clock time; it cannot be paused).
        tokio::time::sleep(Duration::from_millis(20)).await;

        // The failing reader peeks version 0 (expired), then pauses: before
        // its refresh lease (Lease), or in its loader (Delete has no lease).
        let loading = Arc::new(tokio::sync::Notify::new());
        let go_on = Arc::new(tokio::sync::Semaphore::new(0));
        let paused = (strategy == Strategy::Lease).then(|| hooks.pause_next("lease_for_refresh"));
        let stuck = {
            let failing = failing.clone();
            let (loading, go_on) = (loading.clone(), go_on.clone());
            tokio::spawn(async move {
                failing
                    .get_or_load(&1, move || {
                        let (loading, go_on) = (loading.clone(), go_on.clone());
                        async move {
                            loading.notify_one();
                            go_on.acquire().await.expect("open").forget();
                            Err::<Option<User>, _>(DbDown)
                        }
                    })
                    .await
            })
        };
        match &paused {
            Some(paused) => paused.reached.notified().await,
            None => loading.notified().await,
        }
        db.put(User::new(1, 1));
        fresh.invalidate(&1).await.unwrap();
        assert_eq!(read(&fresh, &db, 1).await, Some(User::new(1, 1)));
        if let Some(paused) = &paused {
            paused.release();
        }
        go_on.add_permits(1);
        let served = stuck.await.unwrap();
        // Whatever the failed reader was served, the store now holds version 1:
        // another failing read is served what the store has.
        drop(served);
        let now = failing
            .get_or_load(&1, || async { Err::<Option<User>, _>(DbDown) })
            .await
            .unwrap();
        assert_eq!(now, Some(User::new(1, 1)), "{strategy}: the old row came back");
    }
}

/// Defect 6c: two namespaces of the same name in one `Aside` never evicted
/// each other's L1 (a process ignores its own bus messages).
#[tokio::test]
async fn defect_06_same_name_namespaces_evict_each_other() {
    let aside = Aside::builder().build();
    let (first, second) = (
        users(&aside, Strategy::Lease, true),
        users(&aside, Strategy::Lease, true),
    );
    let db = Db::with_users(1);
    read(&first, &db, 1).await;
    read(&first, &db, 1).await;
    assert!(aside.stats().l1_hits > 0);
    db.put(User::new(1, 1));
    second.invalidate(&1).await.unwrap();
    assert_eq!(read(&first, &db, 1).await, Some(User::new(1, 1)));
}

/// Defect 7: batch reads served a value whose invalidation was still
/// pending (Versioned returned before the check).
#[tokio::test]
async fn defect_07_batch_reads_respect_a_pending_invalidation() {
    for strategy in [Strategy::Versioned, Strategy::Lease, Strategy::Delete] {
        let (_, hooks, ns, db) = gated_users(strategy, false);
        read(&ns, &db, 1).await;
        db.put(User::new(1, 1));
        for op in ["incr", "invalidate", "delete"] {
            hooks.fail(op);
        }
        ns.invalidate(&1).await.unwrap_err();
        let loader = |ids: Vec<u64>| {
            let db = db.clone();
            async move {
                Ok::<_, DbDown>(
                    ids.into_iter()
                        .filter_map(|id| db.get_now(id).map(|u| (id, u)))
                        .collect::<std::collections::HashMap<_, _>>(),
                )
            }
        };
        let found = ns.get_many_or_load(&[1], loader).await.unwrap();
        assert_eq!(found.get(&1), Some(&User::new(1, 1)), "{strategy}");
        for op in ["incr", "invalidate", "delete"] {
            hooks.heal(op);
        }
    }
}

/// Defect 7 (load timeout): batch loads ignored `load_timeout`.
#[tokio::test(start_paused = true)]
async fn defect_07_batch_loads_honour_the_load_timeout() {
    let aside = Aside::builder().build();
    let ns = aside
        .namespace::<u64, User>("user")
        .load_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    // Virtual time: the outer bound turns a hang into a failure at once.
    let err = tokio::time::timeout(
        Duration::from_secs(3600),
        ns.get_many_or_load(&[1, 2], |_| {
            std::future::pending::<Result<std::collections::HashMap<u64, User>, DbDown>>()
        }),
    )
    .await
    .expect("the batch load was not bounded by load_timeout")
    .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
}

/// Defect 9: with Versioned and fail-safe, data outlived its version
/// counter, and once the counter expired the pre-invalidation row came back.
#[tokio::test]
async fn defect_09_version_counters_outlive_their_data() {
    let server = RedisServer::start();
    let aside = common::patient_builder()
        .store(common::patient_redis(&server.url()).await)
        .build();
    let ns = aside
        .namespace::<u64, User>("user")
        .strategy(Strategy::Versioned)
        .ttl(Duration::from_secs(1))
        .fail_safe(Duration::from_secs(600), Duration::from_secs(1))
        .build()
        .unwrap();
    let db = Db::with_users(1);
    ns.invalidate(&1).await.unwrap();
    read(&ns, &db, 1).await;
    let mut conn = common::redis_conn(&server.url()).await;
    let version_ttl: i64 = redis::cmd("PTTL")
        .arg("{user:1}#ver")
        .query_async(&mut conn)
        .await
        .unwrap();
    let version: u64 = redis::cmd("GET")
        .arg("{user:1}#ver")
        .query_async(&mut conn)
        .await
        .unwrap();
    let data_ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{{user:1}}#v{version}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(data_ttl > 0, "the data is cached under version {version}");
    assert!(
        version_ttl > data_ttl,
        "the counter ({version_ttl} ms) must outlive the data under it ({data_ttl} ms)"
    );
}

/// Defect 11: the L1 kept every value for its own TTL, ignoring a
/// tombstone's negative TTL; and a forced refresh left the old L1 copy.
#[tokio::test]
async fn defect_11_the_l1_honours_the_entry_life_and_forced_refreshes() {
    let aside = Aside::builder().build();
    let ns = aside
        .namespace::<u64, User>("user")
        .negative_ttl(Duration::from_millis(50))
        .l1(100, Duration::from_secs(60))
        .build()
        .unwrap();
    let db = Db::default();
    assert_eq!(read(&ns, &db, 1).await, None);
    db.put(User::new(1, 0));
    // Let the 50 ms negative TTL pass (the L1's deadlines, and moka's, are
    // on the real monotonic clock, which a paused tokio clock would not move).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        read(&ns, &db, 1).await,
        Some(User::new(1, 0)),
        "the tombstone outlived its negative TTL in the L1"
    );

    db.put(User::new(1, 1));
    assert_eq!(refresh(&ns, &db, 1).await.value, Some(User::new(1, 1)));
    assert_eq!(
        read(&ns, &db, 1).await,
        Some(User::new(1, 1)),
        "the forced refresh left the old L1 copy"
    );
}

type UserLoad = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<User>, DbDown>> + Send>>;

/// A loader that counts its runs in `loads` and takes `took` to answer.
fn slow_loader(loads: Arc<AtomicUsize>, took: Duration) -> impl FnMut() -> UserLoad + Send + 'static {
    move || {
        let loads = loads.clone();
        Box::pin(async move {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(took).await;
            Ok(Some(User::new(1, 0)))
        })
    }
}

/// Defect 13: a loader slower than the lease TTL lost its lease to expiry;
/// a reader in another process then took a new lease, the slow fill was
/// refused as if revoked, and the loads repeated (never cached).
#[tokio::test(start_paused = true)]
async fn defect_13_a_slow_loader_keeps_its_lease() {
    let (slow, next) = two_processes(Duration::from_millis(100), Some(Duration::from_secs(60)));
    let loads = Arc::new(AtomicUsize::new(0));
    let slow_loader = |loads| slow_loader(loads, Duration::from_millis(350));
    let first = tokio::spawn({
        let (slow, loader) = (slow.clone(), slow_loader(loads.clone()));
        async move { slow.get_or_load(&1, loader).await }
    });
    // Virtual time: past the 100 ms lease TTL while the first load runs.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = next.fetch(&1, slow_loader(loads.clone())).await.unwrap();
    assert_eq!(first.await.unwrap().unwrap(), Some(User::new(1, 0)));
    assert_eq!(second.value, Some(User::new(1, 0)));
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the lease ran out under the slow loader and the key was loaded again"
    );
    assert_eq!(
        next.get(&1).await.unwrap(),
        Some(User::new(1, 0)),
        "the value was not cached"
    );
}

/// Defect 13 on memcached, whose leases are items that expire by whole
/// seconds and are renewed by a touch (real time: about 3 s).
#[cfg(feature = "memcached")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_13_a_slow_loader_keeps_its_lease_on_memcached() {
    use aside::store::memcached::MemcachedStore;
    let server = aside_testkit::MemcachedServer::start();
    let mut instances = Vec::new();
    // Patient timeouts and no latency rule: on a loaded host a slow answer
    // must not send a reader to the loader, which is not what this tests.
    let mut config = aside::store::memcached::MemcachedConfig::default();
    config.response_timeout = Duration::from_secs(10);
    for _ in 0..2 {
        let aside = Aside::builder()
            .store(
                MemcachedStore::connect_with(&server.addr(), config.clone())
                    .await
                    .unwrap(),
            )
            .op_timeout(Duration::from_secs(10))
            .breaker(aside::BreakerConfig::default().slow_call(Duration::from_secs(3600)))
            .build();
        let ns = aside
            .namespace::<u64, User>("user")
            .lease_ttl(Duration::from_secs(1))
            .lease_wait(Duration::from_secs(60))
            .build()
            .unwrap();
        instances.push((aside, ns));
    }
    let loads = Arc::new(AtomicUsize::new(0));
    let slow_loader = |loads| slow_loader(loads, Duration::from_millis(3500));
    let first = tokio::spawn({
        let (slow, loader) = (instances[0].1.clone(), slow_loader(loads.clone()));
        async move { slow.get_or_load(&1, loader).await }
    });
    // Past the lease's item TTL (2 s: memcached rounds up, plus one) while
    // the first load runs.
    tokio::time::sleep(Duration::from_millis(2800)).await;
    let second = instances[1].1.fetch(&1, slow_loader(loads.clone())).await.unwrap();
    assert_eq!(first.await.unwrap().unwrap(), Some(User::new(1, 0)));
    assert_eq!(second.value, Some(User::new(1, 0)));
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the lease ran out under the slow loader"
    );
}

/// Defect 14: a cancelled leader leaked its lease, and the next reader
/// (another process) waited it out, then loaded without caching.
#[tokio::test(start_paused = true)]
async fn defect_14_a_cancelled_leader_gives_its_lease_back() {
    // Waiting out a leaked lease (10 s) takes longer than the next reader
    // waits (1 s): it then loads without caching.
    let (cancelled, next) = two_processes(Duration::from_secs(10), Some(Duration::from_secs(1)));
    let started = Arc::new(tokio::sync::Notify::new());
    let signal = started.clone();
    let leader = tokio::spawn(async move {
        cancelled
            .get_or_load(&1, move || {
                signal.notify_one();
                std::future::pending::<Result<Option<User>, DbDown>>()
            })
            .await
    });
    started.notified().await;
    leader.abort();
    let _ = leader.await;

    let db = Db::with_users(1);
    let fetched = next
        .fetch(&1, || {
            let db = db.clone();
            async move { db.get(1).await }
        })
        .await
        .unwrap();
    assert_eq!(fetched.source, Source::Loaded);
    assert_eq!(
        next.get(&1).await.unwrap(),
        Some(User::new(1, 0)),
        "the next reader could not take the lease, so it did not cache"
    );
}

/// Defect 15: a fill the store refused (a value over memcached's item
/// limit) never released the lease, so every later read waited it out.
#[tokio::test]
async fn defect_15_a_failed_fill_gives_the_lease_back() {
    let (store, hooks, ns, db) = gated_users(Strategy::Lease, false);
    hooks.fail("fill");
    assert_eq!(read(&ns, &db, 1).await, Some(User::new(1, 0)));
    hooks.heal("fill");
    let view = store.peek_entry("user:1").await.unwrap();
    assert_eq!(view.lease, None, "the lease of the failed fill is still held");
}

/// Defect 18: the builder accepted values that panicked on the first fill.
#[tokio::test]
async fn defect_18_the_builder_refuses_what_would_panic() {
    let aside = Aside::builder().build();
    let refused = [
        aside.namespace::<u64, User>("a").ttl(Duration::MAX).build().err(),
        aside.namespace::<u64, User>("b").jitter(f64::NAN).build().err(),
        aside.namespace::<u64, User>("c").jitter(1.5).build().err(),
        aside
            .namespace::<u64, User>("d")
            .strategy(Strategy::Versioned)
            .ttl(Duration::from_secs(u64::MAX / 4))
            .build()
            .err(),
        aside
            .namespace::<u64, User>("e")
            .early_refresh(aside::EarlyRefresh::XFetch { beta: f64::NAN })
            .build()
            .err(),
        aside
            .namespace::<u64, User>("f")
            .lease_ttl(Duration::ZERO)
            .build()
            .err(),
        aside
            .namespace::<u64, User>("g")
            .fail_safe(Duration::MAX, Duration::from_secs(1))
            .build()
            .err(),
    ];
    for (i, err) in refused.into_iter().enumerate() {
        let err = err.unwrap_or_else(|| panic!("case {i} was accepted"));
        assert_eq!(err.kind(), aside::ErrorKind::Config, "case {i}: {err}");
    }
    // The largest accepted values work.
    let ns = aside
        .namespace::<u64, User>("h")
        .strategy(Strategy::Versioned)
        .ttl(aside::MAX_DURATION)
        .jitter(0.5)
        .fail_safe(aside::MAX_DURATION, Duration::from_secs(1))
        .build()
        .unwrap();
    let db = Db::with_users(1);
    assert_eq!(read(&ns, &db, 1).await, Some(User::new(1, 0)));
    ns.invalidate(&1).await.unwrap();
}

/// Found by review (R1) and by the checker: a Versioned `set` wrote under
/// the current version, so a fill of an older load, in flight during the
/// `set`, overwrote it after it returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_set_is_not_overwritten_by_an_older_fill() {
    let (store, hooks) = gated();
    let (writer, reader) = (patient(&store), patient(&store));
    let (ns_w, ns_r) = (
        users(&writer, Strategy::Versioned, false),
        users(&reader, Strategy::Versioned, false),
    );
    let db = Db::with_users(1);
    // The reader misses, loads version 0, and its fill pauses.
    let paused = hooks.pause_next("set");
    let fill = {
        let (ns_r, db) = (ns_r.clone(), db.clone());
        tokio::spawn(async move { read(&ns_r, &db, 1).await })
    };
    paused.reached.notified().await;
    db.put(User::new(1, 1));
    ns_w.set(&1, &User::new(1, 1)).await.unwrap();
    paused.release();
    assert_eq!(fill.await.unwrap(), Some(User::new(1, 0)));
    assert_eq!(
        read(&ns_w, &db, 1).await,
        Some(User::new(1, 1)),
        "the older fill overwrote the set"
    );
}

/// Found by review (R2): a lease granted in the store whose reply was lost
/// to the timeout (or whose caller was cancelled during the call) was never
/// released; the next reader waited it out and loaded without caching.
#[tokio::test(start_paused = true)]
async fn a_lease_granted_behind_a_lost_reply_is_released() {
    for cancel in [false, true] {
        let (store, hooks) = gated();
        hooks.answer_late("lookup_or_lease", Duration::from_secs(1));
        let timed_out = Aside::builder()
            .shared_store(store.clone())
            .op_timeout(Duration::from_millis(100))
            .build();
        let other = patient(&store);
        let build = |aside: &Aside| {
            aside
                .namespace::<u64, User>("user")
                .lease_ttl(Duration::from_secs(10))
                .lease_wait(Duration::from_secs(1))
                .build()
                .unwrap()
        };
        let (first, next) = (build(&timed_out), build(&other));
        let db = Db::with_users(1);
        if cancel {
            let (first, db) = (first.clone(), db.clone());
            let caller = tokio::spawn(async move { read(&first, &db, 1).await });
            tokio::time::sleep(Duration::from_millis(50)).await;
            caller.abort();
            let _ = caller.await;
        } else {
            // The reply comes after the 100 ms timeout: the loader answers.
            assert_eq!(read(&first, &db, 1).await, Some(User::new(1, 0)));
        }
        hooks.answer_late("lookup_or_lease", Duration::ZERO);
        assert_eq!(read(&next, &db, 1).await, Some(User::new(1, 0)));
        assert_eq!(
            next.get(&1).await.unwrap(),
            Some(User::new(1, 0)),
            "cancel={cancel}: the next reader found the lost lease still held and did not cache"
        );
    }
}

/// Found by review (R3): renewal kept a hung loader's lease alive for as
/// long as it hung, so no other process cached the key again. Renewals of
/// a loader without a load timeout stop after 60 s (a slow query is still
/// cached: `defect_13_a_slow_loader_keeps_its_lease_by_default`); the
/// lease then runs out.
#[tokio::test(start_paused = true)]
async fn a_hung_loader_blocks_its_key_for_a_bounded_time() {
    let (hung, next) = two_processes(Duration::from_millis(300), None);
    let _hung = tokio::spawn(async move {
        hung.get_or_load(&1, std::future::pending::<Result<Option<User>, DbDown>>)
            .await
    });
    // Virtual time: the renewal bound (60 s) plus a lease TTL, and more.
    tokio::time::sleep(Duration::from_millis(61_500)).await;
    let db = Db::with_users(1);
    read(&next, &db, 1).await;
    assert_eq!(
        next.get(&1).await.unwrap(),
        Some(User::new(1, 0)),
        "the hung loader's lease is still renewed: nobody else can fill the key"
    );
}

/// Found by review (R4): a batch renewed all its leases or none, so one
/// key invalidated during a slow batch load let the others' leases run out,
/// and a reader in another process took key 2's lease and loaded it again.
#[tokio::test(start_paused = true)]
async fn one_invalidated_key_does_not_stop_a_batch_renewing_the_others() {
    let (ns, next) = two_processes(Duration::from_millis(300), Some(Duration::from_secs(60)));
    let db = Db::with_users(2);
    let batch = {
        let (ns, db) = (ns.clone(), db.clone());
        tokio::spawn(async move {
            ns.get_many_or_load(&[1, 2], move |keys: Vec<u64>| {
                let db = db.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    Ok::<_, DbDown>(keys.into_iter().filter_map(|k| db.get_now(k).map(|u| (k, u))).collect())
                }
            })
            .await
            .unwrap()
        })
    };
    // Virtual time.
    tokio::time::sleep(Duration::from_millis(150)).await;
    db.put(User::new(1, 1));
    ns.invalidate(&1).await.unwrap();
    // Past key 2's lease TTL, were it no longer renewed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let second = next
        .fetch(&2, slow_loader(loads.clone(), Duration::from_millis(10)))
        .await
        .unwrap();
    assert_eq!(batch.await.unwrap().len(), 2);
    assert_eq!(second.value.map(|u| u.id), Some(2));
    assert_eq!(
        loads.load(Ordering::SeqCst),
        0,
        "key 2's lease ran out because key 1's was revoked, and it was loaded again"
    );
}

/// Found by review (R5): an L1 whose bus listener never started (the
/// `Aside` built outside a runtime) or died with its first runtime refused
/// every install: the L1 was silently off.
#[test]
fn the_l1_fills_after_its_first_runtime_is_gone_or_without_one() {
    for outside in [true, false] {
        let (aside, ns) = if outside {
            let aside = Aside::builder().bus(aside_testkit::fault::MemoryBus::new()).build();
            let ns = users(&aside, Strategy::Lease, true);
            (aside, ns)
        } else {
            let first = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            first.block_on(async {
                let aside = Aside::builder().bus(aside_testkit::fault::MemoryBus::new()).build();
                let ns = users(&aside, Strategy::Lease, true);
                (aside, ns)
            })
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let db = Db::with_users(1);
            eventually("an L1 hit", Duration::from_secs(30), || async {
                read(&ns, &db, 1).await;
                aside.stats().l1_hits > 0
            })
            .await;
        });
    }
}

/// Found by the checker: a Versioned counter lost (a store restart, an
/// eviction) started over at 0, and a fill of a load from before, landing
/// late under a number the new counter reached again, served the old row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_version_counter_never_reuses_a_version() {
    let (store, hooks) = gated();
    let (writer, reader) = (patient(&store), patient(&store));
    let (ns_w, ns_r) = (
        users(&writer, Strategy::Versioned, false),
        users(&reader, Strategy::Versioned, false),
    );
    let db = Db::with_users(1);
    let paused = hooks.pause_next("set");
    let fill = {
        let (ns_r, db) = (ns_r.clone(), db.clone());
        tokio::spawn(async move { read(&ns_r, &db, 1).await })
    };
    paused.reached.notified().await;
    db.put(User::new(1, 1));
    ns_w.invalidate(&1).await.unwrap();
    // The counter is lost, as in a restart or an eviction.
    store.delete("{user:1}#ver").await.unwrap();
    paused.release();
    assert_eq!(fill.await.unwrap(), Some(User::new(1, 0)));
    assert_eq!(
        read(&ns_w, &db, 1).await,
        Some(User::new(1, 1)),
        "the late fill from before the counter was lost is served"
    );
}

/// Found by the checker (Redis, seed 14211575654616371506): a replayed
/// version bump after a restart recreated the counter at 1, so versions
/// were counted again from the start and a late fill under a reused one
/// was served. A replay that creates the counter moves it to a fresh start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_version_bump_never_restarts_the_count() {
    let (store, hooks) = gated();
    let aside = patient(&store);
    let ns = users(&aside, Strategy::Versioned, false);
    let db = Db::with_users(1);
    read(&ns, &db, 1).await;
    hooks.fail("incr");
    ns.invalidate(&1).await.unwrap_err();
    // The store restarts: the counter is gone.
    store.delete("{user:1}#ver").await.unwrap();
    hooks.heal("incr");
    eventually("the bump is replayed", Duration::from_secs(30), || async {
        aside.stats().invalidations_pending == 0
    })
    .await;
    let raw = store
        .get("{user:1}#ver")
        .await
        .unwrap()
        .expect("the replay wrote the counter");
    let version: u64 = std::str::from_utf8(&raw).unwrap().parse().unwrap();
    assert!(version > 1_000_000, "the counter restarted from {version}");
}

// Found by the review of issue 13: each test below fails with its fix reverted.

/// A slow query loads once and is cached with the default lease wait (the
/// lease TTL): renewals used to stop at the lease wait, so a loader slower
/// than the TTL lost its lease unless the user raised the wait.
#[tokio::test(start_paused = true)]
async fn defect_13_a_slow_loader_keeps_its_lease_by_default() {
    let (slow, next) = two_processes(Duration::from_millis(100), None);
    let loads = Arc::new(AtomicUsize::new(0));
    let first = tokio::spawn({
        let (slow, loader) = (slow.clone(), slow_loader(loads.clone(), Duration::from_millis(350)));
        async move { slow.get_or_load(&1, loader).await }
    });
    // Virtual time: past the lease TTL and the lease wait while the first
    // load runs, a reader in another process looks. Had the lease run out,
    // it would take a new one (and its failing load would give it back),
    // and the slow fill would be refused.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let _ = next.fetch(&1, || async { Err::<Option<User>, DbDown>(DbDown) }).await;
    assert_eq!(first.await.unwrap().unwrap(), Some(User::new(1, 0)));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(
        next.get(&1).await.unwrap(),
        Some(User::new(1, 0)),
        "the lease ran out under the slow loader: its value was not cached"
    );
}

/// A renewal call that hangs does not hold back a load that has finished:
/// the renewal used to be awaited inside the `select!` arm, so the load's
/// future was not polled until the renewal answered.
#[tokio::test(start_paused = true)]
async fn a_slow_renewal_does_not_hold_back_a_finished_load() {
    let (store, hooks) = gated();
    let aside = patient(&store);
    let users = aside
        .namespace::<u64, User>("user")
        .lease_ttl(Duration::from_millis(30))
        .build()
        .unwrap();
    // The first renewal (at 10 ms) never answers until the test ends.
    let renewal = hooks.pause_next("renew_lease");
    let read = users.get_or_load(&1, || async {
        tokio::time::sleep(Duration::from_millis(15)).await;
        Ok::<_, DbDown>(Some(User::new(1, 0)))
    });
    // Virtual time: the bound is reached only if the read waits for the
    // paused renewal (it would wait for the 60 s operation timeout).
    let answered = tokio::time::timeout(Duration::from_secs(30), read).await;
    renewal.release();
    assert_eq!(
        answered.expect("the finished load waited on a renewal").unwrap(),
        Some(User::new(1, 0))
    );
}

/// Waits until the entry of `key` holds no lease (the release on drop runs
/// in a spawned task).
async fn lease_given_back(store: &Arc<dyn Store>, key: &str) {
    eventually(
        "the cancelled caller's lease is given back",
        Duration::from_secs(30),
        || {
            let (store, key) = (store.clone(), key.to_owned());
            async move { store.peek_entry(&key).await.unwrap().lease.is_none() }
        },
    )
    .await;
}

/// A gated store, its hooks, and a namespace on it whose leases outlive
/// any test (a lease left behind is seen, never run out), shaped by `extra`.
fn long_leases(
    extra: impl FnOnce(aside::NamespaceBuilder<u64, User>) -> aside::NamespaceBuilder<u64, User>,
) -> (Arc<dyn Store>, Arc<common::Hooks>, Aside, Namespace<u64, User>) {
    let (store, hooks) = gated();
    let aside = patient(&store);
    let users = extra(aside.namespace::<u64, User>("user").lease_ttl(Duration::from_secs(300)))
        .build()
        .unwrap();
    (store, hooks, aside, users)
}

/// Cancels `read` once the paused store call is reached (and held there).
async fn cancel_when_reached<T: Send + 'static>(paused: common::Paused, read: tokio::task::JoinHandle<T>) {
    paused.reached.notified().await;
    read.abort();
    let _ = read.await;
}

/// A leader whose loader failed, cancelled while it gives its lease back:
/// the guard was disarmed before the release, so the lease stayed for its TTL.
#[tokio::test]
async fn a_leader_cancelled_while_releasing_after_a_loader_error_gives_the_lease_back() {
    let (store, hooks, _aside, users) = long_leases(|ns| ns);
    let paused = hooks.pause_next("release");
    let read = tokio::spawn({
        let users = users.clone();
        async move {
            users
                .get_or_load(&1, || async { Err::<Option<User>, DbDown>(DbDown) })
                .await
        }
    });
    cancel_when_reached(paused, read).await;
    lease_given_back(&store, &users.store_key(&1).unwrap()).await;
}

/// An early-refresh leader cancelled during its fill: the guard was
/// disarmed before the fill, so the refresh lease stayed for its TTL.
#[tokio::test]
async fn a_refresh_cancelled_during_its_fill_gives_the_lease_back() {
    let (store, hooks, _aside, users) = long_leases(|ns| ns.early_refresh(aside::EarlyRefresh::AfterFraction(0.0)));
    users.set(&1, &User::new(1, 0)).await.unwrap();
    let paused = hooks.pause_next("fill");
    let read = tokio::spawn({
        let users = users.clone();
        async move {
            users
                .fetch(&1, || async { Ok::<_, DbDown>(Some(User::new(1, 1))) })
                .await
        }
    });
    cancel_when_reached(paused, read).await;
    lease_given_back(&store, &users.store_key(&1).unwrap()).await;
}

/// A batch leader cancelled during its fill: the guards were disarmed
/// before the fill, so every lease of the batch stayed for its TTL.
#[tokio::test]
async fn a_batch_cancelled_during_its_fill_gives_the_leases_back() {
    let (store, hooks, _aside, users) = long_leases(|ns| ns);
    let db = Db::with_users(2);
    let paused = hooks.pause_next("fill_many");
    let read = tokio::spawn({
        let users = users.clone();
        async move {
            users
                .get_many_or_load(&[1, 2], move |ids: Vec<u64>| load_many(db.clone(), ids))
                .await
        }
    });
    cancel_when_reached(paused, read).await;
    for id in [1, 2] {
        lease_given_back(&store, &users.store_key(&id).unwrap()).await;
    }
}

/// I1 on the early-refresh path: a leader whose refresh load failed served
/// the value it had read before a write, stamped as if read when its load
/// began; a reader that began after the write's invalidation returned,
/// and joined that flight, took the old value (and put it in its L1).
#[tokio::test(start_paused = true)]
async fn a_refresh_that_falls_back_never_hands_its_old_value_to_a_later_reader() {
    let calls = Arc::new(AtomicUsize::new(0));
    let instrumented = Instrumented::new(MemoryStore::new(), calls.clone());
    let hooks = instrumented.hooks.clone();
    let store: Arc<dyn Store> = Arc::new(instrumented);
    let aside = patient(&store);
    let users = aside
        .namespace::<u64, User>("user")
        .lease_ttl(Duration::from_secs(30))
        .lease_wait(Duration::from_secs(60))
        .early_refresh(aside::EarlyRefresh::AfterFraction(0.0))
        .l1(100, Duration::from_secs(60))
        .build()
        .unwrap();
    let db = Db::with_users(1);
    users.set(&1, &User::new(1, 0)).await.unwrap();
    // The refresh lease is granted, and its answer held back (virtual
    // time) while the write lands and the next reader joins the refresh's flight.
    hooks.answer_late("lease_for_refresh", Duration::from_secs(10));
    let leader = tokio::spawn({
        let users = users.clone();
        async move { users.fetch(&1, || async { Err::<Option<User>, DbDown>(DbDown) }).await }
    });
    let key = users.store_key(&1).unwrap();
    eventually("the refresh lease is granted", Duration::from_secs(5), || {
        let (store, key) = (store.clone(), key.clone());
        async move { store.peek_entry(&key).await.unwrap().lease.is_some() }
    })
    .await;
    db.put(User::new(1, 1));
    users.invalidate(&1).await.unwrap();
    let looked = calls.load(Ordering::SeqCst);
    let later = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move { read(&users, &db, 1).await }
    });
    // Once its lookup has answered (a memory store, on this one thread), the
    // later reader runs on into the refresh's flight and waits there.
    eventually("the later reader looked the key up", Duration::from_secs(5), || {
        let n = calls.load(Ordering::SeqCst);
        async move { n > looked }
    })
    .await;
    leader.await.unwrap().unwrap();
    assert_eq!(
        later.await.unwrap(),
        Some(User::new(1, 1)),
        "a read that began after the invalidation got the old value"
    );
    assert_eq!(
        users.get(&1).await.unwrap(),
        Some(User::new(1, 1)),
        "a tier serves the old value"
    );
}

/// I1Refresh: a forced refresh replaced the stored value and installed
/// its own in the L1 under the epoch it took before loading, the one a
/// reader of the same handle had also taken after the refresh's eviction.
/// That reader, which had read the old value from the store before the
/// refresh filled, installed it after the refresh did, fenced by the same
/// epoch: later reads of the handle were served the replaced value from
/// the L1.
#[tokio::test]
async fn a_forced_refresh_is_not_undone_in_the_l1_by_a_read_that_began_before_its_fill() {
    let (_, hooks, users, db) = gated_users(Strategy::Lease, true);
    users.set(&1, &User::new(1, 0)).await.unwrap();
    // The database moves on; the forced refresh is what brings the row in.
    db.put(User::new(1, 1));
    let lease_asked = hooks.pause_next("lease_for_refresh");
    let refreshing = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move { refresh(&users, &db, 1).await }
    });
    // The refresh has evicted its L1 copy and taken its epoch.
    lease_asked.reached.notified().await;
    let old_read = hooks.pause_answer("peek_entry");
    let reader = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move { read(&users, &db, 1).await }
    });
    // The reader missed the L1 and has read the old value from the store.
    old_read.reached.notified().await;
    lease_asked.release();
    let refreshed = refreshing.await.unwrap();
    assert_eq!(
        (refreshed.value, refreshed.source),
        (Some(User::new(1, 1)), Source::Loaded)
    );
    old_read.release();
    // The reader began before the refresh's fill: the old value is an
    // answer it may give. A read that begins after the refresh may not.
    let answers = (reader.await.unwrap(), read(&users, &db, 1).await);
    assert_eq!(
        answers,
        (Some(User::new(1, 0)), Some(User::new(1, 1))),
        "a read after the forced refresh got the value it replaced"
    );
}

/// True when an invalidation of `other` fences the L1 fills of `key`
/// in `users` (their L1 epochs share a stripe): a read of `key` that read
/// the store before `other` was invalidated installs nothing.
async fn invalidation_fences(
    users: &Namespace<u64, User>,
    hooks: &common::Hooks,
    db: &Db,
    key: u64,
    other: u64,
) -> bool {
    users.invalidate(&key).await.unwrap();
    let looked = hooks.pause_answer("peek_entry");
    let reader = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move { read(&users, &db, key).await }
    });
    looked.reached.notified().await;
    users.invalidate(&other).await.unwrap();
    looked.release();
    reader.await.unwrap();
    // With the store unreadable, `get` answers only from the L1.
    hooks.fail("peek_entry");
    let installed = users.get(&key).await.unwrap().is_some();
    hooks.heal("peek_entry");
    users.invalidate(&key).await.unwrap();
    !installed
}

/// What a batch loader returns.
type BatchRows =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<std::collections::HashMap<u64, User>, DbDown>> + Send>>;

/// All of `keys` that `db` has, as a batch loader.
fn batch_loader(db: &Db) -> impl FnMut(Vec<u64>) -> BatchRows + use<> {
    let db = db.clone();
    move |keys: Vec<u64>| {
        let db = db.clone();
        Box::pin(async move {
            let mut rows = std::collections::HashMap::new();
            for key in keys {
                rows.extend(db.get(key).await?.map(|row| (key, row)));
            }
            Ok(rows)
        })
    }
}

/// I1Refresh once more (the history checker, seed 12443787499811566399:
/// `get_many_or_load` answered v31 from the L1 after `force_refresh`
/// returned v32). The refresh moved its key's epoch stripe on only by a
/// compare-and-swap from the epoch it took after its eviction; when
/// another key of the stripe was invalidated in between, the swap failed
/// and the epoch stayed where the invalidation left it. A reader that took
/// that newer epoch and read the old value before the refresh's fill
/// installed it after the refresh returned, and later reads of the handle,
/// the batch's included, were served the replaced value from the L1.
#[tokio::test]
async fn a_forced_refresh_fences_readers_whose_epoch_another_key_moved() {
    let (_, hooks, users, db) = gated_users(Strategy::Lease, true);
    // The interleaving needs a key on key 1's stripe. Stripes follow a hash
    // seeded per L1, so the neighbour is found by what it does: its
    // invalidation fences key 1's fills. Among 1,000 keys, one of 64
    // stripes is missed with probability (63/64)^999, about 1e-7.
    let mut neighbour = None;
    for other in 2..=1_000 {
        db.put(User::new(other, 0));
        if invalidation_fences(&users, &hooks, &db, 1, other).await {
            neighbour = Some(other);
            break;
        }
    }
    let neighbour = neighbour.expect("no key shares key 1's L1 epoch stripe");
    users.set(&1, &User::new(1, 0)).await.unwrap();
    // The database moves on; the forced refresh is what brings the row in.
    db.put(User::new(1, 1));
    let lease_asked = hooks.pause_next("lease_for_refresh");
    let refreshing = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move { refresh(&users, &db, 1).await }
    });
    // The refresh has evicted its L1 copy and taken its epoch.
    lease_asked.reached.notified().await;
    // Another key of the stripe is invalidated: the stripe moves on.
    users.invalidate(&neighbour).await.unwrap();
    let old_read = hooks.pause_answer("peek_entry");
    let reader = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move { read(&users, &db, 1).await }
    });
    // The reader took the newer epoch and has read the old value from the store.
    old_read.reached.notified().await;
    lease_asked.release();
    let refreshed = refreshing.await.unwrap();
    assert_eq!(
        (refreshed.value, refreshed.source),
        (Some(User::new(1, 1)), Source::Loaded)
    );
    old_read.release();
    // The reader began before the refresh's fill: the old value is an
    // answer it may give. Reads that begin after the refresh may not.
    assert_eq!(reader.await.unwrap(), Some(User::new(1, 0)));
    let batch = users.get_many_or_load(&[1], batch_loader(&db)).await.unwrap();
    assert_eq!(
        batch.get(&1),
        Some(&User::new(1, 1)),
        "a batch after the forced refresh got the value it replaced"
    );
    assert_eq!(
        read(&users, &db, 1).await,
        Some(User::new(1, 1)),
        "a read after the forced refresh got the value it replaced"
    );
}

// Review of 4f1bdfa..99ef487 (issues 15 and 16): write-through and the
// linearizable update.

/// The signals of an update whose database write a test steps through:
/// `started` once the fence is held, then the row is written when `commit`
/// is sent (`committed` says so), and the write returns on `finish`.
struct SteppedWrite {
    started: tokio::sync::oneshot::Receiver<()>,
    commit: tokio::sync::oneshot::Sender<()>,
    committed: tokio::sync::oneshot::Receiver<()>,
    finish: tokio::sync::oneshot::Sender<()>,
    update: tokio::task::JoinHandle<aside::Result<Option<User>>>,
}

fn stepped_update(users: &Namespace<u64, User>, db: &Db, row: User) -> SteppedWrite {
    use tokio::sync::oneshot::channel;
    let (started_tx, started) = channel();
    let (commit, commit_rx) = channel();
    let (committed_tx, committed) = channel();
    let (finish, finish_rx) = channel::<()>();
    let update = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move {
            let id = row.id;
            users
                .update(&id, || async move {
                    let _ = started_tx.send(());
                    let _ = commit_rx.await;
                    db.put(row.clone());
                    let _ = committed_tx.send(());
                    let _ = finish_rx.await;
                    Ok::<_, DbDown>(Some(row))
                })
                .await
        }
    });
    SteppedWrite {
        started,
        commit,
        committed,
        finish,
        update,
    }
}

/// An update promises linearizable reads in its own process, whose L1 it
/// "evicts around it". But a read during the fence that goes to the
/// database (its store call failed; equally a lease wait that ran out)
/// installs what it read in the L1, and nothing evicts it before the
/// update ends: once the write committed and a read returned the new row,
/// a later read returns the old one from the L1.
#[tokio::test]
async fn an_update_keeps_the_old_row_out_of_its_own_processes_l1() {
    let (_, hooks, users, db) = gated_users(Strategy::Lease, true);
    let mut write = stepped_update(&users, &db, User::new(1, 1));
    (&mut write.started).await.unwrap();
    // During the fence, before the commit: a read whose store call fails
    // asks the database, and gets the old row (a correct answer now).
    hooks.fail("lookup_or_lease");
    assert_eq!(read(&users, &db, 1).await, Some(User::new(1, 0)));
    hooks.heal("lookup_or_lease");
    write.commit.send(()).unwrap();
    (&mut write.committed).await.unwrap();
    // The write committed: a read of the database through aside sees it.
    let fresh = users
        .fetch_with(&1, FetchOptions::skip_cache(), || db.get(1))
        .await
        .unwrap();
    assert_eq!(fresh.value, Some(User::new(1, 1)));
    // A read after that one must not return the old row. It either answers
    // at once (from the L1) or waits for the fence (reaching the store).
    let mut finish = Some(write.finish);
    let reached = hooks.pause_next("lookup_or_lease");
    let mut later = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move { common::read(&users, &db, 1).await }
    });
    let answer = tokio::select! {
        answer = &mut later => answer.unwrap(),
        () = reached.reached.notified() => {
            reached.release();
            finish.take().unwrap().send(()).unwrap();
            later.await.unwrap()
        }
    };
    assert_eq!(
        answer.0,
        Some(User::new(1, 1)),
        "a read returned the old row ({:?}) after another returned the new one, during the update",
        answer.1
    );
    if let Some(finish) = finish {
        finish.send(()).unwrap();
    }
    write.update.await.unwrap().unwrap();
}

/// redis-rs's cluster client resends a request whose connection dropped
/// before the reply came, though the server may have run it. A resent
/// `take_fence` finds the fence it took itself and takes it for another
/// update's: the update polls, its own fence left unrenewed, until that
/// runs out a lease TTL later, and every reader of the key waits as long.
/// (Time is paused: the update's polls advance it.)
#[tokio::test(start_paused = true)]
async fn an_update_whose_fence_request_is_resent_is_not_fenced_out_by_itself() {
    let (store, hooks) = gated();
    let users = users(&patient(&store), Strategy::Lease, false);
    hooks.apply_twice("take_fence");
    let began = tokio::time::Instant::now();
    let updated = users
        .update(&1, || async { Ok::<_, DbDown>(Some(User::new(1, 1))) })
        .await;
    assert_eq!(updated.unwrap(), Some(User::new(1, 1)));
    let waited = began.elapsed();
    assert!(
        waited < aside::DEFAULT_LEASE_TTL / 2,
        "the update waited {waited:?} for its own fence to run out"
    );
}

/// A resent `put_entry_if_newer` (see above) finds the mark its first run
/// set: `write_through` reports `Superseded` ("a newer write came first and
/// published") for the value it cached itself, and publishes nothing, so
/// the other processes' L1s keep the old row until their TTL.
#[tokio::test]
async fn a_resent_versioned_write_still_tells_the_other_processes() {
    use aside::bus::Bus;
    let bus = aside_testkit::fault::MemoryBus::new();
    let mut heard = bus.subscribe().await.unwrap();
    let (store, hooks) = gated();
    let aside = Aside::builder()
        .shared_store(store)
        .op_timeout(Duration::from_secs(60))
        .bus(bus.clone())
        .build();
    let users = users(&aside, Strategy::Lease, false);
    hooks.apply_twice("put_entry_if_newer");
    let outcome = users.write_through(&1, &User::new(1, 1), 1).await.unwrap();
    assert_eq!(users.peek(&1).await.unwrap(), Some(User::new(1, 1)));
    // A marker after it: the bus keeps order, so whatever the write
    // published arrives first.
    bus.publish(&aside::bus::Invalidation::new("marker", vec![], 0))
        .await
        .unwrap();
    let first = match heard.recv().await.unwrap() {
        aside::bus::BusEvent::Invalidation(message) => message,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        first.namespace, "user",
        "the write cached its row ({outcome:?}) and told no other process"
    );
}

/// The store side of the resent fence, on both stores with fences: the
/// same token takes its own fence again, another token is refused.
#[tokio::test]
async fn a_fence_is_taken_again_by_its_own_token_only() {
    use aside::store::LeaseToken;
    let server = RedisServer::start();
    let ttl = Duration::from_secs(30);
    for store in common::memory_and_redis(&server.url()).await {
        let (mine, other) = (LeaseToken::fence(), LeaseToken::fence());
        assert!(store.take_fence("f", mine, ttl).await.unwrap());
        assert!(
            store.take_fence("f", mine, ttl).await.unwrap(),
            "{}: resent",
            store.name()
        );
        assert!(!store.take_fence("f", other, ttl).await.unwrap(), "{}", store.name());
    }
}

/// The fence bit's edges, on memory and Redis (whose script tells a fence
/// by comparing decimal strings): a reader's lease with the largest token
/// below 2^63 is revoked by an update's fence; a fence of token 2^63, the
/// smallest, and one of u64::MAX hold against another update.
#[tokio::test]
async fn the_fence_bit_is_told_exactly_at_its_edges() {
    use aside::store::{LeaseOutcome, LeaseToken};
    let server = RedisServer::start();
    let ttl = Duration::from_secs(30);
    for store in common::memory_and_redis(&server.url()).await {
        let name = store.name();
        let reader = LeaseToken((1 << 63) - 1);
        assert!(!reader.is_fence());
        let granted = store.lookup_or_lease("r", reader, ttl).await.unwrap();
        assert!(matches!(granted, LeaseOutcome::Granted { .. }), "{name}");
        assert!(
            store.take_fence("r", LeaseToken::fence(), ttl).await.unwrap(),
            "{name}: a reader's lease is revoked by a fence"
        );
        for (key, held) in [("low", LeaseToken(1 << 63)), ("high", LeaseToken(u64::MAX))] {
            assert!(held.is_fence());
            assert!(store.take_fence(key, held, ttl).await.unwrap(), "{name}");
            assert!(
                !store.take_fence(key, LeaseToken::fence(), ttl).await.unwrap(),
                "{name}: the fence {} held",
                held.0
            );
        }
    }
}

/// `Duration::MAX` is how a user says "no bound". A namespace refuses
/// durations over `MAX_DURATION` when it is built, but a double-delete
/// delay and a shutdown's timeout took any, and the deadline built from
/// them (`Instant + Duration::MAX`) panicked; now every such deadline
/// saturates (`engine::deadline_after`). The lease's renewal bound, the
/// batch miss and the fenced update run at the namespace's own limits.
#[tokio::test]
async fn bounds_of_duration_max_mean_no_bound_on_every_path() {
    let aside = Aside::builder().build();
    let leased = aside
        .namespace::<u64, User>("user")
        .strategy(Strategy::Lease)
        .load_timeout(aside::MAX_DURATION)
        .lease_wait(aside::MAX_DURATION)
        .build()
        .unwrap();
    let db = Db::with_users(3);
    assert_eq!(read(&leased, &db, 1).await, Some(User::new(1, 0)));
    let found = leased
        .get_many_or_load(&[2, 3], |ids| load_many(db.clone(), ids))
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    let written = leased
        .update(&1, || async { Ok::<_, std::io::Error>(Some(User::new(1, 1))) })
        .await
        .unwrap();
    assert_eq!(written, Some(User::new(1, 1)));

    let double = aside
        .namespace::<u64, User>("twice")
        .strategy(Strategy::DoubleDelete { delay: Duration::MAX })
        .build()
        .unwrap();
    assert_eq!(read(&double, &db, 1).await, Some(User::new(1, 0)));
    double.invalidate(&1).await.unwrap();

    let report = aside.shutdown(Duration::MAX).await;
    assert_eq!(report.dropped, 0);
}

/// An entry whose header says it expires at `u64::MAX` ms (another
/// writer's, or crafted) is served as fresh, and its first hit, which
/// puts that expiry on the monotonic clock (`engine::local`), panics
/// nowhere.
#[tokio::test]
async fn an_expiry_at_the_end_of_time_is_served_and_panics_nowhere() {
    let store = MemoryStore::new();
    let aside = Aside::builder().prefix("t:").store(store.clone()).build();
    // A plain entry, as `Store::set` writes it: the `Delete` strategy's.
    let ns = aside
        .namespace::<u64, User>("user")
        .strategy(Strategy::Delete)
        .build()
        .unwrap();
    let header = aside::envelope::Header {
        codec_id: aside::Codec::<User>::id(&aside::Json),
        flags: 0,
        expires_at_ms: u64::MAX,
        load_time_us: 0,
    };
    let payload = serde_json::to_vec(&User::new(1, 7)).unwrap();
    let bytes = aside::envelope::seal(&header, &payload);
    store
        .set("t:user:1", bytes.into(), Duration::from_secs(3600))
        .await
        .unwrap();
    for _ in 0..2 {
        let fetched = ns
            .fetch(&1, || async { Ok::<_, DbDown>(Some(User::new(1, 0))) })
            .await
            .unwrap();
        assert_eq!((fetched.value, fetched.source), (Some(User::new(1, 7)), Source::Hit));
    }
}

/// Every store operation a forced refresh (and the invalidation behind it)
/// may call, for the "store down" case below.
const EVERY_REFRESH_OP: [&str; 10] = [
    "lease_for_refresh",
    "lookup_or_lease",
    "fill",
    "release",
    "set",
    "get",
    "incr",
    "peek_entry",
    "invalidate",
    "delete",
];

/// Found by the history checker (I1Refresh, seed 9080711965920293202, the
/// memory store and Redis, `lease+keep-stale`): a forced refresh whose
/// value did not reach the store (the breaker had opened, in that run)
/// returned the reloaded row, and the store kept the older one, which the
/// next read of the same process returned as a hit. A refresh that loaded
/// a value it could not fill now invalidates the key, and queues that for
/// replay when the store is away.
///
/// Per strategy (and for `Lease` also with a stale copy kept, the failing
/// run's shape): only the write of the refreshed value fails
/// (the invalidation lands at once); or the whole store is down during
/// the refresh, then back but for the operation that invalidates (the
/// queued invalidation cannot land yet: the process reads around the
/// store, not the old row it still holds), then wholly back (the replay
/// has removed the old row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_refresh_the_store_did_not_take_leaves_no_older_value_behind() {
    let shapes = [
        (Strategy::Lease, "fill", "invalidate", false),
        (Strategy::Lease, "fill", "invalidate", true),
        (Strategy::Delete, "set", "delete", false),
        (Strategy::Versioned, "set", "incr", false),
    ];
    for (strategy, refill, invalidating, keep_stale) in shapes {
        for whole_store in [false, true] {
            let case = format!("{strategy:?}, stale copy kept: {keep_stale}, whole store down: {whole_store}");
            let (store, hooks) = gated();
            let aside = common::patient_builder()
                .shared_store(store)
                .breaker(common::patient_breaker().failure_threshold(1_000))
                .build();
            let builder = aside.namespace::<u64, User>("user").strategy(strategy);
            let ns = if keep_stale {
                builder
                    .serve_stale_while_loading(Duration::from_secs(60))
                    .build()
                    .unwrap()
            } else {
                builder.build().unwrap()
            };
            let db = Db::with_users(1);
            assert_eq!(read(&ns, &db, 1).await, Some(User::new(1, 0)), "{case}");

            // A change the cache was not told of: the refresh is what tells it.
            db.put(User::new(1, 1));
            let failing: &[&'static str] = if whole_store { &EVERY_REFRESH_OP } else { &[refill] };
            failing.iter().for_each(|op| hooks.fail(op));
            let refreshed = refresh(&ns, &db, 1).await;
            assert_eq!(
                (refreshed.value, refreshed.source),
                (Some(User::new(1, 1)), Source::Loaded),
                "{case}"
            );
            if whole_store {
                failing
                    .iter()
                    .filter(|op| **op != invalidating)
                    .for_each(|op| hooks.heal(op));
                let meanwhile = ns.fetch(&1, || db.get(1)).await.unwrap();
                assert_eq!(
                    (meanwhile.value, meanwhile.source),
                    (Some(User::new(1, 1)), Source::Loaded),
                    "{case}: read before the invalidation landed"
                );
                assert!(aside.stats().invalidations_pending > 0, "{case}");
                hooks.heal(invalidating);
            }
            eventually("the invalidation is replayed", common::PATIENT, || async {
                aside.stats().invalidations_pending == 0
            })
            .await;
            let after = ns.fetch(&1, || db.get(1)).await.unwrap();
            assert_eq!(
                after.value,
                Some(User::new(1, 1)),
                "{case}: the older row was served after the refresh"
            );
            assert_eq!(after.source, Source::Loaded, "{case}");
        }
    }
}

/// A spawned `get_or_load` of user 1 whose loader signals `started`, then
/// waits for a permit of `go` before it reads `db`.
fn read_held_in_its_loader(
    ns: &Namespace<u64, User>,
    db: &Db,
) -> (
    Arc<tokio::sync::Notify>,
    Arc<tokio::sync::Semaphore>,
    tokio::task::JoinHandle<aside::Result<Option<User>>>,
) {
    let (started, go) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Semaphore::new(0)),
    );
    let read = {
        let (ns, db, started, go) = (ns.clone(), db.clone(), started.clone(), go.clone());
        tokio::spawn(async move {
            ns.get_or_load(&1, move || {
                let (db, started, go) = (db.clone(), started.clone(), go.clone());
                async move {
                    started.notify_one();
                    go.acquire().await.unwrap().forget();
                    db.get(1).await
                }
            })
            .await
        })
    };
    (started, go, read)
}

/// The article's stampede lock (`Stampede::LockSleep`) was set with `add`
/// and deleted by key when its holder's load ended, with nothing in
/// between: a holder cancelled mid-load left the lock for its whole TTL
/// (5 s, every reader of the key asleep meanwhile), and a holder whose
/// load outlived the TTL deleted the lock that another caller had taken
/// since. It is now a lease on the lock key, held by a guard that gives it
/// back when its holder is cancelled, and given back by its token only.
/// `Delete` strategy, so that the lock's is the only lease in play.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stampede_lock_is_given_back_by_its_holder_alone() {
    let memory = MemoryStore::new();
    let instrumented = Instrumented::new(memory.clone(), Arc::new(AtomicUsize::new(0)));
    let hooks = instrumented.hooks.clone();
    let gated: Arc<dyn Store> = Arc::new(instrumented);
    let plain: Arc<dyn Store> = Arc::new(memory.clone());
    let locked = |store: &Arc<dyn Store>| {
        patient(store)
            .namespace::<u64, User>("user")
            .strategy(Strategy::Delete)
            .stampede(aside::Stampede::LockSleep)
            .build()
            .unwrap()
    };
    let lock_key = aside::key::lock_key("user:1");
    // Held: a lease on the lock key (now), or a plain value (the `add` before).
    let lock_held = || async {
        memory.peek_entry(&lock_key).await.unwrap() != aside::store::EntryView::default()
            || matches!(memory.get(&lock_key).await, Ok(Some(_)))
    };

    // A holder that is cancelled while it loads gives the lock back.
    let holder = locked(&gated);
    let started = Arc::new(tokio::sync::Notify::new());
    let task = {
        let (holder, started) = (holder.clone(), started.clone());
        tokio::spawn(async move {
            holder
                .get_or_load(&1, move || {
                    let started = started.clone();
                    async move {
                        started.notify_one();
                        std::future::pending::<Result<Option<User>, DbDown>>().await
                    }
                })
                .await
        })
    };
    tokio::time::timeout(common::PATIENT, started.notified())
        .await
        .expect("the holder never loaded");
    assert!(lock_held().await, "the holder holds the lock");
    let release = hooks.pause_answer("release");
    task.abort();
    tokio::time::timeout(common::PATIENT, release.reached.notified())
        .await
        .expect("the cancelled holder never gave the lock back");
    assert!(!lock_held().await, "the lock is free once given back");
    release.release();

    // A holder whose lock ran out does not give back the lock taken since.
    let (first, second) = (locked(&plain), locked(&plain));
    let db = Db::with_users(1);
    let (first_started, first_go, first_read) = read_held_in_its_loader(&first, &db);
    tokio::time::timeout(common::PATIENT, first_started.notified())
        .await
        .expect("the first holder never loaded");
    // What its TTL running out does.
    memory.delete(&lock_key).await.unwrap();
    let (second_started, second_go, second_read) = read_held_in_its_loader(&second, &db);
    tokio::time::timeout(common::PATIENT, second_started.notified())
        .await
        .expect("the second caller never took the lock");
    first_go.add_permits(1);
    let first_read = tokio::time::timeout(common::PATIENT, first_read)
        .await
        .expect("the first read hung");
    assert_eq!(first_read.unwrap().unwrap(), Some(User::new(1, 0)));
    assert!(
        lock_held().await,
        "the first holder gave back the lock the second holds"
    );
    second_go.add_permits(1);
    let second_read = tokio::time::timeout(common::PATIENT, second_read)
        .await
        .expect("the second read hung");
    assert_eq!(second_read.unwrap().unwrap(), Some(User::new(1, 0)));
    assert!(!lock_held().await, "the second holder gave its lock back");
}

/// A namespace of users (`strategy`, `stampede`) in a patient `Aside`
/// whose breaker stays closed, over a memory store behind hooks.
fn over_hooks(
    strategy: Strategy,
    stampede: aside::Stampede,
) -> (MemoryStore, Arc<common::Hooks>, Namespace<u64, User>) {
    let memory = MemoryStore::new();
    let store = Instrumented::new(memory.clone(), Arc::new(AtomicUsize::new(0)));
    let hooks = store.hooks.clone();
    let aside = common::patient_builder()
        .store(store)
        .breaker(common::patient_breaker().failure_threshold(1_000))
        .build();
    let ns = aside
        .namespace::<u64, User>("user")
        .strategy(strategy)
        .stampede(stampede)
        .build()
        .unwrap();
    (memory, hooks, ns)
}

/// The lookups a read makes first, by strategy.
const READS: [&str; 3] = ["get", "peek_entry", "peek_fresh"];

/// Eight readers of one key while the store cannot serve them: the whole
/// store down (`whole_store`), or only the stampede lock out of reach.
/// Returns the most loads that ran at once, the loads, and the store calls
/// each reader made last before it loaded or joined a load (its first
/// lookups, or its lock's `lookup_or_lease`, the only one of that name).
/// On a current-thread runtime a reader that made that call has joined or
/// started a load before the test runs again, so the loads are let go
/// only once every reader has.
async fn readers_while_the_store_is_down(
    strategy: Strategy,
    stampede: aside::Stampede,
    whole_store: bool,
) -> (usize, u64, usize) {
    const READERS: usize = 8;
    let (_, hooks, ns) = over_hooks(strategy, stampede);
    hooks.fail("lookup_or_lease");
    if whole_store {
        READS.iter().chain(&["incr"]).for_each(|op| hooks.fail(op));
    }
    let last_calls = || {
        if whole_store {
            READS.iter().map(|op| hooks.calls_of(op)).sum::<usize>()
        } else {
            hooks.calls_of("lookup_or_lease")
        }
    };
    let db = Db::with_users(1);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (loading, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (ns, db, gate, loading, most) = (ns.clone(), db.clone(), gate.clone(), loading.clone(), most.clone());
            tokio::spawn(async move {
                ns.get_or_load(&1, move || {
                    let (db, gate, loading, most) = (db.clone(), gate.clone(), loading.clone(), most.clone());
                    async move {
                        most.fetch_max(loading.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                        let _pass = gate.acquire().await.unwrap();
                        // A load takes time: others may come meanwhile.
                        tokio::task::yield_now().await;
                        loading.fetch_sub(1, Ordering::SeqCst);
                        db.get(1).await
                    }
                })
                .await
            })
        })
        .collect();
    eventually("every reader made its last store call", common::PATIENT, || async {
        last_calls() >= READERS
    })
    .await;
    gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS);
    for reader in readers {
        assert_eq!(reader.await.unwrap().unwrap(), Some(User::new(1, 0)));
    }
    (most.load(Ordering::SeqCst), db.queries(), last_calls())
}

/// Found by the history checker once its programs drew the stampede lock
/// (I3, seed 2244211270109259384 on memcached, `versioned+lock-sleep`;
/// reproduced with the `add`-based lock as well): with the store
/// unreachable (a breaker opened by injected faults), no reader could take
/// the lock and each loaded on its own, so loads of one key overlapped in
/// one process, and in an outage every reader of a hot key reached the
/// database at once. They now go through the process's single-flight, as
/// under `Stampede::Coalesce`: never two at a time, and a reader takes the
/// first load that began after its read began (two loads for eight readers
/// whose reads all began before the first load ended). Two ways in: only
/// the lock cannot be taken, or the whole store is down (then the read
/// does not try the lock at all, and asks the store nothing more).
#[tokio::test(flavor = "current_thread")]
async fn the_stampede_lock_coalesces_loads_while_the_store_is_down() {
    for strategy in [Strategy::Lease, Strategy::Delete, Strategy::Versioned] {
        for whole_store in [false, true] {
            let case = format!("{strategy:?}, whole store down: {whole_store}");
            let (most, loads, calls) =
                readers_while_the_store_is_down(strategy, aside::Stampede::LockSleep, whole_store).await;
            assert_eq!(most, 1, "{case}: loads of one key overlapped");
            assert_eq!(loads, 2, "{case}: loads for 8 readers");
            assert_eq!(calls, 8, "{case}: store calls after the store was found down");
        }
    }
}

/// Found in review: under single-flight (the default), with the store down,
/// a waiter took a load only if it began after the waiter's latest look,
/// taken afresh each time round, so every waiter rejected the load it had
/// waited for, and readers of a key loaded one after another, each waiting
/// for all the loads before its own: eight loads in turn for eight
/// readers. A waiter now takes the first load that began after its read.
#[tokio::test(flavor = "current_thread")]
async fn loads_while_the_store_is_down_take_no_turns_under_single_flight() {
    for strategy in [Strategy::Lease, Strategy::Delete, Strategy::Versioned] {
        let (most, loads, _) = readers_while_the_store_is_down(strategy, aside::Stampede::Coalesce, true).await;
        assert_eq!(most, 1, "{strategy:?}: loads of one key overlapped");
        assert_eq!(loads, 2, "{strategy:?}: loads for 8 readers");
    }
}

/// A stampede lock whose release failed is given back once more, by its
/// guard, instead of being left for its 5 s TTL (review of the lock's
/// rework). On a current-thread runtime the guard's background release
/// runs only once this test yields, after it has healed the store.
#[tokio::test(flavor = "current_thread")]
async fn a_stampede_lock_whose_release_failed_is_given_back_by_its_guard() {
    let (memory, hooks, ns) = over_hooks(Strategy::Delete, aside::Stampede::LockSleep);
    let db = Db::with_users(1);
    hooks.fail("release");
    assert_eq!(read(&ns, &db, 1).await, Some(User::new(1, 0)));
    assert_eq!(hooks.calls_of("release"), 1, "the holder gave the lock back once");
    hooks.heal("release");
    eventually("the guard gives the lock back again", common::PATIENT, || async {
        hooks.calls_of("release") >= 2
    })
    .await;
    let lock_key = aside::key::lock_key("user:1");
    eventually("the lock is free", common::PATIENT, || async {
        memory.peek_entry(&lock_key).await.unwrap() == aside::store::EntryView::default()
    })
    .await;
}
