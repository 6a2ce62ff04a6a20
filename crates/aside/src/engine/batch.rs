//! Batch reads: `get_many_or_load` without N+1.
//!
//! Owns the batch read path: one store round trip to look up every key,
//! ONE loader call for all the keys this call leads, one round trip to fill
//! them. Per-key guarantees are those of the single-key path: keys another
//! caller in this process is loading are awaited through single-flight, not
//! loaded twice; with `Lease`, a lease per key, fenced fills, and a waiter
//! takes a leader's value only if its read began before the value settled.
//! Keys whose value it may not take are looked up again in a next round.
//! The lookup per strategy is `strategy::lookup_many`, beside the
//! single-key one.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::entry::Freshness;
use super::lease::{HeldLease, renewing};
use super::single_flight::{Begin, Leader};
use super::state::{NsInner, Settled, Shared, Source};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Event;
use crate::store::{Fill, FillOutcome, Held, LeaseOutcome, LeaseToken};

/// Rounds before the remaining keys are loaded without the cache.
const MAX_ROUNDS: usize = 3;

/// What a batch found: the values, and the logical expiry (Unix ms) of
/// those read from a stored entry whose header gives one, so that the L1
/// keeps them no longer.
pub(crate) struct Found<K, V> {
    pub(crate) values: HashMap<K, V>,
    pub(crate) expiries: HashMap<K, u64>,
}

impl<K: Hash + Eq + Clone, V> Found<K, V> {
    /// Notes what was found for `key`: nothing for a "not found".
    pub(crate) fn insert(&mut self, key: K, value: Option<V>, expires_at_ms: Option<u64>) {
        let Some(value) = value else { return };
        if let Some(at) = expires_at_ms {
            self.expiries.insert(key.clone(), at);
        }
        self.values.insert(key, value);
    }
}

/// A key this call leads the load of.
struct Led<'a, K, V> {
    key: K,
    /// The full key (what invalidations are queued under).
    full: String,
    /// Where its value lives: the full key, or its versioned data key.
    store_key: String,
    leader: Leader<'a, Shared<V>>,
}

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    /// Looks `keys` up (`(key, full store key)`, deduplicated by the caller)
    /// and loads the missing ones with one call of `loader` per round.
    pub(crate) async fn fetch_many<K, F, Fut, E>(&self, keys: Vec<(K, String)>, mut loader: F) -> Result<Found<K, V>>
    where
        K: Hash + Eq + Clone,
        F: FnMut(Vec<K>) -> Fut,
        Fut: Future<Output = std::result::Result<HashMap<K, V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut found = Found {
            values: HashMap::with_capacity(keys.len()),
            expiries: HashMap::new(),
        };
        let mut remaining = keys;
        for round in 0..MAX_ROUNDS {
            if remaining.is_empty() {
                break;
            }
            let began = self.read_seq.fetch_add(1, Ordering::SeqCst);
            let misses = self
                .lookup_many(&std::mem::take(&mut remaining), round == 0, &mut found)
                .await;
            if misses.is_empty() {
                break;
            }
            // Lead the keys nobody in this process is loading; wait for the rest.
            let mut led = Vec::new();
            let mut waiting = Vec::new();
            for (key, full, flight_key, lease) in misses {
                // Unlike the single-key path, a key whose lookup saw no lease
                // joins a flight that holds one (most likely taken after the
                // lookup): a batch that led instead would find the key busy
                // and load it a second time in this process. Should that
                // lease have been revoked, the flight settles after its
                // reload or before this round began, and `settled_at` sends
                // this key round again: the join costs time, never freshness.
                let join = |held: u64| held == 0 || lease.is_none_or(|t| t.0 == held);
                match self.flight.begin(&flight_key, join) {
                    Begin::Lead(leader) => led.push(Led {
                        key,
                        full,
                        store_key: flight_key,
                        leader,
                    }),
                    Begin::Wait(waiter) => waiting.push((key, full, waiter)),
                }
            }
            if !led.is_empty() {
                self.load_led(led, &mut loader, &mut found).await?;
            }
            for (key, full, waiter) in waiting {
                match waiter.wait().await {
                    // A value served stale by another caller's load is not
                    // for a batch, which has no way to flag it: look again.
                    Some(Ok(settled)) if settled.settled_at > began && settled.source != Source::Stale => {
                        self.record(Event::Coalesced);
                        found.insert(key, settled.value, settled.expires_at_ms);
                    }
                    Some(Err(e)) => return Err(e),
                    // Settled before this read began, or the leader gave up: look again.
                    _ => remaining.push((key, full)),
                }
            }
        }
        if !remaining.is_empty() {
            let keys: Vec<K> = remaining.into_iter().map(|(k, _)| k).collect();
            let loaded = self.run_batch_loader(&mut loader, keys).await?;
            let expires_at_ms = self.loaded_expiry(true);
            for (key, value) in loaded {
                found.insert(key, Some(value), expires_at_ms);
            }
        }
        Ok(found)
    }

    /// One call of a batch loader, counted and bounded by the load timeout.
    async fn run_batch_loader<K, F, Fut, E>(&self, loader: &mut F, keys: Vec<K>) -> Result<HashMap<K, V>>
    where
        F: FnMut(Vec<K>) -> Fut,
        Fut: Future<Output = std::result::Result<HashMap<K, V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.record(Event::Load);
        let outcome = match self.load_timeout {
            Some(limit) => match tokio::time::timeout(limit, loader(keys)).await {
                Ok(outcome) => outcome.map_err(Error::loader),
                Err(_) => Err(Error::new(
                    ErrorKind::Timeout,
                    format!("batch loader did not answer within {limit:?}"),
                )),
            },
            None => loader(keys).await.map_err(Error::loader),
        };
        if outcome.is_err() {
            self.record(Event::LoadError);
        }
        outcome
    }

    /// A batch hit: `Some` of the value (`None` for a cached "not found")
    /// and its logical expiry, or `None` when the entry is missing, corrupt
    /// or past its logical expiry. Early refresh and fail-safe are
    /// single-key policies; a batch serves a value due for refresh as it is
    /// and reloads expired ones.
    pub(crate) async fn batch_hit(&self, key: &str, bytes: &[u8]) -> Option<(Option<V>, Option<u64>)> {
        let entry = self.decode_hit(key, bytes).await?;
        let expires_at_ms = entry.expires_at_ms();
        (self.freshness(&entry) != Freshness::Expired).then_some((entry.value, expires_at_ms))
    }

    /// [`NsInner::batch_hit`] of a value as a local store holds it.
    pub(crate) async fn batch_hit_held(&self, key: &str, held: Held) -> Option<(Option<V>, Option<u64>)> {
        let entry = self.entry_of(key, held).await?;
        let expires_at_ms = entry.expires_at_ms();
        (self.freshness(&entry) != Freshness::Expired).then_some((entry.value, expires_at_ms))
    }

    pub(crate) fn count_lookup(&self, count: bool, hit: bool) {
        if count {
            self.record(if hit { Event::Hit } else { Event::Miss });
        }
    }

    /// Loads the keys this call leads with one loader call, fills them in
    /// one round trip, and publishes each to its waiters.
    async fn load_led<K, F, Fut, E>(
        &self,
        led: Vec<Led<'_, K, V>>,
        loader: &mut F,
        found: &mut Found<K, V>,
    ) -> Result<()>
    where
        K: Hash + Eq + Clone,
        F: FnMut(Vec<K>) -> Fut,
        Fut: Future<Output = std::result::Result<HashMap<K, V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let store = &self.core.store;
        let lease_mode = self.fences_fills();
        let mut tokens: Vec<Option<LeaseToken>> = vec![None; led.len()];
        // Released if this call is cancelled before it fills or releases them.
        let mut held: Vec<HeldLease> = Vec::new();
        // Before the lease round trip: a value another process filled is
        // settled no earlier than this.
        let looked_at = self.read_seq.fetch_add(1, Ordering::SeqCst);
        let mut to_load = vec![true; led.len()];
        // Before the round trip, as in `lookup_many`.
        let pending: Vec<bool> = led
            .iter()
            .map(|l| self.core.retry.is_pending(&self.pending_key(&l.full)))
            .collect();
        if lease_mode {
            let asks: Vec<(String, LeaseToken)> = led
                .iter()
                .map(|l| (l.store_key.clone(), LeaseToken::random()))
                .collect();
            // As in `load_with_lease`: a lost reply may hide granted leases.
            let mut offered: Vec<HeldLease> = asks.iter().map(|(key, token)| self.hold(key, *token)).collect();
            let outcomes = self.call(store.lookup_or_lease_many(&asks, self.lease_ttl)).await;
            if outcomes.is_ok() {
                offered.iter_mut().for_each(HeldLease::disarm);
            }
            drop(offered);
            if let Ok(outcomes) = outcomes {
                for (i, outcome) in outcomes.into_iter().enumerate() {
                    match outcome {
                        LeaseOutcome::Granted { token, .. } => {
                            led[i].leader.tag().store(token.0, Ordering::Release);
                            tokens[i] = Some(token);
                            held.push(self.hold(&led[i].store_key, token));
                        }
                        LeaseOutcome::Hit(bytes) if !pending[i] => {
                            // A value past its logical expiry that a store with
                            // coarser TTLs (memcached) still holds is loaded again.
                            if let Some(entry) = self.decode_hit(&led[i].store_key, &bytes).await
                                && (self.fail_safe.is_some() || self.freshness(&entry) != Freshness::Expired)
                            {
                                let expires_at_ms = entry.expires_at_ms();
                                found.insert(led[i].key.clone(), entry.value, expires_at_ms);
                                to_load[i] = false;
                            }
                        }
                        // Another process is loading it; rather than wait on
                        // each, load it with the others, unfilled.
                        _ => {}
                    }
                }
            }
        }
        let keys: Vec<K> = led
            .iter()
            .zip(&to_load)
            .filter(|(_, load)| **load)
            .map(|(l, _)| l.key.clone())
            .collect();
        let load_began = self.read_seq.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let leased: Vec<(String, LeaseToken)> = led
            .iter()
            .zip(&tokens)
            .filter_map(|(l, t)| t.map(|t| (l.store_key.clone(), t)))
            .collect();
        let loaded = if keys.is_empty() {
            Ok(HashMap::new())
        } else {
            // Renewals go on while any of the batch's leases lives: one key
            // invalidated must not let the others run out.
            let renew_until = super::deadline_after(self.renewal_bound());
            let leased = &leased;
            let renew = || async move {
                if Instant::now() >= renew_until {
                    return false;
                }
                let mut any = false;
                for (key, token) in leased {
                    // As on the single-key path: only "no such lease" counts as gone.
                    any |= !matches!(
                        self.call(store.renew_lease(key, *token, self.lease_ttl)).await,
                        Ok(false)
                    );
                }
                any
            };
            renewing(self.lease_ttl, renew, self.run_batch_loader(loader, keys)).await
        };
        // The guards stay armed until every lease is filled or given back:
        // a caller cancelled during those calls still releases the rest.
        let mut loaded = match loaded {
            Ok(map) => map,
            Err(error) => {
                for (l, token) in led.iter().zip(&tokens) {
                    if let Some(token) = token {
                        let _ = self.call(store.release(&l.store_key, *token)).await;
                    }
                }
                held.iter_mut().for_each(HeldLease::disarm);
                for l in led {
                    l.leader.publish(Err(error.clone()));
                }
                return Err(error);
            }
        };
        let took = started.elapsed() / u32::try_from(loaded.len().max(1)).unwrap_or(u32::MAX);
        // Stamped before the store is written, as on the single-key path.
        let (found_expiry, absent_expiry) = (self.loaded_expiry(true), self.loaded_expiry(false));
        let fill_began = self.read_seq.fetch_add(1, Ordering::SeqCst);
        let mut fills = Vec::new();
        let mut sets = Vec::new();
        let mut fill_index = Vec::new();
        let mut outcome = vec![FillOutcome::Refused; led.len()];
        for (
            i,
            Led {
                key, full, store_key, ..
            },
        ) in led.iter().enumerate()
        {
            if !to_load[i] {
                continue;
            }
            if self.core.retry.is_pending(&self.pending_key(full)) {
                // Not filled while an invalidation of the key is pending,
                // and its lease given back rather than left to run out.
                if let Some(token) = tokens[i] {
                    let _ = self.call(store.release(store_key, token)).await;
                }
                continue;
            }
            let full = store_key;
            // A key the loader did not return is "not found": a tombstone
            // with negative caching, nothing otherwise.
            let bytes = self.encode(loaded.get(key), took).ok().flatten();
            match (bytes, tokens[i], lease_mode) {
                (Some((value, ttl)), Some(token), true) => {
                    fills.push(Fill {
                        key: full.clone(),
                        token,
                        value,
                        ttl,
                    });
                    fill_index.push(i);
                }
                (None, Some(token), true) => {
                    let _ = self.call(store.release(full, token)).await;
                }
                (Some((value, ttl)), _, false) => {
                    sets.push((full.clone(), value, ttl));
                    outcome[i] = FillOutcome::Stored;
                }
                _ => {}
            }
        }
        if !fills.is_empty() {
            let released: Vec<(String, LeaseToken)> = fills.iter().map(|f| (f.key.clone(), f.token)).collect();
            match self.call(store.fill_many(fills)).await {
                Ok(results) => {
                    for (i, result) in fill_index.into_iter().zip(results) {
                        if result == FillOutcome::Refused {
                            self.record(Event::FillRefused);
                            crate::telemetry::record_fill_refused();
                        }
                        outcome[i] = result;
                    }
                }
                Err(_) => {
                    // As in the single-key fill: a lease the fill did not
                    // clear is given back, not left for readers to wait out.
                    for (key, token) in released {
                        let _ = self.call(store.release(&key, token)).await;
                    }
                }
            }
        }
        if !sets.is_empty() {
            let _ = self.call(store.set_many(sets)).await;
        }
        held.iter_mut().for_each(HeldLease::disarm);
        for (i, Led { key, leader, .. }) in led.into_iter().enumerate() {
            if !to_load[i] {
                leader.publish(Ok(Settled {
                    value: found.values.get(&key).cloned(),
                    source: Source::Coalesced,
                    settled_at: looked_at,
                    expires_at_ms: found.expiries.get(&key).copied(),
                    filled: false,
                }));
                continue;
            }
            let value = loaded.remove(&key);
            // Only a fenced fill (a lease) proves that no invalidation came
            // between the load and the fill; an unconditional one (`set`)
            // proves nothing, so its value dates from the load's start.
            let settled_at = if lease_mode && outcome[i] == FillOutcome::Stored {
                fill_began
            } else {
                load_began
            };
            let expires_at_ms = if value.is_some() { found_expiry } else { absent_expiry };
            leader.publish(Ok(Settled {
                value: value.clone(),
                source: Source::Loaded,
                settled_at,
                expires_at_ms,
                // An unconditional `set` is not known to have landed.
                filled: lease_mode && outcome[i] == FillOutcome::Stored,
            }));
            found.insert(key, value, expires_at_ms);
        }
        Ok(())
    }
}
