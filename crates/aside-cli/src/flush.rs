//! `aside flush`: the write-back flusher as a process of its own. It reads
//! a write-back log (a Redis Stream of user profiles, as
//! `Namespace::write_back` appends them) through a consumer group and
//! writes them to the users table of `aside serve`'s database (SQLite or
//! PostgreSQL) with a versioned upsert.
//!
//! Owns the command's flags, the SQL sink (what it refuses, and how a
//! batch becomes one transaction of `INSERT ... ON CONFLICT (id) DO UPDATE
//! ... WHERE excluded.version > users.version`, in `serve::db`), and
//! stopping: on SIGINT or SIGTERM the batch in hand is finished and
//! acknowledged, then the process exits and prints what it did. A
//! flusher killed outright leaves its batch pending; the next one claims
//! it after `--min-idle-ms`, or reads it first when started with the same
//! `--consumer`.

use std::time::Duration;

use aside::writeback::{DEFAULT_GROUP, Flusher, FlusherConfig, FlusherStats, LoggedWrite, WriteBackSink};
use async_trait::async_trait;
use clap::Args;

use crate::db::User;
use crate::error::{Context, Result};
use crate::serve::db::{Database, UserFields};
use crate::store::{RedisTarget, RedisTlsArgs};

/// Flags of `aside flush`. `Debug` masks the URLs' passwords.
#[derive(Clone, Args)]
pub struct FlushArgs {
    /// The Redis holding the write-back log: `redis://host:port`, or
    /// `rediss://user:password@host:port` for TLS and an ACL user.
    #[arg(long, value_name = "URL")]
    pub redis: String,

    /// TLS files for a `rediss://` Redis.
    #[command(flatten)]
    pub redis_tls: RedisTlsArgs,

    /// The database: `sqlite://PATH` or `postgres://...`. Its users table
    /// is created if missing, and given a `version` column.
    #[arg(long, value_name = "URL")]
    pub database_url: String,

    /// The stream of the write-back log (a namespace `users` logs to
    /// `aside:wb:users` by default).
    #[arg(long, default_value = "aside:wb:users")]
    pub stream: String,

    /// The consumer group; created if missing.
    #[arg(long, default_value = DEFAULT_GROUP)]
    pub group: String,

    /// This flusher's name in the group (default `flusher-PID`). Started
    /// again under the same name, it reads its own pending writes first.
    #[arg(long)]
    pub consumer: Option<String>,

    /// Writes per read, and per transaction at most.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_size: u64,

    /// Claim another flusher's pending writes once idle this long: longer
    /// than a batch can take.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub min_idle_ms: u64,

    /// How long one read waits for new writes.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub block_ms: u64,

    /// Flush what the log holds now (claimable writes included), then exit.
    #[arg(long)]
    pub drain: bool,

    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl std::fmt::Debug for FlushArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushArgs")
            .field("redis", &crate::redact::url(&self.redis))
            .field("redis_tls", &self.redis_tls)
            .field("database_url", &crate::redact::url(&self.database_url))
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("batch_size", &self.batch_size)
            .field("min_idle_ms", &self.min_idle_ms)
            .field("block_ms", &self.block_ms)
            .field("drain", &self.drain)
            .field("json", &self.json)
            .finish()
    }
}

/// The users table as a [`WriteBackSink`]: a batch is one transaction of
/// versioned upserts.
struct SqlSink {
    db: Database,
}

#[async_trait]
impl WriteBackSink<u64, User> for SqlSink {
    type Error = sqlx::Error;

    async fn upsert(&self, batch: &[LoggedWrite<u64, User>]) -> std::result::Result<(), Self::Error> {
        // `validate` let through only versions that fit a BIGINT.
        let rows: Vec<(&User, i64)> = batch
            .iter()
            .map(|w| (&w.value, i64::try_from(w.version).unwrap_or(i64::MAX)))
            .collect();
        let changed = self.db.upsert_users_versioned(&rows).await?;
        tracing::debug!(writes = batch.len(), changed, "batch committed");
        Ok(())
    }

    /// Refuses, for good, what the table cannot hold: a value whose id is
    /// not its key, a version or id past a `BIGINT`, a field over the
    /// length `serve` accepts.
    fn validate(&self, write: &LoggedWrite<u64, User>) -> std::result::Result<(), String> {
        if i64::try_from(write.key).ok() != Some(write.value.id) {
            return Err(format!("the row's id {} is not its key {}", write.value.id, write.key));
        }
        if i64::try_from(write.version).is_err() {
            return Err(format!("version {} does not fit a BIGINT", write.version));
        }
        UserFields {
            name: write.value.name.clone(),
            email: write.value.email.clone(),
            avatar: write.value.avatar.clone(),
        }
        .check()
    }
}

/// Runs the flusher until SIGINT or SIGTERM (or, with `--drain`, until
/// the log holds nothing more for it), then prints what it did.
///
/// # Errors
/// When the database or Redis cannot be reached at start, or the batch in
/// hand could not be committed within the grace period of a stop.
pub async fn run(args: FlushArgs) -> Result<()> {
    let (db, _scratch) = Database::open(Some(&args.database_url), Duration::ZERO).await?;
    let result = flush(&args, db.clone()).await;
    db.close().await;
    let stats = result?;
    if args.json {
        let mut json = serde_json::to_value(stats).unwrap_or_default();
        json["stream"] = args.stream.clone().into();
        println!("{json}");
    } else {
        println!(
            "flushed {} writes in {} batches from {} ({} retries, {} parked as corrupt, {} claimed); {} left in the log",
            stats.flushed, stats.batches, args.stream, stats.retries, stats.corrupt, stats.claimed, stats.log_length
        );
    }
    Ok(())
}

async fn flush(args: &FlushArgs, db: Database) -> Result<FlusherStats> {
    db.migrate().await?;
    db.ensure_user_versions().await?;
    let target = RedisTarget {
        url: args.redis.clone(),
        tls: args.redis_tls.clone(),
    };
    let mut config = FlusherConfig::new(&args.stream);
    config.group.clone_from(&args.group);
    if let Some(consumer) = &args.consumer {
        config.consumer.clone_from(consumer);
    }
    config.batch_size = usize::try_from(args.batch_size).unwrap_or(100);
    config.min_idle = Duration::from_millis(args.min_idle_ms);
    config.block = Duration::from_millis(args.block_ms);
    config.redis = target.config()?;
    let consumer = config.consumer.clone();
    let mut flusher = Flusher::<u64, User, _>::connect(&args.redis, config, SqlSink { db })
        .await
        .context("cannot start the write-back flusher")?;
    tracing::info!(stream = args.stream, group = args.group, consumer, "flushing");
    let stats = if args.drain {
        flusher.flush_available().await
    } else {
        flusher
            .run_until(async {
                crate::signal::stop_requested().await;
                eprintln!("aside flush: stopping after the batch in hand");
            })
            .await
    };
    stats.context(format_args!("flushing {}", args.stream))
}
