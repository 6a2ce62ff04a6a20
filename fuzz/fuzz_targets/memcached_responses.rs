//! Fuzz target: memcached's meta responses and `stats` lines as a server
//! sent them (`aside::fuzzing::memcached_responses`; the first byte picks
//! which).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aside::fuzzing::memcached_responses(data));
