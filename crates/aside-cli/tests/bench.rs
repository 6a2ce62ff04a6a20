//! End-to-end tests of `aside bench` against the test kit's own Redis: the
//! report holds every subject at every concurrency, each read was a hit,
//! and each ratio is against its floor measured in the same run. No figure
//! is asserted: speed is for the report, not for a timed test.

use std::process::{Command, Output};

use aside_testkit::RedisServer;
use serde_json::Value;

fn aside(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aside"))
        .args(args)
        .output()
        .expect("the aside binary runs")
}

fn expected_subjects() -> Vec<&'static str> {
    let mut subjects = vec![
        "redis-rs-get",
        "aside-redis",
        "article",
        "moka-get",
        "aside-memory",
        "aside-l1",
    ];
    if cfg!(feature = "peers") {
        subjects.extend(["cached-redis", "amalgam-redis", "amalgam-l1"]);
    }
    subjects
}

#[test]
fn reports_every_subject_against_its_floor() {
    let server = RedisServer::start();
    let url = server.url();
    let out = aside(&[
        "bench",
        "--redis",
        &url,
        "--ops",
        "400",
        "--keys",
        "50",
        "--repeat",
        "2",
        "--concurrency",
        "1,4",
        "--no-redis-benchmark",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(report["bench"], "hit");
    assert_eq!(report["peers"], cfg!(feature = "peers"));
    let results = report["results"].as_array().expect("results");
    for concurrency in [1, 4] {
        for subject in expected_subjects() {
            let row = results
                .iter()
                .find(|r| r["subject"] == subject && r["concurrency"] == concurrency)
                .unwrap_or_else(|| panic!("no row for {subject} at concurrency {concurrency}: {report}"));
            assert_eq!(row["db_queries"], 0, "{subject}: every timed read is a hit: {row}");
            let ops = row["ops_per_sec"].as_f64().expect("ops_per_sec");
            let (min, max) = (
                row["ops_per_sec_min"].as_f64().unwrap(),
                row["ops_per_sec_max"].as_f64().unwrap(),
            );
            assert!(
                ops > 0.0 && min <= ops && ops <= max,
                "{subject}: median within its range: {row}"
            );
            assert!(
                row["p50_us"].as_f64().unwrap() <= row["p99_us"].as_f64().unwrap(),
                "{row}"
            );
            let ratio = row["ratio_to_floor"].as_f64().expect("ratio");
            let floor = row["floor"].as_str().expect("floor");
            let floor_row = results
                .iter()
                .find(|r| r["subject"] == floor && r["concurrency"] == concurrency)
                .expect("the floor ran in the same run");
            let expected = ops / floor_row["ops_per_sec"].as_f64().unwrap();
            assert!(
                (ratio - expected).abs() < 1e-9,
                "{subject}: ratio is against its floor: {row}"
            );
            if subject == floor {
                assert_eq!(ratio, 1.0);
            }
        }
    }
    // The bench cleaned up after itself.
    let keys = Command::new("redis-cli")
        .args(["-u", &url, "--scan", "--pattern", "*aside-bench*"])
        .output()
        .expect("redis-cli runs");
    assert!(keys.status.success());
    assert_eq!(
        String::from_utf8_lossy(&keys.stdout).trim(),
        "",
        "bench keys left behind"
    );
}

#[test]
fn bad_flags_are_refused_with_a_message() {
    let out = aside(&[
        "bench",
        "--concurrency",
        "0",
        "--redis",
        "redis://127.0.0.1:1",
        "--json",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--concurrency"), "{stderr}");

    let out = aside(&["bench", "--redis", "redis://127.0.0.1:1", "--ops", "10", "--json"]);
    assert!(!out.status.success(), "an unreachable Redis is an error");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error:") && stderr.contains("Redis"), "{stderr}");
}

/// `--scenario outage`: Redis blackholed behind the fault proxy, the
/// breaker opens, and with it open no read reaches the store and every
/// read is answered by the database. The latencies are reported, not
/// asserted; only their presence and the scenario's own checks are.
#[test]
fn outage_reads_skip_the_blackholed_store_once_the_breaker_opens() {
    let server = RedisServer::start();
    let url = server.url();
    let out = aside(&[
        "bench",
        "--scenario",
        "outage",
        "--redis",
        &url,
        "--ops",
        "300",
        "--keys",
        "50",
        "--repeat",
        "2",
        "--concurrency",
        "1,4",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(report["scenario"], "outage");
    assert!(report["reads_until_open"].as_u64().expect("reads_until_open") >= 1);
    assert_eq!(report["op_timeout_ms"], 250);
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 2, "one row per concurrency: {report}");
    for (row, concurrency) in results.iter().zip([1u64, 4]) {
        assert_eq!(row["concurrency"], concurrency);
        assert_eq!(row["rounds"], 2);
        assert_eq!(row["store_calls_while_open"], 0, "a read reached the store: {row}");
        let reads = row["reads"].as_u64().expect("reads");
        assert_eq!(reads, 2 * 300, "{row}");
        // Every read is answered by the database: its own load, or one it
        // shared with the concurrent readers of its key (since 371cec6,
        // waiters take a load that began after their read, store down or not).
        let queries = row["db_queries"].as_u64().expect("db_queries");
        assert!(
            queries <= reads && queries * concurrency >= reads,
            "every read went to the database, by a load shared by at most {concurrency} readers: {row}"
        );
        for field in ["db_p50_us", "db_p99_us", "aside_p50_us", "aside_p99_us"] {
            assert!(row[field].as_f64().expect(field) > 0.0, "{field}: {row}");
        }
        for field in ["added_p99_us", "added_p99_us_min", "added_p99_us_max", "added_p50_us"] {
            assert!(row[field].as_f64().is_some(), "{field}: {row}");
        }
    }
    // Its keys were written before the blackhole and deleted then.
    let keys = Command::new("redis-cli")
        .args([
            "-p",
            &server.port().to_string(),
            "--scan",
            "--pattern",
            "*aside-bench-*",
        ])
        .output()
        .expect("redis-cli runs");
    assert_eq!(
        String::from_utf8_lossy(&keys.stdout).trim(),
        "",
        "bench keys left behind"
    );
}

#[test]
fn the_outage_scenario_refuses_a_tls_url() {
    let out = aside(&[
        "bench",
        "--scenario",
        "outage",
        "--redis",
        "rediss://127.0.0.1:1",
        "--json",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("plain redis://"), "{stderr}");
}
