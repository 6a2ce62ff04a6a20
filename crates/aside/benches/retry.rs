//! How long the invalidation retry queue takes to drain (issue 15).
//!
//! Replaying the queue was quadratic (every completed entry scanned the
//! replay order under the queue's mutex): 2k / 8k / 32k queued entries
//! drained in 0.29 / 2.7 / 48.5 s. One criterion group, `retry_drain`, with
//! a row per queue length (10k and 100k). Each iteration builds an `Aside`
//! on an in-process store that refuses invalidations, invalidates N keys
//! (all queued, not timed), lets the store answer again, and times
//! [`Aside::shutdown`], which replays the whole queue; the bench panics if
//! a drain drops any or leaves any queued.
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p aside --bench retry
//! ```
//!
//! Medians and their 95% confidence intervals are in
//! `target/criterion/retry_drain/<N>/new/estimates.json` (`median`).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aside::store::{EntryView, FillOutcome, FillWatch, LeaseOutcome, LeaseToken, StoreError, StoreResult};
use aside::{Aside, MemoryStore, Store};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;

/// A [`MemoryStore`] whose invalidations fail while `refusing` is set:
/// the store outage that fills the retry queue.
struct Refusing {
    inner: MemoryStore,
    refusing: AtomicBool,
}

impl Refusing {
    fn check(&self) -> StoreResult<()> {
        if self.refusing.load(Ordering::Acquire) {
            Err(StoreError::connection("the bench's store refuses invalidations"))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Store for Refusing {
    fn name(&self) -> &'static str {
        "refusing"
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    fn watch_fill(&self, key: &str) -> Option<FillWatch> {
        self.inner.watch_fill(key)
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        self.inner.get(key).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.inner.set(key, value, ttl).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.check()?;
        self.inner.delete(key).await
    }

    async fn incr(&self, key: &str, ttl: Duration) -> StoreResult<u64> {
        self.check()?;
        self.inner.incr(key, ttl).await
    }

    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView> {
        self.inner.peek_entry(key).await
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
        self.inner.fill(key, token, value, ttl).await
    }

    async fn release(&self, key: &str, token: LeaseToken) -> StoreResult<()> {
        self.inner.release(key, token).await
    }

    async fn put_entry(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.inner.put_entry(key, value, ttl).await
    }

    async fn invalidate(&self, key: &str, keep_stale: Option<Duration>) -> StoreResult<()> {
        self.check()?;
        self.inner.invalidate(key, keep_stale).await
    }
}

/// An `Aside` whose retry queue holds `n` invalidations, and the switch
/// that lets its store answer again.
async fn queued(n: u64) -> (Aside, Arc<Refusing>) {
    let store = Arc::new(Refusing {
        inner: MemoryStore::new(),
        refusing: AtomicBool::new(true),
    });
    let aside = Aside::builder()
        .shared_store(store.clone())
        .retry_capacity(n as usize)
        .retry_capacity_bytes(usize::MAX)
        .build();
    let ns = aside
        .namespace::<u64, String>("profiles")
        .build()
        .expect("the namespace builds");
    for key in 0..n {
        assert!(ns.invalidate(&key).await.is_err(), "the store refuses");
    }
    assert_eq!(aside.stats().invalidations_pending, n, "every invalidation is queued");
    (aside, store)
}

fn drain(c: &mut Criterion) {
    let rt = Runtime::new().expect("a Tokio runtime");
    let mut group = c.benchmark_group("retry_drain");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for n in [10_000u64, 100_000] {
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let (aside, store) = rt.block_on(queued(n));
                    store.refusing.store(false, Ordering::Release);
                    let started = std::time::Instant::now();
                    let report = rt.block_on(aside.shutdown(Duration::from_secs(600)));
                    spent += started.elapsed();
                    // Nothing dropped and nothing left: every entry was
                    // replayed (by the drain, or the worker beside it, whose
                    // replay counter may still be catching up: not checked).
                    assert_eq!(black_box(report).dropped, 0, "a drain dropped invalidations");
                    assert_eq!(aside.stats().invalidations_pending, 0, "a drain left invalidations");
                }
                spent
            });
        });
    }
    group.finish();
}

criterion_group!(benches, drain);
criterion_main!(benches);
