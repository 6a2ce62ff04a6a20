//! Entry points for the fuzz targets under `fuzz/` and for the corpus
//! replay test (`tests/fuzz_corpus.rs`), which runs every committed corpus
//! file through the same functions on stable Rust, so a crash found once
//! stays found.
//!
//! Owns nothing but the glue: each function feeds arbitrary bytes to one
//! decoder of data that arrives from the network or from a user's file,
//! and must return (with an error or a value) without panicking and
//! without committing memory the bytes do not justify. Not a stable API.

/// memcached's meta responses and `stats` lines, as a server sent them
/// (the first byte picks which).
#[cfg(feature = "memcached")]
pub fn memcached_responses(data: &[u8]) {
    crate::store::memcached::parse_untrusted(data);
}
