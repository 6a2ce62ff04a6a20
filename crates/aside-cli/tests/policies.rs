//! End-to-end tests of `aside demo --scenario expiry|db-outage`: the
//! read-path policies (early refresh, fail-safe) measured on the
//! in-process store, with short settings.

use std::process::Command;

/// The bound on each store operation of the runs (`--op-timeout-ms`): they
/// check counts (loads, hits, store errors), which a call past the 250 ms
/// default on a loaded machine turns into a miss or an error.
const PATIENT_MS: &str = "60000";

fn scenario_json(args: &[&str]) -> serde_json::Value {
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

/// The row of `mode`, by name.
fn row<'a>(report: &'a serde_json::Value, mode: &str) -> &'a serde_json::Value {
    report["results"]
        .as_array()
        .expect("results is an array")
        .iter()
        .find(|r| r["mode"] == mode)
        .unwrap_or_else(|| panic!("mode {mode} missing in {report}"))
}

fn number(row: &serde_json::Value, field: &str) -> f64 {
    row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} missing or not a number in {row}"))
}

#[test]
fn expiry_early_refresh_costs_few_queries_and_none_waits_on_expiry() {
    let delay_ms = 50.0;
    let report = scenario_json(&[
        "--scenario",
        "expiry",
        "--duration",
        "4",
        "--ttl",
        "1",
        "--db-read-delay-ms",
        "50",
    ]);
    assert_eq!(report["scenario"], "expiry");
    assert_eq!(report["store"], "memory");
    let modes: Vec<_> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["none", "xfetch", "fraction", "xfetch-background"]);
    for mode in modes {
        let r = row(&report, mode);
        for field in ["db_queries", "reads", "hit_ratio", "p50_ms", "p99_ms", "max_ms"] {
            assert!(number(r, field) >= 0.0, "{field} negative: {r}");
        }
        assert!(number(r, "reads") > 0.0, "{r}");
        assert!(number(r, "p50_ms") <= number(r, "p99_ms"), "{r}");
        assert!(number(r, "p99_ms") <= number(r, "max_ms"), "{r}");
        let hit_ratio = number(r, "hit_ratio");
        assert!(hit_ratio > 0.5 && hit_ratio <= 1.0, "{r}");
    }
    let none = row(&report, "none");
    // The TTL ran out during the run: keys were reloaded, and a reader
    // waited for a reload (at least one database read).
    assert!(number(none, "db_queries") >= 10.0, "{none}");
    assert!(number(none, "max_ms") >= delay_ms, "nobody waited on an expiry: {none}");
    // With the refresh in the background, reads (almost) never wait for a
    // load; without early refresh, every expiry makes readers wait.
    let background = row(&report, "xfetch-background");
    assert!(
        number(background, "waited") < number(none, "waited"),
        "{background} vs {none}"
    );
    for mode in ["xfetch", "fraction", "xfetch-background"] {
        let early = row(&report, mode);
        assert!(number(early, "db_queries") >= 10.0, "{early}");
        assert!(
            number(early, "db_queries") <= 3.0 * number(none, "db_queries"),
            "early refresh {mode} reloads too often: {early} vs {none}"
        );
    }
}

#[test]
fn db_outage_fail_safe_answers_every_read_of_the_outage() {
    let report = scenario_json(&[
        "--scenario",
        "db-outage",
        "--duration",
        "3",
        "--ttl",
        "0.5",
        "--outage-start-s",
        "1",
        "--outage-end-s",
        "2.5",
    ]);
    assert_eq!(report["scenario"], "db-outage");
    assert_eq!(report["store"], "memory");
    for mode in ["plain", "fail-safe"] {
        let r = row(&report, mode);
        for field in [
            "requests",
            "answered",
            "answered_ratio",
            "stale_served",
            "errors",
            "db_queries",
            "outage_answered_ratio",
        ] {
            assert!(number(r, field) >= 0.0, "{field} negative: {r}");
        }
        assert!(number(r, "requests") > 0.0, "{r}");
        assert!(number(r, "outage_requests") > 0.0, "no read during the outage: {r}");
        assert_eq!(
            number(r, "answered") + number(r, "errors"),
            number(r, "requests"),
            "every read answered or failed: {r}"
        );
    }
    let plain = row(&report, "plain");
    let safe = row(&report, "fail-safe");
    assert!(
        number(plain, "errors") > 0.0,
        "entries expired during the outage: {plain}"
    );
    assert!(number(safe, "stale_served") > 0.0, "{safe}");
    assert!(
        number(safe, "outage_answered_ratio") > 0.99,
        "fail-safe answers through the outage: {safe}"
    );
    assert!(
        number(plain, "outage_answered_ratio") < number(safe, "outage_answered_ratio"),
        "{plain} vs {safe}"
    );
    assert!(
        number(safe, "db_queries") < number(plain, "db_queries"),
        "fail-safe throttles retries of the failing database: {safe} vs {plain}"
    );
}

#[test]
fn bad_outage_window_is_rejected() {
    let out = Command::new(env!("CARGO_BIN_EXE_aside"))
        .env("ASIDE_OP_TIMEOUT_MS", PATIENT_MS)
        .args([
            "demo",
            "--scenario",
            "db-outage",
            "--outage-start-s",
            "5",
            "--outage-end-s",
            "2",
        ])
        .output()
        .expect("the aside binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--outage-end-s"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
