//! What a blackholed Redis costs a read, once the breaker is open: the
//! latency of `get_or_load` against the loader called alone.
//!
//! ```sh
//! cargo run --release -p aside --example outage_cost [-- READS]
//! ```
//!
//! Starts a `redis-server` of its own behind the test kit's fault proxy,
//! warms one key, blackholes the proxy, reads until the breaker opens
//! (each of those reads costs at most the operation timeout), then times
//! `READS` reads (default 200,000) through aside and as many calls of the
//! loader alone, interleaved in blocks of 1,000 so both see the same
//! machine. The loader answers from memory, so the difference is aside's
//! whole cost on a skipped store. Prints percentiles in microseconds.
//!
//! Then, on a second proxy, a Redis that answers 200 ms late: how many
//! reads until the breaker opens on latency, and how long after the
//! latency goes away the first hit comes back (the background probe closes
//! the breaker).

use std::time::{Duration, Instant};

use aside::store::redis::{RedisConfig, RedisStore};
use aside::{Aside, BreakerState};
use aside_testkit::RedisServer;
use aside_testkit::proxy::FaultProxy;

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
}

async fn load(id: u64) -> Result<Option<User>, std::io::Error> {
    Ok(Some(User {
        id,
        name: format!("user {id}"),
    }))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn report(what: &str, mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort_unstable();
    let (p50, p99, p999) = (
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
    );
    println!(
        "{what:<34} p50 {p50:>8.2} µs   p99 {p99:>8.2} µs   p99.9 {p999:>8.2} µs   max {:>9.2} µs",
        samples.last().map_or(0.0, |d| d.as_secs_f64() * 1e6)
    );
    (p50, p99)
}

#[tokio::main]
async fn main() {
    let reads: usize = std::env::args()
        .nth(1)
        .map_or(200_000, |n| n.parse().expect("READS is a number"));
    let server = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let mut config = RedisConfig::default();
    config.fill_channel = None;
    let store = RedisStore::connect_with(&proxy.redis_url(), config)
        .await
        .expect("connect through the proxy");
    let aside = Aside::builder().store(store).build();
    let users = aside.namespace::<u64, User>("user").build().expect("a namespace");
    users.get_or_load(&1, || load(1)).await.expect("warm");

    proxy.blackhole();
    let mut opening = Vec::new();
    while aside.breaker_state() == BreakerState::Closed {
        let started = Instant::now();
        users.get_or_load(&1, || load(1)).await.expect("reads never fail");
        opening.push(started.elapsed());
    }
    println!(
        "breaker opened after {} reads (each bounded by the 250 ms operation timeout)",
        opening.len()
    );
    report("reads until it opened", opening);

    let (mut through_aside, mut alone) = (Vec::with_capacity(reads), Vec::with_capacity(reads));
    let mut id = 0u64;
    while through_aside.len() < reads {
        for _ in 0..1_000 {
            id = id % 10_000 + 1;
            let started = Instant::now();
            std::hint::black_box(users.get_or_load(&id, || load(id)).await.expect("reads never fail"));
            through_aside.push(started.elapsed());
        }
        for _ in 0..1_000 {
            id = id % 10_000 + 1;
            let started = Instant::now();
            std::hint::black_box(load(id).await.expect("the loader"));
            alone.push(started.elapsed());
        }
    }
    assert_ne!(aside.breaker_state(), BreakerState::Closed, "still blackholed");
    let stats = aside.stats();
    let (a50, a99) = report("get_or_load, Redis blackholed", through_aside);
    let (l50, l99) = report("the loader alone", alone);
    println!(
        "added by aside with the breaker open: p50 {:.2} µs, p99 {:.2} µs ({} store calls skipped, {} store errors in all)",
        a50 - l50,
        a99 - l99,
        stats.store_skipped,
        stats.store_errors
    );
    slow_redis(&server).await;
}

/// A Redis 200 ms late: reads until the breaker opens, then the time from
/// the latency's end to the first hit.
async fn slow_redis(server: &RedisServer) {
    let proxy = FaultProxy::start(([127, 0, 0, 1], server.port()).into()).await;
    let mut config = RedisConfig::default();
    config.fill_channel = None;
    config.response_timeout = Duration::from_secs(1);
    let store = RedisStore::connect_with(&proxy.redis_url(), config)
        .await
        .expect("connect through the proxy");
    let aside = Aside::builder().store(store).op_timeout(Duration::from_secs(1)).build();
    let users = aside.namespace::<u64, User>("slow").build().expect("a namespace");
    users.get_or_load(&1, || load(1)).await.expect("warm");
    proxy.set_latency(Duration::from_millis(200));
    let mut reads = 0;
    while aside.breaker_state() == BreakerState::Closed {
        users.get_or_load(&1, || load(1)).await.expect("reads never fail");
        reads += 1;
    }
    println!("200 ms of latency: the breaker opened after {reads} reads");
    proxy.set_latency(Duration::ZERO);
    let healed = Instant::now();
    loop {
        let fetched = users.fetch(&1, || load(1)).await.expect("reads never fail");
        if fetched.source == aside::Source::Hit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "latency gone: first hit after {:.0} ms (the breaker probes every `open_for`, 1 s by default)",
        healed.elapsed().as_secs_f64() * 1e3
    );
}
