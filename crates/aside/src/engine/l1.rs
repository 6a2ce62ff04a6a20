//! The optional in-process first tier (L1) of a namespace, in front of its store.
//!
//! Owns the local copy of values and its coherence with invalidations. An L1
//! hit never touches the network. The hazard is a fill racing an
//! invalidation: a reader reads the store (old value), an invalidation
//! arrives, then the reader installs the old value locally, where no later
//! invalidation would remove it. An epoch counter closes it: every
//! invalidation bumps the epoch *before* evicting, and a filler installs
//! only if the epoch it saw before reading the store is unchanged *after*
//! installing (removing its entry otherwise). Whatever the interleaving,
//! either the filler sees the bump or the invalidation's eviction comes
//! after the install.
//!
//! Entries are keyed by the part of the full key after the namespace's
//! prefix, which is the same for every entry: shorter keys hash faster, and
//! a hit can build its key without the prefix (see `Namespace::fetch`).
//!
//! Epochs are striped: a key's fills and invalidations use the epoch of
//! its stripe (one of [`EPOCH_STRIPES`], by a hash of the key), so an
//! invalidation makes only the concurrent fills of keys on its stripe skip
//! the L1 once, not those of the whole namespace, and no map of per-key
//! epochs grows with the keys. Clearing the L1 bumps every stripe.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;

use crate::error::Result;
use crate::metrics::Event;
use crate::namespace::{Fetched, NsInner, Source};

/// Settings of a namespace's L1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct L1Config {
    pub(crate) max_entries: u64,
    pub(crate) ttl: Duration,
}

/// Epoch stripes per L1 (see the module documentation).
const EPOCH_STRIPES: usize = 64;

pub(crate) struct L1<V> {
    cache: Cache<String, Option<V>>,
    epochs: [AtomicU64; EPOCH_STRIPES],
    /// Length of the namespace's key prefix, cut off every full key.
    prefix_len: usize,
}

impl<V: Clone + Send + Sync + 'static> L1<V> {
    pub(crate) fn new(config: L1Config, prefix_len: usize) -> Self {
        L1 {
            cache: Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(config.ttl)
                .build(),
            epochs: std::array::from_fn(|_| AtomicU64::new(0)),
            prefix_len,
        }
    }

    /// The entry key of a full key: the part after the namespace's prefix.
    fn local<'a>(&self, full: &'a str) -> &'a str {
        full.get(self.prefix_len..).unwrap_or(full)
    }

    /// The local value of a full key: `Some(None)` is a cached "not found".
    pub(crate) fn get(&self, full: &str) -> Option<Option<V>> {
        self.cache.get(self.local(full))
    }

    /// The local value of an entry key (a full key without its prefix).
    pub(crate) fn get_local(&self, local: &str) -> Option<Option<V>> {
        self.cache.get(local)
    }

    /// The epoch stripe of an entry key.
    fn stripe(&self, local: &str) -> &AtomicU64 {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(local);
        &self.epochs[(hash % EPOCH_STRIPES as u64) as usize]
    }

    /// The epoch of `full`'s stripe, to hand to [`L1::install`] after
    /// reading the store.
    pub(crate) fn epoch(&self, full: &str) -> u64 {
        self.stripe(self.local(full)).load(Ordering::SeqCst)
    }

    /// Installs a value read from the store after `epoch` was taken, unless
    /// an invalidation of a key on the same stripe happened since.
    pub(crate) fn install(&self, full: &str, value: Option<V>, epoch: u64) {
        let key = self.local(full);
        let stripe = self.stripe(key);
        if stripe.load(Ordering::SeqCst) != epoch {
            return;
        }
        self.cache.insert(key.to_owned(), value);
        if stripe.load(Ordering::SeqCst) != epoch {
            self.cache.invalidate(key);
        }
    }

    /// Evicts everything (the bus lost messages, so any entry may be stale).
    pub(crate) fn clear(&self) {
        for epoch in &self.epochs {
            epoch.fetch_add(1, Ordering::SeqCst);
        }
        self.cache.invalidate_all();
    }

    /// Evicts `full` (an invalidation, local or from another process).
    pub(crate) fn evict(&self, full: &str) {
        let key = self.local(full);
        self.stripe(key).fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(key);
    }
}

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    /// `fetch` behind the L1: a local hit answers at once; anything the
    /// lower tiers answer (but a stale value) is installed for next time.
    pub(crate) async fn fetch_tiered<F, Fut, E>(&self, full: &str, loader: F) -> Result<Fetched<V>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if let Some(l1) = &self.l1
            && let Some(hit) = self.l1_hit_local(l1.local(full))
        {
            return Ok(hit);
        }
        self.fetch_below_l1(full, loader).await
    }

    /// The L1's answer for an entry key (a full key without the namespace's
    /// prefix), counted as a hit, if it has one.
    pub(crate) fn l1_hit_local(&self, local: &str) -> Option<Fetched<V>> {
        let value = self.l1.as_ref()?.get_local(local)?;
        self.record(Event::Hit);
        self.record(Event::L1Hit);
        Some(Fetched {
            value,
            source: Source::Hit,
        })
    }

    /// `fetch` from the store and the loader, for a key the L1 did not
    /// answer; installs the result in the L1.
    pub(crate) async fn fetch_below_l1<F, Fut, E>(&self, full: &str, loader: F) -> Result<Fetched<V>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let Some(l1) = &self.l1 else {
            return self.fetch(full, loader).await;
        };
        let epoch = l1.epoch(full);
        let fetched = self.fetch(full, loader).await?;
        // "Not found" is kept locally only where it is cached below too.
        let cacheable = fetched.value.is_some() || self.negative_ttl.is_some();
        if fetched.source != Source::Stale && cacheable {
            l1.install(full, fetched.value.clone(), epoch);
        }
        Ok(fetched)
    }

    /// The L1 value of `full` for a cache-only read, counted as an L1 hit.
    pub(crate) fn l1_get(&self, full: &str) -> Option<Option<V>> {
        let value = self.l1.as_ref()?.get(full)?;
        self.record(Event::L1Hit);
        Some(value)
    }

    /// Evicts `full` locally; every write and invalidation starts here.
    pub(crate) fn l1_evict(&self, full: &str) {
        if let Some(l1) = &self.l1 {
            l1.evict(full);
        }
    }
}

impl<V: Clone + Send + Sync + 'static> crate::bus::route::Evictor for NsInner<V> {
    fn evict_keys(&self, keys: &[String]) {
        for key in keys {
            self.l1_evict(key);
        }
    }

    fn clear_local(&self) {
        if let Some(l1) = &self.l1 {
            l1.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l1() -> L1<u32> {
        L1::new(
            L1Config {
                max_entries: 100,
                ttl: Duration::from_secs(60),
            },
            "ns:".len(),
        )
    }

    #[test]
    fn an_invalidation_fences_fills_of_its_own_stripe_only() {
        let l1 = l1();
        let a = "ns:a";
        // A key on another stripe than `a`'s.
        let other = (0..1000)
            .map(|i| format!("ns:k{i}"))
            .find(|k| !std::ptr::eq(l1.stripe(l1.local(k)), l1.stripe("a")))
            .expect("64 stripes");

        let epoch = l1.epoch(a);
        l1.evict(&other);
        l1.install(a, Some(1), epoch);
        assert_eq!(
            l1.get(a),
            Some(Some(1)),
            "another stripe's invalidation does not fence `a`"
        );

        let epoch = l1.epoch(a);
        l1.evict(a);
        l1.install(a, Some(2), epoch);
        assert_eq!(l1.get(a), None, "`a`'s own invalidation fences its fill");

        let epoch = l1.epoch(a);
        l1.clear();
        l1.install(a, Some(3), epoch);
        assert_eq!(l1.get(a), None, "clearing fences every stripe");
    }
}
