//! Where the cache lives: the store flags every caching subcommand takes
//! (`--redis`, `--redis-cluster`, `--memcached`; in process by default) and the `Aside`s built
//! on the store they name.
//!
//! Owns connecting to the chosen store, with an error naming the server
//! when it cannot be reached, and the key prefixes that keep runs sharing
//! a server apart (nothing is ever flushed).

use std::sync::Arc;

use aside::bus::redis::RedisBus;
use aside::store::memcached::MemcachedStore;
use aside::store::redis::RedisStore;
use aside::{Aside, AsideBuilder, MemoryStore, Store};
use aside_testkit::fault::MemoryBus;

use crate::error::{Context, Result};

/// The store flags every subcommand that caches takes.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Use the Redis server at this URL instead of the in-process store.
    #[arg(long, value_name = "URL", conflicts_with = "memcached")]
    pub redis: Option<String>,

    /// Use the Redis Cluster reached through these nodes (any of them will
    /// do; give several so that one down node does not matter), instead of
    /// the in-process store.
    #[arg(long, value_name = "URL[,URL...]", conflicts_with_all = ["redis", "memcached"])]
    pub redis_cluster: Option<String>,

    /// Use memcached (1.6+) at this address instead of the in-process
    /// store; several servers separated by commas share the keys by
    /// consistent hashing.
    #[arg(long, value_name = "ADDR[,ADDR...]")]
    pub memcached: Option<String>,
}

impl StoreArgs {
    /// The store these flags name.
    pub fn choice(&self) -> StoreChoice {
        match &self.redis_cluster {
            Some(urls) => StoreChoice::RedisCluster(
                urls.split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None => StoreChoice::choose(self.redis.as_deref(), self.memcached.as_deref()),
        }
    }

    /// The URL of a Redis server to put an invalidation bus on: `--redis`,
    /// or the first node of `--redis-cluster` (classic pub/sub reaches every
    /// node of a cluster).
    pub fn bus_url(&self) -> Option<&str> {
        self.redis.as_deref().or_else(|| {
            self.redis_cluster
                .as_deref()
                .and_then(|u| u.split(',').next())
                .map(str::trim)
        })
    }
}

/// Where a run keeps its cache.
#[derive(Clone)]
pub enum StoreChoice {
    /// One in-process store, shared by the run's `Aside`s as one Redis would be.
    Memory(Arc<dyn Store>),
    /// A Redis server; every `Aside` gets its own connection, as another service would.
    Redis(String),
    /// A Redis Cluster reached through these nodes; every `Aside` gets its
    /// own connections.
    RedisCluster(Vec<String>),
    /// memcached at these addresses (comma-separated); every `Aside` gets its
    /// own connection pool. memcached has no pub/sub, so engines with an L1
    /// share the in-process bus (they all live in this process).
    Memcached(String),
}

impl StoreChoice {
    /// memcached at `memcached` if given, else Redis at `redis` if given,
    /// else a new in-process store.
    pub fn choose(redis: Option<&str>, memcached: Option<&str>) -> Self {
        match (memcached, redis) {
            (Some(addrs), _) => StoreChoice::Memcached(addrs.to_owned()),
            (None, Some(url)) => StoreChoice::Redis(url.to_owned()),
            (None, None) => StoreChoice::Memory(Arc::new(MemoryStore::new())),
        }
    }

    /// The store's name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            StoreChoice::Memory(_) => "memory",
            StoreChoice::Redis(_) => "redis",
            StoreChoice::RedisCluster(_) => "redis-cluster",
            StoreChoice::Memcached(_) => "memcached",
        }
    }

    /// The flags that name this store to another process (empty for the
    /// in-process store, which no other process can reach).
    pub fn flags(&self) -> Vec<String> {
        match self {
            StoreChoice::Memory(_) => Vec::new(),
            StoreChoice::Redis(url) => vec!["--redis".to_owned(), url.clone()],
            StoreChoice::RedisCluster(urls) => vec!["--redis-cluster".to_owned(), urls.join(",")],
            StoreChoice::Memcached(addrs) => vec!["--memcached".to_owned(), addrs.clone()],
        }
    }

    /// A new `Aside` on this store, with its own connection for Redis
    /// (its own pool for memcached).
    ///
    /// # Errors
    /// When Redis or memcached cannot be reached.
    pub async fn aside(&self, prefix: &str) -> Result<Aside> {
        Ok(self.builder(prefix).await?.build())
    }

    /// A new `Aside` on this store that publishes its invalidations on a bus
    /// and evicts its L1 copies on everyone else's: `local` for the
    /// in-process store and memcached, or a `RedisBus` of its own on the
    /// channel `{prefix}invalidations` (so only this run's engines meet there).
    ///
    /// # Errors
    /// When Redis or memcached cannot be reached.
    pub async fn aside_on_bus(&self, prefix: &str, local: &MemoryBus) -> Result<Aside> {
        let builder = self.builder(prefix).await?;
        Ok(match self {
            StoreChoice::Memory(_) | StoreChoice::Memcached(_) => builder.bus(local.clone()).build(),
            StoreChoice::Redis(url) => {
                let channel = format!("{prefix}invalidations");
                let bus = RedisBus::connect_on(url, &channel)
                    .await
                    .context(format_args!("cannot connect the invalidation bus to Redis at {url}"))?;
                builder.bus(bus).build()
            }
            // Classic pub/sub reaches every node of a cluster: the bus
            // lives on the first node.
            StoreChoice::RedisCluster(urls) => {
                let url = urls.first().map_or("", String::as_str);
                let channel = format!("{prefix}invalidations");
                let bus = RedisBus::connect_on(url, &channel)
                    .await
                    .context(format_args!("cannot connect the invalidation bus to Redis at {url}"))?;
                builder.bus(bus).build()
            }
        })
    }

    /// A builder of an `Aside` on this store under `prefix`, for callers
    /// that add more (a bus) before building.
    ///
    /// # Errors
    /// When Redis or memcached cannot be reached.
    pub async fn builder(&self, prefix: &str) -> Result<AsideBuilder> {
        let builder = Aside::builder().prefix(prefix);
        Ok(match self {
            StoreChoice::Memory(store) => builder.shared_store(store.clone()),
            // The store's error names the server, its password masked.
            StoreChoice::Redis(url) => builder.store(RedisStore::connect(url).await?),
            StoreChoice::RedisCluster(urls) => builder.store(RedisStore::connect_cluster(urls).await?),
            StoreChoice::Memcached(addrs) => builder.store(
                MemcachedStore::connect(addrs)
                    .await
                    .context(format_args!("cannot connect to memcached at {addrs}"))?,
            ),
        })
    }
}

/// A key prefix unique to one run of `scenario`, so runs sharing a server
/// never meet each other's keys (and nothing is flushed).
pub fn run_prefix(scenario: &str) -> String {
    format!("aside-{scenario}:{:08x}:", rand::random::<u32>())
}
