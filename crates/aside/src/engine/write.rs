//! The write path: invalidations, write-through `set`, and the versioned
//! write-through.
//!
//! Owns what happens to the cache after the database changed: the L1
//! evictions around the store operation (which `strategy` chooses), the bus
//! message, and the delayed second delete. A write the
//! store does not take is returned to the caller AND queued for replay, so
//! an outage never leaves an old value behind for good.

use super::state::{NsInner, WriteThrough};
use crate::bus::Invalidation;
use crate::error::{Error, ErrorKind, Result};
use crate::policy::Strategy;
use crate::store::VersionedPut;

use super::retry::PendingOp;
use super::timer::SecondDelete;
use futures::future::BoxFuture;

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    /// Invalidates every key, attempting all of them, then publishes one
    /// bus message for them all; returns the first store error.
    pub(crate) async fn invalidate_all(&self, fulls: &[String]) -> Result<()> {
        let mut first_error = None;
        for full in fulls {
            if let Err(e) = self.invalidate_one(full).await {
                first_error.get_or_insert(e);
            }
        }
        self.publish(fulls.to_vec()).await;
        first_error.map_or(Ok(()), Err)
    }

    /// Tells the other processes' L1s that `keys` changed. A message that
    /// cannot be published is logged: their L1s then age out by their TTL
    /// (the bus's documented limit).
    pub(crate) async fn publish(&self, keys: Vec<String>) {
        if let Some(router) = &self.core.router {
            let message = Invalidation::new(self.name.clone(), keys, router.origin);
            if let Err(e) = router.bus.publish(&message).await {
                tracing::warn!(namespace = self.name, error = %e, "invalidation not published on the bus");
            }
        }
    }

    async fn invalidate_one(&self, full: &str) -> Result<()> {
        // Evicted before the store operation, so fills that began earlier
        // skip the L1, AND after it (in `store_then_evict`), because a reader
        // that missed the L1 in between read the old value from the store
        // and may be installing it now: the second eviction fences it.
        self.l1_evict(full);
        let result = self.invalidate_in_store(full).await;
        self.l1_evict_written(full);
        result
    }

    pub(crate) async fn write(&self, full: &str, value: &V) -> Result<()> {
        self.l1_evict(full);
        let result = self.write_to_store(full, value).await;
        // As in `invalidate_one`: a reader that read the old value between
        // the first eviction and the store write must not keep it.
        self.l1_evict_written(full);
        if result.is_ok() {
            // Other processes' L1s hold the old value until they hear of it.
            self.publish(vec![full.to_owned()]).await;
        }
        result
    }
}

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    /// Writes `value`, the row at `version`, unless a write of the same or
    /// a newer version of the key came first (see
    /// `Store::put_entry_if_newer`): two writers racing never leave the
    /// older row cached, whatever order their cache writes land in.
    ///
    /// Where the version cannot be compared in the store (a strategy other
    /// than `Lease`, whose fills would not be fenced against it; a store
    /// without the operation; a key whose braces keep its write mark out
    /// of its Redis Cluster slot), the key is invalidated instead: the next
    /// read loads the row, which is never older than this write. A value
    /// the codec refuses is invalidated too, and the error returned: after
    /// a database write, the old cached value must not stay.
    pub(crate) async fn write_versioned(&self, full: &str, value: &V, version: u64) -> Result<WriteThrough> {
        if self.strategy != Strategy::Lease
            || !self.core.store.supports_versioned_writes()
            || !crate::key::mark_shares_slot(full)
        {
            self.invalidate_all(&[full.to_owned()]).await?;
            return Ok(WriteThrough::Invalidated);
        }
        let encoded = self.encode(Some(value), std::time::Duration::ZERO).and_then(|e| {
            e.ok_or_else(|| {
                Error::new(
                    ErrorKind::Codec,
                    format!("value over the {} byte limit", self.max_value_bytes),
                )
            })
        });
        let (bytes, ttl) = match encoded {
            Ok(encoded) => encoded,
            Err(e) => {
                let _ = self.invalidate_if_newer(full, version).await;
                return Err(e);
            }
        };
        self.l1_evict(full);
        let put = VersionedPut {
            key: full.to_owned(),
            mark_key: crate::key::write_mark_key(full),
            value: bytes,
            version,
            ttl,
            mark_ttl: self.version_ttl(),
        };
        let result = self.call(self.core.store.put_entry_if_newer(put)).await;
        // As in `write`: a reader that read the old value between the first
        // eviction and the store write must not keep it.
        self.l1_evict_written(full);
        match result {
            Ok(true) => {
                self.publish(vec![full.to_owned()]).await;
                Ok(WriteThrough::Written)
            }
            // Published all the same: a refusal may be this write's own
            // mark, set by a first run whose reply was lost and that the
            // client resent (redis-rs's cluster client does), in which case
            // nobody else told the other processes' L1s.
            Ok(false) => {
                self.publish(vec![full.to_owned()]).await;
                Ok(WriteThrough::Superseded)
            }
            Err(e) => {
                // The old value may still be cached: make sure it goes (and
                // queue the invalidation for replay if the store is away).
                let _ = self.invalidate_if_newer(full, version).await;
                Err(e)
            }
        }
    }

    /// The fallback of a versioned write that could not complete: the key
    /// is invalidated AND its write mark raised to `version`, in one store
    /// step (`Store::invalidate_if_newer`), queued for replay if the store
    /// is away. A plain invalidation would not do: a writer of an older
    /// row racing with this one, its cache write landing after the
    /// invalidation, would be above the mark and cached, while the
    /// database holds this newer row (`tests/history.rs` found it, seed
    /// 13692431980248563819 on memcached).
    async fn invalidate_if_newer(&self, full: &str, version: u64) -> Result<()> {
        self.l1_evict(full);
        let mark_ttl = self.version_ttl();
        let mark_key = crate::key::write_mark_key(full);
        let store = &self.core.store;
        let result = self
            .core
            .call_for(
                &self.metrics,
                store.invalidate_if_newer(full, &mark_key, version, mark_ttl),
            )
            .await;
        self.l1_evict_written(full);
        if let Err(e) = &result {
            tracing::warn!(key = %crate::telemetry::KeyHash(full), error = %e, "invalidation failed: queued for replay");
            self.core.queue_invalidation(
                &self.name,
                full,
                full,
                PendingOp::InvalidateIfNewer { version, mark_ttl },
            );
        }
        self.publish(vec![full.to_owned()]).await;
        result
    }
}

impl<V: Clone + Send + Sync + 'static> SecondDelete for NsInner<V> {
    /// The delayed half of `DoubleDelete`: store, L1 and bus, like the first.
    fn second_delete(&self, key: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.l1_evict(&key);
            if self
                .core
                .call_for(&self.metrics, self.core.store.delete(&key))
                .await
                .is_err()
            {
                self.core.queue_invalidation(&self.name, &key, &key, PendingOp::Delete);
            }
            self.l1_evict_written(&key);
            self.publish(vec![key]).await;
        })
    }
}
