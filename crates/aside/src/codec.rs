//! Codecs: how a value becomes bytes and back.
//!
//! Owns the [`Codec`] trait and the two built-in codecs, [`Json`] (default)
//! and [`MessagePack`]. Codecs know nothing of the envelope or the store.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};

/// Turns values into bytes and back.
///
/// A codec has a one-byte id written into every envelope, so an entry written
/// with one codec is never decoded with another.
pub trait Codec<V>: Send + Sync + 'static {
    /// The id stored in the envelope header. Ids below 16 are reserved for `aside`.
    fn id(&self) -> u8;
    /// Encodes `value`.
    ///
    /// # Errors
    /// A [`ErrorKind::Codec`] error when the value cannot be serialized.
    fn encode(&self, value: &V) -> Result<Vec<u8>, Error>;
    /// Decodes bytes produced by [`Codec::encode`].
    ///
    /// # Errors
    /// A [`ErrorKind::Codec`] error when the bytes are not a valid `V`.
    fn decode(&self, bytes: &[u8]) -> Result<V, Error>;
}

/// JSON through `serde_json`: readable, and what other languages write.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

/// MessagePack through `rmp-serde`, with field names kept (`to_vec_named`)
/// so that fields can be added to a type later without breaking old entries.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

impl<V: Serialize + DeserializeOwned> Codec<V> for Json {
    fn id(&self) -> u8 {
        1
    }
    fn encode(&self, value: &V) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(value).map_err(|e| Error::with_source(ErrorKind::Codec, "JSON encode failed", e))
    }
    fn decode(&self, bytes: &[u8]) -> Result<V, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::with_source(ErrorKind::Codec, "JSON decode failed", e))
    }
}

impl<V: Serialize + DeserializeOwned> Codec<V> for MessagePack {
    fn id(&self) -> u8 {
        2
    }
    fn encode(&self, value: &V) -> Result<Vec<u8>, Error> {
        rmp_serde::to_vec_named(value).map_err(|e| Error::with_source(ErrorKind::Codec, "MessagePack encode failed", e))
    }
    fn decode(&self, bytes: &[u8]) -> Result<V, Error> {
        rmp_serde::from_slice(bytes).map_err(|e| Error::with_source(ErrorKind::Codec, "MessagePack decode failed", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        id: u64,
        name: String,
    }

    #[test]
    fn both_codecs_round_trip_and_reject_garbage() {
        let user = User {
            id: 7,
            name: "Ada".into(),
        };
        for codec in [&Json as &dyn Codec<User>, &MessagePack] {
            let bytes = codec.encode(&user).unwrap();
            assert_eq!(codec.decode(&bytes).unwrap(), user);
            let err = codec.decode(&[0xc1, 0xff, 0x00]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Codec);
        }
    }

    #[test]
    fn message_pack_keeps_field_names_so_fields_can_be_added() {
        #[derive(serde::Deserialize)]
        struct UserV2 {
            id: u64,
            #[serde(default)]
            email: Option<String>,
        }
        let bytes = Codec::encode(
            &MessagePack,
            &User {
                id: 3,
                name: "x".into(),
            },
        )
        .unwrap();
        let v2: UserV2 = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!((v2.id, v2.email), (3, None));
    }
}
