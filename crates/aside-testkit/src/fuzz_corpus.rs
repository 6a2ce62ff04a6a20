//! Replays a committed fuzz corpus on stable Rust, for the
//! `tests/fuzz_corpus.rs` of each crate: every file under
//! `fuzz/corpus/<target>/` goes through the entry point its fuzz target
//! calls, so an input that once crashed a decoder (kept there as a
//! regression file) fails `cargo test` if the crash comes back.
//!
//! Owns reading the corpus and judging it, nothing else.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// The corpus directory of `target`; `manifest_dir` is the calling crate's
/// `CARGO_MANIFEST_DIR` (a crate under `crates/`).
pub fn corpus_dir(manifest_dir: &str, target: &str) -> PathBuf {
    Path::new(manifest_dir).join("../../fuzz/corpus").join(target)
}

/// Runs every file of `target`'s corpus through `entry`, then fails naming
/// every file that panicked (not only the first).
///
/// # Panics
/// When the corpus is missing or empty (a failure, not a skip), or any
/// file made `entry` panic.
pub fn replay(manifest_dir: &str, target: &str, entry: fn(&[u8])) {
    let dir = corpus_dir(manifest_dir, target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("the corpus {} must exist: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable corpus directory").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus {} is empty", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            catch_unwind(AssertUnwindSafe(|| entry(&bytes))).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files panicked: {failed:?}",
        failed.len(),
        files.len()
    );
}
