//! The store on a Redis Cluster of the test's own (3 primaries, 3
//! replicas): the store contract, every strategy, the stampede across
//! engines, a batch that costs one round trip per node, and a primary
//! killed with SIGKILL mid-run.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aside::store::Store;
use aside::store::redis::{RedisStore, key_slot};
use aside::{Aside, BreakerConfig, Source, Stampede};
use aside_testkit::cluster::RedisCluster;
use bytes::Bytes;
use common::{Db, User, eventually, read};

async fn store_on(cluster: &RedisCluster) -> RedisStore {
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    assert!(store.is_cluster());
    store
}

/// As [`store_on`], for the tests that check answers and counts rather
/// than a failover: no command is given up on (`common::PATIENT`).
async fn patient_store_on(cluster: &RedisCluster) -> RedisStore {
    let store = common::patient_cluster(&cluster.urls()).await;
    assert!(store.is_cluster());
    store
}

async fn aside_on(cluster: &RedisCluster) -> Aside {
    common::patient_aside(patient_store_on(cluster).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_contract_holds_on_a_cluster() {
    let cluster = RedisCluster::start();
    aside_testkit::store_contract::run_all(&patient_store_on(&cluster).await).await;
}

/// Every strategy and the article's lock: their companion keys (counter,
/// data versions, lock) are in the entry's slot, so nothing crosses slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_load_and_invalidate_work_for_every_strategy_on_a_cluster() {
    let cluster = RedisCluster::start();
    let aside = aside_on(&cluster).await;
    common::miss_hit_invalidate_every_strategy(&aside).await;

    let locked = aside
        .namespace::<u64, User>("locked")
        .stampede(Stampede::LockSleep)
        .build()
        .unwrap();
    let db = Db::with_users(2);
    assert_eq!(read(&locked, &db, 1).await.1, Source::Loaded);
    assert_eq!(read(&locked, &db, 1).await.1, Source::Hit);

    // A Versioned namespace's counter and data sit in the entry's slot.
    let store = patient_store_on(&cluster).await;
    let full = "s-versioned:1";
    let counter = aside::key::version_key(full);
    let version: u64 = String::from_utf8(store.get(&counter).await.unwrap().expect("the counter exists").to_vec())
        .unwrap()
        .parse()
        .unwrap();
    let data = aside::key::versioned_key(full, version);
    assert!(store.get(&data).await.unwrap().is_some(), "{data} holds the value");
    assert_eq!(key_slot(&counter), key_slot(full));
    assert_eq!(key_slot(&data), key_slot(full));
    assert_eq!(aside.stats().store_errors, 0);
}

/// 200 readers of one missing key, spread over 4 engines (as 4 processes
/// would be), cause one load: the lease works across the cluster, and the
/// waiting engines are woken through the fill channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_of_200_readers_over_4_engines_loads_once() {
    let cluster = RedisCluster::start();
    let loads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    let gate = Arc::new(tokio::sync::Barrier::new(200));
    for _ in 0..4 {
        let aside = aside_on(&cluster).await;
        let ns = aside.namespace::<u64, User>("hot").build().unwrap();
        for _ in 0..50 {
            let (ns, loads, gate) = (ns.clone(), loads.clone(), gate.clone());
            readers.push(tokio::spawn(async move {
                gate.wait().await;
                ns.get_or_load(&7, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    // A slow database: every reader arrives while it loads.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::io::Error>(Some(User::new(7, 0)))
                })
                .await
                .unwrap()
            }));
        }
    }
    for reader in readers {
        assert_eq!(reader.await.unwrap(), Some(User::new(7, 0)));
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for 200 readers");
}

/// Command counts of node `i`: `(GETs, read events)` from `INFO`.
fn node_counts(cluster: &RedisCluster, i: usize) -> (u64, u64) {
    let calls = cluster.command_calls(i);
    let get = calls.iter().find(|(c, _)| c == "get").map_or(0, |(_, n)| *n);
    (get, cluster.reads_processed(i))
}

/// A batch of 100 keys spread over the cluster's slots is sent as one
/// pipeline per primary: each primary runs its keys' GETs, and reads them
/// in one read event (`INFO stats` total_reads_processed), not one per key
/// as a batch sent key by key would cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_100_keys_costs_one_round_trip_per_node() {
    let cluster = RedisCluster::start();
    let store = patient_store_on(&cluster).await;
    let keys: Vec<String> = (0..100).map(|i| format!("b:{i}")).collect();
    let slots: std::collections::HashSet<u16> = keys.iter().map(|k| key_slot(k)).collect();
    assert_eq!(slots.len(), 100, "the keys are in 100 different slots");
    store
        .set_many(
            keys.iter()
                .map(|k| (k.clone(), Bytes::from(k.clone()), Duration::from_secs(60)))
                .collect(),
        )
        .await
        .unwrap();
    // A first batch reads the slot map and warms every connection.
    assert_eq!(store.get_many(&keys).await.unwrap().len(), 100);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    let mut per_node = BTreeMap::new();
    for k in &keys {
        *per_node.entry(cluster.primary_of_slot(key_slot(k))).or_insert(0u64) += 1;
    }
    // The INFO calls that count cost read events of their own: measured
    // once with nothing in between, and taken off.
    let counts = || primaries.iter().map(|&i| node_counts(&cluster, i)).collect::<Vec<_>>();
    let idle = counts();
    let before = counts();
    let sent = store.cluster_pipelines_sent();
    let values = store.get_many(&keys).await.unwrap();
    let after = counts();
    assert_eq!(
        store.cluster_pipelines_sent() - sent,
        3,
        "one pipeline per primary, not per slot or per key"
    );
    for (k, v) in keys.iter().zip(&values) {
        assert_eq!(v.as_deref(), Some(k.as_bytes()), "answers come back in order");
    }
    for (n, &i) in primaries.iter().enumerate() {
        let gets = after[n].0 - before[n].0;
        let overhead = before[n].1 - idle[n].1;
        let reads = (after[n].1 - before[n].1).saturating_sub(overhead);
        eprintln!("node {i}: {gets} GETs in {reads} read event(s) (INFO's own {overhead} taken off)");
        assert_eq!(gets, per_node[&i], "node {i} ran exactly its keys' GETs");
        assert!(gets >= 20, "node {i} serves a third of the keys");
        // One pipeline arrives in one read, two if the kernel splits it; a
        // replica's REPLCONF ACK (once a second) may add one. A read per
        // GET, or per slot, would be 20 or more.
        assert!(reads <= 3, "node {i} read its {gets} GETs in {reads} events");
    }
    assert_eq!(after.iter().zip(&before).map(|(a, b)| a.0 - b.0).sum::<u64>(), 100);
}

/// A primary killed with SIGKILL mid-run, with readers and writers going:
/// no read fails (store errors fall back to the loader), invalidations
/// that fail during the failover are queued and applied after it, no
/// stale entry is left once writers stop, and hits resume on the same
/// `Aside` once the replica is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_run_loses_no_read_and_no_invalidation() {
    let mut cluster = RedisCluster::start();
    let store = store_on(&cluster).await;
    let aside = Aside::builder()
        .store(store.clone())
        .breaker(
            BreakerConfig::default()
                .failure_threshold(3)
                .open_for(Duration::from_millis(200)),
        )
        .op_timeout(Duration::from_millis(500))
        .build();
    let ns = aside.namespace::<u64, User>("user:profile").build().unwrap();
    const KEYS: u64 = 60;
    let db = Db::with_users(KEYS);
    for id in 1..=KEYS {
        read(&ns, &db, id).await;
    }
    assert_eq!(read(&ns, &db, 1).await.1, Source::Hit);
    let victim = cluster.primary_of_key(&ns.store_key(&1).unwrap());
    let on_victim: Vec<u64> = (1..=KEYS)
        .filter(|id| cluster.primary_of_key(&ns.store_key(id).unwrap()) == victim)
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in 0..4u64 {
        let (ns, db, stop, reads) = (ns.clone(), db.clone(), stop.clone(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let id = i % KEYS + 1;
                ns.get_or_load(&id, || db.get(id)).await.expect("reads never fail");
                reads.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    let writes = Arc::new(AtomicU64::new(0));
    {
        let (ns, db, stop, writes, on_victim) =
            (ns.clone(), db.clone(), stop.clone(), writes.clone(), on_victim.clone());
        tasks.push(tokio::spawn(async move {
            let mut version = 1;
            while !stop.load(Ordering::Relaxed) {
                for &id in &on_victim {
                    db.put(User::new(id, version));
                    // An error is queued for replay by the engine.
                    let _ = ns.invalidate(&id).await;
                }
                version += 1;
                writes.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let reads_before = reads.load(Ordering::Relaxed);
    cluster.kill_node(victim);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.await_failover(victim);
        cluster
    })
    .await
    .unwrap();
    assert!(
        aside.stats().invalidations_queued > 0,
        "some invalidations failed during the failover: {:?}",
        aside.stats()
    );
    // Writers go on a little after the promotion, then stop.
    let writes_now = writes.load(Ordering::Relaxed);
    eventually("writes continue after the failover", Duration::from_secs(30), || {
        let writes = writes.clone();
        async move { writes.load(Ordering::Relaxed) > writes_now + 5 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("no reader or writer failed");
    }
    assert!(reads.load(Ordering::Relaxed) > reads_before, "reads went on");
    // Replayed only once the store's connection reaches the promoted
    // replica: redis-rs alone never would (see `ClusterHandle`).
    eventually(
        "every queued invalidation is applied",
        Duration::from_secs(30),
        || async { aside.stats().invalidations_pending == 0 },
    )
    .await;
    store.ping().await.expect("the cluster answers for every slot");
    for id in 1..=KEYS {
        let cached = ns.get(&id).await.unwrap();
        assert!(
            cached.is_none() || cached == db.get_now(id),
            "user {id}: stale entry {cached:?}, database has {:?}",
            db.get_now(id)
        );
    }
    let id = on_victim[0];
    eventually("hits resume on the promoted replica", Duration::from_secs(30), || {
        let (ns, db) = (ns.clone(), db.clone());
        async move { ns.fetch(&id, || db.get(id)).await.unwrap().source == Source::Hit }
    })
    .await;
    assert_eq!(ns.get(&id).await.unwrap(), db.get_now(id));
    drop(cluster);
}

/// Batches keep working across the failover: a batch whose keys' primary
/// moved is answered again (the map is read anew, or `MOVED` is followed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_follow_a_failover() {
    let mut cluster = RedisCluster::start();
    let store = store_on(&cluster).await;
    let keys: Vec<String> = (0..30).map(|i| format!("f:{i}")).collect();
    let items = keys
        .iter()
        .map(|k| (k.clone(), Bytes::from(k.clone()), Duration::from_secs(60)))
        .collect::<Vec<_>>();
    store.set_many(items.clone()).await.unwrap();
    assert!(store.get_many(&keys).await.unwrap().iter().all(Option::is_some));
    let victim = cluster.primary_of_key(&keys[0]);
    cluster.kill_node(victim);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.await_failover(victim);
        cluster
    })
    .await
    .unwrap();
    // The data written before the kill may not have reached the replica;
    // what is written now must be read back whole.
    eventually("batches work after the failover", Duration::from_secs(30), || {
        let (store, keys, items) = (store.clone(), keys.clone(), items.clone());
        async move {
            store.set_many(items).await.is_ok()
                && store
                    .get_many(&keys)
                    .await
                    .is_ok_and(|v| v.iter().zip(&keys).all(|(v, k)| v.as_deref() == Some(k.as_bytes())))
        }
    })
    .await;
    drop(cluster);
}

/// A cluster that cannot be reached is a connection error naming the
/// nodes, their passwords masked; no URL at all is an error too.
#[tokio::test]
async fn a_cluster_connect_error_names_the_nodes_without_their_password() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("redis://ada:hunter2@127.0.0.1:{refused}/");
    let err = RedisStore::connect_cluster(&[url.as_str()]).await.unwrap_err();
    let mut chain = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        chain += &format!(" {e} {e:?}");
        source = e.source();
    }
    assert!(!err.is_per_key(), "{err:?}");
    assert!(
        chain.contains(&format!("redis://ada:***@127.0.0.1:{refused}/")),
        "{chain}"
    );
    assert!(!chain.contains("hunter2"), "{chain}");
    let none: [&str; 0] = [];
    assert!(RedisStore::connect_cluster(&none).await.is_err());
}

/// The store's TLS settings reach every node's client (the merge of the
/// cluster and TLS work once built the nodes from the bare URLs, so a CA
/// given for a cluster was silently ignored): TLS settings with a
/// plaintext node URL are refused before any connection is tried.
#[tokio::test]
async fn the_cluster_store_takes_the_tls_settings() {
    let mut config = aside::store::redis::RedisConfig::default();
    config.tls = aside::store::redis::RedisTls::new().with_ca("-----BEGIN CERTIFICATE-----\n");
    let err = RedisStore::connect_cluster_with(&["redis://ada:hunter2@127.0.0.1:1"], config)
        .await
        .expect_err("TLS settings with a redis:// URL");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("rediss://"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

/// `write_through` on a Cluster. A key whose own braces keep its write mark
/// out of its slot (`a}b`, `a{}b`: no tag of its own, and none can be made)
/// is documented (`key::slot_of`) to be invalidated instead: the versioned
/// write's CROSSSLOT must not fail a call whose database write succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_write_on_a_cluster_keeps_or_invalidates_every_key() {
    use aside::WriteThrough;
    let cluster = RedisCluster::start();
    let aside = aside_on(&cluster).await;
    let names = aside.namespace::<str, String>("name").build().unwrap();
    assert_eq!(
        names.write_through("plain", &"v1".to_owned(), 1).await.unwrap(),
        WriteThrough::Written
    );
    assert_eq!(names.peek("plain").await.unwrap().as_deref(), Some("v1"));
    for key in ["a}b", "a{}b"] {
        names.set(key, &"old".to_owned()).await.unwrap();
        let outcome = names.write_through(key, &"new".to_owned(), 1).await;
        assert!(
            matches!(outcome, Ok(WriteThrough::Written | WriteThrough::Invalidated)),
            "{key}: {outcome:?}"
        );
        assert_ne!(names.peek(key).await.unwrap().as_deref(), Some("old"), "{key}");
    }
}
