//! The cost of a hit per tier: L1 against Redis against a bare moka read.
//!
//! Measures, in one criterion group (`tiers_hit`) and one run, one cached
//! read of a ~200-byte string value:
//!
//! - `l1/get_or_load`: [`Namespace::get_or_load`] on a namespace with an
//!   L1 (`.l1(..)`) over a [`RedisStore`]; the value is in the L1, so the
//!   read never leaves the process;
//! - `redis/get_or_load`: the same call on a namespace without L1 over the
//!   same Redis (one round trip);
//! - `moka/get`: a raw `moka::sync::Cache<String, String>::get` of a
//!   prebuilt key, returning a clone of a value of the same size: the floor
//!   under the L1 (which also builds the key and counts the hit), with the
//!   L1's time-to-live.
//!
//! The bench starts its own `redis-server` on a free port (through
//! `aside_testkit::RedisServer`, killed at the end); it never touches a
//! shared Redis. The futures run on a tokio multi-thread runtime. The
//! loaders of the timed part count their calls, and the bench panics at
//! the end if any ran, or if the L1 namespace's hits did not come from its
//! L1: every figure is a pure hit path of its tier.
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p aside --bench tiers
//! ```
//!
//! Medians and their 95% confidence intervals are in
//! `target/criterion/tiers_hit/*/new/estimates.json` (`median`).

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aside::store::redis::RedisStore;
use aside::{Aside, Namespace};
mod support;

use aside_testkit::RedisServer;
use criterion::{Criterion, criterion_group, criterion_main};

/// Approximate size of the cached value, in bytes.
const VALUE_LEN: usize = 200;
/// The key every benchmark reads.
const KEY: u64 = 42;

/// The cached value of `key`: a `VALUE_LEN`-byte string.
fn value_of(key: u64) -> String {
    let mut v = format!("value-{key:04}-");
    while v.len() < VALUE_LEN {
        v.push(char::from(b'a' + (v.len() % 26) as u8));
    }
    v
}

/// A namespace over `aside`, with an L1 or not, holding `KEY`.
async fn warmed(aside: &Aside, name: &str, l1: bool) -> Namespace<u64, String> {
    let mut builder = aside
        .namespace::<u64, String>(name)
        .ttl(Duration::from_secs(3600))
        .jitter(0.0);
    if l1 {
        builder = builder.l1(10_000, Duration::from_secs(3600));
    }
    let ns = builder.build().expect("namespace");
    let v = ns
        .get_or_load(&KEY, || async { Ok::<_, std::io::Error>(Some(value_of(KEY))) })
        .await
        .expect("warm-up");
    assert_eq!(v.as_deref(), Some(value_of(KEY).as_str()));
    // The L1 is filled by the read after the store fill.
    let again = ns
        .get_or_load(&KEY, || async { Ok::<_, std::io::Error>(None) })
        .await
        .expect("warm read");
    assert_eq!(again.as_deref(), Some(value_of(KEY).as_str()), "cached after warm-up");
    ns
}

fn tiers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    // A private server: never the shared one on 6379.
    let server = RedisServer::start();
    let (l1_aside, l1_ns, redis_aside, redis_ns) = rt.block_on(async {
        let connect = || async { RedisStore::connect(&server.url()).await.expect("connect to redis") };
        let l1_aside = Aside::builder().store(connect().await).build();
        let redis_aside = Aside::builder().store(connect().await).build();
        let l1_ns = warmed(&l1_aside, "bench:tiers:l1", true).await;
        let redis_ns = warmed(&redis_aside, "bench:tiers:redis", false).await;
        (l1_aside, l1_ns, redis_aside, redis_ns)
    });
    let moka: moka::sync::Cache<String, String> = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(3600))
        .build();
    let moka_key = l1_ns.store_key(&KEY).expect("store key");
    moka.insert(moka_key.clone(), value_of(KEY));

    let (l1_before, redis_l1_before) = (l1_aside.stats().l1_hits, redis_aside.stats().l1_hits);
    let mut group = c.benchmark_group("tiers_hit");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    let l1_loads = support::bench_get_or_load(&mut group, &rt, "l1", &l1_ns, KEY);
    let redis_loads = support::bench_get_or_load(&mut group, &rt, "redis", &redis_ns, KEY);
    group.bench_function("moka/get", |b| {
        b.iter(|| {
            let v = moka.get(black_box(moka_key.as_str()));
            debug_assert!(v.is_some());
            black_box(v)
        });
    });
    group.finish();

    let (l1_loads, redis_loads) = (l1_loads.load(Ordering::SeqCst), redis_loads.load(Ordering::SeqCst));
    assert!(
        l1_loads == 0 && redis_loads == 0,
        "a loader ran in the timed part (every read should hit): l1 {l1_loads}, redis {redis_loads}"
    );
    let (l1_stats, redis_stats) = (l1_aside.stats(), redis_aside.stats());
    assert!(
        l1_stats.l1_hits > l1_before && l1_stats.l1_hits == l1_stats.hits,
        "every hit of the L1 namespace came from its L1: {l1_stats:?}"
    );
    assert_eq!(redis_stats.l1_hits, redis_l1_before, "the Redis namespace has no L1");

    drop((l1_ns, redis_ns, l1_aside, redis_aside));
    drop(rt);
    drop(server);
}

criterion_group!(benches, tiers);
criterion_main!(benches);
