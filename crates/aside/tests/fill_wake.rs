//! Readers in other processes are woken when the lease they wait on ends
//! (issue 13): on Redis by a message the scripts publish on the fill channel,
//! on the memory store directly. Polling remains the fallback.
//!
//! Two `RedisStore`s on one server have a connection and a subscriber each,
//! exactly as two processes would; two `Aside`s sharing one `MemoryStore`
//! share nothing else. Each store-level test fails (its 30 s bound runs out)
//! when the scripts stop publishing or the memory store stops waking.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::store::redis::{DEFAULT_FILL_CHANNEL, RedisStore};
use aside::store::{FillOutcome, FillWatch, LeaseOutcome, LeaseToken, Store};
use aside::{Aside, MemoryStore, Source};
use aside_testkit::RedisServer;
use bytes::Bytes;
use common::eventually;
use futures::StreamExt;

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(60);
/// Bounds a wait that should end at once; only a broken wake reaches it.
const WOKEN_WITHIN: Duration = Duration::from_secs(30);

/// How the holder's lease ends.
#[derive(Debug, Clone, Copy)]
enum End {
    Fill,
    Release,
    PutEntry,
    /// The default `invalidate` (no stale value kept).
    Invalidate,
    InvalidateKeepingStale,
}

const ENDS: [End; 5] = [
    End::Fill,
    End::Release,
    End::PutEntry,
    End::Invalidate,
    End::InvalidateKeepingStale,
];

/// `holder` ends its lease on `key` as `end` says; every write must succeed.
async fn end_lease(holder: &dyn Store, key: &str, token: LeaseToken, end: End) {
    match end {
        End::Fill => {
            let outcome = holder.fill(key, token, Bytes::from_static(b"v"), TTL).await.unwrap();
            assert_eq!(outcome, FillOutcome::Stored);
        }
        End::Release => holder.release(key, token).await.unwrap(),
        End::PutEntry => holder.put_entry(key, Bytes::from_static(b"v"), TTL).await.unwrap(),
        End::Invalidate => holder.invalidate(key, None).await.unwrap(),
        End::InvalidateKeepingStale => holder.invalidate(key, Some(TTL)).await.unwrap(),
    }
}

/// `holder` takes the lease on `key`; `waiter` finds the key busy; returns the token.
async fn busy(holder: &dyn Store, waiter: &dyn Store, key: &str) -> LeaseToken {
    let token = LeaseToken::random();
    assert!(matches!(
        holder.lookup_or_lease(key, token, LEASE).await.unwrap(),
        LeaseOutcome::Granted { .. }
    ));
    assert!(matches!(
        waiter.lookup_or_lease(key, LeaseToken::random(), LEASE).await.unwrap(),
        LeaseOutcome::Busy { .. }
    ));
    token
}

/// `holder` takes the lease on `key`; `waiter` arms a watch and finds the
/// key busy; `holder` ends the lease as `end` says; the watch must wake.
async fn a_busy_reader_is_woken(holder: &dyn Store, waiter: &dyn Store, key: &str, end: End) {
    let watch: FillWatch = waiter.watch_fill(key).expect("this store notifies");
    assert!(watch.is_live(), "{end:?}: notifications are not up");
    let token = busy(holder, waiter, key).await;
    end_lease(holder, key, token, end).await;
    tokio::time::timeout(WOKEN_WITHIN, watch.wait())
        .await
        .unwrap_or_else(|_| panic!("{end:?}: the waiting reader was never woken"));
}

#[tokio::test]
async fn redis_wakes_a_reader_in_another_process_on_every_end_of_a_lease() {
    let server = RedisServer::start();
    let holder = common::patient_redis(&server.url()).await;
    let waiter = common::patient_redis(&server.url()).await;
    for (i, end) in ENDS.into_iter().enumerate() {
        a_busy_reader_is_woken(&holder, &waiter, &format!("k{i}"), end).await;
    }
}

#[tokio::test]
async fn the_memory_store_wakes_a_reader_on_every_end_of_a_lease() {
    let store = MemoryStore::new();
    for (i, end) in ENDS.into_iter().enumerate() {
        a_busy_reader_is_woken(&store, &store, &format!("k{i}"), end).await;
    }
}

/// What the scripts publish on the default fill channel of `server`.
struct Published(std::pin::Pin<Box<dyn futures::Stream<Item = redis::Msg> + Send>>);

impl Published {
    async fn listen(server: &RedisServer) -> Self {
        let client = redis::Client::open(server.url()).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe(DEFAULT_FILL_CHANNEL).await.unwrap();
        Published(Box::pin(pubsub.into_on_message()))
    }

    /// The next payload published.
    async fn next(&mut self) -> Vec<u8> {
        let message = tokio::time::timeout(WOKEN_WITHIN, self.0.next())
            .await
            .expect("a message")
            .expect("the subscription is open");
        message.get_payload_bytes().to_vec()
    }
}

/// Only lease ends some reader waited for are published: a fill nobody
/// waited on costs the channel nothing.
#[tokio::test]
async fn redis_publishes_only_what_a_reader_waits_for() {
    let server = RedisServer::start();
    let store = common::patient_redis(&server.url()).await;
    let mut published = Published::listen(&server).await;

    let unwatched = LeaseToken::random();
    store.lookup_or_lease("quiet", unwatched, LEASE).await.unwrap();
    store
        .fill("quiet", unwatched, Bytes::from_static(b"v"), TTL)
        .await
        .unwrap();
    a_busy_reader_is_woken(&store, &store, "awaited", End::Fill).await;

    assert_eq!(
        published.next().await,
        b"awaited",
        "the fill nobody waited for was published"
    );
}

/// A lease that ran out leaves no mark: the next lease's fill, which nobody
/// waited for, is not published.
#[tokio::test]
async fn a_lease_that_ran_out_leaves_no_mark_behind() {
    let server = RedisServer::start();
    let store = common::patient_redis(&server.url()).await;
    let mut published = Published::listen(&server).await;

    // A stale value (so the entry outlives its lease), a short lease that a
    // reader found busy, and then the lease runs out unannounced.
    store
        .put_entry("expired", Bytes::from_static(b"old"), TTL)
        .await
        .unwrap();
    store.invalidate("expired", Some(TTL)).await.unwrap();
    let short = Duration::from_millis(20);
    store
        .lookup_or_lease("expired", LeaseToken::random(), short)
        .await
        .unwrap();
    let busy_reply = store
        .lookup_or_lease("expired", LeaseToken::random(), LEASE)
        .await
        .unwrap();
    assert!(matches!(busy_reply, LeaseOutcome::Busy { .. }));
    let next = loop {
        // The lease's end is the server's clock: look until it has passed.
        let token = LeaseToken::random();
        if let LeaseOutcome::Granted { .. } = store.lookup_or_lease("expired", token, LEASE).await.unwrap() {
            break token;
        }
        tokio::time::sleep(short).await;
    };
    store
        .fill("expired", next, Bytes::from_static(b"new"), TTL)
        .await
        .unwrap();
    a_busy_reader_is_woken(&store, &store, "awaited", End::Fill).await;

    assert_eq!(
        published.next().await,
        b"awaited",
        "the mark of a lease that ran out published a fill nobody waited for"
    );
}

/// An ACL user without channel rights (Redis 7's default for a new user)
/// cannot publish: every write that ends a lease still succeeds and is
/// applied, and the store reports notifications down, so readers poll.
#[tokio::test]
async fn a_user_without_channel_rights_keeps_its_writes_and_polls() {
    let server = RedisServer::start();
    let admin = redis::Client::open(server.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("ACL")
        .arg(&["SETUSER", "app", "on", ">app-pw", "~*", "+@all", "resetchannels"])
        .exec_async(&mut conn)
        .await
        .unwrap();
    let url = format!("redis://app:app-pw@127.0.0.1:{}/", server.port());
    let (holder, waiter) = (common::patient_redis(&url).await, common::patient_redis(&url).await);
    assert!(!waiter.watch_fill("k").unwrap().is_live());
    for (i, end) in ENDS.into_iter().enumerate() {
        let key = format!("k{i}");
        let token = busy(&holder, &waiter, &key).await;
        end_lease(&holder, &key, token, end).await;
        let view = holder.peek_entry(&key).await.unwrap();
        assert_eq!(view.lease, None, "{end:?} left the lease in place");
    }
}

/// A store that outlives the runtime it connected on (its subscriber task
/// died with it) gets its notifications back on the next runtime.
#[test]
fn a_store_moved_to_a_new_runtime_gets_its_notifications_back() {
    let server = RedisServer::start();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let store = first.block_on(RedisStore::connect(&server.url())).unwrap();
    drop(first);
    runtime().block_on(async {
        assert!(
            !store.watch_fill("k").unwrap().is_live(),
            "its task died with the runtime"
        );
        eventually("notifications back on this runtime", WOKEN_WITHIN, || {
            let live = store.watch_fill("k").unwrap().is_live();
            async move { live }
        })
        .await;
        let other = common::patient_redis(&server.url()).await;
        eventually("the store's connection is back", WOKEN_WITHIN, || {
            let store = store.clone();
            async move { store.ping().await.is_ok() }
        })
        .await;
        a_busy_reader_is_woken(&other, &store, "k", End::Fill).await;
    });
}

/// Notifications follow the connection: down while the server is, so
/// readers poll; up again after it is back, and waking again.
#[tokio::test]
async fn redis_notifications_come_back_after_the_server_does() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    assert!(store.watch_fill("k").unwrap().is_live());
    server.kill();
    eventually("notifications marked down", WOKEN_WITHIN, || {
        let live = store.watch_fill("k").unwrap().is_live();
        async move { !live }
    })
    .await;
    server.restart();
    eventually("notifications back up", WOKEN_WITHIN, || {
        let live = store.watch_fill("k").unwrap().is_live();
        async move { live }
    })
    .await;
    let other = RedisStore::connect(&server.url()).await.unwrap();
    eventually("the store reconnected", WOKEN_WITHIN, || {
        let store = store.clone();
        async move { store.ping().await.is_ok() }
    })
    .await;
    a_busy_reader_is_woken(&other, &store, "k", End::Fill).await;
}

/// Two `Aside`s that share only a store (two processes, in effect): the
/// waiter takes the holder's value at the instant the fill lands, on
/// virtual time, and never loads. With polling instead it would answer at
/// its next poll, up to 50 ms later (checked by disabling the wake).
#[tokio::test(start_paused = true)]
async fn a_waiter_elsewhere_answers_the_instant_the_fill_lands() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let namespace = |store: &Arc<dyn Store>| {
        Aside::builder()
            .shared_store(store.clone())
            .build()
            .namespace::<u64, u64>("hot")
            .lease_ttl(LEASE)
            .lease_wait(Duration::from_secs(60))
            .build()
            .unwrap()
    };
    let (holder, waiter) = (namespace(&store), namespace(&store));
    let started = Arc::new(tokio::sync::Notify::new());
    let leader = tokio::spawn({
        let started = started.clone();
        async move {
            let fetched = holder
                .fetch(&1, || async {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok::<_, std::io::Error>(Some(7))
                })
                .await
                .unwrap();
            (fetched, tokio::time::Instant::now())
        }
    });
    started.notified().await;
    let waiter_loads = Arc::new(AtomicUsize::new(0));
    let fetched = waiter
        .fetch(&1, || {
            waiter_loads.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(Some(0)) }
        })
        .await
        .unwrap();
    let answered_at = tokio::time::Instant::now();
    let (led, filled_at) = leader.await.unwrap();
    assert_eq!(led.value, Some(7));
    assert_eq!(fetched.value, Some(7));
    assert_eq!(fetched.source, Source::Coalesced);
    assert_eq!(waiter_loads.load(Ordering::SeqCst), 0, "the waiter loaded");
    let late = answered_at.saturating_duration_since(filled_at);
    assert!(
        late <= Duration::from_millis(1),
        "the waiter answered {late:?} after the fill landed"
    );
}

/// On a Redis Cluster, a lease end published by a script on the key's
/// primary reaches a reader whose store subscribed on another node: classic
/// pub/sub is broadcast to every node of a cluster.
#[tokio::test]
async fn a_cluster_wakes_a_reader_subscribed_on_another_node() {
    let cluster = aside_testkit::cluster::RedisCluster::start();
    let urls = cluster.urls();
    let holder = common::patient_cluster(&urls).await;
    // The waiter subscribes on the first node it is given: node 0.
    let waiter = common::patient_cluster(&urls).await;
    for (i, end) in ENDS.into_iter().enumerate() {
        let key = (0..)
            .map(|n| format!("c{i}-{n}"))
            .find(|k| cluster.primary_of_key(k) != 0)
            .expect("a key served by another node");
        a_busy_reader_is_woken(&holder, &waiter, &key, end).await;
    }
}
