//! A memcached that lies: huge size claims, values cut short, garbage, and
//! values that never end. Each gives a clear store error (never a panic,
//! never an allocation the bytes do not justify), and the engine in front
//! of it keeps answering from the loader (fail-open). The memory side of
//! the bound is measured in `hostile_memory.rs`, a binary of its own.
//! Whatever the store, an entry longer than its namespace ever writes is
//! refused before a codec sees it.

use aside::{Aside, MemoryStore, Source};
#[cfg(feature = "memcached")]
use {
    aside::store::memcached::{MemcachedConfig, MemcachedStore},
    aside::store::{Store, StoreError},
    aside_testkit::hostile::{Behaviour, HostileMemcached},
    std::time::Duration,
};

/// Another writer (or a namespace whose limit was since lowered) left an
/// entry over this namespace's `max_value_bytes`: it is counted as corrupt,
/// deleted and reloaded, never decoded.
#[tokio::test]
async fn an_entry_over_the_namespaces_size_limit_is_not_decoded() {
    let store = MemoryStore::new();
    let writer = Aside::builder().store(store.clone()).build();
    let reader = Aside::builder().store(store).build();
    let big = "x".repeat(1000);
    let writes = writer.namespace::<u64, String>("users").build().unwrap();
    let reads = reader
        .namespace::<u64, String>("users")
        .max_value_bytes(64)
        .build()
        .unwrap();
    let load = |v: String| {
        move || {
            let v = v.clone();
            async move { Ok::<_, std::io::Error>(Some(v)) }
        }
    };
    writes.get_or_load(&1, load(big.clone())).await.unwrap();
    assert_eq!(writes.fetch(&1, load(big.clone())).await.unwrap().source, Source::Hit);

    let got = reads.fetch(&1, load("small".to_owned())).await.unwrap();
    assert_eq!((got.value.as_deref(), got.source), (Some("small"), Source::Loaded));
    assert_eq!(reader.stats().decode_errors, 1);
}

#[cfg(feature = "memcached")]
/// 64 TiB: the claim that made `aside serve` die with "memory allocation of
/// 70368744177666 bytes failed".
const HUGE: u64 = 70_368_744_177_664;

#[cfg(feature = "memcached")]
fn config() -> MemcachedConfig {
    let mut config = MemcachedConfig::default();
    config.max_connections_per_server = 1;
    // The servers below answer at once or never: this bound is what ends
    // the ones that never do, not a race a slow machine can lose.
    config.response_timeout = Duration::from_millis(500);
    config
}

#[cfg(feature = "memcached")]
async fn store_on(server: &HostileMemcached) -> MemcachedStore {
    MemcachedStore::connect_with(server.addr(), config())
        .await
        .expect("the handshake is answered honestly")
}

#[cfg(feature = "memcached")]
#[tokio::test]
async fn a_huge_size_claim_is_believed_only_up_to_the_clients_bound() {
    let server = HostileMemcached::start(HUGE, Behaviour::Claims { claimed: HUGE }).await;
    let store = store_on(&server).await;
    assert!(
        store.max_value_len("k") < MemcachedConfig::default().max_item_bytes,
        "the server's claim was believed: {}",
        store.max_value_len("k")
    );
    let err = store.get("k").await.unwrap_err();
    assert!(matches!(err, StoreError::Server { .. }), "{err:?}");
    assert!(err.to_string().contains("over the"), "{err}");
    assert_eq!(server.requests(), 1);
}

/// A claim of `u64::MAX` (for `item_size_max` and for the value) once
/// overflowed `n + 2` in a debug build.
#[cfg(feature = "memcached")]
#[tokio::test]
async fn a_claim_of_the_largest_length_neither_overflows_nor_allocates() {
    let server = HostileMemcached::start(u64::MAX, Behaviour::Claims { claimed: u64::MAX }).await;
    let store = store_on(&server).await;
    let err = store.get("k").await.unwrap_err();
    assert!(matches!(err, StoreError::Server { .. }), "{err:?}");
}

#[cfg(feature = "memcached")]
#[tokio::test]
async fn a_value_cut_short_is_a_connection_error_and_the_next_call_reconnects() {
    let server = HostileMemcached::start(1024 * 1024, Behaviour::Truncated { claimed: 100, sent: 10 }).await;
    let store = store_on(&server).await;
    let err = store.get("k").await.unwrap_err();
    assert!(matches!(err, StoreError::Connection { .. }), "{err:?}");
    assert!(err.to_string().contains("closed after 10 of the 102 bytes"), "{err}");
    let before = server.connections();
    assert!(store.get("k").await.is_err());
    assert!(server.connections() > before, "the broken connection was reused");
}

#[cfg(feature = "memcached")]
#[tokio::test]
async fn garbage_answers_are_errors_not_panics() {
    for garbage in [
        &b"VA -1 c1\r\n"[..],
        b"VA 99999999999999999999999999 c1\r\n",
        b"VA 3 c1 f43549\r\nabcdef\r\n",
        b"VA 2 c-1\r\nhi\r\n",
        b"HD c18446744073709551616\r\n",
        b"\x00\x01\x02\x03\r\n",
        b"\xc3\x28\r\n",
        &[b'V'; 10_000],
        b"END\r\n",
        b"\r\n",
    ] {
        let server = HostileMemcached::start(1024 * 1024, Behaviour::Garbage(garbage.to_vec())).await;
        let store = store_on(&server).await;
        let result = store.get("k").await;
        assert!(
            result.is_err(),
            "{:?} read as {result:?}",
            String::from_utf8_lossy(garbage)
        );
    }
}

/// A value that starts and never ends holds the connection only until the
/// response timeout; the connection is then dropped, not pooled.
#[cfg(feature = "memcached")]
#[tokio::test]
async fn a_value_that_never_ends_ends_at_the_response_timeout() {
    let server = HostileMemcached::start(
        1024 * 1024,
        Behaviour::Stalls {
            claimed: 512 * 1024,
            sent: 1000,
        },
    )
    .await;
    let store = store_on(&server).await;
    let err = store.get("k").await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    let before = server.connections();
    assert!(store.get("k").await.is_err());
    assert!(server.connections() > before, "the stalled connection was reused");
}

/// Behind the engine, every lie is a store error: reads fall through to
/// the loader and the caller gets its value.
#[cfg(feature = "memcached")]
#[tokio::test]
async fn the_engine_answers_from_the_loader_whatever_the_server_claims() {
    for behaviour in [
        Behaviour::Claims { claimed: HUGE },
        Behaviour::Truncated { claimed: 100, sent: 10 },
        Behaviour::Garbage(b"VA 5 c1 f43549\r\nnot-an-envelope\r\n".to_vec()),
    ] {
        let server = HostileMemcached::start(HUGE, behaviour.clone()).await;
        let aside = Aside::builder().store(store_on(&server).await).build();
        let users = aside.namespace::<u64, String>("users").build().unwrap();
        let got = users
            .get_or_load(&7, || async { Ok::<_, std::io::Error>(Some("Ada".to_owned())) })
            .await;
        assert_eq!(got.unwrap().as_deref(), Some("Ada"), "{behaviour:?}");
    }
}
