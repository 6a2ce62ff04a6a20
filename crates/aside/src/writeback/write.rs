//! The writer's side of write-back: [`Namespace::write_back`], the order
//! of its two writes, and [`NamespaceBuilder::write_back`] which gives a
//! namespace its log.
//!
//! Owns that order and what each failure means for the caller; the append
//! is [`WriteBackLog`]'s, the cache write the engine's versioned
//! write-through (`NsInner::write_versioned`).

use std::fmt::Display;

use crate::engine::state::WriteThrough;
use crate::error::{Error, ErrorKind, Result};
use crate::namespace::{Namespace, NamespaceBuilder};
use crate::policy::Strategy;

use super::entry::{FORMAT, field};
use super::log::WriteBackLog;

/// What [`Namespace::write_back`] did with the cache, once the log had the
/// write (every outcome means the write is logged and will be flushed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteBack {
    /// Cached: reads see it now.
    Cached,
    /// Not cached: a write of the same or a newer version of the key was
    /// cached first, and is what reads see. Both are logged; the database
    /// keeps the newer.
    Superseded,
    /// Not cached: the cache did not take the write (the store failed or
    /// timed out); the key was invalidated, or its invalidation queued.
    /// Reads may load the older row from the database until the flusher
    /// has applied this write.
    Uncached,
}

/// A namespace's log: where its writes go, and their counters.
pub(crate) struct Target {
    pub(crate) log: WriteBackLog,
    pub(crate) stream: String,
    logged: metrics::Counter,
    refused: metrics::Counter,
}

impl Target {
    pub(crate) fn new(log: WriteBackLog, prefix: &str, namespace: &str) -> Self {
        let stream = log.stream_for(prefix, namespace);
        Target {
            logged: metrics::counter!(crate::metrics::WB_LOGGED, "stream" => stream.clone()),
            refused: metrics::counter!(crate::metrics::WB_REFUSED, "stream" => stream.clone()),
            log,
            stream,
        }
    }
}

impl<K: Display + ?Sized, V: Clone + Send + Sync + 'static> NamespaceBuilder<K, V> {
    /// Gives the namespace a write-back log, for [`Namespace::write_back`]:
    /// its writes go to [`WriteBackLog::stream_for`] this namespace (by
    /// default `"{prefix}aside:wb:{name}"`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> aside::Result<()> {
    /// use aside::writeback::WriteBackLog;
    /// let log = WriteBackLog::connect("redis://127.0.0.1:6379").await?;
    /// let cache = aside::Aside::builder().build();
    /// let names = cache.namespace::<u64, String>("name").write_back(log).build()?;
    /// # Ok(()) }
    /// ```
    pub fn write_back(mut self, log: WriteBackLog) -> Self {
        self.write_back_log = Some(log);
        self
    }
}

impl<K, V> Namespace<K, V>
where
    K: Display + ?Sized,
    V: Clone + Send + Sync + 'static,
{
    /// The stream this namespace's [`Namespace::write_back`] appends to,
    /// `None` without a log.
    pub fn write_back_stream(&self) -> Option<&str> {
        self.write_back.as_deref().map(|t| t.stream.as_str())
    }

    /// Write-back: logs the write of `value` as `key`'s row at `version`
    /// (a row version, or `updated_at` in a monotonic unit) to the
    /// namespace's durable log, then caches it, fenced by the version as
    /// [`Namespace::write_through`] is; a [`Flusher`](super::Flusher)
    /// writes it to the database later. Returns `Ok` only once the log has
    /// the write: from then on it is flushed whatever happens to this
    /// process or the cache.
    ///
    /// Why the log first: a write that is cached but not logged could be
    /// read and then vanish (the process dies, the log refuses it): a read
    /// of a write that never happens. Logged first, the worst a failure in
    /// between can do is leave the cache without it
    /// ([`WriteBack::Uncached`]): the write is still flushed, and the key
    /// is invalidated, so the old cached value goes.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(names: aside::Namespace<u64, String>) -> aside::Result<()> {
    /// use aside::writeback::WriteBack;
    /// // Version 4 of row 7: logged, then cached; the database later.
    /// assert_eq!(names.write_back(&7, &"Grace".to_string(), 4).await?, WriteBack::Cached);
    /// assert_eq!(names.peek(&7).await?.as_deref(), Some("Grace"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Nothing is logged, and nothing cached, when it returns an error:
    /// - [`ErrorKind::Backpressure`]: the log holds
    ///   [`LogConfig::max_len`](super::LogConfig::max_len) unflushed writes;
    /// - [`ErrorKind::Store`]: the log's server failed or cannot be reached;
    /// - [`ErrorKind::Timeout`]: no answer in time. This one write may be
    ///   logged all the same (and then flushed); writing it again with the
    ///   same version is harmless;
    /// - [`ErrorKind::Config`]: the namespace has no log
    ///   ([`NamespaceBuilder::write_back`]), or cannot cache by version (a
    ///   strategy other than [`Strategy::Lease`], a store without versioned
    ///   writes): reads would not see the write before its flush;
    /// - [`ErrorKind::Codec`]: the value does not encode, or is over the
    ///   namespace's size limit (it could not be cached);
    /// - [`ErrorKind::InvalidKey`]: a bad key.
    ///
    /// # Concurrent calls
    /// Writers of one key need no lock: the cache keeps the highest version
    /// whatever order the writes land in, and so does the database, through
    /// the sink's versioned upsert.
    pub async fn write_back(&self, key: &K, value: &V, version: u64) -> Result<WriteBack> {
        let Some(target) = self.write_back.as_deref() else {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "namespace {} has no write-back log: give it one with NamespaceBuilder::write_back",
                    self.inner.name
                ),
            ));
        };
        let full = self.store_key(key)?;
        if self.inner.strategy != Strategy::Lease || !self.inner.core.store.supports_versioned_writes() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "write-back needs the lease strategy and a store with versioned writes (namespace {} has {} on the {} store): reads would not see a write before its flush",
                    self.inner.name,
                    self.inner.strategy,
                    self.inner.core.store.name()
                ),
            ));
        }
        let bytes = self.inner.codec.encode(value)?;
        if bytes.len() > self.inner.max_value_bytes {
            return Err(Error::new(
                ErrorKind::Codec,
                format!(
                    "value of {} bytes over the {} byte limit: it could not be cached, so it is not logged",
                    bytes.len(),
                    self.inner.max_value_bytes
                ),
            ));
        }
        let key_text = key.to_string();
        let version_text = version.to_string();
        let codec_text = self.inner.codec.id().to_string();
        let fields: [(&str, &[u8]); 6] = [
            (field::FORMAT, FORMAT.as_bytes()),
            (field::NAMESPACE, self.inner.name.as_bytes()),
            (field::KEY, key_text.as_bytes()),
            (field::VERSION, version_text.as_bytes()),
            (field::CODEC, codec_text.as_bytes()),
            (field::VALUE, &bytes),
        ];
        if let Err(e) = target.log.append(&target.stream, &fields).await {
            target.refused.increment(1);
            return Err(e);
        }
        target.logged.increment(1);
        // Logged: from here on the write is flushed, so the caller gets Ok
        // whatever the cache does.
        Ok(match self.inner.write_versioned(&full, value, version).await {
            Ok(WriteThrough::Written) => WriteBack::Cached,
            Ok(WriteThrough::Superseded) => WriteBack::Superseded,
            Ok(WriteThrough::Invalidated) | Err(_) => WriteBack::Uncached,
        })
    }
}
