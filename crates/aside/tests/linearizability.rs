//! `Namespace::update` makes reads and updates of a key linearizable:
//! histories of three processes (three `Aside`s over one Redis) reading
//! through the cache, reading the database through `aside`
//! (`skip_cache`), and updating a few keys are checked per key by a
//! register checker (`aside_testkit::linearizability`). The same checker,
//! on the same load with writers that write the database and then
//! `invalidate`, finds violations: it can fail, and plain invalidation
//! keeps only its weaker promise.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::{Aside, FetchOptions, Namespace};
use aside_testkit::RedisServer;
use aside_testkit::linearizability::{self, Access, Operation};
use rand::{Rng, SeedableRng};

const PROCESSES: usize = 3;
const TASKS: usize = 3;
const KEYS: u64 = 3;
const OPS_PER_TASK: usize = 30;

#[derive(Debug)]
struct DbDown;

impl std::fmt::Display for DbDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("database down")
    }
}

impl std::error::Error for DbDown {}

/// How the writers write.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Writers {
    /// `update`, the database write inside it.
    Update,
    /// The database write, then `invalidate`.
    Invalidate,
}

/// The database (a version per key, each write the next) and the clock
/// every process reads its call and return times from.
#[derive(Default)]
struct World {
    rows: Mutex<HashMap<u64, u64>>,
    clock: AtomicU64,
    history: Mutex<HashMap<u64, Vec<Operation>>>,
}

impl World {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// A query taking a little while, so that reads and writes overlap.
    async fn read_row(&self, key: u64, delay_us: u64) -> Option<u64> {
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        let row = self.rows.lock().unwrap().get(&key).copied();
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        row
    }

    async fn write_row(&self, key: u64, delay_us: u64) -> u64 {
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        let version = {
            let mut rows = self.rows.lock().unwrap();
            let row = rows.entry(key).or_insert(0);
            *row += 1;
            *row
        };
        tokio::time::sleep(Duration::from_micros(delay_us)).await;
        version
    }

    fn record(&self, key: u64, call: u64, access: Access) {
        let ret = self.tick();
        self.history
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .push(Operation { call, ret, access });
    }
}

async fn namespace(url: &str, name: &str) -> Namespace<u64, u64> {
    let store = common::patient_redis(url).await;
    Aside::builder()
        .store(store)
        .op_timeout(Duration::from_secs(10))
        .build()
        .namespace::<u64, u64>(name)
        .lease_ttl(Duration::from_secs(2))
        // Short, so readers that find a fence or a lease often go to the
        // database: the path plain invalidation leaves a window for.
        .lease_wait(Duration::from_millis(5))
        .build()
        .unwrap()
}

async fn task(world: Arc<World>, ns: Namespace<u64, u64>, writers: Writers, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..OPS_PER_TASK {
        let key = rng.random_range(1..=KEYS);
        let delay = rng.random_range(0..2_000);
        let call = world.tick();
        match rng.random_range(0..100) {
            0..=54 => {
                let w = world.clone();
                let got = ns
                    .get_or_load(&key, || {
                        let w = w.clone();
                        async move { Ok::<_, DbDown>(w.read_row(key, delay).await) }
                    })
                    .await
                    .unwrap();
                world.record(key, call, Access::Read(got));
            }
            55..=74 => {
                let w = world.clone();
                let got = ns
                    .fetch_with(&key, FetchOptions::skip_cache(), || {
                        let w = w.clone();
                        async move { Ok::<_, DbDown>(w.read_row(key, delay).await) }
                    })
                    .await
                    .unwrap()
                    .value;
                world.record(key, call, Access::Read(got));
            }
            _ => {
                let written = match writers {
                    Writers::Update => {
                        let w = world.clone();
                        ns.update(
                            &key,
                            || async move { Ok::<_, DbDown>(Some(w.write_row(key, delay).await)) },
                        )
                        .await
                        .unwrap()
                    }
                    Writers::Invalidate => {
                        let version = world.write_row(key, delay).await;
                        // The application's work between its commit and
                        // its invalidation.
                        tokio::time::sleep(Duration::from_micros(delay)).await;
                        ns.invalidate(&key).await.unwrap();
                        Some(version)
                    }
                };
                world.record(key, call, Access::Write(written));
            }
        }
    }
}

/// Runs the load and checks every key; returns the keys whose history is
/// not linearizable, with the checker's report.
async fn run(url: &str, writers: Writers, round: u64) -> Vec<String> {
    let world = Arc::new(World::default());
    for key in 1..=KEYS {
        world.rows.lock().unwrap().insert(key, 0);
    }
    let mut tasks = Vec::new();
    for p in 0..PROCESSES {
        // A namespace per round and kind of writer: nothing cached before.
        let ns = namespace(url, &format!("reg-{writers:?}-{round}")).await;
        for t in 0..TASKS {
            let seed = round * 1_000 + (p * TASKS + t) as u64;
            tasks.push(tokio::spawn(task(world.clone(), ns.clone(), writers, seed)));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let history = world.history.lock().unwrap();
    let mut failures = Vec::new();
    for (key, ops) in history.iter() {
        if let Err(e) = linearizability::check(Some(0), ops) {
            failures.push(format!("key {key}: {e}"));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_updates_through_aside_are_linearizable() {
    let server = RedisServer::start();
    for round in 0..5 {
        let failures = run(&server.url(), Writers::Update, round).await;
        assert!(failures.is_empty(), "round {round}:\n{}", failures.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_finds_plain_invalidation_not_linearizable_under_the_same_load() {
    let server = RedisServer::start();
    let mut found = Vec::new();
    for round in 0..20 {
        found.extend(run(&server.url(), Writers::Invalidate, round).await);
        if !found.is_empty() {
            break;
        }
    }
    println!("plain invalidation: {} non-linearizable key histories", found.len());
    assert!(
        !found.is_empty(),
        "the checker found nothing to report on plain invalidation in 20 rounds"
    );
}

/// A namespace over the memory store whose readers wait up to 60 s on a
/// lease: a reader that returns during an update did not wait on its fence.
fn patient_memory() -> Namespace<u64, u64> {
    Aside::builder()
        .store(aside::MemoryStore::new())
        .build()
        .namespace::<u64, u64>("reg")
        .lease_wait(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Lets every task of this current-thread runtime run until it waits on
/// something only the test releases.
async fn let_tasks_run() {
    for _ in 0..1_000 {
        tokio::task::yield_now().await;
    }
}

/// An update of key 1 writing `row`, started and held inside its
/// database write (its fence taken) until the gate gets a permit.
async fn held_update(
    ns: &Namespace<u64, u64>,
    row: u64,
) -> (
    Arc<tokio::sync::Semaphore>,
    tokio::task::JoinHandle<aside::Result<Option<u64>>>,
) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let update = tokio::spawn({
        let (ns, gate) = (ns.clone(), gate.clone());
        async move {
            ns.update(&1, || async move {
                gate.acquire().await.unwrap().forget();
                Ok::<_, DbDown>(Some(row))
            })
            .await
        }
    });
    let_tasks_run().await;
    (gate, update)
}

#[tokio::test(flavor = "current_thread")]
async fn an_update_waits_for_the_fence_of_another_update_of_the_key() {
    let ns = patient_memory();
    let (gate, first) = held_update(&ns, 1).await;
    let second_began = Arc::new(AtomicU64::new(0));
    let second = tokio::spawn({
        let (ns, began) = (ns.clone(), second_began.clone());
        async move {
            ns.update(&1, || async move {
                began.fetch_add(1, Ordering::SeqCst);
                Ok::<_, DbDown>(Some(2))
            })
            .await
        }
    });
    let_tasks_run().await;
    assert_eq!(
        second_began.load(Ordering::SeqCst),
        0,
        "the second update wrote while the first one's fence held"
    );
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), Some(1));
    assert_eq!(second.await.unwrap().unwrap(), Some(2));
    assert_eq!(ns.peek(&1).await.unwrap(), Some(2), "the later update's row is cached");
}

#[tokio::test(flavor = "current_thread")]
async fn during_an_update_no_reader_is_served_the_cached_old_row() {
    let ns = patient_memory();
    ns.set(&1, &0).await.unwrap();
    let (gate, update) = held_update(&ns, 1).await;
    assert_eq!(ns.peek(&1).await.unwrap(), None, "the fence removed the old row");
    let reader = tokio::spawn({
        let ns = ns.clone();
        async move { ns.get_or_load(&1, || async { Ok::<_, DbDown>(Some(1)) }).await }
    });
    let_tasks_run().await;
    assert!(!reader.is_finished(), "the reader waits on the fence");
    gate.add_permits(1);
    assert_eq!(update.await.unwrap().unwrap(), Some(1));
    assert_eq!(reader.await.unwrap().unwrap(), Some(1), "woken by the fence's fill");
}
