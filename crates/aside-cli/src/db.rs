//! The demo's database: an SQLite file of user profiles, and its queries.
//!
//! Owns the `users` table (schema, seeding) and the two statements the
//! workloads run against it: the loader's `SELECT` by id, which is counted,
//! and the `UPDATE` of a write. The pools are over a file in WAL mode, so
//! every connection sees the same data and readers never wait for a writer
//! (a pool over `sqlite::memory:` would give each connection its own empty
//! database).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, FromRow};
use tempfile::TempDir;

use crate::error::Context;

/// Largest `--users`: the key sampler holds one `f64` per user.
pub const MAX_USERS: u64 = 10_000_000;
/// Upper bound on the database's read connections, whatever the concurrency
/// (each is a thread; more do not help on a small machine).
pub const MAX_DB_READERS: u32 = 8;

/// Rows per `INSERT` while seeding: 4 parameters each stays under SQLite's
/// oldest bound of 999 parameters per statement.
const SEED_BATCH: u64 = 200;

/// One user profile, as stored in the database and in the cache.
#[derive(Debug, Clone, PartialEq, Eq, FromRow, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// Primary key, `1..=users`.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Avatar URL.
    pub avatar: String,
}

/// Pools over the database file, with a count of the queries the cache did
/// not absorb. Cloning is cheap; clones share the pools and the count.
///
/// Reads and writes have separate pools. SQLite runs one writer at a time;
/// with one pool, concurrent `UPDATE`s would hold connections while they
/// sleep in SQLite's busy handler (milliseconds), starving the loaders of
/// connections. A single-connection writer pool queues writes in the pool
/// instead, and the readers (WAL mode) never wait for a writer.
#[derive(Debug, Clone)]
pub struct Db {
    reader: SqlitePool,
    writer: SqlitePool,
    queries: Arc<AtomicU64>,
}

/// SQLite holds ids as `i64`; ids here never exceed the (bounded) user count.
fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// How every demo database file is opened: created if missing, WAL (readers
/// never wait for a writer), `synchronous = NORMAL`, 5 s busy timeout.
pub fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
}

/// The database file of a run: `given` (kept afterwards), or `users.db` in
/// a new temporary directory, removed with its WAL and shared-memory files
/// when the returned guard drops (after the pools are closed).
///
/// # Errors
/// When the temporary directory cannot be created.
pub fn database_path(given: Option<&Path>) -> crate::error::Result<(PathBuf, Option<TempDir>)> {
    match given {
        Some(path) => Ok((path.to_path_buf(), None)),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("aside-demo-")
                .tempdir()
                .context("cannot create a temporary directory for the database")?;
            Ok((dir.path().join("users.db"), Some(dir)))
        }
    }
}

impl Db {
    /// Opens the database file at `path` (see [`Db::open`]) and seeds it with
    /// profiles `1..=users` (see [`Db::seed`]). Returns the database and how
    /// many rows were inserted.
    ///
    /// # Errors
    /// The SQLite error, saying which file and what was being done.
    pub async fn open_seeded(path: &Path, readers: u32, users: u64) -> crate::error::Result<(Db, u64)> {
        let db = Db::open(path, readers)
            .await
            .context(format!("cannot open the SQLite database {}", path.display()))?;
        match db.seed(users).await {
            Ok(inserted) => Ok((db, inserted)),
            Err(e) => {
                db.close().await;
                Err(e).context(format!("cannot seed the users table in {}", path.display()))
            }
        }
    }

    /// Opens (creating if needed) the database file at `path` in WAL mode,
    /// with up to `readers` connections for reads and one for writes.
    ///
    /// # Errors
    /// The SQLite error when the file cannot be opened or created.
    pub async fn open(path: &Path, readers: u32) -> Result<Db, sqlx::Error> {
        let options = connect_options(path);
        // The writer first: it creates the file and switches it to WAL.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .connect_with(options)
            .await?;
        Ok(Db {
            reader,
            writer,
            queries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Creates the `users` table if it is missing and makes sure it holds
    /// profiles `1..=users`, inserting the missing ones in one transaction.
    /// Existing rows are left as they are, so a `--db` file can be reused.
    /// Returns how many rows were inserted.
    ///
    /// # Errors
    /// The SQLite error, e.g. when a `users` table of another shape exists.
    pub async fn seed(&self, users: u64) -> Result<u64, sqlx::Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS users (
                id BIGINT PRIMARY KEY,
                name TEXT NOT NULL,
                email TEXT NOT NULL,
                avatar TEXT NOT NULL
            )",
        )
        .execute(&self.writer)
        .await?;

        let mut tx = self.writer.begin().await?;
        let mut inserted = 0;
        let mut first = 1;
        while first <= users {
            let last = (first + SEED_BATCH - 1).min(users);
            let rows = vec!["(?, ?, ?, ?)"; (last - first + 1) as usize].join(", ");
            // Only placeholders are spliced in; every value is bound.
            let sql = format!("INSERT OR IGNORE INTO users (id, name, email, avatar) VALUES {rows}");
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in first..=last {
                let user = Self::profile(id);
                query = query.bind(user.id).bind(user.name).bind(user.email).bind(user.avatar);
            }
            inserted += query.execute(&mut *tx).await?.rows_affected();
            first = last + 1;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// The seeded profile of `id`.
    pub fn profile(id: u64) -> User {
        User {
            id: sql_id(id),
            name: format!("User {id}"),
            email: format!("user{id}@example.com"),
            avatar: format!("https://avatars.example.com/{id}.png"),
        }
    }

    /// The cache's loader: reads one profile, and counts the query.
    ///
    /// # Errors
    /// The SQLite error.
    pub async fn load_user(&self, id: u64) -> Result<Option<User>, sqlx::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        sqlx::query_as::<_, User>("SELECT id, name, email, avatar FROM users WHERE id = ?")
            .bind(sql_id(id))
            .fetch_optional(&self.reader)
            .await
    }

    /// The batch loader: reads the profiles of `ids` in one
    /// `SELECT ... WHERE id IN (...)`, counted as one query. Ids that are
    /// not in the table are absent from the result.
    ///
    /// # Errors
    /// The SQLite error.
    pub async fn load_users(&self, ids: &[u64]) -> Result<HashMap<u64, User>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        self.queries.fetch_add(1, Ordering::Relaxed);
        // Only integers are spliced in (formatted from `i64`s), so the
        // statement cannot carry anything but ids; one statement, however
        // many ids, with no bound-parameter limit to split on.
        let list = ids
            .iter()
            .map(|&id| sql_id(id).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!("SELECT id, name, email, avatar FROM users WHERE id IN ({list})");
        let users = sqlx::query_as::<_, User>(AssertSqlSafe(sql))
            .fetch_all(&self.reader)
            .await?;
        Ok(users
            .into_iter()
            .filter_map(|user| u64::try_from(user.id).ok().map(|id| (id, user)))
            .collect())
    }

    /// A write: renames user `id` (version `version` of its name and e-mail).
    /// Returns whether a row changed.
    ///
    /// # Errors
    /// The SQLite error.
    pub async fn update_user(&self, id: u64, version: u64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("UPDATE users SET name = ?, email = ? WHERE id = ?")
            .bind(format!("User {id} v{version}"))
            .bind(format!("user{id}+v{version}@example.com"))
            .bind(sql_id(id))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// `SELECT`s run by loaders so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Closes every connection (the last one checkpoints the WAL).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}
