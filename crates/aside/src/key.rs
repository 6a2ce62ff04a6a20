//! Cache keys: `{prefix}{namespace}:{key}`, checked before they reach a store.
//!
//! Owns key formatting and validation only. A key with a control character
//! or whitespace is refused with a clear error (it could otherwise smuggle a
//! command into a text protocol such as memcached's); a key longer than the
//! bound is replaced by a digest, so any length is accepted.
//!
//! Also owns the names of an entry's companion keys ([`version_key`],
//! [`versioned_key`], [`lock_key`]). Each one carries the entry's full key
//! as its Redis Cluster hash tag (`{user:1}#ver`), so that on a cluster it
//! lives in the entry's own slot, on the entry's node: a multi-key step
//! stays valid, and an entry's keys fail over together. The entry's own
//! key is left as it is (`user:1`): Redis hashes a key without a tag whole,
//! which is exactly the tag's content, and raw mode keeps sharing plain
//! keys with other programs. On one server a tag is just two characters.

use std::fmt::{Display, Write};

use crate::error::{Error, ErrorKind};

/// Default bound on a full key's length, in bytes ([`AsideBuilder::max_key_len`](crate::AsideBuilder::max_key_len)):
/// memcached's limit. Longer keys are replaced by a digest.
pub const DEFAULT_MAX_KEY_LEN: usize = 250;

/// Builds the full key of `key` in a namespace whose keys start with `prefix_ns`
/// (`{prefix}{namespace}:`).
///
/// # Errors
/// [`ErrorKind::InvalidKey`] when the key's `Display` form is empty or holds a
/// control character or whitespace.
pub(crate) fn full_key<K: Display + ?Sized>(prefix_ns: &str, key: &K, max_len: usize) -> Result<String, Error> {
    let mut full = String::with_capacity(prefix_ns.len() + 24);
    full.push_str(prefix_ns);
    append_key_part(&mut full, prefix_ns.len(), key, max_len)?;
    Ok(full)
}

/// Appends the part of a full key after its `prefix_len`-byte prefix: the
/// key's `Display` form, checked, or `#` and its digest when the full key
/// would exceed `max_len`. `buf` may hold the prefix (as [`full_key`] does)
/// or be empty, for a caller that only needs the part.
///
/// The two forms never collide: a key whose `Display` form starts with `#`
/// is written with one more `#` in front (`#a` becomes `##a`), so a part
/// that starts with `#` followed by anything but `#` is always a digest. A
/// crafted key such as `#<40 hex digits>` therefore has an entry of its own
/// and can neither read nor overwrite the entry of the long key it imitates.
///
/// # Errors
/// As [`full_key`].
pub(crate) fn append_key_part<K: Display + ?Sized>(
    buf: &mut String,
    prefix_len: usize,
    key: &K,
    max_len: usize,
) -> Result<(), Error> {
    let start = buf.len();
    write_display(buf, key).expect("writing to a String cannot fail");
    let part = &buf[start..];
    if part.is_empty() {
        return Err(Error::new(ErrorKind::InvalidKey, "empty key"));
    }
    if let Some(bad) = part.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("key {part:?} holds {bad:?}: control characters and whitespace are not allowed"),
        ));
    }
    let escaped = part.starts_with(HASHED);
    if prefix_len + part.len() + usize::from(escaped) > max_len {
        let digest = sha1_smol::Sha1::from(part.as_bytes()).digest().to_string();
        buf.truncate(start);
        buf.push(HASHED);
        buf.push_str(&digest);
    } else if escaped {
        buf.insert(start, HASHED);
    }
    Ok(())
}

/// Writes `key`'s `Display` form to `out`: the same bytes as
/// `write!(out, "{key}")`, without `core::fmt` for the key types most
/// namespaces have (the integers, `str` and `String`).
///
/// `core::fmt` was most of a hit's key cost: for a `u64` key, about 330
/// instructions of a memory-store hit's 2,800 went to `fmt::write`,
/// `u64`'s `Display` and `pad_integral` (`scripts/profile-hits memory`).
/// `castaway`'s casts are resolved when the function is made for `K`, so
/// the other types pay nothing for the checks and keep their own
/// `Display`. A type of the user's own, even a newtype over `u64`, takes
/// the `core::fmt` path, since its `Display` may say anything.
fn write_display<K: Display + ?Sized, W: Write>(out: &mut W, key: &K) -> std::fmt::Result {
    if let Some(digits) = integer_text(key, &mut itoa::Buffer::new()) {
        return out.write_str(digits);
    }
    if let Ok(s) = castaway::cast!(key, &str) {
        return out.write_str(s);
    }
    if let Ok(s) = castaway::cast!(key, &String) {
        return out.write_str(s);
    }
    write!(out, "{key}")
}

/// `key`'s decimal form, written in `buf`, when it is one of the integer
/// types: ASCII digits after an optional `-`, never empty, never starting
/// with `#`, at most 40 bytes, so no check of [`append_key_part`]'s can
/// refuse or escape it.
fn integer_text<'b, K: ?Sized>(key: &K, buf: &'b mut itoa::Buffer) -> Option<&'b str> {
    macro_rules! integers {
        ($($int:ty),*) => {$(
            if let Ok(n) = castaway::cast!(key, &$int) {
                return Some(buf.format(*n));
            }
        )*};
    }
    integers!(u64, i64, u32, i32, usize, isize, u128, i128, u16, i16, u8, i8);
    None
}

/// Longest key part [`inline_key_part`] writes on the stack; longer ones
/// take [`append_key_part`]'s buffer. Integers, UUIDs and most composite
/// keys fit.
pub(crate) const INLINE_PART: usize = 64;

/// A key part written on the stack by [`inline_key_part`].
pub(crate) struct InlinePart {
    bytes: [u8; INLINE_PART],
    len: usize,
    /// False once a write did not fit, or held a character
    /// [`append_key_part`] refuses: the caller must take that path.
    fast: bool,
}

impl InlinePart {
    /// The part's bytes: what [`append_key_part`] appends for the same key.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for InlinePart {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // ASCII graphic characters are exactly the ASCII ones that are
        // neither control nor whitespace; anything else is checked as
        // `append_key_part` does, char by char.
        let clean = s.bytes().all(|b| b.is_ascii_graphic()) || !s.chars().any(|c| c.is_control() || c.is_whitespace());
        let escape = self.len == 0 && s.starts_with(HASHED);
        let end = self.len + s.len() + usize::from(escape);
        if !self.fast || !clean || end > INLINE_PART {
            // Declined: the rest is ignored, and the caller takes the
            // `String` path. Not an error, which a `Display` impl that
            // unwraps its writes would turn into a panic.
            self.fast = false;
            return Ok(());
        }
        if escape {
            self.bytes[0] = HASHED as u8;
            self.len = 1;
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The part of a full key after its `prefix_len`-byte prefix, as
/// [`append_key_part`] writes it, built on the stack: `None` when that
/// function must decide (an empty key, a character it refuses, which it
/// reports with its error, a part too long for the stack or one it
/// replaces by a digest). An L1 hit thus allocates nothing and touches
/// no thread-local buffer for the usual short key.
pub(crate) fn inline_key_part<K: Display + ?Sized>(prefix_len: usize, key: &K, max_len: usize) -> Option<InlinePart> {
    let mut part = InlinePart {
        bytes: [0; INLINE_PART],
        len: 0,
        fast: true,
    };
    if let Some(digits) = integer_text(key, &mut itoa::Buffer::new()) {
        // Clean by construction: `InlinePart::write_str`'s checks would
        // cost about a third of the key's work on an L1 hit.
        part.bytes[..digits.len()].copy_from_slice(digits.as_bytes());
        part.len = digits.len();
        return (prefix_len + part.len <= max_len).then_some(part);
    }
    let written = write_display(&mut part, key);
    let fits = prefix_len + part.len <= max_len;
    (written.is_ok() && part.fast && part.len > 0 && fits).then_some(part)
}

/// The first character of a hashed key part, doubled in front of a literal
/// part that starts with it (see [`append_key_part`]).
const HASHED: char = '#';

/// The hash tag that puts a key in `full`'s slot: `full` itself when it
/// already has a tag of its own (a user key such as `{a}b`), else `{full}`.
///
/// A full key that holds a `}` but no tag (`a}b`, `a{}b`) cannot be
/// written as a tag; its companions then land in another slot. Only
/// `put_entry_if_newer` touches two keys at once (the entry and its write
/// mark): on a Cluster such a key's versioned write would fail
/// (CROSSSLOT), so the engine invalidates such a key instead
/// ([`mark_shares_slot`]). Every other step touches one key, so the tag
/// only keeps an entry's keys together on one node.
fn slot_of(full: &str) -> std::borrow::Cow<'_, str> {
    if has_tag(full) {
        std::borrow::Cow::Borrowed(full)
    } else {
        std::borrow::Cow::Owned(format!("{{{full}}}"))
    }
}

/// The key of the version counter of the entry `full` under the
/// `Versioned` strategy: `{full}#ver`, in `full`'s Redis Cluster slot.
pub fn version_key(full: &str) -> String {
    format!("{}#ver", slot_of(full))
}

/// The key holding the data of the entry `full` at `version` under the
/// `Versioned` strategy: `{full}#v{version}`, in `full`'s Redis Cluster slot.
pub fn versioned_key(full: &str, version: u64) -> String {
    format!("{}#v{version}", slot_of(full))
}

/// True when `full` has a Redis Cluster hash tag of its own.
fn has_tag(full: &str) -> bool {
    full.find('{')
        .and_then(|open| full[open + 1..].find('}'))
        .is_some_and(|len| len > 0)
}

/// True when [`write_mark_key`] of `full` is in `full`'s Redis Cluster
/// slot: `full` has a tag of its own, or no `}` (then `{full}` tags it
/// whole).
pub(crate) fn mark_shares_slot(full: &str) -> bool {
    has_tag(full) || !full.contains('}')
}

/// The key where the highest version written through
/// [`Namespace::write_through`](crate::Namespace::write_through) to the
/// entry `full` is kept: `{full}#wv`, in `full`'s Redis Cluster slot.
pub fn write_mark_key(full: &str) -> String {
    format!("{}#wv", slot_of(full))
}

/// The key of the article's stampede lock on the entry `full`:
/// `lock:{full}`, in `full`'s Redis Cluster slot.
pub fn lock_key(full: &str) -> String {
    format!("lock:{}", slot_of(full))
}

/// Checks a namespace name or prefix: printable, no whitespace, no braces
/// (braces are Redis Cluster hash-tag syntax and are reserved for `aside`).
///
/// # Errors
/// [`ErrorKind::Config`] naming the offending character.
pub(crate) fn check_namespace(name: &str) -> Result<(), Error> {
    if let Some(bad) = name
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || *c == '{' || *c == '}')
    {
        return Err(Error::new(
            ErrorKind::Config,
            format!("namespace or prefix {name:?} holds {bad:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "redis")]
    #[test]
    fn a_write_mark_shares_its_entrys_slot_exactly_when_said_to() {
        use crate::store::redis::key_slot;
        for full in [
            "ns:1", "ns:{a}b", "ns:a}b", "ns:a{}b", "ns:a{b", "ns:}{a}", "ns:{}{a}", "ns:a{b}}",
        ] {
            let shares = key_slot(&write_mark_key(full)) == key_slot(full);
            assert_eq!(mark_shares_slot(full), shares, "{full}");
        }
    }

    #[test]
    fn formats_like_the_article() {
        assert_eq!(full_key("user:profile:", &1001, 250).unwrap(), "user:profile:1001");
    }

    #[test]
    fn rejects_control_characters_and_spaces() {
        for bad in ["a b", "a\r\nSET x 1", "\u{7f}", ""] {
            let err = full_key("ns:", bad, 250).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidKey, "{bad:?}");
        }
    }

    #[test]
    fn the_part_alone_is_the_full_key_without_its_prefix() {
        let long = "y".repeat(300);
        for key in ["42", "a:b", long.as_str()] {
            let full = full_key("pre:ns:", key, 250).unwrap();
            let mut part = String::new();
            append_key_part(&mut part, "pre:ns:".len(), key, 250).unwrap();
            assert_eq!(format!("pre:ns:{part}"), full);
        }
        let mut part = String::new();
        assert!(append_key_part(&mut part, 3, "a b", 250).is_err());
    }

    /// A literal key that looks like a digest must not land on the hashed
    /// key's entry (defect 10 of issue 12): `#<sha1 of a long key>` was a
    /// legal key of its own and read or overwrote the long key's entry.
    #[test]
    fn a_literal_key_never_collides_with_a_hashed_one() {
        let long = "x".repeat(400);
        let hashed = full_key("ns:", &long, 250).unwrap();
        let crafted = hashed.strip_prefix("ns:").unwrap();
        assert!(crafted.starts_with('#'));
        let literal = full_key("ns:", crafted, 250).unwrap();
        assert_ne!(literal, hashed, "the crafted key {crafted:?} took the long key's entry");
        assert_eq!(literal, format!("ns:#{crafted}"));
        // A literal part is escaped, not hashed, while it fits, and the escape
        // counts towards the bound; the L1's part agrees with the full key.
        for key in ["#", "##x", "#a:b", crafted] {
            let full = full_key("ns:", key, 250).unwrap();
            assert_eq!(full, format!("ns:#{key}"));
            let mut part = String::new();
            append_key_part(&mut part, "ns:".len(), key, 250).unwrap();
            assert_eq!(format!("ns:{part}"), full);
        }
        // 250 bytes in all unescaped, 251 escaped: hashed.
        let fits_only_unescaped = format!("#{}", "y".repeat(250 - "ns:".len() - 1));
        let full = full_key("ns:", &fits_only_unescaped, 250).unwrap();
        assert!(
            full.len() <= 250 && full.starts_with("ns:#") && !full.starts_with("ns:##"),
            "{full}"
        );
        // Distinct literal keys stay distinct.
        assert_ne!(
            full_key("ns:", "#a", 250).unwrap(),
            full_key("ns:", "##a", 250).unwrap()
        );
        assert_ne!(full_key("ns:", "#a", 250).unwrap(), full_key("ns:", "a", 250).unwrap());
    }

    /// On Redis Cluster every companion key lives in its entry's slot,
    /// whether or not the user's key has a hash tag of its own; the entry's
    /// own key is untouched.
    #[test]
    fn companion_keys_share_their_entry_slot() {
        assert_eq!(version_key("user:1"), "{user:1}#ver");
        assert_eq!(versioned_key("user:1", 7), "{user:1}#v7");
        assert_eq!(lock_key("user:1"), "lock:{user:1}");
        assert_eq!(version_key("ns:{a}b"), "ns:{a}b#ver");
        #[cfg(feature = "redis")]
        // (A key with a `}` but no tag, such as `ns:{}x`, is the documented exception.)
        for full in [
            "user:profile:1001",
            "ns:{a}b",
            "ns:x{",
            "ns:#0123",
            "p:ns:{tag}",
            "ns:{a}{b}",
        ] {
            let slot = crate::store::redis::key_slot(full);
            for companion in [version_key(full), versioned_key(full, 12), lock_key(full)] {
                assert_eq!(crate::store::redis::key_slot(&companion), slot, "{full} / {companion}");
            }
        }
    }

    /// The stack-built part is byte for byte `append_key_part`'s, or
    /// declines: a caller may use either.
    #[test]
    fn the_inline_part_is_the_appended_part_or_none() {
        struct Pieces(&'static [&'static str]);
        impl Display for Pieces {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.iter().try_for_each(|p| f.write_str(p))
            }
        }
        let max = 250;
        let long = "z".repeat(INLINE_PART + 1);
        let near = "n".repeat(max - "ns:".len());
        // 64 bytes escaped: fits; 65: does not.
        let exact = format!("#{}", "w".repeat(INLINE_PART - 2));
        let over = format!("#{}", "w".repeat(INLINE_PART - 1));
        let cases: Vec<(&dyn Display, bool)> = vec![
            (&42u64, true),
            (&"a:b", true),
            (&"#a", true),
            (&"##", true),
            (&"é:ü", true),
            (&Pieces(&["#", "a", ":", "b"]), true),
            (&Pieces(&["a", "#"]), true),
            (&"", false),
            (&"a b", false),
            (&"a\u{85}b", false),
            (&Pieces(&["a", " "]), false),
            (&long, false),
            (&near, false),
            (&exact, true),
            (&over, false),
        ];
        for (key, fast) in cases {
            let mut appended = String::new();
            let slow = append_key_part(&mut appended, "ns:".len(), key, max);
            match inline_key_part("ns:".len(), key, max) {
                Some(part) => {
                    assert!(fast, "{key} took the fast path");
                    assert_eq!(part.as_bytes(), appended.as_bytes(), "{key}");
                    assert!(slow.is_ok());
                }
                None => assert!(!fast, "{key} declined"),
            }
        }
        // A `Display` that unwraps its writes: a declined part must not be
        // an error it would panic on (found by review).
        struct Unwrapping(String);
        impl Display for Unwrapping {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0).unwrap();
                f.write_str("!").unwrap();
                Ok(())
            }
        }
        for declined in [Unwrapping(long.clone()), Unwrapping("a b".to_owned())] {
            assert!(inline_key_part("ns:".len(), &declined, max).is_none());
        }
        // A part that fits the stack but not the key bound is hashed.
        assert!(inline_key_part(240, &"a".repeat(11), 250).is_none());
        assert!(inline_key_part(240, &"a".repeat(10), 250).is_some());
    }

    /// `write_display`'s own paths against `core::fmt`, at both ends of
    /// every integer type it handles and for strings of any characters.
    fn same_as_display<K: Display + ?Sized>(key: &K) {
        let mut written = String::new();
        write_display(&mut written, key).unwrap();
        assert_eq!(written, key.to_string());
    }

    #[test]
    fn integer_and_string_keys_are_written_as_their_display_writes_them() {
        macro_rules! ends {
            ($($int:ty),*) => {$(
                for n in [<$int>::MIN, <$int>::MAX, 0 as $int, 1 as $int, 9 as $int, 10 as $int, <$int>::MAX / 3] {
                    same_as_display(&n);
                    // What a namespace's key pipeline makes of it.
                    assert_eq!(full_key("ns:", &n, 250).unwrap(), format!("ns:{n}"));
                    let text = n.to_string();
                    let inline = inline_key_part(3, &n, 250).expect("an integer fits the stack");
                    assert_eq!(inline.as_bytes(), text.as_bytes());
                    // At the bound, as the `String` path: the digest's turn.
                    assert!(inline_key_part(251 - text.len(), &n, 250).is_none());
                    assert!(inline_key_part(250 - text.len(), &n, 250).is_some());
                }
            )*};
        }
        ends!(u64, i64, u32, i32, usize, isize, u128, i128, u16, i16, u8, i8);
        same_as_display("#a:b");
        same_as_display(&String::from("é ü"));
        // A newtype keeps its own `Display`.
        struct Tagged(u64);
        impl Display for Tagged {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "t{}", self.0)
            }
        }
        same_as_display(&Tagged(7));
        assert_eq!(full_key("ns:", &Tagged(7), 250).unwrap(), "ns:t7");
    }

    proptest::proptest! {
        #[test]
        fn any_integer_or_string_key_is_written_as_display_writes_it(
            unsigned in proptest::prelude::any::<u64>(),
            signed in proptest::prelude::any::<i64>(),
            wide in proptest::prelude::any::<i128>(),
            text in "\\PC*|[#a-z: \\t]{0,80}",
        ) {
            same_as_display(&unsigned);
            same_as_display(&(unsigned as u32));
            same_as_display(&signed);
            same_as_display(&(signed as i16));
            same_as_display(&wide);
            same_as_display(text.as_str());
            same_as_display(&text);
            let mut appended = String::new();
            let mut shown = String::new();
            let ours = append_key_part(&mut appended, 3, text.as_str(), 250);
            let theirs = append_key_part(&mut shown, 3, &format_args!("{text}"), 250);
            proptest::prop_assert_eq!(ours.is_ok(), theirs.is_ok());
            proptest::prop_assert_eq!(appended, shown);
        }
    }

    #[test]
    fn hashes_long_keys_stably_within_the_bound() {
        let long = "x".repeat(400);
        let a = full_key("ns:", &long, 250).unwrap();
        assert!(a.len() <= 250 && a.starts_with("ns:#"));
        assert_eq!(a, full_key("ns:", &long, 250).unwrap());
        assert_ne!(a, full_key("ns:", &"y".repeat(400), 250).unwrap());
    }
}
