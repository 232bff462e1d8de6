//! Fuzzes `fwatchdog::fuzzing::static_path`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::static_path(data));
