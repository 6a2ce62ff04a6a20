//! The L1 tier itself: a namespace's in-process copy of values, fenced
//! against invalidations, and the registry of the namespaces of one `Aside`
//! that a local write evicts. The read entry points that consult it are in
//! `engine::l1`.
//!
//! Owns the local copy of values and its coherence with invalidations. An L1
//! hit never touches the network. The hazard is a fill racing an
//! invalidation: a reader reads the store (old value), an invalidation
//! arrives, then the reader installs the old value locally, where no later
//! invalidation would remove it. An epoch counter closes it: every
//! invalidation bumps the epoch *before* evicting, and a filler installs
//! only if the epoch it saw before reading the store is unchanged *after*
//! installing. A filler checks the epoch and inserts under its stripe's
//! lock, and every move of the epoch bumps and evicts under the same lock:
//! either the filler sees the bump or the eviction comes after the
//! install. (Checking, inserting and checking again without a lock, as the
//! first version did, left the old value visible between the insert and
//! the filler's own eviction of it: a read that began after the
//! invalidation, or after a forced refresh installed its value over it,
//! could be served it.)
//!
//! A forced refresh replaces the value below while readers of the same key
//! may hold the old one, read from the store before its fill, with an
//! epoch taken after the refresh's own eviction: no invalidation comes
//! between to fence them. So the refresh moves the epoch on itself
//! ([`L1::advance`]) and installs its value under the new one: those
//! readers' fills are refused. It moves the epoch on even when something
//! else moved it since the refresh took it (an invalidation of this key,
//! or of any key on its stripe, or a clear): a reader that took the newer
//! epoch may still have read the replaced value before the refresh's fill,
//! and only a move after the fill refuses it. The refresh's own value is
//! then not installed (an invalidation may have come after its load).
//!
//! Entries are keyed by the part of the full key after the namespace's
//! prefix (the *local key*), which is the same for every entry, and the
//! cache itself by a 64-bit hash of the local key: a hit hashes a few
//! bytes written on the stack (see `key::inline_key_part`) instead of
//! building a `String` and hashing it with SipHash, and compares no key
//! strings inside moka. The entry keeps its local key, and a hit whose key
//! differs (two keys with one hash) is a miss: a collision can never
//! answer with another key's value. Colliding keys share one slot, so an
//! install of one replaces the other, and an eviction of either removes
//! whichever is there: both only cost a reload. The hash is seeded per L1
//! at random, so which keys collide cannot be chosen from outside.
//!
//! Epochs are striped: a key's fills and invalidations use the epoch of
//! its stripe (one of [`EPOCH_STRIPES`], by the same hash), so an
//! invalidation makes only the concurrent fills of keys on its stripe skip
//! the L1 once, not those of the whole namespace, and no map of per-key
//! epochs grows with the keys. Clearing the L1 bumps every stripe.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache;
use smol_str::SmolStr;

/// Settings of a namespace's L1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct L1Config {
    pub(crate) max_entries: u64,
    pub(crate) ttl: Duration,
}

/// The longest life an L1 entry is given. The builder refuses an L1 TTL
/// over `MAX_DURATION` (ten years), so this only keeps `L1` itself safe
/// for any TTL: `Duration::MAX` would overflow `Instant` and exceed what
/// moka accepts.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Epoch stripes per L1 (see the module documentation).
const EPOCH_STRIPES: usize = 64;

/// A local copy, the local key it is the copy of (what a hit checks its
/// key against), and until when it may be served: the shorter of the L1's
/// TTL and what is left of the entry's own logical life (a tombstone's
/// negative TTL, a value's TTL as its header gives it).
///
/// Cloned by every hit (moka's `get` returns a clone): the key is a
/// [`SmolStr`], whose bytes sit inline up to 23 bytes (an integer key, a
/// short slug), so that cloning it is a copy, not the two atomic
/// operations of a reference count as with the `Arc<str>` it replaced
/// (a longer key is still one).
///
/// The deadline is checked by the hit itself, not by a moka `Expiry`: a
/// per-entry expiry made every moka read convert clocks and ask the
/// policy again (about 250 of an L1 hit's instructions under callgrind,
/// `scripts/profile-hits l1`), where one comparison with `Instant::now()`
/// does. A read that finds its entry past the deadline removes it (see
/// [`L1::get_local`]); moka's own `time_to_live` (the L1's TTL, the
/// longest any entry may live) removes what nobody reads again.
///
/// An entry that may live the whole TTL (the common case: an L1's TTL is
/// shorter than its values' lives) has no deadline of its own (`None`):
/// moka's `time_to_live`, counted from the insert, already bounds it, and
/// its hits read no clock beside the one moka's lookup reads (a read is 40–70 ns on a virtual machine, a
/// sixth of the hit: `scripts/time-hits`, `l1_profile:l1-short-ttl`).
#[derive(Clone)]
struct Local<V> {
    key: SmolStr,
    value: Option<V>,
    until: Option<Instant>,
}

/// moka's hasher of the L1's keys, which are already hashes
/// ([`L1::hash`]): it passes them through instead of hashing them again.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is called for a `u64` key; this keeps any other
        // use correct.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(MIX);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// An odd constant with well-spread bits (the golden ratio's fraction).
const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The high and low halves of `a * b` folded together: every input bit
/// reaches many output bits in one multiplication.
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

pub(crate) struct L1<V> {
    cache: Cache<u64, Local<V>, BuildHasherDefault<Prehashed>>,
    ttl: Duration,
    epochs: [AtomicU64; EPOCH_STRIPES],
    /// Held by a fill across its epoch check and insert, and by every move
    /// of the epoch across its bump and eviction (see the module docs).
    /// Hits take no lock.
    moves: [std::sync::Mutex<()>; EPOCH_STRIPES],
    /// Length of the namespace's key prefix, cut off every full key.
    prefix_len: usize,
    /// This L1's hash seed (see the module documentation).
    seed: u64,
    /// Every key's hash, when a test forces collisions.
    #[cfg(test)]
    forced_hash: Option<u64>,
}

impl<V: Clone + Send + Sync + 'static> L1<V> {
    pub(crate) fn new(config: L1Config, prefix_len: usize) -> Self {
        L1 {
            cache: Cache::builder()
                .max_capacity(config.max_entries)
                .time_to_live(config.ttl.min(FAR))
                .build_with_hasher(BuildHasherDefault::default()),
            ttl: config.ttl,
            epochs: std::array::from_fn(|_| AtomicU64::new(0)),
            moves: std::array::from_fn(|_| std::sync::Mutex::new(())),
            prefix_len,
            seed: rand::random(),
            #[cfg(test)]
            forced_hash: None,
        }
    }

    /// The entry key of a full key: the part after the namespace's prefix.
    fn local<'a>(&self, full: &'a str) -> &'a str {
        full.get(self.prefix_len..).unwrap_or(full)
    }

    /// The hash of a local key: its moka key and its epoch stripe. Words
    /// of 8 bytes, each folded in by one multiplication, then the length.
    fn hash(&self, local: &[u8]) -> u64 {
        #[cfg(test)]
        if let Some(forced) = self.forced_hash {
            return forced;
        }
        let mut h = self.seed;
        let mut words = local.chunks_exact(8);
        for word in &mut words {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            h = folded_multiply(h ^ word, MIX);
        }
        let rest = words.remainder();
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = folded_multiply(h ^ u64::from_le_bytes(last), MIX);
        folded_multiply(h ^ local.len() as u64, MIX)
    }

    /// The local value of a full key: `Some(None)` is a cached "not found".
    pub(crate) fn get(&self, full: &str) -> Option<Option<V>> {
        self.get_local(self.local(full).as_bytes())
    }

    /// The local value of an entry key (a full key without its prefix),
    /// if the entry in its slot is that key's (not a colliding key's) and
    /// within its life.
    ///
    /// An entry found past its life is removed here, under its stripe's
    /// lock, which every install holds too: only a dead entry is removed,
    /// never one installed meanwhile. Left in place, a dead entry that was
    /// read often would keep its slot (and win moka's admission contests
    /// against new keys) until the L1's TTL, and its key, if it is never
    /// installed again (a "not found" without negative caching), would
    /// keep finding it. A removal never serves anything stale, so it moves
    /// no epoch.
    pub(crate) fn get_local(&self, local: &[u8]) -> Option<Option<V>> {
        let hash = self.hash(local);
        let found = self.cache.get(&hash)?;
        if found.key.as_bytes() != local {
            return None;
        }
        let Some(until) = found.until else {
            return Some(found.value);
        };
        let now = Instant::now();
        if now < until {
            return Some(found.value);
        }
        let _no_fill = self.lock_stripe(hash);
        if self
            .cache
            .get(&hash)
            .is_some_and(|current| current.until.is_some_and(|until| until <= now))
        {
            self.cache.invalidate(&hash);
        }
        None
    }

    /// The epoch stripe of an entry key's hash.
    fn stripe(&self, hash: u64) -> &AtomicU64 {
        &self.epochs[Self::stripe_index(hash)]
    }

    fn stripe_index(hash: u64) -> usize {
        (hash % EPOCH_STRIPES as u64) as usize
    }

    /// Holds the lock of the stripe of `hash`: no fill and no move of its
    /// epoch interleaves with the caller's.
    fn lock_stripe(&self, hash: u64) -> std::sync::MutexGuard<'_, ()> {
        self.moves[Self::stripe_index(hash)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The hash and epoch stripe of a full key.
    fn slot(&self, full: &str) -> (u64, &AtomicU64) {
        let hash = self.hash(self.local(full).as_bytes());
        (hash, self.stripe(hash))
    }

    /// The epoch of `full`'s stripe, to hand to [`L1::install`] after
    /// reading the store.
    pub(crate) fn epoch(&self, full: &str) -> u64 {
        self.slot(full).1.load(Ordering::SeqCst)
    }

    /// Installs a value read from the store after `epoch` was taken, for at
    /// most `life` (and the L1's TTL), unless an invalidation of a key on the
    /// same stripe happened since.
    pub(crate) fn install(&self, full: &str, value: Option<V>, epoch: u64, life: Duration) {
        let (hash, stripe) = self.slot(full);
        let life = life.min(self.ttl);
        if life.is_zero() {
            return;
        }
        let _no_move = self.lock_stripe(hash);
        if stripe.load(Ordering::SeqCst) == epoch {
            let key = self.local(full).into();
            // A life of the whole TTL is moka's to bound (see `Local`); a
            // shorter one is under `FAR`, so the sum cannot overflow.
            let until = (life < self.ttl.min(FAR)).then(|| Instant::now() + life);
            self.cache.insert(hash, Local { key, value, until });
        }
    }

    /// Moves `full`'s stripe on and evicts `full`, for a forced refresh
    /// that replaced the value below after taking `epoch`; returns the new
    /// epoch to install the refresh's value under, or `None` when the
    /// stripe had moved since `epoch` (an invalidation is never passed over:
    /// nothing to install then).
    ///
    /// The stripe moves on in both cases. Readers that took any epoch
    /// before this call may have read the replaced value before the
    /// refresh's fill, and their fills must be refused (or removed, if they
    /// came first). A compare-and-swap that gave up when the stripe had
    /// moved left the readers of the newer epoch free to install the
    /// replaced value after the refresh returned: an invalidation of another
    /// key on the stripe between the refresh's eviction and its fill was
    /// enough (the history checker's I1Refresh, seed 12443787499811566399).
    pub(crate) fn advance(&self, full: &str, epoch: u64) -> Option<u64> {
        let (hash, stripe) = self.slot(full);
        let _no_fill = self.lock_stripe(hash);
        let previous = stripe.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(&hash);
        (previous == epoch).then(|| previous.wrapping_add(1))
    }

    /// Evicts everything (the bus lost messages, so any entry may be stale).
    pub(crate) fn clear(&self) {
        // A fill that inserted before its stripe's bump is removed below,
        // one after it is refused by its epoch.
        for (epoch, moves) in self.epochs.iter().zip(&self.moves) {
            let _no_fill = moves.lock().unwrap_or_else(|e| e.into_inner());
            epoch.fetch_add(1, Ordering::SeqCst);
        }
        self.cache.invalidate_all();
    }

    /// Evicts `full` (an invalidation, local or from another process), and
    /// with it whatever key shares its slot.
    pub(crate) fn evict(&self, full: &str) {
        let (hash, stripe) = self.slot(full);
        let _no_fill = self.lock_stripe(hash);
        stripe.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(&hash);
    }
}

/// What a namespace exposes to its peers and the bus listener.
pub(crate) trait Evictor: Send + Sync {
    fn evict_keys(&self, keys: &[String]);
    fn clear_local(&self);
}

/// The namespaces with an L1 in one `Aside`, by name, held weakly: what a
/// local write evicts (every namespace of that name, not only the writer's:
/// the bus does not echo a process's own messages back to it) and what the
/// bus listener delivers other processes' invalidations to.
///
/// Also the keys an update of this `Aside` is fencing now: no L1 of the
/// `Aside` installs them until the update ends (see [`Peers::fence`]).
#[derive(Default)]
pub(crate) struct Peers {
    by_name: std::sync::Mutex<std::collections::HashMap<String, Vec<std::sync::Weak<dyn Evictor>>>>,
    /// Full keys under an update's fence, with how many updates hold each.
    fenced: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    /// How many fences are held: while none is, an L1 install checks this
    /// counter and skips the mutex above.
    fences_held: std::sync::atomic::AtomicUsize,
}

/// A key kept out of every L1 of an `Aside` while an update fences it;
/// let go on drop.
pub(crate) struct L1Fence<'a> {
    peers: &'a Peers,
    key: String,
}

impl Drop for L1Fence<'_> {
    fn drop(&mut self) {
        self.peers.fences_held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let mut fenced = self.peers.fenced.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = fenced.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                fenced.remove(&self.key);
            }
        }
    }
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

    /// Keeps `key` out of every L1 of this `Aside` until the guard drops.
    ///
    /// Why a marker and not only evictions: while an update's write runs,
    /// a reader of this process may read the old row from the database
    /// (its store call failed, its lease wait ran out) under an epoch taken
    /// after the update's eviction, and install it; once the write has
    /// committed, another reader may return the new row from the database
    /// and a third the old one from the L1, which no order explains. The
    /// update evicts once more at its end, after the marker is gone, so an
    /// install that raced the marker's removal is refused by its epoch or
    /// evicted.
    pub(crate) fn fence(&self, key: &str) -> L1Fence<'_> {
        // Counted before the update's evictions: a read that begins after
        // them sees the count, one that began before is refused by its epoch.
        self.fences_held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self
            .fenced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default() += 1;
        L1Fence {
            peers: self,
            key: key.to_owned(),
        }
    }

    /// True while an update of this `Aside` fences `key`.
    pub(crate) fn is_fenced(&self, key: &str) -> bool {
        if self.fences_held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            return false;
        }
        self.fenced.lock().unwrap_or_else(|e| e.into_inner()).contains_key(key)
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

    /// A read that finds its entry past its life removes it, so a dead
    /// entry neither lingers until the L1's TTL nor holds its slot (fails
    /// with the removal in `get_local` taken out).
    #[test]
    fn an_entry_read_past_its_life_is_removed() {
        let l1 = l1();
        let life = Duration::from_nanos(1);
        l1.install("ns:a", Some(1), l1.epoch("ns:a"), life);
        let installed = Instant::now();
        // The clock moves on past the entry's deadline; no timer involved.
        while Instant::now() <= installed + life {
            std::hint::spin_loop();
        }
        assert_eq!(l1.get("ns:a"), None, "a dead entry was served");
        l1.cache.run_pending_tasks();
        assert_eq!(l1.cache.entry_count(), 0, "the dead entry was left in place");
        l1.install("ns:b", Some(2), l1.epoch("ns:b"), Duration::from_secs(60));
        assert_eq!(l1.get("ns:b"), Some(Some(2)));
    }

    /// An entry whose life is at least the L1's TTL carries no deadline of
    /// its own (its hits read no clock), and still ends with the TTL,
    /// which moka's `time_to_live` enforces; a shorter life keeps its
    /// deadline (fails if every entry gets one, or none does).
    #[test]
    fn an_entry_that_may_live_the_whole_ttl_is_bounded_by_moka_alone() {
        // Long enough that the first hit comes before it on a loaded machine.
        let ttl = Duration::from_secs(2);
        let l1 = L1::new(L1Config { max_entries: 100, ttl }, "ns:".len());
        l1.install("ns:long", Some(1u32), l1.epoch("ns:long"), Duration::from_secs(3600));
        l1.install("ns:short", Some(2u32), l1.epoch("ns:short"), Duration::from_millis(10));
        let installed = Instant::now();
        assert!(l1.cache.get(&l1.slot("ns:long").0).is_some_and(|e| e.until.is_none()));
        assert!(l1.cache.get(&l1.slot("ns:short").0).is_some_and(|e| e.until.is_some()));
        assert_eq!(l1.get("ns:long"), Some(Some(1)));
        // Read after the installs returned: past it, moka's own clock is past the TTL too.
        while let Some(left) = (installed + ttl).checked_duration_since(Instant::now()) {
            std::thread::sleep(left + Duration::from_millis(1));
        }
        assert_eq!(l1.get("ns:long"), None, "served past the L1's TTL");
        assert_eq!(l1.get("ns:short"), None, "served past its own life");
    }

    /// An L1 TTL and an entry life of `Duration::MAX` ("no bound") keep the
    /// entry, and panic nowhere (fails with either `min(FAR)` removed:
    /// `Instant + Duration::MAX` overflows, and moka refuses a TTL over
    /// 1,000 years).
    #[test]
    fn a_ttl_of_duration_max_bounds_nothing_and_panics_nowhere() {
        let l1 = L1::new(
            L1Config {
                max_entries: 100,
                ttl: Duration::MAX,
            },
            "ns:".len(),
        );
        l1.install("ns:a", Some(1u32), l1.epoch("ns:a"), Duration::MAX);
        assert_eq!(l1.get("ns:a"), Some(Some(1)));
    }

    /// Two keys with one hash share a slot: neither ever reads the
    /// other's value, and an eviction by either key's string empties the
    /// slot (fails with the key check in `get_local` removed).
    #[test]
    fn a_hash_collision_is_a_miss_never_the_other_keys_value() {
        let mut l1 = l1();
        l1.forced_hash = Some(7);
        let (a, b) = ("ns:a", "ns:b");
        let life = Duration::from_secs(60);
        assert_eq!(l1.hash(b"a"), l1.hash(b"b"), "forced collision");

        l1.install(a, Some(1), l1.epoch(a), life);
        assert_eq!(l1.get(a), Some(Some(1)));
        assert_eq!(l1.get(b), None, "`b` read `a`'s value");
        assert_eq!(l1.get_local(b"b"), None, "`b` read `a`'s value");

        // `b` takes the slot: `a` misses now, and never reads `b`'s value.
        l1.install(b, Some(2), l1.epoch(b), life);
        assert_eq!(l1.get(b), Some(Some(2)));
        assert_eq!(l1.get(a), None, "`a` read `b`'s value");

        // An eviction by either string removes what the slot holds.
        l1.evict(a);
        assert_eq!(l1.get(b), None, "evicting `a` left its slot's entry");
        l1.install(b, Some(3), l1.epoch(b), life);
        l1.evict(b);
        assert_eq!(l1.get(b), None, "evicting `b` left it");
    }

    /// Without collisions forced, distinct keys keep distinct entries, and
    /// an eviction by string removes exactly the key's entry.
    #[test]
    fn entries_are_found_and_evicted_by_their_key_strings() {
        let l1 = l1();
        let life = Duration::from_secs(60);
        let keys: Vec<String> = (0..50).map(|i| format!("ns:k{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            l1.install(k, Some(i as u32), l1.epoch(k), life);
        }
        l1.evict(&keys[7]);
        for (i, k) in keys.iter().enumerate() {
            let want = (i != 7).then_some(Some(i as u32));
            assert_eq!(l1.get(k), want, "{k}");
            assert_eq!(l1.get_local(&k.as_bytes()[3..]), want, "{k}");
        }
        // A hash depends on every byte and on the length.
        assert_ne!(l1.hash(b"abcdefgh1"), l1.hash(b"abcdefgh2"));
        assert_ne!(l1.hash(b"a"), l1.hash(b"a\0"));
    }

    #[test]
    fn a_replacement_refuses_fills_of_its_epoch_and_yields_to_an_invalidation() {
        let l1 = l1();
        let a = "ns:a";
        let life = Duration::from_secs(60);
        let epoch = l1.epoch(a);
        let next = l1.advance(a, epoch).expect("nothing moved the stripe");
        // A reader that took the same epoch, and read the replaced value.
        l1.install(a, Some(1), epoch, life);
        assert_eq!(l1.get(a), None);
        l1.install(a, Some(2), next, life);
        assert_eq!(l1.get(a), Some(Some(2)));
        l1.evict(a);
        assert_eq!(
            l1.advance(a, next),
            None,
            "an invalidation since the epoch was passed over"
        );
    }

    #[test]
    fn a_replacement_refuses_fills_of_an_epoch_taken_after_another_invalidation() {
        let l1 = l1();
        let a = "ns:a";
        let life = Duration::from_secs(60);
        // A key on `a`'s stripe.
        let neighbour = (0..1000)
            .map(|i| format!("ns:k{i}"))
            .find(|k| std::ptr::eq(l1.slot(k).1, l1.slot(a).1))
            .expect("64 stripes");
        // The refresh took its epoch; then the neighbour was invalidated,
        // and a reader took the newer epoch and read the value the refresh
        // is replacing (before the refresh's fill).
        let refresh = l1.epoch(a);
        l1.evict(&neighbour);
        let reader = l1.epoch(a);
        assert_eq!(
            l1.advance(a, refresh),
            None,
            "an invalidation since the epoch was passed over"
        );
        l1.install(a, Some(1), reader, life);
        assert_eq!(
            l1.get(a),
            None,
            "a fill of the replaced value, read before the refresh's fill, was installed after it"
        );
        // Fills that read the store after the refresh's fill are kept.
        l1.install(a, Some(2), l1.epoch(a), life);
        assert_eq!(l1.get(a), Some(Some(2)));
    }

    #[test]
    fn an_invalidation_fences_fills_of_its_own_stripe_only() {
        let l1 = l1();
        let a = "ns:a";
        // A key on another stripe than `a`'s.
        let other = (0..1000)
            .map(|i| format!("ns:k{i}"))
            .find(|k| !std::ptr::eq(l1.slot(k).1, l1.slot(a).1))
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
