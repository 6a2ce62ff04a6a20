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

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;

use super::read::Cached;
use super::state::{Fetched, NsInner, Source};
use crate::error::Result;
use crate::key;
use crate::metrics::Event;

/// Settings of a namespace's L1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct L1Config {
    pub(crate) max_entries: u64,
    pub(crate) ttl: Duration,
}

/// Epoch stripes per L1 (see the module documentation).
const EPOCH_STRIPES: usize = 64;

/// A local copy and how long it may live: the shorter of the L1's TTL and
/// what is left of the entry's own logical life (a tombstone's negative
/// TTL, a value's TTL as its header gives it).
#[derive(Clone)]
struct Local<V> {
    value: Option<V>,
    life: Duration,
}

struct LocalExpiry;

impl<V> moka::Expiry<String, Local<V>> for LocalExpiry {
    fn expire_after_create(&self, _: &String, local: &Local<V>, _: std::time::Instant) -> Option<Duration> {
        Some(local.life)
    }
    fn expire_after_update(
        &self,
        _: &String,
        local: &Local<V>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(local.life)
    }
}

pub(crate) struct L1<V> {
    cache: Cache<String, Local<V>>,
    ttl: Duration,
    epochs: [AtomicU64; EPOCH_STRIPES],
    /// Length of the namespace's key prefix, cut off every full key.
    prefix_len: usize,
}

impl<V: Clone + Send + Sync + 'static> L1<V> {
    pub(crate) fn new(config: L1Config, prefix_len: usize) -> Self {
        L1 {
            cache: Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(LocalExpiry)
                .build(),
            ttl: config.ttl,
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
        self.cache.get(self.local(full)).map(|l| l.value)
    }

    /// The local value of an entry key (a full key without its prefix).
    pub(crate) fn get_local(&self, local: &str) -> Option<Option<V>> {
        self.cache.get(local).map(|l| l.value)
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

    /// Installs a value read from the store after `epoch` was taken, for at
    /// most `life` (and the L1's TTL), unless an invalidation of a key on the
    /// same stripe happened since.
    pub(crate) fn install(&self, full: &str, value: Option<V>, epoch: u64, life: Duration) {
        let key = self.local(full);
        let stripe = self.stripe(key);
        let life = life.min(self.ttl);
        if life.is_zero() || stripe.load(Ordering::SeqCst) != epoch {
            return;
        }
        self.cache.insert(key.to_owned(), Local { value, life });
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

thread_local! {
    /// The key buffer of L1 probes on this thread (see [`NsInner::l1_hit_for`]).
    static L1_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The read entry points of a namespace. Each one asks the L1 first and
/// installs what the tiers below answered, fenced by the epoch taken before
/// it read them ([`NsInner::below_l1`], or per key for a batch): this is
/// the one place the L1 is applied, so no entry point can skip it.
impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    /// The full store key of `key`.
    pub(crate) fn full_key<K: Display + ?Sized>(&self, key: &K) -> Result<String> {
        key::full_key(&self.key_prefix, key, self.core.max_key_len)
    }

    /// `Namespace::fetch` (and `get_or_load`, `fetch_with` without options).
    pub(crate) async fn fetch_key<K, F, Fut, E>(&self, key: &K, loader: F) -> Result<Fetched<V>>
    where
        K: Display + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if let Some(hit) = self.l1_hit_for(key)? {
            return Ok(hit);
        }
        let full = self.full_key(key)?;
        if self.l1.is_none() {
            // Nothing to install: around the read, `below_l1`'s extra future
            // layer cost every store hit about 50 ns (+8%, `cargo bench -p
            // aside --bench hit`, memory_hit).
            return Ok(self.fetch_timed(&full, loader).await?.0);
        }
        self.below_l1(&full, self.fetch_timed(&full, loader)).await
    }

    /// `Namespace::fetch_owned`.
    pub(crate) async fn fetch_owned_key<K, F, Fut, E>(this: &Arc<Self>, key: &K, loader: F) -> Result<Fetched<V>>
    where
        K: Display + ?Sized,
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<Option<V>, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        if let Some(hit) = this.l1_hit_for(key)? {
            return Ok(hit);
        }
        let full = this.full_key(key)?;
        this.below_l1(&full, Self::fetch_owned(this, &full, loader)).await
    }

    /// `Namespace::get`: the L1, then the store; never the loader. An L1
    /// hit is counted as such (a cache-only read counts no hit or miss).
    pub(crate) async fn get_key<K: Display + ?Sized>(&self, key: &K) -> Result<Option<V>> {
        let full = self.full_key(key)?;
        if let Some(value) = self.l1_get(&full) {
            return Ok(value);
        }
        let epoch = self.l1_epoch(&full);
        // Only what the store holds is kept: a miss is no cached "not found".
        let (value, expires_at_ms) = match self.read_cached(&full).await {
            Cached::Hit(value, expires_at_ms) => (value, expires_at_ms),
            Cached::Miss {
                current: Some(current), ..
            } if !current.expired => (current.value, current.expires_at_ms),
            Cached::Miss { .. } => return Ok(None),
        };
        if let Some(epoch) = epoch {
            self.l1_keep(&full, value.clone(), epoch, expires_at_ms);
        }
        Ok(value)
    }

    /// `Namespace::get_many_or_load`: the keys the L1 has are answered
    /// from it; the others are read below it, each fenced by its own epoch,
    /// and what was found is installed.
    pub(crate) async fn fetch_many_keys<K, F, Fut, E>(&self, keys: &[K], loader: F) -> Result<HashMap<K, V>>
    where
        K: Display + Hash + Eq + Clone,
        F: FnMut(Vec<K>) -> Fut,
        Fut: Future<Output = std::result::Result<HashMap<K, V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut seen = HashSet::with_capacity(keys.len());
        let mut found = HashMap::new();
        let mut below = Vec::with_capacity(keys.len());
        for key in keys {
            let full = self.full_key(key)?;
            if !seen.insert(full.clone()) {
                continue;
            }
            match self.l1.as_ref().and_then(|l1| l1.get(&full)) {
                Some(value) => {
                    self.record(Event::Hit);
                    self.record(Event::L1Hit);
                    found.extend(value.map(|v| (key.clone(), v)));
                }
                None => below.push((key.clone(), full)),
            }
        }
        if below.is_empty() {
            return Ok(found);
        }
        let Some(l1) = &self.l1 else {
            // Nothing was found above: the batch's own map is the answer.
            return Ok(self.fetch_many(below, loader).await?.values);
        };
        let fenced: Vec<(K, String, u64)> = below
            .iter()
            .map(|(key, full)| (key.clone(), full.clone(), l1.epoch(full)))
            .collect();
        let below = self.fetch_many(below, loader).await?;
        for (key, full, epoch) in fenced {
            if let Some(value) = below.values.get(&key) {
                let expires_at_ms = below.expiries.get(&key).copied();
                self.l1_keep(&full, Some(value.clone()), epoch, expires_at_ms);
            }
        }
        let mut values = below.values;
        values.extend(found);
        Ok(values)
    }

    /// The L1's answer for `key`, counted as a hit, if it has one. Its key
    /// is built in a buffer of this thread's, so a hit allocates nothing:
    /// the key would cost as much as the lookup.
    pub(crate) fn l1_hit_for<K: Display + ?Sized>(&self, key: &K) -> Result<Option<Fetched<V>>> {
        if self.l1.is_none() {
            return Ok(None);
        }
        L1_KEY.with_borrow_mut(|buf| {
            buf.clear();
            key::append_key_part(buf, self.key_prefix.len(), key, self.core.max_key_len)?;
            Ok(self.l1_hit_local(buf))
        })
    }

    /// The L1's answer for an entry key (a full key without the namespace's
    /// prefix), counted as a hit, if it has one.
    fn l1_hit_local(&self, local: &str) -> Option<Fetched<V>> {
        let value = self.l1.as_ref()?.get_local(local)?;
        self.record(Event::Hit);
        self.record(Event::L1Hit);
        Some(Fetched {
            value,
            source: Source::Hit,
        })
    }

    /// Runs `read`, a single-key read below the L1 of `full`, and installs
    /// its answer. The epoch is taken before `read` runs (a future does
    /// nothing until awaited), so an invalidation during the read fences
    /// the install.
    pub(crate) async fn below_l1(
        &self,
        full: &str,
        read: impl Future<Output = Result<(Fetched<V>, Option<u64>)>>,
    ) -> Result<Fetched<V>> {
        let epoch = self.l1_epoch(full);
        let (fetched, expires_at_ms) = read.await?;
        if let Some(epoch) = epoch {
            self.l1_install(full, &fetched, epoch, expires_at_ms);
        }
        Ok(fetched)
    }

    /// Installs what a read below the L1 returned, if it may be kept: not a
    /// stale value (see [`NsInner::l1_keep`] for the rest).
    pub(crate) fn l1_install(&self, full: &str, fetched: &Fetched<V>, epoch: u64, expires_at_ms: Option<u64>) {
        if fetched.source != Source::Stale {
            self.l1_keep(full, fetched.value.clone(), epoch, expires_at_ms);
        }
    }

    /// Installs `value`, read below the L1 after `epoch` was taken, if it
    /// may be kept: not "not found" unless it is cached below too, only for
    /// the value's remaining logical life, and only while the bus (when
    /// there is one) is subscribed, so that no invalidation published by
    /// another process can pass this L1 by.
    fn l1_keep(&self, full: &str, value: Option<V>, epoch: u64, expires_at_ms: Option<u64>) {
        let Some(l1) = &self.l1 else { return };
        let cacheable = value.is_some() || self.negative_ttl.is_some();
        if !cacheable || !self.bus_listening() {
            return;
        }
        let life = match expires_at_ms {
            Some(at) => Duration::from_millis(at.saturating_sub(crate::envelope::unix_ms())),
            None => self.shortest_life(value.is_some()),
        };
        l1.install(full, value, epoch, life);
    }

    /// The least logical life a value just loaded is stored with: the TTL
    /// less its jitter, or the negative TTL of a tombstone.
    fn shortest_life(&self, found: bool) -> Duration {
        if found {
            self.ttl.mul_f64(1.0 - self.jitter.clamp(0.0, 0.999))
        } else {
            self.negative_ttl.unwrap_or(Duration::ZERO)
        }
    }

    /// True unless the namespace has a bus whose subscription is not up:
    /// L1 fills wait for it (see [`NsInner::l1_install`]).
    /// A listener that never started (the `Aside` was built outside a
    /// runtime) or died with its runtime is started here, on this caller's.
    fn bus_listening(&self) -> bool {
        let Some(router) = &self.core.router else { return true };
        if router.is_subscribed() {
            return true;
        }
        router.start(&self.core);
        false
    }

    /// The epoch of `full`'s L1 stripe, for a read that installs later.
    pub(crate) fn l1_epoch(&self, full: &str) -> Option<u64> {
        self.l1.as_ref().map(|l1| l1.epoch(full))
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

    /// Evicts `full` once the store has the write: from this namespace's
    /// L1 and from every other namespace of the same name in this `Aside`
    /// (which hear nothing from the bus: a process ignores its own messages),
    /// whether or not this namespace has an L1 of its own.
    pub(crate) fn l1_evict_written(&self, full: &str) {
        self.core
            .l1_peers
            .evict(&self.name, std::slice::from_ref(&full.to_owned()));
    }
}

/// What a namespace exposes to its peers and the bus listener.
pub(crate) trait Evictor: Send + Sync {
    fn evict_keys(&self, keys: &[String]);
    fn clear_local(&self);
}

impl<V: Clone + Send + Sync + 'static> Evictor for NsInner<V> {
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

/// The namespaces with an L1 in one `Aside`, by name, held weakly: what a
/// local write evicts (every namespace of that name, not only the writer's:
/// the bus does not echo a process's own messages back to it) and what the
/// bus listener delivers other processes' invalidations to.
#[derive(Default)]
pub(crate) struct Peers {
    by_name: std::sync::Mutex<std::collections::HashMap<String, Vec<std::sync::Weak<dyn Evictor>>>>,
}

impl Peers {
    pub(crate) fn register(&self, namespace: &str, evictor: std::sync::Weak<dyn Evictor>) {
        self.by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(namespace.to_owned())
            .or_default()
            .push(evictor);
    }

    /// The live namespaces called `namespace`, or all of them for `None`;
    /// dropped ones are forgotten on the way.
    pub(crate) fn live(&self, namespace: Option<&str>) -> Vec<std::sync::Arc<dyn Evictor>> {
        let mut by_name = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let mut live = Vec::new();
        by_name.retain(|name, list| {
            if namespace.is_none_or(|n| n == name) {
                list.retain(|w| w.strong_count() > 0);
                live.extend(list.iter().filter_map(std::sync::Weak::upgrade));
            }
            !list.is_empty()
        });
        live
    }

    /// Evicts `keys` from every L1 of `namespace` in this `Aside`.
    pub(crate) fn evict(&self, namespace: &str, keys: &[String]) {
        for evictor in self.live(Some(namespace)) {
            evictor.evict_keys(keys);
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
        l1.install(a, Some(1), epoch, Duration::from_secs(60));
        assert_eq!(
            l1.get(a),
            Some(Some(1)),
            "another stripe's invalidation does not fence `a`"
        );

        let epoch = l1.epoch(a);
        l1.evict(a);
        l1.install(a, Some(2), epoch, Duration::from_secs(60));
        assert_eq!(l1.get(a), None, "`a`'s own invalidation fences its fill");

        let epoch = l1.epoch(a);
        l1.clear();
        l1.install(a, Some(3), epoch, Duration::from_secs(60));
        assert_eq!(l1.get(a), None, "clearing fences every stripe");
    }
}
