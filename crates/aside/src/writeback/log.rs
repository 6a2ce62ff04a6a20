//! [`WriteBackLog`]: the durable log of write-back writes, a Redis Stream.
//!
//! Owns appending one write (`append.lua`: the bound check and the `XADD`
//! in one step), the log's bound (back-pressure), the default stream name,
//! and how a failed append becomes an [`Error`]. It does not read the log:
//! that is the [`Flusher`](super::Flusher)'s.
//!
//! Durability is the server's: with `appendonly yes` and `appendfsync
//! always`, Redis answers an `XADD` only after it is on disk, so an
//! acknowledged append survives a crash of the server. With a weaker fsync
//! policy, an acknowledged write can be lost with the last second of the
//! server's writes; with replicas, with a failover (no `WAIT` is sent).

use std::sync::Arc;
use std::time::Duration;

use redis::{Script, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::store::redis::{
    Reconnecting, RedisConfig, RedisConnection, check_connection, client_for, connect_error, store_error,
};

/// Default bound of a log ([`LogConfig::max_len`]): 100,000 unflushed writes.
pub const DEFAULT_MAX_LOG_LEN: u64 = 100_000;

/// Default bound on one append ([`LogConfig::redis`]'s response timeout): 1 s.
pub const DEFAULT_APPEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The stream a namespace logs to when [`LogConfig::stream`] is not set:
/// `"{prefix}aside:wb:{namespace}"`.
///
/// # Examples
///
/// ```
/// assert_eq!(aside::writeback::default_stream("", "users"), "aside:wb:users");
/// ```
pub fn default_stream(prefix: &str, namespace: &str) -> String {
    format!("{prefix}aside:wb:{namespace}")
}

/// Settings of a [`WriteBackLog`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LogConfig {
    /// The stream every namespace using this log appends to. `None` (the
    /// default): one stream per namespace, [`default_stream`].
    ///
    /// A stream shared by several namespaces must be drained by ONE
    /// consumer group whose sink routes each write by
    /// [`LoggedWrite::namespace`](crate::writeback::LoggedWrite): a flusher
    /// per namespace (a group each) would delete, after its own commit,
    /// entries the other has not read, and a sink that ignores the
    /// namespace parks or misplaces the others' writes. `aside flush`
    /// drains one namespace's stream.
    pub stream: Option<String>,
    /// The most unflushed writes the stream may hold: at it, an append is
    /// refused with [`ErrorKind::Backpressure`] instead of growing the log
    /// without bound. Default [`DEFAULT_MAX_LOG_LEN`].
    pub max_len: u64,
    /// The connection, made by [`WriteBackLog::connect_with`]. Its
    /// `response_timeout` also bounds every append (default
    /// [`DEFAULT_APPEND_TIMEOUT`]).
    pub redis: RedisConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            stream: None,
            max_len: DEFAULT_MAX_LOG_LEN,
            redis: RedisConfig {
                response_timeout: DEFAULT_APPEND_TIMEOUT,
                ..RedisConfig::default()
            },
        }
    }
}

/// The durable log that [`Namespace::write_back`](crate::Namespace::write_back)
/// appends to: a Redis Stream, one entry per write (namespace, key, version,
/// the codec's bytes of the value). Register it on a namespace with
/// [`NamespaceBuilder::write_back`](crate::NamespaceBuilder::write_back).
///
/// Cloning is cheap; clones share the connection.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> aside::Result<()> {
/// use aside::writeback::{LogConfig, WriteBackLog};
/// let mut config = LogConfig::default();
/// config.max_len = 10_000; // past it, write_back pushes back
/// let log = WriteBackLog::connect_with("redis://127.0.0.1:6379", config).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WriteBackLog {
    conn: RedisConnection,
    stream: Option<Arc<str>>,
    max_len: u64,
    timeout: Duration,
    script: Arc<Script>,
}

impl std::fmt::Debug for WriteBackLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBackLog")
            .field("stream", &self.stream)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl WriteBackLog {
    /// Connects to the server at `url` with the default [`LogConfig`].
    ///
    /// # Errors
    /// [`ErrorKind::Store`] when the URL is invalid or the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, LogConfig::default()).await
    }

    /// Connects to the server at `url` (TLS and credentials as for a
    /// [`RedisStore`](crate::store::redis::RedisStore)).
    ///
    /// # Errors
    /// [`ErrorKind::Store`] when the URL is invalid or the server cannot be reached.
    pub async fn connect_with(url: &str, config: LogConfig) -> Result<Self> {
        let client = client_for(url, &config.redis)?;
        let unreachable = |e| connect_error("cannot connect the write-back log to Redis at", url, e);
        let mut conn = Reconnecting::connect(client, &config.redis)
            .await
            .map_err(unreachable)?;
        check_connection(&mut conn, config.redis.connect_timeout)
            .await
            .map_err(unreachable)?;
        Ok(Self::on_connection(RedisConnection::Single(conn), config))
    }

    /// A log on a connection already made, such as a
    /// [`RedisStore`](crate::store::redis::RedisStore)'s
    /// ([`RedisStore::connection`](crate::store::redis::RedisStore::connection)):
    /// the cache and its log then share one connection. `config.redis` is
    /// used only for its response timeout, the bound on an append.
    pub fn on_connection(conn: RedisConnection, config: LogConfig) -> Self {
        WriteBackLog {
            conn,
            stream: config.stream.map(Arc::from),
            max_len: config.max_len,
            timeout: config.redis.response_timeout,
            script: Arc::new(Script::new(include_str!("append.lua"))),
        }
    }

    /// The stream the namespace `name` (under the `Aside` prefix `prefix`) logs to.
    pub fn stream_for(&self, prefix: &str, name: &str) -> String {
        match &self.stream {
            Some(stream) => stream.to_string(),
            None => default_stream(prefix, name),
        }
    }

    /// The bound of the log, [`LogConfig::max_len`].
    pub fn max_len(&self) -> u64 {
        self.max_len
    }

    /// How many writes `stream` holds now (`XLEN`): not yet flushed, or
    /// being flushed.
    ///
    /// # Errors
    /// [`ErrorKind::Store`] or [`ErrorKind::Timeout`] when the server did not answer.
    pub async fn len(&self, stream: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut xlen = redis::cmd("XLEN");
        xlen.arg(stream);
        self.bounded(stream, xlen.query_async(&mut conn)).await
    }

    async fn bounded<T>(&self, stream: &str, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(Error::with_source(
                ErrorKind::Store,
                format!("the write-back log {stream} failed: the write may not be logged"),
                store_error(e),
            )),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "the write-back log {stream} did not answer within {:?}: the write may or may not be logged",
                    self.timeout
                ),
            )),
        }
    }

    /// Appends one entry of `fields` to `stream`, unless the stream is at
    /// its bound. Returns the entry's id once the server has it.
    pub(crate) async fn append(&self, stream: &str, fields: &[(&str, &[u8])]) -> Result<String> {
        let mut invocation = self.script.key(stream);
        invocation.arg(self.max_len);
        for (name, value) in fields {
            invocation.arg(*name).arg(*value);
        }
        let mut conn = self.conn.clone();
        let reply: Value = self.bounded(stream, invocation.invoke_async(&mut conn)).await?;
        match redis::from_redis_value::<(i64, Value)>(reply) {
            Ok((1, id)) => redis::from_redis_value::<String>(id).map_err(|_| {
                Error::new(
                    ErrorKind::Store,
                    format!("the write-back log {stream} gave no entry id"),
                )
            }),
            Ok((_, len)) => Err(Error::new(
                ErrorKind::Backpressure,
                format!(
                    "the write-back log {stream} holds {} writes, at its bound of {}: the write was not logged (is the flusher behind, or stopped?)",
                    redis::from_redis_value::<u64>(len).unwrap_or(self.max_len),
                    self.max_len
                ),
            )),
            Err(e) => Err(Error::with_source(
                ErrorKind::Store,
                format!("the write-back log {stream} answered the append unexpectedly"),
                e,
            )),
        }
    }
}
