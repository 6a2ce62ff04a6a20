//! Three engines on separate connections sharing one Redis and one bus:
//! an invalidation in one evicts the others' L1 copies; a lost bus
//! connection clears the L1s and the subscription comes back.

mod common;

use std::time::Duration;

use aside::bus::redis::RedisBus;
use aside::{Aside, Namespace, Source};
use aside_testkit::RedisServer;
use common::{Db, User, eventually};

async fn engine(url: &str) -> (Aside, Namespace<u64, User>) {
    let aside = common::patient_builder()
        .store(common::patient_redis(url).await)
        .bus(RedisBus::connect(url).await.unwrap())
        .build();
    let users = common::users_with_l1(&aside);
    (aside, users)
}

/// Subscriptions are up once a message makes it through: publish until one
/// arrives (each wait is on the message itself, bounded), then drain.
async fn bus_carries(
    from: &Namespace<u64, User>,
    events: &mut tokio::sync::broadcast::Receiver<aside::bus::Invalidation>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        from.invalidate(&0).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(100), events.recv())
            .await
            .is_ok()
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bus never delivered");
    }
    while events.try_recv().is_ok() {}
}

/// The next message about `key`, skipping the warm-up messages.
async fn next_about(
    events: &mut tokio::sync::broadcast::Receiver<aside::bus::Invalidation>,
    key: &str,
) -> aside::bus::Invalidation {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .unwrap()
            .unwrap();
        if message.keys.iter().any(|k| k == key) {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_evict_other_engines_l1_and_survive_a_lost_connection() {
    let server = RedisServer::start();
    let url = server.url();
    let (a, users_a) = engine(&url).await;
    let (b, users_b) = engine(&url).await;
    let (c, users_c) = engine(&url).await;
    let mut b_events = b.invalidations().unwrap();
    let mut c_events = c.invalidations().unwrap();
    let db = Db::with_users(3);

    bus_carries(&users_a, &mut b_events).await;
    bus_carries(&users_a, &mut c_events).await;

    for users in [&users_a, &users_b, &users_c] {
        users.fetch(&1, || db.get(1)).await.unwrap();
        assert_eq!(users.fetch(&1, || db.get(1)).await.unwrap().source, Source::Hit);
    }
    let l1_hits = b.stats().l1_hits;
    db.put(User::new(1, 1));
    users_a.invalidate(&1).await.unwrap();
    // Wait on the event: B and C have evicted once their listeners saw it.
    for events in [&mut b_events, &mut c_events] {
        let message = next_about(events, "user:1").await;
        assert_eq!(message.namespace, "user");
    }
    for users in [&users_b, &users_c] {
        let f = users.fetch(&1, || db.get(1)).await.unwrap();
        assert_eq!(f.value, Some(User::new(1, 1)), "the old copy was evicted");
    }
    assert_eq!(b.stats().l1_hits, l1_hits, "that read did not come from B's L1");

    // Lose every subscription: the listeners reconnect and clear their L1s.
    users_b.fetch(&2, || db.get(2)).await.unwrap();
    let mut conn = common::redis_conn(&url).await;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
    assert!(users_b.get(&2).await.unwrap().is_some(), "held by B's L1 only");
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(
        "B's L1 is cleared after the reconnect",
        Duration::from_secs(10),
        || async { users_b.get(&2).await.unwrap().is_none() },
    )
    .await;

    // Coherence is back: a new invalidation reaches B again.
    users_b.fetch(&2, || db.get(2)).await.unwrap();
    db.put(User::new(2, 1));
    while b_events.try_recv().is_ok() {}
    users_c.invalidate(&2).await.unwrap();
    next_about(&mut b_events, "user:2").await;
    assert_eq!(
        users_b.fetch(&2, || db.get(2)).await.unwrap().value,
        Some(User::new(2, 1))
    );
    drop((a, c));
}

#[tokio::test]
async fn invalidate_many_publishes_one_message() {
    let server = RedisServer::start();
    let (a, users_a) = engine(&server.url()).await;
    let (b, _users_b) = engine(&server.url()).await;
    let mut events = b.invalidations().unwrap();
    bus_carries(&users_a, &mut events).await;
    users_a.invalidate_many(&[1, 2, 3]).await.unwrap();
    let message = next_about(&mut events, "user:1").await;
    assert_eq!(message.keys, vec!["user:1", "user:2", "user:3"]);
    drop(a);
}

#[cfg(feature = "nats")]
mod over_nats {
    use super::*;
    use aside::bus::nats::NatsBus;
    use aside_testkit::NatsServer;

    async fn engine(redis_url: &str, nats_url: &str) -> (Aside, Namespace<u64, User>) {
        let aside = common::patient_builder()
            .store(common::patient_redis(redis_url).await)
            .bus(NatsBus::connect(nats_url).await.unwrap())
            .build();
        let users = aside
            .namespace::<u64, User>("user")
            .l1(1_000, Duration::from_secs(60))
            .build()
            .unwrap();
        (aside, users)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalidations_cross_over_nats_and_a_restart_clears_the_l1() {
        let redis = RedisServer::start();
        let mut nats = NatsServer::start();
        let (_a, users_a) = engine(&redis.url(), &nats.url()).await;
        let (b, users_b) = engine(&redis.url(), &nats.url()).await;
        let (c, users_c) = engine(&redis.url(), &nats.url()).await;
        let mut events = b.invalidations().unwrap();
        let mut c_events = c.invalidations().unwrap();
        bus_carries(&users_a, &mut events).await;
        bus_carries(&users_a, &mut c_events).await;
        let db = Db::with_users(2);

        for users in [&users_b, &users_c] {
            users.fetch(&1, || db.get(1)).await.unwrap();
            assert_eq!(users.fetch(&1, || db.get(1)).await.unwrap().source, Source::Hit);
        }
        db.put(User::new(1, 1));
        users_a.invalidate(&1).await.unwrap();
        next_about(&mut events, "user:1").await;
        next_about(&mut c_events, "user:1").await;
        for users in [&users_b, &users_c] {
            assert_eq!(
                users.fetch(&1, || db.get(1)).await.unwrap().value,
                Some(User::new(1, 1))
            );
        }

        // The NATS server dies and comes back: B's client reconnects, and
        // since messages may have been lost, B's L1 is cleared.
        users_b.fetch(&2, || db.get(2)).await.unwrap();
        let mut conn = common::redis_conn(&redis.url()).await;
        let _: () = redis::cmd("FLUSHDB").query_async(&mut conn).await.unwrap();
        assert!(users_b.get(&2).await.unwrap().is_some(), "held by B's L1 only");
        nats.restart();
        eventually(
            "B's L1 is cleared after the reconnect",
            Duration::from_secs(20),
            || async { users_b.get(&2).await.unwrap().is_none() },
        )
        .await;
        bus_carries(&users_a, &mut events).await;
    }

    /// Defect 17 of issue 12: with the NATS server gone, `publish` buffered
    /// and `flush` waited for a reconnect without a bound, so `invalidate`
    /// (which publishes after the store operation) hung until NATS came
    /// back. A publish is bounded (250 ms): the call returns, the store
    /// invalidated, the lost message left to the other L1s' TTL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalidate_returns_while_nats_is_down() {
        let mut nats = NatsServer::start();
        let aside = Aside::builder()
            .bus(NatsBus::connect(&nats.url()).await.unwrap())
            .build();
        let users = aside
            .namespace::<u64, User>("user")
            .l1(1_000, Duration::from_secs(60))
            .build()
            .unwrap();
        let mut events = aside.invalidations().unwrap();
        bus_carries(&users, &mut events).await;
        let db = Db::with_users(1);
        users.fetch(&1, || db.get(1)).await.unwrap();

        nats.kill();
        // The bound is 250 ms; 10 s is what no loaded machine can miss.
        for round in 0..3 {
            let invalidated = tokio::time::timeout(Duration::from_secs(10), users.invalidate(&1)).await;
            assert!(invalidated.is_ok(), "invalidate {round} hung while NATS was down");
            invalidated.unwrap().unwrap();
        }
        assert_eq!(users.fetch(&1, || db.get(1)).await.unwrap().source, Source::Loaded);
    }
}

/// Issue 15, found by `aside soak`: a subscription whose receiver was
/// dropped (its `Aside` gone) stayed subscribed, its connection pinged,
/// until the next message found the receiver gone: on a quiet channel,
/// for good. Every dropped `Aside` with a Redis bus leaked a connection.
#[tokio::test]
async fn a_dropped_subscription_leaves_the_server() {
    use aside::bus::Bus;
    let server = RedisServer::start();
    let bus = RedisBus::connect_on(&server.url(), "quiet").await.unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let subscribers = |mut conn: redis::aio::MultiplexedConnection| async move {
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("quiet")
            .query_async(&mut conn)
            .await
            .unwrap();
        n
    };
    let events = bus.subscribe().await.unwrap();
    assert_eq!(subscribers(conn.clone()).await, 1);
    drop(events);
    eventually(
        "the dropped subscription leaves the channel",
        Duration::from_secs(30),
        || {
            let conn = conn.clone();
            async move { subscribers(conn).await == 0 }
        },
    )
    .await;
    // The connection is usable afterwards (nothing above borrowed it for good).
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
}

/// Issue 15, the listener's half, found by `aside soak` (its live tasks and
/// open sockets grew with every history program): the bus listener of a
/// dropped `Aside` held its subscription's receiver until the next message
/// told it the `Aside` was gone. On a quiet channel none came: the
/// listener, the receiver and the transport's subscription (on Redis, a
/// pinged pub/sub connection) lived for good. Dropping the `Aside` must
/// let go of the subscription with no message at all.
#[tokio::test]
async fn a_dropped_aside_lets_go_of_its_subscription_on_a_quiet_bus() {
    let bus = aside_testkit::fault::SilentBus::default();
    let aside = Aside::builder().bus(bus.clone()).build();
    // A namespace with an L1 starts the listener.
    let users = common::users_with_l1(&aside);
    eventually("the listener subscribes", Duration::from_secs(10), || async {
        bus.subscriptions() == (1, 1)
    })
    .await;
    drop(users);
    drop(aside);
    bus.until_let_go(1, "the subscription is let go of, with no message on the bus")
        .await;
}
