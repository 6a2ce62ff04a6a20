//! Replays the committed fuzz corpus of the tool's input parsers on stable
//! Rust: every file under `fuzz/corpus/<target>/` goes through the same
//! entry point of `aside_cli::input` its fuzz target calls, so an input
//! that once crashed a parser (kept there as a regression file) fails
//! `cargo test` if the crash comes back. A missing or empty corpus is a
//! failure, not a skip.

fn replay(target: &str, entry: fn(&[u8])) {
    aside_testkit::fuzz_corpus::replay(env!("CARGO_MANIFEST_DIR"), target, entry);
}

#[test]
fn serve_ids_corpus() {
    replay("serve_ids", aside_cli::input::fuzz_serve_ids);
}

#[test]
fn warm_line_corpus() {
    replay("warm_line", aside_cli::input::fuzz_warm_line);
}
