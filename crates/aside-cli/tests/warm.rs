//! End-to-end tests of `aside warm`: from a key list and from an access log,
//! into the in-process store, from a seeded temporary database.

use std::io::Write;
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

fn warm_json(args: &[&str]) -> serde_json::Value {
    let out = aside(&[&["warm", "--json"], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "warm failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    assert_eq!(stdout.trim().lines().count(), 1, "one JSON object: {stdout}");
    serde_json::from_str(&stdout).expect("stdout is JSON")
}

fn file_with(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(text.as_bytes()).expect("written");
    file
}

#[test]
fn warms_the_top_keys_of_a_key_list() {
    // Ids 1..=300, id k appearing (k % 3) + 1 times, plus two bad lines and
    // ids past the 500 users of the database.
    let mut text = String::new();
    for k in 1..=300 {
        for _ in 0..=(k % 3) {
            text.push_str(&format!("{k}\n"));
        }
    }
    text.push_str("not-an-id\n\n-4\n900\n901\n");
    let file = file_with(&text);
    let path = file.path().to_str().unwrap();

    let all = warm_json(&["--from", path, "--users", "500", "--batch-size", "64"]);
    assert_eq!(all["distinct"], 302, "{all}");
    assert_eq!(all["warmed"], 302, "{all}");
    assert_eq!(all["found"], 300, "ids 900 and 901 are not in the database: {all}");
    assert_eq!(all["bad_lines"], 2, "{all}");
    assert_eq!(all["keys_read"], 600 + 2, "{all}");
    assert_eq!(all["batches"], 5, "302 keys in batches of 64: {all}");
    assert_eq!(all["store"], "memory");

    // The top 100: the ids seen three times (k % 3 == 2), all in the database.
    let top = warm_json(&["--from", path, "--users", "500", "--top", "100"]);
    assert_eq!(top["warmed"], 100, "{top}");
    assert_eq!(top["found"], 100, "{top}");
    assert_eq!(top["batches"], 1, "{top}");
}

#[test]
fn warms_ids_pulled_out_of_an_access_log() {
    let mut log = String::new();
    for i in 0..400u32 {
        let id = i % 40 + 1;
        log.push_str(&format!(
            "10.0.0.{} - - [26/Nov/2026:10:00:{:02} +0000] \"GET /api/users/{id} HTTP/1.1\" 200 512\n",
            i % 250,
            i % 60
        ));
        if i % 4 == 0 {
            log.push_str("10.0.0.1 - - [26/Nov/2026:10:00:00 +0000] \"GET /health HTTP/1.1\" 200 2\n");
        }
    }
    log.push_str("10.0.0.1 - - [26/Nov/2026:10:00:00 +0000] \"GET /api/users/me HTTP/1.1\" 200 9\n");
    let file = file_with(&log);
    let summary = warm_json(&[
        "--from",
        file.path().to_str().unwrap(),
        "--pattern",
        r"GET /api/users/(\w+)",
        "--users",
        "1000",
        "--top",
        "25",
        "--batch-size",
        "10",
        "--concurrency",
        "2",
    ]);
    assert_eq!(summary["distinct"], 40, "{summary}");
    assert_eq!(summary["keys_read"], 400, "{summary}");
    assert_eq!(summary["unmatched"], 100, "{summary}");
    assert_eq!(summary["bad_lines"], 1, "`me` is not an id: {summary}");
    assert_eq!(summary["warmed"], 25, "{summary}");
    assert_eq!(summary["found"], 25, "{summary}");
    assert_eq!(summary["batches"], 3, "{summary}");
}

#[test]
fn lines_past_the_length_bound_are_skipped_and_counted() {
    // 100 good ids around one line of 10 MB of digits (an id if it were
    // read whole: it must not be).
    let mut text: String = (1..=50).map(|k| format!("{k}\n")).collect();
    text.push_str(&"7".repeat(10 << 20));
    text.push('\n');
    text.extend((51..=100).map(|k| format!("{k}\n")));
    let file = file_with(&text);
    let path = file.path().to_str().unwrap();

    let summary = warm_json(&["--from", path, "--users", "500"]);
    assert_eq!(summary["long_lines"], 1, "{summary}");
    assert_eq!(summary["lines"], 101, "{summary}");
    assert_eq!(summary["bad_lines"], 0, "{summary}");
    assert_eq!(summary["keys_read"], 100, "{summary}");
    assert_eq!(summary["warmed"], 100, "{summary}");
    assert_eq!(summary["found"], 100, "every good id is warmed: {summary}");

    // `--max-line-bytes 2`: id 100 is past it too.
    let tight = warm_json(&["--from", path, "--users", "500", "--max-line-bytes", "2"]);
    assert_eq!(tight["long_lines"], 2, "{tight}");
    assert_eq!(tight["found"], 99, "{tight}");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("nope.log");
    let out = aside(&["warm", "--from", missing.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot open {}", missing.display())),
        "unclear message: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn warms_memcached_so_a_second_run_reads_nothing_from_the_database() {
    let server = aside_testkit::MemcachedServer::start();
    let file = file_with(&(1..=120).map(|k| format!("{k}\n")).collect::<String>());
    let path = file.path().to_str().unwrap();
    let args = [
        "--from",
        path,
        "--users",
        "500",
        "--batch-size",
        "50",
        "--memcached",
        &server.addr(),
        "--prefix",
        "warm-test:",
    ];
    let first = warm_json(&args);
    assert_eq!(first["store"], "memcached", "{first}");
    assert_eq!(first["found"], 120, "{first}");
    assert_eq!(first["db_queries"], 3, "three batches, all missing: {first}");
    let second = warm_json(&args);
    assert_eq!(second["found"], 120, "{second}");
    assert_eq!(
        second["db_queries"], 0,
        "everything was cached by the first run: {second}"
    );
}
