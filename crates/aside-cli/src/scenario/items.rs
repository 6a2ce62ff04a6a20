//! The scenarios' database: rows of `(id, version)` in an SQLite file, each
//! write bumping a row's version so a read can tell how old its answer is.
//!
//! Owns the table and the slow read of the article's race ("the row is
//! read, the answer comes later"), counted per process, and the warm-up
//! fill that starts a run warm.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aside::Namespace;
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

use crate::error::{CliError, Context, Result};

/// Rows `1..=n` of `(id, version)` in an SQLite file, with a read delay.
#[derive(Debug, Clone)]
pub struct Rows {
    pool: SqlitePool,
    read_delay: Duration,
    queries: Arc<AtomicU64>,
}

impl Rows {
    /// Creates the table in the file at `path` with `n` rows at version 0.
    ///
    /// # Errors
    /// The SQLite error, with what was being done.
    pub async fn create(path: &Path, n: u64, read_delay: Duration) -> Result<Rows> {
        let rows = Rows::open(path, read_delay).await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)")
            .execute(&rows.pool)
            .await
            .context("cannot create the items table")?;
        sqlx::query("DELETE FROM items")
            .execute(&rows.pool)
            .await
            .context("cannot clear items")?;
        for id in 1..=n {
            sqlx::query("INSERT INTO items (id, version) VALUES (?, 0)")
                .bind(id as i64)
                .execute(&rows.pool)
                .await
                .context("cannot seed items")?;
        }
        Ok(rows)
    }

    /// Opens the table another process created at `path` (a stampede
    /// worker reads the rows its parent seeded), with its own query count.
    ///
    /// # Errors
    /// The SQLite error, with what was being done.
    pub async fn open(path: &Path, read_delay: Duration) -> Result<Rows> {
        let options = crate::db::connect_options(path);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .context(format_args!("cannot open the database {}", path.display()))?;
        Ok(Rows {
            pool,
            read_delay,
            queries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The loader: reads the row now, answers after the read delay (the
    /// article's slow read, which is what opens the race).
    ///
    /// # Errors
    /// The SQLite error.
    pub async fn read(&self, id: u64) -> Result<Option<u64>, sqlx::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        let version: Option<(i64,)> = sqlx::query_as("SELECT version FROM items WHERE id = ?")
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await?;
        if !self.read_delay.is_zero() {
            tokio::time::sleep(self.read_delay).await;
        }
        Ok(version.map(|(v,)| v as u64))
    }

    /// The version in the database now, uncounted (for the final check).
    ///
    /// # Errors
    /// The SQLite error.
    pub async fn current(&self, id: u64) -> Result<u64> {
        let (v,): (i64,) = sqlx::query_as("SELECT version FROM items WHERE id = ?")
            .bind(id as i64)
            .fetch_one(&self.pool)
            .await
            .context("cannot read an item")?;
        Ok(v as u64)
    }

    /// Bumps the row's version; returns the new one.
    ///
    /// # Errors
    /// The SQLite error.
    pub async fn write(&self, id: u64) -> Result<u64> {
        let (v,): (i64,) = sqlx::query_as("UPDATE items SET version = version + 1 WHERE id = ? RETURNING version")
            .bind(id as i64)
            .fetch_one(&self.pool)
            .await
            .context("cannot update an item")?;
        Ok(v as u64)
    }

    /// Sets the row to `version` if it is behind it (a write-back flush:
    /// a versioned upsert, so a replayed write changes nothing); returns
    /// whether it changed the row.
    ///
    /// # Errors
    /// The SQLite error.
    pub async fn upsert(&self, id: u64, version: u64) -> Result<bool, sqlx::Error> {
        let changed = sqlx::query("UPDATE items SET version = ? WHERE id = ? AND version < ?")
            .bind(version as i64)
            .bind(id as i64)
            .bind(version as i64)
            .execute(&self.pool)
            .await?;
        Ok(changed.rows_affected() == 1)
    }

    /// Loader calls so far, in this process.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Resets the query count.
    pub fn reset_queries(&self) {
        self.queries.store(0, Ordering::Relaxed);
    }
}

/// Fills keys `1..=keys` of `ns` from `rows`, all loads at once, before a
/// run starts (so the run begins warm).
///
/// # Errors
/// The first failed read.
pub async fn fill_all(ns: &Namespace<u64, u64>, rows: &Rows, keys: u64) -> Result<()> {
    let mut fills = tokio::task::JoinSet::new();
    for k in 1..=keys {
        let (ns, rows) = (ns.clone(), rows.clone());
        fills.spawn(async move { ns.fetch(&k, || rows.read(k)).await.map(|_| ()) });
    }
    while let Some(filled) = fills.join_next().await {
        filled
            .map_err(|e| CliError::new(format!("a warm-up task failed: {e}")))?
            .map_err(|e| CliError::new(format!("a warm-up read failed: {e}")))?;
    }
    Ok(())
}
