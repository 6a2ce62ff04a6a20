//! `get_many_or_load`: one store round trip for the lookups, one loader
//! call for all the misses, in-flight keys awaited, fills fenced.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aside::store::Store;
use aside::{Aside, MemoryStore, Namespace, Strategy};
use aside_testkit::RedisServer;
use common::{DbDown, Instrumented};

fn counted(store: impl Store, strategy: Strategy) -> (Namespace<u64, String>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let aside = common::patient_builder()
        .store(Instrumented::new(store, calls.clone()))
        .build();
    (
        aside.namespace::<u64, String>("n").strategy(strategy).build().unwrap(),
        calls,
    )
}

/// A loader that records every call's keys and finds every key but the multiples of 7.
fn recording_loader(
    seen: Arc<Mutex<Vec<Vec<u64>>>>,
) -> impl FnMut(Vec<u64>) -> std::future::Ready<Result<HashMap<u64, String>, DbDown>> {
    move |keys: Vec<u64>| {
        seen.lock().unwrap().push(keys.clone());
        std::future::ready(Ok(keys
            .into_iter()
            .filter(|k| k % 7 != 0)
            .map(|k| (k, format!("v{k}")))
            .collect()))
    }
}

async fn hundred_keys(store: impl Store, strategy: Strategy) {
    let (ns, calls) = counted(store, strategy);
    let keys: Vec<u64> = (1..=100).collect();
    let seen = Arc::new(Mutex::new(Vec::new()));

    let first = ns
        .get_many_or_load(&keys, recording_loader(seen.clone()))
        .await
        .unwrap();
    assert_eq!(first.len(), 100 - 14, "{strategy}: multiples of 7 are not found");
    assert_eq!(first[&8], "v8");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "{strategy}: one loader call for all misses"
    );
    assert_eq!(seen.lock().unwrap()[0].len(), 100);

    calls.store(0, Ordering::SeqCst);
    let all_hits: Vec<u64> = keys.iter().copied().filter(|k| k % 7 != 0).collect();
    let second = ns
        .get_many_or_load(&all_hits, recording_loader(seen.clone()))
        .await
        .unwrap();
    assert_eq!(second.len(), all_hits.len());
    let round_trips = calls.load(Ordering::SeqCst);
    let expected = if strategy == Strategy::Versioned { 2 } else { 1 };
    assert_eq!(
        round_trips,
        expected,
        "{strategy}: {} hits in {expected} round trip(s)",
        all_hits.len()
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "{strategy}: no loader call for hits");

    // Half cached, half new: the loader gets exactly the new ones.
    let mixed: Vec<u64> = (51..=150).collect();
    let third = ns
        .get_many_or_load(&mixed, recording_loader(seen.clone()))
        .await
        .unwrap();
    assert_eq!(third.len(), mixed.iter().filter(|k| *k % 7 != 0).count());
    let calls_made = seen.lock().unwrap();
    assert_eq!(calls_made.len(), 2);
    let mut asked = calls_made[1].clone();
    asked.sort_unstable();
    let mut expected_ask: Vec<u64> = (101..=150).chain((51..=100).filter(|k| k % 7 == 0)).collect();
    expected_ask.sort_unstable();
    assert_eq!(asked, expected_ask, "{strategy}: only the misses are loaded");
}

#[tokio::test]
async fn hundred_keys_on_memory() {
    for strategy in Strategy::all() {
        hundred_keys(MemoryStore::new(), strategy).await;
    }
}

#[tokio::test]
async fn hundred_keys_on_redis_in_one_round_trip() {
    let server = RedisServer::start();
    for strategy in Strategy::all() {
        let store = common::patient_redis(&server.url()).await;
        hundred_keys(store, strategy).await;
        let mut conn = common::redis_conn(&server.url()).await;
        let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    }
}

/// A key another caller is loading is awaited, not loaded twice; and an
/// invalidation during the batch load keeps the old read out of the cache.
#[tokio::test]
async fn in_flight_keys_are_awaited_and_fills_are_fenced() {
    let aside = Aside::builder().build();
    let ns = aside.namespace::<u64, String>("f").build().unwrap();
    let release = Arc::new(tokio::sync::Notify::new());
    let single = {
        let (ns, release) = (ns.clone(), release.clone());
        tokio::spawn(async move {
            ns.get_or_load(&1, || {
                let release = release.clone();
                async move {
                    release.notified().await;
                    Ok::<_, DbDown>(Some("from the single load".to_string()))
                }
            })
            .await
        })
    };
    // Let the single load take the flight of key 1.
    while aside.stats().loads == 0 {
        tokio::task::yield_now().await;
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let batch = {
        let (ns, seen, release, writer) = (ns.clone(), seen.clone(), release.clone(), ns.clone());
        tokio::spawn(async move {
            ns.get_many_or_load(&[1, 2], move |keys: Vec<u64>| {
                let (seen, release, writer) = (seen.clone(), release.clone(), writer.clone());
                async move {
                    seen.lock().unwrap().push(keys.clone());
                    // A write to key 2 lands while the batch loads it.
                    writer.invalidate(&2).await.unwrap();
                    release.notify_one();
                    Ok::<_, DbDown>(
                        keys.into_iter()
                            .map(|k| (k, format!("batch {k}")))
                            .collect::<HashMap<_, _>>(),
                    )
                }
            })
            .await
        })
    };
    let got = batch.await.unwrap().unwrap();
    assert_eq!(single.await.unwrap().unwrap().as_deref(), Some("from the single load"));
    assert_eq!(*seen.lock().unwrap(), vec![vec![2]], "key 1 was awaited, not loaded");
    assert_eq!(got[&1], "from the single load");
    assert_eq!(got[&2], "batch 2");
    assert_eq!(ns.get(&2).await.unwrap(), None, "the fenced fill of key 2 was refused");
    assert_eq!(ns.get(&1).await.unwrap().as_deref(), Some("from the single load"));
    assert_eq!(aside.stats().fills_refused, 1);
}

/// A batch read that read the store before a queued invalidation was
/// replayed, and checked the queue after the replay, took the old value for
/// current: the read preceded the replay's delete, the check found nothing
/// pending. The queue is now checked before the read (as the single-key
/// path does). The history checker's open I1Local finding on memcached
/// (docs/HISTORY.md) was this race.
#[tokio::test]
async fn a_batch_read_overtaken_by_a_replay_does_not_serve_the_old_value() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut store = Instrumented::new(MemoryStore::new(), calls.clone());
    store.peek_many_gate = Some(gate.clone());
    let hooks = store.hooks.clone();
    let aside = Aside::builder().store(store).build();
    let users = aside.namespace::<u64, String>("n").build().unwrap();
    let row = Arc::new(Mutex::new("v0".to_owned()));
    let loader = || {
        let row = row.clone();
        move |keys: Vec<u64>| {
            let value = row.lock().unwrap().clone();
            async move { Ok::<_, DbDown>(keys.into_iter().map(|k| (k, value.clone())).collect::<HashMap<_, _>>()) }
        }
    };
    users.set(&1, &"v0".to_owned()).await.unwrap();

    // The database write, and an invalidation the store does not take: queued.
    *row.lock().unwrap() = "v1".to_owned();
    hooks.fail("invalidate");
    users.invalidate(&1).await.unwrap_err();
    assert_eq!(aside.stats().invalidations_pending, 1);

    // The batch reads the store (still v0) and is held before it answers.
    let before = calls.load(Ordering::SeqCst);
    let reader = {
        let (users, loader) = (users.clone(), loader());
        tokio::spawn(async move { users.get_many_or_load(&[1], loader).await })
    };
    common::eventually("the batch read the store", std::time::Duration::from_secs(30), || {
        let n = calls.load(Ordering::SeqCst);
        async move { n > before }
    })
    .await;
    // The replay lands meanwhile.
    hooks.heal("invalidate");
    common::eventually("the replay", std::time::Duration::from_secs(30), || {
        let pending = aside.stats().invalidations_pending;
        async move { pending == 0 }
    })
    .await;
    gate.add_permits(1_000);
    let found = reader.await.unwrap().unwrap();
    assert_eq!(
        found.get(&1).map(String::as_str),
        Some("v1"),
        "the batch served the value the queued invalidation removed"
    );
}
