//! End-to-end tests of `aside demo`: run the built binary, read what it prints.

use std::net::TcpListener;
use std::process::{Command, Output};

/// The bound on each store operation of the runs (`--op-timeout-ms`): they
/// check counts (loads, hits, store errors), which a call past the 250 ms
/// default on a loaded machine turns into a miss or an error.
const PATIENT_MS: &str = "60000";

fn aside(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aside"))
        .env("ASIDE_OP_TIMEOUT_MS", PATIENT_MS)
        .args(args)
        .output()
        .expect("the aside binary runs")
}

#[test]
fn demo_json_reports_a_warm_cache() {
    let out = aside(&["demo", "--duration", "2", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");

    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one JSON object on stdout, got: {stdout}"
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");

    let number = |field: &str| {
        summary[field]
            .as_f64()
            .unwrap_or_else(|| panic!("field {field} missing or not a number in {summary}"))
    };
    for field in [
        "requests",
        "hit_ratio",
        "db_queries",
        "hit_p50_us",
        "hit_p99_us",
        "miss_p50_us",
        "miss_p99_us",
    ] {
        assert!(number(field) >= 0.0, "{field} is negative in {summary}");
    }
    let requests = number("requests");
    let hit_ratio = number("hit_ratio");
    assert!(requests > 0.0, "no requests: {summary}");
    assert!(hit_ratio > 0.5 && hit_ratio <= 1.0, "hit ratio {hit_ratio}: {summary}");
    assert!(
        number("db_queries") > 0.0,
        "the cold cache must reach the database: {summary}"
    );
    assert!(number("writes") > 0.0, "the default mix has writes: {summary}");
    assert!(number("hit_p50_us") <= number("hit_p99_us"), "{summary}");
    assert!(number("miss_p50_us") <= number("miss_p99_us"), "{summary}");
    assert_eq!(summary["store"], "memory");
    assert_eq!(summary["strategy"], "lease");
}

#[test]
fn unreachable_redis_is_a_clear_error_not_a_panic() {
    // A port nobody listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let out = aside(&["demo", "--duration", "1", "--json", "--redis", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "demo succeeded without Redis: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to Redis at {url}")),
        "unclear message: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
}

#[test]
fn bad_flags_are_rejected() {
    for args in [
        &["demo", "--strategy", "nope"][..],
        &["demo", "--write-ratio", "1.5"],
        &["demo", "--zipf=-1"],
        &["demo", "--duration", "0"],
        &["demo", "--users", "0"],
    ] {
        let out = aside(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains("invalid value"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn demo_tiers_reports_l1_and_l2_hit_ratios() {
    let out = aside(&["demo", "--tiers", "--duration", "2", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo --tiers failed: {stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    let number = |field: &str| {
        summary[field]
            .as_f64()
            .unwrap_or_else(|| panic!("field {field} missing or not a number in {summary}"))
    };
    assert_eq!(summary["tiers"], true, "{summary}");
    assert!(number("requests") > 0.0, "no requests: {summary}");
    let (l1, l2, all) = (number("l1_hit_ratio"), number("l2_hit_ratio"), number("hit_ratio"));
    assert!(l1 > 0.0, "the L1 answered nothing: {summary}");
    assert!(l2 >= 0.0, "{summary}");
    assert!(
        (l1 + l2 - all).abs() < 1e-9,
        "l1 {l1} + l2 {l2} != hit ratio {all}: {summary}"
    );
    assert!(number("l1_hits") <= number("hits"), "{summary}");
}

#[test]
fn demo_without_tiers_has_no_l1_hits() {
    let out = aside(&["demo", "--duration", "1", "--json", "--users", "100"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(summary["tiers"], false, "{summary}");
    assert_eq!(summary["l1_hits"], 0, "{summary}");
    assert_eq!(summary["l2_hit_ratio"], summary["hit_ratio"], "{summary}");
}
