//! The read path: store, then single-flight, then lease, then loader, then fill.
//!
//! Owns `get`/`fetch` semantics of DESIGN section 4 for every strategy. It
//! reaches the store only through `Core::call_for`, so every store failure
//! here is already counted and fed to the breaker; this module only decides
//! what a failure means (always: a miss).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::envelope::{self, Header};
use crate::error::{Error, Result};
use crate::metrics::Event;
use crate::namespace::{Fetched, NsInner, Shared, Source};
use crate::policy::{Strategy, jittered};
use crate::store::{FillOutcome, LeaseOutcome, LeaseToken};

use super::single_flight::Role;

/// First and largest pause between looks while another process holds the lease.
const LEASE_POLL_FIRST: Duration = Duration::from_millis(2);
const LEASE_POLL_MAX: Duration = Duration::from_millis(50);

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    pub(crate) fn record(&self, event: Event) {
        self.core.record(&self.metrics, event);
    }

    async fn call<T>(&self, fut: impl Future<Output = crate::store::StoreResult<T>>) -> Result<T> {
        self.core.call_for(&self.metrics, fut).await
    }

    pub(crate) fn version_key(full: &str) -> String {
        format!("{full}#ver")
    }

    pub(crate) fn versioned_key(full: &str, version: u64) -> String {
        format!("{full}#v{version}")
    }

    /// TTL of version counters: longer than any data written under them.
    pub(crate) fn version_ttl(&self) -> Duration {
        self.ttl.mul_f64(3.0) + Duration::from_secs(60)
    }

    pub(crate) fn decode(&self, bytes: &[u8]) -> Result<V> {
        if self.raw {
            return self.codec.decode(bytes);
        }
        let (_header, payload) = envelope::open(bytes, self.codec.id())?;
        self.codec.decode(payload)
    }

    /// Encodes for the store; `None` (counted) when over the size limit.
    pub(crate) fn encode(&self, value: &V, load_time: Duration) -> Result<Option<Bytes>> {
        let payload = self.codec.encode(value)?;
        let bytes = if self.raw {
            payload
        } else {
            envelope::seal(&Header::new(self.codec.id(), None, load_time), &payload)
        };
        if bytes.len() > self.max_value_bytes {
            self.record(Event::Oversized);
            tracing::debug!(
                namespace = self.name,
                size = bytes.len(),
                "value over the size limit not cached"
            );
            return Ok(None);
        }
        Ok(Some(Bytes::from(bytes)))
    }

    /// Decodes a hit; corrupt bytes are counted, deleted and read as a miss.
    async fn decode_hit(&self, key: &str, bytes: &[u8]) -> Option<V> {
        match self.decode(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                self.record(Event::DecodeError);
                tracing::warn!(key, error = %e, "undecodable cache entry deleted");
                let _ = self.call(self.core.store.delete(key)).await;
                None
            }
        }
    }

    /// The current value in the store, if any, and the version it was read
    /// under (`Versioned` only). Store failures read as `None`.
    pub(crate) async fn read_cached(&self, full: &str) -> Option<(V, u64)> {
        if self.core.retry.is_pending(full) {
            return None;
        }
        let store = &self.core.store;
        match self.strategy {
            Strategy::Lease => match self.call(store.get_entry(full)).await {
                Ok(Some((bytes, false))) => self.decode_hit(full, &bytes).await.map(|v| (v, 0)),
                _ => None,
            },
            Strategy::Versioned => {
                let version = self.read_version(full).await.ok()?;
                let data_key = Self::versioned_key(full, version);
                let bytes = self.call(store.get(&data_key)).await.ok()??;
                self.decode_hit(&data_key, &bytes).await.map(|v| (v, version))
            }
            _ => {
                let bytes = self.call(store.get(full)).await.ok()??;
                self.decode_hit(full, &bytes).await.map(|v| (v, 0))
            }
        }
    }

    pub(crate) async fn read_version(&self, full: &str) -> Result<u64> {
        let raw = self.call(self.core.store.get(&Self::version_key(full))).await?;
        Ok(raw
            .and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()))
            .unwrap_or(0))
    }

    pub(crate) async fn fetch<F, Fut, E>(&self, full: &str, loader: F) -> Result<Fetched<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if let Some((value, _)) = self.read_cached(full).await {
            self.record(Event::Hit);
            return Ok(Fetched {
                value: Some(value),
                source: Source::Hit,
            });
        }
        self.record(Event::Miss);
        let (shared, role) = self.flight.run(full, || self.load_missing(full, loader)).await;
        let (value, source) = shared?;
        let source = match (role, source) {
            (Role::Waiter, Source::Loaded) => {
                self.record(Event::Coalesced);
                Source::Coalesced
            }
            (_, source) => source,
        };
        Ok(Fetched { value, source })
    }

    /// Runs the loader, timing it; its error becomes an `aside::Error`.
    async fn run_loader<F, Fut, E>(&self, loader: F) -> Result<(Option<V>, Duration)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.record(Event::Load);
        let started = Instant::now();
        match loader().await {
            Ok(value) => Ok((value, started.elapsed())),
            Err(e) => {
                self.record(Event::LoadError);
                Err(Error::loader(e))
            }
        }
    }

    /// The single-flight leader's work for a missing key.
    async fn load_missing<F, Fut, E>(&self, full: &str, loader: F) -> Shared<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if self.core.retry.is_pending(full) {
            // An invalidation of this key has not reached the store: neither
            // trust nor refill it until it has.
            let (value, _) = self.run_loader(loader).await?;
            return Ok((value, Source::Loaded));
        }
        match self.strategy {
            Strategy::Lease => self.load_with_lease(full, loader).await,
            Strategy::Versioned => {
                let version = self.read_version(full).await;
                let (value, took) = self.run_loader(loader).await?;
                if let (Ok(version), Some(v)) = (version, &value) {
                    self.fill_plain(&Self::versioned_key(full, version), v, took).await;
                }
                Ok((value, Source::Loaded))
            }
            _ => {
                let (value, took) = self.run_loader(loader).await?;
                if let Some(v) = &value {
                    self.fill_plain(full, v, took).await;
                }
                Ok((value, Source::Loaded))
            }
        }
    }

    /// Unconditional fill of the non-lease strategies; failures are counted only.
    async fn fill_plain(&self, key: &str, value: &V, took: Duration) {
        if let Ok(Some(bytes)) = self.encode(value, took) {
            let _ = self
                .call(self.core.store.set(key, bytes, jittered(self.ttl, self.jitter)))
                .await;
        }
    }

    async fn load_with_lease<F, Fut, E>(&self, full: &str, loader: F) -> Shared<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let store = &self.core.store;
        let token = LeaseToken::random();
        let started = Instant::now();
        let mut pause = LEASE_POLL_FIRST;
        loop {
            let outcome = self.call(store.lookup_or_lease(full, token, self.lease_ttl)).await;
            match outcome {
                Ok(LeaseOutcome::Hit(bytes)) => {
                    if let Some(v) = self.decode_hit(full, &bytes).await {
                        // Filled by another process while we looked.
                        return Ok((Some(v), Source::Coalesced));
                    }
                }
                Ok(LeaseOutcome::Granted { token, .. }) => {
                    return self.load_and_fill(full, token, loader).await;
                }
                Ok(LeaseOutcome::Busy { stale }) => {
                    if let Some(v) = self.usable_stale(full, stale).await {
                        self.record(Event::StaleServed);
                        return Ok((Some(v), Source::Stale));
                    }
                    if started.elapsed() >= self.lease_wait {
                        // The holder is slow or gone: answer from the loader
                        // rather than hang, and leave the fill to the holder.
                        let (value, _) = self.run_loader(loader).await?;
                        return Ok((value, Source::Loaded));
                    }
                    // No fill notification to wait on: back off with jitter.
                    let nap = pause.mul_f64(0.5 + rand::random::<f64>());
                    tokio::time::sleep(nap.min(self.lease_wait.saturating_sub(started.elapsed()))).await;
                    pause = (pause * 2).min(LEASE_POLL_MAX);
                }
                Err(_) => {
                    // The store is down or skipped: the database answers.
                    let (value, _) = self.run_loader(loader).await?;
                    return Ok((value, Source::Loaded));
                }
            }
        }
    }

    async fn usable_stale(&self, full: &str, stale: Option<Bytes>) -> Option<V> {
        match (self.keep_stale, stale) {
            (Some(_), Some(bytes)) => self.decode_hit(full, &bytes).await,
            _ => None,
        }
    }

    async fn load_and_fill<F, Fut, E>(&self, full: &str, token: LeaseToken, loader: F) -> Shared<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let store = &self.core.store;
        let loaded = self.run_loader(loader).await;
        let bytes = match &loaded {
            Ok((Some(v), took)) => self.encode(v, *took).ok().flatten(),
            _ => None,
        };
        match bytes {
            Some(bytes) => {
                let ttl = jittered(self.ttl, self.jitter);
                if let Ok(FillOutcome::Refused) = self.call(store.fill(full, token, bytes, ttl)).await {
                    // An invalidation revoked the lease while we loaded: what
                    // we read may predate the write, so it must not be cached.
                    self.record(Event::FillRefused);
                }
            }
            None => {
                let _ = self.call(store.release(full, token)).await;
            }
        }
        let (value, _) = loaded?;
        Ok((value, Source::Loaded))
    }
}
