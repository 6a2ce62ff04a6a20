//! `aside demo` on a Redis Cluster of the test's own (`--redis-cluster`):
//! the main demo, the race, the stampede and the chaos campaign.

use std::process::Command;

use aside_testkit::cluster::RedisCluster;

/// The bound on each store operation of the runs (`--op-timeout-ms`): they
/// check counts (loads, hits, store errors), which a call past the 250 ms
/// default on a loaded machine turns into a miss or an error.
const PATIENT_MS: &str = "60000";

fn demo_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_aside"))
        .env("ASIDE_OP_TIMEOUT_MS", PATIENT_MS)
        .args(["demo", "--json"])
        .args(args)
        .output()
        .expect("the aside binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn demo_race_stampede_and_chaos_run_on_a_cluster() {
    let cluster = RedisCluster::start();
    let urls = cluster.urls().join(",");

    let summary = demo_json(&["--duration", "1", "--redis-cluster", &urls]);
    assert_eq!(summary["store"], "redis-cluster", "{summary}");
    assert!(summary["hits"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["store_errors"], 0, "{summary}");

    let race = demo_json(&[
        "--scenario",
        "race",
        "--runs",
        "1",
        "--duration",
        "1",
        "--redis-cluster",
        &urls,
    ]);
    assert_eq!(race["scenario"], "race");
    let rows = race["results"].as_array().expect("results");
    let lease = rows.iter().find(|r| r["strategy"] == "lease").expect("a lease row");
    assert!(lease["reads"].as_u64().unwrap() > 0, "{lease}");
    assert_eq!(lease["stale_entries"], 0, "lease leaves no stale entry: {lease}");
    assert_eq!(lease["stale_reads"], 0, "lease serves no stale read: {lease}");

    let stampede = demo_json(&["--scenario", "stampede", "--clients", "100", "--redis-cluster", &urls]);
    let aside = stampede["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["mode"] == "aside")
        .expect("an aside row");
    assert_eq!(aside["db_queries"], 1, "one load for 100 readers: {aside}");

    let chaos = demo_json(&[
        "--scenario",
        "chaos",
        "--programs",
        "3",
        "--duration",
        "30",
        "--redis-cluster",
        &urls,
    ]);
    assert_eq!(chaos["store"], "redis-cluster", "{chaos}");
    let run = &chaos["results"][0];
    assert!(run["operations"].as_u64().unwrap() > 0, "{run}");
    for field in ["stale_reads", "stale_entries", "load_overlaps", "liveness"] {
        assert_eq!(run[field], 0, "{field} in {run}");
    }
}

/// The flag takes one URL or several, and conflicts with `--redis`.
#[test]
fn redis_cluster_conflicts_with_redis() {
    let out = Command::new(env!("CARGO_BIN_EXE_aside"))
        .env("ASIDE_OP_TIMEOUT_MS", PATIENT_MS)
        .args([
            "demo",
            "--redis",
            "redis://127.0.0.1:1",
            "--redis-cluster",
            "redis://127.0.0.1:2",
        ])
        .output()
        .expect("the aside binary runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
