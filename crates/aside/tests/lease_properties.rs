//! The lease invariant under generated interleavings: after quiescence, no
//! cache entry disagrees with the database. Several clients step through
//! lookup/lease -> database read -> fill, while writers step through
//! database write -> invalidate, in an order proptest chooses; the same
//! runs against MemoryStore, a real redis-server and (with the `memcached`
//! feature) a real memcached, with invalidations that delete and with ones
//! that keep the old value flagged stale (memcached's `md I`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aside::MemoryStore;
use aside::store::{LeaseOutcome, LeaseToken, Store};
use aside_testkit::RedisServer;
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const KEYS: u8 = 3;
const CLIENTS: usize = 4;
const TTL: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Step {
    /// Client `c` takes its next step on key `k` (if idle, it starts a read of `k`).
    Client(usize, u8),
    /// A writer updates the database row of `k`; its invalidation is a later step.
    DbWrite(u8),
    /// The oldest pending invalidation reaches the cache.
    Invalidate,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..CLIENTS, 0..KEYS).prop_map(|(c, k)| Step::Client(c, k)),
        1 => (0..KEYS).prop_map(Step::DbWrite),
        1 => Just(Step::Invalidate),
    ]
}

#[derive(Debug, Clone)]
enum Client {
    Idle,
    Leased { key: String, token: LeaseToken },
    Loaded { key: String, token: LeaseToken, value: u64 },
}

/// How fills are made: with the lease (fenced) or unconditionally (the naive pattern).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fill {
    Fenced,
    Naive,
}

struct World<'a> {
    store: &'a dyn Store,
    prefix: String,
    db: HashMap<String, u64>,
    clients: Vec<Client>,
    pending_invalidations: Vec<String>,
    fill: Fill,
    /// Fenced invalidations keep the old value, flagged stale, this long.
    keep_stale: Option<Duration>,
}

impl World<'_> {
    fn key(&self, k: u8) -> String {
        format!("{}{k}", self.prefix)
    }

    async fn client_step(&mut self, c: usize, k: u8) {
        let key = self.key(k);
        let next = match self.clients[c].clone() {
            Client::Idle => match self.fill {
                Fill::Fenced => match self
                    .store
                    .lookup_or_lease(&key, LeaseToken::random(), LEASE)
                    .await
                    .unwrap()
                {
                    LeaseOutcome::Granted { token, .. } => Client::Leased { key, token },
                    _ => Client::Idle,
                },
                Fill::Naive => match self.store.get(&key).await.unwrap() {
                    None => Client::Leased {
                        key,
                        token: LeaseToken(0),
                    },
                    Some(_) => Client::Idle,
                },
            },
            Client::Leased { key, token } => {
                let value = self.db.get(&key).copied().unwrap_or(0);
                Client::Loaded { key, token, value }
            }
            Client::Loaded { key, token, value } => {
                let bytes = Bytes::from(value.to_string());
                match self.fill {
                    Fill::Fenced => drop(self.store.fill(&key, token, bytes, TTL).await.unwrap()),
                    Fill::Naive => self.store.set(&key, bytes, TTL).await.unwrap(),
                }
                Client::Idle
            }
        };
        self.clients[c] = next;
    }

    async fn invalidate_oldest(&mut self) {
        if !self.pending_invalidations.is_empty() {
            let key = self.pending_invalidations.remove(0);
            match self.fill {
                Fill::Fenced => self.store.invalidate(&key, self.keep_stale).await.unwrap(),
                Fill::Naive => self.store.delete(&key).await.unwrap(),
            }
        }
    }

    async fn run(&mut self, steps: &[Step]) {
        for step in steps {
            match *step {
                Step::Client(c, k) => self.client_step(c, k).await,
                Step::DbWrite(k) => {
                    let key = self.key(k);
                    *self.db.entry(key.clone()).or_insert(0) += 1;
                    self.pending_invalidations.push(key);
                }
                Step::Invalidate => self.invalidate_oldest().await,
            }
        }
        // Quiescence: writers finish their invalidations, readers their fills.
        while !self.pending_invalidations.is_empty() {
            self.invalidate_oldest().await;
        }
        for c in 0..CLIENTS {
            while !matches!(self.clients[c], Client::Idle) {
                self.client_step(c, 0).await;
            }
        }
    }

    /// Keys whose cached value disagrees with the database.
    async fn stale_entries(&self) -> Vec<String> {
        let mut stale = Vec::new();
        for k in 0..KEYS {
            let key = self.key(k);
            let cached = match self.fill {
                // A value flagged stale is never served as current.
                Fill::Fenced => self
                    .store
                    .get_entry(&key)
                    .await
                    .unwrap()
                    .filter(|(_, stale)| !stale)
                    .map(|(v, _)| v),
                Fill::Naive => self.store.get(&key).await.unwrap(),
            };
            let truth = self.db.get(&key).copied().unwrap_or(0);
            if let Some(bytes) = cached
                && bytes != truth.to_string().as_bytes()
            {
                stale.push(key);
            }
        }
        stale
    }
}

async fn stale_after(
    store: &dyn Store,
    prefix: String,
    steps: &[Step],
    fill: Fill,
    keep_stale: Option<Duration>,
) -> Vec<String> {
    let mut world = World {
        store,
        prefix,
        db: HashMap::new(),
        clients: vec![Client::Idle; CLIENTS],
        pending_invalidations: Vec::new(),
        fill,
        keep_stale,
    };
    world.run(steps).await;
    world.stale_entries().await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn check_invariant(rt: &tokio::runtime::Runtime, store: Arc<dyn Store>, cases: u32, keep_stale: Option<Duration>) {
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let next_case = std::sync::atomic::AtomicU64::new(0);
    runner
        .run(&proptest::collection::vec(step(), 1..60), |steps| {
            let case = next_case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let stale = rt.block_on(stale_after(
                store.as_ref(),
                format!("prop:{case}:"),
                &steps,
                Fill::Fenced,
                keep_stale,
            ));
            prop_assert!(stale.is_empty(), "stale entries {stale:?} after {steps:?}");
            Ok(())
        })
        .unwrap();
}

#[test]
fn fenced_fills_leave_no_stale_entry_on_memory() {
    check_invariant(&runtime(), Arc::new(MemoryStore::new()), 512, None);
}

#[test]
fn fenced_fills_leave_no_stale_entry_on_memory_keeping_stale_values() {
    check_invariant(&runtime(), Arc::new(MemoryStore::new()), 256, Some(TTL));
}

#[test]
fn fenced_fills_leave_no_stale_entry_on_redis() {
    let server = RedisServer::start();
    let rt = runtime();
    let store: Arc<dyn Store> = Arc::new(rt.block_on(common::patient_redis(&server.url())));
    check_invariant(&rt, store, 128, None);
}

#[cfg(feature = "memcached")]
fn on_memcached(keep_stale: Option<Duration>) {
    let server = aside_testkit::MemcachedServer::start();
    let rt = runtime();
    let store = rt.block_on(common::patient_memcached(&server.addr()));
    check_invariant(&rt, Arc::new(store), 128, keep_stale);
}

#[cfg(feature = "memcached")]
#[test]
fn fenced_fills_leave_no_stale_entry_on_memcached() {
    on_memcached(None);
}

#[cfg(feature = "memcached")]
#[test]
fn fenced_fills_leave_no_stale_entry_on_memcached_keeping_stale_values() {
    on_memcached(Some(TTL));
}

/// The same checker catches the article's race when fills are unconditional:
/// read miss, database read (old), write, invalidate, fill (old).
#[tokio::test]
async fn the_checker_catches_the_naive_read_write_race() {
    let store = MemoryStore::new();
    let race = [
        Step::Client(0, 0), // miss
        Step::Client(0, 0), // database read: version 0
        Step::DbWrite(0),   // version 1
        Step::Invalidate,   // delete
        Step::Client(0, 0), // fill with version 0
    ];
    let naive = stale_after(&store, "naive:".into(), &race, Fill::Naive, None).await;
    assert_eq!(naive, vec!["naive:0".to_string()]);
    let fenced = stale_after(&store, "fenced:".into(), &race, Fill::Fenced, None).await;
    assert!(fenced.is_empty());
}
