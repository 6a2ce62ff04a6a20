//! Fuzz target: `aside serve`'s path id and `?ids=` list parsers (`aside_cli::input::fuzz_serve_ids`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aside_cli::input::fuzz_serve_ids(data));
