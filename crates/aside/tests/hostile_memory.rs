//! The memory a lying memcached can make aside commit: a value announced at
//! 1 GiB (within the bound, which is raised to its 1 GiB cap here) of which
//! 1 MiB arrives before the server goes quiet. The buffer grows with the
//! bytes, so the process's peak virtual size grows by about what arrived,
//! not by what was claimed (an up-front buffer of the claimed size maps
//! the whole GiB at once).
//!
//! A binary of its own with a single test on a current-thread runtime, so
//! no other test's threads or allocations move the peak it reads.
#![cfg(all(feature = "memcached", target_os = "linux"))]

use std::time::Duration;

use aside::store::Store;
use aside::store::memcached::{MAX_ITEM_BYTES, MemcachedConfig, MemcachedStore};
use aside_testkit::hostile::{Behaviour, HostileMemcached};

/// `VmPeak` of this process, in bytes.
fn peak_virtual_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmPeak:"))
        .expect("VmPeak in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmPeak in kB");
    kib * 1024
}

#[tokio::test(flavor = "current_thread")]
async fn a_claimed_gigabyte_commits_only_what_arrives() {
    let claimed = (MAX_ITEM_BYTES - 4096) as u64;
    let server = HostileMemcached::start(
        MAX_ITEM_BYTES as u64,
        Behaviour::Stalls {
            claimed,
            sent: 1024 * 1024,
        },
    )
    .await;
    let mut config = MemcachedConfig::default();
    config.max_item_bytes = MAX_ITEM_BYTES;
    config.max_connections_per_server = 1;
    // Ends the exchange with a server that never finishes the value.
    config.response_timeout = Duration::from_secs(2);
    let store = MemcachedStore::connect_with(server.addr(), config).await.unwrap();
    assert!(
        store.max_value_len("k") as u64 > claimed,
        "the claim must be within the bound"
    );

    let before = peak_virtual_bytes();
    let err = store.get("k").await.unwrap_err();
    let grown = peak_virtual_bytes().saturating_sub(before);
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(
        grown < 256 * 1024 * 1024,
        "peak virtual size grew by {} MiB for 1 MiB received",
        grown / (1024 * 1024)
    );
}
