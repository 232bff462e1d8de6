//! Fuzzes `fwatchdog::fuzzing::call_id`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::call_id(data));
