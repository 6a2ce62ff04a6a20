//! End-to-end tests of `aside soak`: short runs on the in-process store and
//! on a redis-server of the test's own behind the soak's fault proxy.

use std::process::Command;

use aside_testkit::RedisServer;

/// Runs `aside soak --json` with `args`; its exit status and its summary.
fn soak(args: &[&str]) -> (std::process::ExitStatus, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_aside"))
        .args(["soak", "--json"])
        .args(args)
        .output()
        .expect("the aside binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}); stderr: {stderr}"));
    (out.status, json, stderr)
}

fn check_clean_run(summary: &serde_json::Value, store: &str) {
    let s = &summary["soak"];
    assert_eq!(s["store"], store, "{summary}");
    assert!(s["programs"].as_u64().unwrap() > 0, "{summary}");
    assert!(s["operations"].as_u64().unwrap() > 0, "{summary}");
    assert!(s["faults"].as_u64().unwrap() > 0, "{summary}");
    for field in ["stale_reads", "stale_entries", "wrong_answers"] {
        assert_eq!(s[field], 0, "{field}: {summary}");
    }
    for field in ["rss_start_mb", "rss_end_mb", "rss_max_mb"] {
        assert!(s[field].as_f64().unwrap() > 0.0, "{field}: {summary}");
    }
    assert!(s["rss_max_mb"].as_f64() >= s["rss_end_mb"].as_f64(), "{summary}");
    // The series: one sample at the start, one at the end, each with the
    // resident set split in two and the live objects counted.
    let samples = s["samples"].as_array().expect("a samples array");
    assert!(samples.len() >= 2, "{summary}");
    assert_eq!(samples[0]["t_s"], 0, "{summary}");
    let last = &samples[samples.len() - 1];
    for field in ["rss_mb", "rss_anon_mb", "rss_file_mb"] {
        assert!(last[field].as_f64().unwrap() > 0.0, "{field}: {summary}");
    }
    // Every task may be done by the end (the in-process store has none left).
    assert!(last["tasks"].as_u64().is_some(), "{summary}");
    assert!(last["fds"].as_u64().unwrap() > 0, "{summary}");
}

#[test]
fn a_short_soak_on_the_in_process_store_keeps_every_promise() {
    let (status, summary, stderr) = soak(&["--duration", "5"]);
    assert!(status.success(), "{stderr}");
    check_clean_run(&summary, "memory");
    assert_eq!(summary["soak"]["network_faults"]["restarts"], 0, "no proxy in process");
}

#[test]
fn a_short_soak_on_redis_through_the_fault_proxy_keeps_every_promise_and_cleans_up() {
    let server = RedisServer::start();
    let (status, summary, stderr) = soak(&["--duration", "8", "--redis", &server.url()]);
    assert!(status.success(), "{stderr}");
    check_clean_run(&summary, "redis");
    let network = &summary["soak"]["network_faults"];
    let injected: u64 = ["restarts", "latency_spikes", "blackholes"]
        .iter()
        .map(|k| network[k].as_u64().unwrap())
        .sum();
    assert!(injected > 0, "the proxy injected no fault: {summary}");
    assert!(summary["soak"]["keys_deleted"].as_u64().unwrap() > 0, "{summary}");
    // The soak's keys are gone (the server is the test's own: any key is the soak's).
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let left: Vec<String> = redis::cmd("KEYS").arg("*h*").query(&mut conn).unwrap();
    assert!(left.is_empty(), "keys left behind: {left:?}");
}

#[test]
fn bad_flags_get_a_clear_error() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_aside"))
            .arg("soak")
            .args(args)
            .output()
            .expect("the aside binary runs");
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--duration", "0"]).contains("--duration"));
    let tls = run(&["--duration", "1", "--redis", "rediss://user:s3cret@127.0.0.1:1"]);
    assert!(tls.contains("redis:// or valkey://"), "{tls}");
    assert!(!tls.contains("s3cret"), "the password is printed: {tls}");
    let down = run(&["--duration", "1", "--redis", "redis://127.0.0.1:1"]);
    assert!(down.starts_with("error:"), "{down}");
}
