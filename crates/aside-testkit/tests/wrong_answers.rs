//! The history checker counts wrong answers: a store that answers a lookup
//! of key 2 with key 1's entry (a reply given to the wrong request) makes
//! reads of key 2 return key 1's row, and the checker must say so.

use std::sync::Arc;
use std::time::Duration;

use aside::store::{EntryView, FillOutcome, LeaseOutcome, LeaseToken, StoreResult};
use aside::{MemoryStore, Store};
use aside_testkit::history::{self, BusSpec, Invariant, Program, Shape, StoreSpec, StrategyKind};
use bytes::Bytes;

/// A [`MemoryStore`] whose reads of a key ending in `:2` read the key
/// ending in `:1` instead; writes go where they are sent.
struct Crossed(MemoryStore);

fn crossed(key: &str) -> String {
    match key.strip_suffix(":2") {
        Some(stem) => format!("{stem}:1"),
        None => key.to_owned(),
    }
}

#[async_trait::async_trait]
impl Store for Crossed {
    fn name(&self) -> &'static str {
        "crossed"
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        self.0.get(&crossed(key)).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.0.set(key, value, ttl).await
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.0.delete(key).await
    }

    async fn incr(&self, key: &str, ttl: Duration) -> StoreResult<u64> {
        self.0.incr(key, ttl).await
    }

    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView> {
        self.0.peek_entry(&crossed(key)).await
    }

    async fn lookup_or_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<LeaseOutcome> {
        self.0.lookup_or_lease(&crossed(key), token, lease_ttl).await
    }

    async fn lease_for_refresh(
        &self,
        key: &str,
        token: LeaseToken,
        lease_ttl: Duration,
    ) -> StoreResult<Option<LeaseToken>> {
        self.0.lease_for_refresh(key, token, lease_ttl).await
    }

    async fn fill(&self, key: &str, token: LeaseToken, value: Bytes, ttl: Duration) -> StoreResult<FillOutcome> {
        self.0.fill(key, token, value, ttl).await
    }

    async fn release(&self, key: &str, token: LeaseToken) -> StoreResult<()> {
        self.0.release(key, token).await
    }

    async fn put_entry(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.0.put_entry(key, value, ttl).await
    }

    async fn invalidate(&self, key: &str, keep_stale: Option<Duration>) -> StoreResult<()> {
        self.0.invalidate(key, keep_stale).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_answered_with_another_keys_row_is_a_wrong_answer() {
    let store = StoreSpec::Custom {
        name: "crossed".to_owned(),
        connect: Arc::new(|| Box::pin(async { Ok(Arc::new(Crossed(MemoryStore::new())) as Arc<dyn Store>) })),
        restart: None,
    };
    let shape = Shape {
        strategies: vec![StrategyKind::Lease],
        faults: false,
        ..Shape::default()
    };
    let mut wrong = 0;
    for seed in 1..=5 {
        let program = Program::generate(seed, &shape);
        let run = history::run_program(&program, &store, &BusSpec::Memory, Duration::from_secs(1)).await;
        assert_eq!(
            run.stats.wrong_answers,
            run.violations
                .iter()
                .filter(|v| v.invariant == Invariant::WrongAnswer)
                .count() as u64
        );
        assert!(
            run.violations
                .iter()
                .filter(|v| v.invariant == Invariant::WrongAnswer)
                .all(|v| v.fails() && v.key == Some(2)),
            "{:#?}",
            run.violations
        );
        wrong += run.stats.wrong_answers;
    }
    assert!(wrong > 0, "no wrong answer seen in 5 programs reading a crossed key");
}
