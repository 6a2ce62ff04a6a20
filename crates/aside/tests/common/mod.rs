//! Helpers shared by the integration tests: a fake database and waiting on conditions.
#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub avatar: String,
}

impl User {
    pub fn new(id: u64, version: u64) -> Self {
        User {
            id,
            name: format!("user {id} v{version}"),
            email: format!("u{id}@example.com"),
            avatar: format!("https://img.example.com/{id}.png"),
        }
    }
}

/// A namespace of users on `aside` with an L1 of 1,000 entries kept a minute.
pub fn users_with_l1(aside: &aside::Aside) -> aside::Namespace<u64, User> {
    aside
        .namespace::<u64, User>("user")
        .l1(1_000, Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The source of truth of the tests: a map plus a query counter.
#[derive(Debug, Default, Clone)]
pub struct Db {
    rows: Arc<Mutex<HashMap<u64, User>>>,
    pub queries: Arc<AtomicU64>,
}

#[derive(Debug, thiserror::Error)]
#[error("database unavailable")]
pub struct DbDown;

impl Db {
    pub fn with_users(n: u64) -> Self {
        let db = Db::default();
        for id in 1..=n {
            db.put(User::new(id, 0));
        }
        db
    }

    pub fn put(&self, user: User) {
        self.rows.lock().unwrap().insert(user.id, user);
    }

    pub fn get_now(&self, id: u64) -> Option<User> {
        self.rows.lock().unwrap().get(&id).cloned()
    }

    pub async fn get(&self, id: u64) -> Result<Option<User>, DbDown> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        Ok(self.get_now(id))
    }

    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }
}

/// Waits until `check` holds, polling every 10 ms, failing after `timeout`.
pub use aside_testkit::eventually;

/// A memory store and a Redis store on the server at `url`: the stores
/// with fences and versioned writes, for tests of both. The Redis store is
/// [`patient_redis`]: these tests check answers, not how fast they come.
pub async fn memory_and_redis(url: &str) -> [Arc<dyn Store>; 2] {
    [Arc::new(aside::MemoryStore::new()), Arc::new(patient_redis(url).await)]
}

/// How long a store call may take in a test that checks who loads and who
/// waits, not how fast: a loaded host (CI shares its machine) can hold a
/// call past the 250 ms defaults, and a call that times out is a miss whose
/// reader loads, which such a test counts as a defect.
pub const PATIENT: Duration = Duration::from_secs(60);

/// A breaker that counts no call slow (its latency rule off), for tests
/// that count loads: a loaded host slows calls, and an open breaker skips
/// the store, so its readers load.
pub fn patient_breaker() -> aside::BreakerConfig {
    aside::BreakerConfig::default().slow_call(PATIENT)
}

/// A builder of an `Aside` that gives up on no store call ([`PATIENT`])
/// and counts none slow ([`patient_breaker`]).
pub fn patient_builder() -> aside::AsideBuilder {
    aside::Aside::builder().op_timeout(PATIENT).breaker(patient_breaker())
}

/// An `Aside` over `store` for the tests that count hits, loads and errors
/// rather than ride out an outage: no store call is given up on
/// ([`PATIENT`]) nor counted slow, and failures open the breaker after 3
/// for 200 ms.
pub fn patient_aside(store: impl Store) -> aside::Aside {
    patient_builder()
        .store(store)
        .breaker(
            patient_breaker()
                .failure_threshold(3)
                .open_for(Duration::from_millis(200)),
        )
        .build()
}

/// A Redis store whose commands may take [`PATIENT`] to answer.
pub async fn patient_redis(url: &str) -> aside::store::redis::RedisStore {
    let mut config = aside::store::redis::RedisConfig::default();
    config.response_timeout = PATIENT;
    aside::store::redis::RedisStore::connect_with(url, config)
        .await
        .unwrap()
}

/// A Redis Cluster store (through any of `urls`) whose commands may take
/// [`PATIENT`] to answer.
pub async fn patient_cluster<S: AsRef<str>>(urls: &[S]) -> aside::store::redis::RedisStore {
    let mut config = aside::store::redis::RedisConfig::default();
    config.response_timeout = PATIENT;
    aside::store::redis::RedisStore::connect_cluster_with(urls, config)
        .await
        .unwrap()
}

/// A memcached store whose requests may take [`PATIENT`] to answer.
#[cfg(feature = "memcached")]
pub async fn patient_memcached(addr: &str) -> aside::store::memcached::MemcachedStore {
    let mut config = aside::store::memcached::MemcachedConfig::default();
    config.response_timeout = PATIENT;
    aside::store::memcached::MemcachedStore::connect_with(addr, config)
        .await
        .unwrap()
}

pub async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

use aside::store::{EntryView, Fill, FillOutcome, LeaseOutcome, LeaseToken, Store, StoreResult};
use async_trait::async_trait;
use bytes::Bytes;

/// A store wrapper for tests: counts calls (one per round trip), can
/// hold `peek_entry` answers until a test releases them, and through its
/// [`Hooks`] can pause a chosen operation before it reaches the store or
/// fail it.
pub struct Instrumented<S> {
    inner: S,
    calls: Arc<AtomicUsize>,
    /// When set, `peek_entry` reads, then waits for a permit before answering.
    pub peek_gate: Option<Arc<tokio::sync::Semaphore>>,
    /// When set, `peek_many` reads, then waits for a permit before answering.
    pub peek_many_gate: Option<Arc<tokio::sync::Semaphore>>,
    pub hooks: Arc<Hooks>,
}

/// Pauses and failures of chosen store operations, by name (`"invalidate"`,
/// `"put_entry"`, `"fill"`, `"lease_for_refresh"`, ...).
#[derive(Default)]
pub struct Hooks {
    pause: Mutex<Option<PausedOp>>,
    hold: Mutex<Option<PausedOp>>,
    failing: Mutex<std::collections::HashSet<&'static str>>,
    late: Mutex<HashMap<&'static str, Duration>>,
    twice: Mutex<std::collections::HashSet<&'static str>>,
    entered: Mutex<HashMap<&'static str, usize>>,
}

type PausedOp = (&'static str, Arc<tokio::sync::Notify>, Arc<tokio::sync::Semaphore>);

/// A paused operation: `reached` fires when it arrives, `release` lets it go.
pub struct Paused {
    pub reached: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

impl Paused {
    pub fn release(&self) {
        self.release.add_permits(1);
    }
}

impl Hooks {
    /// The next call of `op` waits before reaching the store until released.
    pub fn pause_next(&self, op: &'static str) -> Paused {
        let reached = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        *self.pause.lock().unwrap() = Some((op, reached.clone(), release.clone()));
        Paused { reached, release }
    }

    /// The next call of `op` is applied, then waits before answering until
    /// released: its caller acts on what the store held when `reached` fired.
    pub fn pause_answer(&self, op: &'static str) -> Paused {
        let reached = Arc::new(tokio::sync::Notify::new());
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        *self.hold.lock().unwrap() = Some((op, reached.clone(), release.clone()));
        Paused { reached, release }
    }

    /// Every call of `op` fails (before reaching the store) until `heal`.
    pub fn fail(&self, op: &'static str) {
        self.failing.lock().unwrap().insert(op);
    }

    /// Every call of `op` is applied, then answers `after` late (a reply
    /// lost to the caller's timeout, or a caller cancelled mid-call).
    pub fn answer_late(&self, op: &'static str, after: Duration) {
        self.late.lock().unwrap().insert(op, after);
    }

    async fn leave(&self, op: &'static str) {
        wait_if_paused(&self.hold, op).await;
        let late = self.late.lock().unwrap().get(op).copied();
        if let Some(after) = late {
            tokio::time::sleep(after).await;
        }
    }

    /// The next call of `op` is applied twice, and answers what the second
    /// application returned: a client that resent the request after its
    /// connection dropped before the first reply came (redis-rs's cluster
    /// client retries such a request, whether or not the server ran it).
    pub fn apply_twice(&self, op: &'static str) {
        self.twice.lock().unwrap().insert(op);
    }

    /// True once for a call of `op` that `apply_twice` chose.
    fn resend(&self, op: &'static str) -> bool {
        self.twice.lock().unwrap().remove(op)
    }

    pub fn heal(&self, op: &'static str) {
        self.failing.lock().unwrap().remove(op);
    }

    /// How many calls of `op` reached this wrapper.
    pub fn calls_of(&self, op: &'static str) -> usize {
        self.entered.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    async fn enter(&self, op: &'static str) -> StoreResult<()> {
        *self.entered.lock().unwrap().entry(op).or_default() += 1;
        wait_if_paused(&self.pause, op).await;
        if self.failing.lock().unwrap().contains(op) {
            return Err(aside::store::StoreError::connection(format!("{op} failed by the test")));
        }
        Ok(())
    }
}

/// Takes the pause in `slot` if it is `op`'s, and waits there until released.
async fn wait_if_paused(slot: &Mutex<Option<PausedOp>>, op: &'static str) {
    let paused = {
        let mut pause = slot.lock().unwrap();
        match pause.as_ref() {
            Some((name, _, _)) if *name == op => pause.take(),
            _ => None,
        }
    };
    if let Some((_, reached, release)) = paused {
        reached.notify_one();
        release.acquire().await.expect("never closed").forget();
    }
}

impl<S> Instrumented<S> {
    pub fn new(inner: S, calls: Arc<AtomicUsize>) -> Self {
        Instrumented {
            inner,
            calls,
            peek_gate: None,
            peek_many_gate: None,
            hooks: Arc::default(),
        }
    }
}

impl<S> Instrumented<S> {
    fn tick(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl<S: Store> Store for Instrumented<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn supports_plain_values(&self) -> bool {
        self.inner.supports_plain_values()
    }
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        self.tick();
        self.hooks.enter("get").await?;
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.tick();
        self.hooks.enter("set").await?;
        self.inner.set(key, value, ttl).await
    }
    async fn add(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<bool> {
        self.tick();
        self.hooks.enter("add").await?;
        self.inner.add(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.tick();
        self.hooks.enter("delete").await?;
        self.inner.delete(key).await
    }
    async fn incr(&self, key: &str, ttl: Duration) -> StoreResult<u64> {
        self.tick();
        self.hooks.enter("incr").await?;
        self.inner.incr(key, ttl).await
    }
    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView> {
        self.tick();
        self.hooks.enter("peek_entry").await?;
        let view = self.inner.peek_entry(key).await;
        if let Some(gate) = &self.peek_gate {
            gate.acquire().await.expect("gate open").forget();
        }
        self.hooks.leave("peek_entry").await;
        view
    }
    async fn lookup_or_lease(&self, key: &str, token: LeaseToken, ttl: Duration) -> StoreResult<LeaseOutcome> {
        self.tick();
        self.hooks.enter("lookup_or_lease").await?;
        let answer = self.inner.lookup_or_lease(key, token, ttl).await;
        self.hooks.leave("lookup_or_lease").await;
        answer
    }
    async fn lease_for_refresh(&self, key: &str, token: LeaseToken, ttl: Duration) -> StoreResult<Option<LeaseToken>> {
        self.tick();
        self.hooks.enter("lease_for_refresh").await?;
        let answer = self.inner.lease_for_refresh(key, token, ttl).await;
        self.hooks.leave("lease_for_refresh").await;
        answer
    }
    async fn fill(&self, key: &str, token: LeaseToken, value: Bytes, ttl: Duration) -> StoreResult<FillOutcome> {
        self.tick();
        self.hooks.enter("fill").await?;
        self.inner.fill(key, token, value, ttl).await
    }
    async fn renew_lease(&self, key: &str, token: LeaseToken, ttl: Duration) -> StoreResult<bool> {
        self.tick();
        self.hooks.enter("renew_lease").await?;
        self.inner.renew_lease(key, token, ttl).await
    }
    fn watch_fill(&self, key: &str) -> Option<aside::store::FillWatch> {
        self.inner.watch_fill(key)
    }
    async fn release(&self, key: &str, token: LeaseToken) -> StoreResult<()> {
        self.tick();
        self.hooks.enter("release").await?;
        let released = self.inner.release(key, token).await;
        self.hooks.leave("release").await;
        released
    }
    async fn put_entry(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.tick();
        self.hooks.enter("put_entry").await?;
        self.inner.put_entry(key, value, ttl).await
    }
    fn supports_versioned_writes(&self) -> bool {
        self.inner.supports_versioned_writes()
    }
    fn supports_fences(&self) -> bool {
        self.inner.supports_fences()
    }
    async fn take_fence(&self, key: &str, token: LeaseToken, ttl: Duration) -> StoreResult<bool> {
        self.tick();
        self.hooks.enter("take_fence").await?;
        if self.hooks.resend("take_fence") {
            let _ = self.inner.take_fence(key, token, ttl).await;
        }
        self.inner.take_fence(key, token, ttl).await
    }
    async fn put_entry_if_newer(&self, put: aside::store::VersionedPut) -> StoreResult<bool> {
        self.tick();
        self.hooks.enter("put_entry_if_newer").await?;
        if self.hooks.resend("put_entry_if_newer") {
            let _ = self.inner.put_entry_if_newer(put.clone()).await;
        }
        self.inner.put_entry_if_newer(put).await
    }
    async fn invalidate_if_newer(
        &self,
        key: &str,
        mark_key: &str,
        version: u64,
        mark_ttl: Duration,
    ) -> StoreResult<()> {
        self.tick();
        self.hooks.enter("invalidate_if_newer").await?;
        self.inner.invalidate_if_newer(key, mark_key, version, mark_ttl).await
    }
    async fn invalidate(&self, key: &str, keep_stale: Option<Duration>) -> StoreResult<()> {
        self.tick();
        self.hooks.enter("invalidate").await?;
        self.inner.invalidate(key, keep_stale).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.tick();
        self.hooks.enter("ping").await?;
        self.inner.ping().await
    }
    async fn get_many(&self, keys: &[String]) -> StoreResult<Vec<Option<Bytes>>> {
        self.tick();
        self.hooks.enter("get_many").await?;
        self.inner.get_many(keys).await
    }
    async fn peek_many(&self, keys: &[String]) -> StoreResult<Vec<EntryView>> {
        self.tick();
        self.hooks.enter("peek_many").await?;
        let views = self.inner.peek_many(keys).await;
        if let Some(gate) = &self.peek_many_gate {
            gate.acquire().await.expect("never closed").forget();
        }
        views
    }
    async fn lookup_or_lease_many(
        &self,
        keys: &[(String, LeaseToken)],
        ttl: Duration,
    ) -> StoreResult<Vec<LeaseOutcome>> {
        self.tick();
        self.hooks.enter("lookup_or_lease_many").await?;
        self.inner.lookup_or_lease_many(keys, ttl).await
    }
    async fn fill_many(&self, fills: Vec<Fill>) -> StoreResult<Vec<FillOutcome>> {
        self.tick();
        self.hooks.enter("fill_many").await?;
        self.inner.fill_many(fills).await
    }
    async fn set_many(&self, items: Vec<(String, Bytes, Duration)>) -> StoreResult<()> {
        self.tick();
        self.hooks.enter("set_many").await?;
        self.inner.set_many(items).await
    }
}

/// One read of `id` through `ns`: the value and where it came from.
pub async fn read(ns: &aside::Namespace<u64, User>, db: &Db, id: u64) -> (Option<User>, aside::Source) {
    let f = ns.fetch(&id, || db.get(id)).await.unwrap();
    (f.value, f.source)
}

/// Miss, hit, invalidate, miss, hit for every strategy, on any store; no
/// store errors on the way.
pub async fn miss_hit_invalidate_every_strategy(aside: &aside::Aside) {
    use aside::Source;
    for strategy in aside::Strategy::all() {
        let ns = aside
            .namespace::<u64, User>(&format!("s-{strategy}"))
            .strategy(strategy)
            .build()
            .unwrap();
        let db = Db::with_users(3);
        assert_eq!(
            read(&ns, &db, 1).await,
            (Some(User::new(1, 0)), Source::Loaded),
            "{strategy}"
        );
        assert_eq!(
            read(&ns, &db, 1).await,
            (Some(User::new(1, 0)), Source::Hit),
            "{strategy}"
        );
        assert_eq!(db.queries(), 1);
        db.put(User::new(1, 1));
        ns.invalidate(&1).await.unwrap();
        assert_eq!(
            read(&ns, &db, 1).await,
            (Some(User::new(1, 1)), Source::Loaded),
            "{strategy}"
        );
        assert_eq!(read(&ns, &db, 1).await.1, Source::Hit, "{strategy}");
        assert_eq!(ns.get(&1).await.unwrap(), Some(User::new(1, 1)));
        // A missing row is not cached (negative caching is opt-in) and not an error.
        assert_eq!(read(&ns, &db, 99).await, (None, Source::Loaded));
    }
    assert_eq!(aside.stats().store_errors, 0);
}

/// Four readers on `aside` (lease strategy) keep answering with the
/// database's rows, with zero errors, while the store is dead (`server(false)`
/// kills it); once it is back (`server(true)`), hits resume on the same
/// `Aside` and its breaker closes. `aside` needs a breaker that opens after
/// a few failures.
pub async fn reads_survive_the_store_killed(aside: &aside::Aside, server: &mut dyn FnMut(bool)) {
    use aside::{BreakerState, Source};
    let ns = aside
        .namespace::<u64, User>("user:profile")
        .strategy(aside::Strategy::Lease)
        .build()
        .unwrap();
    let db = Db::with_users(20);
    for id in 1..=20 {
        read(&ns, &db, id).await;
    }
    assert_eq!(read(&ns, &db, 1).await.1, Source::Hit);
    let reads = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut readers = Vec::new();
    for r in 0..4u64 {
        let (ns, db, reads, stop) = (ns.clone(), db.clone(), reads.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut i = r;
            loop {
                let id = i % 20 + 1;
                let got = ns.get_or_load(&id, || db.get(id)).await.expect("reads never fail");
                assert_eq!(got, db.get_now(id), "every read returns the database's answer");
                reads.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::select! { () = stop.notified() => return, () = tokio::task::yield_now() => {} }
            }
        }));
    }
    let before = reads.load(Ordering::Relaxed);
    let queries_before = db.queries();
    server(false);
    eventually(
        "reads continue while the store is dead",
        Duration::from_secs(10),
        || {
            let reads = reads.clone();
            async move { reads.load(Ordering::Relaxed) > before + 500 }
        },
    )
    .await;
    assert!(db.queries() > queries_before, "the database answered during the outage");
    eventually("the breaker opens", Duration::from_secs(10), || async {
        aside.stats().store_skipped > 0
    })
    .await;

    server(true);
    eventually("hits resume after the restart", Duration::from_secs(15), || {
        let (ns, db) = (ns.clone(), db.clone());
        async move { ns.fetch(&1, || db.get(1)).await.unwrap().source == Source::Hit }
    })
    .await;
    stop.notify_waiters();
    for r in readers {
        r.abort();
        // A reader that failed its assertions panicked: that fails the test here.
        if let Err(e) = r.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    assert_eq!(aside.breaker_state(), BreakerState::Closed);
    let stats = aside.stats();
    assert!(stats.store_errors > 0, "the outage was seen: {stats:?}");
    assert_eq!(stats.load_errors, 0);
}
