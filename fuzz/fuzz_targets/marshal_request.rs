//! Fuzzes `fwatchdog::fuzzing::marshal_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::marshal_request(data));
