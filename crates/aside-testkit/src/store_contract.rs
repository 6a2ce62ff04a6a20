//! The store contract: what every [`Store`] must do, as functions a store
//! author calls on their store.
//!
//! Owns the cases that check a store against the lease state machine of
//! DESIGN section 4 (and of `aside::store`), with forced interleavings, and
//! against the plain-value operations when the store says it has them
//! ([`Store::supports_plain_values`]); a store without them must answer
//! [`StoreError::Unsupported`]. It starts no server: the caller hands in a
//! store, fresh or at least without the keys the cases use (`p:*`, `e:*`,
//! `t:*`, `b:*`, `be:*`, `r:*`, `aside:ping`).
//!
//! Each case is a public `async fn(&dyn Store)` that panics on the first
//! broken rule. [`run_all`] runs them all in turn on one store;
//! [`store_contract_tests!`](crate::store_contract_tests) writes one
//! `#[tokio::test]` per case, each on a store of its own:
//!
//! ```no_run
//! # mod example {
//! aside_testkit::store_contract_tests!(memory, async { (aside::MemoryStore::new(), ()) });
//! # }
//! ```
//!
//! A store may mint its own lease tokens (memcached's are CAS values), so
//! the cases always fill with the token a grant returned, never the one
//! they offered.

use std::time::Duration;

use aside::store::{Fill, FillOutcome, LeaseOutcome, LeaseToken, Store, StoreError};
use bytes::Bytes;

use crate::eventually;

const TTL: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(10);
/// How long a case waits for a TTL to run out: memcached counts whole
/// seconds, and a loaded machine is slow, so the bound is generous.
const EXPIRY_BOUND: Duration = Duration::from_secs(10);

/// Writes one `#[tokio::test]` per contract case in a module `$module`,
/// each on the store that `$setup` (an `async` block, run once per case)
/// returns as `(store, guard)`: the guard (a server handle, or `()`) lives
/// until the case ends. The store must be a concrete type that implements
/// [`Store`]. The calling crate needs `tokio` (with `macros` and `rt`).
///
/// ```no_run
/// # mod example {
/// use aside::store::redis::RedisStore;
/// use aside_testkit::RedisServer;
///
/// aside_testkit::store_contract_tests!(redis_server, async {
///     let server = RedisServer::start();
///     let store = RedisStore::connect(&server.url()).await.unwrap();
///     (store, server)
/// });
/// # }
/// ```
#[macro_export]
macro_rules! store_contract_tests {
    ($module:ident, $setup:expr) => {
        $crate::store_contract_tests!(@cases tests [$module, $setup]);
    };
    // The one list of cases, handed to the arm `$how`.
    (@cases $how:ident $args:tt) => {
        $crate::store_contract_tests!(@$how $args [
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
            ping_answers,
        ]);
    };
    (@tests [$module:ident, $setup:expr] [$($case:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _guard) = $setup.await;
                    $crate::store_contract::$case(&store).await;
                }
            )*
        }
    };
    (@calls [$store:expr] [$($case:ident),* $(,)?]) => {
        $(
            eprintln!("store contract on {}: {}", $store.name(), stringify!($case));
            $crate::store_contract::$case($store).await;
        )*
    };
}

/// Runs every case on `store`, in turn (each case names itself on stderr
/// first, so a failure says which rule broke).
///
/// # Panics
/// On the first rule the store breaks.
pub async fn run_all(store: &dyn Store) {
    crate::store_contract_tests!(@cases calls [store]);
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn granted(store: &dyn Store, key: &str) -> LeaseToken {
    match store.lookup_or_lease(key, LeaseToken::random(), LEASE).await.unwrap() {
        LeaseOutcome::Granted { token, .. } => token,
        other => panic!("expected a lease, got {other:?}"),
    }
}

async fn try_refresh_lease(store: &dyn Store, key: &str) -> Option<LeaseToken> {
    store.lease_for_refresh(key, LeaseToken::random(), LEASE).await.unwrap()
}

async fn refresh_lease(store: &dyn Store, key: &str) -> LeaseToken {
    try_refresh_lease(store, key).await.expect("a refresh lease")
}

fn assert_unsupported<T: std::fmt::Debug>(operation: &str, result: Result<T, StoreError>) {
    match result {
        Err(e @ StoreError::Unsupported { .. }) => assert!(e.is_per_key(), "{e}"),
        other => panic!(
            "{operation} on a store without plain values (supports_plain_values() is false) must be Unsupported, got {other:?}"
        ),
    }
}

/// `get`, `set`, `delete`, `incr` and `add` on plain values; on a store
/// without them, each answers [`StoreError::Unsupported`].
pub async fn plain_operations(store: &dyn Store) {
    if !store.supports_plain_values() {
        assert_unsupported("get", store.get("p:a").await);
        assert_unsupported("set", store.set("p:a", b("1"), TTL).await);
        assert_unsupported("add", store.add("p:a", b("1"), TTL).await);
        assert_unsupported("incr", store.incr("p:n", TTL).await);
        return;
    }
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

/// Empty, lease, fill: the next lookup hits the filled value.
pub async fn lease_then_fill_is_a_hit(store: &dyn Store) {
    let t = granted(store, "e:1").await;
    assert_eq!(store.fill("e:1", t, b("v1"), TTL).await.unwrap(), FillOutcome::Stored);
    assert_eq!(
        store.lookup_or_lease("e:1", LeaseToken::random(), LEASE).await.unwrap(),
        LeaseOutcome::Hit(b("v1"))
    );
    assert_eq!(store.get_entry("e:1").await.unwrap(), Some((b("v1"), false)));
}

/// A second lookup of a leased entry is busy, with no stale value.
pub async fn second_lookup_while_leased_is_busy(store: &dyn Store) {
    let _t = granted(store, "e:2").await;
    assert_eq!(
        store.lookup_or_lease("e:2", LeaseToken::random(), LEASE).await.unwrap(),
        LeaseOutcome::Busy { stale: None }
    );
}

/// An invalidation revokes the lease: the fill that follows is refused.
pub async fn lease_then_invalidate_then_fill_is_refused(store: &dyn Store) {
    let t = granted(store, "e:3").await;
    store.invalidate("e:3", None).await.unwrap();
    assert_eq!(store.fill("e:3", t, b("old"), TTL).await.unwrap(), FillOutcome::Refused);
    assert_eq!(store.get_entry("e:3").await.unwrap(), None);
}

/// A lease granted after an invalidation fills.
pub async fn invalidate_then_lease_then_fill_is_stored(store: &dyn Store) {
    store.invalidate("e:4", None).await.unwrap();
    let t = granted(store, "e:4").await;
    assert_eq!(store.fill("e:4", t, b("new"), TTL).await.unwrap(), FillOutcome::Stored);
    assert_eq!(store.get_entry("e:4").await.unwrap(), Some((b("new"), false)));
}

/// Only the lease's own token fills; an empty entry refuses every fill.
pub async fn a_fill_with_another_token_is_refused(store: &dyn Store) {
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

/// `put_entry` (a write-through) revokes the lease of a load in flight.
pub async fn put_entry_revokes_a_lease_in_flight(store: &dyn Store) {
    let t = granted(store, "e:7").await;
    store.put_entry("e:7", b("written"), TTL).await.unwrap();
    assert_eq!(
        store.fill("e:7", t, b("loaded-before"), TTL).await.unwrap(),
        FillOutcome::Refused
    );
    assert_eq!(store.get_entry("e:7").await.unwrap(), Some((b("written"), false)));
}

/// A lease runs out after its TTL; the next lookup gets a new one, and only
/// the new one fills.
pub async fn an_expired_lease_is_replaced(store: &dyn Store) {
    let short = Duration::from_millis(30);
    let first = match store.lookup_or_lease("e:8", LeaseToken::random(), short).await.unwrap() {
        LeaseOutcome::Granted { token, .. } => token,
        other => panic!("{other:?}"),
    };
    let second = std::sync::Mutex::new(None);
    eventually("the first lease expires", EXPIRY_BOUND, || async {
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

/// A released lease lets the next loader in at once.
pub async fn release_frees_the_key_for_the_next_loader(store: &dyn Store) {
    let t = granted(store, "e:9").await;
    store.release("e:9", t).await.unwrap();
    let _again = granted(store, "e:9").await;
}

/// An invalidation that keeps the value leaves it stale, offered to the
/// lease holder and to busy readers; invalidating again revokes that lease.
pub async fn stale_values_are_offered_while_loading(store: &dyn Store) {
    let t = granted(store, "e:10").await;
    store.fill("e:10", t, b("v1"), TTL).await.unwrap();
    assert_eq!(store.peek_fresh("e:10").await.unwrap(), Some(b("v1")));
    let leased_before = granted(store, "e:11").await;
    store.invalidate("e:10", Some(TTL)).await.unwrap();
    assert_eq!(store.get_entry("e:10").await.unwrap(), Some((b("v1"), true)));
    // The read path's first look never takes a stale copy for a hit.
    assert_eq!(
        store.peek_fresh("e:10").await.unwrap(),
        None,
        "a stale copy read as current"
    );
    let view = store.peek_entry("e:10").await.unwrap();
    assert_eq!((view.value, view.stale), (Some(b("v1")), true));
    let t2 = granted_over_stale(store, "e:10", b("v1")).await;
    assert_eq!(
        store
            .lookup_or_lease("e:10", LeaseToken::random(), LEASE)
            .await
            .unwrap(),
        LeaseOutcome::Busy { stale: Some(b("v1")) }
    );
    assert_eq!(
        store.peek_fresh("e:10").await.unwrap(),
        None,
        "a leased stale copy read as current"
    );
    // Invalidating a stale entry revokes the lease granted on it.
    store.invalidate("e:10", Some(TTL)).await.unwrap();
    assert_eq!(store.get_entry("e:10").await.unwrap(), Some((b("v1"), true)));
    assert_eq!(
        store.fill("e:10", t2, b("v2-old"), TTL).await.unwrap(),
        FillOutcome::Refused
    );
    // A fill under a new lease replaces the stale copy with a current value.
    let t3 = granted_over_stale(store, "e:10", b("v1")).await;
    assert_eq!(store.fill("e:10", t3, b("v2"), TTL).await.unwrap(), FillOutcome::Stored);
    assert_eq!(store.peek_fresh("e:10").await.unwrap(), Some(b("v2")));
    assert_eq!(store.get_entry("e:10").await.unwrap(), Some((b("v2"), false)));
    // Releasing keeps the stale value.
    store.release("e:11", leased_before).await.unwrap();
    assert_eq!(store.get_entry("e:11").await.unwrap(), None);
}

/// A lease granted on `key`, which holds the stale copy `stale`.
async fn granted_over_stale(store: &dyn Store, key: &str, stale: Bytes) -> LeaseToken {
    match store.lookup_or_lease(key, LeaseToken::random(), LEASE).await.unwrap() {
        LeaseOutcome::Granted { token, stale: offered } => {
            assert_eq!(offered, Some(stale));
            token
        }
        other => panic!("{other:?}"),
    }
}

/// Entries (and plain values, when the store has them) expire after their TTL.
pub async fn ttl_expires_values(store: &dyn Store) {
    let plain = store.supports_plain_values();
    if plain {
        store.set("t:plain", b("x"), Duration::from_millis(50)).await.unwrap();
    }
    store
        .put_entry("t:entry", b("x"), Duration::from_millis(50))
        .await
        .unwrap();
    eventually("the keys expire", EXPIRY_BOUND, || async {
        (!plain || store.get("t:plain").await.unwrap().is_none()) && store.get_entry("t:entry").await.unwrap().is_none()
    })
    .await;
}

/// The batch forms answer as the single-key ones would, key by key.
pub async fn batch_operations_match_single_ones(store: &dyn Store) {
    if store.supports_plain_values() {
        let keys: Vec<String> = (0..5).map(|i| format!("b:{i}")).collect();
        store
            .set_many(keys[..3].iter().map(|k| (k.clone(), b(k), TTL)).collect())
            .await
            .unwrap();
        let got = store.get_many(&keys).await.unwrap();
        assert_eq!(got, vec![Some(b("b:0")), Some(b("b:1")), Some(b("b:2")), None, None]);
    }

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
        .map(|((key, _), token)| Fill {
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

/// A refresh lease on a current value keeps it readable, has one holder,
/// fills, releases without losing the value, and is revoked like any lease.
pub async fn a_refresh_lease_keeps_the_value_readable_and_is_fenced(store: &dyn Store) {
    assert_eq!(try_refresh_lease(store, "r:1").await, None, "nothing to refresh");
    let t = granted(store, "r:1").await;
    store.fill("r:1", t, b("v1"), TTL).await.unwrap();
    let refresh = refresh_lease(store, "r:1").await;
    assert_eq!(store.peek_entry("r:1").await.unwrap().lease, Some(refresh));
    assert_eq!(try_refresh_lease(store, "r:1").await, None, "one refresher");
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

/// `ping` answers, and leaves no entry behind.
pub async fn ping_answers(store: &dyn Store) {
    store.ping().await.unwrap();
    assert_eq!(store.get_entry("aside:ping").await.unwrap(), None);
}
