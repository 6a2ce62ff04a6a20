//! Where the cache lives: the store flags every caching subcommand takes
//! (`--redis`, `--redis-cluster`, `--memcached`; in process by default) and the `Aside`s built
//! on the store they name.
//!
//! Owns connecting to the chosen store, with an error naming the server
//! when it cannot be reached, and the key prefixes that keep runs sharing
//! a server apart (nothing is ever flushed). A Redis is a [`RedisTarget`]:
//! its URL (`rediss://user:password@host:port` for TLS and an ACL user)
//! and the TLS files of `--redis-ca`, `--redis-cert` and `--redis-key`; its
//! password never shows in a message or in `Debug`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aside::bus::redis::RedisBus;
use aside::store::memcached::{MemcachedConfig, MemcachedStore};
use aside::store::redis::{RedisConfig, RedisStore, RedisTls};
use aside::{Aside, AsideBuilder, BreakerConfig, MemoryStore, Store};
use aside_testkit::fault::MemoryBus;

use crate::error::{Context, Result};
use crate::redact;

/// The TLS files of a Redis connection (`--redis-ca`, `--redis-cert`,
/// `--redis-key`), shared by every subcommand that reaches Redis.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedisTlsArgs {
    /// A PEM file of the CA to trust for a `rediss://` Redis, instead of
    /// the system's roots (a private CA, a self-signed server).
    #[arg(long, value_name = "FILE")]
    pub redis_ca: Option<PathBuf>,

    /// A PEM client certificate (chain) to present to a Redis that asks
    /// for one (mTLS); needs --redis-key.
    #[arg(long, value_name = "FILE", requires = "redis_key")]
    pub redis_cert: Option<PathBuf>,

    /// The PEM private key of --redis-cert.
    #[arg(long, value_name = "FILE", requires = "redis_cert")]
    pub redis_key: Option<PathBuf>,
}

/// A Redis server and how to reach it.
#[derive(Clone)]
pub struct RedisTarget {
    /// `redis://`, `rediss://`, `valkey://` or `valkeys://`, with the ACL
    /// user and password if any.
    pub url: String,
    /// The TLS files.
    pub tls: RedisTlsArgs,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &redact::url(&self.url))
            .field("tls", &self.tls)
            .finish()
    }
}

impl RedisTarget {
    /// The URL with its password masked, for messages and reports.
    pub fn masked(&self) -> String {
        redact::url(&self.url)
    }

    /// True when a TLS file is given.
    pub fn has_tls_files(&self) -> bool {
        self.tls.redis_ca.is_some() || self.tls.redis_cert.is_some()
    }

    /// The TLS settings, read from the files.
    ///
    /// # Errors
    /// When a file cannot be read.
    pub fn tls(&self) -> Result<RedisTls> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).context(format_args!("cannot read {flag} {}", path.display()))
        };
        let mut tls = RedisTls::new();
        if let Some(ca) = &self.tls.redis_ca {
            tls = tls.with_ca(read("--redis-ca", ca)?);
        }
        if let (Some(cert), Some(key)) = (&self.tls.redis_cert, &self.tls.redis_key) {
            tls = tls.with_client_identity(read("--redis-cert", cert)?, read("--redis-key", key)?);
        }
        Ok(tls)
    }

    /// The store's settings: the defaults, with these TLS settings and
    /// this process's [`op_timeout`].
    ///
    /// # Errors
    /// When a TLS file cannot be read.
    pub fn config(&self) -> Result<RedisConfig> {
        let mut config = RedisConfig::default();
        config.tls = self.tls()?;
        config.response_timeout = op_timeout();
        Ok(config)
    }

    /// A store on this server.
    ///
    /// # Errors
    /// When a TLS file cannot be read or the server cannot be reached (the
    /// store's error names the server, its password masked).
    pub async fn store(&self) -> Result<RedisStore> {
        Ok(RedisStore::connect_with(&self.url, self.config()?).await?)
    }

    /// A bus on this server, on `channel`.
    ///
    /// # Errors
    /// When a TLS file cannot be read or the server cannot be reached.
    pub async fn bus(&self, channel: &str) -> Result<RedisBus> {
        Ok(RedisBus::connect_with(&self.url, channel, &self.tls()?).await?)
    }

    /// The flags that name this server to another process.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = vec!["--redis".to_owned(), self.url.clone()];
        for (flag, path) in [
            ("--redis-ca", &self.tls.redis_ca),
            ("--redis-cert", &self.tls.redis_cert),
            ("--redis-key", &self.tls.redis_key),
        ] {
            if let Some(path) = path {
                flags.push(flag.to_owned());
                flags.push(path.display().to_string());
            }
        }
        flags
    }
}

/// The store flags every subcommand that caches takes.
#[derive(Clone, clap::Args)]
pub struct StoreArgs {
    /// Use the Redis server at this URL instead of the in-process store:
    /// `redis://host:port`, or `rediss://user:password@host:port` for TLS
    /// and an ACL user (`valkey://`, `valkeys://` too).
    #[arg(long, value_name = "URL", conflicts_with = "memcached")]
    pub redis: Option<String>,

    /// Use the Redis Cluster reached through these nodes (any of them will
    /// do; give several so that one down node does not matter), instead of
    /// the in-process store.
    #[arg(long, value_name = "URL[,URL...]", conflicts_with_all = ["redis", "memcached"])]
    pub redis_cluster: Option<String>,

    /// TLS files for a `rediss://` Redis.
    #[command(flatten)]
    pub redis_tls: RedisTlsArgs,

    /// Use memcached (1.6+) at this address instead of the in-process
    /// store; several servers separated by commas share the keys by
    /// consistent hashing.
    #[arg(long, value_name = "ADDR[,ADDR...]")]
    pub memcached: Option<String>,

    /// Use the Redis primary that these Sentinels (`redis://` URLs) name
    /// for --redis-master, and follow it through failovers.
    #[arg(
        long,
        value_name = "URL[,URL...]",
        conflicts_with_all = ["redis", "memcached", "redis_ca", "redis_cert", "redis_key"],
        requires = "redis_master"
    )]
    pub redis_sentinel: Option<String>,

    /// The master name the Sentinels of --redis-sentinel monitor.
    #[arg(long, value_name = "NAME", requires = "redis_sentinel")]
    pub redis_master: Option<String>,

    /// Bound on each store operation, in milliseconds, and on each Redis
    /// command's or memcached request's answer: past it a read counts as a
    /// miss (the database answers) and a write as failed. Raise it on a
    /// loaded machine, where the default can be missed.
    #[arg(long, value_name = "MS", env = "ASIDE_OP_TIMEOUT_MS", default_value_t = DEFAULT_OP_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub op_timeout_ms: u64,
}

/// aside's default operation bound, in milliseconds.
const DEFAULT_OP_TIMEOUT_MS: u64 = aside::DEFAULT_OP_TIMEOUT.as_millis() as u64;

/// This process's `--op-timeout-ms`.
///
/// Why process-wide: every store and `Aside` a subcommand builds takes it,
/// through many paths (each scenario, the stampede's workers, `serve`),
/// and a process runs one subcommand. [`StoreArgs::choice`] sets it.
static OP_TIMEOUT_MS: AtomicU64 = AtomicU64::new(DEFAULT_OP_TIMEOUT_MS);

/// The bound on each store operation of this process (`--op-timeout-ms`).
pub fn op_timeout() -> Duration {
    Duration::from_millis(OP_TIMEOUT_MS.load(Ordering::Relaxed))
}

/// What the breaker's latency rule counts as a slow call: the same share
/// of [`op_timeout`] as aside's defaults (150 ms of 250), so that raising
/// the bound for a loaded machine does not leave the rule opening the
/// breaker (and readers loading) on the calls it now waits for. `serve`'s
/// `/healthz` calls the store slow by the same threshold.
pub fn slow_call() -> Duration {
    op_timeout() * 3 / 5
}

impl std::fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreArgs")
            .field("redis", &self.redis.as_deref().map(redact::url))
            .field("redis_cluster", &self.redis_cluster.as_deref().map(redact::urls))
            .field("redis_tls", &self.redis_tls)
            .field("memcached", &self.memcached)
            .field("redis_sentinel", &self.redis_sentinel.as_deref().map(redact::urls))
            .field("redis_master", &self.redis_master)
            .field("op_timeout_ms", &self.op_timeout_ms)
            .finish()
    }
}

impl StoreArgs {
    /// The store these flags name; also makes `--op-timeout-ms` this
    /// process's bound ([`op_timeout`]).
    pub fn choice(&self) -> StoreChoice {
        OP_TIMEOUT_MS.store(self.op_timeout_ms, Ordering::Relaxed);
        if let Some(urls) = &self.redis_cluster {
            let nodes = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            return StoreChoice::RedisCluster(nodes, self.redis_tls.clone());
        }
        if let (Some(sentinels), Some(master)) = (&self.redis_sentinel, &self.redis_master) {
            return StoreChoice::RedisSentinel {
                sentinels: sentinels.clone(),
                master: master.clone(),
            };
        }
        match (&self.memcached, &self.redis) {
            (None, Some(url)) => StoreChoice::Redis(RedisTarget {
                url: url.clone(),
                tls: self.redis_tls.clone(),
            }),
            _ => StoreChoice::choose(self.redis.as_deref(), self.memcached.as_deref()),
        }
    }

    /// The Redis to put an invalidation bus on, if any: `--redis`, or the
    /// first node of `--redis-cluster` (classic pub/sub reaches every node
    /// of a cluster).
    pub fn redis_target(&self) -> Option<RedisTarget> {
        match self.choice() {
            StoreChoice::Redis(target) => Some(target),
            StoreChoice::RedisCluster(nodes, tls) => nodes.first().map(|url| RedisTarget { url: url.clone(), tls }),
            _ => None,
        }
    }
}

/// Where a run keeps its cache.
#[derive(Clone)]
pub enum StoreChoice {
    /// One in-process store, shared by the run's `Aside`s as one Redis would be.
    Memory(Arc<dyn Store>),
    /// A Redis server; every `Aside` gets its own connection, as another service would.
    Redis(RedisTarget),
    /// A Redis Cluster reached through these nodes; every `Aside` gets its
    /// own connections.
    RedisCluster(Vec<String>, RedisTlsArgs),
    /// The Redis primary that these Sentinels (comma-separated URLs) name
    /// for `master`, followed through failovers; every `Aside` gets its own
    /// connection. Engines with an L1 share the in-process bus.
    RedisSentinel {
        /// The Sentinels' URLs, comma-separated.
        sentinels: String,
        /// The master name they monitor.
        master: String,
    },
    /// memcached at these addresses (comma-separated); every `Aside` gets its
    /// own connection pool. memcached has no pub/sub, so engines with an L1
    /// share the in-process bus (they all live in this process).
    Memcached(String),
}

impl StoreChoice {
    /// memcached at `memcached` if given, else Redis at `redis` (no TLS
    /// files) if given, else a new in-process store.
    pub fn choose(redis: Option<&str>, memcached: Option<&str>) -> Self {
        match (memcached, redis) {
            (Some(addrs), _) => StoreChoice::Memcached(addrs.to_owned()),
            (None, Some(url)) => StoreChoice::Redis(RedisTarget {
                url: url.to_owned(),
                tls: RedisTlsArgs::default(),
            }),
            (None, None) => StoreChoice::Memory(Arc::new(MemoryStore::new())),
        }
    }

    /// The store's name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            StoreChoice::Memory(_) => "memory",
            StoreChoice::Redis(_) => "redis",
            StoreChoice::RedisCluster(..) => "redis-cluster",
            StoreChoice::RedisSentinel { .. } => "redis-sentinel",
            StoreChoice::Memcached(_) => "memcached",
        }
    }

    /// The flags that name this store to another process, with this
    /// process's `--op-timeout-ms` (none for the in-process store, which no
    /// other process can reach).
    pub fn flags(&self) -> Vec<String> {
        let mut flags = self.store_flags();
        if !flags.is_empty() {
            flags.extend(["--op-timeout-ms".to_owned(), op_timeout().as_millis().to_string()]);
        }
        flags
    }

    fn store_flags(&self) -> Vec<String> {
        match self {
            StoreChoice::Memory(_) => Vec::new(),
            StoreChoice::Redis(target) => target.flags(),
            StoreChoice::RedisCluster(urls, tls) => {
                let first = RedisTarget {
                    url: String::new(),
                    tls: tls.clone(),
                };
                let mut flags = vec!["--redis-cluster".to_owned(), urls.join(",")];
                flags.extend(first.flags().into_iter().skip(2));
                flags
            }
            StoreChoice::RedisSentinel { sentinels, master } => vec![
                "--redis-sentinel".to_owned(),
                sentinels.clone(),
                "--redis-master".to_owned(),
                master.clone(),
            ],
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
            StoreChoice::Memory(_) | StoreChoice::Memcached(_) | StoreChoice::RedisSentinel { .. } => {
                builder.bus(local.clone()).build()
            }
            // The bus's error names the server, its password masked.
            StoreChoice::Redis(target) => builder
                .bus(target.bus(&format!("{prefix}invalidations")).await?)
                .build(),
            // Classic pub/sub reaches every node of a cluster: the bus
            // lives on the first node.
            StoreChoice::RedisCluster(urls, tls) => {
                let first = RedisTarget {
                    url: urls.first().cloned().unwrap_or_default(),
                    tls: tls.clone(),
                };
                builder.bus(first.bus(&format!("{prefix}invalidations")).await?).build()
            }
        })
    }

    /// A builder of an `Aside` on this store under `prefix`, for callers
    /// that add more (a bus) before building.
    ///
    /// # Errors
    /// When Redis or memcached cannot be reached.
    pub async fn builder(&self, prefix: &str) -> Result<AsideBuilder> {
        let builder = Aside::builder()
            .prefix(prefix)
            .op_timeout(op_timeout())
            .breaker(BreakerConfig::default().slow_call(slow_call()));
        Ok(match self {
            StoreChoice::Memory(store) => builder.shared_store(store.clone()),
            // The store's error names the server, its password masked.
            StoreChoice::Redis(target) => builder.store(target.store().await?),
            // The TLS files apply to every node.
            StoreChoice::RedisCluster(urls, tls) => {
                let target = RedisTarget {
                    url: String::new(),
                    tls: tls.clone(),
                };
                builder.store(RedisStore::connect_cluster_with(urls, target.config()?).await?)
            }
            StoreChoice::RedisSentinel { sentinels, master } => {
                let urls: Vec<&str> = sentinels.split(',').map(str::trim).collect();
                let mut config = RedisConfig::default();
                config.response_timeout = op_timeout();
                builder.store(RedisStore::connect_sentinel_with(&urls, master, config).await?)
            }
            StoreChoice::Memcached(addrs) => builder.store(
                MemcachedStore::connect_with(addrs, memcached_config())
                    .await
                    .context(format_args!("cannot connect to memcached at {}", redact::urls(addrs)))?,
            ),
        })
    }
}

/// memcached's settings: the defaults, with this process's [`op_timeout`].
fn memcached_config() -> MemcachedConfig {
    let mut config = MemcachedConfig::default();
    config.response_timeout = op_timeout();
    config
}

/// A key prefix unique to one run of `scenario`, so runs sharing a server
/// never meet each other's keys (and nothing is flushed).
pub fn run_prefix(scenario: &str) -> String {
    format!("aside-{scenario}:{:08x}:", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the default bound, a slow call is the breaker's default one:
    /// `/healthz` and the breaker agree with what they were before the flag.
    #[test]
    fn the_default_bound_keeps_the_breakers_default_slow_call() {
        assert_eq!(op_timeout(), aside::DEFAULT_OP_TIMEOUT);
        assert_eq!(slow_call(), BreakerConfig::default().slow_call);
    }
}
