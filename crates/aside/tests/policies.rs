//! Read-path policies: negative caching, fail-safe (stale-if-error) with
//! throttled retries, the loader timeout, and early refresh that loads once
//! while every other caller keeps the current value.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::{Aside, EarlyRefresh, ErrorKind, MemoryStore, Namespace, Source, Stampede, Store, Strategy};
use aside_testkit::RedisServer;
use common::{DbDown, eventually};

fn counting_loader(
    calls: &Arc<AtomicUsize>,
    answer: Result<Option<&'static str>, ()>,
) -> impl FnMut() -> std::future::Ready<Result<Option<String>, DbDown>> {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(answer.map(|v| v.map(str::to_owned)).map_err(|()| DbDown))
    }
}

async fn negative_caching(store: impl Store, strategy: Strategy) {
    let aside = common::patient_builder().store(store).build();
    let cached = aside
        .namespace::<u64, String>("neg")
        .strategy(strategy)
        .negative_ttl(Duration::from_millis(300))
        .build()
        .unwrap();
    let plain = aside
        .namespace::<u64, String>("plain")
        .strategy(strategy)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        assert_eq!(
            cached
                .get_or_load(&404, counting_loader(&calls, Ok(None)))
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "{strategy}: the tombstone absorbs repeated misses"
    );
    let f = cached.fetch(&404, counting_loader(&calls, Ok(None))).await.unwrap();
    assert_eq!((f.value, f.source), (None, Source::Hit));
    eventually("the tombstone expires", Duration::from_secs(5), || async {
        cached
            .fetch(&404, counting_loader(&calls, Ok(None)))
            .await
            .unwrap()
            .source
            == Source::Loaded
    })
    .await;

    let plain_calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        plain
            .get_or_load(&404, counting_loader(&plain_calls, Ok(None)))
            .await
            .unwrap();
    }
    assert_eq!(plain_calls.load(Ordering::SeqCst), 3, "{strategy}: off by default");
}

#[tokio::test]
async fn negative_caching_on_memory_and_redis() {
    let server = RedisServer::start();
    #[cfg(feature = "memcached")]
    let memcached = aside_testkit::MemcachedServer::start();
    for strategy in [Strategy::Lease, Strategy::Delete] {
        negative_caching(MemoryStore::new(), strategy).await;
        negative_caching(common::patient_redis(&server.url()).await, strategy).await;
        #[cfg(feature = "memcached")]
        negative_caching(common::patient_memcached(&memcached.addr()).await, strategy).await;
    }
}

async fn fail_safe(store: impl Store, strategy: Strategy) {
    let aside = common::patient_builder().store(store).build();
    let build = |name: &str, fail_safe: bool| {
        let b = aside
            .namespace::<u64, String>(name)
            .strategy(strategy)
            .ttl(Duration::from_millis(150));
        let b = if fail_safe {
            b.fail_safe(Duration::from_secs(30), Duration::from_secs(30))
        } else {
            b
        };
        b.build().unwrap()
    };
    let safe: Namespace<u64, String> = build("safe", true);
    let unsafe_ns: Namespace<u64, String> = build("unsafe", false);
    let calls = Arc::new(AtomicUsize::new(0));
    for ns in [&safe, &unsafe_ns] {
        ns.get_or_load(&1, counting_loader(&calls, Ok(Some("v1"))))
            .await
            .unwrap();
        eventually("the value expires", Duration::from_secs(5), || async {
            ns.get(&1).await.unwrap().is_none()
        })
        .await;
    }
    let before = aside.stats().stale_served;
    let failing = Arc::new(AtomicUsize::new(0));
    let f = safe.fetch(&1, counting_loader(&failing, Err(()))).await.unwrap();
    assert_eq!(
        (f.value.as_deref(), f.source),
        (Some("v1"), Source::Stale),
        "{strategy}"
    );
    assert_eq!(aside.stats().stale_served, before + 1);
    // Throttled: the failing loader is not called again for a while; the
    // expired value is served as a plain hit meanwhile.
    for _ in 0..5 {
        let f = safe.fetch(&1, counting_loader(&failing, Err(()))).await.unwrap();
        assert_eq!(f.value.as_deref(), Some("v1"));
    }
    assert_eq!(failing.load(Ordering::SeqCst), 1, "{strategy}: retries are throttled");

    let err = unsafe_ns
        .fetch(&1, counting_loader(&failing, Err(())))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Loader,
        "{strategy}: without fail-safe the error reaches the caller"
    );
}

#[tokio::test]
async fn fail_safe_serves_the_expired_value_when_the_loader_fails() {
    let server = RedisServer::start();
    #[cfg(feature = "memcached")]
    let memcached = aside_testkit::MemcachedServer::start();
    for strategy in [Strategy::Lease, Strategy::Delete] {
        fail_safe(MemoryStore::new(), strategy).await;
        fail_safe(common::patient_redis(&server.url()).await, strategy).await;
        #[cfg(feature = "memcached")]
        fail_safe(common::patient_memcached(&memcached.addr()).await, strategy).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_loader_times_out() {
    let aside = Aside::builder().build();
    let ns = aside
        .namespace::<u64, String>("slow")
        .load_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let err = ns
        .get_or_load(&1, std::future::pending::<Result<Option<String>, DbDown>>)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(aside.stats().load_errors, 1);
}

/// A loader of `"v2"` that counts its calls in `refreshes` and answers
/// only once `release` lets it.
fn held_loader(
    release: &Arc<tokio::sync::Semaphore>,
    refreshes: &Arc<AtomicUsize>,
) -> impl FnMut() -> futures::future::BoxFuture<'static, Result<Option<String>, DbDown>> + Send + 'static {
    let (release, refreshes) = (release.clone(), refreshes.clone());
    move || {
        let (release, refreshes) = (release.clone(), refreshes.clone());
        Box::pin(async move {
            refreshes.fetch_add(1, Ordering::SeqCst);
            release.acquire().await.unwrap().forget();
            Ok(Some("v2".to_string()))
        })
    }
}

/// `n` readers of `key`, whose value (`"v1"`) is due for refresh, started
/// at once by a barrier; a refresh loads `"v2"` once released. Checks that
/// `n - 1` of them are served the current value while the refresh is held
/// (bounded: a reader that waited for the refresh would wait forever, as
/// it is released only after), that one refreshed, and nobody else loaded.
async fn readers_of_a_due_value(ns: &Namespace<u64, String>, key: u64, n: usize) {
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let refreshes = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..n)
        .map(|_| {
            let (ns, start, release, refreshes) = (ns.clone(), start.clone(), release.clone(), refreshes.clone());
            tokio::spawn(async move {
                start.wait().await;
                ns.fetch(&key, held_loader(&release, &refreshes)).await.unwrap()
            })
        })
        .collect();
    let what = format!("key {key}: {} readers served the current value", n - 1);
    eventually(&what, Duration::from_secs(60), || {
        let served = readers.iter().filter(|r| r.is_finished()).count();
        async move { served >= n - 1 }
    })
    .await;
    release.add_permits(n);
    let mut sources = Vec::new();
    for r in readers {
        let f = r.await.unwrap();
        sources.push((f.value.unwrap(), f.source));
    }
    assert_eq!(
        refreshes.load(Ordering::SeqCst),
        1,
        "key {key}: one refresh for {n} readers"
    );
    assert_eq!(
        sources.iter().filter(|(v, s)| v == "v1" && *s == Source::Hit).count(),
        n - 1,
        "key {key}: {sources:?}"
    );
    assert!(
        sources.contains(&("v2".to_string(), Source::Loaded)),
        "key {key}: {sources:?}"
    );
}

async fn early_refresh(store: impl Store, stampede: Stampede) {
    // No store call given up on nor counted slow: a read that timed out
    // would be a miss, and a store skipped by the breaker's latency rule
    // would make every reader load, each waiting for the release (CI's
    // loaded machine did that once).
    let aside = common::patient_builder().store(store).build();
    // Due from the start (after 0 % of the TTL): every read draws a refresh.
    let ns = aside
        .namespace::<u64, String>(&format!("early-{stampede:?}"))
        .ttl(Duration::from_secs(60))
        .early_refresh(EarlyRefresh::AfterFraction(0.0))
        .stampede(stampede)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    ns.get_or_load(&1, counting_loader(&calls, Ok(Some("v1"))))
        .await
        .unwrap();

    // Twenty readers at once while the refresh loads: one loads, the others
    // get the current value at once.
    readers_of_a_due_value(&ns, 1, 20).await;
    assert_eq!(
        ns.get(&1).await.unwrap().as_deref(),
        Some("v2"),
        "the refresh was filled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_loads_once_and_nobody_waits() {
    let server = RedisServer::start();
    #[cfg(feature = "memcached")]
    let memcached = aside_testkit::MemcachedServer::start();
    for stampede in STAMPEDES {
        early_refresh(MemoryStore::new(), stampede).await;
        early_refresh(common::patient_redis(&server.url()).await, stampede).await;
        // On memcached the refresh lease is the `R` flag's win.
        #[cfg(feature = "memcached")]
        early_refresh(common::patient_memcached(&memcached.addr()).await, stampede).await;
    }
}

/// Every way of coalescing loads: under each, readers holding a value due
/// for refresh keep it while one of them refreshes (under `LockSleep` they
/// waited for the lock, and the refresh, before).
const STAMPEDES: [Stampede; 3] = [Stampede::Coalesce, Stampede::LockSleep, Stampede::None];

/// The same, with every read of the store answering later than the default
/// operation bound (250 ms), as a loaded host can make it: no reader may
/// give up on its read and load beside the refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_loads_once_when_every_read_of_the_store_is_slow() {
    let store = common::Instrumented::new(MemoryStore::new(), Arc::new(AtomicUsize::new(0)));
    for read in ["peek_entry", "lookup_or_lease", "lease_for_refresh", "add"] {
        store.hooks.answer_late(read, Duration::from_millis(300));
    }
    early_refresh(store, Stampede::Coalesce).await;
}

#[tokio::test]
async fn per_call_options_skip_or_refresh_the_cache() {
    let server = RedisServer::start();
    for strategy in Strategy::all() {
        let aside = common::patient_builder()
            .store(common::patient_redis(&server.url()).await)
            .build();
        let ns = aside
            .namespace::<u64, String>(&format!("opt-{strategy}"))
            .strategy(strategy)
            .build()
            .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        ns.get_or_load(&1, counting_loader(&calls, Ok(Some("v1"))))
            .await
            .unwrap();

        let skipped = ns
            .fetch_with(
                &1,
                aside::FetchOptions::skip_cache(),
                counting_loader(&calls, Ok(Some("direct"))),
            )
            .await
            .unwrap();
        assert_eq!(
            (skipped.value.as_deref(), skipped.source),
            (Some("direct"), Source::Loaded)
        );
        assert_eq!(
            ns.get(&1).await.unwrap().as_deref(),
            Some("v1"),
            "{strategy}: skip_cache does not fill"
        );

        let refreshed = ns
            .fetch_with(
                &1,
                aside::FetchOptions::force_refresh(),
                counting_loader(&calls, Ok(Some("v2"))),
            )
            .await
            .unwrap();
        assert_eq!(
            (refreshed.value.as_deref(), refreshed.source),
            (Some("v2"), Source::Loaded)
        );
        assert_eq!(
            ns.get(&1).await.unwrap().as_deref(),
            Some("v2"),
            "{strategy}: force_refresh replaces"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}

#[tokio::test]
async fn warm_loads_in_batches_with_bounded_concurrency() {
    let aside = Aside::builder().build();
    let ns = aside.namespace::<u64, String>("warm").build().unwrap();
    let keys: Vec<u64> = (1..=1_000).collect();
    let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let progress = std::sync::Mutex::new(Vec::new());
    let found = ns
        .warm(
            &keys,
            aside::WarmOptions::default().batch_size(100).concurrency(3),
            |batch: Vec<u64>| {
                let (batches, in_flight, max_in_flight) = (batches.clone(), in_flight.clone(), max_in_flight.clone());
                async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    max_in_flight.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    batches.lock().unwrap().push(batch.len());
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, DbDown>(
                        batch
                            .into_iter()
                            .filter(|k| k % 10 != 0)
                            .map(|k| (k, format!("v{k}")))
                            .collect(),
                    )
                }
            },
            |done| progress.lock().unwrap().push(done),
        )
        .await
        .unwrap();
    assert_eq!(found, 900);
    assert_eq!(*batches.lock().unwrap(), vec![100; 10]);
    assert!(max_in_flight.load(Ordering::SeqCst) <= 3);
    assert_eq!(progress.lock().unwrap().last(), Some(&1_000));
    assert_eq!(ns.get(&7).await.unwrap().as_deref(), Some("v7"));
    let stats = aside.stats();
    assert_eq!(stats.hits, 0);
    assert_eq!(stats.misses, 1_000);
}

/// With an owned loader, the caller that draws an early refresh does not
/// wait either: the refresh runs in a spawned task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_loaders_refresh_in_the_background() {
    let server = RedisServer::start();
    for aside in [
        Aside::builder().build(),
        common::patient_builder()
            .store(common::patient_redis(&server.url()).await)
            .build(),
    ] {
        let ns = aside
            .namespace::<u64, String>("owned")
            .ttl(Duration::from_secs(60))
            .early_refresh(EarlyRefresh::AfterFraction(0.0))
            .build()
            .unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        ns.get_or_load(&1, counting_loader(&calls, Ok(Some("v1"))))
            .await
            .unwrap();
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let refreshes = Arc::new(AtomicUsize::new(0));
        for _ in 0..20 {
            let f = ns.fetch_owned(&1, held_loader(&release, &refreshes)).await.unwrap();
            assert_eq!(
                (f.value.as_deref(), f.source),
                (Some("v1"), Source::Hit),
                "nobody waits"
            );
        }
        release.add_permits(1);
        eventually("the background refresh lands", Duration::from_secs(5), || async {
            ns.get(&1).await.unwrap().as_deref() == Some("v2")
        })
        .await;
        assert_eq!(
            refreshes.load(Ordering::SeqCst),
            1,
            "one background refresh on {aside:?}"
        );
    }
}

/// With an owned loader and fail-safe, a load slower than the soft timeout
/// answers with the expired value and still fills the cache when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_timeout_serves_the_expired_value_and_the_load_still_fills() {
    let aside = Aside::builder().build();
    let ns = aside
        .namespace::<u64, String>("soft")
        .ttl(Duration::from_millis(100))
        .fail_safe(Duration::from_secs(30), Duration::from_secs(30))
        .soft_load_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    ns.get_or_load(&1, counting_loader(&calls, Ok(Some("v1"))))
        .await
        .unwrap();
    eventually("the value expires", Duration::from_secs(5), || async {
        ns.get(&1).await.unwrap().is_none()
    })
    .await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = release.clone();
    let f = ns
        .fetch_owned(&1, move || {
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                Ok::<_, DbDown>(Some("v2".to_string()))
            }
        })
        .await
        .unwrap();
    assert_eq!((f.value.as_deref(), f.source), (Some("v1"), Source::Stale));
    release.add_permits(1);
    eventually("the slow load fills the cache", Duration::from_secs(5), || async {
        ns.get(&1).await.unwrap().as_deref() == Some("v2")
    })
    .await;
}

/// Readers that find a value due for refresh all at once, released by a
/// barrier so that they race for the refresh: in each of many rounds
/// exactly one refreshes and every other one is served the current value
/// without waiting for it. A reader that checked for a running refresh,
/// found none, and then met the one just started joined it and waited
/// (CI's `early_refresh_loads_once_and_nobody_waits`, on a loaded machine).
/// More worker threads than cores, so that the system preempts readers
/// mid-read as a loaded machine does: without the fix (`try_lead`) this
/// failed in each of three runs (at round 27 in the one that named it).
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn racing_readers_of_a_due_value_never_wait_for_its_refresh() {
    let aside = common::patient_builder().build();
    let ns = aside
        .namespace::<u64, String>("due")
        .ttl(Duration::from_secs(60))
        .early_refresh(EarlyRefresh::AfterFraction(0.0))
        .build()
        .unwrap();
    for round in 0..200u64 {
        ns.get_or_load(&round, || async { Ok::<_, DbDown>(Some("v1".to_string())) })
            .await
            .unwrap();
        readers_of_a_due_value(&ns, round, 16).await;
    }
}

/// Under the stampede lock, a `Versioned` value is cached: the lock's
/// holder was given no version to cache its load under, so nothing was
/// cached and every read loaded (noted by the review of pass six).
#[tokio::test]
async fn the_stampede_lock_caches_a_versioned_value() {
    let aside = common::patient_builder().build();
    let ns = aside
        .namespace::<u64, String>("versioned")
        .strategy(Strategy::Versioned)
        .stampede(Stampede::LockSleep)
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let first = ns.fetch(&1, counting_loader(&calls, Ok(Some("v1")))).await.unwrap();
    let second = ns.fetch(&1, counting_loader(&calls, Ok(Some("v1")))).await.unwrap();
    assert_eq!((first.source, second.source), (Source::Loaded, Source::Hit));
    assert_eq!(second.value.as_deref(), Some("v1"));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one load");
}
