//! The store contract of `aside_testkit::store_contract`, run against every
//! store (memory, Redis, and memcached with the `memcached` feature), and
//! against a store written outside the crate: a wrapper of `MemoryStore`
//! that implements only the methods `Store` requires (the lease state
//! machine), as a store author would.

mod common;

use std::time::Duration;

use aside::store::{EntryView, FillOutcome, LeaseOutcome, LeaseToken, Store, StoreError, StoreResult};
use aside::{Aside, ErrorKind, MemoryStore, Source, Stampede, Strategy};
use aside_testkit::RedisServer;
use async_trait::async_trait;
use bytes::Bytes;

aside_testkit::store_contract_tests!(memory, async { (MemoryStore::new(), ()) });

aside_testkit::store_contract_tests!(redis_server, async {
    let server = RedisServer::start();
    let store = common::patient_redis(&server.url()).await;
    (store, server)
});

#[cfg(feature = "memcached")]
aside_testkit::store_contract_tests!(memcached_server, async {
    let server = aside_testkit::MemcachedServer::start();
    let store = common::patient_memcached(&server.addr()).await;
    (store, server)
});

// The same cases with keys spread over two servers by the hash ring.
#[cfg(feature = "memcached")]
aside_testkit::store_contract_tests!(memcached_two_servers, async {
    let servers = (
        aside_testkit::MemcachedServer::start(),
        aside_testkit::MemcachedServer::start(),
    );
    let addrs = format!("{},{}", servers.0.addr(), servers.1.addr());
    let store = common::patient_memcached(&addrs).await;
    (store, servers)
});

/// A store of its own, as another crate writes one: the required methods
/// only, forwarded to a `MemoryStore`. Everything else is `Store`'s
/// defaults: no plain values, batch forms one key at a time, `ping` by a peek.
struct LeaseOnly {
    inner: MemoryStore,
    /// Fills whatever the token, as a broken store would: the contract must catch it.
    unfenced: bool,
}

impl LeaseOnly {
    fn new() -> Self {
        LeaseOnly {
            inner: MemoryStore::new(),
            unfenced: false,
        }
    }

    fn unfenced() -> Self {
        LeaseOnly {
            unfenced: true,
            ..Self::new()
        }
    }
}

#[async_trait]
impl Store for LeaseOnly {
    fn name(&self) -> &'static str {
        "lease-only"
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.inner.delete(key).await
    }

    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView> {
        // Rebuilt field by field: what a store outside the crate must be able to do.
        let seen = self.inner.peek_entry(key).await?;
        Ok(EntryView::new(seen.value, seen.stale, seen.lease))
    }

    async fn lookup_or_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<LeaseOutcome> {
        self.inner.lookup_or_lease(key, token, lease_ttl).await
    }

    async fn lease_for_refresh(
        &self,
        key: &str,
        token: LeaseToken,
        lease_ttl: Duration,
    ) -> StoreResult<Option<LeaseToken>> {
        self.inner.lease_for_refresh(key, token, lease_ttl).await
    }

    async fn fill(&self, key: &str, token: LeaseToken, value: Bytes, ttl: Duration) -> StoreResult<FillOutcome> {
        if self.unfenced {
            self.inner.put_entry(key, value, ttl).await?;
            return Ok(FillOutcome::Stored);
        }
        self.inner.fill(key, token, value, ttl).await
    }

    async fn release(&self, key: &str, token: LeaseToken) -> StoreResult<()> {
        self.inner.release(key, token).await
    }

    async fn put_entry(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.inner.put_entry(key, value, ttl).await
    }

    async fn invalidate(&self, key: &str, keep_stale: Option<Duration>) -> StoreResult<()> {
        self.inner.invalidate(key, keep_stale).await
    }
}

aside_testkit::store_contract_tests!(lease_only_wrapper, async { (LeaseOnly::new(), ()) });

#[tokio::test]
async fn run_all_passes_on_a_store_written_outside_the_crate() {
    aside_testkit::store_contract::run_all(&LeaseOnly::new()).await;
}

#[tokio::test]
async fn run_all_catches_a_store_that_breaks_the_contract() {
    let store = LeaseOnly::unfenced();
    let outcome = tokio::spawn(async move { aside_testkit::store_contract::run_all(&store).await }).await;
    assert!(
        outcome.is_err_and(|e| e.is_panic()),
        "an unfenced fill must fail the contract"
    );
}

#[tokio::test]
async fn a_lease_only_store_serves_the_lease_strategy() {
    let cache = Aside::builder().store(LeaseOnly::new()).build();
    let names = cache.namespace::<u64, String>("name").build().unwrap();
    let loaded = names
        .get_or_load(&1, || async { Ok::<_, std::io::Error>(Some("Ada".to_owned())) })
        .await
        .unwrap();
    assert_eq!(loaded.as_deref(), Some("Ada"));
    assert_eq!(names.get(&1).await.unwrap().as_deref(), Some("Ada"), "the fill landed");
    names.invalidate(&1).await.unwrap();
    assert_eq!(names.get(&1).await.unwrap(), None);
    assert_eq!(cache.stats().store_errors, 0, "no call reached an unsupported default");
}

/// The article's stampede lock is a lease on the lock key: it needs no
/// plain values, so a lease-only store serves it.
#[tokio::test]
async fn a_lease_only_store_serves_the_stampede_lock() {
    let cache = Aside::builder().store(LeaseOnly::new()).build();
    let names = cache
        .namespace::<u64, String>("name")
        .stampede(Stampede::LockSleep)
        .build()
        .unwrap();
    let load = || async { Ok::<_, std::io::Error>(Some("Ada".to_owned())) };
    assert_eq!(names.fetch(&1, load).await.unwrap().source, Source::Loaded);
    assert_eq!(names.fetch(&1, load).await.unwrap().source, Source::Hit);
    assert_eq!(cache.stats().store_errors, 0, "no call reached an unsupported default");
}

#[tokio::test]
async fn a_namespace_that_needs_plain_values_is_refused_at_build_on_a_lease_only_store() {
    let cache = Aside::builder().store(LeaseOnly::new()).build();
    for strategy in [
        Strategy::Delete,
        Strategy::DoubleDelete {
            delay: Duration::from_millis(500),
        },
        Strategy::Versioned,
    ] {
        let err = cache
            .namespace::<u64, String>("name")
            .strategy(strategy)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{strategy}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("the {strategy} strategy")) && message.contains("lease-only"),
            "{message}"
        );
    }
    let raw = cache.namespace::<u64, String>("name").raw().build();
    assert!(raw.is_err(), "a raw namespace uses the delete strategy");
    // The same namespaces build on a store with plain values.
    let full = Aside::builder().build();
    full.namespace::<u64, String>("name")
        .strategy(Strategy::Versioned)
        .build()
        .unwrap();
}

#[tokio::test]
async fn a_plain_operation_on_a_lease_only_store_is_unsupported_and_per_key() {
    let err = LeaseOnly::new().get("k").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unsupported { operation: "get", .. }),
        "{err:?}"
    );
    assert!(err.is_per_key(), "it must not open the breaker");
}
