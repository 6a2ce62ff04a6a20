//! What happens to an invalidation after the store did not take it, and to
//! the work that outlives the call that made it: the retry queue's replay
//! (published on the bus, surviving the runtime that started it, drained by
//! `Aside::shutdown`), `DoubleDelete`'s delayed second deletes (one slow
//! delete holds no other back), the first bus subscription coming up late,
//! and two namespaces of one name in one `Aside`. The store is the memory
//! store behind a wrapper that fails or holds chosen operations; the bus is
//! an in-process one whose subscriptions can be held back.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::bus::{Bus, BusEvent, Invalidation};
use aside::store::{EntryView, FillOutcome, LeaseOutcome, LeaseToken, Store, StoreError, StoreResult};
use aside::{Aside, MemoryStore, Namespace, Strategy};
use async_trait::async_trait;
use bytes::Bytes;
use common::{Db, User, eventually};
use tokio::sync::{Notify, Semaphore, broadcast, mpsc};

/// Generous bound on waiting for an event that should come in milliseconds.
const DEADLINE: Duration = Duration::from_secs(10);

/// A call of `op` on `key` held until released; `after` holds it once the
/// inner store has answered (the answer is then old news), else before.
struct Hold {
    op: &'static str,
    key: String,
    /// The call number (1-based) of `op` on `key` to hold, or [`ANY`].
    nth: usize,
    after: bool,
    reached: Arc<Notify>,
    release: Arc<Semaphore>,
}

/// Holds the next call that gets there (with `after`: the next that the
/// store answered, not one the test failed).
const ANY: usize = 0;

/// A held call: `reached` fires when it gets there, `release` lets it go.
struct Held {
    reached: Arc<Notify>,
    release: Arc<Semaphore>,
}

impl Held {
    async fn reached(&self) {
        tokio::time::timeout(DEADLINE, self.reached.notified())
            .await
            .expect("the held call never came");
    }

    fn release(&self) {
        self.release.add_permits(1);
    }
}

/// A store wrapper that counts calls per operation and key, fails chosen
/// operations (before they reach the store) and holds chosen calls.
#[derive(Clone)]
struct Faulty {
    inner: MemoryStore,
    failing: Arc<Mutex<HashSet<&'static str>>>,
    calls: Arc<Mutex<HashMap<(&'static str, String), usize>>>,
    holds: Arc<Mutex<Vec<Hold>>>,
}

impl Faulty {
    fn new(inner: MemoryStore) -> Self {
        Faulty {
            inner,
            failing: Arc::default(),
            calls: Arc::default(),
            holds: Arc::default(),
        }
    }

    fn fail(&self, op: &'static str) {
        self.failing.lock().unwrap().insert(op);
    }

    fn heal(&self, op: &'static str) {
        self.failing.lock().unwrap().remove(op);
    }

    fn calls(&self, op: &'static str, key: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .get(&(op, key.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn hold(&self, op: &'static str, key: &str, nth: usize, after: bool) -> Held {
        let reached = Arc::new(Notify::new());
        let release = Arc::new(Semaphore::new(0));
        self.holds.lock().unwrap().push(Hold {
            op,
            key: key.to_owned(),
            nth,
            after,
            reached: reached.clone(),
            release: release.clone(),
        });
        Held { reached, release }
    }

    /// Counts the call, then holds it if asked (before), then fails it if asked.
    async fn before(&self, op: &'static str, key: &str) -> StoreResult<usize> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry((op, key.to_owned())).or_default();
            *n += 1;
            *n
        };
        self.held(op, key, n, false).await;
        if self.failing.lock().unwrap().contains(op) {
            return Err(StoreError::connection(format!("{op} failed by the test")));
        }
        Ok(n)
    }

    async fn held(&self, op: &'static str, key: &str, n: usize, after: bool) {
        let hold = {
            let mut holds = self.holds.lock().unwrap();
            let at = holds
                .iter()
                .position(|h| h.op == op && h.key == key && (h.nth == n || h.nth == ANY) && h.after == after);
            at.map(|i| holds.remove(i))
        };
        if let Some(hold) = hold {
            hold.reached.notify_one();
            hold.release.acquire().await.expect("never closed").forget();
        }
    }
}

#[async_trait]
impl Store for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn supports_plain_values(&self) -> bool {
        self.inner.supports_plain_values()
    }
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let n = self.before("get", key).await?;
        let r = self.inner.get(key).await;
        self.held("get", key, n, true).await;
        r
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.before("set", key).await?;
        self.inner.set(key, value, ttl).await
    }
    async fn add(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<bool> {
        self.before("add", key).await?;
        self.inner.add(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        let n = self.before("delete", key).await?;
        let r = self.inner.delete(key).await;
        self.held("delete", key, n, true).await;
        r
    }
    async fn incr(&self, key: &str, ttl: Duration) -> StoreResult<u64> {
        self.before("incr", key).await?;
        self.inner.incr(key, ttl).await
    }
    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView> {
        let n = self.before("peek_entry", key).await?;
        let r = self.inner.peek_entry(key).await;
        self.held("peek_entry", key, n, true).await;
        r
    }
    async fn lookup_or_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<LeaseOutcome> {
        let n = self.before("lookup_or_lease", key).await?;
        let r = self.inner.lookup_or_lease(key, token, lease_ttl).await;
        self.held("lookup_or_lease", key, n, true).await;
        r
    }
    async fn lease_for_refresh(
        &self,
        key: &str,
        token: LeaseToken,
        lease_ttl: Duration,
    ) -> StoreResult<Option<LeaseToken>> {
        self.before("lease_for_refresh", key).await?;
        self.inner.lease_for_refresh(key, token, lease_ttl).await
    }
    async fn fill(&self, key: &str, token: LeaseToken, value: Bytes, ttl: Duration) -> StoreResult<FillOutcome> {
        self.before("fill", key).await?;
        self.inner.fill(key, token, value, ttl).await
    }
    fn watch_fill(&self, key: &str) -> Option<aside::store::FillWatch> {
        self.inner.watch_fill(key)
    }
    async fn release(&self, key: &str, token: LeaseToken) -> StoreResult<()> {
        self.before("release", key).await?;
        self.inner.release(key, token).await
    }
    async fn put_entry(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.before("put_entry", key).await?;
        self.inner.put_entry(key, value, ttl).await
    }
    async fn invalidate(&self, key: &str, keep_stale: Option<Duration>) -> StoreResult<()> {
        let n = self.before("invalidate", key).await?;
        let r = self.inner.invalidate(key, keep_stale).await;
        self.held("invalidate", key, n, true).await;
        r
    }
    async fn ping(&self) -> StoreResult<()> {
        self.before("ping", "").await?;
        Ok(())
    }
}

/// An in-process bus shared by the `Aside`s of a test. Like pub/sub, a
/// subscription sees only what is published after it is up; it comes up
/// only once `open` has been called.
#[derive(Clone)]
struct LocalBus {
    tx: broadcast::Sender<Invalidation>,
    open: Arc<Semaphore>,
}

impl LocalBus {
    fn new(open: bool) -> Self {
        let bus = LocalBus {
            tx: broadcast::channel(1024).0,
            open: Arc::new(Semaphore::new(0)),
        };
        if open {
            bus.open();
        }
        bus
    }

    fn open(&self) {
        self.open.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        let _ = self.tx.send(message.clone());
        Ok(())
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<BusEvent>, StoreError> {
        self.open.acquire().await.expect("never closed").forget();
        let mut messages = self.tx.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Ok(message) = messages.recv().await {
                if tx.send(BusEvent::Invalidation(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

fn aside(store: impl Store, bus: Option<LocalBus>) -> Aside {
    // Patient: a call held by the test waits for its release rather than
    // time out into another path (the store's own failures are the test's).
    let builder = common::patient_builder()
        .store(store)
        .breaker(common::patient_breaker().failure_threshold(1_000));
    match bus {
        Some(bus) => builder.bus(bus).build(),
        None => builder.build(),
    }
}

fn users(aside: &Aside) -> Namespace<u64, User> {
    aside
        .namespace::<u64, User>("user")
        .l1(1_000, Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn read(ns: &Namespace<u64, User>, db: &Db, id: u64) -> Option<User> {
    ns.fetch(&id, || db.get(id)).await.unwrap().value
}

/// Waits until `events` carries a message `from` publishes (the
/// subscription is up), then drains what came.
async fn subscribed(from: &Namespace<u64, User>, events: &mut broadcast::Receiver<Invalidation>) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        from.invalidate(&0).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(50), events.recv())
            .await
            .is_ok()
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bus never delivered");
    }
    while events.try_recv().is_ok() {}
}

/// The next message about `key`.
async fn next_about(events: &mut broadcast::Receiver<Invalidation>, key: &str) -> Invalidation {
    let wait = async {
        loop {
            let message = events.recv().await.unwrap();
            if message.keys.iter().any(|k| k == key) {
                return message;
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("no message about {key} on the bus"))
}

/// Defect 6a of issue 12: a replayed invalidation was not published, so
/// another process that read the old value back into its L1 while the
/// store was down (the store still held it) kept serving it after the
/// replay had removed it from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_invalidation_reaches_other_processes_l1() {
    let memory = MemoryStore::new();
    let bus = LocalBus::new(true);
    let store_a = Faulty::new(memory.clone());
    let a = aside(store_a.clone(), Some(bus.clone()));
    let b = aside(memory.clone(), Some(bus));
    let (users_a, users_b) = (users(&a), users(&b));
    let mut b_events = b.invalidations().unwrap();
    subscribed(&users_a, &mut b_events).await;
    let db = Db::with_users(1);

    assert_eq!(read(&users_b, &db, 1).await, Some(User::new(1, 0)));
    db.put(User::new(1, 1));
    store_a.fail("invalidate");
    assert!(users_a.invalidate(&1).await.is_err());
    next_about(&mut b_events, "user:1").await;
    // The store still holds the old row: B reads it back into its L1.
    assert_eq!(read(&users_b, &db, 1).await, Some(User::new(1, 0)));

    store_a.heal("invalidate");
    let message = next_about(&mut b_events, "user:1").await;
    assert_eq!(message.namespace, "user");
    eventually("the replay is counted", DEADLINE, || async {
        a.stats().invalidations_replayed == 1
    })
    .await;
    assert_eq!(read(&users_b, &db, 1).await, Some(User::new(1, 1)));
}

/// Defect 12 of issue 12: queued invalidations live in memory only.
/// `shutdown` replays what it can within its bound, drops, counts and
/// reports the rest (whose entries stay until their TTL).
#[tokio::test(flavor = "current_thread")]
async fn shutdown_drains_the_retry_queue_within_its_bound() {
    let memory = MemoryStore::new();
    let store = Faulty::new(memory.clone());
    let a = aside(store.clone(), None);
    let users = users(&a);
    let db = Db::with_users(2);
    read(&users, &db, 1).await;
    read(&users, &db, 2).await;

    // The store stays down: nothing can be replayed in time.
    store.fail("invalidate");
    assert!(users.invalidate(&1).await.is_err());
    let report = tokio::time::timeout(DEADLINE, a.shutdown(Duration::from_millis(300)))
        .await
        .expect("shutdown keeps its bound");
    assert_eq!((report.replayed, report.dropped), (0, 1), "{report:?}");
    assert_eq!(a.stats().invalidations_dropped, 1);
    assert_eq!(a.stats().invalidations_pending, 0);
    assert!(
        memory.peek_entry("user:1").await.unwrap().value.is_some(),
        "the dropped invalidation's entry stays (until its TTL)"
    );

    // The store is back: shutdown replays at once. (On this runtime the
    // worker cannot run between `heal` and `shutdown`.)
    assert!(users.invalidate(&2).await.is_err());
    store.heal("invalidate");
    let report = a.shutdown(DEADLINE).await;
    assert_eq!((report.replayed, report.dropped), (1, 0), "{report:?}");
    assert_eq!(memory.peek_entry("user:2").await.unwrap().value, None);
    assert_eq!(a.stats().invalidations_pending, 0);
}

/// A shutdown runs the second deletes still scheduled: at once when their
/// time is past its bound, rather than never.
#[tokio::test]
async fn shutdown_runs_the_second_deletes_still_scheduled() {
    let store = Faulty::new(MemoryStore::new());
    let a = aside(store.clone(), None);
    let double = a
        .namespace::<u64, User>("dd")
        .strategy(Strategy::DoubleDelete {
            delay: Duration::from_secs(3600),
        })
        .build()
        .unwrap();
    double.invalidate(&1).await.unwrap();
    assert_eq!(store.calls("delete", "dd:1"), 1);
    let report = a.shutdown(Duration::from_secs(2)).await;
    assert_eq!((report.second_deletes, report.dropped), (1, 0), "{report:?}");
    assert_eq!(store.calls("delete", "dd:1"), 2);
}

/// Defect 4 of issue 12, through the engine: an invalidation of a key that
/// fails while that key's queued one is being replayed must be replayed
/// too (completing the first removed both: their ops are equal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_that_fails_during_the_replay_of_its_key_is_replayed_too() {
    let memory = MemoryStore::new();
    let store = Faulty::new(memory.clone());
    let a = aside(store.clone(), None);
    let users = users(&a);
    let db = Db::with_users(1);
    read(&users, &db, 1).await;

    store.fail("invalidate");
    assert!(users.invalidate(&1).await.is_err());
    // The replay's store call is held once the store has applied it...
    let replay = store.hold("invalidate", "user:1", ANY, true);
    store.heal("invalidate");
    replay.reached().await;
    // While it is held, the key is filled again from an old read, and a
    // newer invalidation of it fails and merges into the entry.
    memory
        .put_entry(
            "user:1",
            Bytes::from_static(b"filled by another process"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    store.fail("invalidate");
    assert!(users.invalidate(&1).await.is_err());
    store.heal("invalidate");
    replay.release();
    eventually("the newer invalidation is replayed", DEADLINE, || async {
        memory.peek_entry("user:1").await.unwrap().value.is_none()
    })
    .await;
    eventually("nothing is left", DEADLINE, || async {
        a.stats().invalidations_pending == 0
    })
    .await;
}

/// Suspected in issue 12, confirmed: the replay worker and the delayed
/// delete timer were spawned once, on the runtime of the first call that
/// needed them; once that runtime was shut down they were gone for good,
/// and later failures were never replayed, later second deletes never run.
#[test]
fn replays_and_second_deletes_outlive_the_runtime_that_started_them() {
    let memory = MemoryStore::new();
    let store = Faulty::new(memory.clone());
    let a = aside(store.clone(), None);
    let users = users(&a);
    let double = a
        .namespace::<u64, User>("dd")
        .strategy(Strategy::DoubleDelete {
            delay: Duration::from_millis(20),
        })
        .build()
        .unwrap();
    let db = Db::with_users(3);
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };

    runtime().block_on(async {
        read(&users, &db, 1).await;
        store.fail("invalidate");
        assert!(users.invalidate(&1).await.is_err());
        // The second delete of dd:1 is due after this runtime is gone.
        double.invalidate(&1).await.unwrap();
    });

    runtime().block_on(async {
        read(&users, &db, 2).await;
        assert!(users.invalidate(&2).await.is_err());
        store.heal("invalidate");
        double.invalidate(&2).await.unwrap();
        eventually("both invalidations are replayed", DEADLINE, || async {
            a.stats().invalidations_pending == 0
        })
        .await;
        for key in ["user:1", "user:2"] {
            assert_eq!(memory.peek_entry(key).await.unwrap().value, None, "{key}");
        }
        eventually("both second deletes ran", DEADLINE, || async {
            store.calls("delete", "dd:1") == 2 && store.calls("delete", "dd:2") == 2
        })
        .await;
    });
}

/// Defect 17 of issue 12, the timer half: second deletes ran one after
/// another on the timer task, so one slow delete (a store at its timeout)
/// held back every delete due after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_second_delete_holds_no_other_back() {
    let memory = MemoryStore::new();
    let store = Faulty::new(memory);
    let a = Aside::builder()
        .store(store.clone())
        .op_timeout(Duration::from_secs(60))
        .build();
    let double = a
        .namespace::<u64, User>("dd")
        .strategy(Strategy::DoubleDelete {
            delay: Duration::from_millis(20),
        })
        .build()
        .unwrap();
    let slow = store.hold("delete", "dd:1", 2, false);
    double.invalidate(&1).await.unwrap();
    double.invalidate(&2).await.unwrap();
    slow.reached().await;
    eventually("the second delete of dd:2 runs", DEADLINE, || async {
        store.calls("delete", "dd:2") == 2
    })
    .await;
    slow.release();
}

/// Suspected in issue 12 and defect 6b: a value read from the store before
/// the first bus subscription was up, installed in the L1 after it, missed
/// the invalidation published in between, and nothing evicted it. The
/// reset delivered once the subscription is up fences such fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_from_before_the_first_subscription_does_not_enter_the_l1() {
    let memory = MemoryStore::new();
    let bus = LocalBus::new(false);
    let store_b = Faulty::new(memory.clone());
    let a = aside(memory.clone(), Some(bus.clone()));
    let b = aside(store_b.clone(), Some(bus.clone()));
    let (users_a, users_b) = (users(&a), users(&b));
    let db = Db::with_users(1);
    // The row is cached at version 0.
    assert_eq!(read(&users_a, &db, 1).await, Some(User::new(1, 0)));

    // B reads it from the store, and is held with that answer...
    let held = store_b.hold("peek_entry", "user:1", 1, true);
    let reader = {
        let (users_b, db) = (users_b.clone(), db.clone());
        tokio::spawn(async move { read(&users_b, &db, 1).await })
    };
    held.reached().await;
    // ...while the row changes and A's invalidation is published: B's
    // subscription is not up yet, so it never sees it.
    db.put(User::new(1, 1));
    users_a.invalidate(&1).await.unwrap();
    // Then B's subscription comes up, and only then B installs what it read.
    let mut b_events = b.invalidations().unwrap();
    bus.open();
    subscribed(&users_a, &mut b_events).await;
    held.release();
    assert_eq!(reader.await.unwrap(), Some(User::new(1, 0)), "served as read");
    assert_eq!(
        read(&users_b, &db, 1).await,
        Some(User::new(1, 1)),
        "the old row entered B's L1 after the invalidation it missed"
    );
}

/// Defect 6c of issue 12: a process ignores its own bus messages, so two
/// namespaces of one name in one `Aside` never evicted each other's L1.
#[tokio::test]
async fn namespaces_of_one_name_in_one_aside_evict_each_other() {
    let a = aside(MemoryStore::new(), Some(LocalBus::new(true)));
    let (first, second) = (users(&a), users(&a));
    let mut events = a.invalidations().unwrap();
    subscribed(&first, &mut events).await;
    let db = Db::with_users(1);
    for ns in [&first, &second] {
        assert_eq!(read(ns, &db, 1).await, Some(User::new(1, 0)));
    }
    db.put(User::new(1, 1));
    first.invalidate(&1).await.unwrap();
    assert_eq!(read(&second, &db, 1).await, Some(User::new(1, 1)));
    second.set(&1, &User::new(1, 2)).await.unwrap();
    db.put(User::new(1, 2));
    assert_eq!(read(&first, &db, 1).await, Some(User::new(1, 2)));
}
