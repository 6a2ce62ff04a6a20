//! `aside serve`'s database: the `users` and `products` tables, on SQLite or
//! PostgreSQL, and every statement the service runs against them; `aside
//! flush` writes its users through it too (the `version` column and the
//! versioned upsert).
//!
//! Owns opening the database from `--database-url` (a temporary SQLite file
//! by default), the schema (the SQL files of `migrations/`, run in order at
//! start-up; each is idempotent), seeding empty tables, and the reads
//! (counted, and followed by `--db-read-delay-ms`) and writes. The two
//! backends are an enum of two pools: every statement is written once, with
//! `$N` placeholders, which both SQLite and PostgreSQL accept.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, FromRow};
use tempfile::TempDir;

use crate::error::{CliError, Context, Result};
use crate::redact;
use crate::serve::metrics;

pub use crate::db::User;

/// The schema, in the order it is applied: `(file name, SQL)`.
const MIGRATIONS: [(&str, &str); 2] = [
    ("0001_users.sql", include_str!("migrations/0001_users.sql")),
    ("0002_products.sql", include_str!("migrations/0002_products.sql")),
];

/// Rows per `INSERT` while seeding: at most 4 parameters each stays under
/// SQLite's oldest bound of 999 parameters per statement.
const SEED_BATCH: u64 = 200;

/// Connections per pool.
const MAX_CONNECTIONS: u32 = 16;

/// How long a statement may wait for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// One product, as stored in the database and in the cache.
#[derive(Debug, Clone, PartialEq, Eq, FromRow, serde::Serialize, serde::Deserialize)]
pub struct Product {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Price in cents.
    pub price_cents: i64,
}

/// The new contents of a user row: the body of `PUT /users/{id}`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFields {
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Avatar URL.
    pub avatar: String,
}

/// The longest text field a row takes, in bytes (400 past it): a row is
/// cached and served in batches of up to 1,000, so its size is bounded.
pub const MAX_FIELD_BYTES: usize = 1024;

fn check_field(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_FIELD_BYTES {
        return Err(format!("{name}: {} bytes, at most {MAX_FIELD_BYTES}", value.len()));
    }
    // PostgreSQL's text cannot hold NUL: refused here, a PUT gets 400 and a
    // logged write-back row is parked, instead of a batch that fails for
    // good on every retry.
    if value.contains('\0') {
        return Err(format!("{name}: holds a NUL character, which PostgreSQL cannot store"));
    }
    Ok(())
}

impl UserFields {
    /// Refuses a field over [`MAX_FIELD_BYTES`], naming it.
    pub fn check(&self) -> Result<(), String> {
        check_field("name", &self.name)?;
        check_field("email", &self.email)?;
        check_field("avatar", &self.avatar)
    }
}

impl ProductFields {
    /// Refuses a field over [`MAX_FIELD_BYTES`], naming it.
    pub fn check(&self) -> Result<(), String> {
        check_field("name", &self.name)
    }
}

/// The new contents of a product row: the body of `PUT /products/{id}`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductFields {
    /// Display name.
    pub name: String,
    /// Price in cents.
    pub price_cents: i64,
}

/// A row type of one of the tables, readable from either backend.
pub trait Record:
    serde::Serialize
    + serde::de::DeserializeOwned
    + Clone
    + Send
    + Sync
    + Unpin
    + 'static
    + for<'r> FromRow<'r, SqliteRow>
    + for<'r> FromRow<'r, PgRow>
{
    /// The table, also the label of the read counter.
    const TABLE: &'static str;
    /// The columns, in the order of the struct's fields.
    const COLUMNS: &'static str;
    /// `SELECT` of one row by id (`$1`).
    const SELECT_ONE: &'static str;
    /// The primary key.
    fn id(&self) -> i64;
}

impl Record for User {
    const TABLE: &'static str = "users";
    const COLUMNS: &'static str = "id, name, email, avatar";
    const SELECT_ONE: &'static str = "SELECT id, name, email, avatar FROM users WHERE id = $1";
    fn id(&self) -> i64 {
        self.id
    }
}

impl Record for Product {
    const TABLE: &'static str = "products";
    const COLUMNS: &'static str = "id, name, price_cents";
    const SELECT_ONE: &'static str = "SELECT id, name, price_cents FROM products WHERE id = $1";
    fn id(&self) -> i64 {
        self.id
    }
}

/// The pool of one backend.
#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the pool, whichever backend it is: the
/// body is compiled once per backend.
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// The service's database. Cloning is cheap; clones share the pool.
#[derive(Debug, Clone)]
pub struct Database {
    pool: Pool,
    read_delay: Duration,
}

/// A database id from a (range-checked) API id.
fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

impl Database {
    /// Opens the database of `url` (`postgres://...`, `sqlite://PATH`), or a
    /// new SQLite file in a temporary directory, removed when the returned
    /// guard drops. Reads are followed by `read_delay`.
    ///
    /// # Errors
    /// An unsupported URL, or the database cannot be opened.
    pub async fn open(url: Option<&str>, read_delay: Duration) -> Result<(Database, Option<TempDir>)> {
        let (pool, scratch) = match url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let pool = PgPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect(url)
                    .await
                    .context(format_args!("cannot connect to PostgreSQL at {}", redact::url(url)))?;
                (Pool::Postgres(pool), None)
            }
            Some(url) if url.starts_with("sqlite:") => {
                let options = SqliteConnectOptions::from_str(url)
                    .context(format_args!("bad SQLite URL {}", redact::url(url)))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5));
                // Each connection to an in-memory database has its own database.
                let connections = if url.contains("memory") { 1 } else { MAX_CONNECTIONS };
                (
                    Pool::Sqlite(Self::sqlite_pool(options, connections, &redact::url(url)).await?),
                    None,
                )
            }
            Some(url) => {
                return Err(CliError::new(format!(
                    "unsupported database URL {}: expected postgres://... or sqlite://PATH",
                    redact::url(url)
                )));
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("aside-serve-")
                    .tempdir()
                    .context("cannot create a temporary directory for the database")?;
                let path = dir.path().join("serve.db");
                let options = crate::db::connect_options(&path);
                let pool = Self::sqlite_pool(options, MAX_CONNECTIONS, &path.display().to_string()).await?;
                (Pool::Sqlite(pool), Some(dir))
            }
        };
        Ok((Database { pool, read_delay }, scratch))
    }

    async fn sqlite_pool(options: SqliteConnectOptions, connections: u32, what: &str) -> Result<SqlitePool> {
        SqlitePoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .context(format_args!("cannot open the SQLite database {what}"))
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Applies the SQL files of `migrations/`, in order.
    ///
    /// # Errors
    /// The database's error, naming the file.
    pub async fn migrate(&self) -> Result<()> {
        for (name, sql) in MIGRATIONS {
            on_pool!(&self.pool, p => sqlx::raw_sql(sql).execute(p).await.map(|_| ()))
                .context(format_args!("cannot apply the migration {name}"))?;
        }
        Ok(())
    }

    /// Fills each empty table: users `1..=users` and products
    /// `1..=products`. A table that holds rows is left as it is. Returns the
    /// rows inserted into each.
    ///
    /// # Errors
    /// The database's error.
    pub async fn seed(&self, users: u64, products: u64) -> Result<(u64, u64)> {
        let mut inserted = (0, 0);
        if self.is_empty("users").await? {
            inserted.0 = self
                .insert_batches("users (id, name, email, avatar)", 4, users, |id| {
                    vec![
                        Value::Int(sql_id(id)),
                        Value::Text(format!("User {id}")),
                        Value::Text(format!("user{id}@example.com")),
                        Value::Text(format!("https://avatars.example.com/{id}.png")),
                    ]
                })
                .await
                .context("cannot seed the users table")?;
        }
        if self.is_empty("products").await? {
            inserted.1 = self
                .insert_batches("products (id, name, price_cents)", 3, products, |id| {
                    vec![
                        Value::Int(sql_id(id)),
                        Value::Text(format!("Product {id}")),
                        Value::Int(sql_id(100 + id * 37 % 10_000)),
                    ]
                })
                .await
                .context("cannot seed the products table")?;
        }
        Ok(inserted)
    }

    async fn is_empty(&self, table: &'static str) -> Result<bool> {
        let sql = match table {
            "users" => "SELECT COUNT(*) FROM users",
            _ => "SELECT COUNT(*) FROM products",
        };
        let count: i64 = on_pool!(&self.pool, p => sqlx::query_scalar(sql).fetch_one(p).await)
            .context(format_args!("cannot count the rows of {table}"))?;
        Ok(count == 0)
    }

    /// Inserts rows `1..=n` built by `row` (`width` values each) in one
    /// transaction, `SEED_BATCH` rows per statement.
    async fn insert_batches(
        &self,
        into: &str,
        width: usize,
        n: u64,
        row: impl Fn(u64) -> Vec<Value>,
    ) -> Result<u64, sqlx::Error> {
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let mut inserted = 0;
            let mut first = 1;
            while first <= n {
                let last = (first + SEED_BATCH - 1).min(n);
                let rows = (0..=(last - first) as usize)
                    .map(|r| {
                        let cells: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
                        format!("({})", cells.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                // Only placeholders are spliced in; every value is bound.
                let sql = format!("INSERT INTO {into} VALUES {rows} ON CONFLICT (id) DO NOTHING");
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for id in first..=last {
                    for value in row(id) {
                        query = match value {
                            Value::Int(v) => query.bind(v),
                            Value::Text(v) => query.bind(v),
                        };
                    }
                }
                inserted += query.execute(&mut *tx).await?.rows_affected();
                first = last + 1;
            }
            tx.commit().await?;
            Ok(inserted)
        })
    }

    /// Counts a read and waits `--db-read-delay-ms`.
    async fn after_read(&self, table: &'static str) {
        ::metrics::counter!(metrics::DB_READS, "table" => table).increment(1);
        if !self.read_delay.is_zero() {
            tokio::time::sleep(self.read_delay).await;
        }
    }

    /// The row of `id`, if any: the cache's loader.
    ///
    /// # Errors
    /// The database's error.
    pub async fn read_one<R: Record>(&self, id: u64) -> Result<Option<R>, sqlx::Error> {
        let row =
            on_pool!(&self.pool, p => sqlx::query_as::<_, R>(R::SELECT_ONE).bind(sql_id(id)).fetch_optional(p).await);
        self.after_read(R::TABLE).await;
        row
    }

    /// The rows of `ids` in one `SELECT ... WHERE id IN (...)`: the batch
    /// loader. Ids not in the table are absent from the result.
    ///
    /// # Errors
    /// The database's error.
    pub async fn read_many<R: Record>(&self, ids: &[u64]) -> Result<HashMap<u64, R>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        // Only integers are spliced in, so the statement carries nothing but
        // ids, with no bound-parameter limit to split on.
        let list = ids
            .iter()
            .map(|&id| sql_id(id).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!("SELECT {} FROM {} WHERE id IN ({list})", R::COLUMNS, R::TABLE);
        let rows = on_pool!(&self.pool, p => sqlx::query_as::<_, R>(AssertSqlSafe(sql)).fetch_all(p).await);
        self.after_read(R::TABLE).await;
        Ok(rows?
            .into_iter()
            .filter_map(|row| u64::try_from(row.id()).ok().map(|id| (id, row)))
            .collect())
    }

    /// Replaces user `id`; returns the new row, `None` when there is no such user.
    ///
    /// # Errors
    /// The database's error.
    pub async fn update_user(&self, id: u64, fields: &UserFields) -> Result<Option<User>, sqlx::Error> {
        const SQL: &str = "UPDATE users SET name = $1, email = $2, avatar = $3 WHERE id = $4 \
                           RETURNING id, name, email, avatar";
        on_pool!(&self.pool, p => sqlx::query_as::<_, User>(SQL)
            .bind(&fields.name)
            .bind(&fields.email)
            .bind(&fields.avatar)
            .bind(sql_id(id))
            .fetch_optional(p)
            .await)
    }

    /// Replaces product `id`; returns the new row, `None` when there is no such product.
    ///
    /// # Errors
    /// The database's error.
    pub async fn update_product(&self, id: u64, fields: &ProductFields) -> Result<Option<Product>, sqlx::Error> {
        const SQL: &str = "UPDATE products SET name = $1, price_cents = $2 WHERE id = $3 \
                           RETURNING id, name, price_cents";
        on_pool!(&self.pool, p => sqlx::query_as::<_, Product>(SQL)
            .bind(&fields.name)
            .bind(fields.price_cents)
            .bind(sql_id(id))
            .fetch_optional(p)
            .await)
    }

    /// Adds the `version` column of `users` (a `BIGINT`, 0 for existing
    /// rows) that the versioned upsert of `aside flush` compares, unless
    /// it is there. Not a migration file: SQLite has no `ADD COLUMN IF NOT
    /// EXISTS`.
    ///
    /// # Errors
    /// The database's error.
    pub async fn ensure_user_versions(&self) -> Result<()> {
        const PROBE: &str = "SELECT version FROM users WHERE 1 = 0";
        const ADD: &str = "ALTER TABLE users ADD COLUMN version BIGINT NOT NULL DEFAULT 0";
        if on_pool!(&self.pool, p => sqlx::query(PROBE).execute(p).await.is_ok()) {
            return Ok(());
        }
        on_pool!(&self.pool, p => sqlx::query(ADD).execute(p).await.map(|_| ()))
            .context("cannot add the version column to the users table")
    }

    /// Writes `rows` (each a user at a version) in one transaction, each
    /// only if its version is above the row's: `INSERT ... ON CONFLICT (id)
    /// DO UPDATE ... WHERE excluded.version > users.version`. A row written
    /// again at the same version is left as it is, so a replayed batch
    /// changes nothing. Returns how many rows changed.
    ///
    /// # Errors
    /// The database's error; nothing of the batch is written then.
    pub async fn upsert_users_versioned(&self, rows: &[(&User, i64)]) -> Result<u64, sqlx::Error> {
        const SQL: &str = "INSERT INTO users (id, name, email, avatar, version) VALUES ($1, $2, $3, $4, $5) \
                           ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email, \
                           avatar = excluded.avatar, version = excluded.version \
                           WHERE excluded.version > users.version";
        on_pool!(&self.pool, p => {
            let mut tx = p.begin().await?;
            let mut changed = 0;
            for (user, version) in rows {
                changed += sqlx::query(SQL)
                    .bind(user.id)
                    .bind(&user.name)
                    .bind(&user.email)
                    .bind(&user.avatar)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(changed)
        })
    }

    /// Checks that the database answers a `SELECT 1`.
    ///
    /// # Errors
    /// The database's error.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_pool!(&self.pool, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))
    }

    /// Closes every connection.
    pub async fn close(&self) {
        on_pool!(&self.pool, p => p.close().await)
    }
}

/// A value bound while seeding.
enum Value {
    Int(i64),
    Text(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PostgreSQL refuses text with NUL; SQLite takes it. Refused for both,
    /// so a write-back batch holding one is not retried for good.
    #[test]
    fn a_field_with_a_nul_character_is_refused_by_name() {
        let fields = UserFields {
            name: "Ada\0".into(),
            email: "ada@example.com".into(),
            avatar: String::new(),
        };
        let err = fields.check().unwrap_err();
        assert!(err.starts_with("name:") && err.contains("NUL"), "{err}");
    }

    #[tokio::test]
    async fn migrates_seeds_reads_and_updates_a_temporary_sqlite_file() {
        let (db, _scratch) = Database::open(None, Duration::ZERO).await.unwrap();
        db.migrate().await.unwrap();
        db.migrate().await.unwrap(); // idempotent
        assert_eq!(db.seed(25, 3).await.unwrap(), (25, 3));
        assert_eq!(
            db.seed(25, 3).await.unwrap(),
            (0, 0),
            "tables that hold rows are left alone"
        );
        let user: User = db.read_one(7).await.unwrap().unwrap();
        assert_eq!(user.email, "user7@example.com");
        assert!(db.read_one::<Product>(4).await.unwrap().is_none());
        let many: HashMap<u64, User> = db.read_many(&[1, 2, 99]).await.unwrap();
        assert_eq!(many.len(), 2);
        let fields = UserFields {
            name: "Ada".into(),
            email: "ada@example.com".into(),
            avatar: "a.png".into(),
        };
        assert_eq!(db.update_user(7, &fields).await.unwrap().unwrap().name, "Ada");
        assert!(db.update_user(99, &fields).await.unwrap().is_none());
        db.close().await;
    }

    #[tokio::test]
    async fn the_versioned_upsert_keeps_the_newest_row_and_ignores_replays() {
        let (db, _scratch) = Database::open(None, Duration::ZERO).await.unwrap();
        db.migrate().await.unwrap();
        db.ensure_user_versions().await.unwrap();
        db.ensure_user_versions().await.unwrap(); // idempotent
        let user = |name: &str| User {
            id: 7,
            name: name.into(),
            email: "e".into(),
            avatar: "a".into(),
        };
        let (v2, v1) = (user("v2"), user("v1"));
        assert_eq!(db.upsert_users_versioned(&[(&v2, 2)]).await.unwrap(), 1, "inserted");
        assert_eq!(db.upsert_users_versioned(&[(&v2, 2)]).await.unwrap(), 0, "a replay");
        assert_eq!(db.upsert_users_versioned(&[(&v1, 1)]).await.unwrap(), 0, "older");
        let row: User = db.read_one(7).await.unwrap().unwrap();
        assert_eq!(row.name, "v2");
        db.close().await;
    }

    #[tokio::test]
    async fn rejects_an_unsupported_url() {
        let err = Database::open(Some("mysql://x"), Duration::ZERO).await.unwrap_err();
        assert!(err.to_string().contains("unsupported database URL"), "{err}");
    }
}
