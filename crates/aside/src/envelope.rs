//! The bytes that go into the store: a fixed 16-byte header, then the codec's bytes.
//!
//! Owns the wire layout of an entry and nothing else: it never talks to a
//! store and never calls a codec. Layout (all integers little-endian):
//!
//! | offset | size | field                                                   |
//! |-------:|-----:|---------------------------------------------------------|
//! | 0      | 1    | magic `0xA5`                                            |
//! | 1      | 1    | format version (`1`)                                    |
//! | 2      | 1    | codec id                                                |
//! | 3      | 1    | flags: bit 0 negative entry, bit 1 compressed           |
//! | 4      | 8    | logical expiry, Unix milliseconds (0: none)             |
//! | 12     | 4    | measured load time, microseconds (saturating)           |
//!
//! Decoding checks every field it can; bytes that fail are reported as a
//! codec error, which the engine turns into a counted, self-healing miss.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind};

/// Length of the header in bytes.
pub const HEADER_LEN: usize = 16;
const MAGIC: u8 = 0xA5;
const FORMAT_VERSION: u8 = 1;

/// Flag: the entry records that the value does not exist.
pub const FLAG_NEGATIVE: u8 = 0b0000_0001;
/// Flag: the payload is compressed.
pub const FLAG_COMPRESSED: u8 = 0b0000_0010;
const KNOWN_FLAGS: u8 = FLAG_NEGATIVE | FLAG_COMPRESSED;

/// The decoded header of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Id of the codec that wrote the payload.
    pub codec_id: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Logical expiry in Unix milliseconds, 0 when none.
    pub expires_at_ms: u64,
    /// How long the load that produced the value took.
    pub load_time_us: u32,
}

impl Header {
    /// A header for a freshly loaded value.
    pub fn new(codec_id: u8, logical_ttl: Option<Duration>, load_time: Duration) -> Self {
        Header {
            codec_id,
            flags: 0,
            expires_at_ms: logical_ttl.map_or(0, |ttl| {
                unix_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            }),
            load_time_us: u32::try_from(load_time.as_micros()).unwrap_or(u32::MAX),
        }
    }

    /// True when the entry is a tombstone (the loader found nothing).
    pub fn is_negative(&self) -> bool {
        self.flags & FLAG_NEGATIVE != 0
    }
}

/// Writes `header` followed by `payload` into one buffer.
pub fn seal(header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(MAGIC);
    out.push(FORMAT_VERSION);
    out.push(header.codec_id);
    out.push(header.flags);
    out.extend_from_slice(&header.expires_at_ms.to_le_bytes());
    out.extend_from_slice(&header.load_time_us.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits stored bytes into header and payload, checking the header.
///
/// # Errors
/// A [`ErrorKind::Codec`] error when the bytes are too short, carry another
/// magic or format version, unknown flags, or a codec id other than `expected_codec`.
pub fn open(bytes: &[u8], expected_codec: u8) -> Result<(Header, &[u8]), Error> {
    let corrupt = |why: &str| Error::new(ErrorKind::Codec, format!("corrupt entry: {why}"));
    if bytes.len() < HEADER_LEN {
        return Err(corrupt("shorter than the envelope header"));
    }
    let (head, payload) = bytes.split_at(HEADER_LEN);
    if head[0] != MAGIC {
        return Err(corrupt("bad magic byte"));
    }
    if head[1] != FORMAT_VERSION {
        return Err(corrupt("unknown envelope version"));
    }
    if head[2] != expected_codec {
        return Err(corrupt("written with another codec"));
    }
    if head[3] & !KNOWN_FLAGS != 0 || head[3] & FLAG_COMPRESSED != 0 {
        return Err(corrupt("unsupported flags"));
    }
    let header = Header {
        codec_id: head[2],
        flags: head[3],
        expires_at_ms: u64::from_le_bytes(head[4..12].try_into().expect("8 bytes")),
        load_time_us: u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")),
    };
    Ok((header, payload))
}

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seal_then_open_round_trips() {
        let mut header = Header::new(1, Some(Duration::from_secs(60)), Duration::from_micros(1234));
        header.flags = FLAG_NEGATIVE;
        let bytes = seal(&header, b"{\"a\":1}");
        let (back, payload) = open(&bytes, 1).unwrap();
        assert_eq!(back, header);
        assert!(back.is_negative());
        assert_eq!(payload, b"{\"a\":1}");
    }

    #[test]
    fn open_rejects_wrong_codec_and_short_input() {
        let bytes = seal(&Header::new(2, None, Duration::ZERO), b"x");
        assert!(open(&bytes, 1).is_err());
        assert!(open(&bytes[..HEADER_LEN - 1], 2).is_err());
        assert!(open(b"{\"id\":1}", 1).is_err());
    }

    proptest! {
        #[test]
        fn open_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = open(&bytes, 1);
        }
    }
}
