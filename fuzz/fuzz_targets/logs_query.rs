//! Fuzzes `fwatchdog::fuzzing::logs_query`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::logs_query(data));
