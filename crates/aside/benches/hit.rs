//! The cost of one cache hit, against the floors a hand-written cache would
//! have (issue 7).
//!
//! Four criterion groups, each measured in one run so its rows compare:
//!
//! - `envelope`: [`envelope::seal`] and [`envelope::open`] of a profile's
//!   JSON (~130 bytes): what aside adds to every stored value.
//! - `memory_hit`: [`Namespace::get_or_load`] on a [`MemoryStore`] against
//!   a raw `moka::sync::Cache<u64, Profile>::get`, the in-process floor
//!   (with a time-to-live, as any cache of database rows has).
//! - `redis_hit`: [`Namespace::get_or_load`] on a [`RedisStore`] against a
//!   raw redis-rs `GET` plus the same `serde_json` decode, both on a
//!   `ConnectionManager` to the same server.
//! - `single_flight_hit`: the same memory-store hit with single-flight on
//!   (`Stampede::Coalesce`, the default) and off (`Stampede::None`): what
//!   coalescing costs a read that never loads.
//!
//! The bench starts its own `redis-server` on a free port (through
//! `aside_testkit::RedisServer`, killed at the end); it never touches a
//! shared Redis. Loaders of the timed part count their calls, and the bench
//! panics at the end if any ran: every figure is a pure hit.
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p aside --bench hit
//! ```
//!
//! Medians and their 95% confidence intervals are in
//! `target/criterion/<group>/<row>/new/estimates.json` (`median`).

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aside::envelope::{self, Header};
use aside::store::redis::RedisStore;
use aside::{Aside, MemoryStore, Namespace, Stampede};
mod fixture;
mod support;

use aside_testkit::RedisServer;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime};
use fixture::{Profile, profile};
use redis::AsyncCommands;

/// The key every benchmark reads.
const KEY: u64 = 42;
const TTL: Duration = Duration::from_secs(3600);

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
}

/// A namespace of profiles on `aside` holding `KEY`.
async fn warmed(aside: &Aside, name: &str, stampede: Stampede) -> Namespace<u64, Profile> {
    let ns = aside
        .namespace::<u64, Profile>(name)
        .ttl(TTL)
        .jitter(0.0)
        .stampede(stampede)
        .build()
        .expect("namespace");
    let v = ns
        .get_or_load(&KEY, || async { Ok::<_, std::io::Error>(Some(profile(KEY))) })
        .await
        .expect("warm-up");
    assert_eq!(v, Some(profile(KEY)));
    ns
}

fn envelope_group(c: &mut Criterion) {
    let payload = serde_json::to_vec(&profile(KEY)).expect("json");
    let header = Header::new(1, Some(TTL), Duration::from_micros(1200));
    let sealed = envelope::seal(&header, &payload);
    let mut group = c.benchmark_group("envelope");
    configure(&mut group);
    group.bench_function("seal", |b| {
        b.iter(|| black_box(envelope::seal(black_box(&header), black_box(&payload))))
    });
    group.bench_function("open", |b| {
        b.iter(|| black_box(envelope::open(black_box(&sealed), 1).expect("open").1.len()))
    });
    group.finish();
}

fn hits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let server = RedisServer::start();
    let url = server.url();
    let (memory_ns, plain_ns, redis_ns, mut raw) = rt.block_on(async {
        let memory = Aside::builder().store(MemoryStore::new()).build();
        let redis = Aside::builder()
            .store(RedisStore::connect(&url).await.expect("connect"))
            .build();
        let memory_ns = warmed(&memory, "bench:hit:memory", Stampede::Coalesce).await;
        let plain_ns = warmed(&memory, "bench:hit:plain", Stampede::None).await;
        let redis_ns = warmed(&redis, "bench:hit:redis", Stampede::Coalesce).await;
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut raw = redis::aio::ConnectionManager::new(client).await.expect("connect");
        let json = serde_json::to_vec(&profile(KEY)).expect("json");
        let _: () = raw.set_ex("raw:42", json, TTL.as_secs()).await.expect("SETEX");
        (memory_ns, plain_ns, redis_ns, raw)
    });
    let moka: moka::sync::Cache<u64, Profile> = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(3600))
        .build();
    moka.insert(KEY, profile(KEY));

    let mut loads = Vec::new();
    let mut group = c.benchmark_group("memory_hit");
    configure(&mut group);
    loads.push(support::bench_get_or_load(
        &mut group,
        &rt,
        "aside/get_or_load",
        &memory_ns,
        KEY,
    ));
    group.bench_function("moka/get", |b| {
        b.iter(|| {
            let v = moka.get(black_box(&KEY));
            debug_assert!(v.is_some());
            black_box(v)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("redis_hit");
    configure(&mut group);
    loads.push(support::bench_get_or_load(
        &mut group,
        &rt,
        "aside/get_or_load",
        &redis_ns,
        KEY,
    ));
    group.bench_function("redis-rs/get+decode", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw.clone();
            async move {
                let bytes: Option<Vec<u8>> = conn.get(black_box("raw:42")).await.expect("GET");
                let v: Profile = serde_json::from_slice(&bytes.expect("cached")).expect("decode");
                black_box(v)
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("single_flight_hit");
    configure(&mut group);
    loads.push(support::bench_get_or_load(&mut group, &rt, "coalesce", &memory_ns, KEY));
    loads.push(support::bench_get_or_load(&mut group, &rt, "none", &plain_ns, KEY));
    group.finish();

    let ran: usize = loads.iter().map(|l| l.load(Ordering::SeqCst)).sum();
    assert_eq!(ran, 0, "a loader ran in the timed part: every read should hit");
    rt.block_on(async {
        let _: () = raw.del("raw:42").await.expect("DEL");
    });
    drop((memory_ns, plain_ns, redis_ns, raw));
    drop(rt);
    drop(server);
}

criterion_group!(benches, envelope_group, hits);
criterion_main!(benches);
