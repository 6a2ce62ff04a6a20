//! The CLI on a Redis that wants TLS and an ACL user (issue 14): `demo`,
//! `warm`, `serve` and `bench` take `--redis rediss://user:password@...`
//! with `--redis-ca`, `--redis-cert` and `--redis-key`; a wrong CA is a
//! clear error; the password shows nowhere (stdout, stderr, `/healthz`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use aside_testkit::tls::{ClientAuth, SecureOptions, SecureRedisServer, TestCa};

/// The bound on each store operation of the runs (`--op-timeout-ms`): they
/// check counts (loads, hits, store errors), which a call past the 250 ms
/// default on a loaded machine turns into a miss or an error.
const PATIENT_MS: &str = "60000";

const PASSWORD: &str = "Cli-s3cret-pw";

fn aside(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aside"))
        .env("ASIDE_OP_TIMEOUT_MS", PATIENT_MS)
        .args(args)
        .output()
        .expect("the aside binary runs")
}

/// Runs `aside ARGS`, expects success and one JSON object on stdout, and
/// that the password shows neither there nor on stderr.
fn json_of(args: &[&str]) -> serde_json::Value {
    let out = aside(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    assert!(
        !stdout.contains(PASSWORD) && !stderr.contains(PASSWORD),
        "the password leaked: {stdout} {stderr}"
    );
    serde_json::from_str(stdout.trim()).expect("stdout is JSON")
}

fn server(auth: ClientAuth) -> SecureRedisServer {
    SecureRedisServer::start(SecureOptions::tls().client_auth(auth).acl_user("cache", PASSWORD))
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn demo_runs_on_a_tls_redis_with_an_acl_user() {
    let redis = server(ClientAuth::Optional);
    let (url, ca) = (redis.url(), path(&redis.ca_file()));
    assert!(url.starts_with("rediss://cache:"));
    let summary = json_of(&["demo", "--redis", &url, "--redis-ca", &ca, "--duration", "1", "--json"]);
    assert_eq!(summary["store"], "redis", "{summary}");
    assert!(summary["requests"].as_f64().unwrap() > 0.0, "{summary}");
    // One second from a cold cache: some hits, not many.
    assert!(summary["hits"].as_f64().unwrap() > 0.0, "{summary}");
    assert_eq!(summary["store_errors"].as_f64().unwrap_or(0.0), 0.0, "{summary}");
}

#[test]
fn demo_with_tiers_runs_over_mtls_with_its_bus() {
    let redis = server(ClientAuth::Required);
    let summary = json_of(&[
        "demo",
        "--redis",
        &redis.url(),
        "--redis-ca",
        &path(&redis.ca_file()),
        "--redis-cert",
        &path(&redis.client_cert_file()),
        "--redis-key",
        &path(&redis.client_key_file()),
        "--tiers",
        "--duration",
        "1",
        "--json",
    ]);
    assert_eq!(summary["store"], "redis", "{summary}");
    assert!(summary["requests"].as_f64().unwrap() > 0.0, "{summary}");
}

#[test]
fn a_wrong_ca_or_a_missing_file_is_a_clear_error() {
    let redis = server(ClientAuth::Optional);
    let dir = tempfile::tempdir().unwrap();
    let stranger = dir.path().join("stranger.pem");
    std::fs::write(&stranger, TestCa::new("stranger").cert_pem()).unwrap();
    let missing = dir.path().join("missing.pem");
    for (ca, cause) in [(&stranger, "certificate"), (&missing, "cannot read --redis-ca")] {
        let out = aside(&[
            "demo",
            "--redis",
            &redis.url(),
            "--redis-ca",
            &path(ca),
            "--duration",
            "1",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(cause), "names the cause ({cause}): {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains(PASSWORD), "the password leaked: {stderr}");
    }
    // A client certificate without its key is refused by the flags.
    let out = aside(&[
        "demo",
        "--redis",
        &redis.url(),
        "--redis-cert",
        &path(&redis.client_cert_file()),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--redis-key"));
}

#[test]
fn warm_fills_a_tls_redis() {
    let redis = server(ClientAuth::Required);
    let mut keys = tempfile::NamedTempFile::new().unwrap();
    keys.write_all(b"1\n2\n3\n").unwrap();
    let report = json_of(&[
        "warm",
        "--json",
        "--from",
        &path(keys.path()),
        "--users",
        "10",
        "--redis",
        &redis.url(),
        "--redis-ca",
        &path(&redis.ca_file()),
        "--redis-cert",
        &path(&redis.client_cert_file()),
        "--redis-key",
        &path(&redis.client_key_file()),
    ]);
    assert_eq!(report["warmed"], 3, "{report}");
    assert_eq!(report["store"], "redis", "{report}");
}

#[test]
fn bench_reports_on_a_tls_redis_with_the_url_masked() {
    let redis = server(ClientAuth::Optional);
    let report = json_of(&[
        "bench",
        "--redis",
        &redis.url(),
        "--redis-ca",
        &path(&redis.ca_file()),
        "--ops",
        "100",
        "--keys",
        "10",
        "--repeat",
        "1",
        "--concurrency",
        "1",
        "--no-redis-benchmark",
        "--json",
    ]);
    assert_eq!(
        report["redis"],
        format!("rediss://cache:***@127.0.0.1:{}", redis.port()),
        "{report}"
    );
    assert!(!report["results"].as_array().unwrap().is_empty(), "{report}");
}

#[test]
fn serve_health_is_ok_on_a_tls_redis_and_never_shows_the_password() {
    let redis = server(ClientAuth::Optional);
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_aside"))
        .args(["serve", "--listen", "127.0.0.1:0", "--seed-users", "10"])
        .args(["--redis", &redis.url(), "--redis-ca", &path(&redis.ca_file())])
        .stdout(Stdio::piped())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .expect("the aside binary starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!(
            "aside serve did not report listening: {}",
            std::fs::read_to_string(stderr.path()).unwrap_or_default()
        )
    });
    let health = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = reqwest::Client::new();
        let _ = client.get(format!("http://{addr}/users/1")).send().await.unwrap();
        client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(stderr.path()).unwrap_or_default();
    let health: serde_json::Value = serde_json::from_str(&health).expect("JSON health");
    assert_eq!(health["status"], "ok", "{health} {log}");
    assert_eq!(health["store"]["name"], "redis", "{health}");
    assert!(!health.to_string().contains(PASSWORD), "{health}");
    assert!(!log.contains(PASSWORD), "{log}");
}
