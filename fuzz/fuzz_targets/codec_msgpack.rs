//! Fuzz target: the MessagePack codec's decoder (`aside::fuzzing::codec_msgpack`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aside::fuzzing::codec_msgpack(data));
