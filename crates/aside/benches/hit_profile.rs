//! Instructions per cache hit, for callgrind (issue 17): runs `N` hits of
//! one subject after a warm-up, on a current-thread runtime, and nothing
//! else, so that `(Ir(N2) - Ir(N1)) / (N2 - N1)` is the cost of one hit.
//!
//! ```text
//! hit_profile SUBJECT N
//! ```
//!
//! Subjects: `moka-get` (a raw `moka::sync::Cache<u64, Profile>::get`, the
//! floor), `memory` (`Namespace::get_or_load` on a `MemoryStore`), `l1`
//! (the same with an L1 in front of the memory store). `scripts/profile-hits`
//! runs it under valgrind and prints the table. A loader that runs during
//! the timed hits panics: every hit must be a hit.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aside::{Aside, MemoryStore, Namespace};
use serde::{Deserialize, Serialize};

const KEY: u64 = 42;
/// Loads during the timed hits: must stay 0.
static LOADS: AtomicU64 = AtomicU64::new(0);
const TTL: Duration = Duration::from_secs(3600);

/// The profile of `benches/hit.rs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    email: String,
    avatar: String,
}

fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: format!("User {id}"),
        email: format!("user{id}@example.com"),
        avatar: format!("https://avatars.example.com/u/{id}.png"),
    }
}

fn namespace(aside: &Aside, l1: bool) -> Namespace<u64, Profile> {
    let builder = aside.namespace::<u64, Profile>("profile").ttl(TTL).jitter(0.0);
    let builder = if l1 { builder.l1(10_000, TTL) } else { builder };
    builder.build().expect("namespace")
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let subject = args.next().unwrap_or_else(|| "memory".to_owned());
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match subject.as_str() {
        "moka-get" => {
            let moka: moka::sync::Cache<u64, Profile> = moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(TTL)
                .build();
            moka.insert(KEY, profile(KEY));
            for _ in 0..1_000 {
                black_box(moka.get(&KEY));
            }
            for _ in 0..n {
                let v = moka.get(black_box(&KEY));
                assert!(v.is_some());
                black_box(v);
            }
        }
        "memory" | "l1" => rt.block_on(async {
            let aside = Aside::builder().store(MemoryStore::new()).build();
            let ns = namespace(&aside, subject == "l1");
            let load = || async { Ok::<_, std::io::Error>(Some(profile(KEY))) };
            for _ in 0..1_000 {
                black_box(ns.get_or_load(&KEY, load).await.expect("warm-up"));
            }
            let counted = || async {
                LOADS.fetch_add(1, Ordering::Relaxed);
                Ok::<_, std::io::Error>(Some(profile(KEY)))
            };
            for _ in 0..n {
                let v = ns.get_or_load(black_box(&KEY), counted).await.expect("hit");
                assert!(v.is_some());
                black_box(v);
            }
            assert_eq!(LOADS.load(Ordering::Relaxed), 0, "a loader ran: not every read hit");
        }),
        "rss-moka" => {
            let before = rss();
            let moka: moka::sync::Cache<u64, Profile> = moka::sync::Cache::builder()
                .max_capacity(n.saturating_mul(2))
                .time_to_live(TTL)
                .build();
            for id in 0..n {
                moka.insert(id, profile(id));
            }
            moka.run_pending_tasks();
            assert_eq!(moka.entry_count(), n);
            report(&subject, n, before);
            black_box(&moka);
        }
        "rss-memory" | "rss-memory-bytes" => rt.block_on(async {
            let before = rss();
            let store = MemoryStore::with_capacity_bytes(u64::MAX / 2);
            let aside = Aside::builder().store(store.clone()).build();
            let ns = namespace(&aside, false);
            for id in 0..n {
                let v = ns.get_or_load(&id, || async move { Ok::<_, std::io::Error>(Some(profile(id))) });
                black_box(v.await.expect("load"));
            }
            assert_eq!(store.entry_count().await, n);
            if subject == "rss-memory" {
                // One hit each: the slots now hold decoded entries.
                for id in 0..n {
                    black_box(ns.get_or_load(&id, counted_loader(id)).await.expect("hit"));
                }
            }
            assert_eq!(LOADS.load(Ordering::Relaxed), 0, "a loader ran: not every read hit");
            store.entry_count().await;
            report(&subject, n, before);
            black_box(&store);
        }),
        other => panic!("unknown subject {other:?}: moka-get, memory, l1, rss-moka or rss-memory"),
    }
}

/// A loader that counts its calls (a hit runs none).
fn counted_loader(id: u64) -> impl FnMut() -> std::future::Ready<Result<Option<Profile>, std::io::Error>> {
    move || {
        LOADS.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(Some(profile(id))))
    }
}

/// Resident set size in bytes (`/proc/self/statm`, 4 KiB pages).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

/// Prints the resident bytes per entry added since `before`.
fn report(subject: &str, n: u64, before: u64) {
    let per = rss().saturating_sub(before) as f64 / n as f64;
    println!("{subject}: {n} entries, {per:.0} bytes/entry");
}
