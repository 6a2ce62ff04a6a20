//! Fuzz target: the JSON codec's decoder (`aside::fuzzing::codec_json`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aside::fuzzing::codec_json(data));
