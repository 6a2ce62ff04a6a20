//! Fuzz target: the invalidation bus's message decoder (NATS and Redis) (`aside::fuzzing::bus_message`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aside::fuzzing::bus_message(data));
