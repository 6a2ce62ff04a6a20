//! Entries: a value (or a tombstone) sealed in the envelope, and its freshness.
//!
//! Owns the translation between typed values and stored bytes for one
//! namespace (codec, envelope, raw mode, size limit, logical and physical
//! TTLs) and the judgement of whether a stored value is fresh, due for an
//! early refresh, or past its logical expiry. No store access but the
//! self-healing delete of an entry that does not decode.

use std::time::Duration;

use bytes::Bytes;

use super::state::NsInner;
use crate::envelope::{self, FLAG_NEGATIVE, Header};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Event;
use crate::policy::jittered;

/// A decoded entry: `value` is `None` for a tombstone (negative caching).
#[derive(Clone)]
pub(crate) struct Entry<V> {
    pub(crate) value: Option<V>,
    /// `None` in raw mode, which has no header.
    pub(crate) header: Option<Header>,
}

impl<V> Entry<V> {
    /// The logical expiry in Unix ms, when the header has one.
    pub(crate) fn expires_at_ms(&self) -> Option<u64> {
        self.header.map(|h| h.expires_at_ms).filter(|&at| at != 0)
    }
}

/// How current a stored value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    Fresh,
    /// Still valid, but this caller drew an early refresh.
    RefreshDue,
    /// Past its logical expiry; kept only for fail-safe.
    Expired,
}

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    pub(crate) fn decode(&self, bytes: &[u8]) -> Result<Entry<V>> {
        // This namespace never writes more (`encode_for`), so a longer
        // entry is not its own: refused before a codec sees it.
        if bytes.len() > self.max_value_bytes {
            return Err(Error::new(
                ErrorKind::Codec,
                format!(
                    "corrupt entry: {} bytes, over the namespace's {}-byte limit",
                    bytes.len(),
                    self.max_value_bytes
                ),
            ));
        }
        if self.raw {
            let value = self.codec.decode(bytes)?;
            return Ok(Entry {
                value: Some(value),
                header: None,
            });
        }
        let (header, payload) = envelope::open(bytes, self.codec.id())?;
        let value = if header.is_negative() {
            None
        } else {
            Some(self.codec.decode(payload)?)
        };
        Ok(Entry {
            value,
            header: Some(header),
        })
    }

    /// Decodes a hit; corrupt bytes are counted, deleted and read as a miss.
    pub(crate) async fn decode_hit(&self, key: &str, bytes: &[u8]) -> Option<Entry<V>> {
        match self.decode(bytes) {
            Ok(entry) => Some(entry),
            // Boxed: inline, the delete's future made every hit's larger.
            Err(e) => {
                Box::pin(self.delete_undecodable(key, e)).await;
                None
            }
        }
    }

    /// Counts, logs and deletes an entry of `key` that did not decode.
    async fn delete_undecodable(&self, key: &str, error: Error) {
        self.record(Event::DecodeError);
        tracing::warn!(key = %crate::telemetry::KeyHash(key), error = %error, "undecodable cache entry deleted");
        let _ = self.call(self.core.store.delete(key)).await;
    }

    /// Encodes `value` (a tombstone for `None`) with the namespace's TTL.
    /// Returns the bytes and the TTL to store them for, or `None` when
    /// nothing is to be cached: `None` without negative caching, or a value
    /// over the size limit (counted).
    pub(crate) fn encode(&self, value: Option<&V>, load_time: Duration) -> Result<Option<(Bytes, Duration)>> {
        let logical = match value {
            Some(_) => jittered(self.ttl, self.jitter),
            None => match self.negative_ttl {
                Some(ttl) => ttl,
                None => return Ok(None),
            },
        };
        self.encode_for(value, load_time, logical)
    }

    /// As [`NsInner::encode`], valid for `logical`; the store keeps it
    /// longer by the fail-safe margin.
    pub(crate) fn encode_for(
        &self,
        value: Option<&V>,
        load_time: Duration,
        logical: Duration,
    ) -> Result<Option<(Bytes, Duration)>> {
        let payload = match value {
            Some(v) => self.codec.encode(v)?,
            None if self.raw => return Ok(None),
            None => Vec::new(),
        };
        let (bytes, physical) = if self.raw {
            (payload, logical)
        } else {
            let mut header = Header::new(self.codec.id(), Some(logical), load_time);
            if value.is_none() {
                header.flags |= FLAG_NEGATIVE;
            }
            let margin = match (value, self.fail_safe) {
                (Some(_), Some(fail_safe)) => fail_safe.max_stale,
                _ => Duration::ZERO,
            };
            (envelope::seal(&header, &payload), logical + margin)
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
        Ok(Some((Bytes::from(bytes), physical)))
    }

    pub(crate) fn freshness(&self, entry: &Entry<V>) -> Freshness {
        let Some(header) = entry.header else {
            return Freshness::Fresh;
        };
        if header.expires_at_ms == 0 {
            return Freshness::Fresh;
        }
        let now = envelope::unix_ms();
        if now >= header.expires_at_ms {
            return Freshness::Expired;
        }
        match self.early_refresh {
            Some(policy)
                if entry.value.is_some()
                    && policy.due(
                        now,
                        header.expires_at_ms,
                        Duration::from_micros(u64::from(header.load_time_us)),
                        self.ttl,
                    ) =>
            {
                Freshness::RefreshDue
            }
            _ => Freshness::Fresh,
        }
    }
}
