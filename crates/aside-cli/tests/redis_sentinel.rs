//! `aside demo --redis-sentinel URL,... --redis-master NAME` finds the
//! primary through Sentinel (issue 14).

use std::process::Command;

use aside_testkit::sentinel::{MASTER_NAME, SentinelSetup};

/// The bound on each store operation of the runs (`--op-timeout-ms`): they
/// check counts (loads, hits, store errors), which a call past the 250 ms
/// default on a loaded machine turns into a miss or an error.
const PATIENT_MS: &str = "60000";

#[tokio::test]
async fn demo_runs_on_the_primary_sentinel_names() {
    let setup = SentinelSetup::start().await;
    let sentinels = setup.sentinel_urls().join(",");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_aside"))
            .env("ASIDE_OP_TIMEOUT_MS", PATIENT_MS)
            .args(["demo", "--redis-sentinel", &sentinels, "--redis-master", MASTER_NAME])
            .args(["--duration", "1", "--json"])
            .output()
            .expect("the aside binary runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(summary["store"], "redis", "{summary}");
    assert!(summary["hits"].as_f64().unwrap() > 0.0, "{summary}");
    assert_eq!(summary["store_errors"], 0, "{summary}");

    // --redis-master alone is refused by the flags.
    let out = Command::new(env!("CARGO_BIN_EXE_aside"))
        .env("ASIDE_OP_TIMEOUT_MS", PATIENT_MS)
        .args(["demo", "--redis-master", MASTER_NAME])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--redis-sentinel"));
}
