//! Fuzzes `fwatchdog::fuzzing::queue_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::queue_request(data));
