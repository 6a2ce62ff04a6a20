//! [`Namespace`]: a typed view of one kind of cached value, and its builder.
//!
//! Owns the public typed API, its per-call options, and the builder that
//! collects and checks a namespace's settings. No engine logic: each method
//! hands its typed key to the engine (`engine::state::NsInner`), which
//! builds the store key and owns every read (through the L1, see
//! `engine::l1`) and every write.

use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, Json};
use crate::engine::Core;
use crate::engine::state::{FailSafe, NsInner, Settings};
pub use crate::engine::state::{Fetched, Source, Stampede, WriteThrough};
use crate::error::{Error, ErrorKind, Result};
use crate::key;
use crate::policy::{EarlyRefresh, Strategy};
use crate::read_through::{self, Loader};
use crate::telemetry;

/// Per-call options of [`Namespace::fetch_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FetchOptions {
    /// Neither read nor fill the cache: ask the loader.
    pub skip_cache: bool,
    /// Do not read the cache; load and replace the cached value. When the
    /// reloaded value cannot be cached (the store fails or the breaker is
    /// open, a write revoked the refresh's lease, the value is over the
    /// size limit, the loader found nothing and negative caching is off),
    /// the key is invalidated instead, queued for replay if the store is
    /// away (this `Aside`'s reads of the key skip the store until then), so
    /// that the older value does not outlive the refresh
    /// (`a_forced_refresh_the_store_did_not_take_leaves_no_older_value_behind`
    /// in `tests/regressions.rs`). Under [`Strategy::Lease`], while another
    /// caller holds the key's lease, the refresh may instead answer with
    /// that caller's fill or the value the store holds
    /// ([`Source::Coalesced`]), or a stale copy ([`Source::Stale`]).
    pub force_refresh: bool,
}

impl FetchOptions {
    /// Neither read nor fill the cache.
    pub fn skip_cache() -> Self {
        FetchOptions {
            skip_cache: true,
            ..Self::default()
        }
    }

    /// Reload and replace the cached value.
    pub fn force_refresh() -> Self {
        FetchOptions {
            force_refresh: true,
            ..Self::default()
        }
    }
}

/// Settings of [`Namespace::warm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmOptions {
    /// Keys per loader call. Default 100.
    pub batch_size: usize,
    /// Batches in flight at once. Default 4.
    pub concurrency: usize,
}

impl Default for WarmOptions {
    fn default() -> Self {
        WarmOptions {
            batch_size: 100,
            concurrency: 4,
        }
    }
}

impl WarmOptions {
    /// Keys per loader call.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// Batches in flight at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }
}

/// A typed view of one kind of cached value: `Namespace<u64, User>` holds
/// users under `"{prefix}user:profile:{id}"`.
///
/// Cloning is cheap (an `Arc`); clones share single-flight state.
pub struct Namespace<K: ?Sized, V> {
    pub(crate) inner: Arc<NsInner<V>>,
    /// The loader plain reads load through ([`NamespaceBuilder::loader`]).
    read_through: Option<Loader<K, V>>,
    /// The log of [`Namespace::write_back`] ([`NamespaceBuilder::write_back`]).
    #[cfg(feature = "redis")]
    pub(crate) write_back: Option<Arc<crate::writeback::Target>>,
    _key: PhantomData<fn(&K)>,
}

impl<K: ?Sized, V> Clone for Namespace<K, V> {
    fn clone(&self) -> Self {
        Namespace {
            inner: self.inner.clone(),
            read_through: self.read_through.clone(),
            #[cfg(feature = "redis")]
            write_back: self.write_back.clone(),
            _key: PhantomData,
        }
    }
}

impl<K: ?Sized, V> std::fmt::Debug for Namespace<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.inner.name)
            .field("strategy", &self.inner.strategy)
            .field("ttl", &self.inner.ttl)
            .field("read_through", &self.read_through.is_some())
            .finish_non_exhaustive()
    }
}

impl<K, V> Namespace<K, V>
where
    K: Display + ?Sized,
    V: Clone + Send + Sync + 'static,
{
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The invalidation strategy.
    pub fn strategy(&self) -> Strategy {
        self.inner.strategy
    }

    /// The full store key of `key`: `{prefix}{namespace}:{key}`, hashed when too long.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for an empty key or one with control characters or whitespace.
    pub fn store_key(&self, key: &K) -> Result<String> {
        self.inner.full_key(key)
    }

    /// Returns the cached value of `key`, or runs `loader`, caches what it
    /// returns and returns that.
    ///
    /// A store that fails or times out is never the caller's problem: the
    /// call goes to the loader, and the failure is counted.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// use aside::Aside;
    /// let cache = Aside::builder().build();
    /// let names = cache.namespace::<u64, String>("name").build()?;
    /// let name = names
    ///     .get_or_load(&7, || async { Ok::<_, std::io::Error>(Some("Ada".to_string())) })
    ///     .await?;
    /// assert_eq!(name.as_deref(), Some("Ada"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for a bad key; [`ErrorKind::Loader`] when the
    /// loader fails (the loader's error is reachable with [`Error::loader_error`]).
    ///
    /// # Concurrent calls
    /// Concurrent calls for the same key in one process run `loader` once;
    /// the others wait for its result (or its error) and are woken when it
    /// lands. With [`Strategy::Lease`], processes sharing the store also load
    /// once in total: the others wait for the fill, up to the lease-wait
    /// bound, then load themselves.
    ///
    /// The loader runs at most once per call and key in the common case:
    /// when an invalidation revokes the lease while it loads, the fill is
    /// refused (what it read may predate the write) but the value is still
    /// returned to this call, whose read began before the load. Only
    /// waiters whose read began after that load began, which could
    /// otherwise see a value older than an invalidation they observed,
    /// wait for one new load between them.
    pub async fn get_or_load<F, Fut, E>(&self, key: &K, loader: F) -> Result<Option<V>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        Ok(self.traced_fetch("get_or_load", key, loader).await?.value)
    }

    /// As [`Namespace::get_or_load`], and also says where the value came from.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// let names = aside::Aside::builder().build().namespace::<u64, String>("name").build()?;
    /// use aside::Source;
    /// let load = || async { Ok::<_, std::io::Error>(Some("Ada".to_string())) };
    /// assert_eq!(names.fetch(&7, load).await?.source, Source::Loaded);
    /// let again = names.fetch(&7, load).await?;
    /// assert_eq!((again.value.as_deref(), again.source), (Some("Ada"), Source::Hit));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Namespace::get_or_load`].
    ///
    /// # Concurrent calls
    /// As [`Namespace::get_or_load`]; coalesced callers see [`Source::Coalesced`].
    pub async fn fetch<F, Fut, E>(&self, key: &K, loader: F) -> Result<Fetched<V>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.traced_fetch("fetch", key, loader).await
    }

    /// As [`Namespace::fetch`], for a loader that owns what it uses (a
    /// `'static` future), which lets `aside` finish work in the background:
    /// an early refresh is spawned and every caller, the one that drew it
    /// included, gets the current value at once; and with a
    /// [`NamespaceBuilder::soft_load_timeout`], a slow load of an expired
    /// value answers with that value while the load completes and fills the
    /// cache. Needs a Tokio runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// let names = aside::Aside::builder().build().namespace::<u64, String>("name").build()?;
    /// use std::sync::Arc;
    /// let db = Arc::new(String::from("Ada")); // what the loader owns: a pool, a client
    /// let fetched = names
    ///     .fetch_owned(&7, move || {
    ///         let db = db.clone();
    ///         async move { Ok::<_, std::io::Error>(Some(db.to_string())) }
    ///     })
    ///     .await?;
    /// assert_eq!(fetched.value.as_deref(), Some("Ada"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Namespace::get_or_load`].
    ///
    /// # Concurrent calls
    /// As [`Namespace::get_or_load`]; a background refresh is single-flight
    /// in the process and leased across processes.
    pub async fn fetch_owned<F, Fut, E>(&self, key: &K, loader: F) -> Result<Fetched<V>>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let span = self.span("fetch_owned", Some(key));
        let result = telemetry::in_span(&span, NsInner::fetch_owned_key(&self.inner, key, loader)).await;
        telemetry::record_fetched(&span, &result);
        result
    }

    /// As [`Namespace::fetch`], with per-call [`FetchOptions`]: skip the
    /// cache entirely, or force a reload that replaces the cached value.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// let names = aside::Aside::builder().build().namespace::<u64, String>("name").build()?;
    /// use aside::{FetchOptions, Source};
    /// names.set(&7, &"Ada".to_string()).await?;
    /// let renamed = || async { Ok::<_, std::io::Error>(Some("Grace".to_string())) };
    /// let fresh = names.fetch_with(&7, FetchOptions::force_refresh(), renamed).await?;
    /// assert_eq!(fresh.source, Source::Loaded);
    /// assert_eq!(names.get(&7).await?.as_deref(), Some("Grace"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Namespace::get_or_load`].
    ///
    /// # Concurrent calls
    /// A forced refresh is fenced like any fill: with [`Strategy::Lease`] it
    /// takes a refresh lease; if another caller holds the key's lease, it
    /// gets that caller's result instead of loading too.
    pub async fn fetch_with<F, Fut, E>(&self, key: &K, options: FetchOptions, loader: F) -> Result<Fetched<V>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let span = self.span("fetch_with", Some(key));
        let result = telemetry::in_span(&span, async {
            let full = self.store_key(key)?;
            if options.skip_cache {
                return self.inner.fetch_uncached(loader).await;
            }
            if options.force_refresh {
                return self.inner.fetch_refreshed(&full, loader).await;
            }
            self.inner.fetch_key(key, loader).await
        })
        .await;
        telemetry::record_fetched(&span, &result);
        result
    }

    /// The span of operation `op` (on `key`, if one): see [`crate::telemetry`].
    fn span(&self, op: &'static str, key: Option<&K>) -> tracing::Span {
        telemetry::op_span(op, &self.inner.name, self.inner.strategy, || {
            key.and_then(|k| self.inner.full_key(k).ok())
        })
    }

    /// A read of `key` in the span of `op`, its outcome recorded.
    async fn traced_fetch<F, Fut, E>(&self, op: &'static str, key: &K, loader: F) -> Result<Fetched<V>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        // A hit of the L1, or of a store of this process that keeps decoded
        // values, answers before the read's future is built: moving that
        // future (kilobytes of state) into `instrument` was most of a hit's
        // cost (`scripts/profile-hits`: `l1_profile` and `hit_profile`
        // under callgrind). With no subscriber for the spans, a read makes
        // none: creating and dropping even an empty one, and recording its
        // outcome, cost another ~10% of such a hit. With one, the span is
        // made first, so that its life covers the lookup.
        let span = telemetry::ops_traced().then(|| self.span(op, Some(key)));
        let fast = match self.inner.l1_hit_for(key) {
            Ok(None) => self.inner.local_hit_for(key),
            l1 => l1,
        };
        let result = match fast {
            Ok(Some(hit)) => Ok(hit),
            Err(e) => Err(e),
            Ok(None) => telemetry::in_span_if(span.as_ref(), self.inner.fetch_key_below_l1(key, loader)).await,
        };
        if let Some(span) = &span {
            telemetry::record_fetched(span, &result);
        }
        result
    }

    /// `operation` in the span of `op`, an error recorded.
    async fn traced<T>(
        &self,
        op: &'static str,
        key: Option<&K>,
        operation: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let span = self.span(op, key);
        let result = telemetry::in_span(&span, operation).await;
        telemetry::record_result(&span, &result);
        result
    }

    /// Warms the cache with `keys` (after a deploy or a flush): batches of
    /// `options.batch_size` through [`Namespace::get_many_or_load`], at most
    /// `options.concurrency` batches at a time, calling `progress` with the
    /// number of keys done after each batch. Returns how many keys were found.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// let names = aside::Aside::builder().build().namespace::<u64, String>("name").build()?;
    /// use std::collections::HashMap;
    /// use aside::WarmOptions;
    /// let ids: Vec<u64> = (1..=250).collect();
    /// let one_query = |batch: Vec<u64>| async move {
    ///     // SELECT ... WHERE id IN (...), one per batch of 100
    ///     Ok::<_, std::io::Error>(batch.into_iter().map(|id| (id, format!("user {id}"))).collect::<HashMap<_, _>>())
    /// };
    /// let found = names
    ///     .warm(&ids, WarmOptions::default().batch_size(100), one_query, |done| println!("{done} keys warmed"))
    ///     .await?;
    /// assert_eq!(found, 250);
    /// assert_eq!(names.get(&42).await?.as_deref(), Some("user 42"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The first error of a batch; batches already done stay cached.
    ///
    /// # Concurrent calls
    /// Each batch as in [`Namespace::get_many_or_load`]: keys another caller
    /// is loading are awaited, not loaded again.
    pub async fn warm<F, Fut, E>(
        &self,
        keys: &[K],
        options: WarmOptions,
        loader: F,
        progress: impl Fn(usize),
    ) -> Result<usize>
    where
        K: std::hash::Hash + Eq + Clone + Sized,
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = std::result::Result<std::collections::HashMap<K, V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.traced("warm", None, self.warm_batches(keys, options, loader, progress))
            .await
    }

    async fn warm_batches<F, Fut, E>(
        &self,
        keys: &[K],
        options: WarmOptions,
        loader: F,
        progress: impl Fn(usize),
    ) -> Result<usize>
    where
        K: std::hash::Hash + Eq + Clone + Sized,
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = std::result::Result<std::collections::HashMap<K, V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        use futures::stream::{self, StreamExt};
        let mut batches = stream::iter(keys.chunks(options.batch_size.max(1)))
            .map(|chunk| async { (chunk.len(), self.get_many_or_load(chunk, &loader).await) })
            .buffer_unordered(options.concurrency.max(1));
        let (mut done, mut found) = (0, 0);
        while let Some((len, result)) = batches.next().await {
            found += result?.len();
            done += len;
            progress(done);
        }
        Ok(found)
    }

    /// Returns the values of `keys`: cached ones from one store round trip,
    /// missing ones from ONE call of `loader`, which gets the missing keys
    /// and returns what it found; the found values are filled in one more
    /// round trip. A key the loader does not return is absent from the result
    /// (and not cached).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// use std::collections::HashMap;
    /// let cache = aside::Aside::builder().build();
    /// let names = cache.namespace::<u64, String>("name").build()?;
    /// let found = names
    ///     .get_many_or_load(&[1, 2, 3], |missing| async move {
    ///         // One query for all of them: SELECT ... WHERE id IN (...)
    ///         Ok::<_, std::io::Error>(missing.into_iter().filter(|id| *id != 2).map(|id| (id, format!("user {id}"))).collect::<HashMap<_, _>>())
    ///     })
    ///     .await?;
    /// assert_eq!(found.len(), 2);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for a bad key; [`ErrorKind::Loader`] when the loader fails.
    ///
    /// # Concurrent calls
    /// Keys another caller in this process is already loading are awaited,
    /// not loaded again; with [`Strategy::Lease`] each key takes its own
    /// lease and fill, as in [`Namespace::get_or_load`]. The loader may be
    /// called again for keys whose awaited load settled before this call
    /// began (they are looked up again first).
    pub async fn get_many_or_load<F, Fut, E>(&self, keys: &[K], loader: F) -> Result<std::collections::HashMap<K, V>>
    where
        K: std::hash::Hash + Eq + Clone + Sized,
        F: FnMut(Vec<K>) -> Fut,
        Fut: Future<Output = std::result::Result<std::collections::HashMap<K, V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.traced("get_many_or_load", None, self.inner.fetch_many_keys(keys, loader))
            .await
    }

    /// Reads `key`: through the namespace's registered loader when it has
    /// one ([`NamespaceBuilder::loader`], read-through), else from the cache
    /// only, as [`Namespace::peek`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// let cache = aside::Aside::builder().build();
    /// // Read-through: the loader is registered once, and reads load through it.
    /// let names = cache
    ///     .namespace::<u64, String>("name")
    ///     .loader(|id: &u64| {
    ///         let id = *id;
    ///         async move { Ok::<_, std::io::Error>((id == 7).then(|| "Ada".to_string())) }
    ///     })
    ///     .build()?;
    /// assert_eq!(names.get(&7).await?.as_deref(), Some("Ada"));
    /// assert_eq!(names.get(&8).await?, None); // loaded: there is no row 8
    ///
    /// // Without a loader, `get` reads the cache only.
    /// let plain = cache.namespace::<u64, String>("plain").build()?;
    /// assert_eq!(plain.get(&7).await?, None); // a miss, and nothing is loaded
    /// plain.set(&7, &"Ada".to_string()).await?;
    /// assert_eq!(plain.get(&7).await?.as_deref(), Some("Ada"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for a bad key. With a registered loader, as
    /// [`Namespace::get_or_load`]. Without one, a store failure reads as
    /// `None` (and is counted).
    ///
    /// # Concurrent calls
    /// With a registered loader, as [`Namespace::get_or_load`]: one load per
    /// key per process at a time, and with leases one across processes.
    pub async fn get(&self, key: &K) -> Result<Option<V>> {
        match &self.read_through {
            Some(loader) => Ok(self.traced_fetch("get", key, || loader(key)).await?.value),
            None => self.traced_peek("get", key).await,
        }
    }

    /// Reads `key` through the namespace's registered loader, and says
    /// where the value came from: [`Namespace::fetch`] with that loader.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// use aside::Source;
    /// let names = aside::Aside::builder()
    ///     .build()
    ///     .namespace::<u64, String>("name")
    ///     .loader(|_: &u64| async { Ok::<_, std::io::Error>(Some("Ada".to_string())) })
    ///     .build()?;
    /// assert_eq!(names.read(&7).await?.source, Source::Loaded);
    /// assert_eq!(names.read(&7).await?.source, Source::Hit);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when the namespace has no registered loader;
    /// otherwise as [`Namespace::get_or_load`].
    ///
    /// # Concurrent calls
    /// As [`Namespace::fetch`].
    pub async fn read(&self, key: &K) -> Result<Fetched<V>> {
        let Some(loader) = &self.read_through else {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "namespace {} has no registered loader: register one with NamespaceBuilder::loader, or pass one to fetch",
                    self.inner.name
                ),
            ));
        };
        self.traced_fetch("read", key, || loader(key)).await
    }

    /// Returns the cached value of `key` without loading, whether or not a
    /// loader is registered. A store failure reads as `None` (and is counted).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// let names = aside::Aside::builder().build().namespace::<u64, String>("name").build()?;
    /// assert_eq!(names.peek(&7).await?, None); // a miss, and nothing is loaded
    /// names.set(&7, &"Ada".to_string()).await?;
    /// assert_eq!(names.peek(&7).await?.as_deref(), Some("Ada"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for a bad key.
    pub async fn peek(&self, key: &K) -> Result<Option<V>> {
        self.traced_peek("peek", key).await
    }

    /// A cache-only read in the span of `op`: a hit or a miss.
    async fn traced_peek(&self, op: &'static str, key: &K) -> Result<Option<V>> {
        let span = self.span(op, Some(key));
        let result = telemetry::in_span(&span, self.inner.get_key(key)).await;
        if !span.is_disabled() {
            let outcome = match &result {
                Ok(Some(_)) => "hit",
                Ok(None) => "miss",
                Err(_) => "error",
            };
            span.record("outcome", outcome);
        }
        result
    }

    /// Writes `value` to the cache (write-through), revoking any lease in
    /// flight so an older load cannot overwrite it.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// let names = aside::Aside::builder().build().namespace::<u64, String>("name").build()?;
    /// // After writing the row to the database, with the value written:
    /// names.set(&7, &"Ada".to_string()).await?;
    /// let cached = names.get_or_load(&7, || async { Ok::<_, std::io::Error>(None) }).await?;
    /// assert_eq!(cached.as_deref(), Some("Ada")); // the loader was not needed
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Store`] or [`ErrorKind::Timeout`] when the store did not
    /// take the write; an invalidation of the key is then queued for replay,
    /// so the old cached value cannot outlive the outage. [`ErrorKind::Codec`]
    /// when the value cannot be encoded or exceeds the size limit.
    ///
    /// # Concurrent calls
    /// With [`Strategy::Lease`], a load of the key in flight in any process
    /// loses its lease, so its
    /// older value cannot overwrite this one. Of two concurrent `set`s of one
    /// key the last store write wins, which may not be the last database
    /// write: serialise the writers of a key, or `invalidate` instead.
    pub async fn set(&self, key: &K, value: &V) -> Result<()> {
        self.traced("set", Some(key), async {
            let full = self.store_key(key)?;
            self.inner.write(&full, value).await
        })
        .await
    }

    /// Writes `value` to the cache after the database write that made it
    /// the row at `version` (write-through, fenced by the caller's version:
    /// a row version, or `updated_at` in a monotonic unit).
    ///
    /// The store keeps the highest version written to the key (longer than
    /// the entry lives) and compares atomically: a write whose version is
    /// not above it is refused ([`WriteThrough::Superseded`]), so of two
    /// writers racing on one key the newer row stays cached whatever order
    /// their cache writes land in, even if the entry was invalidated or
    /// expired in between (on memcached a refused write deletes the entry
    /// instead, so the key may be left uncached: see
    /// [`WriteThrough::Superseded`]). Like [`Namespace::set`], it revokes any lease in
    /// flight, so a load that read the older row cannot fill over it.
    ///
    /// Needs [`Strategy::Lease`] (fills are fenced) and a store with
    /// versioned writes (memory, Redis, memcached): otherwise the key is invalidated
    /// instead ([`WriteThrough::Invalidated`]).
    ///
    /// Every writer of a key must write through with versions: a plain
    /// [`Namespace::set`] or an [`Namespace::invalidate`] does not know the
    /// version, so a versioned write of an older row that lands after it
    /// would still be above the mark, and be cached. Serialise such mixed
    /// writers of one key (the row lock held across the database write and
    /// the cache operation), as the history checker does.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// use aside::WriteThrough;
    /// let names = aside::Aside::builder().build().namespace::<u64, String>("name").build()?;
    /// // UPDATE users SET name = 'Grace', version = 2 WHERE id = 7, then:
    /// assert_eq!(names.write_through(&7, &"Grace".to_string(), 2).await?, WriteThrough::Written);
    /// // A writer of version 1 whose cache write arrives late changes nothing.
    /// assert_eq!(names.write_through(&7, &"Ada".to_string(), 1).await?, WriteThrough::Superseded);
    /// assert_eq!(names.peek(&7).await?.as_deref(), Some("Grace"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Store`] or [`ErrorKind::Timeout`] when the store did not
    /// answer; an invalidation of the key is then queued for replay, as for
    /// `set`. [`ErrorKind::Codec`] when the value cannot be encoded or
    /// exceeds the size limit (the key is invalidated).
    ///
    /// # Concurrent calls
    /// Writers of one key need no lock of their own: the store orders them
    /// by version. Reads racing with the write see the old row or the new
    /// one, never a row older than the last write that returned.
    pub async fn write_through(&self, key: &K, value: &V, version: u64) -> Result<WriteThrough> {
        self.traced("write_through", Some(key), async {
            let full = self.store_key(key)?;
            self.inner.write_versioned(&full, value, version).await
        })
        .await
    }

    /// Runs `write`, the database write of `key`, under a fence on the key,
    /// so that reads and updates of the key through `aside` are
    /// linearizable: once `update` returns, no read anywhere returns the old
    /// row, and no read during it returns the old row after another read
    /// returned the new one. `write` returns the row it wrote (`None` for a
    /// deleted row), which is cached if nothing broke the fence.
    ///
    /// While the fence holds (the whole write, its lease renewed), readers
    /// of the key in every process wait for it to end, or past their lease
    /// wait read the database without filling; no lease taken before it can
    /// fill. A crashed writer's fence runs out after the lease TTL. Needs
    /// [`Strategy::Lease`]. Plain [`Namespace::invalidate`] keeps its weaker
    /// promise (a read after it returns sees the new row), and costs no
    /// wait. Linearizability across processes holds for namespaces without
    /// an L1 (another process's L1 hears of the update over the bus, later).
    /// The L1s of this `Aside` install nothing of the key while it runs.
    ///
    /// The fence lasts as long as the update holds it. A write still
    /// running past the renewal bound (the load timeout, or 60 s without
    /// one), an update cancelled while its database write goes on to
    /// commit, or a writer that crashes mid-write let the fence go before
    /// the write lands: readers may then cache the old row until the next
    /// write or invalidation of the key, as with plain cache-aside.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// let names = aside::Aside::builder().build().namespace::<u64, String>("name").build()?;
    /// let row = names
    ///     .update(&7, || async {
    ///         // UPDATE users SET name = 'Grace' WHERE id = 7 RETURNING name
    ///         Ok::<_, std::io::Error>(Some("Grace".to_string()))
    ///     })
    ///     .await?;
    /// assert_eq!(row.as_deref(), Some("Grace"));
    /// assert_eq!(names.peek(&7).await?.as_deref(), Some("Grace")); // cached by the update
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// - [`ErrorKind::Config`] for a namespace without the lease strategy.
    /// - [`ErrorKind::Store`] or [`ErrorKind::Timeout`] before `write` ran,
    ///   when the fence could not be taken: nothing was written.
    /// - [`ErrorKind::Write`] when `write` failed (its error is the source);
    ///   the key is invalidated all the same.
    /// - [`ErrorKind::Store`] or [`ErrorKind::Timeout`] after `write`
    ///   succeeded, when the end of the fence could not reach the store: the
    ///   invalidation is queued and replayed, and the fence runs out by its
    ///   TTL meanwhile.
    ///
    /// # Concurrent calls
    /// Updates of one key take turns: an update that finds another's live
    /// fence waits for it to end (polling, for at most that update's
    /// renewal bound and one lease TTL, then [`ErrorKind::Timeout`] with
    /// nothing written); it never revokes it. The database orders the
    /// writes themselves.
    pub async fn update<F, Fut, E>(&self, key: &K, write: F) -> Result<Option<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.traced("update", Some(key), async {
            let full = self.store_key(key)?;
            self.inner.update_fenced(&full, write).await
        })
        .await
    }

    /// Invalidates `key` after a database write, with the namespace's strategy.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// let names = aside::Aside::builder().build().namespace::<u64, String>("name").build()?;
    /// names.set(&7, &"Ada".to_string()).await?;
    /// // UPDATE users SET name = 'Grace' WHERE id = 7, then:
    /// names.invalidate(&7).await?;
    /// assert_eq!(names.get(&7).await?, None); // the next read loads the new row
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Store`] or [`ErrorKind::Timeout`] when the store could not
    /// be reached. The invalidation is then queued in this process's memory
    /// and replayed (and published on the bus) when the store answers again,
    /// for as long as the process lives; until then this process's reads of
    /// the key bypass the cache. [`crate::Aside::shutdown`] drains the queue
    /// within a bound and reports what it had to drop. A crash (or an exit
    /// without `shutdown`) loses what is queued: the entry then stays in the
    /// store, served to every process, until its TTL runs out.
    ///
    /// # Concurrent calls
    /// With [`Strategy::Lease`], a load of the key in flight in any process
    /// loses its lease: its fill is refused, so what it read before the
    /// database write cannot be cached; readers that began after this call
    /// wait for one new load between them.
    pub async fn invalidate(&self, key: &K) -> Result<()> {
        self.traced("invalidate", Some(key), async {
            let full = self.store_key(key)?;
            self.inner.invalidate_all(&[full]).await
        })
        .await
    }

    /// Invalidates every key, attempting all of them even if some fail.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// let names = aside::Aside::builder().build().namespace::<u64, String>("name").build()?;
    /// names.set(&1, &"Ada".to_string()).await?;
    /// names.set(&2, &"Grace".to_string()).await?;
    /// names.invalidate_many(&[1, 2, 3]).await?; // one message on the bus for all of them
    /// assert_eq!((names.get(&1).await?, names.get(&2).await?), (None, None));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The first error met; as [`Namespace::invalidate`].
    ///
    /// # Concurrent calls
    /// As [`Namespace::invalidate`], for each key.
    pub async fn invalidate_many<'a, I>(&self, keys: I) -> Result<()>
    where
        I: IntoIterator<Item = &'a K>,
        K: 'a,
    {
        let fulls = keys
            .into_iter()
            .map(|k| self.store_key(k))
            .collect::<Result<Vec<_>>>()?;
        self.traced("invalidate_many", None, self.inner.invalidate_all(&fulls))
            .await
    }
}

/// Configures a [`Namespace`]; from [`crate::Aside::namespace`].
#[must_use = "call .build() to get the namespace"]
pub struct NamespaceBuilder<K: ?Sized, V> {
    /// The settings, `strategy` and `lease_wait` aside: those are resolved
    /// by `build()` (a raw namespace defaults to `Delete`; the wait to the
    /// lease TTL).
    settings: Settings<V>,
    strategy: Option<Strategy>,
    lease_wait: Option<Duration>,
    read_through: Option<Loader<K, V>>,
    /// The log of [`Namespace::write_back`].
    #[cfg(feature = "redis")]
    pub(crate) write_back_log: Option<crate::writeback::WriteBackLog>,
    _key: PhantomData<fn(&K)>,
}

/// The longest TTL, lease or timeout a namespace accepts: ten years.
/// Past it, time arithmetic (expiry stamps, version counters' TTLs) could
/// overflow; `build()` refuses such values rather than panic on a fill.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The shortest lease TTL a namespace accepts ([`NamespaceBuilder::lease_ttl`]).
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(30);

/// Default entry TTL ([`NamespaceBuilder::ttl`]): the article's 10 minutes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Default lease TTL ([`NamespaceBuilder::lease_ttl`]): how long a crashed
/// loader can block a key.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
/// Default bound on a cached value's encoded size
/// ([`NamespaceBuilder::max_value_bytes`]): 1 MiB, memcached's item limit.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

impl<K, V> NamespaceBuilder<K, V>
where
    K: Display + ?Sized,
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    pub(crate) fn new(core: Arc<Core>, name: &str) -> Self {
        NamespaceBuilder {
            settings: Settings {
                core,
                name: name.to_owned(),
                ttl: DEFAULT_TTL,
                jitter: 0.0,
                codec: Arc::new(Json),
                raw: false,
                strategy: Strategy::default(),
                lease_ttl: DEFAULT_LEASE_TTL,
                lease_wait: DEFAULT_LEASE_TTL,
                keep_stale: None,
                max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
                stampede: Stampede::default(),
                negative_ttl: None,
                early_refresh: None,
                fail_safe: None,
                load_timeout: None,
                soft_load_timeout: None,
                l1_config: None,
            },
            strategy: None,
            lease_wait: None,
            read_through: None,
            #[cfg(feature = "redis")]
            write_back_log: None,
            _key: PhantomData,
        }
    }
}

impl<K: Display + ?Sized, V: Clone + Send + Sync + 'static> NamespaceBuilder<K, V> {
    /// Refuses durations and factors the engine's time arithmetic cannot
    /// take: each is named in the error.
    fn check_times(&self) -> Result<()> {
        let config = |why: String| Err(Error::new(ErrorKind::Config, why));
        let positive = [
            ("ttl", Some(self.settings.ttl)),
            ("negative_ttl", self.settings.negative_ttl),
        ];
        for (name, value) in positive {
            if value.is_some_and(|d| d.is_zero()) {
                return config(format!("{name} must be greater than zero"));
            }
        }
        if self.settings.lease_ttl < MIN_LEASE_TTL {
            // Renewed every third of its TTL, and no more often than every
            // 10 ms: a shorter lease would run out before its first renewal.
            return config(format!(
                "lease_ttl of {:?} is under the {MIN_LEASE_TTL:?} minimum",
                self.settings.lease_ttl
            ));
        }
        let bounded = [
            ("ttl", Some(self.settings.ttl)),
            ("lease_ttl", Some(self.settings.lease_ttl)),
            ("lease_wait", self.lease_wait),
            ("negative_ttl", self.settings.negative_ttl),
            ("serve_stale_while_loading", self.settings.keep_stale),
            ("fail_safe max_stale", self.settings.fail_safe.map(|f| f.max_stale)),
            ("fail_safe throttle", self.settings.fail_safe.map(|f| f.throttle)),
            ("load_timeout", self.settings.load_timeout),
            ("soft_load_timeout", self.settings.soft_load_timeout),
            ("l1 ttl", self.settings.l1_config.map(|l| l.ttl)),
        ];
        for (name, value) in bounded {
            if let Some(d) = value
                && d > MAX_DURATION
            {
                return config(format!("{name} of {d:?} is over the {MAX_DURATION:?} limit"));
            }
        }
        if !(0.0..1.0).contains(&self.settings.jitter) {
            return config(format!("jitter must be in [0, 1), not {}", self.settings.jitter));
        }
        match self.settings.early_refresh {
            Some(EarlyRefresh::XFetch { beta }) if !(beta.is_finite() && beta > 0.0) => {
                config(format!("XFetch beta must be a finite number above 0, not {beta}"))
            }
            Some(EarlyRefresh::AfterFraction(f)) if !(0.0..1.0).contains(&f) => {
                config(format!("early refresh fraction must be in [0, 1), not {f}"))
            }
            _ => Ok(()),
        }
    }

    /// Entry TTL (default [`DEFAULT_TTL`], 600 s; at most [`MAX_DURATION`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.settings.ttl = ttl;
        self
    }

    /// Spreads TTLs over `ttl * (1 ± jitter)` (default 0; 0.1 is common).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.settings.jitter = jitter;
        self
    }

    /// The codec (default [`Json`]).
    pub fn codec(mut self, codec: impl Codec<V>) -> Self {
        self.settings.codec = Arc::new(codec);
        self
    }

    /// Stores the codec's bytes as they are, without the envelope, so the
    /// cache can be shared with programs that write plain values (the
    /// article's `SETEX user:profile:1 600 '{"id":1,...}'`). Leases need the
    /// entry layout, so a raw namespace uses [`Strategy::Delete`] unless
    /// another non-lease strategy is chosen.
    pub fn raw(mut self) -> Self {
        self.settings.raw = true;
        self
    }

    /// The invalidation strategy (default [`Strategy::Lease`]).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Lease TTL (default [`DEFAULT_LEASE_TTL`], 3 s; at least
    /// [`MIN_LEASE_TTL`]): how long the
    /// lease of a crashed process blocks a key. A running loader's lease is
    /// renewed every third of it for as long as the loader may run (its
    /// load timeout, or 60 s without one; never less than the lease wait),
    /// so a slow query loads once and is cached, and a hung loader blocks
    /// the key in the store for at most that plus one lease TTL.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.settings.lease_ttl = ttl;
        self
    }

    /// How long a caller waits for another process's load before loading
    /// itself (default: the lease TTL).
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.lease_wait = Some(wait);
        self
    }

    /// Keep an invalidated value for `for_how_long`, flagged stale, and serve
    /// it to callers that would otherwise wait for another's load.
    pub fn serve_stale_while_loading(mut self, for_how_long: Duration) -> Self {
        self.settings.keep_stale = Some(for_how_long);
        self
    }

    /// Values whose encoded size exceeds this are returned but not cached
    /// (default [`DEFAULT_MAX_VALUE_BYTES`], 1 MiB).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_value_bytes = bytes;
        self
    }

    /// Stampede protection (default [`Stampede::Coalesce`]).
    pub fn stampede(mut self, stampede: Stampede) -> Self {
        self.settings.stampede = stampede;
        self
    }

    /// Caches "not found" (a loader's `None`) as a tombstone for `ttl`, so a
    /// key that does not exist stops reaching the database (cache
    /// penetration). Off by default.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.settings.negative_ttl = Some(ttl);
        self
    }

    /// Reloads a value before it expires ([`EarlyRefresh::XFetch`] or a
    /// fixed fraction of the TTL), so a hot key does not stampede when it
    /// expires. The caller that draws the refresh loads (under single-flight
    /// and a refresh lease, so once in total); every other caller keeps
    /// getting the current value at once. Off by default.
    pub fn early_refresh(mut self, policy: EarlyRefresh) -> Self {
        self.settings.early_refresh = Some(policy);
        self
    }

    /// Fail-safe (stale-if-error): entries are kept `max_stale` past their
    /// TTL; when the loader then fails or times out, the expired value is
    /// served instead of the error ([`Source::Stale`], counted), and the
    /// loader is not retried for `throttle`. Off by default.
    pub fn fail_safe(mut self, max_stale: Duration, throttle: Duration) -> Self {
        self.settings.fail_safe = Some(FailSafe { max_stale, throttle });
        self
    }

    /// A loader slower than this fails with [`ErrorKind::Timeout`] (or,
    /// with fail-safe, serves the expired value). Off by default.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.settings.load_timeout = Some(timeout);
        self
    }

    /// With [`Namespace::fetch_owned`] and fail-safe: when a load of an
    /// expired value takes longer than this, the caller gets the expired
    /// value ([`Source::Stale`]) and the load goes on in the background to
    /// fill the cache. Off by default.
    pub fn soft_load_timeout(mut self, timeout: Duration) -> Self {
        self.settings.soft_load_timeout = Some(timeout);
        self
    }

    /// An in-process first tier (L1, moka) of up to `max_entries` values
    /// kept at most `ttl` (never longer than the namespace TTL). L1 hits
    /// never touch the network. Invalidations made through this namespace
    /// evict locally; those of other processes arrive over an invalidation
    /// bus, and the L1 TTL bounds staleness if all else fails. Off by default.
    pub fn l1(mut self, max_entries: u64, ttl: Duration) -> Self {
        self.settings.l1_config = Some(crate::engine::tier::L1Config { max_entries, ttl });
        self
    }

    /// Registers the namespace's loader (read-through): [`Namespace::get`]
    /// and [`Namespace::read`] then load a missing key through it, with
    /// everything [`Namespace::get_or_load`] has (single-flight, leases, early
    /// refresh, fail-safe, the L1). The loader takes the key and returns the
    /// row, or `None` when there is none. Calls that pass a loader of their
    /// own (`get_or_load`, `fetch`, ...) still use theirs.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> aside::Result<()> {
    /// #[derive(Debug)]
    /// struct DbDown;
    /// impl std::fmt::Display for DbDown {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         f.write_str("database down")
    ///     }
    /// }
    /// impl std::error::Error for DbDown {}
    ///
    /// let names = aside::Aside::builder()
    ///     .build()
    ///     .namespace::<u64, String>("name")
    ///     .loader(|_: &u64| async { Err::<Option<String>, _>(DbDown) })
    ///     .build()?;
    /// let err = names.get(&7).await.unwrap_err();
    /// assert_eq!(err.kind(), aside::ErrorKind::Loader);
    /// assert!(err.loader_error::<DbDown>().is_some()); // the loader's own error
    /// # Ok(()) }
    /// ```
    pub fn loader<F, Fut, E>(mut self, loader: F) -> Self
    where
        F: Fn(&K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.read_through = Some(read_through::erase(loader));
        self
    }

    /// Builds the namespace.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for a name with whitespace, control characters
    /// or braces, a raw namespace with the lease strategy, a zero TTL or
    /// lease TTL, a duration over [`MAX_DURATION`], a jitter outside
    /// `[0, 1)` (NaN included), an early-refresh parameter out of range, or
    /// a strategy other than [`Strategy::Lease`] on a store without plain
    /// values ([`Store::supports_plain_values`](crate::Store::supports_plain_values)).
    pub fn build(self) -> Result<Namespace<K, V>> {
        key::check_namespace(&self.settings.name)?;
        key::check_namespace(&self.settings.core.prefix)?;
        self.check_times()?;
        let strategy = match (self.settings.raw, self.strategy) {
            (true, Some(Strategy::Lease)) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "a raw namespace cannot use leases (they need aside's entry layout): choose delete, double-delete or versioned",
                ));
            }
            (true, None) => Strategy::Delete,
            (_, chosen) => chosen.unwrap_or_default(),
        };
        let needs_plain_values = match strategy {
            Strategy::Lease => None,
            other => Some(format!("the {other} strategy")),
        };
        if let Some(user) = needs_plain_values
            && !self.settings.core.store.supports_plain_values()
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{user} needs plain values (get, set, add, incr), which the {} store does not implement: choose Strategy::Lease, or a store whose supports_plain_values() is true",
                    self.settings.core.store.name()
                ),
            ));
        }
        if strategy != Strategy::Lease && self.settings.keep_stale.is_some() {
            return Err(Error::new(ErrorKind::Config, "stale serving needs the lease strategy"));
        }
        if self.settings.raw
            && (self.settings.negative_ttl.is_some()
                || self.settings.early_refresh.is_some()
                || self.settings.fail_safe.is_some())
        {
            return Err(Error::new(
                ErrorKind::Config,
                "negative caching, early refresh and fail-safe need the envelope: not available in raw mode",
            ));
        }
        let mut settings = self.settings;
        settings.strategy = strategy;
        settings.lease_wait = self.lease_wait.unwrap_or(settings.lease_ttl);
        #[cfg(feature = "redis")]
        let write_back = self.write_back_log.map(|log| {
            Arc::new(crate::writeback::Target::new(
                log,
                &settings.core.prefix,
                &settings.name,
            ))
        });
        let inner = NsInner::new(settings);
        Ok(Namespace {
            inner,
            read_through: self.read_through,
            #[cfg(feature = "redis")]
            write_back,
            _key: PhantomData,
        })
    }
}

#[cfg(test)]
mod future_size {
    //! A hit moves its read's future into the caller's frames (and into
    //! `Instrumented` when a subscriber wants the span): every byte of it is
    //! copied, several times per hit. The miss path, the L1's fencing and
    //! the error paths are boxed so that this future holds only what a hit
    //! needs; inline, `get_or_load`'s future was over 1,800 bytes and its
    //! copies a quarter of what aside added to a Redis hit
    //! (`scripts/profile-hits redis`, memcpy). The bounds leave room for a
    //! compiler's layout, not for the miss path coming back inline.

    use std::mem::size_of_val;

    #[test]
    fn a_reads_future_holds_only_what_a_hit_needs() {
        let aside = crate::Aside::builder().build();
        let ns = aside.namespace::<u64, String>("sizes").build().expect("namespace");
        let loader = || async { Ok::<_, std::io::Error>(None) };
        let full = "sizes:1".to_string();
        let sizes = [
            ("get_or_load", size_of_val(&ns.get_or_load(&1, loader)), 800),
            (
                "fetch_key_below_l1",
                size_of_val(&ns.inner.fetch_key_below_l1(&1, loader)),
                640,
            ),
            ("read_cached", size_of_val(&ns.inner.read_cached(&full)), 512),
            ("decode_hit", size_of_val(&ns.inner.decode_hit(&full, b"")), 200),
        ];
        for (future, size, bound) in sizes {
            assert!(
                size <= bound,
                "{future}'s future is {size} bytes (bound {bound}): {sizes:?}"
            );
        }
    }
}
