//! Fuzzes `fwatchdog::fuzzing::system_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::system_json(data));
