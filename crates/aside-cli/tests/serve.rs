//! End-to-end tests of `aside serve`: the built binary on a free loopback
//! port, driven over HTTP, on SQLite with the in-process store, on SQLite
//! with a private redis-server, and on a PostgreSQL database of its own
//! (created on the local server, `ASIDE_TEST_POSTGRES` or
//! `postgres://postgres@127.0.0.1:5432/test`, and dropped at the end).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
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
    /// `http://ADDR` of `listening on ADDR`.
    base: String,
    /// `http://ADDR` of `admin listening on ADDR`, with `--admin-listen`.
    admin: Option<String>,
    /// Every line printed on stdout so far.
    stdout: Arc<Mutex<String>>,
    stderr: tempfile::NamedTempFile,
}

impl Server {
    /// Starts `aside serve` on a free port with `args`, and waits for its
    /// `listening on ADDR` line (at most 60 s).
    fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    /// [`Server::start`] with these environment variables set.
    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let stderr = tempfile::NamedTempFile::new().expect("a temporary file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_aside"))
            .args(["serve", "--listen", "127.0.0.1:0", "--seed-users", "100"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().expect("reopened"))
            .spawn()
            .expect("the aside binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let printed = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let lines = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().expect("not poisoned").push_str(&format!("{line}\n"));
                if let Some(addr) = line.strip_prefix("admin listening on ") {
                    let _ = tx.send((true, addr.to_owned()));
                } else if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send((false, addr.to_owned()));
                }
            }
        });
        let mut server = Server {
            child,
            base: String::new(),
            admin: None,
            stdout: printed,
            stderr,
        };
        // `admin listening on` comes first, when it comes.
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok((true, addr)) => server.admin = Some(format!("http://{addr}")),
                Ok((false, addr)) => {
                    server.base = format!("http://{addr}");
                    break;
                }
                Err(_) => panic!("aside serve did not report listening: {}", server.output()),
            }
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A URL on the admin listener.
    fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin.as_deref().expect("started with --admin-listen"))
    }

    /// The public listener's address.
    fn addr(&self) -> std::net::SocketAddr {
        self.base
            .strip_prefix("http://")
            .and_then(|addr| addr.parse().ok())
            .expect("an address")
    }

    /// Everything printed so far: stdout, then stderr.
    fn output(&self) -> String {
        let stdout = self.stdout.lock().expect("not poisoned").clone();
        let stderr = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
        format!("{stdout}{stderr}")
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

    /// Drops the database now, ending its connections: a database gone
    /// from under a running server.
    async fn drop_now(&self) {
        drop_database(&self.name).await.expect("DROP DATABASE");
    }
}

async fn drop_database(name: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&postgres_admin_url()).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    Ok(())
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: the async DROP gets a thread
        // and a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async { drop_database(&name).await.map_err(std::io::Error::other) })
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
    aside_testkit::eventually("the request is in flight", Duration::from_secs(60), || async {
        sample(&metrics(&client, &server).await, "aside_serve_requests_in_flight") == 1.0
    })
    .await;
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
    let server = Server::start(&["--redis", &proxy.redis_url(), "--health-interval-ms", "100"]);
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

/// Sends a request's headers one byte every 200 ms (a request that would
/// take 80 s) and reads whatever comes back. True when the server closes
/// the connection (a read of 0 bytes, or an error), false when 60 s pass
/// first: the test's failsafe, not what it measures.
async fn trickle_is_cut_off(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let request = format!(
        "GET /users/1 HTTP/1.1\r\nHost: aside\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(400)
    );
    let mut bytes = request.bytes();
    let failsafe = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut buffer = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return true,
                Ok(_) => {} // what the server says before it closes, if anything
            },
            _ = tick.tick() => {
                let Some(byte) = bytes.next() else { return false };
                if tokio::time::Instant::now() > failsafe {
                    return false;
                }
                if stream.write_all(&[byte]).await.is_err() {
                    return true;
                }
            }
        }
    }
}

/// Slowloris: connections that trickle their headers are closed at the
/// header timeout, and the service still answers. At the base
/// (axum's `serve`, no timer) they stayed open for as long as they trickled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_senders_are_disconnected() {
    let server = Server::start(&["--header-timeout-ms", "1000"]);
    let addr = server.addr();
    let trickles: Vec<_> = (0..5).map(|_| tokio::spawn(trickle_is_cut_off(addr))).collect();
    for trickle in trickles {
        assert!(
            trickle.await.expect("joined"),
            "a connection sending a header byte every 200 ms was still open after 60 s"
        );
    }
    let client = reqwest::Client::new();
    assert_eq!(get(&client, server.url("/users/1")).await.status, StatusCode::OK);
}

/// Lines of `/metrics` of the service's own HTTP series.
fn http_lines(text: &str) -> usize {
    text.lines().filter(|line| line.starts_with("http_")).count()
}

/// 1,000 requests with made-up methods add no series to `/metrics`: they
/// all count as `method="other"`. At the base each method made
/// series of its own (500 methods: 501 series, 841 KB).
#[tokio::test]
async fn made_up_methods_add_no_metric_series() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let paths = ["/users/1", "/users", "/nowhere", "/metrics", "/healthz"];
    let made_up = |name: &str| reqwest::Method::from_bytes(name.as_bytes()).expect("a method token");
    // One made-up method on each path makes the series they all share, and
    // a first /metrics the one of /metrics.
    for path in paths {
        send(client.request(made_up("FIRST"), server.url(path))).await;
    }
    metrics(&client, &server).await;
    let before = metrics(&client, &server).await;
    for i in 0..1000 {
        let reply = send(client.request(made_up(&format!("MADE-UP-{i}")), server.url(paths[i % paths.len()]))).await;
        assert!(reply.status.is_client_error(), "{}: {}", reply.status, reply.body);
    }
    let after = metrics(&client, &server).await;
    assert!(after.contains("method=\"other\""), "{after}");
    assert_eq!(
        http_lines(&after),
        http_lines(&before),
        "made-up methods added series:\n{after}"
    );
}

/// The sample of `series` on the admin listener's `/metrics`.
async fn admin_sample(client: &reqwest::Client, server: &Server, series: &str) -> f64 {
    let response = client
        .get(server.admin_url("/metrics"))
        .send()
        .await
        .expect("/metrics answers");
    sample(&response.text().await.expect("a body"), series)
}

/// With `--max-concurrency 1`, a request while another is in flight gets a
/// 503 at once, naming the limit; the admin routes stay reachable.
#[tokio::test]
async fn a_request_past_the_concurrency_limit_gets_503() {
    let server = Server::start(&[
        "--max-concurrency",
        "1",
        "--ttl",
        "0",
        "--db-read-delay-ms",
        "60000",
        "--request-timeout-ms",
        "600000",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let client = reqwest::Client::new();
    let first = tokio::spawn(client.get(server.url("/users/1")).send());
    aside_testkit::eventually("the first request is in flight", Duration::from_secs(60), || async {
        admin_sample(&client, &server, "aside_serve_requests_in_flight").await == 1.0
    })
    .await;
    let second = get(&client, server.url("/users/2")).await;
    assert_error(&second, StatusCode::SERVICE_UNAVAILABLE, "over the limit");
    assert!(
        second.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("concurrency limit")),
        "{}",
        second.body
    );
    assert_eq!(get(&client, server.admin_url("/healthz")).await.status, StatusCode::OK);
    assert_eq!(
        admin_sample(
            &client,
            &server,
            "aside_serve_requests_refused_total{reason=\"concurrency\"}"
        )
        .await,
        1.0
    );
    first.abort();
}

/// A request not answered within `--request-timeout-ms` gets a 504.
#[tokio::test]
async fn a_request_past_the_request_timeout_gets_504() {
    let server = Server::start(&[
        "--ttl",
        "0",
        "--db-read-delay-ms",
        "60000",
        "--request-timeout-ms",
        "300",
    ]);
    let client = reqwest::Client::new();
    let reply = get(&client, server.url("/users/1")).await;
    assert_error(&reply, StatusCode::GATEWAY_TIMEOUT, "a slow read");
    assert_eq!(reply.body, json!({"error": "the request took longer than 300 ms"}));
}

const SECRET: &str = "s3cr3t-pw";

/// A server that cannot be reached, and a database that can, named with a
/// password: the password shows in no output and no response. At the
/// issue's base `cannot connect to PostgreSQL at postgres://...` printed it.
#[tokio::test]
async fn no_output_or_response_shows_a_password() {
    let closed = aside_testkit::free_port();
    let redis = format!("redis://admin:{SECRET}@127.0.0.1:{closed}");
    let runs: [&[&str]; 5] = [
        &["--redis", &redis],
        &["--redis-sentinel", &redis, "--redis-master", "primary"],
        &[
            "--database-url",
            &format!("postgres://postgres:{SECRET}@127.0.0.1:{closed}/test"),
        ],
        &[
            "--database-url",
            &format!("postgres://127.0.0.1:{closed}/test?password={SECRET}"),
        ],
        &["--database-url", &format!("mysql://root:{SECRET}@127.0.0.1:{closed}/x")],
    ];
    for args in runs {
        let out = Command::new(env!("CARGO_BIN_EXE_aside"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .expect("the aside binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?} should fail: {text}");
        assert!(!text.contains(SECRET), "{args:?} printed the password: {text}");
        assert!(text.contains("***"), "{args:?}: the server is named, masked: {text}");
    }

    // A database reached with a password (PostgreSQL's local server takes
    // it, or ignores it with trust authentication): nothing shows it.
    let database = PgDatabase::create().await;
    let url = database
        .url
        .replacen("postgres://postgres@", &format!("postgres://postgres:{SECRET}@"), 1);
    assert!(url.contains(SECRET), "the test's URL carries the password: {url}");
    let server = Server::start_with_env(&["--database-url", &url], &[("RUST_LOG", "info")]);
    let client = reqwest::Client::new();
    for path in [
        "/users/1",
        "/users/x",
        "/users?ids=1,2",
        "/nowhere",
        "/healthz",
        "/metrics",
    ] {
        let response = client.get(server.url(path)).send().await.expect("answers");
        let body = response.text().await.expect("a body");
        assert!(!body.contains(SECRET), "{path} showed the password: {body}");
    }
    server.terminate();
    let output = server.output();
    assert!(output.contains("listening on"), "{output}");
    assert!(!output.contains(SECRET), "printed the password: {output}");
}

/// A database gone mid-run: reads and writes answer 503 `database
/// unavailable`, with none of sqlx's text; the failure is in the log, and
/// `/healthz` reports it from its background check. At the base the
/// body carried `database error: ...` with sqlx's message.
#[tokio::test]
async fn database_failures_answer_without_internal_text() {
    let database = PgDatabase::create().await;
    let server = Server::start(&[
        "--database-url",
        &database.url,
        "--ttl",
        "0",
        "--health-interval-ms",
        "100",
    ]);
    let client = reqwest::Client::new();
    assert_eq!(get(&client, server.url("/users/1")).await.status, StatusCode::OK);
    database.drop_now().await;

    let unavailable = json!({"error": "database unavailable"});
    let new = json!({"name": "Ada", "email": "ada@example.com", "avatar": "a.png"});
    for (what, reply) in [
        ("read", get(&client, server.url("/users/1")).await),
        ("batch read", get(&client, server.url("/users?ids=1,2")).await),
        ("write", send(client.put(server.url("/users/1")).json(&new)).await),
    ] {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {}", reply.body);
        assert_eq!(reply.body, unavailable, "{what}");
    }
    aside_testkit::eventually("/healthz reports the database", Duration::from_secs(60), || async {
        let health = get(&client, server.url("/healthz")).await;
        health.status == StatusCode::SERVICE_UNAVAILABLE
            && health.body["database"] == json!({"name": "postgres", "ok": false, "error": "database unavailable"})
    })
    .await;
    let log = server.output();
    assert!(log.contains("request failed"), "the failure is logged: {log}");
}

/// `--admin-listen`: `/metrics` and `/healthz` there and not on the public
/// listener, the public routes the other way round; `/healthz` answers from
/// the background check, so 50 calls ping nothing (at the base each
/// call pinged the database and the store).
#[tokio::test]
async fn admin_listen_serves_metrics_and_healthz_apart() {
    let server = Server::start(&["--admin-listen", "127.0.0.1:0", "--health-interval-ms", "3600000"]);
    let client = reqwest::Client::new();
    assert_ne!(server.admin, Some(server.base.clone()));
    for path in ["/metrics", "/healthz"] {
        assert_error(&get(&client, server.url(path)).await, StatusCode::NOT_FOUND, path);
    }
    assert_error(
        &get(&client, server.admin_url("/users/1")).await,
        StatusCode::NOT_FOUND,
        "users on the admin listener",
    );
    assert_eq!(get(&client, server.url("/users/1")).await.status, StatusCode::OK);

    let pings = |target: &'static str| format!("aside_serve_health_pings_total{{target=\"{target}\"}}");
    let database_pings = admin_sample(&client, &server, &pings("database")).await;
    let store_pings = admin_sample(&client, &server, &pings("store")).await;
    assert!(database_pings >= 1.0 && store_pings >= 1.0, "the start-up check");
    for _ in 0..50 {
        let health = get(&client, server.admin_url("/healthz")).await;
        assert_eq!(health.status, StatusCode::OK, "{}", health.body);
        assert_eq!(health.body["status"], "ok", "{}", health.body);
        assert!(health.body["checked_ms_ago"].is_u64(), "{}", health.body);
    }
    assert_eq!(admin_sample(&client, &server, &pings("database")).await, database_pings);
    assert_eq!(admin_sample(&client, &server, &pings("store")).await, store_pings);
}

/// Reads from `stream` until the server closes it (true) or 60 s pass
/// (false: the failsafe).
async fn closed_by_the_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    read.await.is_ok()
}

/// With `--max-connections 2` and two connections open, a third is closed
/// at once; once one of the two closes, requests are served again.
#[tokio::test]
async fn a_connection_past_the_limit_is_closed() {
    let server = Server::start(&[
        "--max-connections",
        "2",
        "--header-timeout-ms",
        "600000",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let client = reqwest::Client::new();
    let open = "aside_serve_open_connections{listener=\"public\"}";
    let first = tokio::net::TcpStream::connect(server.addr()).await.expect("connects");
    let _second = tokio::net::TcpStream::connect(server.addr()).await.expect("connects");
    aside_testkit::eventually("two connections open", Duration::from_secs(60), || async {
        admin_sample(&client, &server, open).await == 2.0
    })
    .await;
    let mut third = tokio::net::TcpStream::connect(server.addr()).await.expect("connects");
    assert!(
        closed_by_the_server(&mut third).await,
        "a third connection was still open after 60 s"
    );
    assert_eq!(
        admin_sample(
            &client,
            &server,
            "aside_serve_connections_refused_total{listener=\"public\"}"
        )
        .await,
        1.0
    );
    drop(first);
    aside_testkit::eventually("a request is served again", Duration::from_secs(60), || async {
        matches!(client.get(server.url("/users/1")).send().await, Ok(r) if r.status() == StatusCode::OK)
    })
    .await;
}

/// Writes `bytes` and reads the status line of the answer. `bytes` must
/// be all the server reads before it answers (one byte past a limit), so
/// no reset of unread bytes can swallow the answer.
async fn status_after(server: &Server, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.expect("connects");
    stream.write_all(bytes).await.expect("request sent");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut chunk).await.expect("the answer is readable") {
            0 => break,
            n => answer.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Bodies past 64 KiB get 413 once the limit is crossed, heads past
/// 64 KiB get 431, and fields past 1 KiB get 400: what one request can
/// make the server hold (or cache, and serve 1,000 times in a batch) is
/// bounded.
#[tokio::test]
async fn oversized_bodies_heads_and_fields_are_refused() {
    const LIMIT: usize = 64 * 1024;
    let server = Server::start(&[]);
    let mut body = vec![b' '; LIMIT + 1];
    body[0] = b'"';
    let head = format!(
        "PUT /users/2 HTTP/1.1\r\nHost: aside\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let status = status_after(&server, &[head.as_bytes(), &body].concat()).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");

    let mut head = b"GET /users/1 HTTP/1.1\r\nHost: aside\r\nX-Padding: ".to_vec();
    head.resize(LIMIT, b'a');
    let status = status_after(&server, &head).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");

    let client = reqwest::Client::new();
    let long = json!({"name": "x".repeat(1025), "email": "e@example.com", "avatar": "a"});
    let refused = send(client.put(server.url("/users/2")).json(&long)).await;
    assert_error(&refused, StatusCode::BAD_REQUEST, "a long name");
    assert_eq!(refused.body["error"], "name: 1025 bytes, at most 1024");
    assert_eq!(get(&client, server.url("/users/2")).await.body["name"], "User 2");
}

/// The name `GET /users/3` answers, once the answer is no longer the
/// row's old one; panics after 60 s (the failsafe: an entry left stale
/// stays so for its TTL, 600 s).
async fn name_once_updated(client: &reqwest::Client, server: &Server) -> String {
    let failsafe = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let reply = get(client, server.url("/users/3")).await;
        // A 504 (a slow answer under a short request timeout) says nothing.
        let name = reply.body["name"].as_str().unwrap_or("User 3").to_owned();
        if reply.status == StatusCode::OK && name != "User 3" {
            return name;
        }
        assert!(
            tokio::time::Instant::now() < failsafe,
            "GET /users/3 still answers the old row after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads user 3 until it is a hit (a slow answer may be cut off by a
/// short request timeout, so answers that are not 200 are read again).
async fn cached_user_3(client: &reqwest::Client, server: &Server) {
    let failsafe = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let reply = get(client, server.url("/users/3")).await;
        if reply.status == StatusCode::OK && reply.cache.as_deref() == Some("hit") {
            return;
        }
        assert!(tokio::time::Instant::now() < failsafe, "user 3 never cached");
    }
}

fn new_user() -> Value {
    json!({"name": "NEW", "email": "new@example.com", "avatar": "https://avatars.example.com/new.png"})
}

/// A PUT dropped by the request timeout after its database write (Redis is
/// frozen, so the invalidation is still waiting) still invalidates: the
/// write and its invalidation run in a task of their own. When the request
/// future owned them, the dropped invalidation left the old row cached,
/// with nothing queued, until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_cut_off_by_the_request_timeout_still_invalidates() {
    let redis = aside_testkit::RedisServer::start();
    let server = Server::start(&["--redis", &redis.url(), "--request-timeout-ms", "50"]);
    let client = reqwest::Client::new();
    cached_user_3(&client, &server).await;

    redis.freeze();
    let put = send(client.put(server.url("/users/3")).json(&new_user())).await;
    assert_eq!(put.status, StatusCode::GATEWAY_TIMEOUT, "the request must be cut off");
    redis.thaw();
    assert_eq!(name_once_updated(&client, &server).await, "NEW");
}

/// SIGTERM replays the invalidations queued while Redis was unreachable
/// before the process exits: a server restarted on the same database and
/// Redis then reads the new row. Without the replay the queue died with
/// the process and the old row stayed cached until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_replays_queued_invalidations() {
    put_then_sigterm_replays(&[], StatusCode::OK).await;
}

/// As above for a PUT cut off by the request timeout while its
/// invalidation waits on a frozen Redis: the shutdown waits for the write
/// task to queue its invalidation before it replays the queue (it once
/// replayed an empty queue and exited, the task killed with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_cut_off_writes_then_replays() {
    put_then_sigterm_replays(&["--request-timeout-ms", "50"], StatusCode::GATEWAY_TIMEOUT).await;
}

async fn put_then_sigterm_replays(extra: &[&str], put_status: StatusCode) {
    let redis = aside_testkit::RedisServer::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("serve.db").display());
    let redis_url = redis.url();
    let mut args = vec!["--redis", redis_url.as_str(), "--database-url", url.as_str()];
    args.extend_from_slice(extra);
    let mut server = Server::start(&args);
    let client = reqwest::Client::new();
    cached_user_3(&client, &server).await;

    redis.freeze();
    let put = send(client.put(server.url("/users/3")).json(&new_user())).await;
    assert_eq!(put.status, put_status);
    server.terminate();
    // Redis comes back only once the server is replaying, or gone.
    aside_testkit::eventually("the server replays or exits", Duration::from_secs(60), || {
        let replaying = server.output().contains("replaying queued invalidations");
        let exited = server.child.try_wait().expect("waitable").is_some();
        async move { replaying || exited }
    })
    .await;
    redis.thaw();
    let (stopped, status) = tokio::task::spawn_blocking(move || {
        let status = server.child.wait();
        (server, status)
    })
    .await
    .expect("joined");
    assert!(status.expect("waited").success(), "{}", stopped.output());
    assert!(
        stopped.output().contains("1 replayed, 0 dropped"),
        "{}",
        stopped.output()
    );

    let restarted = Server::start(&args[..4]);
    let user = get(&client, restarted.url("/users/3")).await;
    assert_eq!(user.body["name"], "NEW", "{:?}", user.cache);
}

/// Opens a connection that pipelines `requests` batch GETs of the 100
/// seeded users (about 13 KB each) and never reads an answer: once the socket buffers
/// are full, the server's writes to it make no progress. The connection
/// stays open as long as the returned read half lives.
async fn stalled_reader(addr: std::net::SocketAddr, requests: usize) -> tokio::net::tcp::OwnedReadHalf {
    use tokio::io::AsyncWriteExt;
    let ids: Vec<String> = (1..=100).map(|id| id.to_string()).collect();
    let request = format!("GET /users?ids={} HTTP/1.1\r\nHost: aside\r\n\r\n", ids.join(","));
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let (read, mut write) = stream.into_split();
    tokio::spawn(async move {
        for _ in 0..requests {
            if write.write_all(request.as_bytes()).await.is_err() {
                return;
            }
        }
        // Keeps the write half, so the connection is never half-closed.
        std::future::pending::<()>().await;
    });
    read
}

/// Clients that stop reading their answers are disconnected once a write
/// has made no progress for `--write-timeout-ms`, so they cannot hold
/// every connection slot. Without a write timeout the two stalled
/// connections held both slots for good, and every new client was closed
/// at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_do_not_hold_the_connection_slots() {
    let server = Server::start(&["--max-connections", "2", "--write-timeout-ms", "500"]);
    let _stalled = [
        stalled_reader(server.addr(), 2000).await,
        stalled_reader(server.addr(), 2000).await,
    ];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client");
    let failsafe = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(server.url("/users/1")).send().await
            && response.status() == StatusCode::OK
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < failsafe,
            "a new client was still refused after 60 s: {}",
            server.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `aside serve --otel URL` sends the cache operations' spans and the
/// metrics to an OpenTelemetry collector over OTLP/HTTP: a collector of the
/// test's own records what arrives. The spans are protobuf, in which
/// strings travel as they are: the span name `aside.fetch_with` and the
/// namespace must be in a `/v1/traces` body, aside's hit counter in a
/// `/v1/metrics` one. What is buffered is sent when serve exits on SIGTERM.
#[cfg(feature = "otel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sends_spans_and_metrics_to_the_collector() {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::Uri;
    type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let received: Received = Arc::default();
    let collector = axum::Router::new()
        .fallback(|State(received): State<Received>, uri: Uri, body: Bytes| async move {
            received.lock().unwrap().push((uri.path().to_owned(), body.to_vec()));
            ""
        })
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let server = Server::start(&["--otel", &url, "--otel-interval-ms", "200"]);
    let client = reqwest::Client::new();
    for _ in 0..2 {
        assert_eq!(get(&client, server.url("/users/7")).await.status, StatusCode::OK);
    }
    server.terminate();
    let (server, status) = tokio::task::spawn_blocking(move || {
        let mut server = server;
        let status = server.child.wait();
        (server, status)
    })
    .await
    .unwrap();
    assert!(status.unwrap().success(), "{}", server.output());

    let received = received.lock().unwrap().clone();
    let holds = |path: &str, needle: &[u8]| {
        received
            .iter()
            .any(|(p, body)| p == path && body.windows(needle.len()).any(|w| w == needle))
    };
    let paths: Vec<&str> = received.iter().map(|(p, _)| p.as_str()).collect();
    assert!(
        holds("/v1/traces", b"aside.fetch_with"),
        "no span in {paths:?}: {}",
        server.output()
    );
    assert!(holds("/v1/traces", b"user:profile"), "no namespace in the spans");
    assert!(holds("/v1/metrics", b"aside_hits_total"), "no hit counter in {paths:?}");
    // The user's key is hashed in the spans, never sent as it is.
    assert!(!holds("/v1/traces", b"user:profile:7"), "a key in clear");
}
