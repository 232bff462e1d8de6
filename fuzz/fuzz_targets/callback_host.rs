//! Fuzzes `fwatchdog::fuzzing::callback_host`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fwatchdog::fuzzing::callback_host(data));
