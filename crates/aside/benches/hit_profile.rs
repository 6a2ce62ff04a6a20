//! Instructions per cache hit, for callgrind (issue 17): runs `N` hits of
//! one subject after a warm-up, on a current-thread runtime, and nothing
//! else, so that `(Ir(N2) - Ir(N1)) / (N2 - N1)` is the cost of one hit.
//!
//! ```text
//! hit_profile SUBJECT N
//! ```
//!
//! Subjects: `moka-get` (a raw `moka::sync::Cache<u64, Profile>::get`, the
//! floor) and `memory` (`Namespace::get_or_load` on a `MemoryStore`); the
//! L1's are in `l1_profile`, memory per entry in `aside bench --scenario
//! memory`. `scripts/profile-hits`
//! runs it under valgrind and prints the table. A loader that runs during
//! the timed hits panics: every hit must be a hit.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aside::{Aside, MemoryStore, Namespace};

mod fixture;
use fixture::{Profile, profile};

const KEY: u64 = 42;
/// Loads during the timed hits: must stay 0.
static LOADS: AtomicU64 = AtomicU64::new(0);
const TTL: Duration = Duration::from_secs(3600);

fn namespace(aside: &Aside) -> Namespace<u64, Profile> {
    aside
        .namespace::<u64, Profile>("profile")
        .ttl(TTL)
        .jitter(0.0)
        .build()
        .expect("namespace")
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
        "memory" => rt.block_on(async {
            let aside = Aside::builder().store(MemoryStore::new()).build();
            let ns = namespace(&aside);
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
        other => panic!("unknown subject {other:?}: moka-get or memory (the L1: l1_profile)"),
    }
}
