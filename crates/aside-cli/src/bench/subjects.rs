//! The subjects of `aside bench` that need no peer crate: aside on each of
//! its tiers, the two floors (a raw redis-rs `GET` + decode and a raw moka
//! `get`), and the article's `get_user_profile` ported as written.
//!
//! Every subject reads the same user profiles (the demo's `users` rows,
//! JSON-encoded where they cross a wire), under keys of its own beneath the
//! run's prefix, and checks that the answer is the profile it asked for.
//! Loaders go through [`Db::load_user`], which counts its queries: a
//! timed pass that reached the database was not a pure hit, and the report
//! says so.

use std::sync::Arc;
use std::time::Duration;

use aside::store::redis::RedisConfig;
use aside::{Aside, Namespace};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::drive::Op;
use crate::db::{Db, User};
use crate::error::{CliError, Context, Result};
use crate::store::RedisTarget;

/// TTL of every cached profile: far longer than a run.
pub const TTL: Duration = Duration::from_secs(600);

/// Fails unless `user` is the profile of `id`.
pub fn check(id: u64, user: Option<&User>) -> Result<()> {
    match user {
        Some(u) if u64::try_from(u.id).ok() == Some(id) => Ok(()),
        Some(u) => Err(CliError::new(format!("asked for user {id}, got user {}", u.id))),
        None => Err(CliError::new(format!("user {id} is missing"))),
    }
}

/// A redis-rs `ConnectionManager` with the timeouts `RedisStore` uses: the
/// floor runs on the same kind of connection as aside.
///
/// # Errors
/// When Redis cannot be reached.
pub async fn connection(redis: &RedisTarget) -> Result<ConnectionManager> {
    connection_with(redis, RedisConfig::default().response_timeout).await
}

/// A connection for the bench's own set-up and clean-up, which nothing
/// measures: it waits as long as a loaded server needs (a `DEL` of a
/// thousand keys missed the 500 ms default once, with both cores busy, and
/// failed the whole bench).
///
/// # Errors
/// When Redis cannot be reached.
pub async fn patient_connection(redis: &RedisTarget) -> Result<ConnectionManager> {
    connection_with(redis, PATIENT_RESPONSE_TIMEOUT).await
}

/// How long set-up and clean-up commands may take.
const PATIENT_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn connection_with(redis: &RedisTarget, response_timeout: std::time::Duration) -> Result<ConnectionManager> {
    let defaults = RedisConfig::default();
    // Its error names the server, its password masked.
    let client = aside::store::redis::client(&redis.url, &redis.tls()?)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(defaults.connect_timeout))
        .set_response_timeout(Some(response_timeout));
    ConnectionManager::new_with_config(client, config)
        .await
        .context(format_args!("cannot connect to Redis at {}", redis.masked()))
}

/// The Redis floor: `GET` and `serde_json::from_slice`, nothing else.
#[derive(Clone)]
pub struct RawGet {
    conn: ConnectionManager,
    prefix: Arc<str>,
}

impl RawGet {
    /// Writes every profile of `ids` under `{prefix}raw:{id}`.
    ///
    /// # Errors
    /// Redis or database failures.
    pub async fn prepare(redis: &RedisTarget, prefix: &str, db: &Db, ids: &[u64]) -> Result<Self> {
        let mut conn = connection(redis).await?;
        for &id in ids {
            let user = db.load_user(id).await.context("cannot read a user")?;
            check(id, user.as_ref())?;
            let json = serde_json::to_vec(&user).context("cannot encode a user")?;
            let _: () = conn
                .set_ex(format!("{prefix}raw:{id}"), json, TTL.as_secs())
                .await
                .context("cannot write to Redis")?;
        }
        Ok(RawGet {
            conn,
            prefix: prefix.into(),
        })
    }
}

impl Op for RawGet {
    async fn call(&self, id: u64) -> Result<()> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .clone()
            .get(format!("{}raw:{id}", self.prefix))
            .await
            .context("GET failed")?;
        let user: Option<User> = match bytes {
            Some(b) => Some(serde_json::from_slice(&b).context("cannot decode a user")?),
            None => None,
        };
        check(id, user.as_ref())
    }
}

/// The article's `get_user_profile`, ported as written: `GET`; on a miss,
/// `SELECT` and `SETEX`. No lease, no single-flight, no breaker.
#[derive(Clone)]
pub struct Article {
    conn: ConnectionManager,
    db: Db,
    prefix: Arc<str>,
}

impl Article {
    /// Connects, and reads every profile of `ids` once, which fills the cache.
    ///
    /// # Errors
    /// Redis or database failures.
    pub async fn prepare(redis: &RedisTarget, prefix: &str, db: &Db, ids: &[u64]) -> Result<Self> {
        let article = Article {
            conn: connection(redis).await?,
            db: db.clone(),
            prefix: prefix.into(),
        };
        for &id in ids {
            article.call(id).await?;
        }
        Ok(article)
    }

    async fn get_user_profile(&self, user_id: u64) -> Result<Option<User>> {
        let cache_key = format!("{}user:profile:{user_id}", self.prefix);
        let mut conn = self.conn.clone();
        let cached: Option<Vec<u8>> = conn.get(&cache_key).await.context("GET failed")?;
        if let Some(data) = cached {
            return serde_json::from_slice(&data).context("cannot decode a user");
        }
        let Some(profile) = self.db.load_user(user_id).await.context("cannot read a user")? else {
            return Ok(None);
        };
        let json = serde_json::to_vec(&profile).context("cannot encode a user")?;
        let _: () = conn
            .set_ex(&cache_key, json, TTL.as_secs())
            .await
            .context("SETEX failed")?;
        Ok(Some(profile))
    }
}

impl Op for Article {
    async fn call(&self, id: u64) -> Result<()> {
        check(id, self.get_user_profile(id).await?.as_ref())
    }
}

/// The in-process floor: a moka `get` of a decoded profile, cloned out,
/// from a cache configured as aside's L1 is (capacity and time-to-live: a
/// cache-aside copy of database rows needs an expiry).
#[derive(Clone)]
pub struct MokaGet {
    cache: moka::sync::Cache<u64, User>,
}

impl MokaGet {
    /// A moka cache holding every profile of `ids`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn prepare(db: &Db, ids: &[u64]) -> Result<Self> {
        let cache = moka::sync::Cache::builder()
            .max_capacity(ids.len() as u64 * 2)
            .time_to_live(TTL)
            .build();
        for &id in ids {
            let user = db.load_user(id).await.context("cannot read a user")?;
            check(id, user.as_ref())?;
            if let Some(user) = user {
                cache.insert(id, user);
            }
        }
        Ok(MokaGet { cache })
    }
}

impl Op for MokaGet {
    async fn call(&self, id: u64) -> Result<()> {
        check(id, self.cache.get(&id).as_ref())
    }
}

/// aside's `get_or_load` on one namespace of profiles.
#[derive(Clone)]
pub struct AsideGet {
    ns: Namespace<u64, User>,
    db: Db,
}

/// Where an [`AsideGet`] keeps its profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsideTier {
    /// A `RedisStore`.
    Redis,
    /// A `MemoryStore`.
    Memory,
    /// An L1 in front of a `RedisStore`.
    L1,
}

impl AsideGet {
    /// A subject reading through `ns`, loading from `db` on a miss.
    pub fn over(ns: Namespace<u64, User>, db: Db) -> Self {
        AsideGet { ns, db }
    }

    /// A namespace on `tier`, which has read every profile of `ids` once
    /// (twice with an L1, whose copy is taken by the read after a fill).
    ///
    /// # Errors
    /// Redis or database failures.
    pub async fn prepare(tier: AsideTier, redis: &RedisTarget, prefix: &str, db: &Db, ids: &[u64]) -> Result<Self> {
        let aside = match tier {
            AsideTier::Memory => Aside::builder().store(aside::MemoryStore::new()),
            AsideTier::Redis | AsideTier::L1 => Aside::builder().store(redis.store().await?),
        }
        .prefix(prefix)
        .build();
        let mut builder = aside.namespace::<u64, User>("user").ttl(TTL).jitter(0.0);
        if tier == AsideTier::L1 {
            builder = builder.l1(ids.len() as u64 * 2, TTL);
        }
        let ns = builder
            .build()
            .map_err(|e| CliError::new(format!("cannot build the namespace: {e}")))?;
        let get = AsideGet { ns, db: db.clone() };
        for &id in ids {
            get.call(id).await?;
            if tier == AsideTier::L1 {
                get.call(id).await?;
            }
        }
        Ok(get)
    }
}

impl Op for AsideGet {
    async fn call(&self, id: u64) -> Result<()> {
        let user = self
            .ns
            .get_or_load(&id, || self.db.load_user(id))
            .await
            .map_err(|e| CliError::new(format!("get_or_load failed: {e}")))?;
        check(id, user.as_ref())
    }
}
