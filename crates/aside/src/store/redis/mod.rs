//! [`RedisStore`]: Redis and Valkey through redis-rs's `ConnectionManager`.
//!
//! Owns the Redis mapping of the [`Store`] contract. Plain values are
//! strings (`GET`/`SET PX`/`DEL`/`INCR`), readable by any other client;
//! leased entries are one hash per key (`v` current value, `o` stale copy,
//! `t` lease token, `e` lease deadline, `w` a reader waits for the lease to
//! end) changed only by the Lua scripts beside this file. `v` and `o` never
//! coexist, so a hit is one `HGET` of `v` ([`Store::peek_fresh`]). (Before
//! issue 17 a stale copy was `v` with a flag `s`: a hash written so by an
//! older aside reads here as current; see the CHANGELOG.) A script that ends a
//! lease some reader waited for publishes the key on
//! [`RedisConfig::fill_channel`]; each store's subscriber task wakes the
//! readers of its process (see [`crate::store::wake`]). Each script touches exactly one key, so it is valid in Redis
//! Cluster as is, but for `put_entry_if_newer.lua` and `invalidate_if_newer.lua`, which touch the entry
//! and its write mark, in the entry's slot (see [`crate::key::write_mark_key`]).
//!
//! Why `ConnectionManager`: it multiplexes every caller over one connection
//! and reconnects in the background. The command that meets a broken
//! connection still fails; the engine counts that and treats it as a miss.
//! Both timeouts are set explicitly (see [`RedisConfig`]) because a cache
//! that waits on a dead server is worse than no cache. Every socket gets
//! TCP keepalive and `TCP_USER_TIMEOUT`, and a connection that times out a
//! few times in a row is replaced rather than reused (see [`Reconnecting`]).
//!
//! On a Redis Cluster ([`RedisStore::connect_cluster`]) the same code runs
//! over redis-rs's cluster connection ([`RedisConnection`]): every command
//! and script has one key, so it is routed by that key's slot; only the
//! batches differ, split by node in `cluster`. Fill notifications still
//! use classic `PUBLISH`, which a cluster broadcasts to every node: the
//! subscriber listens on one node, the first of the given URLs that
//! answers, and moves to the next when it loses it.
//!
//! TLS (`rediss://`, `valkeys://`, a private CA, mTLS) and ACL credentials
//! are how the client is made: see [`client`], shared with the bus.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use redis::{Cmd, RedisError, Script};

mod cluster;

use cluster::ClusterBatches;
pub use cluster::{ClusterHandle, RedisConnection};

/// The Redis Cluster hash slot of `key` (0..16384), as `CLUSTER KEYSLOT`
/// computes it: of its hash tag if it has one, else of the whole key.
pub fn key_slot(key: &str) -> u16 {
    cluster::slot(key.as_bytes())
}

mod client;
mod sentinel;

pub use self::client::{RedisTls, client};
pub(crate) use self::client::{check as check_connection, client_for, connect_error};
use self::sentinel::SentinelConn;
pub use self::sentinel::SentinelHandle;

mod conn;
pub use conn::Reconnecting;
pub(crate) use conn::watched_messages;

use super::{
    EntryView, Fill, FillOutcome, FillWakes, FillWatch, LeaseOutcome, LeaseToken, Store, StoreError, StoreResult,
    VersionedPut, masked_url,
};

/// Connection settings of a [`RedisStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Bound on establishing a connection. Default 500 ms.
    pub connect_timeout: Duration,
    /// Bound on one command's answer. Default 250 ms.
    pub response_timeout: Duration,
    /// Reconnect attempts per broken connection before commands fail. Default 2.
    pub reconnect_retries: usize,
    /// Consecutive commands without an answer within `response_timeout`
    /// after which the connection is replaced by a new one (redis-rs keeps
    /// using a connection whose requests time out). 0: never. Default 3.
    pub replace_after_timeouts: u32,
    /// TCP keepalive on every connection: idle time before the first probe,
    /// and between probes. `None`: the system's default (usually off). Default 5 s.
    pub tcp_keepalive: Option<Duration>,
    /// `TCP_USER_TIMEOUT` on every connection (Linux): how long sent data
    /// may stay unacknowledged before the kernel closes the connection.
    /// `None`: the system's default (about 15 minutes). Default 5 s.
    pub tcp_user_timeout: Option<Duration>,
    /// First delay between reconnect attempts (exponential after). Default 50 ms.
    pub reconnect_min_delay: Duration,
    /// The pub/sub channel on which the end of a lease that readers wait for
    /// is announced, so readers in every process sharing the server wake at
    /// once instead of polling. Every store on one server that shares keys
    /// must use the same channel. `None` turns notifications off (readers
    /// poll). Default [`DEFAULT_FILL_CHANNEL`].
    pub fill_channel: Option<String>,
    /// TLS settings for a `rediss://` or `valkeys://` URL (a private CA, a
    /// client certificate). Used by the store's connection and by its fill
    /// subscription. Default: none (the system's roots).
    pub tls: RedisTls,
}

/// The default [`RedisConfig::fill_channel`].
pub const DEFAULT_FILL_CHANNEL: &str = "aside:fills";

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_millis(250),
            reconnect_retries: 2,
            replace_after_timeouts: 3,
            tcp_keepalive: Some(Duration::from_secs(5)),
            tcp_user_timeout: Some(Duration::from_secs(5)),
            reconnect_min_delay: Duration::from_millis(50),
            fill_channel: Some(DEFAULT_FILL_CHANNEL.to_owned()),
            tls: RedisTls::default(),
        }
    }
}

struct Scripts {
    lookup_or_lease: Script,
    fill: Script,
    lease_for_refresh: Script,
    put_entry: Script,
    put_entry_if_newer: Script,
    invalidate_if_newer: Script,
    take_fence: Script,
    release: Script,
    renew_lease: Script,
    invalidate_keep_stale: Script,
    invalidate: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            lookup_or_lease: Script::new(include_str!("lookup_or_lease.lua")),
            fill: Script::new(include_str!("fill.lua")),
            lease_for_refresh: Script::new(include_str!("lease_for_refresh.lua")),
            put_entry: Script::new(include_str!("put_entry.lua")),
            put_entry_if_newer: Script::new(concat!(
                include_str!("version_above.lua"),
                include_str!("put_entry_if_newer.lua")
            )),
            invalidate_if_newer: Script::new(concat!(
                include_str!("version_above.lua"),
                include_str!("invalidate_if_newer.lua")
            )),
            take_fence: Script::new(include_str!("take_fence.lua")),
            release: Script::new(include_str!("release.lua")),
            renew_lease: Script::new(include_str!("renew_lease.lua")),
            invalidate_keep_stale: Script::new(include_str!("invalidate_keep_stale.lua")),
            invalidate: Script::new(include_str!("invalidate.lua")),
        }
    }
}

/// A store on a Redis or Valkey server.
///
/// Cloning is cheap; clones share one multiplexed connection (replaced
/// after [`RedisConfig::replace_after_timeouts`] timeouts in a row).
///
/// # Examples
///
/// Needs the `redis` feature (on by default) and a server:
///
/// ```no_run
/// # async fn run() -> Result<(), aside::store::StoreError> {
/// use aside::store::redis::RedisStore;
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    /// Batches split by node, on a cluster; `None` on one server.
    cluster: Option<Arc<ClusterBatches>>,
    scripts: Arc<Scripts>,
    /// The channel the scripts publish lease ends on; empty: none.
    fill_channel: Arc<str>,
    fill_subscription: Option<Arc<FillSubscription>>,
}

/// The subscriber task that turns lease ends published on the fill channel
/// into wakes of this process's waiting readers. It lives as long as the
/// store's last clone.
///
/// Why a dedicated connection: a subscribed RESP2 connection can do nothing
/// else, and the multiplexed connection must never wait behind it. Why a
/// mutex around the task: a store may outlive the runtime that started it
/// (a test's runtime, a CLI phase), and the task dies with that runtime; the
/// next watch taken on a live runtime starts it again there.
struct FillSubscription {
    wakes: FillWakes,
    /// Where to subscribe: one server, a cluster's seed nodes, or the
    /// primary Sentinel names now.
    source: ClientSource,
    channel: String,
    connect_timeout: Duration,
    task: std::sync::Mutex<tokio::task::AbortHandle>,
}

impl Drop for FillSubscription {
    fn drop(&mut self) {
        self.task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .abort();
    }
}

/// Where the fill subscription connects: one server or a cluster's seed
/// nodes (tried in turn), or the primary Sentinel named last (so the
/// subscription follows a failover too).
#[derive(Clone)]
enum ClientSource {
    /// One server, or the nodes of a cluster.
    Fixed(Arc<[redis::Client]>),
    /// The current primary of a [`SentinelConn`].
    Sentinel(Arc<SentinelConn>),
}

impl ClientSource {
    /// The clients to try, in order, now.
    fn candidates(&self) -> Vec<redis::Client> {
        match self {
            ClientSource::Fixed(clients) => clients.to_vec(),
            ClientSource::Sentinel(sentinel) => vec![sentinel.current().2],
        }
    }
}

/// Marks notifications down when the subscriber task ends, however it ends
/// (aborted, or dropped with the runtime that ran it), so waiters poll.
struct DownOnDrop(FillWakes);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        self.0.set_live(false);
    }
}

/// One subscription attempt on each client in turn until one succeeds,
/// each bounded by `connect_timeout`. Several clients are a cluster's
/// nodes: classic pub/sub messages reach every node of a cluster, so any
/// one of them will do.
async fn subscribe(
    source: &ClientSource,
    channel: &str,
    connect_timeout: Duration,
) -> Result<redis::aio::PubSub, String> {
    let mut reason = "no server to subscribe on".to_owned();
    for client in source.candidates() {
        let attempt = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        match tokio::time::timeout(connect_timeout, attempt).await {
            Ok(Ok(pubsub)) => return Ok(pubsub),
            Ok(Err(e)) => reason = e.to_string(),
            Err(_) => reason = format!("no answer within {connect_timeout:?}"),
        }
    }
    Err(reason)
}

impl FillSubscription {
    /// Subscribes once (so that a store that has just connected already
    /// wakes its readers), then keeps the subscription up in a background
    /// task. A failed first attempt is not an error: the task goes on
    /// trying, and readers poll meanwhile.
    async fn start(clients: ClientSource, channel: String, connect_timeout: Duration) -> Self {
        let wakes = FillWakes::pending();
        let first = subscribe(&clients, &channel, connect_timeout).await;
        if first.is_ok() {
            wakes.set_live(true);
        }
        let task = Self::spawn(&wakes, &clients, &channel, connect_timeout, Some(first));
        FillSubscription {
            wakes,
            source: clients,
            channel,
            connect_timeout,
            task: std::sync::Mutex::new(task),
        }
    }

    fn spawn(
        wakes: &FillWakes,
        clients: &ClientSource,
        channel: &str,
        connect_timeout: Duration,
        first: Option<Result<redis::aio::PubSub, String>>,
    ) -> tokio::task::AbortHandle {
        let (client, channel) = (clients.clone(), channel.to_owned());
        let down_on_drop = DownOnDrop(wakes.clone());
        tokio::spawn(async move {
            let wakes = &down_on_drop.0;
            let mut attempt = match first {
                Some(first) => first,
                None => subscribe(&client, &channel, connect_timeout).await,
            };
            if attempt.is_ok() {
                wakes.set_live(true);
            }
            let mut backoff = Duration::from_millis(50);
            let mut warned = false;
            loop {
                let subscribed = match attempt {
                    Ok(subscribed) => subscribed,
                    Err(reason) => {
                        // Said once per outage: a user without channel
                        // rights (an ACL without `&aside:fills`) stays here.
                        if !warned {
                            tracing::warn!(
                                channel,
                                reason,
                                "cannot subscribe to fill notifications: readers poll until it can"
                            );
                            warned = true;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        attempt = subscribe(&client, &channel, connect_timeout).await;
                        if attempt.is_ok() {
                            tracing::info!(channel, "fill notifications subscribed");
                            wakes.set_live(true);
                        }
                        continue;
                    }
                };
                backoff = Duration::from_millis(50);
                warned = false;
                let messages = watched_messages(subscribed, connect_timeout);
                futures::pin_mut!(messages);
                while let Some(message) = messages.next().await {
                    // A payload that is not a key of ours wakes nobody.
                    if let Ok(key) = std::str::from_utf8(message.get_payload_bytes()) {
                        wakes.wake(key);
                    }
                }
                tracing::warn!(
                    channel,
                    "fill notifications lost their connection: readers poll until it is back"
                );
                wakes.set_live(false);
                attempt = Err("the subscription connection closed".to_owned());
            }
        })
        .abort_handle()
    }

    /// A watch on `key`; first starts the task again on this runtime if it
    /// died with the runtime it ran on.
    fn watch(&self, key: &str) -> FillWatch {
        let mut task = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if task.is_finished() && tokio::runtime::Handle::try_current().is_ok() {
            *task = Self::spawn(&self.wakes, &self.source, &self.channel, self.connect_timeout, None);
        }
        drop(task);
        self.wakes.watch(key)
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

/// An entry's `HMGET` of `v` (its current value), `o` (its stale copy)
/// and `t` (its lease token).
type EntryRow = (Option<Vec<u8>>, Option<Vec<u8>>, Option<u64>);

/// An entry as `HMGET v o t` found it: the current value, else the stale
/// copy flagged stale (a current value and a stale copy never coexist:
/// every write of `v` deletes the hash first).
fn entry_view((current, stale_copy, lease): EntryRow) -> EntryView {
    let stale = current.is_none() && stale_copy.is_some();
    EntryView {
        value: current.or(stale_copy).map(Bytes::from),
        stale,
        lease: lease.map(LeaseToken),
    }
}

/// Sorts a redis-rs error into the store's kinds. What feeds the breaker
/// ([`StoreError::Connection`]) is what no key can escape: I/O, timeouts, a
/// reply that does not parse (the connection is out of step), failed
/// authentication, and a server that cannot serve now (loading its data,
/// a replica refusing writes, a cluster down). A reply about this request
/// (`WRONGTYPE`, a script error, a value of an unexpected type) is
/// [`StoreError::Server`]: a per-key miss.
pub(crate) fn store_error(e: RedisError) -> StoreError {
    use redis::{ErrorKind, ServerErrorKind};
    let whole_store = e.is_io_error()
        // A server that wants a password refuses every key alike.
        || e.code() == Some("NOAUTH")
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Io
                | ErrorKind::Parse
                | ErrorKind::AuthenticationFailed
                | ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    if whole_store {
        StoreError::connection("the Redis connection failed, or the server cannot serve now").with_source(e)
    } else {
        StoreError::server("Redis answered this request with an error").with_source(e)
    }
}

fn lease_outcome(code: i64, value: Option<Bytes>, token: LeaseToken) -> StoreResult<LeaseOutcome> {
    match (code, value) {
        (1, Some(v)) => Ok(LeaseOutcome::Hit(v)),
        (2, stale) => Ok(LeaseOutcome::Busy { stale }),
        (3, stale) => Ok(LeaseOutcome::Granted { token, stale }),
        (code, _) => Err(StoreError::server(format!("lookup_or_lease returned code {code}"))),
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    /// Connects with the default [`RedisConfig`].
    ///
    /// # Errors
    /// [`StoreError::Connection`] when the URL is invalid or the server cannot be reached.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, RedisConfig::default()).await
    }

    /// Connects with explicit settings.
    ///
    /// # Errors
    /// [`StoreError::Connection`] when the URL is invalid or the server cannot be reached.
    pub async fn connect_with(url: &str, config: RedisConfig) -> StoreResult<Self> {
        let client = client_for(url, &config)?;
        let mut conn = Reconnecting::connect(client.clone(), &config)
            .await
            .map_err(|e| connect_error("cannot connect to Redis at", url, e))?;
        check_connection(&mut conn, config.connect_timeout)
            .await
            .map_err(|e| connect_error("cannot connect to Redis at", url, e))?;
        Ok(Self::with_connection(
            RedisConnection::Single(conn),
            None,
            ClientSource::Fixed(vec![client].into()),
            &config,
        )
        .await)
    }

    /// Connects to the primary that the Sentinels at `sentinels` (`redis://`
    /// URLs) name for `master`, and follows it through failovers: after a
    /// command fails as a lost primary fails, Sentinel is asked again in the
    /// background and commands go to the new primary once it is promoted
    /// (the failing commands are misses meanwhile). Default settings; see
    /// [`RedisStore::connect_sentinel_with`]. The primary is reached in
    /// plaintext without credentials (TLS and ACL users through Sentinel
    /// are not supported yet).
    ///
    /// # Errors
    /// [`StoreError::Connection`] when no Sentinel answers or the primary
    /// it names cannot be reached.
    pub async fn connect_sentinel(sentinels: &[&str], master: &str) -> StoreResult<Self> {
        Self::connect_sentinel_with(sentinels, master, RedisConfig::default()).await
    }

    /// [`RedisStore::connect_sentinel`] with explicit settings. The fill
    /// subscription follows the primary too, once it reconnects.
    ///
    /// # Errors
    /// [`StoreError::Connection`] when no Sentinel answers or the primary
    /// it names cannot be reached.
    pub async fn connect_sentinel_with(sentinels: &[&str], master: &str, config: RedisConfig) -> StoreResult<Self> {
        let shown = || sentinels.iter().map(|u| masked_url(u)).collect::<Vec<_>>().join(",");
        let failed = |e: RedisError| {
            StoreError::connection(format!(
                "cannot find the primary of {master} through Sentinel at {}: {e}",
                shown()
            ))
            .with_source(e)
        };
        // The primary's sockets get the store's keepalive and user timeout.
        let to_primary =
            redis::sentinel::SentinelNodeConnectionInfo::default().set_tcp_settings(conn::tcp_settings(&config));
        // An owned name: redis-rs takes a `String` here without TLS, and
        // `impl AsRef<str>` with it.
        #[allow(clippy::unnecessary_to_owned)]
        let sentinel = redis::sentinel::SentinelClient::build(
            sentinels.to_vec(),
            master.to_owned(),
            Some(to_primary),
            redis::sentinel::SentinelServerType::Master,
        )
        .map_err(failed)?;
        // Asking Sentinel, then checking the primary's role, then connecting.
        // Saturating: the connect timeout is the user's.
        let resolve_timeout = config.connect_timeout.saturating_mul(4);
        let conn = SentinelConn::connect(sentinel, config.clone(), resolve_timeout)
            .await
            .map_err(failed)?;
        let source = ClientSource::Sentinel(conn.clone());
        let conn = RedisConnection::Sentinel(SentinelHandle(conn));
        Ok(Self::with_connection(conn, None, source, &config).await)
    }

    /// Connects to a Redis Cluster through any of its nodes (`urls`, one
    /// or more), with the default [`RedisConfig`].
    ///
    /// # Errors
    /// [`StoreError::Connection`] when a URL is invalid or no node can be reached.
    pub async fn connect_cluster<S: AsRef<str>>(urls: &[S]) -> StoreResult<Self> {
        Self::connect_cluster_with(urls, RedisConfig::default()).await
    }

    /// Connects to a Redis Cluster through any of its nodes (`urls`), with
    /// explicit settings: `connect_timeout` bounds connecting to a node,
    /// `response_timeout` bounds a command including redis-rs's retries
    /// and redirections, `reconnect_retries` caps those retries.
    ///
    /// The store has the same contract as on one server. Every command and
    /// script touches one key (but `put_entry_if_newer`, the entry and its
    /// write mark), and the companion keys of an entry (a
    /// `Versioned` counter and data keys, the article's lock) carry the
    /// entry's key as their hash tag, so they live in its slot. Batches are
    /// split by the node that serves each key, one pipeline per node, sent
    /// at once.
    ///
    /// # Errors
    /// [`StoreError::Connection`] when a URL is invalid or no node can be reached.
    pub async fn connect_cluster_with<S: AsRef<str>>(urls: &[S], config: RedisConfig) -> StoreResult<Self> {
        let shown = || {
            urls.iter()
                .map(|u| masked_url(u.as_ref()))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut clients = Vec::with_capacity(urls.len());
        for url in urls {
            // TLS, the keepalive and the user timeout, as on one server;
            // also what the fill subscription connects with.
            clients.push(client_for(url.as_ref(), &config)?);
        }
        if clients.is_empty() {
            return Err(StoreError::connection("a Redis Cluster needs at least one node URL"));
        }
        let nodes: Vec<_> = clients.iter().map(|c| c.get_connection_info().clone()).collect();
        let builder = redis::cluster::ClusterClientBuilder::new(nodes).tcp_settings(conn::tcp_settings(&config));
        #[cfg(feature = "redis-tls")]
        let builder = match config.tls.certificates() {
            Some(certs) => builder.certs(certs),
            None => builder,
        };
        let client = builder
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .retries(u32::try_from(config.reconnect_retries).unwrap_or(u32::MAX))
            .min_retry_wait(u64::try_from(config.reconnect_min_delay.as_millis()).unwrap_or(u64::MAX))
            .max_retry_wait(1000)
            .build()
            .map_err(|e| StoreError::connection(format!("invalid Redis Cluster URLs {}", shown())).with_source(e))?;
        let conn = tokio::time::timeout(config.connect_timeout.saturating_mul(2), client.get_async_connection())
            .await
            .map_err(|_| {
                StoreError::connection(format!(
                    "no Redis Cluster node at {} answered within {:?}",
                    shown(),
                    config.connect_timeout.saturating_mul(2)
                ))
            })?
            .map_err(|e| {
                StoreError::connection(format!("cannot connect to the Redis Cluster at {}", shown())).with_source(e)
            })?;
        let handle = cluster::ClusterHandle::new(client, conn, config.connect_timeout);
        let batches = Arc::new(ClusterBatches::new(handle.clone()));
        let source = ClientSource::Fixed(clients.into());
        Ok(Self::with_connection(RedisConnection::Cluster(handle), Some(batches), source, &config).await)
    }

    async fn with_connection(
        conn: RedisConnection,
        cluster: Option<Arc<ClusterBatches>>,
        clients: ClientSource,
        config: &RedisConfig,
    ) -> Self {
        let fill_subscription = match &config.fill_channel {
            Some(channel) => Some(Arc::new(
                FillSubscription::start(clients, channel.clone(), config.connect_timeout).await,
            )),
            None => None,
        };
        RedisStore {
            conn,
            cluster,
            scripts: Arc::new(Scripts::new()),
            fill_channel: Arc::from(config.fill_channel.as_deref().unwrap_or("")),
            fill_subscription,
        }
    }

    /// How many pipelines this store's batches have sent to cluster nodes
    /// (0 on one server), for tests that count round trips.
    #[doc(hidden)]
    pub fn cluster_pipelines_sent(&self) -> u64 {
        self.cluster
            .as_ref()
            .map_or(0, |c| c.pipelines.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// True when this store is on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Runs one command per key (`cmds`, in the order of `keys`) in as few
    /// round trips as the deployment allows: one pipeline on one server,
    /// one pipeline per node on a cluster. `script` is the source of the
    /// script the commands `EVALSHA`, loaded and the batch sent again when
    /// a server does not know it.
    async fn batch<T: redis::FromRedisValue>(
        &self,
        keys: impl Iterator<Item = &str>,
        cmds: Vec<Cmd>,
        script: Option<&str>,
    ) -> StoreResult<Vec<T>> {
        let Some(cluster) = &self.cluster else {
            let mut pipe = redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            return match script {
                Some(source) => self.query_scripted(&pipe, source).await,
                None => pipe.query_async(&mut self.conn.clone()).await.map_err(store_error),
            };
        };
        let cmds = keys.map(|k| cluster::slot(k.as_bytes())).zip(cmds).collect();
        let values = cluster.run(cmds, script).await.map_err(store_error)?;
        values
            .into_iter()
            .map(|v| redis::from_redis_value(v).map_err(|e| store_error(e.into())))
            .collect()
    }

    /// Runs a pipeline of `EVALSHA`s of `source`; if the server does not
    /// know the script (first use, or after a restart), loads it and runs
    /// the pipeline again. `Script` does this for single calls; pipelines
    /// need it by hand.
    async fn query_scripted<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline, source: &str) -> StoreResult<T> {
        match pipe.query_async(&mut self.conn.clone()).await {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(source)
                    .exec_async(&mut self.conn.clone())
                    .await
                    .map_err(store_error)?;
                pipe.query_async(&mut self.conn.clone()).await.map_err(store_error)
            }
            other => other.map_err(store_error),
        }
    }

    /// A clone of the underlying connection, for callers that need commands
    /// the [`Store`] trait does not have (tests, `aside inspect`).
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// How many times the connection was replaced after
    /// [`RedisConfig::replace_after_timeouts`] timeouts in a row (one
    /// server only; 0 on a cluster or through Sentinel).
    pub fn connection_replacements(&self) -> u64 {
        match &self.conn {
            RedisConnection::Single(conn) => conn.replacements(),
            _ => 0,
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &'static str {
        if self.cluster.is_some() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    fn supports_plain_values(&self) -> bool {
        true
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(value.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        redis::cmd("SET")
            .arg(key)
            .arg(value.as_ref())
            .arg("PX")
            .arg(ttl_ms(ttl))
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    async fn add(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<bool> {
        let written: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value.as_ref())
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(written.is_some())
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        redis::cmd("DEL")
            .arg(key)
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }

    async fn incr(&self, key: &str, ttl: Duration) -> StoreResult<u64> {
        let (n,): (u64,) = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg(key)
            .cmd("PEXPIRE")
            .arg(key)
            .arg(ttl_ms(ttl))
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(n)
    }

    async fn peek_entry(&self, key: &str) -> StoreResult<EntryView> {
        let row: EntryRow = redis::cmd("HMGET")
            .arg(key)
            .arg("v")
            .arg("o")
            .arg("t")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(entry_view(row))
    }

    /// One `HGET` of field `v`, which holds a current value only (a stale
    /// copy lives in `o`): the reply is one bulk string, as a plain `GET`'s.
    /// `peek_entry`'s `HMGET` of three fields costs the client about 5,300
    /// more instructions per hit, most of them in redis-rs's reply parser
    /// (`scripts/profile-hits redis`: `raw-hmget` against `raw-hget`).
    async fn peek_fresh(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(key).arg("v");
        let value: Option<Vec<u8>> = match &self.conn {
            // What `query_async` does with the reply, minus the boxed future.
            RedisConnection::Single(single) => single
                .request(&cmd)
                .await
                .and_then(redis::Value::extract_error)
                .and_then(|reply| Ok(redis::from_redis_value(reply)?))
                .map_err(store_error)?,
            other => cmd.query_async(&mut other.clone()).await.map_err(store_error)?,
        };
        Ok(value.map(Bytes::from))
    }

    async fn lookup_or_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<LeaseOutcome> {
        let (code, value): (i64, Option<Vec<u8>>) = self
            .scripts
            .lookup_or_lease
            .key(key)
            .arg(token.0)
            .arg(ttl_ms(lease_ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        lease_outcome(code, value.map(Bytes::from), token)
    }

    async fn lease_for_refresh(
        &self,
        key: &str,
        token: LeaseToken,
        lease_ttl: Duration,
    ) -> StoreResult<Option<LeaseToken>> {
        let granted: i64 = self
            .scripts
            .lease_for_refresh
            .key(key)
            .arg(token.0)
            .arg(ttl_ms(lease_ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok((granted == 1).then_some(token))
    }

    async fn fill(&self, key: &str, token: LeaseToken, value: Bytes, ttl: Duration) -> StoreResult<FillOutcome> {
        let stored: i64 = self
            .scripts
            .fill
            .key(key)
            .arg(token.0)
            .arg(value.as_ref())
            .arg(ttl_ms(ttl))
            .arg(self.fill_channel.as_ref())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(if stored == 1 {
            FillOutcome::Stored
        } else {
            FillOutcome::Refused
        })
    }

    async fn renew_lease(&self, key: &str, token: LeaseToken, lease_ttl: Duration) -> StoreResult<bool> {
        let renewed: i64 = self
            .scripts
            .renew_lease
            .key(key)
            .arg(token.0)
            .arg(ttl_ms(lease_ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(renewed == 1)
    }

    fn watch_fill(&self, key: &str) -> Option<FillWatch> {
        self.fill_subscription.as_ref().map(|s| s.watch(key))
    }

    async fn release(&self, key: &str, token: LeaseToken) -> StoreResult<()> {
        self.scripts
            .release
            .key(key)
            .arg(token.0)
            .arg(self.fill_channel.as_ref())
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn put_entry(&self, key: &str, value: Bytes, ttl: Duration) -> StoreResult<()> {
        self.scripts
            .put_entry
            .key(key)
            .arg(value.as_ref())
            .arg(ttl_ms(ttl))
            .arg(self.fill_channel.as_ref())
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    fn supports_versioned_writes(&self) -> bool {
        true
    }

    fn supports_fences(&self) -> bool {
        true
    }

    async fn take_fence(&self, key: &str, token: LeaseToken, ttl: Duration) -> StoreResult<bool> {
        let fenced: i64 = self
            .scripts
            .take_fence
            .key(key)
            .arg(token.0)
            .arg(ttl_ms(ttl))
            .arg(self.fill_channel.as_ref())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(fenced == 1)
    }

    async fn put_entry_if_newer(&self, put: VersionedPut) -> StoreResult<bool> {
        let written: i64 = self
            .scripts
            .put_entry_if_newer
            .key(&put.key)
            .key(&put.mark_key)
            .arg(put.value.as_ref())
            .arg(ttl_ms(put.ttl))
            .arg(put.version.to_string())
            .arg(ttl_ms(put.mark_ttl))
            .arg(self.fill_channel.as_ref())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(written == 1)
    }

    async fn invalidate_if_newer(
        &self,
        key: &str,
        mark_key: &str,
        version: u64,
        mark_ttl: Duration,
    ) -> StoreResult<()> {
        self.scripts
            .invalidate_if_newer
            .key(key)
            .key(mark_key)
            .arg(version.to_string())
            .arg(ttl_ms(mark_ttl))
            .arg(self.fill_channel.as_ref())
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn invalidate(&self, key: &str, keep_stale: Option<Duration>) -> StoreResult<()> {
        let Some(stale_ttl) = keep_stale else {
            // A script, not a DEL: a reader waiting on the lease it revokes
            // is woken.
            self.scripts
                .invalidate
                .key(key)
                .arg(self.fill_channel.as_ref())
                .invoke_async::<i64>(&mut self.conn.clone())
                .await
                .map_err(store_error)?;
            return Ok(());
        };
        self.scripts
            .invalidate_keep_stale
            .key(key)
            .arg(ttl_ms(stale_ttl))
            .arg(self.fill_channel.as_ref())
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get_many(&self, keys: &[String]) -> StoreResult<Vec<Option<Bytes>>> {
        // One GET per key, not MGET: one round trip either way, and it stays
        // valid in Redis Cluster when the keys live in different slots.
        let cmds = keys.iter().map(|key| redis::cmd("GET").arg(key).clone()).collect();
        let values: Vec<Option<Vec<u8>>> = self.batch(keys.iter().map(String::as_str), cmds, None).await?;
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn peek_many(&self, keys: &[String]) -> StoreResult<Vec<EntryView>> {
        let cmds = keys
            .iter()
            .map(|key| redis::cmd("HMGET").arg(key).arg("v").arg("o").arg("t").clone())
            .collect();
        let rows: Vec<EntryRow> = self.batch(keys.iter().map(String::as_str), cmds, None).await?;
        Ok(rows.into_iter().map(entry_view).collect())
    }

    async fn lookup_or_lease_many(
        &self,
        keys: &[(String, LeaseToken)],
        lease_ttl: Duration,
    ) -> StoreResult<Vec<LeaseOutcome>> {
        let script = &self.scripts.lookup_or_lease;
        let cmds = keys
            .iter()
            .map(|(key, token)| {
                redis::cmd("EVALSHA")
                    .arg(script.get_hash())
                    .arg(1)
                    .arg(key)
                    .arg(token.0)
                    .arg(ttl_ms(lease_ttl))
                    .clone()
            })
            .collect();
        let rows: Vec<(i64, Option<Vec<u8>>)> = self
            .batch(
                keys.iter().map(|(k, _)| k.as_str()),
                cmds,
                Some(include_str!("lookup_or_lease.lua")),
            )
            .await?;
        rows.into_iter()
            .zip(keys)
            .map(|((code, value), (_, token))| lease_outcome(code, value.map(Bytes::from), *token))
            .collect()
    }

    async fn fill_many(&self, fills: Vec<Fill>) -> StoreResult<Vec<FillOutcome>> {
        let cmds = fills
            .iter()
            .map(|fill| {
                redis::cmd("EVALSHA")
                    .arg(self.scripts.fill.get_hash())
                    .arg(1)
                    .arg(&fill.key)
                    .arg(fill.token.0)
                    .arg(fill.value.as_ref())
                    .arg(ttl_ms(fill.ttl))
                    .arg(self.fill_channel.as_ref())
                    .clone()
            })
            .collect();
        let stored: Vec<i64> = self
            .batch(
                fills.iter().map(|f| f.key.as_str()),
                cmds,
                Some(include_str!("fill.lua")),
            )
            .await?;
        Ok(stored
            .into_iter()
            .map(|s| {
                if s == 1 {
                    FillOutcome::Stored
                } else {
                    FillOutcome::Refused
                }
            })
            .collect())
    }

    async fn set_many(&self, items: Vec<(String, Bytes, Duration)>) -> StoreResult<()> {
        let cmds = items
            .iter()
            .map(|(key, value, ttl)| {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value.as_ref())
                    .arg("PX")
                    .arg(ttl_ms(*ttl))
                    .clone()
            })
            .collect();
        let _: Vec<redis::Value> = self.batch(items.iter().map(|(k, _, _)| k.as_str()), cmds, None).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        if let Some(cluster) = &self.cluster {
            return cluster.ping().await.map_err(store_error);
        }
        redis::cmd("PING")
            .exec_async(&mut self.conn.clone())
            .await
            .map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, ServerErrorKind};

    use super::*;

    /// The error of a failed connect says which server, never with the
    /// URL's password, and keeps redis-rs's error as its source.
    #[tokio::test]
    async fn a_connect_error_names_the_server_without_its_password() {
        let refused_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let unreachable = format!("redis://ada:hunter2@127.0.0.1:{refused_port}/");
        for (url, shown) in [
            (
                unreachable.as_str(),
                format!("redis://ada:***@127.0.0.1:{refused_port}/"),
            ),
            // A URL that does not parse is masked whole: its password may be
            // anywhere in it.
            ("redis://ada:hunter2@127.0.0.1:notaport/", "redis://***".to_owned()),
        ] {
            let err = RedisStore::connect(url).await.expect_err(url);
            assert!(matches!(err, StoreError::Connection { .. }), "{err:?}");
            let mut chain = format!("{err} {err:?}");
            let mut source = std::error::Error::source(&err);
            assert!(source.is_some(), "redis-rs's error is kept");
            while let Some(e) = source {
                chain += &format!(" {e} {e:?}");
                source = e.source();
            }
            assert!(chain.contains(&shown), "{chain}");
            assert!(!chain.contains("hunter2"), "{chain}");
            let err = crate::Error::from(err);
            assert!(
                err.is_store() && !format!("{err} {err:?}").contains("hunter2"),
                "{err:?}"
            );
        }
    }

    /// Defect 16 of issue 12: only what no key escapes feeds the breaker.
    #[test]
    fn errors_about_one_key_are_server_errors_and_a_sick_server_is_a_connection_error() {
        let kind = |k: ErrorKind| store_error(RedisError::from((k, "test")));
        for per_key in [
            ErrorKind::UnexpectedReturnType,
            ErrorKind::Server(ServerErrorKind::ResponseError),
            ErrorKind::Server(ServerErrorKind::ExecAbort),
            ErrorKind::Extension,
        ] {
            assert!(matches!(kind(per_key), StoreError::Server { .. }), "{per_key:?}");
        }
        for whole_store in [
            ErrorKind::Io,
            ErrorKind::Parse,
            ErrorKind::AuthenticationFailed,
            ErrorKind::Server(ServerErrorKind::BusyLoading),
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            ErrorKind::Server(ServerErrorKind::ClusterDown),
            ErrorKind::Server(ServerErrorKind::MasterDown),
        ] {
            assert!(
                matches!(kind(whole_store), StoreError::Connection { .. }),
                "{whole_store:?}"
            );
        }
        // A server that wants a password (the URL has none) refuses every key.
        let noauth = redis::make_extension_error("NOAUTH".into(), Some("Authentication required.".into()));
        assert!(matches!(store_error(noauth), StoreError::Connection { .. }));
    }
}
