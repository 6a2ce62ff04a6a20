//! The peers `aside bench` compares aside with (feature `peers`): the
//! `cached` crate's `AsyncRedisCache`, and `amalgam-cache` (a Rust port of
//! .NET's FusionCache: a moka-like L1 over a Redis L2).
//!
//! Each is set up the way its documentation shows, on the same Redis, the
//! same profiles and the same kind of connection as aside (a redis-rs
//! `ConnectionManager`), and read cache-aside: look up, and on a miss load
//! from the database and store.

use std::sync::Arc;

use amalgam::provider::{DistributedCache, DistributedSerializer, JsonSerializer, RedisDistributedCache};
use amalgam::{EntryOptions, FactoryError};
use cached::{AsyncRedisCache, ConcurrentCachedAsync};

use super::drive::Op;
use super::subjects::{TTL, check};
use crate::db::{Db, User};
use crate::error::{CliError, Context, Result};

/// The `cached` crate's Redis store, with its connection manager.
#[derive(Clone)]
pub struct CachedRedis {
    cache: Arc<AsyncRedisCache<u64, User>>,
    db: Db,
}

impl CachedRedis {
    /// Connects, and reads every profile of `ids` once, which fills the cache.
    ///
    /// # Errors
    /// Redis or database failures.
    pub async fn prepare(url: &str, prefix: &str, db: &Db, ids: &[u64]) -> Result<Self> {
        let cache = AsyncRedisCache::<u64, User>::builder(format!("{prefix}cached:"))
            .connection_string(url)
            .connection_manager(true)
            .ttl(TTL)
            .build()
            .await
            .map_err(|e| CliError::new(format!("cannot build cached's AsyncRedisCache: {e}")))?;
        let peer = CachedRedis {
            cache: Arc::new(cache),
            db: db.clone(),
        };
        for &id in ids {
            peer.call(id).await?;
        }
        Ok(peer)
    }
}

impl Op for CachedRedis {
    async fn call(&self, id: u64) -> Result<()> {
        let cached = self
            .cache
            .async_cache_get(&id)
            .await
            .map_err(|e| CliError::new(format!("cached: get failed: {e}")))?;
        let user = match cached {
            Some(user) => Some(user),
            None => {
                let user = self.db.load_user(id).await.context("cannot read a user")?;
                if let Some(u) = &user {
                    self.cache
                        .async_cache_set(id, u.clone())
                        .await
                        .map_err(|e| CliError::new(format!("cached: set failed: {e}")))?;
                }
                user
            }
        };
        check(id, user.as_ref())
    }
}

/// `amalgam-cache` over Redis: its L1 hit, or (with `l1` off) its
/// Redis-only hit, the memory level skipped on read and write.
#[derive(Clone)]
pub struct Amalgam {
    cache: amalgam::Cache<User>,
    db: Db,
    prefix: Arc<str>,
}

impl Amalgam {
    /// Connects, and reads every profile of `ids` once, which fills the cache.
    ///
    /// # Errors
    /// Redis or database failures.
    pub async fn prepare(l1: bool, url: &str, prefix: &str, db: &Db, ids: &[u64]) -> Result<Self> {
        let l2 = RedisDistributedCache::connect(url).await.map_err(|e| {
            CliError::new(format!(
                "amalgam: cannot connect to Redis at {}: {e}",
                crate::redact::url(url)
            ))
        })?;
        let options = EntryOptions::new(TTL).with_skip_memory(!l1, !l1);
        let cache = amalgam::Cache::<User>::builder()
            .distributed(Arc::new(l2) as Arc<dyn DistributedCache>)
            .serializer(Arc::new(JsonSerializer) as Arc<dyn DistributedSerializer<User>>)
            .default_options(options)
            .try_build()
            .map_err(|e| CliError::new(format!("cannot build amalgam's cache: {e}")))?;
        let level = if l1 { "amalgam-l1:" } else { "amalgam-l2:" };
        let peer = Amalgam {
            cache,
            db: db.clone(),
            prefix: format!("{prefix}{level}").into(),
        };
        for &id in ids {
            peer.call(id).await?;
        }
        Ok(peer)
    }
}

impl Op for Amalgam {
    async fn call(&self, id: u64) -> Result<()> {
        let db = self.db.clone();
        let user = self
            .cache
            .get_or_set(
                format!("{}{id}", self.prefix),
                amalgam::source::factory(move |_ctx| async move {
                    match db.load_user(id).await {
                        Ok(Some(user)) => Ok(user),
                        Ok(None) => Err(FactoryError::from_source(CliError::new(format!(
                            "user {id} is missing"
                        )))),
                        Err(e) => Err(FactoryError::from_source(e)),
                    }
                }),
            )
            .await
            .map_err(|e| CliError::new(format!("amalgam: get_or_set failed: {e}")))?;
        check(id, Some(&user))
    }
}
