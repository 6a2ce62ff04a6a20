//! End-to-end tests of `aside flush`: the write-back flusher as its own
//! process, over a Redis of the test's own and an SQLite file.
//!
//! The test holds SQLite's write lock (`BEGIN IMMEDIATE`) while it logs
//! writes and starts a flusher, so that the flusher's first batch is full
//! and its commit waits: a batch read (pending in the group, `XPENDING`)
//! and not committed is a flusher mid-batch, which is where the tests stop
//! it, with SIGTERM or SIGKILL. (The schema is made beforehand, so that
//! the flusher's start-up, which only checks it, needs no write.) Triggers record every
//! row change in an `applied` table, so a write applied twice shows. Every
//! wait is on an event or a state, with a generous bound; none sleeps.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aside::writeback::{DEFAULT_GROUP, WriteBackLog};
use aside::{Aside, Namespace};
use aside_testkit::{RedisServer, eventually};
use redis::aio::MultiplexedConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Connection, SqliteConnection};

const STREAM: &str = "aside:wb:users";
/// A generous bound for what a loaded machine does slowly.
const BOUND: Duration = Duration::from_secs(60);

/// The value `Namespace::write_back` logs: the demo's user profile.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct User {
    id: i64,
    name: String,
    email: String,
    avatar: String,
}

fn user(id: u64, version: u64) -> User {
    User {
        id: i64::try_from(id).unwrap(),
        name: format!("User {id} v{version}"),
        email: format!("user{id}@example.com"),
        avatar: format!("https://avatars.example.com/{id}.png"),
    }
}

/// A Redis, an SQLite file with the users table and its `applied` log, and
/// a namespace that writes back to the Redis.
struct Setup {
    redis: RedisServer,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    log: MultiplexedConnection,
    users: Namespace<u64, User>,
}

const SCHEMA: &str = "
CREATE TABLE users (
    id BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    avatar TEXT NOT NULL,
    version BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE products (id BIGINT PRIMARY KEY, name TEXT NOT NULL, price_cents BIGINT NOT NULL);
CREATE TABLE applied (id BIGINT NOT NULL, version BIGINT NOT NULL);
CREATE TRIGGER applied_on_insert AFTER INSERT ON users
    BEGIN INSERT INTO applied VALUES (new.id, new.version); END;
CREATE TRIGGER applied_on_update AFTER UPDATE ON users
    BEGIN INSERT INTO applied VALUES (new.id, new.version); END;
";

impl Setup {
    async fn new() -> Self {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.db");
        let mut db = SqliteConnection::connect_with(&Self::options(&path)).await.unwrap();
        sqlx::raw_sql(SCHEMA).execute(&mut db).await.unwrap();
        db.close().await.unwrap();
        let log = redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let users = Aside::builder()
            .build()
            .namespace::<u64, User>("users")
            .write_back(WriteBackLog::connect(&redis.url()).await.unwrap())
            .build()
            .unwrap();
        Setup {
            redis,
            _dir: dir,
            path,
            log,
            users,
        }
    }

    fn options(path: &std::path::Path) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
    }

    async fn db(&self) -> SqliteConnection {
        SqliteConnection::connect_with(&Self::options(&self.path))
            .await
            .unwrap()
    }

    /// Holds SQLite's write lock until the connection rolls back.
    async fn lock(&self) -> SqliteConnection {
        let mut db = self.db().await;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut db).await.unwrap();
        db
    }

    async fn write(&self, ids: std::ops::RangeInclusive<u64>, version: u64) {
        for id in ids {
            self.users.write_back(&id, &user(id, version), version).await.unwrap();
        }
    }

    /// Starts `aside flush` as `consumer` on the SQLite file, stdout and
    /// stderr piped.
    fn flusher(&self, consumer: &str, extra: &[&str]) -> Flusher {
        self.flusher_on(&format!("sqlite://{}", self.path.display()), consumer, extra)
    }

    fn flusher_on(&self, database_url: &str, consumer: &str, extra: &[&str]) -> Flusher {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aside"))
            .args(["flush", "--redis", &self.redis.url(), "--database-url", database_url])
            .args([
                "--consumer",
                consumer,
                "--batch-size",
                "10",
                "--block-ms",
                "100",
                "--json",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the aside binary runs");
        let (lines, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        Flusher { child, stderr }
    }

    async fn redis_u64(&self, cmd: &mut redis::Cmd) -> u64 {
        cmd.query_async(&mut self.log.clone()).await.unwrap()
    }

    async fn len(&self) -> u64 {
        self.redis_u64(redis::cmd("XLEN").arg(STREAM)).await
    }

    /// Entries read by a flusher and not acknowledged (0 before a flusher
    /// made the group).
    async fn pending(&self) -> u64 {
        let summary: redis::RedisResult<(u64, redis::Value, redis::Value, redis::Value)> = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(DEFAULT_GROUP)
            .query_async(&mut self.log.clone())
            .await;
        summary.map_or(0, |s| s.0)
    }

    async fn until(&self, what: &str, check: impl AsyncFn(&Self) -> bool) {
        eventually(what, BOUND, || check(self)).await;
    }

    /// `(id, version, name)` of every row, by id.
    async fn rows(&self) -> Vec<(i64, i64, String)> {
        sqlx::query_as("SELECT id, version, name FROM users ORDER BY id")
            .fetch_all(&mut self.db().await)
            .await
            .unwrap()
    }

    /// `(id, version)` pairs that changed a row more than once.
    async fn applied_twice(&self) -> Vec<(i64, i64)> {
        sqlx::query_as("SELECT id, version FROM applied GROUP BY id, version HAVING COUNT(*) > 1")
            .fetch_all(&mut self.db().await)
            .await
            .unwrap()
    }
}

/// A running `aside flush`, killed (SIGKILL) if still running when dropped.
struct Flusher {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Flusher {
    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for a line of stderr that contains `text`.
    fn said(&self, text: &str) {
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(e) => panic!("aside flush never said {text:?}: {e}"),
            }
        }
    }

    /// Waits for the exit, which must be a success, and returns the JSON summary.
    fn summary(mut self) -> serde_json::Value {
        let mut stdout = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        let status = self.child.wait().unwrap();
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        assert!(status.success(), "aside flush failed: {status}: {stderr:?}");
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM mid-batch: the batch in hand is committed (once the lock goes),
/// acknowledged, and the process exits 0 without taking another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_in_hand_acknowledges_it_and_exits() {
    let setup = Setup::new().await;
    let mut lock = setup.lock().await;
    setup.write(1..=40, 1).await;
    let flusher = setup.flusher("first", &[]);
    setup
        .until("a batch is read and held at its commit", async |s| {
            s.pending().await == 10
        })
        .await;
    flusher.signal("-TERM");
    flusher.said("stopping after the batch in hand");
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    let summary = flusher.summary();
    assert_eq!(summary["flushed"], 10, "the batch in hand, and no other: {summary}");
    assert_eq!(summary["batches"], 1, "{summary}");
    assert_eq!(setup.pending().await, 0, "it acknowledged what it committed");
    assert_eq!(setup.len().await, 30, "and left the rest in the log");
    let rows = setup.rows().await;
    assert_eq!(rows.len(), 10, "{rows:?}");

    // A drain flushes the rest and exits.
    let rest = setup.flusher("second", &["--drain"]).summary();
    assert_eq!(rest["flushed"], 30, "{rest}");
    assert_eq!(setup.rows().await.len(), 40);
    assert_eq!(setup.len().await, 0);
}

/// SIGKILL mid-batch, holding the last write of keys 1 to 10: a second
/// flusher claims that batch, and the database ends at the last write of
/// every key, each write applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flusher_killed_mid_batch_loses_no_write_and_the_next_claims_its_batch() {
    let setup = Setup::new().await;
    setup.write(1..=40, 1).await;
    let zero = setup.flusher("zero", &["--drain"]).summary();
    assert_eq!(zero["flushed"], 40, "version 1 flushed: {zero}");
    let mut lock = setup.lock().await;
    setup.write(1..=40, 2).await;
    let first = setup.flusher("first", &["--min-idle-ms", "600000"]);
    setup
        .until("a batch is read and held at its commit", async |s| {
            s.pending().await == 10
        })
        .await;
    drop(first); // SIGKILL, mid-batch
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();

    let second = setup.flusher("second", &["--min-idle-ms", "100"]);
    setup.until("the log drained", async |s| s.len().await == 0).await;
    second.signal("-TERM");
    let summary = second.summary();
    assert_eq!(summary["claimed"], 10, "the killed flusher's batch: {summary}");
    assert_eq!(summary["flushed"], 40, "{summary}");
    assert_eq!(setup.pending().await, 0);

    let rows = setup.rows().await;
    let expected: Vec<(i64, i64, String)> = (1..=40).map(|id| (id, 2, user(id as u64, 2).name)).collect();
    assert_eq!(rows, expected, "every key at its last write");
    assert_eq!(setup.applied_twice().await, vec![], "no write changed a row twice");
}

/// The same flusher on PostgreSQL (the local server, `ASIDE_TEST_POSTGRES`
/// or `postgres://postgres@127.0.0.1:5432/test`), in a schema of its own:
/// the users table made by the migration gets its version column, and the
/// versioned upsert keeps the newest write of each key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_into_postgres_with_the_same_versioned_upsert() {
    let admin =
        std::env::var("ASIDE_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let mut pg = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must run at {admin} (set ASIDE_TEST_POSTGRES): {e}"));
    let schema = format!("aside_flush_{:016x}", rand::random::<u64>());
    let sql = |text: String| sqlx::raw_sql(sqlx::AssertSqlSafe(text));
    sql(format!("CREATE SCHEMA {schema}")).execute(&mut pg).await.unwrap();
    let separator = if admin.contains('?') { '&' } else { '?' };
    let url = format!("{admin}{separator}options=-c%20search_path%3D{schema}");

    let setup = Setup::new().await;
    setup.write(1..=20, 2).await;
    setup.write(1..=20, 1).await; // older: logged, never applied over version 2
    let summary = setup.flusher_on(&url, "pg", &["--drain"]).summary();
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, version, name FROM {schema}.users ORDER BY id"
    )))
    .fetch_all(&mut pg)
    .await
    .unwrap();
    sql(format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut pg)
        .await
        .unwrap();
    assert_eq!(summary["flushed"], 40, "{summary}");
    let expected: Vec<(i64, i64, String)> = (1..=20).map(|id| (id, 2, user(id as u64, 2).name)).collect();
    assert_eq!(rows, expected);
}
