//! Fuzzes `fwatchdog::fuzzing::scale_labels`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::scale_labels(data));
