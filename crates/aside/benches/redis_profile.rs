//! What one Redis hit costs the client, in instructions, piece by piece
//! (issue 17): the target `scripts/profile-hits` runs under callgrind.
//!
//! Throughput on this 2-core machine spreads by ±10 % between equal
//! subjects, more under load; callgrind's instruction counts do not move
//! with the load (the server runs natively, outside valgrind: only the
//! client is counted). Each subject runs `N` hits of one cached profile
//! after a warm-up, on a current-thread runtime; the script runs every
//! subject at two `N` and divides the difference of the totals by the
//! difference of `N`, which cancels start-up, connection and warm-up.
//!
//! ```text
//! cargo bench -p aside --bench redis_profile --no-run
//! scripts/profile-hits
//! ```
//!
//! Subjects (each checks every answer, so a miss cannot pass for a hit):
//!
//! - `raw-get`: the floor, redis-rs `GET` + `serde_json::from_slice` on a
//!   `ConnectionManager` with RedisStore's default timeouts;
//! - `raw-hmget`: the same, but the command aside's hit sends (`HMGET` of
//!   the value, its stale flag and its lease) and the envelope opened;
//! - `store-peek`: `RedisStore::peek_entry` alone (the store's connection
//!   wrapper, no engine);
//! - `aside`: `Namespace::get_or_load` on a `RedisStore`, the default
//!   strategy (lease, single-flight, breaker, operation timeout).
//!
//! It starts its own `redis-server` on a free port and never touches
//! another.

use std::time::Duration;

use aside::store::Store;
use aside::store::redis::{RedisConfig, RedisStore};
use aside::{Aside, Namespace};
use aside_testkit::RedisServer;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

mod fixture;
use fixture::{Profile, profile};

const TTL: Duration = Duration::from_secs(3600);
const KEY: u64 = 42;
const WARM_UP: u64 = 200;

fn check(found: Option<Profile>) {
    assert_eq!(found.map(|p| p.id), Some(KEY), "not a hit");
}

async fn raw_connection(url: &str) -> ConnectionManager {
    let defaults = RedisConfig::default();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(defaults.connect_timeout))
        .set_response_timeout(Some(defaults.response_timeout));
    let client = redis::Client::open(url).expect("url");
    ConnectionManager::new_with_config(client, config)
        .await
        .expect("connect")
}

async fn run(subject: &str, n: u64, url: &str) {
    let total = WARM_UP + n;
    match subject {
        "raw-get" => {
            let mut conn = raw_connection(url).await;
            let json = serde_json::to_vec(&profile(KEY)).expect("json");
            let _: () = conn.set_ex("raw:42", json, TTL.as_secs()).await.expect("SETEX");
            for _ in 0..total {
                let bytes: Option<Vec<u8>> = conn.get("raw:42").await.expect("GET");
                check(bytes.map(|b| serde_json::from_slice(&b).expect("decode")));
            }
        }
        "raw-hmget" | "raw-hget" | "store-peek" | "aside" => {
            let store = RedisStore::connect(url).await.expect("connect");
            let mut conn = raw_connection(url).await;
            let aside = Aside::builder().store(store.clone()).build();
            let ns: Namespace<u64, Profile> = aside
                .namespace("profile")
                .ttl(TTL)
                .jitter(0.0)
                .build()
                .expect("namespace");
            let loaded = ns
                .get_or_load(&KEY, || async { Ok::<_, std::io::Error>(Some(profile(KEY))) })
                .await
                .expect("fill");
            check(loaded);
            let full = "profile:42";
            for _ in 0..total {
                match subject {
                    "raw-hmget" => {
                        let (value, _stale, _lease): (Option<Vec<u8>>, Option<Vec<u8>>, Option<u64>) =
                            redis::cmd("HMGET")
                                .arg(full)
                                .arg("v")
                                .arg("s")
                                .arg("t")
                                .query_async(&mut conn)
                                .await
                                .expect("HMGET");
                        let value = value.expect("cached");
                        let (_, payload) = aside::envelope::open(&value, 1).expect("envelope");
                        check(Some(serde_json::from_slice(payload).expect("decode")));
                    }
                    "raw-hget" => {
                        let value: Option<Vec<u8>> = redis::cmd("HGET")
                            .arg(full)
                            .arg("v")
                            .query_async(&mut conn)
                            .await
                            .expect("HGET");
                        let value = value.expect("cached");
                        let (_, payload) = aside::envelope::open(&value, 1).expect("envelope");
                        check(Some(serde_json::from_slice(payload).expect("decode")));
                    }
                    "store-peek" => {
                        let view = store.peek_entry(full).await.expect("peek");
                        let value = view.value.expect("cached");
                        let (_, payload) = aside::envelope::open(&value, 1).expect("envelope");
                        check(Some(serde_json::from_slice(payload).expect("decode")));
                    }
                    _ => {
                        let found = ns
                            .get_or_load(&KEY, || async {
                                panic!("the loader ran: not a hit");
                                #[allow(unreachable_code)]
                                Ok::<_, std::io::Error>(None)
                            })
                            .await
                            .expect("get_or_load");
                        check(found);
                    }
                }
            }
        }
        other => panic!("unknown subject {other}: raw-get, raw-hmget, store-peek or aside"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    // `cargo bench` runs every bench target with `--bench`: nothing to
    // profile then; the script passes a subject and a count.
    let [subject, n] = args.as_slice() else {
        eprintln!("usage: redis_profile SUBJECT N (see scripts/profile-hits)");
        return;
    };
    let n: u64 = n.parse().expect("N: a number");
    let server = RedisServer::start();
    let url = server.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(subject, n, &url));
    drop(rt);
    drop(server);
}
