//! Batch lookups against sequential ones, all hits (issue 4).
//!
//! Measures, in one criterion group (`batch_100_hits`) and one run, the cost
//! of reading 100 keys that are all cached (values: ~200-byte strings):
//!
//! - `redis/get_many_or_load`: one [`Namespace::get_many_or_load`] of the 100
//!   keys on a [`RedisStore`] (one pipelined round trip);
//! - `redis/sequential_get_or_load`: 100 sequential [`Namespace::get_or_load`]
//!   calls of the same keys (100 round trips);
//! - `memory/get_many_or_load` and `memory/sequential_get_or_load`: the same
//!   two on the in-process [`MemoryStore`], a baseline without the network.
//!
//! The bench starts its own `redis-server` on a free port (through
//! `aside_testkit::RedisServer`, killed at the end); it never touches a
//! shared Redis. The futures run on a tokio multi-thread runtime. The loaders
//! of the timed part count their calls, and the bench panics at the end if
//! any of them ran: every figure is a pure hit path.
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p aside --bench batch
//! ```
//!
//! Criterion reports the time of one iteration (100 keys) and, through the
//! throughput setting, keys per second.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aside::store::redis::RedisStore;
use aside::{Aside, MemoryStore, Namespace};
use aside_testkit::RedisServer;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime};
use tokio::runtime::Runtime;

/// Number of keys read per iteration.
const KEYS: u64 = 100;
/// Approximate size of each cached value, in bytes.
const VALUE_LEN: usize = 200;

/// The cached value of `key`: a `VALUE_LEN`-byte string.
fn value_of(key: u64) -> String {
    let mut v = format!("value-{key:04}-");
    while v.len() < VALUE_LEN {
        v.push(char::from(b'a' + (v.len() % 26) as u8));
    }
    v
}

/// Builds a namespace over `aside` and fills it with the `keys`, then checks
/// that every key now reads as a hit.
async fn warmed(aside: &Aside, keys: &[u64]) -> Namespace<u64, String> {
    let ns = aside
        .namespace::<u64, String>("bench:batch")
        .ttl(Duration::from_secs(3600))
        .jitter(0.0)
        .build()
        .expect("namespace");
    let loaded = ns
        .get_many_or_load(keys, |missing: Vec<u64>| async move {
            Ok::<_, std::io::Error>(missing.into_iter().map(|k| (k, value_of(k))).collect::<HashMap<_, _>>())
        })
        .await
        .expect("warm-up");
    assert_eq!(loaded.len(), keys.len(), "warm-up loaded every key");
    for &k in keys {
        let cached = ns.get(&k).await.expect("get");
        assert_eq!(
            cached.as_deref(),
            Some(value_of(k).as_str()),
            "key {k} is cached after warm-up"
        );
    }
    ns
}

/// Registers the two benchmarks (batch and sequential) of one store.
/// Returns the counter of loader calls made by the timed code.
fn bench_store(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    store: &str,
    ns: &Namespace<u64, String>,
    keys: &[u64],
) -> Arc<AtomicUsize> {
    let loads = Arc::new(AtomicUsize::new(0));

    group.bench_function(format!("{store}/get_many_or_load"), |b| {
        b.to_async(rt).iter(|| {
            let loads = loads.clone();
            async move {
                let found = ns
                    .get_many_or_load(black_box(keys), |missing: Vec<u64>| {
                        loads.fetch_add(missing.len().max(1), Ordering::Relaxed);
                        async { Ok::<_, std::io::Error>(HashMap::new()) }
                    })
                    .await
                    .expect("get_many_or_load");
                assert_eq!(found.len(), keys.len());
                black_box(found)
            }
        });
    });

    group.bench_function(format!("{store}/sequential_get_or_load"), |b| {
        b.to_async(rt).iter(|| {
            let loads = loads.clone();
            async move {
                for k in keys {
                    let v = ns
                        .get_or_load(black_box(k), || {
                            loads.fetch_add(1, Ordering::Relaxed);
                            async { Ok::<_, std::io::Error>(None) }
                        })
                        .await
                        .expect("get_or_load");
                    assert!(v.is_some());
                    black_box(v);
                }
            }
        });
    });

    loads
}

fn batch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let keys: Vec<u64> = (1..=KEYS).collect();

    // A private server: never the shared one on 6379.
    let server = RedisServer::start();
    let redis_ns = rt.block_on(async {
        let store = RedisStore::connect(&server.url()).await.expect("connect to redis");
        let aside = Aside::builder().store(store).build();
        warmed(&aside, &keys).await
    });
    let memory_ns = rt.block_on(async {
        let aside = Aside::builder().store(MemoryStore::new()).build();
        warmed(&aside, &keys).await
    });

    let mut group = c.benchmark_group("batch_100_hits");
    group
        .throughput(Throughput::Elements(KEYS))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    let redis_loads = bench_store(&mut group, &rt, "redis", &redis_ns, &keys);
    let memory_loads = bench_store(&mut group, &rt, "memory", &memory_ns, &keys);
    group.finish();

    let (redis_loads, memory_loads) = (redis_loads.load(Ordering::SeqCst), memory_loads.load(Ordering::SeqCst));
    assert!(
        redis_loads == 0 && memory_loads == 0,
        "a loader ran in the timed part (all keys should hit): redis {redis_loads} key loads, memory {memory_loads}"
    );

    drop((redis_ns, memory_ns));
    drop(rt);
    drop(server);
}

criterion_group!(benches, batch);
criterion_main!(benches);
