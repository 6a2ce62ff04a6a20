//! A misbehaving network between aside and its servers, made by the test
//! kit's [`FaultProxy`]: a blackholed Redis, memcached and NATS, a Redis
//! answering 200 ms late, a half-open Redis connection.
//!
//! What is asserted is structural (the store is not touched while the
//! breaker is open, reads return the loader's value, a new connection is
//! made, hits come back), never a duration: the added latency is measured
//! by `aside demo --scenario ...`-style CLI output, not here.

mod common;

use std::time::Duration;

use aside::store::redis::{RedisConfig, RedisStore};
use aside::{Aside, BreakerConfig, BreakerReason, BreakerState, Namespace, Source, Strategy};
use aside_testkit::RedisServer;
use aside_testkit::proxy::FaultProxy;
use common::{Db, User, eventually, read};

const GENEROUS: Duration = Duration::from_secs(30);

fn users(aside: &Aside) -> Namespace<u64, User> {
    aside
        .namespace::<u64, User>("user:profile")
        .strategy(Strategy::Lease)
        .build()
        .unwrap()
}

/// A Redis store through `proxy`, with no fill subscription (one connection
/// to count) and `response` as its response timeout.
async fn redis_through(proxy: &FaultProxy, response: Duration) -> RedisStore {
    let mut config = RedisConfig::default();
    config.response_timeout = response;
    config.fill_channel = None;
    RedisStore::connect_with(&proxy.redis_url(), config).await.unwrap()
}

fn aside_on(store: RedisStore, op_timeout: Duration) -> Aside {
    Aside::builder()
        .store(store)
        .op_timeout(op_timeout)
        .breaker(
            BreakerConfig::default()
                .failure_threshold(3)
                .open_for(Duration::from_millis(100)),
        )
        .build()
}

/// Reads `id` until one is a hit (after a fault healed).
async fn hits_resume(ns: &Namespace<u64, User>, db: &Db, id: u64) {
    eventually("hits resume", GENEROUS, || async {
        read(ns, db, id).await.1 == Source::Hit
    })
    .await;
}

/// With Redis blackholed, every read answers with the loader's value; once
/// the breaker is open no read touches the store (no store error, no slow
/// call is counted, every store call is skipped). After the blackhole
/// heals, hits come back on the same `Aside`, on a new connection: the
/// blackholed one never forwards again, and redis-rs alone would keep
/// sending to it (at the base the cache stayed bypassed for
/// minutes).
#[tokio::test]
async fn a_blackholed_redis_is_skipped_and_hits_resume_after_it_heals() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let store = redis_through(&proxy, Duration::from_millis(200)).await;
    let aside = aside_on(store, Duration::from_millis(200));
    let ns = users(&aside);
    let db = Db::with_users(10);
    assert_eq!(read(&ns, &db, 1).await.1, Source::Loaded);
    assert_eq!(read(&ns, &db, 1).await.1, Source::Hit);
    assert_eq!(proxy.accepted(), 1);

    proxy.blackhole();
    let errors = aside.stats().store_errors;
    assert_eq!(read(&ns, &db, 1).await.0, Some(User::new(1, 0)));
    assert_eq!(
        aside.stats().store_errors,
        errors + 1,
        "one store call per read: a read waits at most one operation timeout"
    );
    for id in 1..=10 {
        assert_eq!(read(&ns, &db, id).await.0, Some(User::new(id, 0)));
    }
    assert_ne!(aside.breaker_state(), BreakerState::Closed);
    assert_eq!(aside.breaker_status().reason, Some(BreakerReason::Failures));
    let before = aside.stats();
    for id in 1..=10 {
        let (value, source) = read(&ns, &db, id).await;
        assert_eq!((value, source), (Some(User::new(id, 0)), Source::Loaded));
    }
    let after = aside.stats();
    assert_eq!(after.store_errors, before.store_errors, "no read touched the store");
    assert_eq!(after.store_slow, before.store_slow, "no read waited on the store");
    assert!(after.store_skipped >= before.store_skipped + 10, "{after:?}");

    proxy.heal();
    hits_resume(&ns, &db, 1).await;
    assert_eq!(aside.breaker_state(), BreakerState::Closed);
    assert!(proxy.accepted() >= 2, "the dead connection was replaced");
}

/// A Redis that answers every request 200 ms late (100 ms each way, inside
/// a 1 s timeout) opens the breaker on latency alone; while open, reads go
/// to the loader without waiting on the store; once the latency is gone,
/// the background probe closes it and hits come back. At the base
/// the breaker counted failures only and every hit waited.
#[tokio::test]
async fn a_slow_redis_opens_the_breaker_and_hits_return_when_it_is_fast_again() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let store = redis_through(&proxy, Duration::from_secs(1)).await;
    let aside = aside_on(store, Duration::from_secs(1));
    let ns = users(&aside);
    let db = Db::with_users(10);
    for id in 1..=10 {
        read(&ns, &db, id).await;
    }
    assert_eq!(read(&ns, &db, 1).await.1, Source::Hit);

    proxy.set_latency(Duration::from_millis(100));
    let slow_hits = std::cell::Cell::new(0u32);
    eventually("the breaker opens on latency", GENEROUS, || async {
        for id in 1..=10 {
            let (value, source) = read(&ns, &db, id).await;
            assert_eq!(value, Some(User::new(id, 0)));
            slow_hits.set(slow_hits.get() + u32::from(source == Source::Hit));
        }
        aside.breaker_state() != BreakerState::Closed
    })
    .await;
    assert!(
        slow_hits.get() > 0,
        "slow answers are still answers until the breaker opens"
    );
    let status = aside.breaker_status();
    assert_eq!(status.reason, Some(BreakerReason::Slow), "{status:?}");
    assert_eq!(aside.stats().store_errors, 0, "nothing failed: it was slow");
    let before = aside.stats();
    for id in 1..=10 {
        assert_eq!(read(&ns, &db, id).await, (Some(User::new(id, 0)), Source::Loaded));
    }
    let after = aside.stats();
    assert_eq!(after.store_slow, before.store_slow, "no read waited on the store");
    assert!(after.store_skipped >= before.store_skipped + 10);
    assert_ne!(aside.breaker_state(), BreakerState::Closed, "probes are slow too");

    proxy.heal();
    hits_resume(&ns, &db, 1).await;
    assert_eq!(aside.breaker_state(), BreakerState::Closed);
}

/// A connection that stops forwarding without closing (half-open) is
/// replaced after a few timeouts in a row: the proxy sees a new
/// connection, and hits resume. The breaker is kept closed here (a high
/// failure threshold) so that users' reads are what times out. At the
/// issue's base, redis-rs sent every request to the dead connection.
#[tokio::test]
async fn a_half_open_redis_connection_is_replaced_within_a_few_timeouts() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let store = redis_through(&proxy, Duration::from_millis(200)).await;
    let aside = Aside::builder()
        .store(store.clone())
        .op_timeout(Duration::from_millis(200))
        .breaker(BreakerConfig::default().failure_threshold(1_000))
        .build();
    let ns = users(&aside);
    let db = Db::with_users(1);
    read(&ns, &db, 1).await;
    assert_eq!(read(&ns, &db, 1).await.1, Source::Hit);
    assert_eq!((proxy.accepted(), proxy.active()), (1, 1));

    proxy.half_open();
    hits_resume(&ns, &db, 1).await;
    assert!(proxy.accepted() >= 2, "a new connection was made");
    assert!(store.connection_replacements() >= 1);
    let errors = aside.stats().store_errors;
    assert!(errors >= 3, "it took timeouts to notice: {errors}");
    eventually("the dead connection is closed by its client", GENEROUS, || async {
        proxy.active() == 1
    })
    .await;
}

/// A store used without an `Aside` still bounds every request: the
/// response timeout is the store's own timer now (redis-rs's is off, so
/// that an engine's call arms one timer, not two), and it fires for direct
/// calls, a wait for the blackholed server included. Without it this call
/// would wait for the kernel to give up on the socket.
#[tokio::test]
async fn a_direct_store_call_to_a_blackholed_redis_times_out() {
    use aside::store::Store;
    let server = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let store = redis_through(&proxy, Duration::from_millis(200)).await;
    store.set("k", "v".into(), Duration::from_secs(60)).await.unwrap();
    proxy.blackhole();
    let answer = tokio::time::timeout(GENEROUS, store.get("k"))
        .await
        .expect("the store's own response timeout ends the call");
    let error = answer.expect_err("a blackholed server answers nothing");
    assert!(
        !error.is_per_key(),
        "a timeout is the store's failure, not the key's: {error}"
    );
    let sent = tokio::time::timeout(GENEROUS, store.peek_fresh("k")).await;
    assert!(
        matches!(sent, Ok(Err(_))),
        "the hit path's request is bounded too: {sent:?}"
    );
}

/// The same blackhole on memcached: reads answer from the loader, the
/// store is skipped once the breaker is open, hits resume after.
#[cfg(feature = "memcached")]
#[tokio::test]
async fn a_blackholed_memcached_is_skipped_and_hits_resume_after_it_heals() {
    use aside::store::memcached::{MemcachedConfig, MemcachedStore};
    let server = aside_testkit::MemcachedServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let mut config = MemcachedConfig::default();
    config.response_timeout = Duration::from_millis(200);
    let store = MemcachedStore::connect_with(&proxy.addr().to_string(), config)
        .await
        .unwrap();
    let aside = Aside::builder()
        .store(store)
        .op_timeout(Duration::from_millis(200))
        .breaker(
            BreakerConfig::default()
                .failure_threshold(3)
                .open_for(Duration::from_millis(100)),
        )
        .build();
    let ns = users(&aside);
    let db = Db::with_users(10);
    read(&ns, &db, 1).await;
    assert_eq!(read(&ns, &db, 1).await.1, Source::Hit);

    proxy.blackhole();
    let errors = aside.stats().store_errors;
    assert_eq!(read(&ns, &db, 1).await.0, Some(User::new(1, 0)));
    assert_eq!(
        aside.stats().store_errors,
        errors + 1,
        "one store call per read: a read waits at most one operation timeout"
    );
    for id in 1..=10 {
        assert_eq!(read(&ns, &db, id).await.0, Some(User::new(id, 0)));
    }
    assert_ne!(aside.breaker_state(), BreakerState::Closed);
    let before = aside.stats();
    for id in 1..=10 {
        assert_eq!(read(&ns, &db, id).await, (Some(User::new(id, 0)), Source::Loaded));
    }
    let after = aside.stats();
    assert_eq!(after.store_errors, before.store_errors, "no read touched the store");
    assert!(after.store_skipped >= before.store_skipped + 10);

    proxy.heal();
    hits_resume(&ns, &db, 1).await;
}

/// An `invalidate` whose NATS bus is blackholed returns (with an error or
/// not: the publish is bounded), and so do the ones after it.
#[cfg(feature = "nats")]
#[tokio::test]
async fn invalidate_returns_with_the_nats_bus_blackholed() {
    let nats = aside_testkit::NatsServer::start();
    let port: u16 = nats.url().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = FaultProxy::start(([127, 0, 0, 1], port).into()).await;
    let bus = aside::bus::nats::NatsBus::connect(&proxy.nats_url()).await.unwrap();
    invalidate_returns_with_the_bus_blackholed(bus, &proxy).await;
}

/// The same on the Redis bus.
#[tokio::test]
async fn invalidate_returns_with_the_redis_bus_blackholed() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let bus = aside::bus::redis::RedisBus::connect(&proxy.redis_url()).await.unwrap();
    invalidate_returns_with_the_bus_blackholed(bus, &proxy).await;
}

async fn invalidate_returns_with_the_bus_blackholed(bus: impl aside::bus::Bus, proxy: &FaultProxy) {
    let aside = Aside::builder().bus(bus).build();
    let ns = common::users_with_l1(&aside);
    let db = Db::with_users(3);
    read(&ns, &db, 1).await;
    ns.invalidate(&1).await.unwrap();
    proxy.blackhole();
    for id in 1..=3 {
        // Returns: an unbounded wait would hang here until the test's own
        // bound (which only catches a hang; it asserts no duration).
        let returned = tokio::time::timeout(GENEROUS, ns.invalidate(&id)).await;
        assert!(returned.is_ok(), "invalidate({id}) hung on a blackholed bus");
    }
    assert_eq!(read(&ns, &db, 2).await.0, Some(User::new(2, 0)));
}

/// A Redis bus subscription whose connection goes half-open is noticed
/// (its pings go unanswered), subscribed again on a new connection, and
/// the listener is told that messages may have been lost (`Reset`, which
/// clears the L1s). Before, it waited for messages on the dead connection
/// for good.
#[tokio::test]
async fn a_half_open_redis_bus_subscription_is_noticed_and_made_again() {
    use aside::bus::{Bus, BusEvent};
    let server = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let bus = aside::bus::redis::RedisBus::connect(&proxy.redis_url()).await.unwrap();
    let mut events = bus.subscribe().await.unwrap();
    let connections = proxy.accepted();
    proxy.half_open();
    let event = tokio::time::timeout(GENEROUS, events.recv())
        .await
        .expect("the lost subscription is noticed")
        .expect("the subscription task lives on");
    assert!(matches!(event, BusEvent::Reset), "{event:?}");
    assert!(proxy.accepted() > connections, "subscribed on a new connection");
}
