//! Decoded values in a store of this process (issue 17): what the engine
//! hands a [`MemoryStore`](crate::store::memory::MemoryStore) to keep in
//! place of envelope bytes, and the hit path that reads it without
//! decoding, allocating a key, or boxing a future.
//!
//! Owns [`Decoded`], the engine's [`SharedEntry`] (a decoded [`Entry`] and
//! the codec that can encode it again), how a held value becomes an
//! [`Entry`] of this namespace's type (a downcast, or the bytes decoded
//! when another type holds the slot), and [`NsInner::local_hit_for`]. It
//! changes nothing of the lease state machine: the store swaps bytes for
//! their decoded form only under the key's lock, and only while the slot
//! still holds those bytes.

use std::any::Any;
use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::entry::Entry;
use super::state::{Fetched, NsInner, Source};
use crate::codec::Codec;
use crate::envelope::{self, Header};
use crate::error::Result;
use crate::key;
use crate::metrics::Event;
use crate::policy::Strategy;
use crate::store::{Held, SharedEntry, SharedView};

thread_local! {
    /// The key buffer of local-store hits on this thread (see
    /// [`NsInner::local_hit_for`]): a hit builds its full key here rather
    /// than in a new `String`.
    static LOCAL_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A decoded entry as a local store holds it: the value (shared by every
/// hit, which clones it out) and what it takes to give its bytes back.
///
/// Laid out to fit its allocation in 160 bytes (176 before) for a value of
/// 80, as the demo's profile is: the entry's header is held as such, not
/// as an `Option` (24 bytes), since it is absent exactly in raw mode, and
/// the length is a `u32`. `aside bench --scenario memory`: 770.0 -> 754.1
/// resident bytes per entry.
pub(crate) struct Decoded<V> {
    value: Option<V>,
    /// The entry's header; meaningless in raw mode, which has none.
    header: Header,
    /// The codec that decoded it: encodes it again for byte-level readers,
    /// and tells a namespace with the same value type but another codec
    /// that this entry is not its own (its bytes would not decode).
    codec: Arc<dyn Codec<V>>,
    raw: bool,
    /// The length of the bytes it was decoded from (bytes of 4 GiB or
    /// more are not kept decoded).
    len: u32,
    /// When the entry stops being fresh (its logical expiry), on the
    /// monotonic clock. Worked out once, at decode: a hit then compares
    /// it with the instant of its read instead of
    /// reading the wall clock and converting it to Unix milliseconds,
    /// which cost about twice as much (`scripts/profile-hits memory`).
    /// A wall-clock jump after the decode therefore does not move it for
    /// this path, where `freshness` (every other read) follows the wall
    /// clock; nor does a suspend of the machine on platforms whose
    /// monotonic clock stops while suspended (Linux, macOS), so that this
    /// path may serve the entry as fresh for up to the suspend's length
    /// past its logical expiry.
    fresh_until: FreshUntil,
}

/// [`Decoded::fresh_until`].
#[derive(Debug, Clone, Copy)]
enum FreshUntil {
    /// The entry never stops being fresh.
    Forever,
    /// Fresh while the clock is before this instant.
    Until(Instant),
    /// Already past its logical expiry when decoded. Not an instant in
    /// the past: the read that decodes an entry took its time before the
    /// decode, so only an instant before that read's would do, and the
    /// clock may not reach back that far (the entry expired before the
    /// machine booted, say). With `Instant::now()` here, an entry first
    /// read after its expiry (fail-safe keeps it in the store) was served
    /// as a fresh hit.
    Past,
}

impl FreshUntil {
    /// True when the entry is fresh at `now`.
    fn at(self, now: impl FnOnce() -> Instant) -> bool {
        match self {
            FreshUntil::Forever => true,
            FreshUntil::Until(until) => now() < until,
            FreshUntil::Past => false,
        }
    }
}

impl<V: Clone> Decoded<V> {
    /// The entry it holds, as `NsInner::decode` returned it.
    fn entry(&self) -> Entry<V> {
        Entry {
            value: self.value.clone(),
            header: (!self.raw).then_some(self.header),
        }
    }
}

impl<V: Send + Sync + 'static> SharedEntry for Decoded<V> {
    fn encode(&self) -> Option<Bytes> {
        let payload = match &self.value {
            Some(v) => self.codec.encode(v).ok()?,
            None => Vec::new(),
        };
        Some(Bytes::from(if self.raw {
            payload
        } else {
            envelope::seal(&self.header, &payload)
        }))
    }

    fn encoded_len(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    /// Decodes `bytes` into what a local store keeps; `None` when they do
    /// not decode (the caller's byte path then counts and deletes them), or
    /// are 4 GiB or more (kept as bytes, and decoded by that path per read).
    pub(crate) fn decode_shared(&self, bytes: &Bytes) -> Option<Arc<dyn SharedEntry>> {
        let len = u32::try_from(bytes.len()).ok()?;
        let entry = self.decode(bytes).ok()?;
        let fresh_until = match entry.expires_at_ms() {
            None => FreshUntil::Forever,
            Some(at) => {
                // At the precision of the wall clock, not of whole
                // milliseconds: `freshness` calls the entry expired from
                // `at` on exactly.
                let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                match Duration::from_millis(at).checked_sub(since_epoch) {
                    // Cannot overflow: `u64::MAX` ms is some 1.8e16 s, well
                    // within the monotonic clock's signed 64-bit seconds (the
                    // test `an_expiry_at_the_end_of_time_is_served_and_panics_nowhere`).
                    Some(left) if !left.is_zero() => FreshUntil::Until(Instant::now() + left),
                    _ => FreshUntil::Past,
                }
            }
        };
        // Raw mode, and only it, has no header (`NsInner::decode`).
        let header = entry.header.unwrap_or(Header {
            codec_id: 0,
            flags: 0,
            expires_at_ms: 0,
            load_time_us: 0,
        });
        Some(Arc::new(Decoded {
            value: entry.value,
            header,
            fresh_until,
            codec: self.codec.clone(),
            raw: self.raw,
            len,
        }))
    }

    /// This namespace's entry, if `shared` is one: the same value type, the
    /// same codec and mode, within the size limit (everything `decode`
    /// checks of bytes). Borrowed: the caller clones the value out.
    fn own_entry<'a>(&self, shared: &'a dyn SharedEntry) -> Option<&'a Decoded<V>> {
        let decoded = shared.as_any().downcast_ref::<Decoded<V>>()?;
        let same_codec = Arc::ptr_eq(&decoded.codec, &self.codec) || decoded.codec.id() == self.codec.id();
        (same_codec && decoded.raw == self.raw && decoded.encoded_len() <= self.max_value_bytes).then_some(decoded)
    }

    /// The entry a held value stands for: its own decoded entry, or else
    /// its bytes decoded (another namespace's type holds the slot, or the
    /// bytes did not decode: counted and deleted as on any store).
    pub(crate) async fn entry_of(&self, key: &str, held: Held) -> Option<Entry<V>> {
        if let Held::Decoded(shared) = &held
            && let Some(decoded) = self.own_entry(shared.as_ref())
        {
            return Some(decoded.entry());
        }
        let bytes = held.to_bytes().unwrap_or_default();
        self.decode_hit(key, &bytes).await
    }

    /// [`crate::store::Store::peek_shared`] with this namespace's decoder.
    pub(crate) fn peek_shared(&self, full: &str) -> Option<SharedView> {
        self.core.store.peek_shared(full, &|b: &Bytes| self.decode_shared(b))
    }

    /// Hands a store of this process that keeps decoded values the decoded
    /// form of `bytes`, which this namespace has just written to `full`
    /// ([`crate::store::Store::adopt_decoded`]): the store then holds the
    /// value decoded from the write on, not from its first hit. Its bytes
    /// are freed at once instead of when a hit replaced them: 869.1 against
    /// 770.0 resident bytes per entry in `aside bench --scenario memory`
    /// (1.69x and 1.50x raw moka's), and a first hit that decodes nothing.
    /// Paid by the load: a decode and an encode (the check that the value
    /// encodes back to these bytes) before it returns.
    pub(crate) fn adopt_written(&self, full: &str, bytes: &Bytes) {
        self.core
            .store
            .adopt_decoded(full, bytes, &|b: &Bytes| self.decode_shared(b));
    }

    /// [`crate::store::Store::get_shared`] with this namespace's decoder.
    pub(crate) fn get_shared(&self, key: &str) -> Option<SharedView> {
        self.core.store.get_shared(key, &|b: &Bytes| self.decode_shared(b))
    }

    /// A fresh hit of `key` in a store of this process that keeps decoded
    /// values, counted as a hit; `None` for anything else (a miss, a value
    /// due for refresh or expired, a pending invalidation, another type's
    /// entry, a store over the network, an L1 to fill, `Versioned`, early
    /// refresh), which
    /// the full read path then handles as before. Synchronous, and its key
    /// is built in a buffer of this thread's: a hit costs the store's
    /// lookup, a clock read and the value's clone.
    pub(crate) fn local_hit_for<K: Display + ?Sized>(&self, key: &K) -> Result<Option<Fetched<V>>> {
        // Not with early refresh: XFetch's roll here and the read path's
        // own roll after a "due" would both have to say due, and a refresh
        // chance of p would become p².
        if !self.core.shares_decoded
            || self.l1.is_some()
            || self.early_refresh.is_some()
            || matches!(self.strategy, Strategy::Versioned)
        {
            return Ok(None);
        }
        LOCAL_KEY.with_borrow_mut(|buf| {
            buf.clear();
            buf.push_str(&self.key_prefix);
            key::append_key_part(buf, self.key_prefix.len(), key, self.core.max_key_len)?;
            Ok(self.local_hit(buf))
        })
    }

    fn local_hit(&self, full: &str) -> Option<Fetched<V>> {
        // Before the store is read, as `read_cached` does: a check after it
        // could follow the replay of a queued invalidation that the read
        // preceded.
        if self.core.retry.is_pending(full) {
            return None;
        }
        let view = match self.strategy {
            Strategy::Lease => self.peek_shared(full)?,
            _ => self.get_shared(full)?,
        };
        let SharedView {
            value: Some(Held::Decoded(shared)),
            stale: false,
            read_at,
            ..
        } = view
        else {
            return None;
        };
        let decoded = self.own_entry(shared.as_ref())?;
        // What `freshness` says of it without early refresh, which this
        // path never has (see `local_hit_for`), at the time the store read
        // it (no second clock read when the store tells it).
        if !decoded.fresh_until.at(|| read_at.unwrap_or_else(Instant::now)) {
            return None;
        }
        self.record(Event::Hit);
        Some(Fetched {
            value: decoded.value.clone(),
            source: Source::Hit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Decoded;

    /// A decoded entry of an 80-byte value (the demo's profile: an id and
    /// three strings) fits 136 bytes, so that with its reference counts its
    /// allocation is 160 bytes, not 176 (`aside bench --scenario memory`).
    /// Fails if the header goes back into an `Option` or the length into a
    /// `usize`. The sizes are a 64-bit target's.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_decoded_entry_fits_its_allocation() {
        type Profile = (i64, String, String, String);
        assert_eq!(std::mem::size_of::<Profile>(), 80);
        let size = std::mem::size_of::<Decoded<Profile>>();
        assert!(size <= 136, "Decoded<Profile> is {size} bytes");
    }
}
