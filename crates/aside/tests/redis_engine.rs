//! The engine against a real redis-server of the test's own: hits, misses,
//! TTL expiry, invalidation, raw-JSON interop, corrupt bytes, and the
//! server killed, frozen and restarted mid-run.

mod common;

use std::time::Duration;

use aside::store::redis::RedisStore;
use aside::{Aside, BreakerConfig, BreakerState, Namespace, Source, Strategy};
use aside_testkit::RedisServer;
use common::{Db, User, eventually, read};

async fn aside_on(server: &RedisServer) -> Aside {
    Aside::builder()
        .store(RedisStore::connect(&server.url()).await.unwrap())
        .breaker(
            BreakerConfig::default()
                .failure_threshold(3)
                .open_for(Duration::from_millis(200)),
        )
        .op_timeout(Duration::from_millis(200))
        .build()
}

/// As [`aside_on`], for the tests that count hits, loads and errors rather
/// than ride out an outage: no store call is given up on (`common::PATIENT`).
async fn patient_aside_on(server: &RedisServer) -> Aside {
    common::patient_aside(common::patient_redis(&server.url()).await)
}

fn users(aside: &Aside, strategy: Strategy) -> Namespace<u64, User> {
    aside
        .namespace::<u64, User>("user:profile")
        .strategy(strategy)
        .build()
        .unwrap()
}

#[tokio::test]
async fn miss_then_hit_then_invalidate_for_every_strategy() {
    let server = RedisServer::start();
    common::miss_hit_invalidate_every_strategy(&patient_aside_on(&server).await).await;
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let server = RedisServer::start();
    let aside = patient_aside_on(&server).await;
    let ns = aside
        .namespace::<u64, User>("short")
        .ttl(Duration::from_millis(100))
        .build()
        .unwrap();
    let db = Db::with_users(1);
    read(&ns, &db, 1).await;
    assert_eq!(read(&ns, &db, 1).await.1, Source::Hit);
    eventually("the entry expires", Duration::from_secs(5), || async {
        ns.get(&1).await.unwrap().is_none()
    })
    .await;
    assert_eq!(read(&ns, &db, 1).await.1, Source::Loaded);
    assert_eq!(db.queries(), 2);
}

#[tokio::test]
async fn raw_mode_shares_keys_with_the_articles_python_code() {
    let server = RedisServer::start();
    let mut conn = common::redis_conn(&server.url()).await;
    // What `cache.setex("user:profile:1001", 600, json.dumps(profile))` leaves behind:
    let python = r#"{"id": 1001, "name": "Ada", "email": "ada@example.com", "avatar": "a.png"}"#;
    let _: () = redis::cmd("SETEX")
        .arg("user:profile:1001")
        .arg(600)
        .arg(python)
        .query_async(&mut conn)
        .await
        .unwrap();
    let aside = patient_aside_on(&server).await;
    let ns = aside.namespace::<u64, User>("user:profile").raw().build().unwrap();
    let db = Db::default();
    let (user, source) = read(&ns, &db, 1001).await;
    assert_eq!(source, Source::Hit);
    assert_eq!(user.unwrap().name, "Ada");
    assert_eq!(db.queries(), 0);

    // And what aside writes, Python's json.loads reads: plain JSON under the same key format.
    db.put(User::new(7, 0));
    read(&ns, &db, 7).await;
    let stored: String = redis::cmd("GET")
        .arg("user:profile:7")
        .query_async(&mut conn)
        .await
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(parsed["name"], "user 7 v0");
    let ttl: i64 = redis::cmd("TTL")
        .arg("user:profile:7")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 500 && ttl <= 600, "ttl {ttl}");

    assert!(
        aside
            .namespace::<u64, User>("x")
            .raw()
            .strategy(Strategy::Lease)
            .build()
            .is_err(),
        "leases need the envelope"
    );
}

#[tokio::test]
async fn corrupt_bytes_are_a_clean_miss_and_are_replaced() {
    let server = RedisServer::start();
    let mut conn = common::redis_conn(&server.url()).await;
    let aside = patient_aside_on(&server).await;
    let db = Db::with_users(2);
    let lease_ns = users(&aside, Strategy::Lease);
    let delete_ns = aside
        .namespace::<u64, User>("plain")
        .strategy(Strategy::Delete)
        .build()
        .unwrap();
    let garbage: &[u8] = &[0xA5, 0x01, 0x01, 0x00, 0xff, 0xfe, 0x00];
    let _: () = redis::cmd("HSET")
        .arg("user:profile:1")
        .arg("v")
        .arg(garbage)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("plain:1")
        .arg(b"\x00\x01not json".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();

    for ns in [&lease_ns, &delete_ns] {
        assert_eq!(read(ns, &db, 1).await, (Some(User::new(1, 0)), Source::Loaded));
        assert_eq!(read(ns, &db, 1).await, (Some(User::new(1, 0)), Source::Hit));
    }
    let stats = aside.stats();
    assert_eq!(stats.decode_errors, 2);
    assert_eq!(stats.load_errors, 0);
}

#[tokio::test]
async fn oversized_values_are_returned_but_not_cached() {
    let server = RedisServer::start();
    let aside = patient_aside_on(&server).await;
    let ns = aside
        .namespace::<u64, User>("small")
        .max_value_bytes(64)
        .build()
        .unwrap();
    let db = Db::with_users(1);
    assert_eq!(read(&ns, &db, 1).await, (Some(User::new(1, 0)), Source::Loaded));
    assert_eq!(read(&ns, &db, 1).await.1, Source::Loaded);
    assert_eq!(aside.stats().oversized, 2);
}

#[tokio::test]
async fn bad_keys_are_refused_and_long_keys_hashed() {
    let server = RedisServer::start();
    let aside = patient_aside_on(&server).await;
    let ns = aside.namespace::<str, String>("k").build().unwrap();
    let err = ns
        .get_or_load("a\r\nFLUSHALL", || async { Ok::<_, common::DbDown>(Some("x".into())) })
        .await;
    assert_eq!(err.unwrap_err().kind(), aside::ErrorKind::InvalidKey);
    let long = "x".repeat(1000);
    let v = ns
        .get_or_load(&long, || async { Ok::<_, common::DbDown>(Some("long".into())) })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("long"));
    assert_eq!(ns.get(&long).await.unwrap().as_deref(), Some("long"));
    assert!(ns.store_key(&long).unwrap().len() <= 250);
}

/// Readers keep answering from the database, with zero errors, while the
/// server is dead; once it is back, hits resume on the same `Aside`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_killed_mid_run_costs_no_errors_and_hits_resume() {
    let mut server = RedisServer::start();
    let aside = aside_on(&server).await;
    common::reads_survive_the_store_killed(&aside, &mut |up| if up { server.restart() } else { server.kill() }).await;
}

/// An invalidation made while the server is down is returned as an error,
/// kept, honoured by reads meanwhile, and applied once the server is back.
#[tokio::test]
async fn an_invalidation_made_during_an_outage_is_applied_after_it() {
    let mut server = RedisServer::start();
    let aside = aside_on(&server).await;
    let ns = users(&aside, Strategy::Lease);
    let db = Db::with_users(1);
    read(&ns, &db, 1).await;
    assert_eq!(read(&ns, &db, 1).await.1, Source::Hit);

    server.kill();
    db.put(User::new(1, 1));
    let err = ns.invalidate(&1).await.unwrap_err();
    assert!(err.is_store() || err.is_timeout(), "{err:?}");
    assert_eq!(aside.stats().invalidations_pending, 1);
    // Meanwhile the key bypasses the cache: the database's answer, not the old entry.
    assert_eq!(read(&ns, &db, 1).await.0, Some(User::new(1, 1)));

    // Redis comes back with its data (AOF): the old entry is still there until the replay.
    server.restart();
    eventually(
        "the queued invalidation is replayed",
        Duration::from_secs(15),
        || async { aside.stats().invalidations_pending == 0 },
    )
    .await;
    assert_eq!(aside.stats().invalidations_replayed, 1);
    let mut conn = common::redis_conn(&server.url()).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("user:profile:1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!exists, "the stale entry was deleted by the replay");
    assert_eq!(read(&ns, &db, 1).await, (Some(User::new(1, 1)), Source::Loaded));
    assert_eq!(read(&ns, &db, 1).await, (Some(User::new(1, 1)), Source::Hit));
}

/// A hung server (SIGSTOP) trips the breaker; while open, reads skip the
/// store entirely; after the server thaws, a probe closes it again.
#[tokio::test]
async fn a_hung_store_is_skipped_by_the_breaker_then_probed_back() {
    let server = RedisServer::start();
    let aside = aside_on(&server).await;
    let ns = users(&aside, Strategy::Delete);
    let db = Db::with_users(5);
    read(&ns, &db, 1).await;

    server.freeze();
    for id in 1..=5 {
        assert_eq!(read(&ns, &db, id).await.0, Some(User::new(id, 0)));
    }
    assert_eq!(aside.breaker_state(), BreakerState::Open);
    let errors = aside.stats().store_errors;
    for id in 1..=5 {
        assert_eq!(read(&ns, &db, id).await.0, Some(User::new(id, 0)));
    }
    let stats = aside.stats();
    assert_eq!(stats.store_errors, errors, "an open breaker does not touch the store");
    assert!(stats.store_skipped >= 5);

    server.thaw();
    eventually("the breaker closes after a probe", Duration::from_secs(10), || async {
        read(&ns, &db, 1).await;
        aside.breaker_state() == BreakerState::Closed
    })
    .await;
    eventually("hits resume", Duration::from_secs(5), || async {
        read(&ns, &db, 1).await.1 == Source::Hit
    })
    .await;
}

/// Defect 16 of issue 12: a server error about one key (here `WRONGTYPE`:
/// another program made the entry's key a list) fed the breaker, so three
/// reads of that one key switched the cache off for every key. It is a
/// per-key miss: the loader answers, the breaker stays closed, other keys
/// keep hitting.
#[tokio::test]
async fn a_key_of_the_wrong_type_is_a_miss_not_a_sick_store() {
    let server = RedisServer::start();
    let mut conn = common::redis_conn(&server.url()).await;
    let aside = patient_aside_on(&server).await;
    let db = Db::with_users(2);
    let lease_ns = users(&aside, Strategy::Lease);
    let delete_ns = aside
        .namespace::<u64, User>("plain")
        .strategy(Strategy::Delete)
        .build()
        .unwrap();
    for ns in [&lease_ns, &delete_ns] {
        assert_eq!(read(ns, &db, 2).await.1, Source::Loaded);
    }
    for key in ["user:profile:1", "plain:1"] {
        let _: () = redis::cmd("LPUSH")
            .arg(key)
            .arg("not an entry")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    // The unreadable key is deleted by the read that met it and refilled:
    // only the first read of each namespace errs.
    for _ in 0..6 {
        assert_eq!(read(&lease_ns, &db, 1).await.0, Some(User::new(1, 0)));
        assert_eq!(read(&delete_ns, &db, 1).await.0, Some(User::new(1, 0)));
        assert_eq!(aside.breaker_state(), BreakerState::Closed);
    }
    assert!(aside.stats().store_errors >= 2, "{:?}", aside.stats());
    for ns in [&lease_ns, &delete_ns] {
        assert_eq!(read(ns, &db, 2).await, (Some(User::new(2, 0)), Source::Hit));
        assert_eq!(read(ns, &db, 1).await.1, Source::Hit, "{ns:?}: the key healed");
    }
}

/// A connect error names the server but never its password, in any of the
/// URL forms redis-rs accepts (user info, `?pass=`, `?password=`, and URLs
/// whose password breaks the parser), through the whole error chain.
#[tokio::test]
async fn connect_errors_never_show_a_password() {
    for url in [
        "redis+unix:///nonexistent/aside.sock?pass=hunter2",
        "unix:///nonexistent/aside.sock?pass=hunter2",
        "redis://127.0.0.1:1/?password=hunter2",
        "redis://:hunter2@127.0.0.1:1/",
        "redis://ada:hunter2@127.0.0.1:1/",
        "redis://ada:hun/ter2@127.0.0.1:1/",
        "redis://ada:hunter2#@127.0.0.1:1/",
    ] {
        let err = RedisStore::connect(url).await.expect_err(url);
        let mut chain = format!("{err} | {err:?}");
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            chain += &format!(" | {cause} | {cause:?}");
            source = cause.source();
        }
        assert!(
            !chain.contains("hunter2") && !chain.contains("ter2"),
            "{url} -> {chain}"
        );
    }
}

/// The calls a hit makes, counted by the test's own server: one `HGET` of
/// the entry's current value per hit, and nothing else (no `HMGET` of its
/// lease and stale copy, no script). A stale copy is never that value: the
/// read after a keep-stale invalidation is a miss that reloads.
#[tokio::test]
async fn a_hit_on_redis_is_one_hget() {
    let server = RedisServer::start();
    let aside = patient_aside_on(&server).await;
    let ns = users(&aside, Strategy::Lease);
    let db = Db::with_users(3);
    assert_eq!(read(&ns, &db, 1).await.1, Source::Loaded);
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(read(&ns, &db, 1).await.1, Source::Hit);
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!(calls("hget"), 10, "{stats}");
    let total: u64 = stats
        .lines()
        .filter_map(|l| l.split_once(":calls="))
        .filter(|(name, _)| !name.starts_with("cmdstat_config") && !name.starts_with("cmdstat_info"))
        .map(|(_, rest)| rest.split(',').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 10, "a hit made another call: {stats}");

    let keeping = aside
        .namespace::<u64, User>("user:kept")
        .serve_stale_while_loading(Duration::from_secs(60))
        .build()
        .unwrap();
    assert_eq!(read(&keeping, &db, 2).await.1, Source::Loaded);
    keeping.invalidate(&2).await.unwrap();
    db.put(User::new(2, 1));
    let (user, source) = read(&keeping, &db, 2).await;
    assert_eq!(source, Source::Loaded, "the stale copy was read as a hit");
    assert_eq!(user, Some(User::new(2, 1)));
}

/// `Duration::MAX` is a common way to say "no bound": as the operation
/// timeout and as the store's response timeout it bounds nothing, and
/// reads work. (Deadlines are instants: `now + Duration::MAX` overflowed
/// and panicked on every store call.)
#[tokio::test]
async fn timeouts_of_duration_max_bound_nothing_and_panic_nowhere() {
    use aside::store::redis::RedisConfig;
    let server = RedisServer::start();
    let mut config = RedisConfig::default();
    config.response_timeout = Duration::MAX;
    let store = RedisStore::connect_with(&server.url(), config).await.unwrap();
    let aside = Aside::builder().store(store).op_timeout(Duration::MAX).build();
    let ns = users(&aside, Strategy::Lease);
    let db = Db::with_users(1);
    assert_eq!(read(&ns, &db, 1).await, (Some(User::new(1, 0)), Source::Loaded));
    assert_eq!(read(&ns, &db, 1).await, (Some(User::new(1, 0)), Source::Hit));
    ns.invalidate(&1).await.unwrap();
    assert_eq!(read(&ns, &db, 1).await, (Some(User::new(1, 0)), Source::Loaded));
}
