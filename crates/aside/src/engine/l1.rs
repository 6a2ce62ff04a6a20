//! The read entry points of a namespace, each passing its L1 (`engine::tier`):
//! the L1 is read first and filled after a store hit or a load, fenced by the
//! epoch taken before the tiers below were read, in this one place.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use super::read::Cached;
use super::state::{Fetched, NsInner, Source};
use super::tier::Evictor;
use crate::error::Result;
use crate::key;
use crate::metrics::Event;

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
        // A store of this process that keeps decoded values: a fresh hit
        // there needs neither the key's `String` nor the read path below.
        if let Some(hit) = self.local_hit_for(key)? {
            return Ok(hit);
        }
        self.fetch_key_below_l1(key, loader).await
    }

    /// [`NsInner::fetch_key`] once the L1 and a store of this process that
    /// keeps decoded values (`engine::local`) have missed, or are absent.
    pub(crate) async fn fetch_key_below_l1<K, F, Fut, E>(&self, key: &K, loader: F) -> Result<Fetched<V>>
    where
        K: Display + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let full = self.full_key(key)?;
        if self.l1.is_none() {
            // Nothing to install: around the read, `below_l1`'s extra future
            // layer cost every store hit about 50 ns (+8%, `cargo bench -p
            // aside --bench hit`, memory_hit).
            return Ok(self.fetch_timed(&full, loader).await?.0);
        }
        // Boxed for the same reason as `fetch_timed`'s miss path: inline,
        // the L1's fencing future doubled every Redis hit's future.
        Box::pin(self.below_l1(&full, self.fetch_timed(&full, loader))).await
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
            Cached::Miss { .. } | Cached::Down => return Ok(None),
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
                    self.record_l1_hit();
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
    /// is built on the stack (or, when long or refused, in a buffer of this
    /// thread's, where `key::append_key_part` reports the error), so a hit
    /// allocates nothing: the key would cost as much as the lookup.
    pub(crate) fn l1_hit_for<K: Display + ?Sized>(&self, key: &K) -> Result<Option<Fetched<V>>> {
        let Some(l1) = &self.l1 else { return Ok(None) };
        let prefix_len = self.key_prefix.len();
        let value = match key::inline_key_part(prefix_len, key, self.core.max_key_len) {
            Some(part) => l1.get_local(part.as_bytes()),
            None => L1_KEY.with_borrow_mut(|buf| {
                buf.clear();
                key::append_key_part(buf, prefix_len, key, self.core.max_key_len)?;
                Ok::<_, crate::Error>(l1.get_local(buf.as_bytes()))
            })?,
        };
        Ok(value.map(|value| {
            self.record_l1_hit();
            Fetched {
                value,
                source: Source::Hit,
            }
        }))
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

    /// Installs what a forced refresh returned, after it replaced the
    /// value below: the epoch is moved on from `epoch` first, so that a
    /// reader that read the replaced value cannot install it over this one
    /// (see `engine::tier`). Nothing is installed if an invalidation came
    /// after `epoch` was taken, but the epoch is moved on all the same: a
    /// reader that took the newer epoch may hold the replaced value too.
    pub(crate) fn l1_replace(&self, full: &str, fetched: &Fetched<V>, epoch: u64, expires_at_ms: Option<u64>) {
        let Some(l1) = &self.l1 else { return };
        if let Some(epoch) = l1.advance(full, epoch) {
            self.l1_install(full, fetched, epoch, expires_at_ms);
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
        if !cacheable || !self.bus_listening() || self.core.l1_peers.is_fenced(full) {
            return;
        }
        let life = match expires_at_ms {
            // Within the longest life the value can have: an expiry stamped
            // in wall-clock time must not grow by a step of the clock back.
            Some(at) => Duration::from_millis(at.saturating_sub(crate::envelope::unix_ms()))
                .min(self.life(value.is_some(), 1.0)),
            None => self.life(value.is_some(), -1.0),
        };
        l1.install(full, value, epoch, life);
    }

    /// When (Unix ms) an L1 copy of a value loaded just now must be gone:
    /// the shortest life ([`NsInner::life`]) from now. Called as the load ends, before
    /// the store is written, so that a slow write (a store call that hangs
    /// until its bound) does not add its time to the copy's life: bounded
    /// from the insert, the copy outlived the load's TTL by that call
    /// (docs/HISTORY.md, the Ttl finding on seed 10219504313322879561;
    /// `tests/l1.rs` `an_l1_copy_of_a_load_lives_its_ttl_from_the_load_not_the_insert`).
    /// `None` without an L1, which is the only reader of it.
    pub(crate) fn loaded_expiry(&self, found: bool) -> Option<u64> {
        self.l1.as_ref()?;
        let life = u64::try_from(self.life(found, -1.0).as_millis()).unwrap_or(u64::MAX);
        Some(crate::envelope::unix_ms().saturating_add(life))
    }

    /// The least (`jitter_sign` -1) or most (+1) logical life a value just
    /// loaded is stored with: the TTL less or plus its jitter, or the
    /// negative TTL of a tombstone.
    fn life(&self, found: bool, jitter_sign: f64) -> Duration {
        if found {
            self.ttl.mul_f64(1.0 + jitter_sign * self.jitter.clamp(0.0, 0.999))
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
