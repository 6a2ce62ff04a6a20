//! memcached beyond the shared store contract: the engine on it for every
//! strategy, the server killed and frozen mid-run, connections that time
//! out or are cancelled, health checks after a restart, the item size
//! limit, key rules, and keys spread over several servers.
#![cfg(feature = "memcached")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aside::store::memcached::{MemcachedConfig, MemcachedStore};
use aside::store::{Store, StoreError};
use aside::{Aside, BreakerConfig};
use aside_testkit::MemcachedServer;
use bytes::Bytes;

const TTL: Duration = Duration::from_secs(60);

async fn aside_on(server: &MemcachedServer) -> Aside {
    Aside::builder()
        .store(MemcachedStore::connect(&server.addr()).await.unwrap())
        .breaker(
            BreakerConfig::default()
                .failure_threshold(3)
                .open_for(Duration::from_millis(200)),
        )
        .op_timeout(Duration::from_millis(200))
        .build()
}

/// As [`aside_on`], for the tests that count hits and loads rather than
/// ride out an outage: no store call is given up on (`common::PATIENT`).
async fn patient_aside_on(server: &MemcachedServer) -> Aside {
    common::patient_aside(common::patient_memcached(&server.addr()).await)
}

/// One connection at most, so a connection that went back to the pool
/// half-read would be the one the next call gets.
fn one_connection(response_timeout: Duration) -> MemcachedConfig {
    let mut config = MemcachedConfig::default();
    config.max_connections_per_server = 1;
    config.response_timeout = response_timeout;
    config
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test]
async fn miss_then_hit_then_invalidate_for_every_strategy() {
    let server = MemcachedServer::start();
    common::miss_hit_invalidate_every_strategy(&patient_aside_on(&server).await).await;
}

/// Readers keep answering from the database, with zero errors, while
/// memcached is dead; once it is back (empty), hits resume on the same `Aside`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_killed_mid_run_costs_no_errors_and_hits_resume() {
    let mut server = MemcachedServer::start();
    let aside = aside_on(&server).await;
    common::reads_survive_the_store_killed(&aside, &mut |up| if up { server.restart() } else { server.kill() }).await;
}

/// A call that times out drops its connection: with a single pooled
/// connection, a reused one would hand the next caller the late answer.
#[tokio::test]
async fn a_timed_out_call_closes_its_connection() {
    let server = MemcachedServer::start();
    let store = MemcachedStore::connect_with(&server.addr(), one_connection(Duration::from_millis(100)))
        .await
        .unwrap();
    store.set("a", b("answer-a"), TTL).await.unwrap();
    store.set("b", b("answer-b"), TTL).await.unwrap();
    server.freeze();
    let err = store.get("a").await.unwrap_err();
    assert!(matches!(err, StoreError::Connection { .. }), "{err:?}");
    server.thaw();
    assert_eq!(store.get("b").await.unwrap(), Some(b("answer-b")));
    assert_eq!(store.get("a").await.unwrap(), Some(b("answer-a")));
}

/// The same for a call whose future is dropped mid-exchange (the caller's
/// own timeout, a `select!`, an aborted task).
#[tokio::test]
async fn a_cancelled_call_closes_its_connection() {
    let server = MemcachedServer::start();
    let store = MemcachedStore::connect_with(&server.addr(), one_connection(Duration::from_secs(10)))
        .await
        .unwrap();
    store.set("a", b("answer-a"), TTL).await.unwrap();
    store.set("b", b("answer-b"), TTL).await.unwrap();
    server.freeze();
    let cancelled = tokio::time::timeout(Duration::from_millis(100), store.get("a")).await;
    assert!(cancelled.is_err(), "the call was still waiting when dropped");
    server.thaw();
    assert_eq!(store.get("b").await.unwrap(), Some(b("answer-b")));
}

/// With health checks on every checkout, pooled connections that a restart
/// broke are replaced before use: the first call after the restart works.
#[tokio::test]
async fn health_checks_replace_connections_a_restart_broke() {
    let mut server = MemcachedServer::start();
    let mut config = MemcachedConfig::default();
    config.health_check_after = Duration::ZERO;
    let store = MemcachedStore::connect_with(&server.addr(), config).await.unwrap();
    store.set("k", b("v"), TTL).await.unwrap();
    server.restart();
    store.set("k", b("after"), TTL).await.unwrap();
    assert_eq!(store.get("k").await.unwrap(), Some(b("after")));
    store.ping().await.unwrap();
}

#[tokio::test]
async fn values_over_the_item_size_limit_are_refused() {
    let server = MemcachedServer::start();
    let store = common::patient_memcached(&server.addr()).await;
    let key = "big:1";
    let limit = store.max_value_len(key);
    assert!(limit > 1_000_000 && limit < 1024 * 1024, "{limit}");
    let at_limit = Bytes::from(vec![b'x'; limit]);
    store.set(key, at_limit.clone(), TTL).await.unwrap();
    assert_eq!(store.get(key).await.unwrap().map(|v| v.len()), Some(limit));
    store.put_entry("big:2", at_limit, TTL).await.unwrap();
    let over = Bytes::from(vec![b'x'; 1024 * 1024]);
    for result in [
        store.set(key, over.clone(), TTL).await,
        store.put_entry(key, over.clone(), TTL).await,
    ] {
        match result {
            Err(StoreError::Refused { message, .. }) => assert!(message.contains("item size limit"), "{message}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(store.get(key).await.unwrap().map(|v| v.len()), Some(limit), "unchanged");
}

#[tokio::test]
async fn bad_keys_are_refused_and_long_keys_hashed() {
    let server = MemcachedServer::start();
    let store = common::patient_memcached(&server.addr()).await;
    for bad in ["a b", "a\r\nflush_all", "tab\there"] {
        assert!(
            matches!(store.set(bad, b("x"), TTL).await, Err(StoreError::Refused { .. })),
            "{bad:?}"
        );
    }
    let long = "k".repeat(1000);
    store.set(&long, b("long"), TTL).await.unwrap();
    assert_eq!(store.get(&long).await.unwrap(), Some(b("long")));
    assert_eq!(store.get(&"k".repeat(999)).await.unwrap(), None);
    // Through an `Aside`, the engine refuses such keys before the store sees them.
    let aside = Aside::builder().store(store).build();
    let ns = aside.namespace::<str, String>("k").build().unwrap();
    let err = ns
        .get_or_load("a\r\nflush_all", || async { Ok::<_, common::DbDown>(Some("x".into())) })
        .await;
    assert_eq!(err.unwrap_err().kind(), aside::ErrorKind::InvalidKey);
}

/// Keys are spread over both servers; each key lives on exactly one; a
/// server killed takes only its own keys with it.
#[tokio::test]
async fn keys_are_spread_over_several_servers() {
    let (a, mut b_server) = (MemcachedServer::start(), MemcachedServer::start());
    let both = MemcachedStore::connect(&format!("{},{}", a.addr(), b_server.addr()))
        .await
        .unwrap();
    let keys: Vec<String> = (0..400).map(|i| format!("spread:{i}")).collect();
    both.set_many(keys.iter().map(|k| (k.clone(), b(k), TTL)).collect())
        .await
        .unwrap();
    assert_eq!(
        both.get_many(&keys).await.unwrap(),
        keys.iter().map(|k| Some(b(k))).collect::<Vec<_>>()
    );
    let only_a = MemcachedStore::connect(&a.addr()).await.unwrap();
    let only_b = MemcachedStore::connect(&b_server.addr()).await.unwrap();
    let on_a = only_a.get_many(&keys).await.unwrap();
    let on_b = only_b.get_many(&keys).await.unwrap();
    let count_a = on_a.iter().filter(|v| v.is_some()).count();
    for ((k, x), y) in keys.iter().zip(&on_a).zip(&on_b) {
        assert!(x.is_some() != y.is_some(), "{k} is on exactly one server");
    }
    assert!(
        (100..300).contains(&count_a),
        "{count_a} of 400 keys on the first server"
    );

    b_server.kill();
    assert!(
        both.get_many(&keys).await.is_err(),
        "a batch touching the dead server fails"
    );
    for (k, x) in keys.iter().zip(&on_a) {
        if x.is_some() {
            assert_eq!(
                both.get(k).await.unwrap(),
                Some(b(k)),
                "keys of the live server still hit"
            );
        }
    }
}

/// memcached keeps a 100 ms entry for a whole second or more; past its
/// logical expiry it is loaded again, never returned, single or batched.
#[tokio::test]
async fn values_past_their_ttl_are_reloaded_though_memcached_still_holds_them() {
    use aside::Source;
    use common::{Db, User};
    let server = MemcachedServer::start();
    let aside = patient_aside_on(&server).await;
    let ns = aside
        .namespace::<u64, User>("short")
        .ttl(Duration::from_millis(100))
        .build()
        .unwrap();
    let db = Db::with_users(3);
    assert_eq!(common::read(&ns, &db, 1).await.1, Source::Loaded);
    let batch = |ids: Vec<u64>| {
        let db = db.clone();
        async move {
            let mut found = std::collections::HashMap::new();
            for id in ids {
                found.extend(db.get(id).await?.map(|u| (id, u)));
            }
            Ok::<_, common::DbDown>(found)
        }
    };
    assert_eq!(ns.get_many_or_load(&[2, 3], batch).await.unwrap().len(), 2);
    assert_eq!(db.queries(), 3);
    common::eventually("the entries expire", Duration::from_secs(5), || async {
        ns.get(&1).await.unwrap().is_none() && ns.get(&2).await.unwrap().is_none()
    })
    .await;
    let store = common::patient_memcached(&server.addr()).await;
    assert!(
        store.get_entry("short:1").await.unwrap().is_some(),
        "memcached still holds the expired entry (whole-second TTLs)"
    );
    assert_eq!(common::read(&ns, &db, 1).await.1, Source::Loaded);
    assert_eq!(ns.get_many_or_load(&[2, 3], batch).await.unwrap().len(), 2);
    assert_eq!(db.queries(), 6, "every expired key was loaded again");
}

/// Stale serving on memcached's `X`: after an invalidation that keeps the
/// old value (`md I`), one engine wins the reload (`W`) while another, in
/// what could be another process, is served the stale value (`Z X`) at once
/// instead of waiting or loading too; the reload's fill then is a hit for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_are_served_while_another_engine_loads() {
    use aside::Source;
    use common::{Db, User};
    let server = MemcachedServer::start();
    let (a, b) = (patient_aside_on(&server).await, patient_aside_on(&server).await);
    let profile = |aside: &Aside| {
        aside
            .namespace::<u64, User>("profile")
            .serve_stale_while_loading(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let (ns_a, ns_b) = (profile(&a), profile(&b));
    let db = Db::with_users(1);
    assert_eq!(common::read(&ns_a, &db, 1).await.1, Source::Loaded);
    db.put(User::new(1, 1));
    ns_a.invalidate(&1).await.unwrap();

    // The loader says when it runs (engine A then holds the lease), and
    // waits for the gate.
    let (started, gate) = (
        Arc::new(tokio::sync::Semaphore::new(0)),
        Arc::new(tokio::sync::Semaphore::new(0)),
    );
    let slow = {
        let (ns_a, db, started, gate) = (ns_a.clone(), db.clone(), started.clone(), gate.clone());
        tokio::spawn(async move {
            ns_a.fetch(&1, || {
                let (db, started, gate) = (db.clone(), started.clone(), gate.clone());
                async move {
                    started.add_permits(1);
                    gate.acquire().await.unwrap().forget();
                    db.get(1).await
                }
            })
            .await
            .unwrap()
        })
    };
    tokio::time::timeout(Duration::from_secs(5), started.acquire())
        .await
        .expect("engine A loads under the lease")
        .unwrap()
        .forget();
    let queries = db.queries();
    let f = ns_b.fetch(&1, || db.get(1)).await.unwrap();
    assert_eq!((f.value, f.source), (Some(User::new(1, 0)), Source::Stale));
    assert_eq!(
        db.queries(),
        queries,
        "engine B neither waited for nor repeated the load"
    );

    gate.add_permits(1);
    let loaded = slow.await.unwrap();
    assert_eq!((loaded.value, loaded.source), (Some(User::new(1, 1)), Source::Loaded));
    assert_eq!(common::read(&ns_b, &db, 1).await, (Some(User::new(1, 1)), Source::Hit));
}

/// Defect 8 of issue 12: lease tokens were the bare CAS, and memcached's
/// CAS counter starts over when it restarts, so a lease granted before a
/// restart matched the first lease granted after it: its fill overwrote
/// the newer reader's lease with a value loaded before the restart, and
/// its release dropped the newer lease.
#[tokio::test]
async fn a_lease_from_before_a_restart_is_refused_after_it() {
    use aside::store::{FillOutcome, LeaseOutcome, LeaseToken};
    let granted = |outcome: LeaseOutcome| match outcome {
        LeaseOutcome::Granted { token, .. } => token,
        other => panic!("no lease: {other:?}"),
    };
    let mut server = MemcachedServer::start();
    let store = MemcachedStore::connect(&server.addr()).await.unwrap();
    // On a fresh server, the first lease has the first CAS.
    let before = granted(store.lookup_or_lease("k", LeaseToken::random(), TTL).await.unwrap());
    server.restart();
    // Pooled connections the restart broke fail once each; a new one reaches the new server.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        match store.lookup_or_lease("k", LeaseToken::random(), TTL).await {
            Ok(outcome) => break granted(outcome),
            Err(StoreError::Connection { .. }) if tokio::time::Instant::now() < deadline => continue,
            Err(e) => panic!("memcached not back after its restart: {e:?}"),
        }
    };
    assert_ne!(
        before, after,
        "a lease from before the restart is indistinguishable from one after it"
    );
    store.release("k", before).await.unwrap();
    assert_eq!(
        store.peek_entry("k").await.unwrap().lease,
        Some(after),
        "the old lease's release dropped the new one"
    );
    assert_eq!(
        store
            .fill("k", before, b("loaded before the restart"), TTL)
            .await
            .unwrap(),
        FillOutcome::Refused
    );
    assert_eq!(
        store.fill("k", after, b("new"), TTL).await.unwrap(),
        FillOutcome::Stored
    );
    assert_eq!(store.get_entry("k").await.unwrap(), Some((b("new"), false)));
}
