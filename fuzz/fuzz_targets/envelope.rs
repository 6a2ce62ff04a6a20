//! Fuzz target: the stored-entry envelope's header check (`aside::fuzzing::envelope`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aside::fuzzing::envelope(data));
