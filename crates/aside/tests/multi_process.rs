//! Leases across OS processes: four processes, fifty readers each, one
//! missing hot key in one Redis (or, with the `memcached` feature, one
//! memcached), and exactly one load in total.
//!
//! The parent test re-runs this test binary as its children (selected with
//! `--exact` and marked by an environment variable). Start and readiness
//! are signalled through Redis lists (`BLPOP`), so nobody sleeps to wait.

mod common;

use std::process::Command;
use std::time::Duration;

use aside::Strategy;
use aside_testkit::RedisServer;

const PROCESSES: usize = 4;
const READERS_PER_PROCESS: usize = 50;
const CHILD_ENV: &str = "ASIDE_MULTI_PROCESS_CHILD_URL";
/// The memcached the children cache in; Redis then only coordinates them.
const MEMCACHED_ENV: &str = "ASIDE_MULTI_PROCESS_CHILD_MEMCACHED";
const TEST_NAME: &str = "four_processes_load_a_missing_hot_key_once";

async fn child(url: &str) {
    // A store call that timed out would be a miss, and its reader a second load.
    let builder = common::patient_builder();
    let builder = match std::env::var(MEMCACHED_ENV) {
        #[cfg(feature = "memcached")]
        Ok(addr) => builder.store(common::patient_memcached(&addr).await),
        _ => builder.store(common::patient_redis(url).await),
    };
    let aside = builder.build();
    let hot = aside
        .namespace::<str, String>("hot")
        .strategy(Strategy::Lease)
        .build()
        .unwrap();
    let mut conn = common::redis_conn(url).await;
    let _: () = redis::cmd("RPUSH")
        .arg("ready")
        .arg(std::process::id())
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: Option<(String, String)> = redis::cmd("BLPOP")
        .arg("go")
        .arg(30)
        .query_async(&mut conn)
        .await
        .unwrap();

    let mut readers = Vec::new();
    for _ in 0..READERS_PER_PROCESS {
        let (hot, url) = (hot.clone(), url.to_owned());
        readers.push(tokio::spawn(async move {
            hot.get_or_load("key", || {
                let url = url.clone();
                async move {
                    let mut conn = common::redis_conn(&url).await;
                    let _: i64 = redis::cmd("INCR").arg("loads").query_async(&mut conn).await?;
                    // The slow database query every process is waiting on.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, redis::RedisError>(Some("value".to_string()))
                }
            })
            .await
        }));
    }
    for r in readers {
        assert_eq!(r.await.unwrap().unwrap().as_deref(), Some("value"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_load_a_missing_hot_key_once() {
    if let Ok(url) = std::env::var(CHILD_ENV) {
        child(&url).await;
        return;
    }
    parent(TEST_NAME, None).await;
}

#[cfg(feature = "memcached")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_on_memcached_load_a_missing_hot_key_once() {
    if let Ok(url) = std::env::var(CHILD_ENV) {
        child(&url).await;
        return;
    }
    let memcached = aside_testkit::MemcachedServer::start();
    parent(
        "four_processes_on_memcached_load_a_missing_hot_key_once",
        Some(&memcached.addr()),
    )
    .await;
    use aside::store::Store;
    let store = common::patient_memcached(&memcached.addr()).await;
    let cached = store.get_entry("hot:key").await.unwrap();
    assert!(cached.is_some(), "the children cached in memcached");
}

/// Starts the children (this binary running `test`), releases them
/// together, and checks that one of them loaded, once.
async fn parent(test: &str, memcached: Option<&str>) {
    let server = RedisServer::start();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            let mut cmd = Command::new(&exe);
            cmd.args(["--exact", test, "--nocapture", "--test-threads", "1"])
                .env(CHILD_ENV, server.url())
                .stdout(std::process::Stdio::null());
            if let Some(addr) = memcached {
                cmd.env(MEMCACHED_ENV, addr);
            }
            cmd.spawn().unwrap()
        })
        .collect();
    let mut conn = common::redis_conn(&server.url()).await;
    for _ in 0..PROCESSES {
        let ready: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("ready")
            .arg(30)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ready.is_some(), "a child process did not get ready");
    }
    for _ in 0..PROCESSES {
        let _: () = redis::cmd("RPUSH")
            .arg("go")
            .arg(1)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    for mut child in children {
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "a child process failed");
    }
    let loads: i64 = redis::cmd("GET").arg("loads").query_async(&mut conn).await.unwrap();
    assert_eq!(
        loads,
        1,
        "{} readers in {PROCESSES} processes, one load",
        PROCESSES * READERS_PER_PROCESS
    );
}
