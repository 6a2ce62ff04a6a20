//! Replays the committed fuzz corpus of the tool's input parsers on stable
//! Rust: every file under `fuzz/corpus/<target>/` goes through the same
//! entry point of `aside_cli::input` its fuzz target calls, so an input
//! that once crashed a parser (kept there as a regression file) fails
//! `cargo test` if the crash comes back. A missing or empty corpus is a
//! failure, not a skip.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

/// Runs every file of `target`'s corpus through `entry`, then fails naming
/// every file that panicked (not only the first).
fn replay(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
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

#[test]
fn serve_ids_corpus() {
    replay("serve_ids", aside_cli::input::fuzz_serve_ids);
}

#[test]
fn warm_line_corpus() {
    replay("warm_line", aside_cli::input::fuzz_warm_line);
}
