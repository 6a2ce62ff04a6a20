//! Entry points for the fuzz targets under `fuzz/` and for the corpus
//! replay test (`tests/fuzz_corpus.rs`), which runs every committed corpus
//! file through the same functions on stable Rust, so a crash found once
//! stays found.
//!
//! Owns nothing but the glue: each function feeds arbitrary bytes to one
//! decoder of data that arrives from the network or from a user's file,
//! and must return (with an error or a value) without panicking and
//! without committing memory the bytes do not justify. Not a stable API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bus::Invalidation;
use crate::codec::{Codec, Json, MessagePack};
use crate::envelope;

/// A value shaped like what applications cache: integers of several widths,
/// strings, an optional field, a list, a map, a nested struct and an enum
/// with every kind of variant, so both codecs' decoders walk every path of
/// a typical derive. Also what the seed corpus is encoded from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// An id.
    pub id: u64,
    /// A signed number.
    pub balance: i64,
    /// A small number.
    pub level: u8,
    /// A flag.
    pub active: bool,
    /// Text.
    pub name: String,
    /// An optional field, absent in older entries.
    #[serde(default)]
    pub email: Option<String>,
    /// A list.
    pub tags: Vec<String>,
    /// A map.
    pub counters: BTreeMap<String, u32>,
    /// A nested struct.
    pub address: Option<Address>,
    /// An enum.
    pub role: Role,
    /// Raw bytes.
    pub avatar: Vec<u8>,
}

/// The nested struct of [`Sample`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Address {
    /// A street.
    pub street: String,
    /// A postcode, as a pair of numbers.
    pub postcode: (u16, u16),
}

/// The enum of [`Sample`]: a unit, a newtype, a tuple and a struct variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Role {
    /// A unit variant.
    Guest,
    /// A newtype variant.
    Member(u32),
    /// A tuple variant.
    Moderator(String, u8),
    /// A struct variant.
    Admin {
        /// A list of numbers.
        scopes: Vec<u16>,
    },
}

/// The stored-entry envelope: [`envelope::open`] with either codec id.
/// Whatever it accepts must seal back to the same bytes.
pub fn envelope(data: &[u8]) {
    for codec_id in [1, 2] {
        if let Ok((header, payload)) = envelope::open(data, codec_id) {
            assert_eq!(header.codec_id, codec_id);
            assert_eq!(
                envelope::seal(&header, payload),
                data,
                "open then seal changed the bytes"
            );
        }
    }
}

/// The JSON codec decoding a [`Sample`]; what it accepts must survive an
/// encode and a second decode unchanged.
pub fn codec_json(data: &[u8]) {
    round_trip(&Json, data);
}

/// The MessagePack codec decoding a [`Sample`]; what it accepts must
/// survive an encode and a second decode unchanged.
pub fn codec_msgpack(data: &[u8]) {
    round_trip(&MessagePack, data);
}

fn round_trip(codec: &dyn Codec<Sample>, data: &[u8]) {
    if let Ok(value) = codec.decode(data) {
        let bytes = codec.encode(&value).expect("a decoded value encodes");
        let again = codec.decode(&bytes).expect("an encoded value decodes");
        assert_eq!(again, value, "decode, encode, decode changed the value");
    }
}

/// The bus's decoder of a received invalidation (the NATS and the Redis
/// bus share it); what it accepts must survive a publish's encoding.
pub fn bus_message(data: &[u8]) {
    if let Some(message) = Invalidation::decode(data) {
        let bytes = serde_json::to_vec(&message).expect("an invalidation encodes");
        assert_eq!(
            Invalidation::decode(&bytes),
            Some(message),
            "decode, encode, decode changed the message"
        );
    }
}

/// memcached's meta responses and `stats` lines, as a server sent them
/// (the first byte picks which).
#[cfg(feature = "memcached")]
pub fn memcached_responses(data: &[u8]) {
    crate::store::memcached::parse_untrusted(data);
}
