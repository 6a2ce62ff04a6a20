//! Fuzz target: `aside warm`'s bounded line reader and line parser (`aside_cli::input::fuzz_warm_line`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aside_cli::input::fuzz_warm_line(data));
