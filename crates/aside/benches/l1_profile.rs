//! Instruction counts of one L1 hit, for `valgrind --tool=callgrind`.
//!
//! Wall-clock benches of a ~100 ns operation drift by more than the
//! changes worth measuring on a shared machine; callgrind's instruction
//! counts do not. This target does `N` hits of one subject after a
//! warm-up, so the cost of one hit is the difference of two runs'
//! totals over the difference of their `N`:
//!
//! ```text
//! cargo bench -p aside --bench l1_profile --no-run   # prints the binary's path
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/a.out <binary> l1 100000
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/b.out <binary> l1 200000
//! # instructions per hit = (Ir(b) - Ir(a)) / 100000 (the `totals:` line)
//! ```
//!
//! Subjects (both read the same 1,000 user-profile-like values, cycling
//! through the keys, on a current-thread runtime for `l1`):
//!
//! - `moka-get`: a raw `moka::sync::Cache<u64, User>::get`, the floor;
//! - `l1`: `Namespace::get_or_load` hitting the namespace's L1 (over a
//!   `MemoryStore`, which the hits never reach).

use std::hint::black_box;
use std::time::Duration;

use aside::{Aside, MemoryStore};

/// Distinct keys read, in turn.
const KEYS: u64 = 1_000;
/// The TTL of every copy: far longer than a run.
const TTL: Duration = Duration::from_secs(3600);

/// A user profile, shaped as `aside bench`'s.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct User {
    id: i64,
    name: String,
    email: String,
    avatar: String,
}

fn user(id: u64) -> User {
    User {
        id: id as i64,
        name: format!("User {id}"),
        email: format!("user{id}@example.com"),
        avatar: format!("https://example.com/avatars/{id}.png"),
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(subject), Some(n)) = (args.next(), args.next()) else {
        eprintln!("usage: l1_profile moka-get|l1|l1-short-ttl N");
        std::process::exit(2);
    };
    let n: u64 = n.parse().expect("N is a number");
    match subject.as_str() {
        "moka-get" => moka_get(n),
        "l1" => l1(n, TTL),
        // The L1's TTL shorter than its values' life, as it usually is (a
        // minute in front of an hour): its copies carry no deadline of
        // their own, and a hit reads no clock.
        "l1-short-ttl" => l1(n, TTL / 60),
        other => {
            eprintln!("unknown subject {other:?}: moka-get, l1 or l1-short-ttl");
            std::process::exit(2);
        }
    }
}

fn moka_get(n: u64) {
    let cache: moka::sync::Cache<u64, User> = moka::sync::Cache::builder()
        .max_capacity(KEYS * 2)
        .time_to_live(TTL)
        .build();
    for id in 0..KEYS {
        cache.insert(id, user(id));
    }
    let mut found = 0u64;
    for i in 0..KEYS + n {
        found += u64::from(cache.get(black_box(&(i % KEYS))).is_some());
    }
    assert_eq!(found, KEYS + n, "every read hit");
}

/// `n` L1 hits, the L1's TTL `l1_ttl`.
fn l1(n: u64, l1_ttl: Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let aside = Aside::builder().store(MemoryStore::new()).build();
        let ns = aside
            .namespace::<u64, User>("user")
            .ttl(TTL)
            .jitter(0.0)
            .l1(KEYS * 2, l1_ttl)
            .build()
            .expect("namespace");
        // The store is filled by the first read, the L1 by the second.
        for _ in 0..2 {
            for id in 0..KEYS {
                ns.get_or_load(&id, || async move { Ok::<_, std::io::Error>(Some(user(id))) })
                    .await
                    .expect("fill");
            }
        }
        let before = aside.stats().l1_hits;
        let mut found = 0u64;
        for i in 0..KEYS + n {
            let id = i % KEYS;
            let v = ns
                .get_or_load(black_box(&id), || async { Ok::<_, std::io::Error>(None) })
                .await
                .expect("hit");
            found += u64::from(v.is_some());
        }
        assert_eq!(found, KEYS + n, "every read hit");
        assert_eq!(aside.stats().l1_hits - before, KEYS + n, "every hit came from the L1");
    });
}
