//! One logged write as it sits in the stream, and back.
//!
//! Owns the layout of a write-back stream entry (its field names and what
//! each holds), [`LoggedWrite`] (a decoded entry, what a sink is handed),
//! and the parsing of the stream replies (`XREADGROUP`, `XAUTOCLAIM`) into
//! entries. Everything here reads bytes that anyone with access to the
//! server may have written: a field that is missing, not UTF-8, not a
//! number or not a value of the codec makes that one entry [`Corrupt`],
//! with a reason; nothing panics, and one bad entry never hides the others
//! of a reply.

use std::str::FromStr;

use redis::Value;

use crate::codec::Codec;

/// The format of the entries this version writes (field `f`).
pub(crate) const FORMAT: &str = "1";

/// Field names of an entry: kept short, they are stored with every entry.
pub(crate) mod field {
    /// The entry format, [`super::FORMAT`].
    pub const FORMAT: &str = "f";
    /// The namespace's name.
    pub const NAMESPACE: &str = "ns";
    /// The key, in its `Display` form.
    pub const KEY: &str = "k";
    /// The version, a decimal `u64`.
    pub const VERSION: &str = "ver";
    /// The codec id, a decimal `u8`.
    pub const CODEC: &str = "codec";
    /// The value, as the codec encoded it.
    pub const VALUE: &str = "val";
}

/// One write taken from the log, decoded: what a
/// [`WriteBackSink`](super::WriteBackSink) applies.
///
/// # Examples
///
/// A sink's own tests can build one:
///
/// ```
/// use aside::writeback::LoggedWrite;
/// let write = LoggedWrite::new("users", 7_u64, 3, "Ada".to_string());
/// assert_eq!((write.key, write.version, write.value.as_str()), (7, 3, "Ada"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoggedWrite<K, V> {
    /// The stream entry's id (`1700000000000-0`): unique in its stream.
    pub id: String,
    /// The namespace that logged it.
    pub namespace: String,
    /// The key.
    pub key: K,
    /// The version the writer gave: apply only if above the row's.
    pub version: u64,
    /// The value.
    pub value: V,
    /// When the log took it (Unix ms, the server's clock, from the id).
    pub logged_at_ms: u64,
}

impl<K, V> LoggedWrite<K, V> {
    /// A write of `key` at `version`, with no stream id: for a sink's tests.
    pub fn new(namespace: impl Into<String>, key: K, version: u64, value: V) -> Self {
        LoggedWrite {
            id: String::new(),
            namespace: namespace.into(),
            key,
            version,
            value,
            logged_at_ms: 0,
        }
    }
}

/// An entry as the stream returned it: its id, and its fields, `None`
/// when the entry was deleted while it was pending (it only needs its
/// acknowledgement).
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub(crate) id: String,
    pub(crate) fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// Why an entry cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) String);

/// The Unix ms of a stream id (`ms-seq`), 0 if it is not one.
pub(crate) fn id_ms(id: &str) -> u64 {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().unwrap_or(0)
}

impl RawEntry {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(f, _)| f.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    fn text(&self, name: &str) -> Result<&str, Corrupt> {
        let raw = self
            .get(name)
            .ok_or_else(|| Corrupt(format!("field `{name}` is missing")))?;
        std::str::from_utf8(raw).map_err(|_| Corrupt(format!("field `{name}` is not UTF-8")))
    }

    /// Decodes the entry with `codec`, parsing its key as a `K`.
    pub(crate) fn decode<K, V: 'static>(&self, codec: &dyn Codec<V>) -> Result<LoggedWrite<K, V>, Corrupt>
    where
        K: FromStr,
    {
        let format = self.text(field::FORMAT)?;
        if format != FORMAT {
            return Err(Corrupt(format!(
                "entry format `{}` is not {FORMAT}",
                format.escape_debug()
            )));
        }
        let namespace = self.text(field::NAMESPACE)?.to_owned();
        let key_text = self.text(field::KEY)?;
        let key = key_text
            .parse::<K>()
            .map_err(|_| Corrupt(format!("key `{}` does not parse", key_text.escape_debug())))?;
        let version_text = self.text(field::VERSION)?;
        let version = version_text.parse::<u64>().map_err(|_| {
            Corrupt(format!(
                "version `{}` is not an unsigned 64-bit number",
                version_text.escape_debug()
            ))
        })?;
        let codec_text = self.text(field::CODEC)?;
        let codec_id = codec_text
            .parse::<u8>()
            .map_err(|_| Corrupt(format!("codec id `{}` is not a number", codec_text.escape_debug())))?;
        if codec_id != codec.id() {
            return Err(Corrupt(format!(
                "written with codec {codec_id}, but this flusher decodes codec {}",
                codec.id()
            )));
        }
        let raw = self
            .get(field::VALUE)
            .ok_or_else(|| Corrupt(format!("field `{}` is missing", field::VALUE)))?;
        let value = codec
            .decode(raw)
            .map_err(|e| Corrupt(format!("the value does not decode: {e}")))?;
        Ok(LoggedWrite {
            id: self.id.clone(),
            namespace,
            key,
            version,
            value,
            logged_at_ms: id_ms(&self.id),
        })
    }
}

/// A reply that is not shaped as the command's reply is (a protocol
/// problem, not a bad entry): the whole reply is refused.
#[derive(Debug)]
pub(crate) struct Malformed(pub(crate) &'static str);

fn bytes_of(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes().to_vec()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// The string at `index` of a reply's parts (an id, a cursor).
fn text_at(parts: &[Value], index: usize) -> Option<String> {
    String::from_utf8(bytes_of(parts.get(index)?)?).ok()
}

fn items(value: &Value) -> Option<&[Value]> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items),
        _ => None,
    }
}

/// One entry, `[id, [field, value, ...] | nil]`. An entry whose fields are
/// not pairs of strings keeps its id and gets one pair per string it has,
/// so that decoding finds what is missing and says so.
fn entry_of(value: &Value) -> Result<RawEntry, Malformed> {
    let parts = items(value).ok_or(Malformed("an entry is not an array"))?;
    let id = text_at(parts, 0).ok_or(Malformed("an entry has no id"))?;
    let fields = match parts.get(1) {
        None | Some(Value::Nil) => None,
        Some(Value::Map(pairs)) => Some(
            pairs
                .iter()
                .filter_map(|(f, v)| Some((bytes_of(f)?, bytes_of(v)?)))
                .collect(),
        ),
        Some(list) => {
            let flat = items(list).unwrap_or_default();
            Some(
                flat.chunks(2)
                    .filter_map(|pair| Some((bytes_of(pair.first()?)?, bytes_of(pair.get(1)?)?)))
                    .collect(),
            )
        }
    };
    Ok(RawEntry { id, fields })
}

fn entries_of(value: &Value) -> Result<Vec<RawEntry>, Malformed> {
    match value {
        Value::Nil => Ok(Vec::new()),
        other => items(other)
            .ok_or(Malformed("the entries are not an array"))?
            .iter()
            .map(entry_of)
            .collect(),
    }
}

/// The entries of an `XREADGROUP` reply for one stream: `nil` (nothing
/// came within the block), `[[stream, entries]]` (RESP2) or
/// `{stream: entries}` (RESP3).
pub(crate) fn read_reply(reply: &Value) -> Result<Vec<RawEntry>, Malformed> {
    let streams: Vec<&Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs.iter().map(|(_, entries)| entries).collect(),
        other => items(other)
            .ok_or(Malformed("XREADGROUP did not answer an array"))?
            .iter()
            .map(|stream| items(stream).and_then(|s| s.get(1)).unwrap_or(&Value::Nil))
            .collect(),
    };
    let mut all = Vec::new();
    for entries in streams {
        all.extend(entries_of(entries)?);
    }
    Ok(all)
}

/// An `XAUTOCLAIM` reply: `[next cursor, entries, deleted ids]` (the
/// third part from Redis 7 on). Deleted ids leave the pending list by the
/// claim itself.
pub(crate) fn autoclaim_reply(reply: &Value) -> Result<(String, Vec<RawEntry>), Malformed> {
    let parts = items(reply).ok_or(Malformed("XAUTOCLAIM did not answer an array"))?;
    let cursor = text_at(parts, 0).ok_or(Malformed("XAUTOCLAIM gave no cursor"))?;
    let entries = entries_of(parts.get(1).unwrap_or(&Value::Nil))?;
    Ok((cursor, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Json;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &[u8])]) -> Value {
        let flat = fields.iter().flat_map(|(f, v)| [bulk(f.as_bytes()), bulk(v)]).collect();
        Value::Array(vec![bulk(id.as_bytes()), Value::Array(flat)])
    }

    fn good(id: &str) -> Value {
        entry(
            id,
            &[
                ("f", b"1"),
                ("ns", b"users"),
                ("k", b"7"),
                ("ver", b"3"),
                ("codec", b"1"),
                ("val", b"\"Ada\""),
            ],
        )
    }

    fn decode(raw: &RawEntry) -> Result<LoggedWrite<u64, String>, Corrupt> {
        raw.decode::<u64, String>(&Json)
    }

    #[test]
    fn a_good_entry_decodes_with_its_time() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"aside:wb:users"),
            Value::Array(vec![good("1700000000123-4")]),
        ])]);
        let raw = read_reply(&reply).unwrap();
        let write = decode(&raw[0]).unwrap();
        assert_eq!((write.key, write.version, write.value.as_str()), (7, 3, "Ada"));
        assert_eq!(write.logged_at_ms, 1_700_000_000_123);
        assert_eq!(write.namespace, "users");
    }

    #[test]
    fn every_kind_of_bad_entry_is_corrupt_with_a_reason_and_never_panics() {
        let cases: Vec<(Value, &str)> = vec![
            (entry("1-0", &[("f", b"1")]), "missing"),
            (entry("1-1", &[("f", b"9"), ("ns", b"u")]), "format"),
            (
                entry(
                    "1-2",
                    &[
                        ("f", b"1"),
                        ("ns", b"u"),
                        ("k", b"\xff\xfe"),
                        ("ver", b"1"),
                        ("codec", b"1"),
                        ("val", b"1"),
                    ],
                ),
                "not UTF-8",
            ),
            (
                entry(
                    "1-3",
                    &[
                        ("f", b"1"),
                        ("ns", b"u"),
                        ("k", b"seven"),
                        ("ver", b"1"),
                        ("codec", b"1"),
                        ("val", b"1"),
                    ],
                ),
                "does not parse",
            ),
            (
                entry(
                    "1-4",
                    &[
                        ("f", b"1"),
                        ("ns", b"u"),
                        ("k", b"7"),
                        ("ver", b"-1"),
                        ("codec", b"1"),
                        ("val", b"1"),
                    ],
                ),
                "version",
            ),
            (
                entry(
                    "1-5",
                    &[
                        ("f", b"1"),
                        ("ns", b"u"),
                        ("k", b"7"),
                        ("ver", b"1"),
                        ("codec", b"2"),
                        ("val", b"1"),
                    ],
                ),
                "codec 2",
            ),
            (
                entry(
                    "1-6",
                    &[
                        ("f", b"1"),
                        ("ns", b"u"),
                        ("k", b"7"),
                        ("ver", b"1"),
                        ("codec", b"1"),
                        ("val", b"{not json"),
                    ],
                ),
                "does not decode",
            ),
            // Odd field list, and a field that is not a string.
            (
                Value::Array(vec![
                    bulk(b"1-7"),
                    Value::Array(vec![bulk(b"f"), Value::Array(vec![]), bulk(b"ns")]),
                ]),
                "missing",
            ),
        ];
        for (value, why) in cases {
            let raw = entry_of(&value).unwrap();
            let err = decode(&raw).expect_err(why);
            assert!(err.0.contains(why), "{why}: {}", err.0);
        }
    }

    #[test]
    fn deleted_entries_and_odd_replies_are_told_apart() {
        let deleted = Value::Array(vec![bulk(b"5-0"), Value::Nil]);
        assert!(entry_of(&deleted).unwrap().fields.is_none());
        assert!(read_reply(&Value::Nil).unwrap().is_empty());
        assert!(read_reply(&Value::Int(3)).is_err());
        assert!(entry_of(&Value::Array(vec![Value::Nil])).is_err());
        let claim = Value::Array(vec![
            bulk(b"0-0"),
            Value::Array(vec![good("2-0")]),
            Value::Array(vec![]),
        ]);
        let (cursor, entries) = autoclaim_reply(&claim).unwrap();
        assert_eq!((cursor.as_str(), entries.len()), ("0-0", 1));
        assert!(autoclaim_reply(&Value::Array(vec![])).is_err());
        assert_eq!(id_ms("12-3"), 12);
        assert_eq!(id_ms("junk"), 0);
    }
}
