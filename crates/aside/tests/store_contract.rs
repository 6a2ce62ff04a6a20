//! The store contract, run against every store (memory, Redis, and
//! memcached with the `memcached` feature): plain operations and the lease
//! state machine of DESIGN section 4, with forced interleavings.
//!
//! A store may mint its own lease tokens (memcached's are CAS values), so
//! the cases always fill with the token a grant returned, never the one
//! they offered.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aside::MemoryStore;
use aside::store::redis::RedisStore;
use aside::store::{FillOutcome, LeaseOutcome, LeaseToken, Store};
use aside_testkit::RedisServer;
use bytes::Bytes;

const TTL: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(10);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn granted(store: &dyn Store, key: &str) -> LeaseToken {
    match store.lookup_or_lease(key, LeaseToken::random(), LEASE).await.unwrap() {
        LeaseOutcome::Granted { token, .. } => token,
        other => panic!("expected a lease, got {other:?}"),
    }
}

async fn refresh_lease(store: &dyn Store, key: &str) -> LeaseToken {
    store
        .lease_for_refresh(key, LeaseToken::random(), LEASE)
        .await
        .unwrap()
        .expect("a refresh lease")
}

async fn plain_operations(store: &dyn Store) {
    assert_eq!(store.get("p:a").await.unwrap(), None);
    store.set("p:a", b("1"), TTL).await.unwrap();
    assert_eq!(store.get("p:a").await.unwrap(), Some(b("1")));
    store.delete("p:a").await.unwrap();
    assert_eq!(store.get("p:a").await.unwrap(), None);
    assert_eq!(store.incr("p:n", TTL).await.unwrap(), 1);
    assert_eq!(store.incr("p:n", TTL).await.unwrap(), 2);
    assert_eq!(store.get("p:n").await.unwrap(), Some(b("2")));
    assert!(store.add("p:lock", b("1"), TTL).await.unwrap());
    assert!(!store.add("p:lock", b("2"), TTL).await.unwrap());
    assert_eq!(store.get("p:lock").await.unwrap(), Some(b("1")));
}

async fn lease_then_fill_is_a_hit(store: &dyn Store) {
    let t = granted(store, "e:1").await;
    assert_eq!(store.fill("e:1", t, b("v1"), TTL).await.unwrap(), FillOutcome::Stored);
    assert_eq!(
        store.lookup_or_lease("e:1", LeaseToken::random(), LEASE).await.unwrap(),
        LeaseOutcome::Hit(b("v1"))
    );
    assert_eq!(store.get_entry("e:1").await.unwrap(), Some((b("v1"), false)));
}

async fn second_lookup_while_leased_is_busy(store: &dyn Store) {
    let _t = granted(store, "e:2").await;
    assert_eq!(
        store.lookup_or_lease("e:2", LeaseToken::random(), LEASE).await.unwrap(),
        LeaseOutcome::Busy { stale: None }
    );
}

async fn lease_then_invalidate_then_fill_is_refused(store: &dyn Store) {
    let t = granted(store, "e:3").await;
    store.invalidate("e:3", None).await.unwrap();
    assert_eq!(store.fill("e:3", t, b("old"), TTL).await.unwrap(), FillOutcome::Refused);
    assert_eq!(store.get_entry("e:3").await.unwrap(), None);
}

async fn invalidate_then_lease_then_fill_is_stored(store: &dyn Store) {
    store.invalidate("e:4", None).await.unwrap();
    let t = granted(store, "e:4").await;
    assert_eq!(store.fill("e:4", t, b("new"), TTL).await.unwrap(), FillOutcome::Stored);
    assert_eq!(store.get_entry("e:4").await.unwrap(), Some((b("new"), false)));
}

async fn a_fill_with_another_token_is_refused(store: &dyn Store) {
    let _t = granted(store, "e:5").await;
    assert_eq!(
        store.fill("e:5", LeaseToken::random(), b("x"), TTL).await.unwrap(),
        FillOutcome::Refused
    );
    assert_eq!(
        store.fill("e:6", LeaseToken::random(), b("x"), TTL).await.unwrap(),
        FillOutcome::Refused
    );
}

async fn put_entry_revokes_a_lease_in_flight(store: &dyn Store) {
    let t = granted(store, "e:7").await;
    store.put_entry("e:7", b("written"), TTL).await.unwrap();
    assert_eq!(
        store.fill("e:7", t, b("loaded-before"), TTL).await.unwrap(),
        FillOutcome::Refused
    );
    assert_eq!(store.get_entry("e:7").await.unwrap(), Some((b("written"), false)));
}

async fn an_expired_lease_is_replaced(store: &dyn Store) {
    let short = Duration::from_millis(30);
    let first = match store.lookup_or_lease("e:8", LeaseToken::random(), short).await.unwrap() {
        LeaseOutcome::Granted { token, .. } => token,
        other => panic!("{other:?}"),
    };
    let second = std::sync::Mutex::new(None);
    common::eventually("the first lease expires", Duration::from_secs(5), || async {
        match store.lookup_or_lease("e:8", LeaseToken::random(), LEASE).await.unwrap() {
            LeaseOutcome::Granted { token, .. } => {
                *second.lock().unwrap() = Some(token);
                true
            }
            _ => false,
        }
    })
    .await;
    let second = second.into_inner().unwrap().expect("granted");
    assert_ne!(first, second);
    assert_eq!(
        store.fill("e:8", first, b("late"), TTL).await.unwrap(),
        FillOutcome::Refused
    );
    assert_eq!(
        store.fill("e:8", second, b("fresh"), TTL).await.unwrap(),
        FillOutcome::Stored
    );
}

async fn release_frees_the_key_for_the_next_loader(store: &dyn Store) {
    let t = granted(store, "e:9").await;
    store.release("e:9", t).await.unwrap();
    let _again = granted(store, "e:9").await;
}

async fn stale_values_are_offered_while_loading(store: &dyn Store) {
    let t = granted(store, "e:10").await;
    store.fill("e:10", t, b("v1"), TTL).await.unwrap();
    let leased_before = granted(store, "e:11").await;
    store.invalidate("e:10", Some(TTL)).await.unwrap();
    assert_eq!(store.get_entry("e:10").await.unwrap(), Some((b("v1"), true)));
    let t2 = match store
        .lookup_or_lease("e:10", LeaseToken::random(), LEASE)
        .await
        .unwrap()
    {
        LeaseOutcome::Granted { token, stale } => {
            assert_eq!(stale, Some(b("v1")));
            token
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        store
            .lookup_or_lease("e:10", LeaseToken::random(), LEASE)
            .await
            .unwrap(),
        LeaseOutcome::Busy { stale: Some(b("v1")) }
    );
    // Invalidating a stale entry revokes the lease granted on it.
    store.invalidate("e:10", Some(TTL)).await.unwrap();
    assert_eq!(
        store.fill("e:10", t2, b("v2-old"), TTL).await.unwrap(),
        FillOutcome::Refused
    );
    // Releasing keeps the stale value.
    store.release("e:11", leased_before).await.unwrap();
    assert_eq!(store.get_entry("e:11").await.unwrap(), None);
}

async fn ttl_expires_values(store: &dyn Store) {
    store.set("t:plain", b("x"), Duration::from_millis(50)).await.unwrap();
    store
        .put_entry("t:entry", b("x"), Duration::from_millis(50))
        .await
        .unwrap();
    common::eventually("both keys expire", Duration::from_secs(5), || async {
        store.get("t:plain").await.unwrap().is_none() && store.get_entry("t:entry").await.unwrap().is_none()
    })
    .await;
}

async fn batch_operations_match_single_ones(store: &dyn Store) {
    let keys: Vec<String> = (0..5).map(|i| format!("b:{i}")).collect();
    store
        .set_many(keys[..3].iter().map(|k| (k.clone(), b(k), TTL)).collect())
        .await
        .unwrap();
    let got = store.get_many(&keys).await.unwrap();
    assert_eq!(got, vec![Some(b("b:0")), Some(b("b:1")), Some(b("b:2")), None, None]);

    let entries: Vec<(String, LeaseToken)> = (0..4).map(|i| (format!("be:{i}"), LeaseToken::random())).collect();
    store.put_entry("be:0", b("cached"), TTL).await.unwrap();
    let outcomes = store.lookup_or_lease_many(&entries, LEASE).await.unwrap();
    assert_eq!(outcomes[0], LeaseOutcome::Hit(b("cached")));
    let tokens: Vec<LeaseToken> = outcomes[1..]
        .iter()
        .map(|outcome| match outcome {
            LeaseOutcome::Granted { token, stale: None } => *token,
            other => panic!("expected a lease, got {other:?}"),
        })
        .collect();
    let views = store
        .peek_many(&entries.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(views[0].value, Some(b("cached")));
    assert_eq!(
        views[1].lease,
        Some(tokens[0]),
        "peek reports the token the grant returned"
    );
    assert_eq!(views[1].value, None, "a lease alone is no value");
    store.invalidate("be:2", None).await.unwrap();
    let fills = entries[1..]
        .iter()
        .zip(&tokens)
        .map(|((key, _), token)| aside::store::Fill {
            key: key.clone(),
            token: *token,
            value: b("loaded"),
            ttl: TTL,
        })
        .collect();
    assert_eq!(
        store.fill_many(fills).await.unwrap(),
        vec![FillOutcome::Stored, FillOutcome::Refused, FillOutcome::Stored],
        "the fill of the invalidated key is refused, the others stored"
    );
}

async fn a_refresh_lease_keeps_the_value_readable_and_is_fenced(store: &dyn Store) {
    assert_eq!(
        store
            .lease_for_refresh("r:1", LeaseToken::random(), LEASE)
            .await
            .unwrap(),
        None,
        "nothing to refresh"
    );
    let t = granted(store, "r:1").await;
    store.fill("r:1", t, b("v1"), TTL).await.unwrap();
    let refresh = refresh_lease(store, "r:1").await;
    assert_eq!(store.peek_entry("r:1").await.unwrap().lease, Some(refresh));
    assert_eq!(
        store
            .lease_for_refresh("r:1", LeaseToken::random(), LEASE)
            .await
            .unwrap(),
        None,
        "one refresher"
    );
    assert_eq!(
        store.lookup_or_lease("r:1", LeaseToken::random(), LEASE).await.unwrap(),
        LeaseOutcome::Hit(b("v1")),
        "readers still hit during the refresh"
    );
    assert_eq!(
        store.fill("r:1", refresh, b("v2"), TTL).await.unwrap(),
        FillOutcome::Stored
    );
    assert_eq!(store.get_entry("r:1").await.unwrap(), Some((b("v2"), false)));
    // Releasing a refresh lease keeps the value and lets the next refresher in.
    let released = refresh_lease(store, "r:1").await;
    store.release("r:1", released).await.unwrap();
    assert_eq!(store.get_entry("r:1").await.unwrap(), Some((b("v2"), false)));
    // An invalidation revokes a refresh lease like any other.
    let again = refresh_lease(store, "r:1").await;
    store.invalidate("r:1", None).await.unwrap();
    assert_eq!(
        store.fill("r:1", again, b("old"), TTL).await.unwrap(),
        FillOutcome::Refused
    );
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let store = MemoryStore::new();
                    super::$case(&store).await;
                }
            )*
        }
        mod redis_server {
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let server = RedisServer::start();
                    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&server.url()).await.unwrap());
                    super::$case(store.as_ref()).await;
                }
            )*
        }
        #[cfg(feature = "memcached")]
        mod memcached_server {
            use super::*;
            use aside::store::memcached::MemcachedStore;
            use aside_testkit::MemcachedServer;
            $(
                #[tokio::test]
                async fn $case() {
                    let server = MemcachedServer::start();
                    let store: Arc<dyn Store> = Arc::new(MemcachedStore::connect(&server.addr()).await.unwrap());
                    super::$case(store.as_ref()).await;
                }
            )*
        }
        /// The same cases with keys spread over two servers by the hash ring.
        #[cfg(feature = "memcached")]
        mod memcached_two_servers {
            use super::*;
            use aside::store::memcached::MemcachedStore;
            use aside_testkit::MemcachedServer;
            $(
                #[tokio::test]
                async fn $case() {
                    let (a, b) = (MemcachedServer::start(), MemcachedServer::start());
                    let addrs = format!("{},{}", a.addr(), b.addr());
                    let store: Arc<dyn Store> = Arc::new(MemcachedStore::connect(&addrs).await.unwrap());
                    super::$case(store.as_ref()).await;
                }
            )*
        }
    };
}

contract!(
    plain_operations,
    lease_then_fill_is_a_hit,
    second_lookup_while_leased_is_busy,
    lease_then_invalidate_then_fill_is_refused,
    invalidate_then_lease_then_fill_is_stored,
    a_fill_with_another_token_is_refused,
    put_entry_revokes_a_lease_in_flight,
    an_expired_lease_is_replaced,
    release_frees_the_key_for_the_next_loader,
    stale_values_are_offered_while_loading,
    ttl_expires_values,
    batch_operations_match_single_ones,
    a_refresh_lease_keeps_the_value_readable_and_is_fenced,
);
