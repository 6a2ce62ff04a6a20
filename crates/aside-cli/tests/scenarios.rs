//! End-to-end tests of `aside demo --scenario race|stampede|chaos|patterns`, on the
//! in-process store and on a redis-server and a memcached of the test's own.

use std::process::Command;

use aside_testkit::{MemcachedServer, RedisServer};

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

/// `--op-timeout-ms` (or `ASIDE_OP_TIMEOUT_MS`) is the run's bound, and
/// the report says which was used; a bound of 0 is refused before running.
#[test]
fn the_operation_bound_comes_from_the_flag_or_the_environment() {
    let bound = |env: Option<&str>, args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_aside"));
        command.env_remove("ASIDE_OP_TIMEOUT_MS");
        if let Some(ms) = env {
            command.env("ASIDE_OP_TIMEOUT_MS", ms);
        }
        let out = command
            .args(["demo", "--json", "--scenario", "stampede", "--clients", "4"])
            .args(args)
            .output()
            .expect("the aside binary runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        (out.status.success(), report.map(|r| r["op_timeout_ms"].clone()), stderr)
    };
    let (ok, ms, stderr) = bound(None, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(ms, Some(250.into()), "aside's default");
    assert_eq!(bound(None, &["--op-timeout-ms", "1234"]).1, Some(1234.into()));
    assert_eq!(bound(Some("4321"), &[]).1, Some(4321.into()));
    assert_eq!(
        bound(Some("4321"), &["--op-timeout-ms", "1234"]).1,
        Some(1234.into()),
        "the flag wins"
    );
    let (ok, _, stderr) = bound(None, &["--op-timeout-ms", "0"]);
    assert!(!ok);
    assert!(stderr.contains("--op-timeout-ms"), "{stderr}");
}

fn results(report: &serde_json::Value) -> &Vec<serde_json::Value> {
    report["results"].as_array().expect("results is an array")
}

fn check_race(report: &serde_json::Value) {
    assert_eq!(report["scenario"], "race");
    let rows = results(report);
    let names: Vec<_> = rows.iter().map(|r| r["strategy"].as_str().unwrap()).collect();
    assert_eq!(names, ["delete", "double-delete", "versioned", "lease"]);
    for row in rows {
        for field in ["stale_entries", "stale_reads", "hit_ratio", "db_queries"] {
            assert!(row[field].is_number(), "{field} missing in {row}");
        }
        assert!(row["reads"].as_u64().unwrap() > 0, "{row}");
        assert!(row["writes"].as_u64().unwrap() > 0, "{row}");
        let calls = row["calls"].as_u64().unwrap();
        assert_eq!(calls, row["reads"].as_u64().unwrap(), "{row}");
        let per_call = row["db_reads_per_call"].as_f64().unwrap();
        let expected = row["db_queries"].as_u64().unwrap() as f64 / calls as f64;
        assert!((per_call - expected).abs() < 1e-9, "{row}");
    }
    let lease = &rows[3];
    assert_eq!(lease["stale_entries"], 0, "lease leaves no stale entry: {lease}");
    assert_eq!(lease["stale_reads"], 0, "lease serves no stale read: {lease}");
    // Before issue 13 a refused fill was loaded again, for its leader and
    // its waiters: more database reads than calls under write-heavy keys.
    assert!(
        lease["db_reads_per_call"].as_f64().unwrap() < 1.0,
        "the lease added database load: {lease}"
    );
}

fn check_stampede(report: &serde_json::Value, clients: u64) {
    assert_eq!(report["scenario"], "stampede");
    let rows = results(report);
    let queries = |mode: &str| {
        rows.iter()
            .find(|r| r["mode"] == mode)
            .and_then(|r| r["db_queries"].as_u64())
            .unwrap_or_else(|| panic!("mode {mode} missing in {report}"))
    };
    // Every reader that looks before the first fill lands loads: nearly all.
    assert!(
        queries("none") >= clients / 2,
        "no protection: readers load in parallel"
    );
    assert_eq!(queries("aside"), 1, "single-flight and a lease: one load");
    assert!(queries("lock-sleep") >= 1);
    for row in rows {
        assert!(
            row["p50_ms"].as_f64().unwrap() <= row["p99_ms"].as_f64().unwrap(),
            "{row}"
        );
    }
}

#[test]
fn race_on_memory_lease_stays_fresh() {
    check_race(&scenario_json(&["--scenario", "race", "--duration", "1"]));
}

#[test]
fn race_on_redis_lease_stays_fresh() {
    let server = RedisServer::start();
    check_race(&scenario_json(&[
        "--scenario",
        "race",
        "--duration",
        "1",
        "--redis",
        &server.url(),
    ]));
}

#[test]
fn stampede_on_memory_and_redis_loads_once_with_aside() {
    check_stampede(&scenario_json(&["--scenario", "stampede", "--clients", "100"]), 100);
    let server = RedisServer::start();
    check_stampede(
        &scenario_json(&["--scenario", "stampede", "--clients", "100", "--redis", &server.url()]),
        100,
    );
}

/// `stampede --processes N` with 40 readers on the store `store_flags`
/// name, checked: the loads of every process are summed (`none` counts
/// about one per reader, more than any one process has), aside loads once
/// in all, and every reader of every process answered.
fn check_stampede_over_processes(store_flags: &[&str], processes: u64) -> serde_json::Value {
    let spread = [
        "--scenario",
        "stampede",
        "--clients",
        "40",
        "--processes",
        &processes.to_string(),
    ];
    let report = scenario_json(&[&spread[..], store_flags].concat());
    check_stampede(&report, 40);
    for row in results(&report) {
        assert_eq!(row["processes"], processes, "{row}");
        assert_eq!(row["clients"], 40, "{row}");
        assert_eq!(row["answered"], 40, "every reader answered: {row}");
        assert_eq!(row["loader_ms"], 50.0, "{row}");
    }
    report
}

#[test]
fn stampede_over_processes_on_redis_loads_once_with_aside() {
    let server = RedisServer::start();
    let report = check_stampede_over_processes(&["--redis", &server.url()], 4);
    assert_eq!(report["store"], "redis");
}

#[test]
fn stampede_over_processes_on_memcached_loads_once_with_aside() {
    let server = MemcachedServer::start();
    let report = check_stampede_over_processes(&["--memcached", &server.addr()], 2);
    assert_eq!(report["store"], "memcached");
}

#[test]
fn stampede_over_processes_needs_a_shared_store() {
    let out = Command::new(env!("CARGO_BIN_EXE_aside"))
        .env("ASIDE_OP_TIMEOUT_MS", PATIENT_MS)
        .args(["demo", "--json", "--scenario", "stampede", "--processes", "2"])
        .output()
        .expect("the aside binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--processes 2 needs a store the processes share"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
}

/// The lease row of a `race --l1 --strategies lease` report, checked.
fn check_race_l1(report: &serde_json::Value) -> serde_json::Value {
    let rows = results(report);
    assert_eq!(rows.len(), 1, "{report}");
    let lease = rows[0].clone();
    assert_eq!(lease["strategy"], "lease");
    assert_eq!(lease["l1"], true, "{lease}");
    assert!(lease["reads"].as_u64().unwrap() > 0, "{lease}");
    assert!(lease["writes"].as_u64().unwrap() > 0, "{lease}");
    assert!(
        lease["l1_hit_ratio"].as_f64().unwrap() > 0.0,
        "the L1 answered: {lease}"
    );
    assert_eq!(
        lease["stale_entries"], 0,
        "no stale copy in the L1 or the store once the bus is quiet: {lease}"
    );
    assert_eq!(lease["stale_l2_entries"], 0, "{lease}");
    lease
}

#[test]
fn race_with_l1_on_redis_leaves_no_stale_entry() {
    let server = RedisServer::start();
    let url = server.url();
    let report = scenario_json(&[
        "--scenario",
        "race",
        "--l1",
        "--strategies",
        "lease",
        "--duration",
        "1",
        "--redis",
        &url,
    ]);
    assert_eq!(report["store"], "redis");
    check_race_l1(&report);
}

#[test]
fn race_with_l1_in_process_leaves_no_stale_entry() {
    let report = scenario_json(&["--scenario", "race", "--l1", "--strategies", "lease", "--duration", "1"]);
    assert_eq!(report["store"], "memory");
    check_race_l1(&report);
}

#[test]
fn race_on_memcached_lease_stays_fresh() {
    let server = MemcachedServer::start();
    let report = scenario_json(&["--scenario", "race", "--duration", "1", "--memcached", &server.addr()]);
    assert_eq!(report["store"], "memcached");
    check_race(&report);
}

#[test]
fn stampede_on_memcached_loads_once_with_aside() {
    let server = MemcachedServer::start();
    let report = scenario_json(&["--scenario", "stampede", "--memcached", &server.addr()]);
    assert_eq!(report["store"], "memcached");
    check_stampede(&report, 200);
}

#[test]
fn race_with_l1_on_memcached_leaves_no_stale_entry() {
    let server = MemcachedServer::start();
    let report = scenario_json(&[
        "--scenario",
        "race",
        "--l1",
        "--strategies",
        "lease",
        "--duration",
        "1",
        "--memcached",
        &server.addr(),
    ]);
    assert_eq!(report["store"], "memcached");
    check_race_l1(&report);
}

#[test]
fn main_demo_on_memcached_hits_without_store_errors() {
    let server = MemcachedServer::start();
    let summary = scenario_json(&["--duration", "1", "--memcached", &server.addr()]);
    assert_eq!(summary["store"], "memcached");
    assert!(summary["hits"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["store_errors"], 0, "{summary}");
}

fn check_chaos(report: &serde_json::Value, store: &str) {
    assert_eq!(report["scenario"], "chaos");
    // Its programs set their own bounds: `--op-timeout-ms` is not theirs.
    assert!(report.get("op_timeout_ms").is_none(), "{report}");
    assert_eq!(report["store"], store);
    let rows = results(report);
    assert_eq!(rows.len(), 1, "{report}");
    let run = &rows[0];
    assert_eq!(run["instances"], 3, "{run}");
    for field in ["operations", "faults", "db_reads", "calls"] {
        assert!(run[field].as_u64().unwrap() > 0, "{field} in {run}");
    }
    for field in ["stale_reads", "stale_entries", "load_overlaps", "liveness"] {
        assert_eq!(run[field], 0, "{field} in {run}");
    }
    assert!(run["programs"].as_u64().unwrap() >= 1, "{run}");
}

#[test]
fn chaos_runs_the_history_checker_on_every_store() {
    // A handful of programs each: the checker's own test runs the campaigns.
    let args = ["--scenario", "chaos", "--programs", "3", "--duration", "30"];
    check_chaos(&scenario_json(&args), "memory");
    let redis = RedisServer::start();
    let url = redis.url();
    check_chaos(&scenario_json(&[&args[..], &["--redis", &url]].concat()), "redis");
    let memcached = MemcachedServer::start();
    let addr = memcached.addr();
    check_chaos(
        &scenario_json(&[&args[..], &["--memcached", &addr]].concat()),
        "memcached",
    );
}

/// `patterns`: every pattern reads and writes, none serves a read older
/// than an acknowledged write nor loses one, and the write-through and the
/// update (which cache what they wrote) leave readers fewer misses than
/// invalidation does.
fn check_patterns(report: &serde_json::Value, expected: &[&str]) {
    assert_eq!(report["scenario"], "patterns");
    let rows = results(report);
    let names: Vec<_> = rows.iter().map(|r| r["pattern"].as_str().unwrap()).collect();
    assert_eq!(names, expected);
    for row in rows {
        for field in [
            "reads",
            "writes",
            "db_reads",
            "db_writes",
            "stale_reads",
            "read_p50_us",
            "write_p50_us",
            "write_p99_us",
            "lost_writes",
        ] {
            assert!(row[field].is_number(), "{field} missing in {row}");
        }
        assert!(row["reads"].as_u64().unwrap() > 0, "{row}");
        assert!(row["writes"].as_u64().unwrap() > 0, "{row}");
        let (writes, db_writes) = (row["writes"].as_u64().unwrap(), row["db_writes"].as_u64().unwrap());
        if row["pattern"] == "write-back" {
            // The flusher keeps the newest write of a key in a batch.
            assert!(db_writes <= writes && db_writes > 0, "{row}");
        } else {
            assert_eq!(writes, db_writes, "{row}");
        }
        assert_eq!(row["stale_reads"], 0, "{row}");
        assert_eq!(row["lost_writes"], 0, "{row}");
    }
}

#[test]
fn patterns_on_the_memory_store() {
    // Write-back needs Redis (its log is a Redis Stream).
    check_patterns(
        &scenario_json(&["--scenario", "patterns", "--duration", "1"]),
        &["cache-aside", "read-through", "write-through", "update"],
    );
}

#[test]
fn patterns_on_redis() {
    let redis = RedisServer::start();
    check_patterns(
        &scenario_json(&["--scenario", "patterns", "--duration", "1", "--redis", &redis.url()]),
        &["cache-aside", "read-through", "write-through", "update", "write-back"],
    );
}
