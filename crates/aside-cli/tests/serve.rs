//! End-to-end tests of `aside serve`: the built binary on a free loopback
//! port, driven over HTTP, on SQLite with the in-process store, on SQLite
//! with a private redis-server, and on a PostgreSQL database of its own
//! (created on the local server, `ASIDE_TEST_POSTGRES` or
//! `postgres://postgres@127.0.0.1:5432/test`, and dropped at the end).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

/// The PostgreSQL database the test databases are created from.
fn postgres_admin_url() -> String {
    std::env::var("ASIDE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A running `aside serve`, killed on drop.
struct Server {
    child: Child,
    base: String,
    _stderr: tempfile::NamedTempFile,
}

impl Server {
    /// Starts `aside serve` on a free port with `args`, and waits for its
    /// `listening on ADDR` line (at most 60 s).
    fn start(args: &[&str]) -> Server {
        let stderr = tempfile::NamedTempFile::new().expect("a temporary file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_aside"))
            .args(["serve", "--listen", "127.0.0.1:0", "--seed-users", "100"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("reopened"))
            .spawn()
            .expect("the aside binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let mut server = Server {
            child,
            base: String::new(),
            _stderr: stderr,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => server.base = format!("http://{addr}"),
            Err(_) => {
                let log = std::fs::read_to_string(server._stderr.path()).unwrap_or_default();
                panic!("aside serve did not report listening: {log}");
            }
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response's status, `X-Cache` header and JSON body (`Null` if not JSON).
struct Reply {
    status: StatusCode,
    cache: Option<String>,
    body: Value,
}

async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let cache = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, cache, body }
}

async fn get(client: &reqwest::Client, url: String) -> Reply {
    send(client.get(url)).await
}

async fn metrics(client: &reqwest::Client, server: &Server) -> String {
    let response = client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.expect("a body")
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn db_reads(client: &reqwest::Client, server: &Server, table: &str) -> f64 {
    let text = metrics(client, server).await;
    sample(&text, &format!("aside_serve_db_reads_total{{table=\"{table}\"}}"))
}

fn assert_error(reply: &Reply, status: StatusCode, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    assert!(reply.body["error"].is_string(), "{what}: a JSON error: {}", reply.body);
}

/// Everything the service promises, against one running server.
async fn exercise(server: &Server, database: &str, store: &str) {
    let client = reqwest::Client::new();

    // Miss, then hit.
    let first = get(&client, server.url("/users/1")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.body,
        json!({"id": 1, "name": "User 1", "email": "user1@example.com", "avatar": "https://avatars.example.com/1.png"})
    );
    assert_eq!(first.cache.as_deref(), Some("loaded"));
    let second = get(&client, server.url("/users/1")).await;
    assert_eq!(second.cache.as_deref(), Some("hit"));
    assert_eq!(second.body, first.body);

    // A missing row is a 404; the second one is served by the negative cache.
    assert_error(
        &get(&client, server.url("/users/5000")).await,
        StatusCode::NOT_FOUND,
        "missing user",
    );
    let reads = db_reads(&client, server, "users").await;
    assert_error(
        &get(&client, server.url("/users/5000")).await,
        StatusCode::NOT_FOUND,
        "missing user again",
    );
    assert_eq!(
        db_reads(&client, server, "users").await,
        reads,
        "the second 404 came from the cache"
    );

    // PUT writes, invalidates, and the next GET reads the new row.
    assert_eq!(
        get(&client, server.url("/users/2")).await.cache.as_deref(),
        Some("loaded")
    );
    let new = json!({"name": "Ada", "email": "ada@example.com", "avatar": "https://a.example.com/ada.png"});
    let put = send(client.put(server.url("/users/2")).json(&new)).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["id"], 2);
    assert_eq!(put.body["name"], "Ada");
    let after = get(&client, server.url("/users/2")).await;
    assert_eq!(after.body, put.body);
    assert_eq!(after.cache.as_deref(), Some("loaded"), "the PUT invalidated the entry");
    assert_error(
        &send(client.put(server.url("/users/5001")).json(&new)).await,
        StatusCode::NOT_FOUND,
        "PUT of a missing user",
    );

    // Batch: found rows only, in the order asked.
    let batch = get(&client, server.url("/users?ids=3,1,5000,4,3")).await;
    assert_eq!(batch.status, StatusCode::OK);
    let ids: Vec<i64> = batch
        .body
        .as_array()
        .expect("an array")
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [3, 1, 4]);

    // Products: the same three routes.
    let product = get(&client, server.url("/products/1")).await;
    assert_eq!(product.status, StatusCode::OK);
    assert_eq!(product.body["name"], "Product 1");
    assert!(product.body["price_cents"].is_i64());
    let put = send(
        client
            .put(server.url("/products/1"))
            .json(&json!({"name": "Lamp", "price_cents": 1999})),
    )
    .await;
    assert_eq!(put.body, json!({"id": 1, "name": "Lamp", "price_cents": 1999}));
    assert_eq!(get(&client, server.url("/products/1")).await.body, put.body);
    let batch = get(&client, server.url("/products?ids=1,2,999")).await;
    assert_eq!(batch.body.as_array().map(Vec::len), Some(2), "{}", batch.body);
    assert_error(
        &get(&client, server.url("/products/999")).await,
        StatusCode::NOT_FOUND,
        "missing product",
    );

    // Bad input: 400 and a JSON error, never a 500.
    for path in [
        "/users/abc",
        "/users/-1",
        "/users/1.5",
        "/users/99999999999999999999",
        "/users/9223372036854775808",
        "/users",
        "/users?ids=",
        "/users?ids=1,,2",
        "/users?ids=1,x",
        "/users?id=1",
        "/products/%FF",
        "/products?ids=-3",
    ] {
        assert_error(&get(&client, server.url(path)).await, StatusCode::BAD_REQUEST, path);
    }
    let json_put = |path: &str, body: &str| {
        client
            .put(server.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
    };
    for (path, body) in [
        ("/users/1", "not json"),
        ("/users/1", "{\"name\": \"x\"}"),
        ("/users/1", "{\"name\": 1, \"email\": \"e\", \"avatar\": \"a\"}"),
        (
            "/users/1",
            "{\"name\": \"x\", \"email\": \"e\", \"avatar\": \"a\", \"admin\": true}",
        ),
        ("/users/1", "[]"),
        ("/users/x", "{\"name\": \"x\", \"email\": \"e\", \"avatar\": \"a\"}"),
        ("/products/1", "{\"name\": \"x\", \"price_cents\": \"ten\"}"),
        ("/products/1", "{\"name\": \"x\", \"price_cents\": 1e99}"),
    ] {
        assert_error(
            &send(json_put(path, body)).await,
            StatusCode::BAD_REQUEST,
            &format!("PUT {path} {body}"),
        );
    }
    let no_type = send(client.put(server.url("/users/1")).body("{}")).await;
    assert_error(
        &no_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "PUT without a JSON content type",
    );
    assert_error(
        &get(&client, server.url("/nowhere")).await,
        StatusCode::NOT_FOUND,
        "unknown route",
    );

    // Metrics: aside's counters and the latency histogram per route.
    let text = metrics(&client, server).await;
    assert!(
        sample(&text, "aside_hits_total{namespace=\"user:profile\"}") >= 1.0,
        "{text}"
    );
    assert!(text.contains("aside_misses_total"), "{text}");
    assert!(
        text.contains(
            "http_request_duration_seconds_bucket{method=\"GET\",route=\"/users/{id}\",status=\"200\",le=\"0.005\"}"
        ),
        "{text}"
    );
    assert!(text.contains("route=\"/users\",status=\"400\""), "{text}");
    assert!(text.contains("route=\"unmatched\""), "{text}");

    // Health.
    let health = get(&client, server.url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    assert_eq!(health.body["database"], json!({"name": database, "ok": true}));
    assert_eq!(health.body["store"], json!({"name": store, "ok": true}));
    assert_eq!(health.body["breaker"], "closed");
}

#[tokio::test]
async fn serves_from_sqlite_with_the_in_process_store() {
    let server = Server::start(&[]);
    exercise(&server, "sqlite", "memory").await;
}

#[tokio::test]
async fn serves_from_sqlite_with_memcached() {
    let memcached = aside_testkit::MemcachedServer::start();
    let server = Server::start(&["--memcached", &memcached.addr()]);
    exercise(&server, "sqlite", "memcached").await;
}

#[tokio::test]
async fn serves_from_sqlite_with_redis() {
    let redis = aside_testkit::RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("serve.db").display());
    let server = Server::start(&[
        "--redis",
        &redis.url(),
        "--database-url",
        &url,
        "--consistency",
        "versioned",
    ]);
    exercise(&server, "sqlite", "redis").await;
    drop(server);

    // A restart on the same file keeps the rows written (the tables are
    // seeded only when empty) and finds the Redis entries.
    let server = Server::start(&[
        "--redis",
        &redis.url(),
        "--database-url",
        &url,
        "--consistency",
        "versioned",
    ]);
    let client = reqwest::Client::new();
    let user = get(&client, server.url("/users/2")).await;
    assert_eq!(user.body["name"], "Ada");
    assert_eq!(user.cache.as_deref(), Some("hit"));
}

/// A PostgreSQL database of its own, dropped (even with connections left) on drop.
struct PgDatabase {
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create() -> PgDatabase {
        use sqlx::Connection;
        let admin = postgres_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must run at {admin} (set ASIDE_TEST_POSTGRES): {e}"));
        let name = format!("aside_test_{:016x}", rand::random::<u64>());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        conn.close().await.ok();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
        let url = format!("{base}/{name}");
        PgDatabase { name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: the async DROP gets a thread
        // and a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
                    .await
                    .map_err(std::io::Error::other)?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}: {dropped:?}", self.name);
        }
    }
}

#[tokio::test]
async fn serves_from_postgres() {
    let database = PgDatabase::create().await;
    let redis = aside_testkit::RedisServer::start();
    let server = Server::start(&["--database-url", &database.url, "--redis", &redis.url()]);
    exercise(&server, "postgres", "redis").await;
    drop(server);
}

#[tokio::test]
async fn ttl_zero_reads_every_time_from_the_database() {
    let server = Server::start(&["--ttl", "0"]);
    let client = reqwest::Client::new();
    let before = db_reads(&client, &server, "users").await;
    for _ in 0..3 {
        let reply = get(&client, server.url("/users/7")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.cache.as_deref(), Some("loaded"));
    }
    assert_error(
        &get(&client, server.url("/users/5000")).await,
        StatusCode::NOT_FOUND,
        "missing",
    );
    assert_error(
        &get(&client, server.url("/users/5000")).await,
        StatusCode::NOT_FOUND,
        "missing",
    );
    assert_eq!(
        get(&client, server.url("/users?ids=1,2"))
            .await
            .body
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(db_reads(&client, &server, "users").await - before, 6.0);
    let text = metrics(&client, &server).await;
    assert_eq!(sample(&text, "aside_hits_total{namespace=\"user:profile\"}"), 0.0);
}

#[tokio::test]
async fn bad_flags_fail_before_serving() {
    for args in [
        &["--consistency", "eventual"][..],
        &["--ttl", "-1"],
        &["--database-url", "mysql://localhost/x"],
        &["--listen", "nowhere"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_aside"))
            .arg("serve")
            .args(args)
            .output()
            .expect("the aside binary runs");
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            out.stdout.is_empty(),
            "{args:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let server = Server::start(&["--ttl", "0", "--db-read-delay-ms", "1500"]);
    let client = reqwest::Client::new();
    let slow = tokio::spawn(client.get(server.url("/users/3")).send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.terminate();
    let response = slow.await.expect("joined").expect("the in-flight request is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let status = tokio::task::spawn_blocking(move || {
        let mut server = server;
        let status = server.child.wait();
        (server, status)
    })
    .await
    .expect("joined")
    .1
    .expect("waited");
    assert!(status.success(), "exits cleanly: {status:?}");
}

/// A Redis answering 200 ms late (through the test kit's fault proxy):
/// requests keep being answered, the breaker opens, and `/healthz` says
/// `degraded` with the breaker's state and why; once the latency is gone,
/// it says `ok` again. At the base it said `ok` throughout, while
/// every hit waited on the slow Redis.
// Multi-threaded: `Server::start` blocks this thread while the proxy's
// tasks must run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_slow_redis() {
    use aside_testkit::proxy::FaultProxy;
    let redis = aside_testkit::RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let server = Server::start(&["--redis", &proxy.redis_url()]);
    let client = reqwest::Client::new();
    let health = get(&client, server.url("/healthz")).await;
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    assert!(health.body["store_latency_ms"].is_number(), "{}", health.body);

    proxy.set_latency(Duration::from_millis(100));
    let bound = Duration::from_secs(60);
    aside_testkit::eventually("/healthz reports the slow store", bound, || async {
        for id in 1..=10 {
            let user = get(&client, server.url(&format!("/users/{id}"))).await;
            assert_eq!(user.status, StatusCode::OK, "answered while slow: {}", user.body);
        }
        let health = get(&client, server.url("/healthz")).await;
        assert_eq!(health.status, StatusCode::OK, "{}", health.body);
        health.body["status"] == "degraded"
            && health.body["breaker"] != "closed"
            && health.body["breaker_reason"].is_string()
    })
    .await;

    proxy.heal();
    aside_testkit::eventually("/healthz is ok again", bound, || async {
        let health = get(&client, server.url("/healthz")).await;
        health.body["status"] == "ok" && health.body["breaker"] == "closed"
    })
    .await;
}
